//! The serde types of Fission's RFC-0022 `Workflow` (`fission.io/v1`), with the
//! field names of Fission's CRD schema (`crds/v1/fission.io_workflows.yaml`), and
//! the parser that reads a whole `Workflow` document or just its `spec`, from
//! YAML or JSON. Closed objects refuse unknown fields; `metadata` stays open as
//! in Kubernetes. Branch states use the same type as top-level states, so that a
//! nested Parallel/Map is refused by validation with a message saying why,
//! rather than as an unknown field.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::validate::ValidationError;

/// The `apiVersion` of a `Workflow` document.
pub const API_VERSION: &str = "fission.io/v1";
/// The `kind` of a `Workflow` document.
pub const KIND: &str = "Workflow";
/// Largest `Workflow` document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A whole `fission.io/v1` `Workflow` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workflow {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: WorkflowMetadata,
    pub spec: WorkflowSpec,
    /// Written by a server; read and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

/// The Kubernetes metadata Fusion reads: the name and namespace. Other fields
/// (labels, annotations, ...) are kept as they are. A document without
/// `metadata` has the same as one with `metadata: {}` (see `Default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowMetadata {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn default_namespace() -> String {
    "default".to_string()
}

/// As `metadata: {}` reads: no name, the `default` namespace (a derived
/// `Default` would give the namespace "", which is no DNS-1123 label).
impl Default for WorkflowMetadata {
    fn default() -> Self {
        WorkflowMetadata {
            name: String::new(),
            namespace: default_namespace(),
            other: BTreeMap::new(),
        }
    }
}

/// `WorkflowSpec`: the state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowSpec {
    pub start_at: String,
    pub states: BTreeMap<String, WorkflowState>,
    /// Applies to Task states that set no `retry` of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retry: Option<RetryPolicy>,
    /// Bounds a whole run (a Go duration; the engine's default is 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_retention: Option<RetentionPolicy>,
}

/// `RetentionPolicy`: how much history a finished run keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<i64>,
}

/// The kinds of state the engine executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateType {
    Task,
    Choice,
    Parallel,
    Map,
    Wait,
    Succeed,
    Fail,
}

impl StateType {
    pub fn as_str(self) -> &'static str {
        match self {
            StateType::Task => "Task",
            StateType::Choice => "Choice",
            StateType::Parallel => "Parallel",
            StateType::Map => "Map",
            StateType::Wait => "Wait",
            StateType::Succeed => "Succeed",
            StateType::Fail => "Fail",
        }
    }
}

impl std::fmt::Display for StateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `WorkflowState` (and `WorkflowBranchState`, the same minus the fan-out
/// fields). Which fields a state may set depends on its `type`; validation
/// enforces that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowState {
    #[serde(rename = "type")]
    pub state_type: StateType,
    // Task
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionReference>,
    /// Bounds one attempt of a Task (a Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catch: Vec<CatchRoute>,
    /// Fusion's extension (not in Fission's CRD, whose fields it does not
    /// clash with): the Task's function is handed a one-time callback URL
    /// (`X-Fusion-Callback-Url`), its answer only says it took it, and the
    /// state's result is what is POSTed to the URL (`timeout` bounds the wait).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait_for_callback: bool,
    // Choice
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<ChoiceRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    // Parallel / Map
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<WorkflowBranch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_path: Option<String>,
    /// How many Map branches run at once; 0 or unset means the default (10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<i64>,
    // Wait
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    // Shaping, shared
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_path: Option<String>,
    #[serde(default, skip_serializing_if = "ResultPath::is_replace")]
    pub result_path: ResultPath,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
}

impl WorkflowState {
    /// Whether execution stops after this state.
    pub fn is_terminal(&self) -> bool {
        self.end || matches!(self.state_type, StateType::Succeed | StateType::Fail)
    }

    /// The states this one can hand over to: `next`, `default`, every Choice
    /// rule's `next` and every catch route's `next`.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.next
            .iter()
            .chain(self.default.iter())
            .chain(self.choices.iter().map(|c| &c.next))
            .chain(self.catch.iter().map(|c| &c.next))
            .map(String::as_str)
    }

    /// The Map concurrency the engine applies (10 when unset or 0).
    pub fn effective_max_concurrency(&self) -> usize {
        match self.max_concurrency {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => DEFAULT_MAX_CONCURRENCY,
        }
    }
}

/// Map branches running at once when `maxConcurrency` is unset or 0.
pub const DEFAULT_MAX_CONCURRENCY: usize = 10;

