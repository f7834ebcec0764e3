//! The workflow document: Fission Workflows' YAML format (unchanged) plus Fusion's
//! optional extensions (retry, timeouts, concurrency, a fallback task on
//! failure). Pure data, no I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A workflow: tasks, their dependencies and the task whose output is the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// Format version (Fission Workflows uses `1`); also spelled `apiversion`.
    #[serde(default, alias = "apiversion", skip_serializing_if = "Option::is_none")]
    pub api_version: Option<Value>,
    /// Optional name (used by `POST /v1/workflows` when no `?name=` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The id of the task whose output is the workflow's output.
    pub output: String,
    /// The tasks, by id.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskSpec>,
    /// Time limit of a whole run, e.g. "30s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Most of this workflow's own tasks in flight at once (a task that runs a
    /// sub-workflow counts as one until it ends). Fusion extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Set for Fission's RFC-0022 format: the state machine this workflow runs
    /// (then `output` and `tasks` are empty). Filled by the engine, never read
    /// from a Fission Workflows document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub state_machine: Option<Box<crate::sfn::WorkflowSpec>>,
}

/// One task: what it runs, its inputs, what it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// A function name, a built-in (`noop`, `if`, `foreach`, ...) or a workflow name.
    #[serde(default = "default_run")]
    pub run: String,
    /// A scalar is the `default` input; a map gives named inputs. Strings that are
    /// wholly `{ ... }` are JavaScript expressions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    /// Ids of the tasks that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Time limit of one attempt, e.g. "5s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// For a task that runs a sub-workflow (`foreach`, an inline workflow, a
    /// workflow by name, ...): most of its tasks in flight at once (for
    /// `foreach`, most items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Fusion extension: the id of the task that runs instead when this one
    /// fails for good (after its retries); its output then stands for this
    /// task's output. That task never runs otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            run: default_run(),
            inputs: None,
            requires: Vec::new(),
            retry: None,
            timeout: None,
            concurrency: None,
            on_failure: None,
        }
    }
}

impl TaskSpec {
    /// What `run` names, as the key of a function, built-in or workflow: a Fission
    /// Workflows reference `fission://<namespace>/<fn>` is the function's key
    /// (`fn` in `default`, `namespace/fn` elsewhere), `fission://<fn>` is `fn`;
    /// anything else is itself.
    pub fn target(&self) -> Cow<'_, str> {
        run_target(&self.run)
    }
}

/// See [`TaskSpec::target`].
pub fn run_target(run: &str) -> Cow<'_, str> {
    let Some(rest) = run.strip_prefix(FISSION_SCHEME) else {
        return Cow::Borrowed(run);
    };
    match rest.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            Cow::Owned(pool_manager::resources::qualified(namespace, name))
        }
        Some(_) => Cow::Borrowed(run),
        None => Cow::Borrowed(rest),
    }
}

/// The scheme of Fission Workflows' function references.
pub const FISSION_SCHEME: &str = "fission://";

fn default_run() -> String {
    "noop".to_string()
}

/// `maxAttempts`, a whole number: a negative, fractional or too large one
/// is said in a document's words (serde said "a whole number from 0", and
/// 0 is refused), and 0 is refused with the other retry checks, where it
/// is written.
fn whole_attempts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "maxAttempts is {v}: a whole number of attempts, from 1 to {}",
                u32::MAX
            ))
        })
}

/// Fusion extension: retry a task's failed attempts (timeouts, connection errors, 5xx).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Total attempts including the first (at least 1).
    #[schemars(range(min = 1))]
    #[serde(deserialize_with = "whole_attempts")]
    pub max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// Randomize each delay by up to this fraction (0..=1); default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackoffSpec {
    /// First delay, e.g. "100ms" (default 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    /// Largest delay, e.g. "10s" (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// Factor between consecutive delays (at least 1; default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
}

/// JSON Schema of the workflow format (the source of `schemas/workflow.schema.json`).
pub fn workflow_json_schema() -> Value {
    let schema = schemars::schema_for!(WorkflowSpec);
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

/// The longest duration a workflow may give, in seconds (about 31 years).
pub const MAX_DURATION_SECS: f64 = 1e9;

/// Parses a duration in Go's notation ("100ms", "2s", "1m30s", "1.5h", "250us").
/// A bare number is milliseconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    // Milliseconds exactly, not through a float.
    if let Ok(ms) = text.trim().parse::<u64>() {
        return duration_of_ms(ms);
    }
    parse_unbounded(text)
        .filter(|secs| *secs <= MAX_DURATION_SECS)
        .map(Duration::from_secs_f64)
}

