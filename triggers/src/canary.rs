//! Canary releases, as Fission's `CanaryConfig`: a route that shares its
//! requests between an old and a new function (`function_weights`) has its
//! weights moved toward the new one, a step every interval, while the new
//! function's failure rate stays at or under a threshold; past it, every
//! request goes back to the old function.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use pool_manager::resources::{default_namespace, qualified, validate_name};
use pool_manager::store::Records;
use pool_manager::{Error, Result};

use crate::Triggers;

fn default_increment() -> u32 {
    20
}
/// The longest step a canary may take.
const MAX_STEP: Duration = Duration::from_secs(365 * 24 * 3600);

fn default_interval() -> String {
    "2m".into()
}
fn default_threshold() -> u32 {
    10
}
fn default_failure_type() -> String {
    FAILURE_TYPE.into()
}

/// What counts as a failure: an answer with a 5xx status (Fission's only type).
pub const FAILURE_TYPE: &str = "status-code";

/// A canary: the route whose weights move, the two functions, how fast, and
/// how many failures stop it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub name: String,
    /// The route, the functions and the canary share this namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The route (Fission's `trigger`): it must share its requests between
    /// the two functions (`function_weights`).
    pub trigger: String,
    pub new_function: String,
    pub old_function: String,
    /// Points of the hundred moved to the new function at each step.
    #[serde(default = "default_increment")]
    pub weight_increment: u32,
    /// How long each step lasts (`30s`, `2m`, `1h`), the window over which the
    /// new function's failures are counted.
    #[serde(default = "default_interval")]
    pub weight_increment_duration: String,
    /// The new function's failures, in percent of its calls in a window, past
    /// which every request goes back to the old function.
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_failure_type")]
    pub failure_type: String,
    /// Where it stands: set by the server (what a client sends is ignored).
    #[serde(default)]
    pub status: CanaryStatus,
}

/// Where a canary stands.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// `pending` (moving), `succeeded` (the new function takes every
    /// request), `failed` (rolled back: the old function takes every
    /// request), or `aborted` (its route went, or no longer shares its
    /// requests between the two).
    #[serde(default = "pending")]
    pub status: String,
    /// The new function's share now, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_weight: Option<u32>,
    /// The new function's failures in the last window that had calls, in
    /// percent of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn pending() -> String {
    "pending".into()
}

impl Canary {
    pub fn key(&self) -> String {
        qualified(&self.namespace, &self.name)
    }

    pub fn route_key(&self) -> String {
        qualified(&self.namespace, &self.trigger)
    }

    /// How long a step lasts.
    pub fn interval(&self) -> Result<Duration> {
        let d = humantime::parse_duration(&self.weight_increment_duration).map_err(|e| {
            Error::Invalid(format!(
                "canary: weight_increment_duration {:?} is not a duration (30s, 2m, 1h): {e}",
                self.weight_increment_duration
            ))
        })?;
        if d < Duration::from_secs(1) {
            return Err(Error::Invalid(format!(
                "canary: weight_increment_duration {:?} is under a second",
                self.weight_increment_duration
            )));
        }
        // A step's end is a point on the clock: a longer one is a typo, and one
        // past the clock's range cannot be scheduled at all.
        if d > MAX_STEP {
            return Err(Error::Invalid(format!(
                "canary: weight_increment_duration {:?} is over a year",
                self.weight_increment_duration
            )));
        }
        Ok(d)
    }

    pub fn validate(&self) -> Result<()> {
        validate_name("canary", &self.name)?;
        validate_name("namespace", &self.namespace)?;
        validate_name("route", &self.trigger)?;
        validate_name("function", &self.new_function)?;
        validate_name("function", &self.old_function)?;
        if self.new_function == self.old_function {
            return Err(Error::Invalid(format!(
                "canary: the new and the old function are both {:?}",
                self.new_function
            )));
        }
        if !(1..=100).contains(&self.weight_increment) {
            return Err(Error::Invalid(format!(
                "canary: weight_increment {} is not from 1 to 100",
                self.weight_increment
            )));
        }
        if self.failure_threshold > 100 {
            return Err(Error::Invalid(format!(
                "canary: failure_threshold {} is a percentage: from 0 to 100",
                self.failure_threshold
            )));
        }
        if self.failure_type != FAILURE_TYPE {
            return Err(Error::Invalid(format!(
                "canary: failure_type {:?}: the one type is {FAILURE_TYPE:?} (a 5xx answer)",
                self.failure_type
            )));
        }
        self.interval().map(drop)
    }
}

