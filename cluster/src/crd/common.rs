//! Pieces every `fission.io/v1` custom resource shares: references to other
//! resources, the function reference of triggers and workflow tasks, the retry
//! policy, the status with its conditions, and the schema helpers for fields
//! the API server must keep as they are (embedded Kubernetes types, free JSON).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An object whose fields the API server keeps unchecked: embedded Kubernetes
/// types (PodSpec, Container, ResourceRequirements, HPA metrics, ...) whose full
/// schemas would weigh more than all of Fission's own, and that Fusion passes on.
pub(crate) fn preserve_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A list of such objects (`env`, `envFrom`, `imagePullSecrets`, `hpaMetrics`).
pub(crate) fn preserve_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}

/// Any JSON value (a function tool's JSON Schema).
pub(crate) fn any_json(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A Kubernetes quantity: an integer or a string (`500m`, `1Gi`).
pub(crate) fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
    })
}

/// An RFC 3339 time (`metav1.Time`).
pub(crate) fn date_time(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "date-time",
    })
}

/// `EnvironmentReference`: the environment a function runs in or a package
/// builds in. The namespace defaults to the referring object's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct EnvironmentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `SecretReference` and `ConfigMapReference`: a Secret or ConfigMap a
/// function reads, and where its files go.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
}

/// `PackageRef`: the package holding a function's code.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PackageRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resourceversion: Option<String>,
}

/// `FunctionReference`: what a trigger or a workflow task calls. `type` is
/// `name` (the default when unset, as Fusion's workflows allow) or
/// `function-weights` (a canary split over `functionweights`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct FunctionReference {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ref_type: Option<FunctionReferenceType>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functionweights: Option<BTreeMap<String, i64>>,
}

/// How a `FunctionReference` names its function.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FunctionReferenceType {
    #[serde(rename = "name")]
    Name,
    #[serde(rename = "function-weights")]
    FunctionWeights,
}

/// `RetryPolicy`: attempts and exponential backoff (Go durations), for
/// workflow tasks and asynchronous invocations.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_cap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// The condition type every resource reports: whether Fusion applied it.
pub const READY: &str = "Ready";

/// A `metav1.Condition`: one observation of an object's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` for every Fusion resource.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// A CamelCase word a program can match (`Applied`, `InvalidSpec`, ...).
    #[serde(default)]
    pub reason: String,
    /// What a person reads: what is wrong and what to do.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    #[schemars(schema_with = "date_time")]
    pub last_transition_time: Time,
}

impl Condition {
    /// The `Ready` condition of an object at `generation`, as of now.
    pub fn ready(
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
        generation: Option<i64>,
    ) -> Condition {
        Condition {
            type_: READY.to_string(),
            status,
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        }
    }
}

/// A condition's status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// The status of every kind but Package and Function: the generation Fusion
/// last reconciled and its conditions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Conditions that hold one entry per `type`: setting one replaces the entry
/// of its type, keeping `lastTransitionTime` when the status did not change.
pub trait Conditions {
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;

    fn set_condition(&mut self, condition: Condition) {
        let conditions = self.conditions_mut();
        match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(old) => {
                let since =
                    (old.status == condition.status).then(|| old.last_transition_time.clone());
                *old = condition;
                if let Some(since) = since {
                    old.last_transition_time = since;
                }
            }
            None => conditions.push(condition),
        }
    }
}

impl Conditions for Status {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// A Kubernetes `ResourceRequirements`: quantities by resource name (`cpu`,
/// `memory`), as written; `claims` kept as written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_list")]
    pub claims: Option<Value>,
}

/// A quantity (`500m`, `1Gi`, `2`), kept as written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(transparent)]
pub struct Quantity(#[schemars(schema_with = "int_or_string")] pub Value);
