//! Triggers: what starts functions and workflows. HTTP triggers (routes, and
//! the built-in `/fission-function/<name>` paths) live here; every kind of
//! trigger calls its target through one [`Invoker`], so adding a kind touches
//! this crate and the API that manages it, nothing below.

pub mod canary;
pub mod invocations;
pub mod invoke;
pub mod metrics;
pub mod mqt;
pub mod route;
pub mod router;
pub mod routes;
pub mod table;
pub mod timer;
pub mod workflows;

use std::sync::Arc;

use pool_manager::{Error, PoolManager, Result};

pub use invoke::{Invoker, Target};
pub use route::Route;
pub use router::route_request;
pub use workflows::{ApiListener, Workflows};

/// Every trigger, and the invoker they call through.
pub struct Triggers {
    pub invoker: Invoker,
    pub routes: routes::Routes,
    /// Asynchronous calls of functions, their retries and dead letters.
    pub invocations: invocations::Invocations,
    pub timers: Arc<timer::Timers>,
    pub mqt: mqt::MessageQueueTriggers,
    /// Canary releases: routes' weights moved from an old function to a new one.
    pub canaries: canary::Canaries,
}

impl Triggers {
    pub fn open(db: &sled::Db, pool: PoolManager, workflows: Workflows) -> Result<Arc<Triggers>> {
        let api = workflows.api.clone();
        let invoker = Invoker::new(pool, workflows);
        let timers = timer::Timers::open(db, Arc::new(timer::SystemClock))?;
        if tokio::runtime::Handle::try_current().is_ok() {
            timers.start(Arc::new(timer::InvokerFire(invoker.clone())));
        }
        let triggers = Arc::new(Triggers {
            invocations: invocations::Invocations::open(db, invoker.clone(), api)?,
            mqt: mqt::MessageQueueTriggers::open(db, invoker.clone())?,
            invoker,
            routes: routes::Routes::open(db)?,
            timers,
            canaries: canary::Canaries::open(db)?,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            canary::Canaries::start(&triggers);
        }
        Ok(triggers)
    }

    /// Refuses when runs in flight are still to run workflow `name`, or
    /// triggers target it (before it is deleted); else the stored workflows
    /// that run it, which their next runs fail at (as in Fission Workflows,
    /// which deleted whatever named it: a project's cleanup deletes what its
    /// workflows run before them).
    pub fn check_workflow_unused(&self, name: &str) -> Result<Vec<String>> {
        let routes = self.routes.list()?;
        let routes = routes
            .iter()
            .filter(|r| r.workflow.as_deref() == Some(name));
        in_use(
            "workflow",
            name,
            [
                (RUNS_IN_FLIGHT, self.invoker.runs_running(name)?),
                ("routes", routes.map(Route::key).collect()),
                (
                    "time triggers",
                    keys(
                        self.timers.targeting_workflow(name)?,
                        timer::TimeTrigger::key,
                    ),
                ),
                (
                    "message-queue triggers",
                    keys(
                        self.mqt.targeting_workflow(name)?,
                        mqt::MessageQueueTrigger::key,
                    ),
                ),
            ],
        )?;
        self.invoker.workflows_running(name)
    }

    /// As `check_workflow_unused`, for function `key`.
    pub fn check_function_unused(&self, key: &str) -> Result<Vec<String>> {
        in_use(
            "function",
            key,
            [
                (RUNS_IN_FLIGHT, self.invoker.runs_running(key)?),
                (
                    "routes",
                    keys(self.routes.targeting_function(key)?, Route::key),
                ),
                (
                    "time triggers",
                    keys(
                        self.timers.targeting_function(key)?,
                        timer::TimeTrigger::key,
                    ),
                ),
                (
                    "message-queue triggers",
                    keys(
                        self.mqt.targeting_function(key)?,
                        mqt::MessageQueueTrigger::key,
                    ),
                ),
            ],
        )?;
        self.invoker.workflows_running(key)
    }
}

/// What a delete answers when stored workflows still run what it deleted:
/// 200 with `warnings` (`run_by_workflows`), so that the caller knows their
/// runs will fail there; else `None` (204).
pub fn still_run_by(what: &str, name: &str, workflows: &[String]) -> Option<serde_json::Value> {
    if workflows.is_empty() {
        return None;
    }
    Some(serde_json::json!({"warnings": [{
        "code": "run_by_workflows",
        "message": format!(
            "{what} {name:?} is still run by workflows ({}): their runs fail there until a {what} of its name exists again",
            workflows.join(", ")
        ),
    }]}))
}

/// The users of a function or workflow that are runs still to call it.
const RUNS_IN_FLIGHT: &str = "runs in flight";

fn keys<T>(items: Vec<T>, key: fn(&T) -> String) -> Vec<String> {
    items.iter().map(key).collect()
}

/// A conflict naming the first kind of user (workflows, then triggers) that
/// still runs or targets `name`.
fn in_use<const N: usize>(what: &str, name: &str, users: [(&str, Vec<String>); N]) -> Result<()> {
    // Every kind of user at once: one refusal names all there is to change,
    // e.g. `run by workflows (a, b) and the target of routes (r) and time
    // triggers (t)`.
    let list = |run: bool| -> Vec<String> {
        users
            .iter()
            .filter(|(kind, keys)| {
                !keys.is_empty() && run == (*kind == "workflows" || *kind == RUNS_IN_FLIGHT)
            })
            .map(|(kind, keys)| format!("{kind} ({})", keys.join(", ")))
            .collect()
    };
    let and = |items: Vec<String>| match items.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    };
    let said: Vec<String> = [("run by", list(true)), ("the target of", list(false))]
        .into_iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(how, items)| format!("{how} {}", and(items)))
        .collect();
    if said.is_empty() {
        return Ok(());
    }
    let runs = users
        .iter()
        .any(|(kind, keys)| !keys.is_empty() && *kind == RUNS_IN_FLIGHT);
    let others = users
        .iter()
        .any(|(kind, keys)| !keys.is_empty() && *kind != RUNS_IN_FLIGHT);
    let advice = match (others, runs) {
        (true, true) => "delete or change them, and let the runs end or cancel them, first",
        (false, true) => "let them end or cancel them first",
        _ => "delete or change them first",
    };
    Err(Error::Conflict(format!(
        "{what} {name:?} is {}; {advice}",
        said.join(" and ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_every_user_once_in_one_sentence() {
        let said = in_use(
            "function",
            "viafn",
            [
                ("workflows", vec![]),
                (RUNS_IN_FLIGHT, vec!["r1".to_string()]),
                ("routes", vec!["viafn".to_string()]),
                ("time triggers", vec!["t1".to_string(), "t2".to_string()]),
                ("message-queue triggers", vec!["q".to_string()]),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            said.contains(
                "function \"viafn\" is run by runs in flight (r1) and the target of routes (viafn), \
                 time triggers (t1, t2) and message-queue triggers (q); delete or change them, \
                 and let the runs end or cancel them, first"
            ),
            "{said}"
        );
        assert!(in_use("function", "f", [("routes", vec![])]).is_ok());
    }
}