/// A function besides the canary's two that the route's requests go to.
fn others<'a>(canary: &Canary, weights: &'a BTreeMap<String, u32>) -> Option<&'a str> {
    weights
        .keys()
        .map(String::as_str)
        .find(|f| *f != canary.new_function && *f != canary.old_function)
}

/// What a canary does at the end of a window.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing: the new function had no calls to judge it by.
    Wait,
    /// Give the new function this share.
    Forward(u32),
    /// The new function takes every request: done.
    Done,
    /// Too many failures (this percentage): every request back to the old one.
    Rollback(f64),
}

/// The step at the end of a window in which the new function, at
/// `new_weight`, answered `calls` calls, `failed` of them with a 5xx. A
/// function with no share yet is not judged (it had no calls through the
/// route): it gets its first share. As Fission's canary manager.
pub fn step(canary: &Canary, new_weight: u32, calls: u64, failed: u64) -> Step {
    if new_weight > 0 {
        if calls == 0 {
            return Step::Wait;
        }
        let p = failed as f64 * 100.0 / calls as f64;
        if p > f64::from(canary.failure_threshold) {
            return Step::Rollback(p);
        }
    }
    match new_weight.saturating_add(canary.weight_increment) {
        n if n >= 100 => Step::Done,
        n => Step::Forward(n),
    }
}

/// The canaries, stored, and the windows of those moving.
pub struct Canaries {
    records: Records,
    /// A moving canary's window: when it ends, and the new function's counts
    /// (calls, failures) when it began. In memory: after a restart a window
    /// starts anew.
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    ends: tokio::time::Instant,
    calls: u64,
    failed: u64,
}

fn not_found(key: &str) -> Error {
    Error::NotFound {
        kind: "canary",
        name: key.to_string(),
    }
}

impl Canaries {
    pub fn open(db: &sled::Db) -> Result<Canaries> {
        Ok(Canaries {
            records: Records::open(db, "canaries", "canary")?,
            windows: Mutex::new(HashMap::new()),
        })
    }

    pub fn get(&self, key: &str) -> Result<Canary> {
        self.records.get(key)?.ok_or_else(|| not_found(key))
    }

    pub fn list(&self) -> Result<Vec<Canary>> {
        self.records.list()
    }

    /// Stores a new canary (or, `replace`, a changed one), which starts
    /// moving at once from the route's weights.
    pub async fn put(
        &self,
        mut canary: Canary,
        triggers: &Triggers,
        replace: bool,
    ) -> Result<Canary> {
        canary.validate()?;
        if replace {
            // The same settings again change nothing (a spec applied again).
            let existing = self.get(&canary.key())?;
            let same = Canary {
                status: existing.status.clone(),
                ..canary.clone()
            } == existing;
            if same {
                return Ok(existing);
            }
        }
        let route = triggers.routes.get(&canary.route_key()).map_err(|_| {
            Error::Conflict(format!(
                "canary {:?}: route {:?} does not exist",
                canary.name, canary.trigger
            ))
        })?;
        let weights = &route.function_weights;
        let (Some(new), Some(_)) = (
            weights.get(&canary.new_function),
            weights.get(&canary.old_function),
        ) else {
            return Err(Error::Conflict(format!(
                "canary {:?}: route {:?} does not share its requests between {:?} and {:?}: give it \
                 --function {} --weight 100 --function {} --weight 0 first",
                canary.name,
                canary.trigger,
                canary.old_function,
                canary.new_function,
                canary.old_function,
                canary.new_function
            )));
        };
        if let Some(other) = others(&canary, weights) {
            return Err(Error::Conflict(format!(
                "canary {:?}: route {:?} also shares its requests with {other:?}: a canary moves them between two functions",
                canary.name, canary.trigger
            )));
        }
        canary.status = CanaryStatus {
            status: pending(),
            new_weight: Some(*new),
            failure_percent: None,
            message: None,
        };
        // Another canary moving the same route would undo its steps.
        let rival = self.list()?.into_iter().find(|c| {
            c.key() != canary.key()
                && c.route_key() == canary.route_key()
                && c.status.status == "pending"
        });
        if let Some(rival) = rival {
            return Err(Error::Conflict(format!(
                "canary {:?}: canary {:?} is moving route {:?}: delete it, or wait until it ends",
                canary.name, rival.name, canary.trigger
            )));
        }
        // Its first window starts at the next look, not one begun before.
        self.windows_lock().remove(&canary.key());
        if replace {
            self.records.put(&canary.key(), &canary).await?;
        } else {
            self.records.create(&canary.key(), &canary).await?;
        }
        Ok(canary)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        if !self.records.delete(key).await? {
            return Err(not_found(key));
        }
        self.windows_lock().remove(key);
        Ok(())
    }

