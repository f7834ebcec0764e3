//! Triggers: what starts functions and workflows. HTTP triggers (routes, and
//! the built-in `/fission-function/<name>` paths) live here; every kind of
//! trigger calls its target through one [`Invoker`], so adding a kind touches
//! this crate and the API that manages it, nothing below.

pub mod invocations;
pub mod invoke;
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
}

impl Triggers {
    pub fn open(db: &sled::Db, pool: PoolManager, workflows: Workflows) -> Result<Arc<Triggers>> {
        let api = workflows.api.clone();
        let invoker = Invoker::new(pool, workflows);
        let timers = timer::Timers::open(db, Arc::new(timer::SystemClock))?;
        if tokio::runtime::Handle::try_current().is_ok() {
            timers.start(Arc::new(timer::InvokerFire(invoker.clone())));
        }
        Ok(Arc::new(Triggers {
            invocations: invocations::Invocations::open(db, invoker.clone(), api)?,
            invoker,
            routes: routes::Routes::open(db)?,
            timers,
        }))
    }

    /// Refuses when triggers still target workflow `name` (before it is deleted).
    pub fn check_workflow_unused(&self, name: &str) -> Result<()> {
        let routes: Vec<String> = self
            .routes
            .list()?
            .iter()
            .filter(|r| r.workflow.as_deref() == Some(name))
            .map(Route::key)
            .collect();
        if !routes.is_empty() {
            return Err(Error::Conflict(format!(
                "workflow {name:?} is the target of routes {}; delete them first",
                routes.join(", ")
            )));
        }
        let timers: Vec<String> = self
            .timers
            .targeting_workflow(name)?
            .iter()
            .map(timer::TimeTrigger::key)
            .collect();
        if !timers.is_empty() {
            return Err(Error::Conflict(format!(
                "workflow {name:?} is the target of time triggers {}; delete them first",
                timers.join(", ")
            )));
        }
        Ok(())
    }

    /// Refuses when triggers still target function `key` (before it is deleted).
    pub fn check_function_unused(&self, key: &str) -> Result<()> {
        let routes = self.routes.targeting_function(key)?;
        if !routes.is_empty() {
            let names: Vec<String> = routes.iter().map(Route::key).collect();
            return Err(Error::Conflict(format!(
                "function {key:?} is the target of routes {}; delete them first",
                names.join(", ")
            )));
        }
        let timers = self.timers.targeting_function(key)?;
        if !timers.is_empty() {
            let names: Vec<String> = timers.iter().map(timer::TimeTrigger::key).collect();
            return Err(Error::Conflict(format!(
                "function {key:?} is the target of time triggers {}; delete them first",
                names.join(", ")
            )));
        }
        Ok(())
    }
}
