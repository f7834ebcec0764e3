//! Validation of a workflow document before it is stored. Every error carries a
//! stable code and the line and column in the YAML source at fault.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::builtins::is_builtin;
use crate::dag::TaskGraph;
use crate::document::{check_yaml, one_document, without_bom, DocumentError};
use crate::expr::{all_expressions, check_syntax, expression_source};
use crate::retry::RetryPolicy;
use crate::spec::{
    is_task_spec, is_workflow_spec, parse_duration, run_target, TaskSpec, WorkflowSpec,
};

/// One problem in a workflow document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationError {
    pub code: &'static str,
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Most tasks a workflow document may declare (dynamic tasks a run adds later
/// are bounded by `driver::MAX_TASKS_PER_RUN`).
pub const MAX_TASKS_PER_WORKFLOW: usize = 1_000;

/// Largest workflow document, in bytes.
pub const MAX_WORKFLOW_BYTES: usize = 1024 * 1024;

/// The error for a document refused before it is parsed (too large or too deep).
pub fn precheck(source: &str) -> Result<(), ValidationError> {
    if source.len() > MAX_WORKFLOW_BYTES {
        return Err(ValidationError {
            code: "document_too_large",
            message: format!(
                "the workflow is {} bytes, more than the limit of {MAX_WORKFLOW_BYTES}",
                source.len()
            ),
            line: 1,
            column: 1,
        });
    }
    check_yaml(source).map_err(ValidationError::from)
}

impl From<DocumentError> for ValidationError {
    fn from(e: DocumentError) -> Self {
        let (line, column) = e.position();
        ValidationError {
            code: e.code(),
            message: e.reason(),
            line,
            column,
        }
    }
}

/// A workflow file's text as the one document it holds: without a byte-order
/// mark, and without the empty documents beside its own (a trailing `---`),
/// every line where it was (`document::one_document`). A second document with
/// content is refused where it starts.
pub fn workflow_text(source: &str) -> Result<Cow<'_, str>, ValidationError> {
    one_document(without_bom(source)).map_err(ValidationError::from)
}

/// Checks a workflow of either format without a server: every error the
/// server would give it, and the warnings that need no lookup. Names are not
/// looked up: a task that is not a built-in is taken to call a function,
/// whose existence is not checked.
pub fn check_offline(source: &str) -> Result<Vec<ValidationError>, Vec<ValidationError>> {
    let source = &*workflow_text(source).map_err(|e| vec![e])?;
    if crate::sfn::run::is_state_machine(source) {
        let parsed = crate::sfn::parse_and_validate(source)?;
        return Ok(crate::sfn::ignored_namespace(&parsed, source)
            .into_iter()
            .collect());
    }
    let spec =
        parse_and_validate(source, &|_| true).and_then(crate::sfn::run::refuse_embedded_machine)?;
    Ok(format_warnings(&spec, source, &|_| false, &|_| false))
}

/// Parses and validates a workflow. `exists` says whether a function or stored
/// workflow of that name exists (built-ins are known here).
pub fn parse_and_validate(
    source: &str,
    exists: &dyn Fn(&str) -> bool,
) -> Result<WorkflowSpec, Vec<ValidationError>> {
    precheck(source).map_err(|e| vec![e])?;
    // A key twice in one mapping (two tasks `A`): the typed parse below keeps
    // the last and says nothing, the generic one refuses it.
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(source) {
        let message = crate::sfn::spec::yaml_message(&e);
        if message.contains("duplicate entry") {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let (line, column) =
                second_key(source, line, column, &message).unwrap_or((line, column));
            return Err(vec![ValidationError {
                code: "duplicate_key",
                message,
                line,
                column,
            }]);
        }
    }
    // YAML merge keys (`<<: *base`), which Fission Workflows' parser read:
    // merged before the document is read (what they bring has no position
    // of its own in the text).
    let merged = with_merge_keys(source);
    let typed = match &merged {
        Some(v) => serde_yaml::from_value(v.clone()),
        None => serde_yaml::from_str(source),
    };
    let spec: WorkflowSpec = match typed {
        Ok(s) => s,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| crate::sfn::spec::within(source, l.line(), l.column()))
                .unwrap_or((1, 1));
            if let Ok(doc) = serde_yaml::from_str::<Value>(source) {
                // Nothing but blank lines and comments: said at its start.
                if doc.is_null() {
                    return Err(vec![ValidationError {
                        code: "missing_output",
                        message: "the document is empty: a workflow has `output` (the task whose result is the run's) and `tasks`".into(),
                        line: 1,
                        column: 1,
                    }]);
                }
                // Another kind of Fission document (a `Function`, an
                // `Environment`, ...): said as such, not as a workflow that
                // lacks its `output`.
                if let Some(kind) = doc["kind"].as_str().filter(|_| doc.get("output").is_none()) {
                    let (line, column) = Positions::new(source).key(&["kind"]);
                    return Err(vec![ValidationError {
                        code: "not_a_workflow",
                        message: format!("this is a `{kind}` document, not a workflow: a workflow is Fission Workflows' YAML (`output`, `tasks`) or a Fission `Workflow` (kind: Workflow); `fusion spec apply` applies Fission's other kinds"),
                        line,
                        column,
                    }]);
                }
                // Fission Workflows' protobuf JSON form (the `*.wf.json` its
                // examples deploy): said as such, not as a type mismatch
                // inside it.
                let protobuf = doc.get("outputTask").is_some()
                    || doc["tasks"]
                        .as_object()
                        .is_some_and(|ts| ts.values().any(|t| t.get("functionRef").is_some()));
                if protobuf {
                    let at = ["outputTask", "tasks"]
                        .iter()
                        .map(|k| Positions::new(source).key(&[k]))
                        .find(|p| *p != (1, 1))
                        .unwrap_or((1, 1));
                    return Err(vec![ValidationError {
                        code: "protobuf_json",
                        message: "this is Fission Workflows' protobuf JSON form (`outputTask`, `functionRef`, typed inputs, `requires` as a map), which Fusion does not read: write it in Fission Workflows' YAML form (`output`, tasks with `run`, plain `inputs`, `requires` as a list), as its *.wf.yaml examples are".into(),
                        line: at.0,
                        column: at.1,
                    }]);
                }
            }
            let msg = format!(
                "{}{}",
                crate::sfn::spec::yaml_message(&e),
                crate::sfn::spec::tab_hint(source, line, column)
            );
            let code = if serde_yaml::from_str::<serde_yaml::Value>(source).is_err() {
                "yaml_syntax"
            } else if msg.contains("missing field `output`") {
                "missing_output"
            } else {
                "invalid_spec"
            };
            return Err(vec![ValidationError {
                code,
                message: msg,
                line,
                column,
            }]);
        }
    };
    if spec.tasks.len() > MAX_TASKS_PER_WORKFLOW {
        return Err(vec![ValidationError {
            code: "too_many_tasks",
            message: format!(
                "the workflow has {} tasks, more than the limit of {MAX_TASKS_PER_WORKFLOW}",
                spec.tasks.len()
            ),
            line: Positions::new(source).key(&["tasks"]).0,
            column: Positions::new(source).key(&["tasks"]).1,
        }]);
    }
    let mut errors = validate(&spec, source, exists);
    let doc = match merged {
        Some(v) => serde_json::to_value(v).ok(),
        None => serde_yaml::from_str::<Value>(source).ok(),
    };
    if let Some(doc) = doc {
        let pos = Positions::new(source);
        let at = At::top(&pos);
        errors.extend(check_keys(&doc, &at));
        errors.sort_by_key(|e| (e.line, e.column));
    }
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

/// A Fission Workflows document read as a spec, its YAML merge keys applied
/// (not validated: see `parse_and_validate`).
pub fn read_spec(source: &str) -> Option<WorkflowSpec> {
    match with_merge_keys(source) {
        Some(v) => serde_yaml::from_value(v).ok(),
        None => serde_yaml::from_str(source).ok(),
    }
}

/// The document with its YAML merge keys applied, when it has any.
fn with_merge_keys(source: &str) -> Option<serde_yaml::Value> {
    if !source.contains("<<") {
        return None;
    }
    fn has_merge(v: &serde_yaml::Value) -> bool {
        match v {
            serde_yaml::Value::Mapping(m) => m
                .iter()
                .any(|(k, v)| k.as_str() == Some("<<") || has_merge(v)),
            serde_yaml::Value::Sequence(s) => s.iter().any(has_merge),
            serde_yaml::Value::Tagged(t) => has_merge(&t.value),
            _ => false,
        }
    }
    let mut v: serde_yaml::Value = serde_yaml::from_str(source).ok()?;
    if !has_merge(&v) {
        return None;
    }
    v.apply_merge().ok()?;
    Some(v)
}