    fn windows_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves every pending canary whose window has ended, once a second,
    /// for as long as the triggers live.
    pub fn start(triggers: &Arc<Triggers>) {
        let weak: Weak<Triggers> = Arc::downgrade(triggers);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let now = tick.tick().await;
                let Some(t) = weak.upgrade() else { return };
                if let Err(e) = t.canaries.tick(&t, now).await {
                    tracing::warn!("canaries: {e}");
                }
            }
        });
    }

    /// Moves each pending canary whose window ended by `now` (the tick's
    /// own time: windows end on the tick they are due at); one that cannot
    /// move says why in its status and the others go on.
    async fn tick(&self, triggers: &Triggers, now: tokio::time::Instant) -> Result<()> {
        for canary in self.list()? {
            if canary.status.status != "pending" {
                continue;
            }
            let Ok(interval) = canary.interval() else {
                continue;
            };
            // Its route gone or changed ends it at once, not at the end of
            // its window: a route made meanwhile under the same name is not
            // its to move.
            if let Err(why) = its_route(triggers, &canary) {
                self.windows_lock().remove(&canary.key());
                if let Err(e) = self.end(canary, "aborted", why).await {
                    tracing::warn!("canaries: {e}");
                }
                continue;
            }
            let new_key = qualified(&canary.namespace, &canary.new_function);
            let (calls, failed) = triggers.invoker.pool().request_counts(&new_key);
            let began = {
                let mut windows = self.windows_lock();
                let w = windows.entry(canary.key()).or_insert(Window {
                    ends: now + interval,
                    calls,
                    failed,
                });
                if w.ends > now {
                    continue;
                }
                let began = *w;
                *w = Window {
                    ends: now + interval,
                    calls,
                    failed,
                };
                began
            };
            let (calls, failed) = (
                calls.saturating_sub(began.calls),
                failed.saturating_sub(began.failed),
            );
            if let Err(e) = self.advance(triggers, canary.clone(), calls, failed).await {
                tracing::warn!(canary = %canary.key(), "a canary's step failed: {e}");
                let mut said = canary;
                said.status.message = Some(format!("its last step failed: {e}"));
                let _ = self.store_status(said).await;
            }
        }
        Ok(())
    }

    /// Takes one step of `canary` after a window with these counts.
    async fn advance(
        &self,
        triggers: &Triggers,
        mut canary: Canary,
        calls: u64,
        failed: u64,
    ) -> Result<()> {
        let (route, weight) = match its_route(triggers, &canary) {
            Ok(found) => found,
            Err(why) => return self.end(canary, "aborted", why).await,
        };
        let (new, old) = (&canary.new_function, &canary.old_function);
        if calls > 0 {
            canary.status.failure_percent = Some(failed as f64 * 100.0 / calls as f64);
        }
        let (new_weight, status, message) = match step(&canary, weight, calls, failed) {
            Step::Wait => return Ok(()),
            Step::Forward(n) => (n, "pending", None),
            Step::Done => (100, "succeeded", Some(format!("{new:?} takes every request"))),
            Step::Rollback(p) => (
                0,
                "failed",
                Some(format!(
                    "{p:.1}% of {new:?}'s calls failed in the last window, past the threshold of {}%: every request went back to {old:?}",
                    canary.failure_threshold
                )),
            ),
        };
        let mut route = route;
        route.function_weights =
            BTreeMap::from([(new.clone(), new_weight), (old.clone(), 100 - new_weight)]);
        triggers.routes.update(route, &triggers.invoker).await?;
        canary.status.status = status.into();
        canary.status.new_weight = Some(new_weight);
        canary.status.message = message;
        self.store_status(canary).await
    }

    async fn end(&self, mut canary: Canary, status: &str, message: String) -> Result<()> {
        canary.status.status = status.into();
        canary.status.message = Some(message);
        self.store_status(canary).await
    }

    /// Writes a canary's new status, unless it was changed or deleted meanwhile.
    async fn store_status(&self, canary: Canary) -> Result<()> {
        let key = canary.key();
        match self.records.get::<Canary>(&key)? {
            Some(now)
                if Canary {
                    status: canary.status.clone(),
                    ..now.clone()
                } == canary =>
            {
                self.records.put(&key, &canary).await
            }
            _ => Ok(()),
        }
    }
}

