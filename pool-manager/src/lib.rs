//! The pool manager: environments, functions, packages and routes; the warm pools
//! of generic runtime instances and their specialization; the router that sends
//! requests to specialized instances. The local backend runs instances as child
//! processes of the server.

pub mod error;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod package;
pub mod pool;
pub mod resources;
pub mod router;
pub mod routes;
pub mod store;
mod sys;

pub use error::{Error, Result};
pub use instance::LaunchConfig;
pub use pool::{InstanceInfo, Lease, PoolConfig, PoolManager};
pub use resources::{Environment, Function, PackageKind, PackageRef, Route, Runtime};
pub use router::{forward, route_request, try_forward, WorkflowGateway};
