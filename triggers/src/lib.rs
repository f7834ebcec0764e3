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
}

impl Triggers {
    pub fn open(db: &sled::Db, pool: PoolManager, workflows: Workflows) -> Result<Arc<Triggers>> {
        let api = workflows.api.clone();
        let invoker = Invoker::new(pool, workflows);
        Ok(Arc::new(Triggers {
            invocations: invocations::Invocations::open(db, invoker.clone(), api)?,
            invoker,
            routes: routes::Routes::open(db)?,
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
        if routes.is_empty() {
            return Ok(());
        }
        Err(Error::Conflict(format!(
            "workflow {name:?} is the target of routes {}; delete them first",
            routes.join(", ")
        )))
    }

    /// Refuses when triggers still target function `key` (before it is deleted).
    pub fn check_function_unused(&self, key: &str) -> Result<()> {
        let routes = self.routes.targeting_function(key)?;
        if routes.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = routes.iter().map(Route::key).collect();
        Err(Error::Conflict(format!(
            "function {key:?} is the target of routes {}; delete them first",
            names.join(", ")
        )))
    }
}