/// `ms` milliseconds (a duration written as a bare number), unless longer
/// than [`MAX_DURATION_SECS`].
pub fn duration_of_ms(ms: u64) -> Option<Duration> {
    (ms / 1000 <= MAX_DURATION_SECS as u64).then(|| Duration::from_millis(ms))
}

/// Why `text` is not a duration, for an error after its name: too long, or
/// not one at all (`example` shows one).
pub fn not_a_duration(text: &str, example: &str) -> String {
    if is_too_long(text) {
        format!("is longer than the longest duration, {MAX_DURATION_SECS}s (about 31 years)")
    } else {
        format!("is not a duration (e.g. {example})")
    }
}

/// Whether `text` is a duration, only longer than [`MAX_DURATION_SECS`].
pub fn is_too_long(text: &str) -> bool {
    parse_unbounded(text).is_some_and(|secs| secs > MAX_DURATION_SECS)
}

/// `text` as seconds, however many.
fn parse_unbounded(text: &str) -> Option<f64> {
    let s = text.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(ms) = s.parse::<u64>() {
        return Some(ms as f64 / 1000.0);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * factor;
    }
    total.is_finite().then_some(total)
}

/// Whether a value is an embedded task spec (a map with a string `run`).
pub fn is_task_spec(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| m.get("run").is_some_and(Value::is_string))
}

/// Whether a value is an embedded workflow spec (a map with a map `tasks`).
pub fn is_workflow_spec(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| m.get("tasks").is_some_and(Value::is_object))
}

impl TaskSpec {
    /// The task's inputs as named inputs: a scalar or list becomes `default`.
    pub fn named_inputs(&self) -> BTreeMap<String, Value> {
        match &self.inputs {
            None | Some(Value::Null) => BTreeMap::new(),
            // A whole task or workflow spec is one value: the default input.
            Some(v) if is_task_spec(v) || is_workflow_spec(v) => {
                BTreeMap::from([("default".to_string(), v.clone())])
            }
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(other) => BTreeMap::from([("default".to_string(), other.clone())]),
        }
    }

    pub fn set_input(&mut self, key: &str, value: Value) {
        let mut named = self.named_inputs();
        named.insert(key.to_string(), value);
        self.inputs = Some(Value::Object(named.into_iter().collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fission_function_references_are_function_keys() {
        assert_eq!(run_target("fission://default/hello"), "hello");
        assert_eq!(run_target("fission://team-a/hello"), "team-a/hello");
        assert_eq!(run_target("fission://hello"), "hello");
        assert_eq!(run_target("hello"), "hello");
        assert_eq!(run_target("fission:///hello"), "fission:///hello");
    }

    #[test]
    fn parses_fission_yaml() {
        let yaml = r#"
apiversion: 1
output: WhaleIt
tasks:
  GenerateFortune:
    run: fortune
  WhaleIt:
    run: whalesay
    inputs: "{ $.Tasks.GenerateFortune.Output }"
    requires: [GenerateFortune]
  Nothing: {}
"#;
        let spec: WorkflowSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(spec.output, "WhaleIt");
        assert_eq!(spec.tasks["Nothing"].run, "noop");
        assert_eq!(spec.tasks["WhaleIt"].requires, vec!["GenerateFortune"]);
        assert_eq!(
            spec.tasks["WhaleIt"].named_inputs()["default"],
            Value::String("{ $.Tasks.GenerateFortune.Output }".into())
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn schema_has_tasks() {
        let s = workflow_json_schema().to_string();
        assert!(s.contains("tasks") && s.contains("maxAttempts"));
    }
}

#[cfg(test)]
mod schema_file {
    const PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/workflow.schema.json"
    );

    fn generated() -> String {
        serde_json::to_string_pretty(&super::workflow_json_schema()).unwrap_or_default() + "\n"
    }

    /// `schemas/workflow.schema.json` is generated from the Rust types; run
    /// `cargo test -p engine regenerate_schema -- --ignored` after changing them.
    #[test]
    fn schema_file_is_in_sync() {
        let on_disk = std::fs::read_to_string(PATH).unwrap_or_default();
        assert!(
            on_disk == generated(),
            "schemas/workflow.schema.json is stale: regenerate it"
        );
    }

    #[test]
    #[ignore]
    fn regenerate_schema() {
        std::fs::write(PATH, generated()).unwrap();
    }
}
