//! Fission's `fission.io/v1` resources as Kubernetes custom resources, typed:
//! Environment, Package, Function, HTTPTrigger, TimeTrigger,
//! MessageQueueTrigger, KubernetesWatchTrigger and Workflow (RFC-0022). Field
//! names are Fission's; embedded Kubernetes types (PodSpec, Container, ...) are
//! kept as written (`x-kubernetes-preserve-unknown-fields`). Every kind has a
//! status subresource with `Ready` conditions, and `Ready`/`Age` columns.
//! [`definitions`] gives the CustomResourceDefinitions `deploy/kubernetes/crds.yaml`
//! is rendered from.

mod common;
mod environment;
mod function;
mod package;
mod triggers;
mod workflow;

#[cfg(test)]
mod tests;

pub use common::{
    Condition, ConditionStatus, Conditions, EnvironmentReference, FunctionReference,
    FunctionReferenceType, ObjectReference, PackageRef, Quantity, Resources, RetryPolicy, Status,
    READY,
};
pub use environment::{Builder, Environment, EnvironmentSpec, Runtime};
pub use function::{
    AgentConfig, DestinationRef, ExecutionStrategy, Function, FunctionPackageRef, FunctionSpec,
    FunctionStatus, InvocationConfig, InvokeStrategy, KeySource, ProvisionedConcurrencyConfig,
    ProvisionedWindow, StateConfig, StreamingConfig, ToolConfig, TopicRef, VersioningConfig,
};
pub use package::{Archive, Checksum, OciArchive, Package, PackageSpec, PackageStatus};
pub use triggers::{
    CorsConfig, GatewayParentRef, GatewayRouteConfig, HTTPTrigger, HTTPTriggerSpec, IngressConfig,
    KubernetesWatchTrigger, KubernetesWatchTriggerSpec, MessageQueueTrigger,
    MessageQueueTriggerSpec, RouteConfig, TimeTrigger, TimeTriggerSpec,
};
pub use workflow::{
    BranchState, CatchRoute, ChoiceCondition, ChoiceRule, RetentionPolicy, Workflow,
    WorkflowBranch, WorkflowSpec, WorkflowState,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every kind here.
pub const GROUP: &str = "fission.io";
/// Their version.
pub const VERSION: &str = "v1";

/// The CustomResourceDefinitions of every kind, in the order Fusion applies
/// the kinds (what others refer to first).
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![
        Environment::crd(),
        Package::crd(),
        Function::crd(),
        Workflow::crd(),
        HTTPTrigger::crd(),
        TimeTrigger::crd(),
        MessageQueueTrigger::crd(),
        KubernetesWatchTrigger::crd(),
    ]
}
