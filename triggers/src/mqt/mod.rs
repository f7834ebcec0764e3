//! Message-queue triggers (Fission's `MessageQueueTrigger` on NATS JetStream):
//! stored in sled, each run by a consumer task of its own from server start
//! (`start`) until it is deleted or the server stops; the API shows each with
//! its live status.

mod consumer;
pub mod dead_letters;
mod report;
pub mod status;
pub mod trigger;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pool_manager::store::Records;
use pool_manager::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::invoke::Invoker;
pub use consumer::IDEMPOTENCY_KEY;
pub use status::{State, Status};
pub use trigger::{check_url, MessageQueueTrigger, DEFAULT_NATS_URL, SUPPORTED_TYPES};

use status::StatusCell;

/// A trigger as the API shows it: the resource and what it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerView {
    #[serde(flatten)]
    pub trigger: MessageQueueTrigger,
    pub status: Status,
}

struct Running {
    task: JoinHandle<()>,
    status: Arc<StatusCell>,
    /// Set to ask the consumer to stop gracefully (see `consumer::run`).
    stop: tokio::sync::watch::Sender<bool>,
    /// Set when the stop's grace is over: calls still in flight are given
    /// up and their messages handed back to NATS.
    cut: tokio::sync::watch::Sender<bool>,
}

/// How long an update or a delete waits for its old consumer's calls in
/// flight to finish (then they are cut off, and NATS redelivers them).
const HALT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Asks the consumers to stop and waits for them, up to `grace`: each takes
/// no new message, hands back those it holds unstarted (redelivered at once
/// to the next consumer), and acks those in flight once settled. Those
/// still running then are cut off (NATS redelivers them after its ack wait).
async fn stop_all(consumers: Vec<Running>, grace: std::time::Duration) {
    for r in &consumers {
        let _ = r.stop.send(true);
    }
    let (cuts, mut tasks): (Vec<_>, Vec<JoinHandle<()>>) =
        consumers.into_iter().map(|r| (r.cut, r.task)).unzip();
    if tokio::time::timeout(grace, futures_util::future::join_all(tasks.iter_mut()))
        .await
        .is_ok()
    {
        return;
    }
    // The grace is over: what is still in flight is given up and handed back
    // (a message left unacked would wait out its ack wait before it is
    // delivered again, after the restart or to the next consumer).
    for c in &cuts {
        let _ = c.send(true);
    }
    let handed_back = futures_util::future::join_all(tasks.iter_mut());
    if tokio::time::timeout(CUT_GRACE, handed_back).await.is_err() {
        for t in &tasks {
            t.abort();
        }
    }
}

/// How long the calls cut off at the end of a stop's grace have to hand
/// their messages back.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A consumer still to delete (see `MessageQueueTriggers::retire`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Retiring {
    /// Its place (`MessageQueueTriggers::place`).
    id: String,
    key: String,
    topic: String,
    url: String,
    stream: Option<String>,
    consumer: String,
    incarnation: Option<String>,
}

impl Retiring {
    fn settings(&self) -> trigger::Settings {
        trigger::Settings {
            url: self.url.clone(),
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            // Not read by a delete.
            ack_wait: std::time::Duration::from_secs(30),
            deliver_policy: Default::default(),
            incarnation: self.incarnation.clone(),
        }
    }
}

pub struct MessageQueueTriggers {
    records: Records,
    /// Each trigger's incarnation (`Settings::incarnation`), by key.
    incarnations: Records,
    /// Consumers of deleted (or moved) triggers that NATS could not be told
    /// to delete, each tried again in the background until it is gone; by
    /// place (`place`). A trigger launched in that place takes it over (its
    /// consumer task deletes what an earlier life left, or adopts it).
    retiring: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// The same, kept across restarts: tried again from the next start.
    retirements: Records,
    invoker: Invoker,
    /// The server-wide NATS address (`--nats-url`), once started.
    default_url: Mutex<Option<String>>,
    running: Mutex<HashMap<String, Running>>,
    /// Held by each create, update and delete, so that two changes of
    /// triggers never interleave (a delete during an update's consumer
    /// clean-up would leave a consumer running for a deleted trigger).
    changes: tokio::sync::Mutex<()>,
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "mqtrigger",
        name: name.to_string(),
    }
}