/// Where a key of a block mapping is written the second time: serde_yaml
/// says a duplicate at the mapping's first key (`line`, `column`), and its
/// message names the key (`duplicate entry with key "A"`).
pub(crate) fn second_key(
    source: &str,
    line: usize,
    column: usize,
    message: &str,
) -> Option<(usize, usize)> {
    let key = message.split("with key \"").nth(1)?.strip_suffix('"')?;
    let indent = column.checked_sub(1)?;
    let mut seen = 0;
    for (n, text) in source.lines().enumerate().skip(line.checked_sub(1)?) {
        let content = text.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let at = text.len() - content.len();
        if at < indent {
            break;
        }
        // The key, its colon, then a space or the line's end (not `A:B`).
        let named = [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
            .iter()
            .any(|k| {
                content
                    .strip_prefix(k.as_str())
                    .and_then(|r| r.strip_prefix(':'))
                    .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
            });
        if at == indent && named {
            seen += 1;
            if seen == 2 {
                return Some((n + 1, column));
            }
        }
    }
    None
}

/// What is worth telling about a stored Fission Workflows document: a task
/// whose `run` names a built-in that a function or workflow is also named
/// (`shadowed_by_builtin`): the built-in runs, as in Fission Workflows, and
/// `fission://<name>` names the function; and an input that reads as an
/// expression without its braces (`$.Tasks.A.Output`, `bare_expression`):
/// older Fission Workflows examples wrote them so, and they are text.
pub fn format_warnings(
    spec: &WorkflowSpec,
    source: &str,
    exists: &dyn Fn(&str) -> bool,
    is_workflow: &dyn Fn(&str) -> bool,
) -> Vec<ValidationError> {
    let pos = Positions::new(source);
    let at = At::top(&pos);
    let mut out = Vec::new();
    // Fission Workflows has one version, 1; its parser keeps any other text
    // without a word, and so does Fusion, but says so.
    if let Some(v) = &spec.api_version {
        let one = match v {
            Value::Number(n) => n.as_f64() == Some(1.0),
            Value::String(s) => matches!(s.trim(), "1" | "v1"),
            _ => false,
        };
        if !one {
            let (line, column) = at.value(&["apiVersion"]);
            out.push(ValidationError {
                code: "unknown_api_version",
                message: format!(
                    "apiVersion {v} is not Fission Workflows' (1): the document is read as version 1"
                ),
                line,
                column,
            });
        }
    }
    // Every task name the document defines, nested workflows' too (an
    // expression inside one may name its siblings).
    let stand_ins = stands_in_for(&spec.tasks);
    let mut defined = BTreeSet::new();
    collect_task_names(
        &serde_json::to_value(spec).unwrap_or(Value::Null),
        &mut defined,
    );
    for (id, task) in &spec.tasks {
        // A function gets its body, headers, query, method and content type
        // from these inputs; any other is not sent (as in Fission Workflows).
        let calls_function = !is_builtin(&task.run) && !is_workflow(&task.run);
        if let (true, Some(Value::Object(inputs))) = (calls_function, &task.inputs) {
            for key in inputs
                .keys()
                .filter(|k| !FUNCTION_INPUTS.contains(&k.as_str()))
            {
                let (line, column) = at.key(&["tasks", id, "inputs", key]);
                out.push(ValidationError {
                    code: "unsent_input",
                    message: format!(
                        "task {id:?}: input {key:?} is not sent to function {:?}: a function gets `default` (or `body`) as its request body, and `headers`, `query`, `method`, `content-type`; put it under `default`",
                        task.run
                    ),
                    line,
                    column,
                });
            }
        }
        // A task that runs other tasks is not tried again: a task failing
        // inside fails it for good (a second attempt would make tasks of the
        // same ids as the first's). `if` and `switch` run one only when
        // their branch is one, so they are not said.
        if task.retry.is_some() {
            let runs = match task.run.strip_prefix(crate::spec::FISSION_SCHEME) {
                // `fission://W` runs workflow W when no function has its name.
                Some(name) => is_workflow(name).then(|| format!("the workflow {name:?}")),
                None if matches!(task.run.as_str(), "foreach" | "repeat" | "while") => {
                    Some(format!("`{}`", task.run))
                }
                None if !is_builtin(&task.run) && is_workflow(&task.run) => {
                    Some(format!("the workflow {:?}", task.run))
                }
                None => None,
            };
            if let Some(runs) = runs {
                let (line, column) = at.key(&["tasks", id, "retry"]);
                out.push(ValidationError {
                    code: "retry_not_applied",
                    message: format!(
                        "task {id:?}: `retry` does not apply to a task that runs other tasks ({runs}): one failing inside fails it for good; put `retry` on the tasks inside (its `timeout` applies)"
                    ),
                    line,
                    column,
                });
            }
        }
        // A built-in's input it does not read: a misspelling, most often
        // (`thne:`), which Fission Workflows ignored too.
        let takes = (!task.run.starts_with(crate::spec::FISSION_SCHEME))
            .then(|| crate::builtins::inputs_of(&task.run))
            .flatten();
        // (A `noop` whose input is a workflow runs that workflow.)
        let runs_workflow = task.run == "noop"
            && task
                .inputs
                .as_ref()
                .is_some_and(crate::spec::is_workflow_spec);
        if let (Some(takes), Some(Value::Object(inputs)), false) =
            (takes, &task.inputs, runs_workflow)
        {
            let known: Vec<String> = takes.iter().map(|t| t.to_string()).collect();
            for key in inputs
                .keys()
                .filter(|k| !takes.contains(&k.as_str()) && !k.starts_with('_'))
            {
                let (line, column) = at.key(&["tasks", id, "inputs", key]);
                out.push(ValidationError {
                    code: "unused_input",
                    message: format!(
                        "task {id:?}: the built-in `{}` has no input {key:?}, which it ignores{}; it reads {}",
                        task.run,
                        did_you_mean(key, &known),
                        takes.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
                    ),
                    line,
                    column,
                });
            }
        }
        // The same of the tasks nested in its inputs (a foreach's `do`, an
        // if's branches, a nested workflow's tasks).
        let mut nested = Vec::new();
        if let Some(inputs) = &task.inputs {
            nested_unsent(
                inputs,
                &|run| !is_builtin(run) && !is_workflow(run),
                &mut nested,
            );
        }
        for (run, key) in nested {
            let (line, column) = at.text_after(&["tasks", id, "inputs"], &format!("{key}:"));
            out.push(ValidationError {
                code: "unsent_input",
                message: format!(
                    "task {id:?}: input {key:?} of a task nested in it is not sent to function {run:?}: a function gets `default` (or `body`) as its request body, and `headers`, `query`, `method`, `content-type`; put it under `default`"
                ),
                line,
                column,
            });
        }
        // What its expressions read of other tasks: a task that does not
        // exist, or one it does not wait for, reads as nothing.
        let mut named = BTreeSet::new();
        if let Some(inputs) = &task.inputs {
            tasks_read(inputs, &mut named);
        }
        named.remove(id);
        // Who it waits for, looked up only when it reads another task.
        let before = if named.is_empty() {
            BTreeSet::new()
        } else {
            ancestors(&spec.tasks, &stand_ins, id)
        };
        for other in &named {
            let (code, message) = if !defined.contains(other) {
                (
                    "unknown_task",
                    format!(
                        "task {id:?} reads task {other:?}, which this workflow does not have: `output('{other}')` reads null there, and `$.Tasks.{other}...` fails the task{}",
                        did_you_mean(other, spec.tasks.keys().filter(|t| *t != id))
                    ),
                )
            } else if spec.tasks.contains_key(other) && !before.contains(other) {
                (
                    "not_required",
                    format!("task {id:?} reads task {other:?} without requiring it: it may start before {other:?} has run and read nothing; add `requires: [{other}]`"),
                )
            } else {
                continue;
            };
            let (line, column) = at.text_after(&["tasks", id, "inputs"], other);
            out.push(ValidationError {
                code,
                message,
                line,
                column,
            });
        }
        if is_builtin(&task.run) && exists(&task.run) {
            let (line, column) = at.value(&["tasks", id, "run"]);
            out.push(ValidationError {
                code: "shadowed_by_builtin",
                message: format!(
                    "task {id:?} runs the built-in {0:?}, not the function or workflow named {0:?}; `run: fission://{0}` calls the function or workflow",
                    task.run
                ),
                line,
                column,
            });
        }
        // Text that reads as an expression but is none (as in Fission
        // Workflows): said where it is written.
        let mut texts = Vec::new();
        let mut embedded = Vec::new();
        let mut outside = Vec::new();
        if let Some(inputs) = &task.inputs {
            bare_expressions(inputs, &mut texts);
            // A `javascript` task's `expr` is code, not text.
            let mut text_inputs = inputs.clone();
            if task.target() == "javascript" {
                if let Value::Object(m) = &mut text_inputs {
                    m.remove("expr");
                }
            }
            embedded_expressions(&text_inputs, &mut embedded);
            outside_the_scope(inputs, &mut outside);
        }
        for (text, name) in outside {
            let (line, column) = at.text_after(&["tasks", id, "inputs"], &text);
            out.push(ValidationError {
                code: "unknown_scope",
                message: format!(
                    "task {id:?}: `$.{name}` is not in an expression's scope, which has `$.Workflow`, `$.Invocation` and `$.Tasks` (names are case-sensitive): it reads as undefined, and a field of it fails the task"
                ),
                line,
                column,
            });
        }
        let said = texts
            .into_iter()
            .map(|text| {
                let why = format!("is text, not an expression: write \"{{ {text} }}\" to read it");
                ("bare_expression", text, why)
            })
            .chain(embedded.into_iter().map(|text| {
                let why = "is text: an input is an expression only when it is all one { ... }, as in Fission Workflows; build the text inside it (\"{ 'Hello ' + param() }\")".to_string();
                ("embedded_expression", text, why)
            }));
        for (code, text, why) in said {
            let (line, column) = at.text_after(&["tasks", id, "inputs"], &text);
            out.push(ValidationError {
                code,
                message: format!("task {id:?}: {text:?} {why}"),
                line,
                column,
            });
        }
    }
    out.extend(implicit_noops(source, &at));
    out.sort_by_key(|w| (w.line, w.column));
    out
}

/// `(did you mean "X"?)` for a misspelt name, when one of `names` is close
/// (a letter or two apart, two letters swapped, or another case), else nothing. A name of one or
/// two letters is close to another only by case: any two of them are a
/// letter or two apart.
fn did_you_mean<'a>(name: &str, names: impl IntoIterator<Item = &'a String>) -> String {
    let most = match name.chars().count() {
        0..=2 => 0,
        n => (n / 3).max(1),
    };
    names
        .into_iter()
        .map(|n| {
            (
                strsim::osa_distance(&n.to_lowercase(), &name.to_lowercase()),
                n,
            )
        })
        .filter(|(d, _)| *d <= most)
        .min()
        .map(|(_, n)| format!(" (did you mean {n:?}?)"))
        .unwrap_or_default()
}

/// The inputs a function task sends (see `driver::function_call`).
pub const FUNCTION_INPUTS: [&str; 6] = [
    "default",
    "body",
    "headers",
    "query",
    "method",
    "content-type",
];

/// The task specs nested in `v` (objects with a `run`) that call a function
/// (`calls_function`) with inputs it is not sent: (run, input key) each.
fn nested_unsent(
    v: &Value,
    calls_function: &dyn Fn(&str) -> bool,
    out: &mut Vec<(String, String)>,
) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(run)), Some(Value::Object(inputs))) =
                (m.get("run"), m.get("inputs"))
            {
                if calls_function(run) {
                    for key in inputs
                        .keys()
                        .filter(|k| !FUNCTION_INPUTS.contains(&k.as_str()))
                    {
                        out.push((run.clone(), key.clone()));
                    }
                }
            }
            m.values()
                .for_each(|x| nested_unsent(x, calls_function, out));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|x| nested_unsent(x, calls_function, out)),
        _ => {}
    }
}

/// The names of every `tasks:` map in `v`, however deep.
fn collect_task_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "tasks" {
                    if let Value::Object(tasks) = x {
                        out.extend(tasks.keys().cloned());
                    }
                }
                collect_task_names(x, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|x| collect_task_names(x, out)),
        _ => {}
    }
}

/// The tasks `v`'s expressions name literally: `output('X')`, `task('X')`
/// (with either quote) and `$.Tasks.X`.
fn tasks_read(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) if s.contains('{') => {
            for call in ["output(", "task("] {
                for (i, _) in s.match_indices(call) {
                    let preceded = s[..i].chars().next_back();
                    if preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                        continue;
                    }
                    let rest = s[i + call.len()..].trim_start();
                    let Some(q) = rest.chars().next().filter(|c| matches!(c, '\'' | '"')) else {
                        continue;
                    };
                    if let Some(end) = rest[1..].find(q) {
                        out.insert(rest[1..1 + end].to_string());
                    }
                }
            }
            for (i, _) in s.match_indices("$.Tasks.") {
                let name: String = s[i + "$.Tasks.".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| tasks_read(x, out)),
        // A nested workflow (`tasks:` of its own) reads its own tasks.
        Value::Object(m) if m.contains_key("tasks") => {}
        Value::Object(m) => m.values().for_each(|x| tasks_read(x, out)),
        _ => {}
    }
}

/// Each fallback's tasks: those whose `onFailure` names it.
fn stands_in_for(tasks: &BTreeMap<String, TaskSpec>) -> BTreeMap<&str, Vec<&String>> {
    let mut m: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for (id, t) in tasks {
        if let Some(f) = &t.on_failure {
            m.entry(f.as_str()).or_default().push(id);
        }
    }
    m
}

/// The tasks `id` waits for, directly or through others (a fallback waits
/// for the task it stands in for); `stand_ins` as `stands_in_for` gives it.
fn ancestors(
    tasks: &BTreeMap<String, TaskSpec>,
    stand_ins: &BTreeMap<&str, Vec<&String>>,
    id: &str,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = vec![id];
    while let Some(t) = todo.pop() {
        let requires = tasks.get(t).map(|t| t.requires.as_slice()).unwrap_or(&[]);
        let stands_in_for = stand_ins.get(t).into_iter().flatten().copied();
        // A required task's fallback stands for it: reading it is waiting
        // for it (and requiring it is refused).
        let fallbacks = requires
            .iter()
            .filter_map(|r| tasks.get(r).and_then(|t| t.on_failure.as_ref()));
        for r in requires.iter().chain(stands_in_for).chain(fallbacks) {
            if seen.insert(r.clone()) {
                todo.push(r);
            }
        }
    }
    seen
}

/// The string values of `v` that hold an expression inside other text
/// (`Whale says: {$.Invocation.Inputs.default}`), which is text.
fn embedded_expressions(v: &Value, out: &mut Vec<String>) {
    const STARTS: [&str; 7] = [
        "$.",
        "param(",
        "output(",
        "task(",
        "input(",
        "uid(",
        "outputHeaders(",
    ];
    match v {
        Value::String(s) if crate::expr::expression_source(s).is_none() => {
            // What a `{` holds up to the next `}` reads the run (`{'Saved: ' +
            // $.Tasks.A.Output}!` as much as `{ param() }!`), outside its
            // quoted text (JSON text naming a path, `{"path": "$.x"}`, reads
            // nothing).
            let reads = s.match_indices('{').any(|(i, _)| {
                let rest = &s[i + 1..];
                rest.find('}').is_some_and(|end| {
                    let code = unquoted(&rest[..end]);
                    STARTS.iter().any(|p| code.contains(p))
                })
            });
            if reads {
                out.push(s.clone());
            }
        }
        Value::Array(items) => items.iter().for_each(|x| embedded_expressions(x, out)),
        Value::Object(m) => m.values().for_each(|x| embedded_expressions(x, out)),
        _ => {}
    }
}

/// `code` with its quoted text (`'...'`, `"..."`, `` `...` ``) blanked: what
/// is left is what JavaScript reads as code.
fn unquoted(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let (mut quote, mut escaped) = (None, false);
    for c in code.chars() {
        match quote {
            None if matches!(c, '\'' | '"' | '`') => {
                quote = Some(c);
                out.push(' ');
            }
            None => out.push(c),
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                out.push(' ');
            }
        }
    }
    out
}

/// The names after `$.` in `v`'s expressions that the scope does not have
/// (`$.tasks`, `$.Task`), each with the text it is in (quoted text left out).
fn outside_the_scope(v: &Value, out: &mut Vec<(String, String)>) {
    let mut texts = Vec::new();
    crate::expr::all_expressions(v, &mut texts);
    for text in texts {
        let code = unquoted(&text);
        for (i, _) in code.match_indices("$.") {
            let preceded = code[..i].chars().next_back();
            if preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = code[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let known = ["Workflow", "Invocation", "Tasks"].contains(&name.as_str());
            if !name.is_empty() && !known && !out.iter().any(|(t, n)| *t == text && *n == name) {
                out.push((text.clone(), name));
            }
        }
    }
}

/// The string values of `v` that read as expressions without their braces.
fn bare_expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.trim_start().starts_with("$.") => out.push(s.trim().to_string()),
        Value::Array(items) => items.iter().for_each(|x| bare_expressions(x, out)),
        Value::Object(m) => m.values().for_each(|x| bare_expressions(x, out)),
        _ => {}
    }
}

