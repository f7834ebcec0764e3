//! The triggers (`fission.io/v1`): `HTTPTrigger`, `TimeTrigger`,
//! `MessageQueueTrigger` and `KubernetesWatchTrigger`, with Fission's field
//! names.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{preserve_object, FunctionReference, Status};

/// `HTTPTriggerSpec`: a URL (or prefix) and methods routed to a function.
// kube's attribute repeats `type_ = "string"` per column, which clippy
// mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fission.io",
    version = "v1",
    kind = "HTTPTrigger",
    plural = "httptriggers",
    namespaced,
    status = "Status",
    category = "fission",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.relativeurl"),
    printcolumn(
        name = "Function",
        type_ = "string",
        json_path = ".spec.functionref.name"
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
    doc = "An HTTP route to a function (Fission's HTTPTrigger)."
)]
#[serde(rename_all = "camelCase")]
pub struct HTTPTriggerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relativeurl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_prefix: Option<bool>,
    /// Deprecated by Fission in favour of `methods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// `async` makes every call an asynchronous invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_mode: Option<String>,
    pub functionref: FunctionReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub createingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingressconfig: Option<IngressConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<RouteConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_config: Option<CorsConfig>,
}

/// `IngressConfig` (deprecated by Fission for `routeConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct IngressConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

/// `RouteConfig`: an Ingress or a Gateway API HTTPRoute for the trigger.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RouteConfig {
    /// `ingress` or `gateway`.
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnames: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRouteConfig>,
}

/// `GatewayRouteConfig`: the Gateways the HTTPRoute attaches to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_refs: Option<Vec<GatewayParentRef>>,
}

/// `GatewayParentRef`: a Gateway, and optionally one of its listeners.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// `HTTPTriggerCorsConfig`: the CORS headers of the trigger's answers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origins: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// `TimeTriggerSpec`: a cron schedule that calls a function.
// kube's attribute repeats `type_ = "string"` per column, which clippy
// mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fission.io",
    version = "v1",
    kind = "TimeTrigger",
    namespaced,
    status = "Status",
    category = "fission",
    printcolumn(name = "Cron", type_ = "string", json_path = ".spec.cron"),
    printcolumn(
        name = "Function",
        type_ = "string",
        json_path = ".spec.functionref.name"
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
    doc = "A cron schedule that calls a function (Fission's TimeTrigger)."
)]
pub struct TimeTriggerSpec {
    pub cron: String,
    pub functionref: FunctionReference,
    /// The HTTP method of the call (POST when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The path of the call inside the function (`/` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

/// `MessageQueueTriggerSpec`: a topic whose messages call a function.
// kube's attribute repeats `type_ = "string"` per column, which clippy
// mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fission.io",
    version = "v1",
    kind = "MessageQueueTrigger",
    namespaced,
    status = "Status",
    category = "fission",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.messageQueueType"),
    printcolumn(name = "Topic", type_ = "string", json_path = ".spec.topic"),
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
    doc = "A message queue topic whose messages call a function (Fission's MessageQueueTrigger)."
)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueueTriggerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functionref: Option<FunctionReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_queue_type: Option<String>,
    pub topic: String,
    #[serde(rename = "respTopic", default, skip_serializing_if = "Option::is_none")]
    pub resp_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    /// The scaler's settings (KEDA trigger metadata), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `fission` (default) or `keda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtkind: Option<String>,
    /// A Kubernetes `PodSpec`, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub podspec: Option<Value>,
}

/// `KubernetesWatchTriggerSpec`: Kubernetes objects whose events call a function.
// kube's attribute repeats `type_ = "string"` per column, which clippy
// mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fission.io",
    version = "v1",
    kind = "KubernetesWatchTrigger",
    namespaced,
    status = "Status",
    category = "fission",
    printcolumn(name = "Watches", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Function",
        type_ = "string",
        json_path = ".spec.functionref.name"
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
    doc = "Kubernetes objects whose events call a function (Fission's KubernetesWatchTrigger)."
)]
pub struct KubernetesWatchTriggerSpec {
    /// The namespace watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The kind watched: `pod`, `service`, `replicationcontroller` or `job`
    /// (any case).
    #[serde(rename = "type")]
    pub watch_type: String,
    /// Labels the watched objects carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labelselector: Option<BTreeMap<String, String>>,
    pub functionref: FunctionReference,
}