impl MessageQueueTriggers {
    pub fn open(db: &sled::Db, invoker: Invoker) -> Result<MessageQueueTriggers> {
        Ok(MessageQueueTriggers {
            records: Records::open(db, "mqtriggers", "mqtrigger")?,
            incarnations: Records::open(db, "mqtrigger-incarnations", "mqtrigger")?,
            retiring: Mutex::new(HashMap::new()),
            retirements: Records::open(db, "mqtrigger-retiring", "mqtrigger")?,
            invoker,
            default_url: Mutex::new(None),
            running: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn default_url(&self) -> String {
        self.default_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_string())
    }

    /// Starts a consumer for every stored trigger; `default_url` is where
    /// triggers that name no `natsUrl` connect. Called once the server runs.
    pub fn start(&self, default_url: Option<String>) -> Result<()> {
        *self.default_url.lock().unwrap_or_else(|p| p.into_inner()) = default_url;
        for r in self.retirements.list::<Retiring>()? {
            self.keep_retiring(r);
        }
        for t in self.records.list::<MessageQueueTrigger>()? {
            self.launch(t);
        }
        Ok(())
    }

    /// Stops every consumer (at server shutdown), waiting up to `grace` for
    /// the messages in flight to be settled and acked; see [`stop_all`].
    pub async fn stop(&self, grace: std::time::Duration) {
        let consumers: Vec<Running> = self.running().drain().map(|(_, r)| r).collect();
        stop_all(consumers, grace).await;
    }

    /// The trigger's connection settings, with its incarnation.
    fn settings(&self, t: &MessageQueueTrigger) -> Result<trigger::Settings> {
        let mut settings = t.settings(&self.default_url());
        settings.incarnation = self.incarnations.get::<String>(&t.key())?;
        Ok(settings)
    }

    /// Starts a new life of the trigger's name: its consumer is made afresh
    /// (one an earlier life left is deleted first).
    async fn new_incarnation(&self, key: &str) -> Result<()> {
        let id = uuid::Uuid::now_v7().to_string();
        self.incarnations.put(key, &id).await
    }

    /// Where a consumer is: its server, its stream (or the subject whose
    /// stream holds it) and its name.
    fn place(topic: &str, settings: &trigger::Settings) -> String {
        let stream = match &settings.stream {
            Some(s) => format!("stream {s}"),
            None => format!("subject {topic}"),
        };
        format!("{} {stream} {}", settings.url, settings.consumer)
    }

    /// Deletes the consumer of a trigger that is gone (or moved): at once
    /// if NATS answers, else in the background until it does (while this
    /// server runs).
    async fn retire(&self, topic: String, settings: trigger::Settings, key: String) {
        let Err(e) = consumer::delete_consumer(topic.clone(), settings.clone(), &key).await else {
            return;
        };
        tracing::warn!(
            consumer = %settings.consumer,
            trigger = %key,
            "NATS consumer not deleted ({e}); trying again in the background until NATS answers"
        );
        let r = Retiring {
            id: Self::place(&topic, &settings),
            key,
            topic,
            url: settings.url,
            stream: settings.stream,
            consumer: settings.consumer,
            incarnation: settings.incarnation,
        };
        if let Err(e) = self.retirements.put(&r.id, &r).await {
            tracing::error!(consumer = %r.consumer, "cannot keep the consumer to delete across a restart: {e}");
        }
        self.keep_retiring(r);
    }

    /// Tries to delete `r`'s consumer until it is gone.
    fn keep_retiring(&self, r: Retiring) {
        let id = r.id.clone();
        let kept = self.retirements.clone();
        let task = tokio::spawn(async move {
            let mut wait = std::time::Duration::from_secs(1);
            loop {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
                let settings = r.settings();
                if consumer::delete_consumer(r.topic.clone(), settings, &r.key)
                    .await
                    .is_ok()
                {
                    tracing::info!(consumer = %r.consumer, trigger = %r.key, "NATS consumer of a deleted trigger deleted");
                    let _ = kept.delete(&r.id).await;
                    return;
                }
            }
        });
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        retiring.retain(|_, t| !t.is_finished());
        if let Some(old) = retiring.insert(id, task.abort_handle()) {
            old.abort();
        }
    }

    fn launch(&self, t: MessageQueueTrigger) {
        self.launch_after(t, None);
    }

    /// Starts the trigger's consumer; after an update, its status goes on
    /// counting where `before`'s did.
    fn launch_after(&self, t: MessageQueueTrigger, before: Option<Arc<StatusCell>>) {
        let status = Arc::new(match before {
            Some(before) => StatusCell::continuing(&before),
            None => StatusCell::new(),
        });
        let settings = match self.settings(&t) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(trigger = %t.key(), "cannot read the trigger's incarnation: {e}");
                t.settings(&self.default_url())
            }
        };
        // Its consumer is this trigger's now: a retirement of the one in the
        // same place stops (this trigger's consumer task takes it over, or
        // deletes what an earlier life left there).
        let id = Self::place(&t.topic, &settings);
        if let Some(r) = self
            .retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        {
            r.abort();
            let kept = self.retirements.clone();
            tokio::spawn(async move { kept.delete(&id).await });
        }
        let key = t.key();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (cut, cut_off) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(consumer::supervise(
            t,
            settings,
            self.invoker.clone(),
            status.clone(),
            consumer::Stops {
                stop: stopped,
                cut: cut_off,
            },
        ));
        let running = Running {
            task,
            status,
            stop,
            cut,
        };
        if let Some(old) = self.running().insert(key, running) {
            old.task.abort();
        }
    }

