//! Validation of a workflow document before it is stored. Every error carries a
//! stable code and the line and column in the YAML source at fault.

use serde::Serialize;
use serde_json::Value;

use crate::builtins::is_builtin;
use crate::dag::TaskGraph;
use crate::document::check_yaml;
use crate::expr::{all_expressions, check_syntax, expression_source};
use crate::retry::RetryPolicy;
use crate::spec::{is_task_spec, parse_duration, TaskSpec, WorkflowSpec};

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
    check_yaml(source).map_err(|e| {
        let (line, column) = e.position();
        ValidationError {
            code: e.code(),
            message: e.to_string(),
            line,
            column,
        }
    })
}

/// Parses and validates a workflow. `exists` says whether a function or stored
/// workflow of that name exists (built-ins are known here).
pub fn parse_and_validate(
    source: &str,
    exists: &dyn Fn(&str) -> bool,
) -> Result<WorkflowSpec, Vec<ValidationError>> {
    precheck(source).map_err(|e| vec![e])?;
    let spec: WorkflowSpec = match serde_yaml::from_str(source) {
        Ok(s) => s,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let msg = e.to_string();
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
    let errors = validate(&spec, source, exists);
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

/// Semantic checks of a parsed workflow; positions are looked up in `source`.
pub fn validate(
    spec: &WorkflowSpec,
    source: &str,
    exists: &dyn Fn(&str) -> bool,
) -> Vec<ValidationError> {
    let pos = Positions::new(source);
    let mut errors = Vec::new();
    let mut err = |code: &'static str, message: String, at: (usize, usize)| {
        errors.push(ValidationError {
            code,
            message,
            line: at.0,
            column: at.1,
        })
    };

    if spec.tasks.is_empty() {
        err(
            "no_tasks",
            "the workflow has no tasks".into(),
            pos.key(&["tasks"]),
        );
    }
    if spec.output.trim().is_empty() {
        err(
            "missing_output",
            "`output` must name the task whose output is the workflow's output".into(),
            pos.key(&["output"]),
        );
    } else if !spec.tasks.is_empty() && !spec.tasks.contains_key(&spec.output) {
        err(
            "unknown_output",
            format!("output task {:?} is not one of the tasks", spec.output),
            pos.value(&["output"]),
        );
    }
    if let Some(t) = &spec.timeout {
        if parse_duration(t).is_none() {
            err(
                "invalid_timeout",
                format!("timeout {t:?} is not a duration (e.g. \"30s\")"),
                pos.value(&["timeout"]),
            );
        }
    }

    for (id, task) in &spec.tasks {
        for dep in &task.requires {
            if !spec.tasks.contains_key(dep) {
                err(
                    "unknown_requires",
                    format!("task {id:?} requires {dep:?}, which is not a task"),
                    pos.entry(&["tasks", id, "requires"], dep),
                );
            }
        }
        check_task(id, task, &pos, exists, &mut err);
    }

    let graph = TaskGraph::new(
        spec.tasks
            .iter()
            .map(|(k, v)| (k.as_str(), v.requires.as_slice())),
    );
    for cycle in graph.cycles() {
        err(
            "cycle",
            format!("tasks form a cycle: {}", cycle.join(" -> ")),
            pos.key(&["tasks", &cycle[0]]),
        );
    }
    errors.sort_by_key(|e| (e.line, e.column));
    errors
}

fn check_task(
    id: &str,
    task: &TaskSpec,
    pos: &Positions,
    exists: &dyn Fn(&str) -> bool,
    err: &mut impl FnMut(&'static str, String, (usize, usize)),
) {
    if expression_source(&task.run).is_some() {
        err(
            "invalid_run",
            format!("task {id:?}: `run` must name a built-in, a function or a workflow, not an expression; choose between tasks with `if` or `switch`"),
            pos.value(&["tasks", id, "run"]),
        );
    } else if !is_builtin(&task.target()) && !exists(&task.target()) {
        err(
            "unknown_function",
            format!(
                "task {id:?} runs {:?}, which is neither a built-in, a function nor a workflow",
                task.run
            ),
            pos.value(&["tasks", id, "run"]),
        );
    }
    if let Err(e) = RetryPolicy::from_spec(task.retry.as_ref()) {
        err(
            "invalid_retry",
            format!("task {id:?}: retry: {e}"),
            pos.key(&["tasks", id, "retry"]),
        );
    }
    if let Some(t) = &task.timeout {
        if parse_duration(t).is_none() {
            err(
                "invalid_timeout",
                format!("task {id:?}: timeout {t:?} is not a duration (e.g. \"5s\")"),
                pos.value(&["tasks", id, "timeout"]),
            );
        }
    }
    if task.concurrency == Some(0) {
        err(
            "invalid_concurrency",
            format!("task {id:?}: concurrency must be at least 1"),
            pos.value(&["tasks", id, "concurrency"]),
        );
    }
    if let Some(inputs) = &task.inputs {
        let mut exprs = Vec::new();
        all_expressions(inputs, &mut exprs);
        for e in exprs {
            let src = expression_source(&e).unwrap_or_default();
            if let Err(msg) = check_syntax(src) {
                err(
                    "invalid_expression",
                    format!("task {id:?}: expression {e:?} does not compile: {msg}"),
                    pos.text_after(&["tasks", id, "inputs"], &e),
                );
            }
        }
        // Embedded task specs must run something that exists too.
        let mut nested = Vec::new();
        embedded_runs(inputs, &mut nested);
        for run in nested {
            if expression_source(&run).is_some() {
                err(
                    "invalid_run",
                    format!("task {id:?}: an embedded task's `run` must name a built-in, a function or a workflow, not an expression"),
                    pos.text_after(&["tasks", id, "inputs"], &run),
                );
            } else if !is_builtin(&run) && !exists(&run) {
                err(
                    "unknown_function",
                    format!("task {id:?}: an embedded task runs {run:?}, which is neither a built-in, a function nor a workflow"),
                    pos.text_after(&["tasks", id, "inputs"], &run),
                );
            }
        }
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

    fn entry(&self, path: &[&str], name: &str) -> (usize, usize) {
        self.text_after(path, name)
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
    fn valid_workflow_passes() {
        let yaml = "apiVersion: 1\noutput: B\ntasks:\n  A:\n    run: fortune\n  B:\n    run: whalesay\n    inputs: \"{ output('A') }\"\n    requires: [A]\n";
        assert!(check(yaml).is_empty());
    }

    #[test]
    fn yaml_syntax_error_has_position() {
        let e = check("output: A\ntasks:\n  A: [\n");
        assert_eq!(e[0].code, "yaml_syntax");
        assert!(e[0].line >= 3, "{:?}", e);
    }

    #[test]
    fn missing_output() {
        let e = check("tasks:\n  A:\n    run: noop\n");
        assert_eq!(e[0].code, "missing_output");
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
    }

    #[test]
    fn cycle_names_tasks() {
        let yaml = "output: A\ntasks:\n  A:\n    requires: [C]\n  B:\n    requires: [A]\n  C:\n    requires: [B]\n";
        let e = check(yaml);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].code, "cycle");
        assert!(e[0].message.contains("A -> B -> C"), "{}", e[0].message);
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

    #[test]
    fn bad_extensions() {
        let yaml = "output: A\ntimeout: soon\ntasks:\n  A:\n    run: noop\n    timeout: 5x\n    concurrency: 0\n    retry:\n      maxAttempts: 0\n  B:\n    retry:\n      maxAttempts: 3\n      backoff: {initial: 5s, max: 1s}\n  C:\n    retry:\n      maxAttempts: 3\n      backoff: {multiplier: 0.5}\n  D:\n    retry: {maxAttempts: 2, backoff: {initial: often}}\n";
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
                ("invalid_retry", 15),
                ("invalid_retry", 19),
            ]
        );
    }
}
