//! `Workflow` (`fission.io/v1`, Fission's RFC-0022): a Step Functions style
//! state machine whose Task states call functions, with the field names of
//! Fission's types and the engine's (`engine::sfn::spec`), including Fusion's
//! `waitForCallback` extension and `resultPath: null` (discard the result).
//! Branch states cannot fan out again, as in Fission: the schema stays finite.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::common::{FunctionReference, Quantity, RetryPolicy, Status};

/// The state machine: where it starts, its states by name, the default
/// retry of its Task states, and bounds on a run (Fission's `WorkflowSpec`).
// kube's attribute repeats `type_ = "string"` per column, which clippy
// mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fission.io",
    version = "v1",
    kind = "Workflow",
    namespaced,
    status = "Status",
    shortname = "wf",
    category = "fission",
    printcolumn(name = "StartAt", type_ = "string", json_path = ".spec.startAt"),
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
    doc = "A state machine whose Task states call functions (Fission's RFC-0022 Workflow)."
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    pub start_at: String,
    #[schemars(extend("minProperties" = 1, "maxProperties" = 100))]
    pub states: BTreeMap<String, WorkflowState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retry: Option<RetryPolicy>,
    /// Bounds a whole run (a Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_retention: Option<RetentionPolicy>,
}

/// `WorkflowRetentionPolicy`: how many finished runs, and how old, keep
/// their history.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// `WorkflowState`: which fields apply depends on `type`; the engine's
/// validation says which, as Fission's admission does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowState {
    #[serde(flatten)]
    pub common: BranchState,
    /// Parallel: the sub-machines; Map: the one iterator template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10))]
    pub branches: Option<Vec<WorkflowBranch>>,
    /// Map: the array to iterate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_path: Option<String>,
    /// Map/Parallel: branches at once (0 or unset: the engine's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_concurrency: Option<i64>,
}

/// `WorkflowBranch`: a sub-machine of a Parallel or Map state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowBranch {
    pub start_at: String,
    #[schemars(extend("minProperties" = 1, "maxProperties" = 20))]
    pub states: BTreeMap<String, BranchState>,
}

/// `WorkflowBranchState`: a state without fan-out; also the fields every
/// top-level state shares.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BranchState {
    /// `Task`, `Choice`, `Parallel`, `Map`, `Wait`, `Succeed` or `Fail`.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["Task", "Choice", "Parallel", "Map", "Wait", "Succeed", "Fail"]))]
    pub state_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionReference>,
    /// Wait: how long (a Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Task: bounds one attempt (a Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch: Option<Vec<CatchRoute>>,
    /// Fusion's extension: the Task's result is what its function later
    /// POSTs to a one-time callback URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_callback: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<ChoiceRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_path: Option<String>,
    /// Unset: the result replaces the input; `null`: the result is discarded;
    /// a JSONPath: the result is written there.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_path: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<bool>,
}

/// Reads a field that is present, `null` included, as `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `WorkflowCatchRoute`: where a failed Task goes for an error type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatchRoute {
    pub error_type: String,
    pub next: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_path: Option<String>,
}

/// `WorkflowChoiceCondition`: a comparison on the state's input.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChoiceCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_equals: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric_equals: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric_greater_than: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric_less_than: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean_equals: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_null: Option<bool>,
}

/// `WorkflowChoiceRule`: a condition, or `and`/`or`/`not` of conditions, and
/// the state it leads to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ChoiceRule {
    #[serde(flatten)]
    pub condition: ChoiceCondition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub and: Option<Vec<ChoiceCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or: Option<Vec<ChoiceCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<ChoiceCondition>,
    pub next: String,
}