    /// Stops the trigger's consumer, its calls in flight settled first (so
    /// that its next consumer neither calls them again nor waits out their
    /// ack wait).
    async fn halt(&self, key: &str) {
        let old = self.running().remove(key);
        if let Some(r) = old {
            stop_all(vec![r], HALT_GRACE).await;
        }
    }

    fn view(&self, trigger: MessageQueueTrigger) -> TriggerView {
        let status = match self.running().get(&trigger.key()) {
            Some(r) => r.status.get(),
            None => StatusCell::new().get(),
        };
        TriggerView { trigger, status }
    }

    pub fn get(&self, key: &str) -> Result<TriggerView> {
        let t = self.stored(key)?;
        Ok(self.view(t))
    }

    fn stored(&self, key: &str) -> Result<MessageQueueTrigger> {
        self.records.get(key)?.ok_or_else(|| not_found(key))
    }

    pub fn list(&self) -> Result<Vec<TriggerView>> {
        Ok(self
            .records
            .list::<MessageQueueTrigger>()?
            .into_iter()
            .map(|t| self.view(t))
            .collect())
    }

    pub async fn create(&self, mut t: MessageQueueTrigger) -> Result<TriggerView> {
        let _change = self.changes.lock().await;
        t.normalize();
        self.invoker
            .retarget_to_workflow(&t.namespace, &mut t.function, &mut t.workflow);
        self.check(&t)?;
        if self.records.get::<MessageQueueTrigger>(&t.key())?.is_none() {
            self.new_incarnation(&t.key()).await?;
        }
        self.records.create(&t.key(), &t).await?;
        self.launch(t.clone());
        Ok(self.view(t))
    }

