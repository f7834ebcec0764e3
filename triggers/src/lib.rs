//! Triggers: what starts functions and workflows. HTTP triggers (routes, and
//! the built-in `/fission-function/<name>` paths) live here; every kind of
//! trigger calls its target through one [`Invoker`], so adding a kind touches
//! this crate and the API that manages it, nothing below.

pub mod invoke;
pub mod mqt;
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
    pub mqt: mqt::MessageQueueTriggers,
}

impl Triggers {
    pub fn open(db: &sled::Db, pool: PoolManager, workflows: Workflows) -> Result<Arc<Triggers>> {
        let invoker = Invoker::new(pool, workflows);
        Ok(Arc::new(Triggers {
            mqt: mqt::MessageQueueTriggers::open(db, invoker.clone())?,
            invoker,
            routes: routes::Routes::open(db)?,
        }))
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
        let mqts = self.mqt.targeting_function(key)?;
        if !mqts.is_empty() {
            let names: Vec<String> = mqts.iter().map(|t| t.key()).collect();
            return Err(Error::Conflict(format!(
                "function {key:?} is the target of message-queue triggers {}; delete them first",
                names.join(", ")
            )));
        }
        Ok(())
    }
}