/// Semantic checks of a parsed workflow; positions are looked up in `source`.
pub fn validate(
    spec: &WorkflowSpec,
    source: &str,
    exists: &dyn Fn(&str) -> bool,
) -> Vec<ValidationError> {
    let pos = Positions::new(source);
    let at = At::top(&pos);
    let mut errors = Vec::new();
    check_workflow(spec, &at, exists, &mut errors);
    errors.sort_by_key(|e| (e.line, e.column));
    errors
}

fn push(
    errors: &mut Vec<ValidationError>,
    code: &'static str,
    message: String,
    (line, column): (usize, usize),
) {
    errors.push(ValidationError {
        code,
        message,
        line,
        column,
    });
}

/// A problem with the fallbacks (`onFailure`) of a workflow's tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackProblem {
    pub code: &'static str,
    pub message: String,
    pub at: FallbackAt,
}

/// Where a [`FallbackProblem`] is.
#[derive(Debug, Clone, PartialEq)]
pub enum FallbackAt {
    /// The `onFailure` of this task.
    OnFailure(String),
    /// This task's `requires` entry naming that fallback.
    Requires(String, String),
    /// The workflow's `output`.
    Output,
}

/// The rules of `onFailure`: it names another task of the same workflow; a
/// task is the fallback of one task at most; no task requires a fallback and
/// the output task is not one (a fallback runs only when its task fails, so
/// either would wait for nothing when it succeeds: they name the task it
/// stands for instead, whose result the fallback's becomes). Cycles through
/// fallbacks are found with [`waits_for`].
pub fn fallback_problems(tasks: &BTreeMap<String, TaskSpec>, output: &str) -> Vec<FallbackProblem> {
    let mut problems = Vec::new();
    let mut stands_for: BTreeMap<&str, &str> = BTreeMap::new();
    for (id, t) in tasks {
        let Some(f) = t.on_failure.as_deref() else {
            continue;
        };
        let at = FallbackAt::OnFailure(id.clone());
        if f == id {
            problems.push(FallbackProblem {
                code: "invalid_on_failure",
                message: format!("task {id:?} cannot be its own fallback (onFailure)"),
                at,
            });
        } else if !tasks.contains_key(f) {
            problems.push(FallbackProblem {
                code: "unknown_on_failure",
                message: format!("task {id:?}: onFailure names {f:?}, which is not a task"),
                at,
            });
        } else if let Some(first) = stands_for.get(f) {
            problems.push(FallbackProblem {
                code: "invalid_on_failure",
                message: format!(
                    "task {id:?}: {f:?} is already the fallback of {first:?}; a task can be the fallback (onFailure) of one task only"
                ),
                at,
            });
        } else {
            stands_for.insert(f, id);
        }
    }
    for (id, t) in tasks {
        for dep in &t.requires {
            if let Some(x) = stands_for.get(dep.as_str()) {
                problems.push(FallbackProblem {
                    code: "invalid_on_failure",
                    message: format!(
                        "task {id:?} requires {dep:?}, the fallback of {x:?}, which runs only when {x:?} fails: require {x:?} instead (its fallback's output stands for its own)"
                    ),
                    at: FallbackAt::Requires(id.clone(), dep.clone()),
                });
            }
        }
    }
    if let Some(x) = stands_for.get(output) {
        problems.push(FallbackProblem {
            code: "invalid_on_failure",
            message: format!(
                "the output task {output:?} is the fallback of {x:?}, which runs only when {x:?} fails: name {x:?} as the output (its fallback's output stands for its own)"
            ),
            at: FallbackAt::Output,
        });
    }
    problems
}

/// What each task waits for before its result is known: its `requires`, and
/// its fallback (whose result may stand for its own). A cycle here never ends.
pub fn waits_for(tasks: &BTreeMap<String, TaskSpec>) -> Vec<(String, Vec<String>)> {
    tasks
        .iter()
        .map(|(id, t)| {
            let mut waits = t.requires.clone();
            if let Some(f) = t.on_failure.as_ref().filter(|f| *f != id) {
                waits.push(f.clone());
            }
            (id.clone(), waits)
        })
        .collect()
}