    pub async fn update(&self, mut t: MessageQueueTrigger) -> Result<TriggerView> {
        let _change = self.changes.lock().await;
        t.normalize();
        self.invoker
            .retarget_to_workflow(&t.namespace, &mut t.function, &mut t.workflow);
        self.check(&t)?;
        let old = self.stored(&t.key())?;
        if old == t {
            return Ok(self.view(t));
        }
        let before = self.settings(&old)?;
        let after = t.settings(&self.default_url());
        let moved = old.topic != t.topic
            || before.url != after.url
            || before.stream != after.stream
            || before.consumer != after.consumer
            || before.deliver_policy != after.deliver_policy;
        self.records.put(&t.key(), &t).await?;
        if moved {
            // Its position belongs to the old subject or stream, and NATS
            // changes no consumer's deliver policy: start afresh, as a new
            // life of the name. (A new ack wait or concurrency updates the
            // consumer in place.)
            self.new_incarnation(&t.key()).await?;
        }
        let counted = self.running().get(&t.key()).map(|r| r.status.clone());
        self.halt(&t.key()).await;
        // The same consumer in the same place is deleted by the new
        // consumer task itself (it is an earlier life's); one elsewhere here
        // (a subject held by another stream is elsewhere).
        if moved && Self::place(&old.topic, &before) != Self::place(&t.topic, &after) {
            self.retire(old.topic.clone(), before, old.key()).await;
        }
        self.launch_after(t.clone(), counted);
        Ok(self.view(t))
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let _change = self.changes.lock().await;
        let old = self.stored(key)?;
        let settings = self.settings(&old)?;
        if !self.records.delete(key).await? {
            return Err(not_found(key));
        }
        self.halt(key).await;
        self.incarnations.delete(key).await?;
        // A trigger created again under the name is a new life of it: its
        // consumer is told from this one's, which is deleted now or, while
        // NATS is away, in the background (or by that trigger's consumer).
        self.retire(old.topic.clone(), settings, old.key()).await;
        Ok(())
    }

    /// The triggers that target function `key`.
    pub fn targeting_function(&self, key: &str) -> Result<Vec<MessageQueueTrigger>> {
        Ok(self
            .records
            .list::<MessageQueueTrigger>()?
            .into_iter()
            .filter(|t| t.function_key().as_deref() == Some(key))
            .collect())
    }

    /// The triggers that start workflow `name`.
    pub fn targeting_workflow(&self, name: &str) -> Result<Vec<MessageQueueTrigger>> {
        Ok(self
            .records
            .list::<MessageQueueTrigger>()?
            .into_iter()
            .filter(|t| t.workflow.as_deref() == Some(name))
            .collect())
    }

    fn check(&self, t: &MessageQueueTrigger) -> Result<()> {
        t.validate()?;
        // One durable consumer, one trigger: two would take each other's
        // messages, and the delete of one would remove the other's consumer.
        let url = self.default_url();
        let mine = t.settings(&url);
        for other in self.records.list::<MessageQueueTrigger>()? {
            let theirs = other.settings(&url);
            if other.key() != t.key()
                && theirs.url == mine.url
                && theirs.consumer == mine.consumer
                && (theirs.stream.is_none()
                    || mine.stream.is_none()
                    || theirs.stream == mine.stream)
            {
                return Err(Error::Conflict(format!(
                    "mqtrigger {:?}: consumer {:?} is trigger {:?}'s; give this one another (--metadata consumer=NAME)",
                    t.name,
                    mine.consumer,
                    other.key()
                )));
            }
        }
        if let Some(f) = t.function_key() {
            if !self.invoker.function_exists(&f) {
                return Err(Error::Conflict(format!(
                    "mqtrigger {:?}: function {f:?} does not exist",
                    t.name
                )));
            }
        }
        if let Some(w) = &t.workflow {
            if !self.invoker.workflow_exists(w) {
                return Err(Error::Conflict(format!(
                    "mqtrigger {:?}: workflow {w:?} does not exist",
                    t.name
                )));
            }
        }
        Ok(())
    }
}
