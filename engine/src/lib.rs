//! Workflow engine: Fission Workflows' YAML format, validation, a pure run state
//! machine, durable runs in sled, the tokio driver and the HTTP API.

pub mod api;
pub mod backup;
pub mod binary;
pub mod builtins;
pub mod dag;
pub mod document;
pub mod driver;
pub mod expr;
mod fastexpr;
mod journal;
mod keys;
pub mod metrics;
mod record;
mod retention;
pub mod retry;
pub mod sfn;
pub mod spec;
pub mod state;
pub mod store;
pub mod validate;

pub use api::{invoke_http, invoke_http_at, router};
pub use driver::{Engine, EngineConfig, EngineError, StartedRun};
pub use spec::workflow_json_schema;

#[cfg(test)]
mod driver_tests;
