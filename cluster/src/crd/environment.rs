//! `Environment` (`fission.io/v1`): a language runtime, its builder, its pool
//! size and resources, with Fission's field names.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{preserve_object, Resources, Status};

/// The runtime image functions run in, the builder that builds their
/// packages, and the pool of generic instances (Fission's `EnvironmentSpec`).
// kube's attribute repeats `type_ = "string"` per column, which clippy
// mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fission.io",
    version = "v1",
    kind = "Environment",
    namespaced,
    status = "Status",
    category = "fission",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.runtime.image"),
    printcolumn(name = "Pool", type_ = "integer", json_path = ".spec.poolsize"),
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
    doc = "An environment for building and running functions (Fission's Environment)."
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// The environment API version: 1, 2 (builds) or 3 (pool size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3))]
    pub version: Option<i64>,
    /// How functions run.
    pub runtime: Runtime,
    /// How source packages are built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<Builder>,
    /// `single` (default) or `infinite` functions per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_functions_per_container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_access_to_external_network: Option<bool>,
    /// CPU and memory requests and limits of every instance (a Kubernetes
    /// `ResourceRequirements`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Generic instances kept warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub poolsize: Option<i64>,
    /// Seconds an instance may drain before it is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period: Option<i64>,
    /// Keep a zip archive as it is rather than unpacking it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeparchive: Option<bool>,
    /// The Secret Kubernetes pulls the images with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imagepullsecret: Option<String>,
}

/// `Runtime`: the image that serves functions, and Kubernetes overrides of its
/// container or pod (kept as written).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Runtime {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub container: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub podspec: Option<Value>,
}

/// `Builder`: the image and command that build source packages.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Builder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub container: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub podspec: Option<Value>,
}
