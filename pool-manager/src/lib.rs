//! The pool manager: environments, functions, packages (and their builds); the warm pools
//! of generic runtime instances and their specialization; the router that sends
//! requests to specialized instances. Instances run on a `backend` (containers,
//! or plain processes where containers cannot run).

pub mod backend;
pub mod build;
mod catalog;
pub mod delivery;
pub mod error;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod package;
pub mod pool;
pub mod private_file;
mod prune;
pub mod resources;
pub mod router;
pub mod secrets;
pub mod store;
pub mod sys;

#[cfg(test)]
mod pool_tests;

pub use backend::{Backend, Isolation, LaunchConfig};
pub use build::{BuildStatus, Package, PackageStatus};
pub use error::{Error, Result};
pub use pool::{InstanceInfo, Lease, PoolConfig, PoolHealth, PoolManager, StartFailure};
pub use prune::PRUNE_GRACE;
pub use resources::{
    Environment, ExecutorType, Function, FunctionPackage, ImageUse, NamedPackageRef, Network,
    ObjectRef, PackageKind, PackageRef, Runtime,
};
pub use router::{forward, forward_within, try_forward, ClientAddr, OnLeased, OwnerCall};
pub use secrets::{DataKind, DataSpec, DataView};
