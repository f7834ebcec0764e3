//! The custom resources against real documents: every `fission.io/v1`
//! document of this repository's tests, Fission's own spec test data, a
//! document per kind setting every field of Fission's types, and the sample
//! resources in deploy/kubernetes/examples/ must (1) round-trip through the
//! typed resource without losing or adding a field, and (2) fit the generated
//! CRD schema as the API server reads it: no field pruned, no type refused.

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use super::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The YAML files the documents come from.
fn sources() -> Vec<PathBuf> {
    let mut files = vec![
        root().join("cluster/testdata/repo-tests.yaml"),
        root().join("cluster/testdata/fission-all-fields.yaml"),
        root().join("cluster/testdata/fission-cli-shapes.yaml"),
    ];
    for dir in [
        "tests/fixtures/fission/spec_archive/specs",
        "tests/fixtures/fission/spec_merge/specs",
        "deploy/kubernetes/examples",
    ] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// Every document of our kinds, with where it is from.
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for file in sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde_yaml::with::singleton_map_recursive::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} document {i}: {e}", file.display()));
            let ours = value["apiVersion"] == "fission.io/v1"
                && value["kind"]
                    .as_str()
                    .is_some_and(|k| kind_crd(k).is_some());
            if ours {
                let name = value["metadata"]["name"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                let from = file.strip_prefix(root()).unwrap_or(&file).display();
                docs.push((
                    format!("{from}: {} {name}", value["kind"].as_str().unwrap()),
                    value,
                ));
            }
        }
    }
    docs
}

fn kind_crd(kind: &str) -> Option<Value> {
    definitions()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .map(|crd| serde_json::to_value(crd).unwrap())
}

/// The document as the typed resource writes it back.
fn through<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(typed).unwrap())
}

fn round_trip(doc: &Value) -> Result<Value, String> {
    match doc["kind"].as_str().unwrap_or_default() {
        "Environment" => through::<Environment>(doc),
        "Package" => through::<Package>(doc),
        "Function" => through::<Function>(doc),
        "HTTPTrigger" => through::<HTTPTrigger>(doc),
        "TimeTrigger" => through::<TimeTrigger>(doc),
        "MessageQueueTrigger" => through::<MessageQueueTrigger>(doc),
        "KubernetesWatchTrigger" => through::<KubernetesWatchTrigger>(doc),
        "Workflow" => through::<Workflow>(doc),
        other => Err(format!("not a kind of ours: {other}")),
    }
}

/// The leaves of a document, by path (`spec.runtime.image`), empty objects
/// and lists included as leaves.
fn leaves(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                leaves(v, &join(k), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, &join(&i.to_string()), out);
            }
        }
        _ => out.push((path.to_string(), value.clone())),
    }
}

/// What `written` lost or added compared with `read`. A `null` (as
/// `fission spec` writes unset lists, maps and times) reads as unset, so it
/// may be dropped, except `resultPath: null`, which means something else
/// (discard the result) and must stay.
fn differences(read: &Value, written: &Value) -> Vec<String> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    leaves(read, "", &mut a);
    leaves(written, "", &mut b);
    a.retain(|(path, value)| !value.is_null() || path.ends_with("resultPath"));
    let mut out: Vec<String> = a
        .iter()
        .filter(|leaf| !b.contains(leaf))
        .map(|(p, v)| format!("lost {p}: {v}"))
        .collect();
    out.extend(
        b.iter()
            .filter(|leaf| !a.contains(leaf))
            .map(|(p, v)| format!("added {p}: {v}")),
    );
    out
}