/// Checks one workflow: the document's own, or one embedded in a task's
/// inputs (then `at` says where it sits in the document).
fn check_workflow(
    spec: &WorkflowSpec,
    at: &At,
    exists: &dyn Fn(&str) -> bool,
    errors: &mut Vec<ValidationError>,
) {
    if spec.tasks.is_empty() {
        push(
            errors,
            "no_tasks",
            "the workflow has no tasks".into(),
            at.key(&["tasks"]),
        );
    }
    if spec.output.trim().is_empty() {
        push(
            errors,
            "missing_output",
            "`output` must name the task whose output is the workflow's output".into(),
            at.key(&["output"]),
        );
    } else if !spec.tasks.is_empty() && !spec.tasks.contains_key(&spec.output) {
        push(
            errors,
            "unknown_output",
            format!(
                "output task {:?} is not one of the tasks{}",
                spec.output,
                did_you_mean(&spec.output, spec.tasks.keys())
            ),
            at.value(&["output"]),
        );
    }
    if let Some(t) = &spec.timeout {
        match parse_duration(t) {
            _ if has_no_unit(t) => push(
                errors,
                "invalid_timeout",
                format!("timeout {t:?} {NO_UNIT}"),
                at.value(&["timeout"]),
            ),
            None => push(
                errors,
                "invalid_timeout",
                format!(
                    "timeout {t:?} {}",
                    crate::spec::not_a_duration(t, "\"30s\"")
                ),
                at.value(&["timeout"]),
            ),
            Some(d) if d.is_zero() => push(
                errors,
                "invalid_timeout",
                format!("timeout {t:?} would fail every run at once: give more than 0"),
                at.value(&["timeout"]),
            ),
            Some(_) => {}
        }
    }
    if spec.concurrency == Some(0) {
        push(
            errors,
            "invalid_concurrency",
            "the workflow's concurrency must be at least 1".into(),
            at.value(&["concurrency"]),
        );
    }

    for (id, task) in &spec.tasks {
        if id.trim().is_empty() {
            push(
                errors,
                "invalid_task_name",
                "a task's name is empty: name it as other tasks and expressions will read it"
                    .into(),
                at.key(&["tasks", id]),
            );
        }
        // The tasks a task runs (a `foreach`'s items, an `if`'s branch) are
        // named `<task>/<name>`, beside the document's own: a name of the
        // document's with a `/` could be one of those, and the run would take
        // one task's output for the other's.
        if id.contains('/') {
            push(
                errors,
                "invalid_task_name",
                format!(
                    "task name {id:?} has a '/', which names the tasks a task runs inside it (`Each/do_0` is the first item of a foreach `Each`): use '_' or '-'"
                ),
                at.key(&["tasks", id]),
            );
        }
        for dep in &task.requires {
            if !spec.tasks.contains_key(dep) {
                push(
                    errors,
                    "unknown_requires",
                    format!(
                        "task {id:?} requires {dep:?}, which is not a task{}",
                        did_you_mean(dep, spec.tasks.keys().filter(|t| *t != id))
                    ),
                    at.entry(&["tasks", id, "requires"], dep),
                );
            }
        }
        check_task(id, task, at, exists, errors);
    }
    for p in fallback_problems(&spec.tasks, &spec.output) {
        let position = match &p.at {
            FallbackAt::OnFailure(id) => at.value(&["tasks", id, "onFailure"]),
            FallbackAt::Requires(id, dep) => at.entry(&["tasks", id, "requires"], dep),
            FallbackAt::Output => at.value(&["output"]),
        };
        push(errors, p.code, p.message, position);
    }

    let waits = waits_for(&spec.tasks);
    let graph = TaskGraph::new(waits.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    for cycle in graph.cycles() {
        let message = match cycle.as_slice() {
            [only] => format!(
                "task {only} waits for itself (its requires or onFailure names it): it could never start"
            ),
            _ => format!(
                "tasks {} form a cycle (each waits, through requires or onFailure, for one of the others)",
                cycle.join(", ")
            ),
        };
        push(errors, "cycle", message, at.key(&["tasks", &cycle[0]]));
    }
}

/// What a built-in cannot run without, checked where its inputs are written
/// out (an expression's value is known only when the task runs): a missing
/// input, or a literal no run could accept. Otherwise every run of the
/// workflow would fail at that task.
/// A function task's literal `method`: an HTTP method a function can answer
/// (`BAD METHOD` failed every attempt as if the instance had; `CONNECT` took
/// the function's answer for a tunnel and lost it).
fn check_function_method(id: &str, task: &TaskSpec, at: &At, errors: &mut Vec<ValidationError>) {
    if crate::builtins::is_builtin(&task.target()) {
        return;
    }
    let Some(Value::String(method)) = task.inputs.as_ref().and_then(|i| i.get("method")) else {
        return;
    };
    if expression_source(method).is_some() {
        return;
    }
    let method = method.to_uppercase();
    let why = crate::builtins::bad_method(&method).or_else(|| {
        (method == "CONNECT").then(|| {
            "CONNECT opens a tunnel: a function is called with GET, POST, PUT, ...".to_string()
        })
    });
    if let Some(why) = why {
        let (line, column) = at.value(&["tasks", id, "inputs", "method"]);
        errors.push(ValidationError {
            code: "invalid_inputs",
            message: format!("task {id:?}: `method`: {why}"),
            line,
            column,
        });
    }
}

fn check_builtin_inputs(id: &str, task: &TaskSpec, at: &At, errors: &mut Vec<ValidationError>) {
    let builtin = task.target();
    let needs: &[&str] = match builtin.as_ref() {
        "foreach" => &["foreach", "do"],
        "repeat" => &["times", "do"],
        "while" => &["expr", "limit", "do"],
        "javascript" => &["expr"],
        "switch" => &["switch"],
        "if" => &["if"],
        "sleep" | "http" => &[],
        _ => return,
    };
    let inputs = match &task.inputs {
        // The whole input is an expression: nothing is known before it runs.
        Some(Value::String(s)) if expression_source(s).is_some() => return,
        Some(Value::Object(m)) => m.clone(),
        Some(other) => [("default".to_string(), other.clone())]
            .into_iter()
            .collect(),
        None => serde_json::Map::new(),
    };
    let mut fault = |key: &str, message: String| {
        let (line, column) = match inputs.contains_key(key) {
            true => at.value(&["tasks", id, "inputs", key]),
            false => at.key(&["tasks", id, "run"]),
        };
        errors.push(ValidationError {
            code: "invalid_inputs",
            message: format!("task {id:?}: {message}"),
            line,
            column,
        });
    };
    for key in needs {
        if !inputs.contains_key(*key) {
            fault(key, format!("`{builtin}` needs the input `{key}`"));
        }
    }
    // A loop runs a task or workflow written in the workflow, never a name
    // or an expression's value (data never runs): each run failed.
    if needs.contains(&"do") {
        if let Some(v) = inputs.get("do").filter(|v| !v.is_object()) {
            fault(
                "do",
                format!("`{builtin}` needs `do`, a task (`{{run: NAME, inputs: ...}}`) or a workflow written in the workflow, not {v}"),
            );
        }
    }
    // Literal values (an expression is checked when it runs).
    let literal = |key: &str| {
        inputs
            .get(key)
            .filter(|v| v.as_str().is_none_or(|s| expression_source(s).is_none()))
    };
    match builtin.as_ref() {
        "if" => {
            // YAML 1.1's words too (`if: yes`), as Fission Workflows read them.
            if let Some(v) = literal("if").filter(|v| crate::builtins::flag(v).is_none()) {
                fault(
                    "if",
                    format!("`if` needs its condition true or false, not {v}"),
                );
            }
        }
        "repeat" => {
            // Each time one task, not a workflow (every run failed so).
            if inputs
                .get("do")
                .is_some_and(|v| !crate::spec::is_task_spec(v))
                && inputs.get("do").is_some_and(Value::is_object)
            {
                fault(
                    "do",
                    "`repeat` runs one task each time (`do: {run: NAME, inputs: ...}`), not a workflow: store the workflow and run it by name (`do: {run: WORKFLOW}`)".to_string(),
                );
            }
            if let Some(v) = literal("times") {
                let max = crate::builtins::MAX_REPEAT as u64;
                if v.as_u64().is_none_or(|n| n > max) {
                    fault(
                        "times",
                        format!("`repeat` needs `times`, a whole number from 0 to {max}, not {v}"),
                    );
                }
            }
        }
        "while" => {
            if let Some(v) = literal("limit") {
                let max = crate::builtins::MAX_WHILE as u64;
                if v.as_u64().is_none_or(|n| n > max) {
                    fault(
                        "limit",
                        format!("`while` needs `limit`, a whole number of iterations from 0 to {max}, not {v}"),
                    );
                }
            }
        }
        "foreach" => {
            if let Some(v) = literal("foreach").filter(|v| !v.is_array()) {
                fault(
                    "foreach",
                    format!("`foreach` needs `foreach`, a list (or an expression), not {v}"),
                );
            }
            if let Some(v) = literal("concurrency")
                .filter(|v| !v.is_null() && crate::builtins::items_at_once(v).is_none())
            {
                fault(
                    "concurrency",
                    format!("`foreach`: {}", crate::builtins::bad_items_at_once(v)),
                );
            }
            for key in ["collect", "sequential"] {
                let bad = literal(key)
                    .filter(|v| !v.is_null() && crate::builtins::loose_flag(v).is_none());
                if let Some(v) = bad {
                    fault(
                        key,
                        format!("`foreach` needs `{key}` true or false, not {v}"),
                    );
                }
            }
        }
        "javascript" => {
            if let Some(v) = literal("expr").filter(|v| !v.is_string()) {
                fault(
                    "expr",
                    format!("`javascript` needs `expr`, a string, not {v}"),
                );
            }
        }
        "http" => {
            let key = if inputs.contains_key("url") {
                "url"
            } else {
                "default"
            };
            match literal(key) {
                Some(Value::String(u)) => {
                    // As the built-in: a URL without a scheme is http.
                    let url = match u.contains("://") {
                        true => u.clone(),
                        false => format!("http://{u}"),
                    };
                    if let Some(why) = crate::builtins::bad_url(&url) {
                        fault(key, format!("`http` needs `url`: {why}"));
                    }
                }
                None if !inputs.contains_key(key) => {
                    fault("url", "`http` needs the input `url`".into())
                }
                Some(v) if !v.is_string() => {
                    fault(key, format!("`http` needs `url`, a string, not {v}"))
                }
                _ => {}
            }
            if let Some(Value::String(m)) = literal("method") {
                if let Some(why) = crate::builtins::bad_method(&m.to_uppercase()) {
                    fault("method", format!("`http`: {why}"));
                }
            }
        }
        "sleep" => {
            let key = if inputs.contains_key("default") {
                "default"
            } else {
                "duration"
            };
            let fine = match literal(key) {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => {
                    n.as_u64().and_then(crate::spec::duration_of_ms).is_some()
                }
                // Text without a unit (`"1"`): Fission Workflows refused it
                // (Go's durations have units); a number is milliseconds.
                Some(Value::String(s)) => !has_no_unit(s) && parse_duration(s).is_some(),
                Some(_) => false,
            };
            if !fine {
                let v = &inputs[key];
                let text = match v {
                    Value::Number(n) => Some(n.to_string()),
                    _ => v.as_str().map(str::to_string),
                };
                let why = match text {
                    Some(s) if v.is_string() && has_no_unit(&s) => {
                        format!("`sleep` {v} {NO_UNIT}; a number ({s}) is milliseconds")
                    }
                    Some(s) if crate::spec::is_too_long(&s) => {
                        format!("`sleep` {v} {}", crate::spec::not_a_duration(&s, ""))
                    }
                    _ => format!("`sleep` needs a duration (e.g. \"1s\") or milliseconds, not {v}"),
                };
                fault(key, why);
            }
        }
        _ => {}
    }
    if builtin == "switch" {
        if let Some(cases) = literal("cases") {
            check_switch_cases(id, cases, at, errors);
        }
    }
}

/// A `switch`'s cases written out: each a map of `case` and `action`, and
/// nothing else (a misspelt key is a case that fails every run that reaches
/// it, or an action that silently is nothing).
fn check_switch_cases(id: &str, cases: &Value, at: &At, errors: &mut Vec<ValidationError>) {
    let path = ["tasks", id, "inputs", "cases"];
    let mut push = |message: String, (line, column): (usize, usize)| {
        errors.push(ValidationError {
            code: "invalid_inputs",
            message: format!("task {id:?}: {message}"),
            line,
            column,
        })
    };
    let Some(cases) = cases.as_array() else {
        push(
            format!("`switch` needs `cases`, a list of {{case, action}}, not {cases}"),
            at.value(&path),
        );
        return;
    };
    let known = ["case".to_string(), "action".to_string()];
    for c in cases {
        let Some(m) = c.as_object() else {
            push(
                format!("`switch`: a case is a map of `case` and `action`, not {c}"),
                at.key(&path),
            );
            continue;
        };
        for k in m.keys().filter(|k| !known.contains(k)) {
            push(
                format!(
                    "`switch`: a case has the key {k:?}; a case has `case` and `action`{}",
                    did_you_mean(k, &known)
                ),
                at.entry(&path, &format!("{k}:")),
            );
        }
        if !m.contains_key("case") && m.keys().all(|k| known.contains(k)) {
            push(
                "`switch`: a case has no `case` (the value it is taken for)".into(),
                at.key(&path),
            );
        }
    }
}

/// Built-ins that run a task or workflow given in their inputs: a workflow
/// embedded there is checked like the document's own.
const RUN_WHAT_THEY_ARE_GIVEN: &[&str] = &[
    "noop", "compose", "if", "switch", "foreach", "repeat", "while",
];

/// Why `concurrency` would do nothing on a task, if it would.
fn concurrency_has_no_effect(task: &TaskSpec) -> Option<String> {
    if task.run.starts_with(crate::spec::FISSION_SCHEME) {
        return Some(format!(
            "{:?} is a function, which runs no tasks of its own (a function's instances are bounded by its max_scale)",
            task.run
        ));
    }
    match task.target().as_ref() {
        r @ ("repeat" | "while") => Some(format!(
            "`{r}` runs its iterations one after another, never at once (use `foreach` with `concurrency` to run items at once)"
        )),
        r @ ("sleep" | "fail" | "callback" | "http") => {
            Some(format!("`{r}` runs no tasks of its own"))
        }
        _ => None,
    }
}

fn check_task(
    id: &str,
    task: &TaskSpec,
    at: &At,
    exists: &dyn Fn(&str) -> bool,
    errors: &mut Vec<ValidationError>,
) {
    if expression_source(&task.run).is_some() {
        push(
            errors,
            "invalid_run",
            format!("task {id:?}: `run` must name a built-in, a function or a workflow, not an expression; choose between tasks with `if` or `switch`"),
            at.value(&["tasks", id, "run"]),
        );
    } else if let Some(why) = crate::driver::is_url(&task.run)
        .then(|| crate::builtins::bad_url(&task.run))
        .flatten()
    {
        push(
            errors,
            "invalid_run",
            format!("task {id:?}: {why}"),
            at.value(&["tasks", id, "run"]),
        );
    } else if (!is_builtin(&task.target()) || task.run.starts_with(crate::spec::FISSION_SCHEME))
        && !exists(&task.target())
        && !crate::driver::is_url(&task.run)
    {
        push(
            errors,
            "unknown_function",
            format!(
                "task {id:?} runs {:?}, which is neither a built-in, a function nor a workflow",
                task.run
            ),
            at.value(&["tasks", id, "run"]),
        );
    }
    if let Some(f) = notified(task.target().as_ref(), task.inputs.as_ref()) {
        if !exists(&f) {
            push(
                errors,
                "unknown_function",
                format!("task {id:?}: `notify` names {f:?}, which is not a function"),
                at.value(&["tasks", id, "inputs", "notify"]),
            );
        }
    }
    let backoff = task.retry.as_ref().and_then(|r| r.backoff.as_ref());
    let unitless = backoff.into_iter().flat_map(|b| {
        [("initial", &b.initial), ("max", &b.max)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().filter(|v| has_no_unit(v)).map(|v| (k, v)))
    });
    let mut unitless = unitless.peekable();
    if unitless.peek().is_some() {
        for (key, v) in unitless {
            push(
                errors,
                "invalid_retry",
                format!("task {id:?}: retry.backoff.{key} {v:?} {NO_UNIT}"),
                at.value(&["tasks", id, "retry", "backoff", key]),
            );
        }
    } else if let Err(e) = RetryPolicy::from_spec(task.retry.as_ref()) {
        push(
            errors,
            "invalid_retry",
            format!("task {id:?}: retry: {e}"),
            at.key(&["tasks", id, "retry"]),
        );
    }
    if let Some(t) = &task.timeout {
        match parse_duration(t) {
            _ if has_no_unit(t) => push(
                errors,
                "invalid_timeout",
                format!("task {id:?}: timeout {t:?} {NO_UNIT}"),
                at.value(&["tasks", id, "timeout"]),
            ),
            None => push(
                errors,
                "invalid_timeout",
                format!(
                    "task {id:?}: timeout {t:?} {}",
                    crate::spec::not_a_duration(t, "\"5s\"")
                ),
                at.value(&["tasks", id, "timeout"]),
            ),
            Some(d) if d.is_zero() => push(
                errors,
                "invalid_timeout",
                format!(
                    "task {id:?}: timeout {t:?} would fail every attempt at once: give more than 0"
                ),
                at.value(&["tasks", id, "timeout"]),
            ),
            Some(_) => {}
        }
    }
    if !task.run.starts_with(crate::spec::FISSION_SCHEME) {
        check_builtin_inputs(id, task, at, errors);
    }
    check_function_method(id, task, at, errors);
    if task.concurrency == Some(0) {
        push(
            errors,
            "invalid_concurrency",
            format!("task {id:?}: concurrency must be at least 1"),
            at.value(&["tasks", id, "concurrency"]),
        );
    } else if let Some(why) = task
        .concurrency
        .and_then(|_| concurrency_has_no_effect(task))
    {
        push(
            errors,
            "invalid_concurrency",
            format!("task {id:?}: concurrency would have no effect: {why}"),
            at.value(&["tasks", id, "concurrency"]),
        );
    }
    let Some(inputs) = &task.inputs else {
        return;
    };
    // Workflows embedded in the inputs of a built-in that runs them are
    // checked as workflows (and left out of the checks below).
    let mut inputs = inputs.clone();
    let is_function = task.run.starts_with(crate::spec::FISSION_SCHEME);
    if !is_function && RUN_WHAT_THEY_ARE_GIVEN.contains(&task.target().as_ref()) {
        let mut embedded = Vec::new();
        take_workflows(&mut inputs, Vec::new(), true, &mut embedded);
        for (path, exact, doc) in embedded {
            let mut inner = vec!["tasks".to_string(), id.to_string(), "inputs".to_string()];
            inner.extend(path);
            let inner = at.nested(inner, exact);
            check_embedded_workflow(&doc, &inner, exists, errors);
        }
    }
    let mut exprs = Vec::new();
    all_expressions(&inputs, &mut exprs);
    for e in exprs {
        let src = expression_source(&e).unwrap_or_default();
        if let Err(msg) = check_syntax(src) {
            push(
                errors,
                "invalid_expression",
                format!("task {id:?}: expression {e:?} does not compile: {msg}"),
                at.text_after(&["tasks", id, "inputs"], &e),
            );
        }
    }
    // A fallback names a task of a workflow: a single embedded task has none
    // to name (as a whole embedded workflow it may).
    let mut fallbacks = 0;
    count_embedded_key(&inputs, "onFailure", &mut fallbacks);
    if fallbacks > 0 {
        push(
            errors,
            "invalid_on_failure",
            format!("task {id:?}: an embedded task cannot have `onFailure`: make it a workflow (`tasks:` and `output:`) whose task has the fallback"),
            at.text_after(&["tasks", id, "inputs"], "onFailure"),
        );
    }
    // Embedded task specs have a task's keys (a typo such as `requirez:`
    // would be ignored), and must run something that exists too.
    let mut specs = Vec::new();
    embedded_task_keys(&inputs, &mut specs);
    if !specs.is_empty() {
        let known = schema_keys(Some("TaskSpec"));
        for key in specs {
            if !known.contains(&key) && !EXTRA_TASK_KEYS.contains(&key.as_str()) {
                let mut names: Vec<&str> = known.iter().map(String::as_str).collect();
                names.sort_unstable();
                push(
                    errors,
                    "unknown_key",
                    format!(
                        "task {id:?}: an embedded task has no key {key:?} (known keys: {})",
                        names.join(", ")
                    ),
                    at.text_after(&["tasks", id, "inputs"], &key),
                );
            }
        }
    }
    let mut nested = Vec::new();
    embedded_runs(&inputs, &mut nested);
    for run in nested {
        if expression_source(&run).is_some() {
            push(
                errors,
                "invalid_run",
                format!("task {id:?}: an embedded task's `run` must name a built-in, a function or a workflow, not an expression"),
                at.text_after(&["tasks", id, "inputs"], &run),
            );
        } else if !is_builtin(&run_target(&run))
            && !exists(&run_target(&run))
            && !crate::driver::is_url(&run)
        {
            push(
                errors,
                "unknown_function",
                format!("task {id:?}: an embedded task runs {run:?}, which is neither a built-in, a function nor a workflow"),
                at.text_after(&["tasks", id, "inputs"], &run),
            );
        }
    }
}

/// Moves the workflows embedded in `value` (maps with a map `tasks`) out into
/// `out`, each with its key path under `value` and whether that path can be
/// found in the text (not through a list).
fn take_workflows(
    value: &mut Value,
    path: Vec<String>,
    exact: bool,
    out: &mut Vec<(Vec<String>, bool, Value)>,
) {
    if is_workflow_spec(value) {
        out.push((path, exact, value.take()));
        return;
    }
    match value {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                let mut p = path.clone();
                p.push(k.clone());
                take_workflows(v, p, exact, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                take_workflows(v, path.clone(), false, out);
            }
        }
        _ => {}
    }
}