/// Where a state's result goes in its input document.
///
/// - unset: the result replaces the document;
/// - `null`: the result is discarded and the input passes through;
/// - a JSONPath: the result is written there (`$` is the whole document).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResultPath {
    #[default]
    Replace,
    Discard,
    At(String),
}

impl ResultPath {
    pub fn is_replace(&self) -> bool {
        matches!(self, ResultPath::Replace)
    }
}

impl Serialize for ResultPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ResultPath::Replace | ResultPath::Discard => s.serialize_none(),
            ResultPath::At(p) => s.serialize_str(p),
        }
    }
}

impl<'de> Deserialize<'de> for ResultPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Called only when the field is written: `null` there means discard.
        Ok(match Option::<String>::deserialize(d)? {
            None => ResultPath::Discard,
            Some(p) => ResultPath::At(p),
        })
    }
}

/// `FunctionReference`: the function a Task invokes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionReference {
    /// `name` (the default) or `function-weights` (refused on a Task).
    #[serde(rename = "type", default = "default_function_ref_type")]
    pub ref_type: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functionweights: Option<BTreeMap<String, i64>>,
}

fn default_function_ref_type() -> String {
    "name".to_string()
}

/// `RetryPolicy`: attempts and backoff for a Task (or `defaultRetry`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, 1 to [`MAX_ATTEMPTS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_cap: Option<String>,
    /// `false` turns jitter off; unset or `true` keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// Most attempts a retry policy may ask for (Fission's `MaxWorkflowAttempts`).
pub const MAX_ATTEMPTS: i64 = 10;

/// `WorkflowCatchRoute`: an error class routed to another state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatchRoute {
    /// A typed error's `errorType`, a built-in class, or `Fission.All`.
    pub error_type: String,
    pub next: String,
    /// Where the error object is merged into the document; unset, it replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_path: Option<String>,
}

/// `WorkflowBranch`: one sub-machine of a Parallel state, or a Map's iterator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowBranch {
    pub start_at: String,
    pub states: BTreeMap<String, WorkflowState>,
}

/// `WorkflowChoiceCondition`: one leaf comparison against the state's input,
/// or (beyond RFC-0022's types, as Step Functions allows) `and`/`or`/`not`
/// over further conditions, nested as deep as the document goes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChoiceCondition {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub and: Vec<ChoiceCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub or: Vec<ChoiceCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<ChoiceCondition>>,
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

impl ChoiceCondition {
    /// How many comparison operators are set (a well-formed leaf has one).
    pub fn operator_count(&self) -> usize {
        [
            self.string_equals.is_some(),
            self.numeric_equals.is_some(),
            self.numeric_greater_than.is_some(),
            self.numeric_less_than.is_some(),
            self.boolean_equals.is_some(),
            self.is_present.is_some(),
            self.is_null.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count()
    }

    /// Whether no comparison is set (neither a variable nor an operator).
    pub fn is_empty(&self) -> bool {
        self.variable.is_none() && self.operator_count() == 0
    }

    /// How many of `and`, `or`, `not` are set.
    pub fn composite_count(&self) -> usize {
        usize::from(!self.and.is_empty())
            + usize::from(!self.or.is_empty())
            + usize::from(self.not.is_some())
    }
}

/// `WorkflowChoiceRule`: a leaf condition written inline, or exactly one of
/// `and`/`or`/`not` over leaf conditions; `next` when it matches. (The leaf's
/// fields are spelled out here because serde cannot flatten into a struct that
/// refuses unknown fields.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChoiceRule {
    pub next: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub and: Vec<ChoiceCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub or: Vec<ChoiceCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<ChoiceCondition>>,
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

impl ChoiceRule {
    /// The condition the rule is, its `next` aside: its inline comparison,
    /// or its `and`, `or` or `not`.
    pub fn condition(&self) -> ChoiceCondition {
        ChoiceCondition {
            and: self.and.clone(),
            or: self.or.clone(),
            not: self.not.clone(),
            variable: self.variable.clone(),
            string_equals: self.string_equals.clone(),
            numeric_equals: self.numeric_equals.clone(),
            numeric_greater_than: self.numeric_greater_than.clone(),
            numeric_less_than: self.numeric_less_than.clone(),
            boolean_equals: self.boolean_equals,
            is_present: self.is_present,
            is_null: self.is_null,
        }
    }
}

/// A number in a Choice rule, as Kubernetes' `resource.Quantity` writes it: a
/// YAML number, or a string such as `"1.5"`, `"500m"`, `"2k"`, `"1Ki"`, `"1e3"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// As written (kept so that the spec serializes back unchanged).
    pub raw: Value,
    pub value: f64,
}