/// The route `canary` moves, and its new function's share; or why it can
/// move it no more: the route is gone, or no longer shares its requests
/// between just its two functions.
fn its_route(
    triggers: &Triggers,
    canary: &Canary,
) -> std::result::Result<(crate::Route, u32), String> {
    let Ok(route) = triggers.routes.get(&canary.route_key()) else {
        return Err(format!("route {:?} is gone", canary.trigger));
    };
    let (new, old) = (&canary.new_function, &canary.old_function);
    // Sent whole to one function or workflow: said as such, not as a share
    // it lost (`route update --function shop-v2` sends it all to the new one).
    if route.function_weights.is_empty() {
        let to = match (&route.function, &route.workflow) {
            (Some(f), _) => format!("function {f:?}"),
            (None, Some(w)) => format!("workflow {w:?}"),
            (None, None) => "one target".to_string(),
        };
        return Err(format!(
            "route {:?} now sends every request to {to}, no longer shared between {old:?} and {new:?}",
            canary.trigger
        ));
    }
    let Some(&weight) = route.function_weights.get(new) else {
        return Err(format!(
            "route {:?} no longer shares its requests with {new:?}",
            canary.trigger
        ));
    };
    if !route.function_weights.contains_key(old) {
        return Err(format!(
            "route {:?} no longer shares its requests with {old:?}",
            canary.trigger
        ));
    }
    if let Some(other) = others(canary, &route.function_weights) {
        return Err(format!(
            "route {:?} now also shares its requests with {other:?}",
            canary.trigger
        ));
    }
    Ok((route, weight))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(increment: u32, threshold: u32) -> Canary {
        serde_json::from_value(serde_json::json!({
            "name": "c", "trigger": "r", "new_function": "v2", "old_function": "v1",
            "weight_increment": increment, "failure_threshold": threshold,
        }))
        .unwrap()
    }

    /// As Fission's: no share yet, the first; no calls, no judgement; past
    /// the threshold, back; at 100, done.
    #[test]
    fn a_window_moves_the_weight_or_rolls_back() {
        let c = canary(30, 10);
        assert_eq!(step(&c, 0, 0, 0), Step::Forward(30));
        assert_eq!(step(&c, 30, 0, 0), Step::Wait);
        assert_eq!(step(&c, 30, 100, 10), Step::Forward(60), "at the threshold");
        assert_eq!(step(&c, 30, 100, 11), Step::Rollback(11.0));
        assert_eq!(step(&c, 90, 10, 0), Step::Done);
        assert_eq!(step(&c, 70, 10, 0), Step::Done);
    }

    #[test]
    fn a_canary_is_checked_before_it_is_stored() {
        let err = |f: &dyn Fn(&mut Canary)| {
            let mut c = canary(20, 10);
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        canary(20, 10).validate().unwrap();
        assert!(err(&|c| c.new_function = "v1".into()).contains("both \"v1\""));
        assert!(err(&|c| c.weight_increment = 0).contains("not from 1 to 100"));
        assert!(err(&|c| c.failure_threshold = 101).contains("from 0 to 100"));
        assert!(err(&|c| c.weight_increment_duration = "soon".into()).contains("not a duration"));
        assert!(err(&|c| c.weight_increment_duration = "500ms".into()).contains("under a second"));
        // Past the clock's range, adding it to now would panic the canaries' ticker.
        assert!(
            err(&|c| c.weight_increment_duration = "2562047788015216h".into())
                .contains("over a year")
        );
        assert!(err(&|c| c.weight_increment_duration = "366days".into()).contains("over a year"));
        let mut c = canary(20, 10);
        c.weight_increment_duration = "365days".into();
        c.validate().unwrap();
        assert!(err(&|c| c.failure_type = "latency".into()).contains("status-code"));
    }
}