/// What the API server would do with `value` under a structural `schema`:
/// the fields it would prune (not in the schema), and the values it would
/// refuse (wrong type, missing required field, not in the enum).
fn check_schema(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if value.is_null() {
        if schema["nullable"] != true && path != "metadata.creationTimestamp" {
            out.push(format!("{path}: null where the schema is not nullable"));
        }
        return;
    }
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!(
                "{path}: {value} is neither an integer nor a string"
            ));
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("{path}: schema type {other}"),
    };
    if !type_ok {
        out.push(format!("{path}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            out.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    match value {
        Value::Object(map) => {
            for required in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(required.as_str().unwrap()) {
                    out.push(format!(
                        "{}: required and missing",
                        join(required.as_str().unwrap())
                    ));
                }
            }
            for (k, v) in map {
                // The API server handles the root's type and object metadata.
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(property) = schema["properties"].get(k) {
                    check_schema(v, property, &join(k), out);
                } else if schema["additionalProperties"].is_object() {
                    check_schema(v, &schema["additionalProperties"], &join(k), out);
                } else if !preserve {
                    out.push(format!("{}: pruned (not in the schema)", join(k)));
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, item) in items.iter().enumerate() {
                check_schema(item, &schema["items"], &join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

fn schema_problems(doc: &Value) -> Vec<String> {
    let crd = kind_crd(doc["kind"].as_str().unwrap()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut out = Vec::new();
    check_schema(doc, schema, "", &mut out);
    out
}

#[test]
fn every_fission_document_round_trips_through_the_typed_resources() {
    let docs = documents();
    // Every kind is covered, and by more than the all-fields file alone.
    for crd in definitions() {
        let kind = crd.spec.names.kind;
        let count = docs
            .iter()
            .filter(|(_, d)| d["kind"] == kind.as_str())
            .count();
        assert!(count >= 2, "only {count} documents of kind {kind}");
    }
    let mut failures = Vec::new();
    for (from, doc) in &docs {
        match round_trip(doc) {
            Err(e) => failures.push(format!("{from}: does not read: {e}")),
            Ok(written) => failures.extend(
                differences(doc, &written)
                    .into_iter()
                    .map(|d| format!("{from}: {d}")),
            ),
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fission_document_fits_the_crd_schemas() {
    let mut failures = Vec::new();
    for (from, doc) in documents() {
        failures.extend(
            schema_problems(&doc)
                .into_iter()
                .map(|p| format!("{from}: {p}")),
        );
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The two checks above see what they claim to: an unknown field is lost by
/// the typed resource and pruned by the schema, a wrong type is refused.
#[test]
fn the_checks_catch_a_lost_field_and_a_wrong_type() {
    let doc: Value = serde_yaml::from_str(
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: py\n\
         spec:\n  version: 3\n  colour: blue\n  runtime:\n    image: python\n  poolsize: lots\n",
    )
    .unwrap();
    assert_eq!(
        schema_problems(&doc),
        [
            "spec.colour: pruned (not in the schema)",
            "spec.poolsize: \"lots\" is not of type \"integer\""
        ]
    );
    let mut fixed = doc.clone();
    fixed["spec"]["poolsize"] = 2.into();
    assert_eq!(
        differences(&fixed, &round_trip(&fixed).unwrap()),
        ["lost spec.colour: \"blue\""]
    );

    let doc: Value = serde_yaml::from_str(
        "apiVersion: fission.io/v1\nkind: TimeTrigger\nmetadata:\n  name: t\nspec:\n  functionref:\n    name: f\n",
    )
    .unwrap();
    assert_eq!(schema_problems(&doc), ["spec.cron: required and missing"]);
}

/// A Workflow as the typed resource writes it is what Fusion's engine reads
/// and validates (its parser refuses unknown fields).
#[test]
fn every_workflow_as_written_back_is_valid_for_the_engine() {
    let mut checked = 0;
    for (from, doc) in documents() {
        if doc["kind"] != "Workflow" {
            continue;
        }
        let typed: Workflow = serde_json::from_value(doc).unwrap();
        let text = serde_yaml::to_string(&typed).unwrap();
        if let Err(errors) = engine::sfn::parse_and_validate(&text) {
            panic!("{from}: {errors:?}\n{text}");
        }
        checked += 1;
    }
    assert!(checked >= 4, "{checked}");
}

/// `resultPath: null` (discard the result) stays null, apart from unset.
#[test]
fn a_workflow_state_keeps_result_path_null_apart_from_unset() {
    let state = |yaml: &str| -> BranchState { serde_yaml::from_str(yaml).unwrap() };
    assert_eq!(
        state("type: Task\nresultPath: null\n").result_path,
        Some(None)
    );
    assert_eq!(state("type: Task\n").result_path, None);
    assert_eq!(
        state("type: Task\nresultPath: $.x\n").result_path,
        Some(Some("$.x".to_string()))
    );
    let written = serde_json::to_value(state("type: Task\nresultPath: null\n")).unwrap();
    assert_eq!(
        written,
        serde_json::json!({"type": "Task", "resultPath": null})
    );
}

#[test]
fn every_kind_is_fission_s_with_status_and_ready_and_age_columns() {
    let plurals: Vec<String> = definitions()
        .iter()
        .map(|c| c.spec.names.plural.clone())
        .collect();
    assert_eq!(
        plurals,
        [
            "environments",
            "packages",
            "functions",
            "workflows",
            "httptriggers",
            "timetriggers",
            "messagequeuetriggers",
            "kuberneteswatchtriggers"
        ]
    );
    for crd in definitions() {
        let kind = &crd.spec.names.kind;
        assert_eq!(crd.spec.group, GROUP, "{kind}");
        assert_eq!(crd.spec.scope, "Namespaced", "{kind}");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{}.fission.io", crd.spec.names.plural).as_str())
        );
        let version = &crd.spec.versions[0];
        assert_eq!(
            (version.name.as_str(), version.served, version.storage),
            (VERSION, true, true)
        );
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has no status subresource"
        );
        let columns: Vec<(String, String, String)> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
            .collect();
        assert!(
            columns.contains(&(
                "Ready".into(),
                "string".into(),
                r#".status.conditions[?(@.type=="Ready")].status"#.into()
            )),
            "{kind}: {columns:?}"
        );
        assert_eq!(
            columns.last(),
            Some(&(
                "Age".into(),
                "date".into(),
                ".metadata.creationTimestamp".into()
            )),
            "{kind}"
        );
        // The status schema carries conditions keyed by type.
        let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
        let conditions =
            &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["items"]["required"],
            serde_json::json!(["lastTransitionTime", "status", "type"]),
            "{kind}"
        );
    }
}

fn condition(status: ConditionStatus, reason: &str, at: &str) -> Condition {
    Condition {
        type_: READY.to_string(),
        status,
        reason: reason.to_string(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(at.parse().unwrap()),
    }
}

#[test]
fn setting_a_condition_keeps_its_transition_time_while_its_status_holds() {
    let mut status = Status::default();
    status.set_condition(condition(
        ConditionStatus::False,
        "Pending",
        "2026-01-01T00:00:00Z",
    ));
    status.set_condition(condition(
        ConditionStatus::False,
        "StillPending",
        "2026-01-01T00:05:00Z",
    ));
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(status.conditions[0].reason, "StillPending");
    assert_eq!(
        status.conditions[0].last_transition_time,
        Time("2026-01-01T00:00:00Z".parse().unwrap())
    );
    status.set_condition(condition(
        ConditionStatus::True,
        "Applied",
        "2026-01-01T00:10:00Z",
    ));
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(
        status.conditions[0].last_transition_time,
        Time("2026-01-01T00:10:00Z".parse().unwrap())
    );
    // A fresh one keeps the time of the last change too.
    let again = Condition::ready(ConditionStatus::True, "Applied", "", Some(1));
    assert_eq!(again.type_, READY);
    status.set_condition(again);
    let written = serde_json::to_value(&status).unwrap();
    assert_eq!(
        written,
        serde_json::json!({"conditions": [{
            "type": "Ready", "status": "True", "reason": "Applied", "message": "",
            "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:10:00Z"
        }]})
    );
}

/// The sample packages hold the files of workflow-examples/functions/ they
/// name, byte for byte.
#[test]
fn the_sample_packages_hold_the_example_functions() {
    use base64::Engine;
    let mut checked = 0;
    for (from, doc) in documents() {
        if !from.starts_with("deploy/kubernetes/examples") || doc["kind"] != "Package" {
            continue;
        }
        let source = doc["metadata"]["annotations"]["fusion.dev/source"]
            .as_str()
            .unwrap_or_else(|| panic!("{from}: no fusion.dev/source annotation"));
        let literal = doc["spec"]["deployment"]["literal"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(literal)
            .unwrap();
        assert_eq!(
            bytes,
            std::fs::read(root().join(source)).unwrap(),
            "{from}: the literal is not {source}; regenerate it with base64 -w0 {source}"
        );
        checked += 1;
    }
    assert_eq!(checked, 4);
}