impl Quantity {
    /// Parses a quantity string; `None` when it is not one.
    pub fn parse(text: &str) -> Option<f64> {
        let t = text.trim();
        const SUFFIXES: [(&str, f64); 14] = [
            ("Ki", 1024.0),
            ("Mi", 1048576.0),
            ("Gi", 1073741824.0),
            ("Ti", 1099511627776.0),
            ("Pi", 1125899906842624.0),
            ("Ei", 1152921504606846976.0),
            ("n", 1e-9),
            ("u", 1e-6),
            ("m", 1e-3),
            ("k", 1e3),
            ("M", 1e6),
            ("G", 1e9),
            ("T", 1e12),
            ("P", 1e15),
        ];
        let (number, factor) = SUFFIXES
            .iter()
            .find_map(|(s, f)| t.strip_suffix(s).map(|n| (n, *f)))
            .or_else(|| t.strip_suffix('E').map(|n| (n, 1e18)))
            .unwrap_or((t, 1.0));
        // A decimal with an optional sign and exponent; no "inf", "nan", "0x".
        let ok = !number.is_empty()
            && number
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
            && number.chars().any(|c| c.is_ascii_digit());
        if !ok {
            return None;
        }
        let v: f64 = number.parse().ok()?;
        let v = v * factor;
        v.is_finite().then_some(v)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "a number must be a YAML number or a quantity string such as \"1.5\", \"500m\" or \"2k\"",
            )
        };
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::Int(i) => Ok(Quantity {
                raw: Value::from(i),
                value: i as f64,
            }),
            Raw::Float(f) if f.is_finite() => Ok(Quantity {
                raw: Value::from(f),
                value: f,
            }),
            Raw::Float(_) => Err(bad()),
            Raw::Text(t) => Quantity::parse(&t)
                .map(|value| Quantity {
                    raw: Value::String(t.clone()),
                    value,
                })
                .ok_or_else(bad),
        }
    }
}

/// A Go duration (`time.ParseDuration`): "30s", "1m30s", "1.5h", "250ms",
/// "0". Unlike Fission Workflows' format, a bare number other than 0 is refused.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if t == "0" {
        return Some(Duration::ZERO);
    }
    if t.is_empty() || t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    crate::spec::parse_duration(t)
}

/// What [`parse_workflow`] read: a whole document, or a bare `spec`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedWorkflow {
    Document(Box<Workflow>),
    Spec(WorkflowSpec),
}

impl ParsedWorkflow {
    pub fn spec(&self) -> &WorkflowSpec {
        match self {
            ParsedWorkflow::Document(w) => &w.spec,
            ParsedWorkflow::Spec(s) => s,
        }
    }

    pub fn into_spec(self) -> WorkflowSpec {
        match self {
            ParsedWorkflow::Document(w) => w.spec,
            ParsedWorkflow::Spec(s) => s,
        }
    }

    /// Whether the text was a whole document (its fields sit under `spec`).
    pub fn is_document(&self) -> bool {
        matches!(self, ParsedWorkflow::Document(_))
    }
}

fn error(
    code: &'static str,
    message: impl Into<String>,
    line: usize,
    column: usize,
) -> ValidationError {
    ValidationError {
        code,
        message: message.into(),
        line,
        column,
    }
}

fn from_yaml_error(code: &'static str, e: &serde_yaml::Error, source: &str) -> ValidationError {
    let (line, column) = e
        .location()
        .map(|l| within(source, l.line(), l.column()))
        .unwrap_or((1, 1));
    let message = format!("{}{}", yaml_message(e), tab_hint(source, line, column));
    let (line, column) =
        crate::validate::second_key(source, line, column, &message).unwrap_or((line, column));
    error(code, message, line, column)
}

/// serde_yaml's message without the " at line L column C" it ends with: the
/// position is carried apart.
pub(crate) fn yaml_message(e: &serde_yaml::Error) -> String {
    plain_types(&without_positions(&e.to_string()))
}