/// Checks a workflow embedded in a task's inputs like a document of its own,
/// with positions in the outer document.
fn check_embedded_workflow(
    doc: &Value,
    at: &At,
    exists: &dyn Fn(&str) -> bool,
    errors: &mut Vec<ValidationError>,
) {
    match serde_json::from_value::<WorkflowSpec>(doc.clone()) {
        Ok(spec) => {
            check_workflow(&spec, at, exists, errors);
            errors.extend(check_keys(doc, at));
        }
        Err(e) => {
            let msg = e.to_string();
            let code = if msg.contains("missing field `output`") {
                "missing_output"
            } else {
                "invalid_spec"
            };
            push(
                errors,
                code,
                format!("an embedded workflow: {msg}"),
                at.key(&[]),
            );
        }
    }
}

/// Keys Fusion reads besides those of the format's schema: `apiversion` (an
/// alias of `apiVersion`) and a task's `id`, which Fission Workflows accepts and
/// ignores.
const EXTRA_WORKFLOW_KEYS: &[&str] = &["apiversion"];
const EXTRA_TASK_KEYS: &[&str] = &["id"];

/// The property names of `definition` in the workflow format's JSON Schema
/// (`None`: the workflow itself), so that the keys allowed here are the ones
/// the spec's types read.
fn schema_keys(definition: Option<&str>) -> Vec<String> {
    static SCHEMA: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(crate::spec::workflow_json_schema);
    let node = match definition {
        None => &*SCHEMA,
        Some(d) => &SCHEMA["$defs"][d],
    };
    node["properties"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Said of a duration written as a bare number, whose unit a reader cannot
/// tell (`timeout: 30` read as milliseconds failed every attempt at once).
const NO_UNIT: &str =
    "has no unit: write it with one, e.g. \"30s\" (seconds) or \"500ms\" (milliseconds)";

/// Whether a duration of a workflow's own fields is a bare number.
fn has_no_unit(text: &str) -> bool {
    text.trim().parse::<f64>().is_ok()
}

/// Refuses keys the format does not have (a typo such as `requirez:` would
/// otherwise be ignored) in the workflow, its tasks and their `retry`.
fn check_keys(doc: &Value, pos: &At) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let mut unknown = |map: &serde_json::Map<String, Value>,
                       allowed: &[String],
                       extra: &[&str],
                       path: &[&str],
                       what: &str| {
        for key in map.keys() {
            if allowed.contains(key) || extra.contains(&key.as_str()) {
                continue;
            }
            let mut at = path.to_vec();
            at.push(key);
            let (line, column) = pos.key(&at);
            let mut known: Vec<&str> = allowed.iter().map(String::as_str).collect();
            known.extend(extra);
            known.sort_unstable();
            errors.push(ValidationError {
                code: "unknown_key",
                message: format!(
                    "{what} has no key {key:?} (known keys: {})",
                    known.join(", ")
                ),
                line,
                column,
            });
        }
    };
    let Some(top) = doc.as_object() else {
        return Vec::new();
    };
    unknown(
        top,
        &schema_keys(None),
        EXTRA_WORKFLOW_KEYS,
        &[],
        "a workflow",
    );
    let task_keys = schema_keys(Some("TaskSpec"));
    let retry_keys = schema_keys(Some("RetrySpec"));
    let backoff_keys = schema_keys(Some("BackoffSpec"));
    for (id, task) in top
        .get("tasks")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(t) = task.as_object() else { continue };
        unknown(
            t,
            &task_keys,
            EXTRA_TASK_KEYS,
            &["tasks", id],
            &format!("task {id:?}"),
        );
        if let Some(retry) = t.get("retry").and_then(Value::as_object) {
            unknown(
                retry,
                &retry_keys,
                &[],
                &["tasks", id, "retry"],
                &format!("task {id:?}: retry"),
            );
            if let Some(b) = retry.get("backoff").and_then(Value::as_object) {
                let at = ["tasks", id.as_str(), "retry", "backoff"];
                unknown(
                    b,
                    &backoff_keys,
                    &[],
                    &at,
                    &format!("task {id:?}: retry.backoff"),
                );
            }
        }
    }
    errors
}

/// The top-level tasks of workflow `name` (a Fission Workflows document)
/// that run `name` itself: run every time, each run nests another until the
/// depth limit fails it (a call inside an `if` or a `switch` may end, and is
/// not said).
pub fn runs_itself(source: &str, name: &str) -> Vec<ValidationError> {
    if crate::sfn::run::is_state_machine(source) {
        return Vec::new();
    }
    let Some(spec) = read_spec(source) else {
        return Vec::new();
    };
    let pos = Positions::new(source);
    let at = At::top(&pos);
    spec.tasks
        .iter()
        .filter(|(_, t)| {
            let runs = run_target(&t.run);
            runs == name && (t.run.starts_with(crate::spec::FISSION_SCHEME) || !is_builtin(name))
        })
        .map(|(id, _)| {
            let (line, column) = at.value(&["tasks", id, "run"]);
            ValidationError {
                code: "runs_itself",
                message: format!(
                    "task {id:?} runs workflow {name:?}, the workflow itself, at every run: each run starts another inside it, until the nesting limit ({}) fails them all",
                    crate::driver::MAX_WORKFLOW_DEPTH
                ),
                line,
                column,
            }
        })
        .collect()
}

/// A task without `run:` runs `noop`, as in Fission Workflows (a join of the
/// tasks it requires, often). Meant when the task is empty (`{}`) or has
/// `inputs:` (it passes them on); one with `requires`, `retry`, `timeout` or
/// `concurrency` but neither `run:` nor `inputs:` may have lost its `run:`:
/// said, and run as Fission Workflows ran it.
fn implicit_noops(source: &str, pos: &At) -> Vec<ValidationError> {
    let doc = match with_merge_keys(source) {
        Some(v) => serde_json::to_value(v).ok(),
        None => serde_yaml::from_str::<Value>(source).ok(),
    };
    let tasks = doc
        .as_ref()
        .and_then(|d| d.get("tasks")?.as_object().cloned());
    let mut out = Vec::new();
    for (id, task) in tasks.iter().flatten() {
        let Some(t) = task.as_object() else { continue };
        if !t.is_empty() && !t.contains_key("run") && t.get("inputs").is_none_or(Value::is_null) {
            let (line, column) = pos.key(&["tasks", id]);
            out.push(ValidationError {
                code: "missing_run",
                message: format!(
                    "task {id:?} has no `run:`: it runs `noop`, as in Fission Workflows (write `run: noop` to say so, or the function it should run)"
                ),
                line,
                column,
            });
        }
    }
    out
}

/// How many embedded task specs in `v` have `key`.
fn count_embedded_key(v: &Value, key: &str, n: &mut usize) {
    match v {
        Value::Object(m) => {
            if is_task_spec(v) && m.contains_key(key) {
                *n += 1;
            }
            m.values().for_each(|x| count_embedded_key(x, key, n));
        }
        Value::Array(items) => items.iter().for_each(|x| count_embedded_key(x, key, n)),
        _ => {}
    }
}

/// The functions and workflows a stored workflow runs by name: its tasks',
/// those of the tasks and workflows embedded in built-ins' inputs, and a
/// Fission `Workflow`'s Task functions. (What an expression or a built-in's
/// output picks while a run goes is not known before.)
pub fn names_run_by(spec: &WorkflowSpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut notifies = BTreeSet::new();
    let mut add = |run: &str| {
        let target = run_target(run);
        if crate::driver::is_url(run) {
            return;
        }
        if run.starts_with(crate::spec::FISSION_SCHEME) || !is_builtin(&target) {
            out.insert(target.into_owned());
        }
    };
    for task in spec.tasks.values() {
        add(&task.run);
        let mut nested = Vec::new();
        if let Some(inputs) = &task.inputs {
            embedded_runs(inputs, &mut nested);
        }
        nested.iter().for_each(|r| add(r));
        notifies.extend(notified(task.target().as_ref(), task.inputs.as_ref()));
        if let Some(inputs) = &task.inputs {
            embedded_notified(inputs, &mut notifies);
        }
    }
    out.append(&mut notifies);
    if let Some(machine) = &spec.state_machine {
        let states = machine.states.values();
        let in_branches = states
            .clone()
            .flat_map(|st| st.branches.iter().flat_map(|b| b.states.values()));
        for st in states.chain(in_branches) {
            if let Some(f) = &st.function {
                out.insert(f.name.clone());
            }
        }
    }
    out
}

/// The keys of every task spec embedded in `v`.
fn embedded_task_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if is_task_spec(v) {
                out.extend(m.keys().cloned());
            }
            m.values().for_each(|x| embedded_task_keys(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| embedded_task_keys(x, out)),
        _ => {}
    }
}

/// The function a `callback` task notifies, named as it is (not by an
/// expression).
fn notified(target: &str, inputs: Option<&Value>) -> Option<String> {
    match inputs?.get("notify")? {
        Value::String(f) if target == "callback" && expression_source(f).is_none() => {
            Some(run_target(f).into_owned())
        }
        _ => None,
    }
}

/// The functions `callback` tasks embedded in `v` notify.
fn embedded_notified(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if is_task_spec(v) {
                let run = m.get("run").and_then(Value::as_str).unwrap_or_default();
                out.extend(notified(&run_target(run), m.get("inputs")));
            }
            m.values().for_each(|x| embedded_notified(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| embedded_notified(x, out)),
        _ => {}
    }
}

fn embedded_runs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if is_task_spec(v) {
                if let Some(Value::String(r)) = m.get("run") {
                    out.push(r.clone());
                }
            }
            m.values().for_each(|x| embedded_runs(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| embedded_runs(x, out)),
        _ => {}
    }
}

/// Where a workflow sits in the document: the key path of an embedded one
/// (empty for the document's own). Not `exact` when the path goes through a
/// list: then every position is the path's start.
struct At<'p> {
    pos: &'p Positions<'p>,
    prefix: Vec<String>,
    exact: bool,
}

impl<'p> At<'p> {
    /// The document's own workflow, at the top of its text.
    fn top(pos: &'p Positions<'p>) -> At<'p> {
        At {
            pos,
            prefix: Vec::new(),
            exact: true,
        }
    }

    fn full<'s>(&'s self, path: &[&'s str]) -> Vec<&'s str> {
        let mut full: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        if self.exact {
            full.extend_from_slice(path);
        }
        full
    }

    fn nested(&self, path: Vec<String>, exact: bool) -> At<'_> {
        let mut prefix = self.prefix.clone();
        if self.exact {
            prefix.extend(path);
        }
        At {
            pos: self.pos,
            prefix,
            exact: self.exact && exact,
        }
    }

    fn key(&self, path: &[&str]) -> (usize, usize) {
        self.pos.key(&self.full(path))
    }

    fn value(&self, path: &[&str]) -> (usize, usize) {
        if self.exact {
            self.pos.value(&self.full(path))
        } else {
            self.key(path)
        }
    }

    fn text_after(&self, path: &[&str], needle: &str) -> (usize, usize) {
        self.pos.text_after(&self.full(path), needle)
    }

    fn entry(&self, path: &[&str], name: &str) -> (usize, usize) {
        self.text_after(path, name)
    }
}

