//! `Package` (`fission.io/v1`): a function's code, as a source archive to build
//! or a deployment archive to run, with Fission's field names.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{
    date_time, preserve_list, preserve_object, Condition, Conditions, EnvironmentReference,
};

/// A function's code: a source archive to build in `environment`, or a
/// deployment archive ready to run (Fission's `PackageSpec`).
// kube's attribute repeats `type_ = "string"` per column, which clippy
// mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fission.io",
    version = "v1",
    kind = "Package",
    namespaced,
    status = "PackageStatus",
    shortname = "pkg",
    category = "fission",
    printcolumn(name = "Build", type_ = "string", json_path = ".status.buildstatus"),
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
    doc = "A function's code: a source archive to build or a deployment archive (Fission's Package)."
)]
pub struct PackageSpec {
    /// The environment that builds the source archive.
    pub environment: EnvironmentReference,
    /// Source code to build into `deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Archive>,
    /// What the runtime loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Archive>,
    /// The build command, overriding the environment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildcmd: Option<String>,
}

/// `Archive`: code inline (`literal`, base64), at a `url`, or in an `oci` image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Archive {
    /// `literal`, `url` or `oci` (or empty).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub archive_type: Option<String>,
    /// The archive's bytes, base64 as Kubernetes writes `[]byte`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "byte"))]
    pub literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciArchive>,
    /// A `LocalObjectReference` to the Secret with the URL's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub secretref: Option<Value>,
}

/// `Checksum`: `sha256` and the hex sum.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Checksum {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
}

/// `OCIArchive`: an image whose files are the code.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OciArchive {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_list")]
    pub image_pull_secrets: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `PackageStatus`: the build's state and log, plus Fusion's conditions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageStatus {
    /// `pending`, `running`, `succeeded`, `failed` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildstatus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildlog: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nullable_date_time")]
    pub last_update_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

fn nullable_date_time(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = date_time(generator);
    schema.insert("nullable".into(), true.into());
    schema
}

impl Conditions for PackageStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
