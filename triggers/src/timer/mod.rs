//! Time triggers: the stored resources (create, update, delete, list), and the
//! timer service that fires them. Durable: the tick a trigger fires for is
//! recorded (and flushed) before its target is called, so a restart never fires
//! a tick twice; ticks that fell due while the server was down fire once, for
//! the latest of them; each firing is kept with its outcome (the last
//! [`HISTORY_PER_TRIGGER`] per trigger).

pub mod clock;
mod fire;
pub mod schedule;
mod service;
mod trigger;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use pool_manager::store::Records;
use pool_manager::{Error, Result};
use tokio::sync::{watch, Notify};

pub use clock::{Clock, ManualClock, SystemClock};
pub use fire::{Called, Fire, InvokerFire};
pub use schedule::{Schedule, ScheduleError};
pub use trigger::{Firing, Outcome, TimeTrigger};

use crate::invoke::Invoker;

/// How many firings the history keeps per trigger (the oldest go first).
pub const HISTORY_PER_TRIGGER: usize = 100;

/// A trigger as the service runs it.
#[derive(Clone)]
struct Entry {
    trigger: TimeTrigger,
    schedule: Schedule,
}

pub struct Timers {
    db: sled::Db,
    records: Records,
    /// Per trigger key: the latest tick taken (fired, or before the trigger existed).
    taken: sled::Tree,
    /// `<key>\0<tick ms, big-endian>` -> the firing (JSON).
    firings: sled::Tree,
    clock: Arc<dyn Clock>,
    table: RwLock<Arc<HashMap<String, Entry>>>,
    /// Told when triggers change, so the service looks at them again.
    changed: Notify,
    /// Held by a pass of the service and by each change of a trigger, so that
    /// a pass never takes a tick for a trigger changed or deleted meanwhile.
    turn: tokio::sync::Mutex<()>,
    /// The clock time of the service's last completed pass (tests wait on it).
    passes: watch::Sender<Option<Timestamp>>,
    /// The service's task, while it runs.
    service: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Firings that ended, by trigger and outcome (`fusion_timer_firings`).
    firings_total: prometheus_client::metrics::family::Family<
        crate::metrics::FiringLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "time trigger",
        name: name.to_string(),
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

fn firing_key(key: &str, tick: Timestamp) -> Vec<u8> {
    let mut k = firings_prefix(key);
    k.extend_from_slice(&tick.as_millisecond().to_be_bytes());
    k
}

fn firings_prefix(key: &str) -> Vec<u8> {
    let mut k = key.as_bytes().to_vec();
    k.push(0);
    k
}

fn encode_tick(t: Timestamp) -> [u8; 8] {
    t.as_millisecond().to_be_bytes()
}

fn decode_tick(bytes: &[u8]) -> Option<Timestamp> {
    let arr: [u8; 8] = bytes.try_into().ok()?;
    Timestamp::from_millisecond(i64::from_be_bytes(arr)).ok()
}

impl Timers {
    /// Registers the firings' counter (`fusion_timer_firings_total`).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "fusion_timer_firings",
            "Time triggers' firings that ended since the server started, by trigger and outcome: succeeded (the function answered 2xx, or the workflow's run started) or failed",
            self.firings_total.clone(),
        );
    }

    /// Opens the triggers and their history; firings a stopped server left
    /// in flight are marked `interrupted`.
    pub fn open(db: &sled::Db, clock: Arc<dyn Clock>) -> Result<Arc<Timers>> {
        let timers = Timers {
            db: db.clone(),
            records: Records::open(db, "timetriggers", "time trigger")?,
            taken: db.open_tree("timer_taken")?,
            firings: db.open_tree("timer_firings")?,
            clock,
            table: RwLock::new(Arc::default()),
            changed: Notify::new(),
            turn: tokio::sync::Mutex::new(()),
            passes: watch::Sender::new(None),
            service: std::sync::Mutex::new(None),
            firings_total: Default::default(),
        };
        for item in timers.firings.iter() {
            let (k, v) = item?;
            let mut f: Firing = decode(&v)?;
            if f.outcome == Outcome::Running {
                f.outcome = Outcome::Interrupted;
                f.error = Some("the server stopped while the call was in flight".into());
                timers.firings.insert(k, encode(&f)?)?;
            }
        }
        timers.reload()?;
        Ok(Arc::new(timers))
    }

    pub fn get(&self, key: &str) -> Result<TimeTrigger> {
        self.records.get(key)?.ok_or_else(|| not_found(key))
    }

    pub fn list(&self) -> Result<Vec<TimeTrigger>> {
        self.records.list()
    }

    /// The next tick `key` will fire for.
    pub fn next_tick(&self, key: &str) -> Option<Timestamp> {
        let table = self.table();
        let entry = table.get(key)?;
        let now = self.clock.now();
        let taken = self.taken_tick(key).unwrap_or(now);
        entry.schedule.next_after(taken.max(now))
    }

    pub async fn create(&self, mut t: TimeTrigger, invoker: &Invoker) -> Result<TimeTrigger> {
        invoker.retarget_to_workflow(&t.namespace, &mut t.function, &mut t.workflow);
        self.check(&t)?;
        self.store_new(t).await
    }

    /// Stores a new, checked trigger.
    async fn store_new(&self, t: TimeTrigger) -> Result<TimeTrigger> {
        let _turn = self.turn.lock().await;
        let key = t.key();
        // Refused before anything changes when the name is taken.
        self.records.create(&key, &t).await?;
        // Ticks up to now are not this trigger's: it fires from the next one.
        self.taken
            .insert(key.as_bytes(), &encode_tick(self.clock.now()))?;
        self.db.flush_async().await?;
        self.reload()?;
        Ok(t)
    }

    pub async fn update(&self, mut t: TimeTrigger, invoker: &Invoker) -> Result<TimeTrigger> {
        invoker.retarget_to_workflow(&t.namespace, &mut t.function, &mut t.workflow);
        self.check(&t)?;
        self.store_update(t).await
    }

    /// Replaces a trigger with a checked one.
    async fn store_update(&self, t: TimeTrigger) -> Result<TimeTrigger> {
        let _turn = self.turn.lock().await;
        let key = t.key();
        let old = self.get(&key)?;
        if old == t {
            return Ok(t);
        }
        // A new schedule starts from now; the same one keeps its place.
        if old.cron != t.cron || old.timezone != t.timezone {
            self.taken
                .insert(key.as_bytes(), &encode_tick(self.clock.now()))?;
        }
        self.records.put(&key, &t).await?;
        self.reload()?;
        Ok(t)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let _turn = self.turn.lock().await;
        if !self.records.delete(key).await? {
            return Err(not_found(key));
        }
        self.taken.remove(key.as_bytes())?;
        for k in self.firings.scan_prefix(firings_prefix(key)).keys() {
            self.firings.remove(k?)?;
        }
        self.db.flush_async().await?;
        self.reload()
    }

    /// The trigger's firings, newest first, at most `limit`.
    pub fn history(&self, key: &str, limit: usize) -> Result<Vec<Firing>> {
        self.get(key)?;
        self.firings
            .scan_prefix(firings_prefix(key))
            .values()
            .rev()
            .take(limit)
            .map(|v| decode(&v?))
            .collect()
    }

    /// The time triggers that target function `key`.
    pub fn targeting_function(&self, key: &str) -> Result<Vec<TimeTrigger>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|t| t.function_key().as_deref() == Some(key))
            .collect())
    }

    /// The time triggers that start workflow `name`.
    pub fn targeting_workflow(&self, name: &str) -> Result<Vec<TimeTrigger>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|t| t.workflow.as_deref() == Some(name))
            .collect())
    }

    /// A time trigger may name a function or workflow that does not exist
    /// yet, as Fission's may: a tick meanwhile is a failed firing that says
    /// what is missing.
    fn check(&self, t: &TimeTrigger) -> Result<()> {
        t.validate()?;
        Ok(())
    }

    fn table(&self) -> Arc<HashMap<String, Entry>> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn reload(&self) -> Result<()> {
        let mut table = HashMap::new();
        for trigger in self.list()? {
            match trigger.validate() {
                Ok(schedule) => {
                    table.insert(trigger.key(), Entry { trigger, schedule });
                }
                Err(e) => tracing::warn!(trigger = %trigger.key(), "time trigger not run: {e}"),
            }
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.changed.notify_one();
        Ok(())
    }

    fn taken_tick(&self, key: &str) -> Option<Timestamp> {
        self.taken
            .get(key.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| decode_tick(&v))
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| storage(format!("corrupt timer record: {e}")))
}