/// Finds where keys of block mappings sit in YAML text, by indentation. Flow
/// mappings are not entered; a key that cannot be found falls back to its parent.
struct Positions<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Positions<'a> {
    fn new(source: &'a str) -> Self {
        Positions {
            lines: source.lines().collect(),
        }
    }

    fn key_of(line: &str) -> Option<(usize, &str)> {
        let indent = line.len() - line.trim_start().len();
        let mut t = line.trim_start();
        let mut col = indent;
        if let Some(rest) = t.strip_prefix("- ") {
            col += 2 + (rest.len() - rest.trim_start().len());
            t = rest.trim_start();
        }
        let colon = t
            .find(": ")
            .or_else(|| t.ends_with(':').then(|| t.len() - 1))?;
        let key = t[..colon].trim().trim_matches(|c| c == '"' || c == '\'');
        Some((col, key))
    }

    /// Line index and column (0-based) of the key at `path`, as deep as found.
    fn find(&self, path: &[&str]) -> Option<(usize, usize, usize)> {
        let mut start = 0;
        let mut parent: Option<usize> = None;
        let mut found = None;
        for seg in path {
            let mut child_indent = None;
            let mut hit = None;
            for i in start..self.lines.len() {
                let line = self.lines[i];
                let t = line.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                let indent = line.len() - t.len();
                if let Some(p) = parent {
                    if indent <= p {
                        break;
                    }
                }
                let ci = *child_indent.get_or_insert(indent);
                if indent == ci {
                    if let Some((col, key)) = Self::key_of(line) {
                        if key == *seg {
                            hit = Some((i, col, indent));
                            break;
                        }
                    }
                }
            }
            match hit {
                Some((i, col, indent)) => {
                    found = Some((i, col, indent));
                    parent = Some(indent);
                    start = i + 1;
                }
                None => return found,
            }
        }
        found
    }

    fn key(&self, path: &[&str]) -> (usize, usize) {
        self.find(path)
            .map(|(l, c, _)| (l + 1, c + 1))
            .unwrap_or((1, 1))
    }

    /// Position of the value after `key:` on the key's line (or the key).
    fn value(&self, path: &[&str]) -> (usize, usize) {
        match self.find(path) {
            Some((l, c, _)) => {
                let line = self.lines[l];
                match line[c..].find(':') {
                    Some(p) => {
                        let after = &line[c + p + 1..];
                        let skip = after.len() - after.trim_start().len();
                        if after.trim().is_empty() {
                            (l + 1, c + 1)
                        } else {
                            (l + 1, c + p + 2 + skip)
                        }
                    }
                    None => (l + 1, c + 1),
                }
            }
            None => (1, 1),
        }
    }

    /// Position of `needle` in the block of the key at `path` (the key's line and
    /// the more indented lines after it).
    fn text_after(&self, path: &[&str], needle: &str) -> (usize, usize) {
        let Some((l, c, indent)) = self.find(path) else {
            return (1, 1);
        };
        for i in l..self.lines.len() {
            let line = self.lines[i];
            if i > l {
                let t = line.trim_start();
                let ind = line.len() - t.len();
                let entry = t.starts_with("- ") && ind == indent;
                if !t.is_empty() && !t.starts_with('#') && ind <= indent && !entry {
                    break;
                }
            }
            let from = if i == l { c } else { 0 };
            if let Some(p) = line[from..].find(needle) {
                return (i + 1, from + p + 1);
            }
        }
        (l + 1, c + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Vec<ValidationError> {
        parse_and_validate(yaml, &|name| name == "fortune" || name == "whalesay")
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn unknown_keys_are_refused_where_they_are() {
        let e = check("output: A\ntasks:\n  A:\n    run: fortune\n    requirez: [B]\n  B:\n    run: fortune\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].code, e[0].line, e[0].column), ("unknown_key", 5, 5));
        assert!(e[0].message.contains("\"requirez\""), "{}", e[0].message);
        assert!(e[0].message.contains("requires"), "{}", e[0].message);
        let e = check("output: A\ntimout: 5s\ntasks:\n  A:\n    run: fortune\n    retry:\n      maxAttempts: 2\n      backof: {initial: 1s}\n");
        let at: Vec<_> = e.iter().map(|e| (e.code, e.line, e.column)).collect();
        assert_eq!(at, [("unknown_key", 2, 1), ("unknown_key", 8, 7)], "{e:?}");
        // What Fission Workflows writes is still accepted.
        assert!(check("apiversion: 1\ndescription: d\noutput: A\ntasks:\n  A:\n    id: A\n    run: fortune\n    retry:\n      maxAttempts: 2\n      backoff: {initial: 1s, max: 2s, multiplier: 2}\n      jitter: 0.1\n").is_empty());
    }

    /// A `noop` whose input is a workflow runs it: its `output` and `tasks`
    /// are read, and no warning says otherwise.
    #[test]
    fn a_noop_running_a_workflow_is_not_said_to_ignore_it() {
        let yaml = "output: N\ntasks:\n  N:\n    run: noop\n    inputs:\n      output: M\n      tasks:\n        M: {run: noop, inputs: hi}\n";
        let w = crate::validate::check_offline(yaml).unwrap();
        assert!(!w.iter().any(|w| w.code == "unused_input"), "{w:?}");
    }

    /// An empty document (or one of blank lines and comments) is said to
    /// be empty, at its start.
    #[test]
    fn an_empty_document_is_said_to_be_empty() {
        for source in ["", "\n", "\n# nothing yet\n\n"] {
            let e = check(source);
            assert_eq!(e.len(), 1, "{source:?}: {e:?}");
            assert_eq!((e[0].line, e[0].column), (1, 1), "{source:?}");
            assert!(e[0].message.starts_with("the document is empty"), "{e:?}");
        }
    }

    /// A Fission document of another kind given as a workflow is said to
    /// be one, where its `kind` is written.
    #[test]
    fn another_kind_of_document_is_said_to_be_no_workflow() {
        let e = check("apiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: hello\nspec:\n  environment: {name: python}\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].code, e[0].line, e[0].column),
            ("not_a_workflow", 2, 1)
        );
        assert!(
            e[0].message.contains("a `Function` document"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn the_key_codes_are_documented() {
        let doc = include_str!("../../docs/error-codes.md");
        for code in [
            "`unknown_key`",
            "`missing_run`",
            "`unknown_on_failure`",
            "`invalid_on_failure`",
            "`invalid_concurrency`",
            "`not_a_workflow`",
        ] {
            assert!(doc.contains(code), "{code} is not in docs/error-codes.md");
        }
    }

    #[test]
    fn a_task_without_run_is_a_noop_said_when_it_may_not_be_meant() {
        // A join, as Fission Workflows ran it; a timeout with nothing to
        // run is said too.
        let w = check_offline("output: A\ntasks:\n  A:\n    requires: [B]\n  B:\n    run: fortune\n    timeout: 1s\n  C:\n    timeout: 1s\n").unwrap();
        let at: Vec<_> = w.iter().map(|e| (e.code, e.line, e.column)).collect();
        assert_eq!(at, [("missing_run", 3, 3), ("missing_run", 8, 3)], "{w:?}");
        assert!(w[0].message.contains("runs `noop`"), "{}", w[0].message);
        // Meant as a noop: with inputs (passed on), empty, or said.
        for meant in [
            "output: A\ntasks:\n  A:\n    inputs: \"{ param() }\"\n",
            "output: A\ntasks:\n  A: {}\n",
            "output: A\ntasks:\n  A:\n    run: noop\n    requires: [B]\n  B: {}\n",
        ] {
            assert_eq!(check_offline(meant).unwrap(), vec![], "{meant}");
        }
    }

    #[test]
    fn valid_workflow_passes() {
        let yaml = "apiVersion: 1\noutput: B\ntasks:\n  A:\n    run: fortune\n  B:\n    run: whalesay\n    inputs: \"{ output('A') }\"\n    requires: [A]\n";
        assert!(check(yaml).is_empty());
    }

    #[test]
    fn a_built_in_without_what_it_needs_is_refused_where_it_is_written() {
        let task = |body: &str| format!("output: T\ntasks:\n  T:\n{body}");
        for (body, needle, line) in [
            ("    run: while\n    inputs:\n      expr: true\n      do: {run: noop}\n", "needs the input `limit`", 4),
            ("    run: foreach\n    inputs:\n      foreach: [1, 2]\n", "needs the input `do`", 4),
            ("    run: javascript\n    inputs: {args: 1}\n", "needs the input `expr`", 4),
            ("    run: switch\n", "needs the input `switch`", 4),
            ("    run: repeat\n    inputs:\n      times: 1000000000\n      do: {run: noop}\n", "from 0 to 10000", 6),
            ("    run: repeat\n    inputs:\n      times: -3\n      do: {run: noop}\n", "from 0 to 10000", 6),
            ("    run: repeat\n    inputs:\n      times: 3\n      do:\n        output: B\n        tasks:\n          B: {run: noop}\n", "not a workflow", 7),
            ("    run: while\n    inputs:\n      expr: true\n      limit: lots\n      do: {run: noop}\n", "a whole number of iterations", 7),
            ("    run: while\n    inputs:\n      expr: true\n      limit: 100000000\n      do: {run: noop}\n", "from 0 to 10000", 7),
            ("    run: foreach\n    inputs:\n      foreach: 3\n      do: {run: noop}\n", "a list", 6),
            ("    run: sleep\n    inputs: banana\n", "needs a duration", 5),
            ("    run: switch\n    inputs:\n      switch: x\n      cases:\n        - case: x\n          action: 1\n        - cas: y\n          action: 2\n", "a case has the key \"cas\"; a case has `case` and `action` (did you mean \"case\"?)", 10),
            ("    run: switch\n    inputs:\n      switch: x\n      cases:\n        - case: x\n          actoin: 1\n", "has the key \"actoin\"", 9),
            ("    run: switch\n    inputs:\n      switch: x\n      cases:\n        - action: 1\n", "a case has no `case`", 7),
            ("    run: switch\n    inputs:\n      switch: x\n      cases: 3\n", "a list of {case, action}", 7),
            ("    run: sleep\n    inputs:\n      duration: banana\n", "needs a duration", 6),
            ("    run: sleep\n    inputs: 876000h\n", "is longer than the longest duration", 5),
            ("    run: sleep\n    inputs: 18446744073709551615\n", "is longer than the longest duration", 5),
            ("    run: http\n    inputs:\n      url: \"::::\"\n", "not an http or https URL", 6),
            ("    run: http\n    inputs: \"http://[::1\"\n", "not an http or https URL", 5),
            ("    run: http\n    inputs:\n      url: example.test\n      method: BAD METHOD\n", "not an HTTP method", 7),
            ("    run: http\n", "needs the input `url`", 4),
        ] {
            let e = check(&task(body));
            assert_eq!(e.len(), 1, "{body}: {e:?}");
            assert_eq!(e[0].code, "invalid_inputs", "{body}: {e:?}");
            assert!(e[0].message.contains(needle), "{body}: {}", e[0].message);
            assert_eq!(e[0].line, line, "{body}: {e:?}");
        }
        // What is known only when the task runs is left to then.
        for body in [
            "    run: sleep\n    inputs: \"{ param() }\"\n",
            "    run: repeat\n    inputs:\n      times: \"{ param() }\"\n      do: {run: noop}\n",
            "    run: foreach\n    inputs:\n      foreach: \"{ param() }\"\n      do: {run: noop}\n",
            "    run: sleep\n    inputs: 5s\n",
            "    run: sleep\n",
            "    run: repeat\n    inputs:\n      times: 0\n      do: {run: noop}\n",
            "    run: http\n    inputs:\n      url: example.test/x\n      method: post\n",
            "    run: http\n    inputs:\n      url: \"{ param() }\"\n",
        ] {
            assert!(check(&task(body)).is_empty(), "{body}: {:?}", check(&task(body)));
        }
        // A key an embedded task does not have.
        let e = check(&task("    run: foreach\n    inputs:\n      foreach: [1]\n      do: {run: noop, requirez: 1}\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].code, e[0].line), ("unknown_key", 7), "{e:?}");
        assert!(e[0].message.contains("\"requirez\""), "{e:?}");
        // A URL as a task's `run` is one too.
        let e = check(&task("    run: \"http://[::1\"\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].code, "invalid_run", "{e:?}");
    }

    #[test]
    fn a_function_tasks_method_is_one_a_function_can_answer() {
        for (method, refused) in [
            ("BAD METHOD", true),
            ("connect", true),
            ("patch", false),
            ("{ param('m') }", false),
        ] {
            let e = check(&format!("output: T\ntasks:\n  T:\n    run: fortune\n    inputs:\n      method: \"{method}\"\n"));
            assert_eq!(
                e.iter().any(|e| e.code == "invalid_inputs"
                    && e.line == 6
                    && e.message.contains("`method`")),
                refused,
                "{method}: {e:?}"
            );
        }
    }

    /// A `callback`'s `notify` function is one the workflow runs: it must
    /// exist when the workflow is stored, and cannot be deleted under it.
    #[test]
    fn a_callbacks_notify_function_is_run_by_the_workflow() {
        let yaml = "output: C\ntasks:\n  C:\n    run: callback\n    inputs: {notify: tell}\n  D:\n    run: foreach\n    inputs:\n      foreach: [1]\n      do: {run: callback, inputs: {notify: fortune}}\n  E:\n    run: callback\n    inputs: {notify: \"{ param() }\"}\n";
        let e = check(yaml);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].code, e[0].line), ("unknown_function", 5));
        assert!(e[0].message.contains("`notify` names \"tell\""), "{e:?}");
        let spec = read_spec(yaml).unwrap();
        let run = names_run_by(&spec);
        assert!(run.contains("tell") && run.contains("fortune"), "{run:?}");
    }

    #[test]
    fn a_foreach_concurrency_is_a_whole_number_from_one() {
        for (given, refused) in [
            ("0", true),
            ("-1", true),
            ("1.5", true),
            ("x", true),
            ("2", false),
            ("\"{ param() }\"", false),
        ] {
            let e = check(&format!("output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: [1, 2]\n      do: {{run: noop}}\n      concurrency: {given}\n"));
            assert_eq!(
                e.iter().any(|e| e.code == "invalid_inputs" && e.line == 8),
                refused,
                "{given}: {e:?}"
            );
        }
    }

    #[test]
    fn a_loops_do_is_written_in_the_workflow_and_a_fission_reference_names_a_function() {
        for (doc, refused) in [
            (
                "run: foreach\n    inputs: {foreach: [1], do: fortune}",
                true,
            ),
            (
                "run: repeat\n    inputs: {times: 2, do: \"{ param() }\"}",
                true,
            ),
            (
                "run: foreach\n    inputs: {foreach: [1], do: {run: fortune}}",
                false,
            ),
            ("run: fission://noop", true),
            ("run: fission://fortune", false),
        ] {
            let e = check(&format!("output: L\ntasks:\n  L:\n    {doc}\n"));
            assert_eq!(!e.is_empty(), refused, "{doc}: {e:?}");
        }
    }

    #[test]
    fn a_duration_without_a_unit_is_refused() {
        let e = check("output: T\ntimeout: 2\ntasks:\n  T:\n    run: noop\n    timeout: \"30\"\n    retry:\n      maxAttempts: 3\n      backoff: {initial: 2, max: 5s}\n");
        let said: Vec<(&str, &str, usize)> = e
            .iter()
            .map(|e| (e.code, e.message.as_str(), e.line))
            .collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said.iter().all(|(_, m, _)| m.contains("has no unit")),
            "{said:?}"
        );
        assert_eq!(
            said.iter().map(|(c, _, l)| (*c, *l)).collect::<Vec<_>>(),
            [
                ("invalid_timeout", 2),
                ("invalid_timeout", 6),
                ("invalid_retry", 9)
            ]
        );
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let e = check("output: T\ntimeout: 0s\ntasks:\n  T:\n    run: noop\n    timeout: 0ms\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e
            .iter()
            .all(|e| e.code == "invalid_timeout" && e.message.contains("more than 0")));
    }

    #[test]
    fn a_key_twice_in_a_mapping_is_refused_naming_it() {
        for (source, key) in [
            (
                "apiVersion: 1\noutput: A\ntasks:\n  A: {run: noop}\n  A: {run: fail}\n",
                "\"A\"",
            ),
            ("output: A\noutput: B\ntasks:\n  A: {run: noop}\n", "output"),
            (
                r#"{"output": "A", "tasks": {"A": {"run": "noop"}, "A": {"run": "fail"}}}"#,
                "\"A\"",
            ),
            (
                "output: A\ntasks:\n  A:\n    run: noop\n    inputs: {x: 1, x: 2}\n",
                "x",
            ),
        ] {
            let e = parse_and_validate(source, &|_| true).unwrap_err();
            assert_eq!(e[0].code, "duplicate_key", "{source}: {e:?}");
            assert!(e[0].message.contains(key), "{}", e[0].message);
            assert!(e[0].line >= 1, "{e:?}");
        }
    }

    #[test]
    fn a_duration_too_long_is_said_to_be_too_long() {
        let e = check(
            "output: A\ntimeout: 999999999h\ntasks:\n  A:\n    run: noop\n    timeout: 876000h\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        for e in &e {
            assert_eq!(e.code, "invalid_timeout", "{e:?}");
            assert!(
                e.message
                    .contains("is longer than the longest duration, 1000000000s"),
                "{e:?}"
            );
        }
        let e = check("output: A\ntimeout: soon\ntasks:\n  A:\n    run: noop\n");
        assert!(e[0].message.contains("is not a duration"), "{e:?}");
        assert_eq!(
            crate::spec::parse_duration("87600h"),
            Some(std::time::Duration::from_secs(315_360_000))
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_document() {
        assert_eq!(
            check_offline("\u{feff}output: A\ntasks:\n  A:\n    run: noop\n").unwrap(),
            vec![]
        );
        // Errors are where the user sees them, the mark being invisible.
        let plain = check_offline("output: A\ntasks:\n  A:\n    requirez: [B]\n").unwrap_err();
        let marked =
            check_offline("\u{feff}output: A\ntasks:\n  A:\n    requirez: [B]\n").unwrap_err();
        assert_eq!(marked, plain);
        assert_eq!((marked[0].line, marked[0].column), (4, 5), "{marked:?}");
    }

    #[test]
    fn yaml_syntax_error_has_position() {
        let e = check("output: A\ntasks:\n  A: [\n");
        assert_eq!(e[0].code, "yaml_syntax");
        assert!(e[0].line >= 3, "{:?}", e);
    }

    #[test]
    fn fission_workflows_protobuf_json_is_named_as_such() {
        // As fission-workflows' examples/whales/fortunewhale.wf.json writes it.
        let e = check(
            r#"{
  "apiVersion": "v1",
  "outputTask": "WhaleWithFortune",
  "tasks": {
    "GenerateFortune": {"functionRef": "fortune", "requires": {}},
    "WhaleWithFortune": {
      "functionRef": "whalesay",
      "inputs": {"default": {"type": "expression", "value": "e30="}},
      "requires": {"GenerateFortune": {}}
    }
  }
}"#,
        );
        assert_eq!(e[0].code, "protobuf_json", "{e:?}");
        assert!(e[0].message.contains("YAML form"), "{e:?}");
    }

    #[test]
    fn missing_output() {
        let e = check("tasks:\n  A:\n    run: noop\n");
        assert_eq!(e[0].code, "missing_output");
    }

    /// A `sleep` of text without a unit is refused, as Fission Workflows
    /// refused it; a number is milliseconds.
    #[test]
    fn a_sleep_of_text_without_a_unit_is_refused() {
        let doc = |d: &str| format!("output: A\ntasks:\n  A:\n    run: sleep\n    inputs: {d}\n");
        let e = check_offline(&doc("\"1\"")).unwrap_err();
        assert_eq!((e[0].code, e[0].line), ("invalid_inputs", 5), "{e:?}");
        assert!(e[0].message.contains("has no unit"), "{e:?}");
        for fine in ["1", "\"1s\"", "250ms"] {
            assert_eq!(check_offline(&doc(fine)).unwrap(), vec![], "{fine}");
        }
    }

    /// `if: yes`, `collect: no`: YAML 1.1's booleans, as Fission Workflows'
    /// parser read them, are stored; other text is refused where it is.
    #[test]
    fn yaml_1_1_booleans_are_taken_and_other_text_refused() {
        let ok = "output: A\ntasks:\n  A:\n    run: if\n    inputs:\n      if: yes\n      then: 1\n  B:\n    run: foreach\n    inputs:\n      foreach: [1]\n      collect: no\n      sequential: On\n      do: {run: noop}\n";
        assert_eq!(check_offline(ok).unwrap(), vec![]);
        let bad = ok
            .replace("if: yes", "if: maybe")
            .replace("collect: no", "collect: banana");
        let e = check_offline(&bad).unwrap_err();
        let at: Vec<_> = e.iter().map(|e| (e.code, e.line)).collect();
        assert_eq!(at, [("invalid_inputs", 6), ("invalid_inputs", 12)], "{e:?}");
    }

    /// Text with an expression inside it is said to be text, however the
    /// braces begin (Fission Workflows' readitlater example: `{'Saved: ' +
    /// $.Tasks.A.Output}!`); `$.tasks` is said to be outside the scope; a
    /// task read that is not there says what each form then does.
    #[test]
    fn expressions_that_read_nothing_are_said_where_they_are() {
        let w = check_offline("output: A\ntasks:\n  A:\n    run: compose\n    inputs:\n      title: \"{'Saved: ' + param().url}!\"\n      plain: \"a {b} c\"\n      json: 'data {\"path\": \"$.x\", \"q\": \"param(\"} end'\n  J:\n    run: javascript\n    inputs:\n      expr: \"var o = {x: $.Tasks}; 1\"\n").unwrap();
        let at: Vec<_> = w.iter().map(|w| (w.code, w.line)).collect();
        assert_eq!(at, [("embedded_expression", 6)], "{w:?}");
        let w = check_offline("output: A\ntasks:\n  A:\n    run: noop\n    inputs: \"{ $.tasks.B.Output + $.Tasks.B.Output + $.Invocation.Id + '$.said' }\"\n  B:\n    run: noop\n").unwrap();
        let unknown: Vec<_> = w.iter().filter(|w| w.code == "unknown_scope").collect();
        assert_eq!(unknown.len(), 1, "{w:?}");
        assert!(
            unknown[0].message.contains("`$.tasks`"),
            "{}",
            unknown[0].message
        );
        assert_eq!(unknown[0].line, 5);
        let w = check_offline(
            "output: A\ntasks:\n  A:\n    run: noop\n    inputs: \"{ $.Tasks.Nope.Output }\"\n",
        )
        .unwrap();
        assert_eq!(w[0].code, "unknown_task", "{w:?}");
        assert!(w[0].message.contains("fails the task"), "{}", w[0].message);
    }

    /// A built-in's input it does not read (a misspelling) is a warning,
    /// with the name it may have meant: Fission Workflows ignored it too, so
    /// it is not refused, but the task would run without it.
    #[test]
    fn a_builtins_unread_input_is_a_warning() {
        let yaml = "output: C\ntasks:\n  C:\n    run: if\n    inputs:\n      if: true\n      thne: x\n  D:\n    run: switch\n    inputs: {switch: a, cases: [], default: 1}\n";
        let w = check_offline(yaml).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].code, "unused_input");
        assert_eq!((w[0].line, w[0].column), (7, 7));
        assert!(
            w[0].message.contains(r#"(did you mean "then"?)"#),
            "{}",
            w[0].message
        );
        // `compose` reads whatever it is given; `fission://` is a function's.
        let yaml = "output: C\ntasks:\n  C:\n    run: compose\n    inputs: {a: 1, b: 2}\n  D:\n    run: fission://if\n    inputs: {default: 1}\n";
        assert_eq!(check_offline(yaml).unwrap(), vec![]);
        // `retry` on a task that runs other tasks is said not to apply.
        let yaml = "output: C\ntasks:\n  C:\n    run: foreach\n    retry: {maxAttempts: 3}\n    inputs: {foreach: [1], do: {run: noop}}\n  D:\n    run: sub\n    retry: {maxAttempts: 3}\n  E:\n    run: fn\n    retry: {maxAttempts: 3}\n  F:\n    run: fission://sub\n    retry: {maxAttempts: 3}\n";
        let w = format_warnings(&read_spec(yaml).unwrap(), yaml, &|_| true, &|name| {
            name == "sub"
        });
        let said: Vec<_> = w
            .iter()
            .filter(|w| w.code == "retry_not_applied")
            .map(|w| (w.line, w.column))
            .collect();
        assert_eq!(said, [(5, 5), (9, 5), (15, 5)], "{w:?}");
        // A callback's notify function is sent its `body`.
        let yaml = "output: C\ntasks:\n  C:\n    run: callback\n    inputs: {notify: tell, body: please}\n";
        assert_eq!(check_offline(yaml).unwrap(), vec![]);
    }

    /// A value of the wrong type is said in the author's words (not serde's
    /// `u32` or `struct TaskSpec`), and a tab where YAML wants spaces says so.
    #[test]
    fn type_errors_are_said_in_a_documents_words() {
        for (yaml, says) in [
            (
                "output: A\ntasks:\n  A:\n    run: noop\n    retry:\n      maxAttempts: -1\n",
                "maxAttempts is -1: a whole number of attempts, from 1 to 4294967295",
            ),
            (
                "output: A\ntasks:\n  A:\n    run: noop\n  B: ~\n",
                "invalid type: an empty value (null), expected a task: a mapping with `run`",
            ),
            (
                "output: A\ntasks:\n  A:\n    run: noop\n    retry:\n      jitter: maybe\n",
                "expected a number",
            ),
            (
                "output: A\ntasks:\n\tA:\n    run: noop\n",
                "(a tab: YAML indents with spaces only)",
            ),
        ] {
            let e = check(yaml);
            assert!(e[0].message.contains(says), "{yaml:?}: {}", e[0].message);
        }
    }

    /// A key written twice is pointed at where it is written again.
    #[test]
    fn a_duplicate_key_is_said_where_it_comes_again() {
        let e = check(
            "output: A\ntasks:\n  A:\n    run: noop\n  B:\n    run: noop\n  A:\n    run: noop\n",
        );
        assert_eq!((e[0].code, e[0].line, e[0].column), ("duplicate_key", 7, 3));
        let e = check("output: A\ntasks:\n  A:\n    run: noop\n    # inputs: 0\n    inputs: 1\n    requires: []\n    inputs: 2\n");
        assert_eq!((e[0].code, e[0].line, e[0].column), ("duplicate_key", 8, 5));
    }

    /// An error at the end of a one-line document is on that line, at its
    /// end (the parser says line 2).
    #[test]
    fn an_error_at_the_end_is_within_the_document() {
        let e = check(r#"{"output":"A","tasks":{"A":{"run":"noop"}}"#);
        assert_eq!((e[0].code, e[0].line, e[0].column), ("yaml_syntax", 1, 43));
    }

    /// A task that names itself, or has no name, is said as such.
    #[test]
    fn a_task_waiting_for_itself_or_without_a_name_is_refused() {
        let e = check("output: A\ntasks:\n  A:\n    run: noop\n    requires: [A]\n");
        assert!(
            e[0].message.contains("task A waits for itself"),
            "{}",
            e[0].message
        );
        let e = check("output: A\ntasks:\n  A:\n    run: noop\n  \"\":\n    run: noop\n");
        assert_eq!((e[0].code, e[0].line), ("invalid_task_name", 5), "{e:?}");
    }

    /// A task named as one the engine names inside another (`Each/do_0`, a
    /// foreach's first item) is refused, in a nested workflow too: the run
    /// would take one's output for the other's.
    #[test]
    fn a_task_name_with_a_slash_is_refused() {
        let e = check(
            "output: A\ntasks:\n  Each:\n    run: foreach\n    inputs: {foreach: [1], do: {run: noop}}\n  Each/do_0:\n    run: noop\n  A:\n    run: noop\n    requires: [Each, Each/do_0]\n",
        );
        assert_eq!(
            (e[0].code, e[0].line, e[0].column),
            ("invalid_task_name", 6, 3),
            "{e:?}"
        );
        assert!(e[0].message.contains("has a '/'"), "{e:?}");
        let e = check(
            "output: A\ntasks:\n  A:\n    run: foreach\n    inputs:\n      foreach: [1]\n      do:\n        output: x/y\n        tasks:\n          x/y: {run: noop}\n",
        );
        assert!(
            e.iter()
                .any(|e| e.code == "invalid_task_name" && e.line == 10),
            "{e:?}"
        );
    }

    /// YAML merge keys are read, as Fission Workflows' parser read them.
    #[test]
    fn merge_keys_are_applied() {
        let yaml = "output: B\ntasks:\n  A: &base\n    run: noop\n    inputs: hi\n  B:\n    <<: *base\n    requires: [A]\n";
        let spec = parse_and_validate(yaml, &|_| true).unwrap();
        assert_eq!(spec.tasks["B"].run, "noop");
        assert_eq!(spec.tasks["B"].requires, vec!["A".to_string()]);
    }

    #[test]
    fn no_tasks() {
        let e = check("output: A\ntasks: {}\n");
        assert_eq!(e[0].code, "no_tasks");
        assert_eq!((e[0].line, e[0].column), (2, 1));
    }

    #[test]
    fn unknown_output_and_requires() {
        let yaml = "output: Z\ntasks:\n  A:\n    run: noop\n    requires:\n    - Nope\n";
        let e = check(yaml);
        let codes: Vec<_> = e.iter().map(|e| e.code).collect();
        assert_eq!(codes, vec!["unknown_output", "unknown_requires"]);
        assert_eq!((e[0].line, e[0].column), (1, 9));
        assert_eq!((e[1].line, e[1].column), (6, 7));
        assert!(!e[1].message.contains("did you mean"), "{}", e[1].message);
        // A name a letter or two off, or in another case, is pointed at.
        let yaml = "output: charge\ntasks:\n  Charge:\n    run: noop\n  Validate:\n    run: noop\n    requires: [Chrage]\n";
        let e = check(yaml);
        assert!(
            e[0].message.ends_with(r#"(did you mean "Charge"?)"#),
            "{}",
            e[0].message
        );
        assert!(
            e[1].message.ends_with(r#"(did you mean "Charge"?)"#),
            "{}",
            e[1].message
        );
        // One-letter names are all a letter apart: only another case is
        // pointed at, and never the task itself.
        let yaml = "output: a\ntasks:\n  a:\n    run: noop\n    requires: [b]\n  B:\n    run: noop\n    requires: [c]\n";
        let e = check(yaml);
        assert!(
            e[0].message.ends_with(r#"(did you mean "B"?)"#),
            "{}",
            e[0].message
        );
        assert!(!e[1].message.contains("did you mean"), "{}", e[1].message);
    }

    #[test]
    fn cycle_names_tasks() {
        let yaml = "output: A\ntasks:\n  A:\n    run: noop\n    requires: [C]\n  B:\n    run: noop\n    requires: [A]\n  C:\n    run: noop\n    requires: [B]\n";
        let e = check(yaml);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].code, "cycle");
        assert!(
            e[0].message.contains("tasks A, B, C form a cycle"),
            "{}",
            e[0].message
        );
        assert_eq!((e[0].line, e[0].column), (3, 3));
    }

    #[test]
    fn run_must_be_a_name_not_an_expression() {
        let e = check("output: A\ntasks:\n  A:\n    run: \"{ 'noop' }\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].code, "invalid_run");
        assert_eq!((e[0].line, e[0].column), (4, 10));
    }

    #[test]
    fn unknown_function_and_bad_expression() {
        let yaml = "output: A\ntasks:\n  A:\n    run: nosuch\n    inputs:\n      x: \"{ $.Tasks.( }\"\n      y:\n        run: alsonot\n";
        let e = check(yaml);
        let codes: Vec<_> = e.iter().map(|e| e.code).collect();
        assert_eq!(
            codes,
            vec!["unknown_function", "invalid_expression", "unknown_function"]
        );
        assert_eq!((e[0].line, e[0].column), (4, 10));
        assert_eq!(e[1].line, 6);
        assert_eq!(e[2].line, 8);
    }

    fn at(e: &[ValidationError]) -> Vec<(&str, usize, usize)> {
        e.iter().map(|e| (e.code, e.line, e.column)).collect()
    }

    #[test]
    fn fallbacks_name_another_task_that_nothing_else_waits_for() {
        let ok = "output: B\ntasks:\n  A:\n    run: fortune\n    onFailure: F\n  F:\n    run: noop\n    inputs: \"{ task('A').Error }\"\n  B:\n    run: noop\n    requires: [A]\n";
        assert!(check(ok).is_empty(), "{:?}", check(ok));
        let e = check("output: A\ntasks:\n  A:\n    run: fortune\n    onFailure: Nope\n  B:\n    run: fortune\n    onFailure: B\n");
        assert_eq!(
            at(&e),
            [("unknown_on_failure", 5, 16), ("invalid_on_failure", 8, 16)],
            "{e:?}"
        );
        // One fallback for two tasks; a task that requires a fallback; a
        // fallback as the output.
        let e = check("output: F\ntasks:\n  A:\n    run: fortune\n    onFailure: F\n  B:\n    run: fortune\n    onFailure: F\n  C:\n    run: noop\n    requires: [F]\n  F:\n    run: noop\n");
        assert_eq!(
            at(&e),
            [
                ("invalid_on_failure", 1, 9),
                ("invalid_on_failure", 8, 16),
                ("invalid_on_failure", 11, 16)
            ],
            "{e:?}"
        );
        assert!(
            e[0].message.contains("name \"A\" as the output"),
            "{}",
            e[0].message
        );
        assert!(
            e[2].message.contains("require \"A\" instead"),
            "{}",
            e[2].message
        );
        // A fallback that waits for the task it stands for never runs.
        let e = check("output: A\ntasks:\n  A:\n    run: fortune\n    onFailure: F\n  F:\n    run: noop\n    requires: [A]\n");
        assert_eq!(at(&e), [("cycle", 3, 3)], "{e:?}");
        assert!(
            e[0].message.contains("tasks A, F form a cycle"),
            "{}",
            e[0].message
        );
        // A single embedded task has no workflow to name a fallback in.
        let e = check("output: A\ntasks:\n  A:\n    run: foreach\n    inputs:\n      foreach: [1, 2]\n      do: {run: fortune, onFailure: G}\n");
        assert_eq!(at(&e), [("invalid_on_failure", 7, 26)], "{e:?}");
        let e = check("output: A\ntasks:\n  A:\n    run: if\n    inputs:\n      if: true\n      then:\n        run: fortune\n        onFailure: G\n");
        assert_eq!(at(&e), [("invalid_on_failure", 9, 9)], "{e:?}");
    }

    #[test]
    fn concurrency_is_refused_where_nothing_runs_at_once() {
        let ok = "output: A\nconcurrency: 2\ntasks:\n  A:\n    run: foreach\n    concurrency: 3\n    inputs: {foreach: [1], do: {run: noop}}\n  B:\n    run: if\n    concurrency: 2\n    inputs: {if: true, then: 1}\n";
        assert!(check(ok).is_empty(), "{:?}", check(ok));
        let e = check("output: A\nconcurrency: 0\ntasks:\n  A:\n    run: repeat\n    concurrency: 2\n    inputs: {times: 2, do: {run: noop}}\n  B:\n    run: while\n    concurrency: 2\n    inputs: {expr: false, limit: 2, do: {run: noop}}\n  C:\n    run: sleep\n    concurrency: 2\n");
        assert_eq!(
            at(&e),
            [
                ("invalid_concurrency", 2, 14),
                ("invalid_concurrency", 6, 18),
                ("invalid_concurrency", 10, 18),
                ("invalid_concurrency", 14, 18)
            ],
            "{e:?}"
        );
        assert!(
            e[1].message.contains("one after another"),
            "{}",
            e[1].message
        );
    }

    #[test]
    fn a_workflow_in_a_foreach_is_checked_like_the_document_with_outer_positions() {
        let ok = "output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: \"{ param() }\"\n      do:\n        output: B\n        concurrency: 2\n        tasks:\n          A:\n            run: fortune\n            inputs: \"{ param('_item') }\"\n            onFailure: X\n          X:\n            run: noop\n          B:\n            run: whalesay\n            requires: [A]\n";
        assert!(check(ok).is_empty(), "{:?}", check(ok));
        let bad = "output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: [1]\n      do:\n        output: Z\n        tasks:\n          A:\n            run: nosuch\n            requirez: [B]\n          B:\n            run: noop\n            requires: [Q]\n            onFailure: B\n            inputs: \"{ ( }\"\n";
        let e = check(bad);
        assert_eq!(
            at(&e),
            [
                ("unknown_output", 8, 17),
                ("unknown_function", 11, 18),
                ("unknown_key", 12, 13),
                ("unknown_requires", 15, 24),
                ("invalid_on_failure", 16, 24),
                ("invalid_expression", 17, 22),
            ],
            "{e:?}"
        );
        // No `output`: said where the embedded workflow is.
        let e = check("output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: [1]\n      do:\n        tasks:\n          A: {run: noop}\n");
        assert_eq!(at(&e), [("missing_output", 7, 7)], "{e:?}");
        // What the engine sets on an item's workflow is not a document's key.
        let e = check("output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: [1]\n      do:\n        output: A\n        invocation: {default: 2}\n        tasks:\n          A: {run: noop}\n");
        assert_eq!(at(&e), [("unknown_key", 9, 9)], "{e:?}");
    }

    #[test]
    fn bad_extensions() {
        let yaml = "output: A\ntimeout: soon\ntasks:\n  A:\n    run: noop\n    timeout: 5x\n    concurrency: 0\n    retry:\n      maxAttempts: 0\n  B:\n    retry:\n      maxAttempts: 3\n      backoff: {initial: 5s, max: 1s}\n    inputs: 1\n  C:\n    retry:\n      maxAttempts: 3\n      backoff: {multiplier: 0.5}\n    inputs: 1\n  D:\n    retry: {maxAttempts: 2, backoff: {initial: often}}\n    inputs: 1\n";
        let e = check(yaml);
        let codes: Vec<_> = e.iter().map(|e| (e.code, e.line)).collect();
        assert_eq!(
            codes,
            vec![
                ("invalid_timeout", 2),
                ("invalid_timeout", 6),
                ("invalid_concurrency", 7),
                ("invalid_retry", 8),
                ("invalid_retry", 11),
                ("invalid_retry", 16),
                ("invalid_retry", 21),
            ]
        );
    }
}
