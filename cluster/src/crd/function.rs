//! `Function` (`fission.io/v1`): code in a package, run in an environment,
//! with its execution limits, with Fission's field names (including the
//! capitalised `InvokeStrategy` block).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{
    any_json, preserve_list, preserve_object, Condition, Conditions, EnvironmentReference,
    FunctionReference, ObjectReference, PackageRef, Resources, RetryPolicy,
};

/// A function: its environment, its package and entry point, the Secrets
/// and ConfigMaps it reads, and its execution limits (Fission's `FunctionSpec`).
// kube's attribute repeats `type_ = "string"` per column, which clippy
// mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fission.io",
    version = "v1",
    kind = "Function",
    namespaced,
    status = "FunctionStatus",
    shortname = "fn",
    category = "fission",
    printcolumn(
        name = "Environment",
        type_ = "string",
        json_path = ".spec.environment.name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    derive = "Default",
    doc = "A function: code in a package, run in an environment (Fission's Function)."
)]
pub struct FunctionSpec {
    pub environment: EnvironmentReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<FunctionPackageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub secrets: Option<Vec<ObjectReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub configmaps: Option<Vec<ObjectReference>>,
    /// Kubernetes `EnvVar`s for the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_list")]
    pub env: Option<Value>,
    /// Kubernetes `EnvFromSource`s for the runtime container.
    #[serde(rename = "envFrom", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_list")]
    pub env_from: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(
        rename = "InvokeStrategy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub invoke_strategy: Option<InvokeStrategy>,
    /// Seconds a call may take (60 when unset).
    #[serde(
        rename = "functionTimeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub function_timeout: Option<i64>,
    /// Seconds an idle specialized instance is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idletimeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<StreamingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<InvocationConfig>,
    /// Most specialized instances at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i64>,
    /// Concurrent requests one instance serves.
    #[serde(
        rename = "requestsPerPod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub requests_per_pod: Option<i64>,
    #[serde(rename = "onceOnly", default, skip_serializing_if = "Option::is_none")]
    pub once_only: Option<bool>,
    #[serde(
        rename = "retainPods",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub retain_pods: Option<i64>,
    #[serde(
        rename = "provisionedConcurrency",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provisioned_concurrency: Option<ProvisionedConcurrencyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<VersioningConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
    /// A Kubernetes `PodSpec` (container functions), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub podspec: Option<Value>,
}

/// `FunctionPackageRef`: the package and the entry point in it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct FunctionPackageRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packageref: Option<PackageRef>,
    #[serde(
        rename = "functionName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub function_name: Option<String>,
}

/// `InvokeStrategy`: how the function's instances are run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct InvokeStrategy {
    #[serde(
        rename = "ExecutionStrategy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub execution_strategy: Option<ExecutionStrategy>,
    /// `execution`.
    #[serde(
        rename = "StrategyType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub strategy_type: Option<String>,
}

/// `ExecutionStrategy`: executor type, scale bounds, specialization timeout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ExecutionStrategy {
    /// `poolmgr`, `newdeploy` or `container`.
    #[serde(
        rename = "ExecutorType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub executor_type: Option<String>,
    #[serde(rename = "MinScale", default, skip_serializing_if = "Option::is_none")]
    pub min_scale: Option<i64>,
    #[serde(rename = "MaxScale", default, skip_serializing_if = "Option::is_none")]
    pub max_scale: Option<i64>,
    #[serde(
        rename = "TargetCPUPercent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub target_cpu_percent: Option<i64>,
    /// Seconds to wait for an instance to specialize.
    #[serde(
        rename = "SpecializationTimeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub specialization_timeout: Option<i64>,
    /// Kubernetes `MetricSpec`s for an HPA, kept as written.
    #[serde(
        rename = "hpaMetrics",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "preserve_list")]
    pub hpa_metrics: Option<Value>,
    /// A Kubernetes `HorizontalPodAutoscalerBehavior`, kept as written.
    #[serde(
        rename = "hpaBehavior",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "preserve_object")]
    pub hpa_behavior: Option<Value>,
}

/// `StreamingConfig`: the router streams the answer instead of buffering it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_seconds: Option<i64>,
}

/// `ToolConfig`: the function as an MCP tool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub input_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// `StateConfig`: a keyed-state keyspace and its quotas.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<String>,
    #[serde(
        rename = "defaultTTL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<KeySource>,
}

/// Where a key comes from in a request: a `header` or a `queryparam`, by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct KeySource {
    pub source: String,
    pub name: String,
}

/// `InvocationConfig`: asynchronous invocations' retries, age and destinations.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvocationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<DestinationRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<DestinationRef>,
}

/// `DestinationRef`: a function or a topic that receives a result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DestinationRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicRef>,
}

/// `TopicRef`: a message-queue topic that receives a result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicRef {
    pub message_queue_type: String,
    pub topic: String,
}

/// `ProvisionedConcurrencyConfig`: specialized instances kept warm.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ProvisionedConcurrencyConfig {
    pub target: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<ProvisionedWindow>>,
}

/// `ProvisionedWindow`: a cron-started window with its own target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ProvisionedWindow {
    pub name: String,
    pub start: String,
    pub duration: String,
    pub target: i64,
}

/// `VersioningConfig`: immutable snapshots of the function and their retention.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct VersioningConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<i64>,
}

/// `AgentConfig`: session-scoped invocations and their lifecycle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<KeySource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<i64>,
}

/// `FunctionStatus`: Fusion's conditions, and Fission's provisioned counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_ready: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_target: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_spec_target: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl Conditions for FunctionStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