/// `text` without the ` at line L column C` it says each place with: the
/// error's place is given beside it (`did not find expected key at line 6
/// column 4, while parsing a block mapping at line 5 column 3` said the
/// line twice).
fn without_positions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = digits(after);
        let tail = &after[n..];
        let tail = match tail.strip_prefix(" column ") {
            Some(t) if n > 0 => &t[digits(t)..],
            _ if n > 0 => tail,
            // Not a place after all: kept as written.
            _ => {
                out.push_str(" at line ");
                after
            }
        };
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// serde's words for types (`expected u32`, `unit value`, `struct
/// TaskSpec`) in the words of a document's author.
fn plain_types(text: &str) -> String {
    const WORDS: [(&str, &str); 7] = [
        ("unit value", "an empty value (null)"),
        (
            "expected struct TaskSpec",
            "expected a task: a mapping with `run`, `inputs`, `requires`, ...",
        ),
        (
            "expected struct RetrySpec",
            "expected a retry: a mapping with `maxAttempts`, `backoff`, `jitter`",
        ),
        (
            "expected struct BackoffSpec",
            "expected a backoff: a mapping with `initial`, `max`, `multiplier`",
        ),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a mapping"),
        ("a boolean", "true or false"),
    ];
    let mut out = crate::document::plain_numbers(text);
    for (from, to) in WORDS {
        out = out.replace(from, to);
    }
    // Any other struct: a mapping of its fields.
    while let Some(i) = out.find("expected struct ") {
        let end = out[i + 16..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(out.len(), |n| i + 16 + n);
        out.replace_range(i..end, "expected a mapping");
    }
    out
}

/// A position past the end of `source` (where the YAML parser says an error
/// it found at the end is) as the end of its last line: a file of one line
/// with no line break at its end has no line 2 (with one, an editor shows
/// the empty line after it).
pub(crate) fn within(source: &str, line: usize, column: usize) -> (usize, usize) {
    let lines: Vec<&str> = source.lines().collect();
    let shown = lines.len() + usize::from(source.ends_with('\n'));
    match lines.last() {
        Some(last) if line > shown => (lines.len(), last.chars().count() + 1),
        _ => (line, column),
    }
}

/// A hint for a YAML syntax error at `line`:`column` of `source` that is a
/// tab where YAML wants spaces (its own message does not say so).
pub(crate) fn tab_hint(source: &str, line: usize, column: usize) -> &'static str {
    let at = source
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.chars().nth(column.saturating_sub(1)));
    match at {
        Some('\t') => " (a tab: YAML indents with spaces only)",
        _ => "",
    }
}

/// Reads a `Workflow` from YAML or JSON: a whole `fission.io/v1` document
/// (anything with `apiVersion`, `kind` or `spec` at the top), or just its
/// `spec`. Syntax errors are `yaml_syntax`, wrong types and unknown fields
/// `invalid_spec`, each with its line and column; this does not validate the
/// state machine (see [`super::validate()`]).
pub fn parse_workflow(text: &str) -> Result<ParsedWorkflow, ValidationError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(error(
            "document_too_large",
            format!("the document is over {MAX_DOCUMENT_BYTES} bytes"),
            1,
            1,
        ));
    }
    crate::document::check_yaml(text).map_err(|e| {
        let (line, column) = e.position();
        error(e.code(), e.reason(), line, column)
    })?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| from_yaml_error("yaml_syntax", &e, text))?;
    let serde_yaml::Value::Mapping(top) = &value else {
        return Err(error(
            "invalid_spec",
            "a Workflow is a mapping: a whole document (apiVersion, kind, metadata, spec) or its spec (startAt, states)",
            1,
            1,
        ));
    };
    let is_document = ["apiVersion", "kind", "spec"]
        .iter()
        .any(|k| top.contains_key(*k));
    if is_document {
        let w: Workflow =
            serde_yaml::from_str(text).map_err(|e| from_yaml_error("invalid_spec", &e, text))?;
        Ok(ParsedWorkflow::Document(Box::new(w)))
    } else {
        let s: WorkflowSpec =
            serde_yaml::from_str(text).map_err(|e| from_yaml_error("invalid_spec", &e, text))?;
        Ok(ParsedWorkflow::Spec(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_errors_places_are_left_to_the_line_and_column_beside_it() {
        assert_eq!(
            without_positions(
                "did not find expected key at line 6 column 4, while parsing a block mapping at line 5 column 3"
            ),
            "did not find expected key, while parsing a block mapping"
        );
        assert_eq!(
            without_positions("tasks: invalid type at line 2"),
            "tasks: invalid type"
        );
        assert_eq!(
            without_positions("a key at line of sight"),
            "a key at line of sight"
        );
    }
}
