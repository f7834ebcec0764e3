//! Validation of an RFC-0022 `Workflow` before it is stored, following the rules
//! of Fission's admission webhook (`pkg/apis/core/v1/workflow_validation.go`):
//! targets resolve, a terminal state is reachable and every state is reached,
//! fields belong to their state type, JSONPaths parse, nested fan-out is
//! refused, Choice rules are well-formed, retry fields are in range. Every error
//! carries a stable code and the line and column of the text at fault.
//!
//! One deliberate difference: a `resultPath` must name one place (no wildcard,
//! filter, slice, union or `..`), since a result cannot be written anywhere
//! else; Fission admits such a path and fails the step at run time.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::paths::{is_singular, parse_path};
use super::positions::{Positions, Step};
use super::run::ALL;
use super::spec::{
    parse_go_duration, parse_workflow, ChoiceCondition, ParsedWorkflow, ResultPath, RetryPolicy,
    StateType, WorkflowState, API_VERSION, KIND, MAX_ATTEMPTS,
};
use crate::validate::ValidationError;

/// Most states in a workflow (Fission's `MaxWorkflowStates`).
pub const MAX_STATES: usize = 100;
/// Most states in one branch (Fission's `MaxWorkflowBranchStates`).
pub const MAX_BRANCH_STATES: usize = 20;
/// Most branches of a Parallel state (the CRD's `maxItems`).
pub const MAX_BRANCHES: usize = 10;

/// Every code this module (and the parser) gives; each has a line in
/// docs/error-codes.md.
pub const ERROR_CODES: &[&str] = &[
    "document_too_large",
    "document_too_deep",
    "yaml_syntax",
    "invalid_spec",
    "invalid_kind",
    "invalid_name",
    "no_states",
    "too_many_states",
    "invalid_state_name",
    "unknown_state",
    "no_terminal_state",
    "unreachable_state",
    "field_not_allowed",
    "missing_field",
    "invalid_transition",
    "invalid_function_ref",
    "invalid_jsonpath",
    "invalid_choice",
    "invalid_catch",
    "invalid_branches",
    "nested_fan_out",
    "invalid_retry",
    "invalid_timeout",
    "invalid_duration",
    "invalid_concurrency",
    "invalid_retention",
];

/// Parses and validates `text`; every problem found, in the order of the text.
pub fn parse_and_validate(text: &str) -> Result<ParsedWorkflow, Vec<ValidationError>> {
    let parsed = parse_workflow(text).map_err(|e| vec![e])?;
    let errors = validate(&parsed, text);
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// Every problem in `parsed`, read from `text` (for the positions), sorted by
/// line and column. Empty when the workflow is valid.
pub fn validate(parsed: &ParsedWorkflow, text: &str) -> Vec<ValidationError> {
    let mut v = Validator {
        pos: Positions::new(text),
        errors: Vec::new(),
    };
    let mut root = Vec::new();
    if let ParsedWorkflow::Document(w) = parsed {
        if w.api_version != API_VERSION {
            v.at_value(
                &[Step::from("apiVersion")],
                "invalid_kind",
                format!(
                    "apiVersion is {:?}; a Workflow is {API_VERSION:?}",
                    w.api_version
                ),
            );
        }
        if w.kind != KIND {
            v.at_value(
                &[Step::from("kind")],
                "invalid_kind",
                format!("kind is {:?}; this reads kind {KIND:?}", w.kind),
            );
        }
        for (field, value) in [
            ("name", &w.metadata.name),
            ("namespace", &w.metadata.namespace),
        ] {
            let may_be_empty = field == "name" && value.is_empty();
            if !may_be_empty && !is_dns1123_label(value) {
                v.at_value(
                    &[Step::from("metadata"), Step::from(field)],
                    "invalid_name",
                    format!(
                        "metadata.{field} {value:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
                    ),
                );
            }
        }
        root.push(Step::from("spec"));
    }
    let spec = parsed.spec();
    let at = |steps: &[Step]| -> Vec<Step> {
        root.iter().cloned().chain(steps.iter().cloned()).collect()
    };

    if let Some(t) = &spec.timeout {
        v.duration(
            &at(&[Step::from("timeout")]),
            "invalid_timeout",
            "timeout",
            t,
        );
    }
    if let Some(r) = &spec.default_retry {
        v.retry(&at(&[Step::from("defaultRetry")]), r);
    }
    if let Some(h) = &spec.history_retention {
        if let Some(age) = &h.max_age {
            v.duration(
                &at(&[Step::from("historyRetention"), Step::from("maxAge")]),
                "invalid_retention",
                "historyRetention.maxAge",
                age,
            );
        }
        if h.max_count.is_some_and(|c| c < 0) {
            v.at_value(
                &at(&[Step::from("historyRetention"), Step::from("maxCount")]),
                "invalid_retention",
                "historyRetention.maxCount must be >= 0",
            );
        }
    }
    v.machine(&root, &spec.start_at, &spec.states, false);
    v.errors.sort_by_key(|e| (e.line, e.column));
    v.errors
}

/// A document in another namespace than `default`: a warning (code
/// `namespace_ignored`), since the engine keeps workflows in one name space
/// and stores it under its name alone.
pub fn ignored_namespace(parsed: &ParsedWorkflow, text: &str) -> Option<ValidationError> {
    let ParsedWorkflow::Document(w) = parsed else {
        return None;
    };
    let ns = &w.metadata.namespace;
    if ns == "default" {
        return None;
    }
    let (line, column) =
        Positions::new(text).value(&[Step::from("metadata"), Step::from("namespace")]);
    Some(ValidationError {
        code: "namespace_ignored",
        message: format!(
            "namespace {ns:?} is not kept for the workflow, stored by its name alone (workflows share one name space here); its Tasks call the functions of namespace {ns:?}"
        ),
        line,
        column,
    })
}

/// Tasks whose function `exists` says is missing: warnings (code
/// `unknown_function`), not errors, so that a workflow may be stored before
/// its functions (GitOps ordering). A name that `is_workflow` is said to be
/// one: a Task runs a function, and fails at once on a workflow.
pub fn missing_functions(
    parsed: &ParsedWorkflow,
    text: &str,
    exists: impl Fn(&str) -> bool,
    is_workflow: impl Fn(&str) -> bool,
) -> Vec<ValidationError> {
    let pos = Positions::new(text);
    let root: Vec<Step> = if parsed.is_document() {
        vec![Step::from("spec")]
    } else {
        Vec::new()
    };
    let namespace = match parsed {
        ParsedWorkflow::Document(w) => w.metadata.namespace.as_str(),
        _ => "default",
    };
    let mut out = Vec::new();
    let mut check = |path: Vec<Step>, st: &WorkflowState| {
        if let Some(f) = &st.function {
            let key = super::run::function_key(namespace, &f.name);
            if !exists(&key) {
                let mut p = path;
                p.extend([Step::from("function"), Step::from("name")]);
                let (line, column) = pos.value(&p);
                let message = if is_workflow(&f.name) {
                    format!(
                        "{:?} is a workflow, not a function: a Task state runs a function, and this one fails at once; call the workflow through a route (an `http` function), or run its steps as states",
                        f.name
                    )
                } else {
                    format!("function {key:?} does not exist (yet)")
                };
                out.push(ValidationError {
                    code: "unknown_function",
                    message,
                    line,
                    column,
                });
            }
        }
    };
    for (name, st) in &parsed.spec().states {
        let mut p = root.clone();
        p.extend([Step::from("states"), Step::from(name)]);
        check(p.clone(), st);
        for (i, b) in st.branches.iter().enumerate() {
            for (bn, bst) in &b.states {
                let mut bp = p.clone();
                bp.extend([
                    Step::from("branches"),
                    Step::from(i),
                    Step::from("states"),
                    Step::from(bn),
                ]);
                check(bp, bst);
            }
        }
    }
    out.sort_by_key(|e| (e.line, e.column));
    out
}

/// Whether `s` is a DNS-1123 label.
fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a valid state name (`^[A-Za-z0-9_-]{1,64}$`): names are
/// durable identifiers in run history.
fn is_state_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

struct Validator {
    pos: Positions,
    errors: Vec<ValidationError>,
}

/// Which state types may set a field (Fission's exclusivity table).
fn allowed_on(field: &str, t: StateType) -> bool {
    use StateType::*;
    match field {
        "function" | "timeout" | "retry" | "waitForCallback" => t == Task,
        "catch" | "inputPath" | "resultPath" | "outputPath" => matches!(t, Task | Parallel | Map),
        "choices" | "default" => t == Choice,
        "branches" | "maxConcurrency" => matches!(t, Parallel | Map),
        "itemsPath" => t == Map,
        "duration" => t == Wait,
        "next" | "end" => matches!(t, Task | Parallel | Map | Wait),
        _ => true,
    }
}

/// The fields a state sets, by their YAML names.
fn fields_set(st: &WorkflowState) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut add = |set: bool, name: &'static str| {
        if set {
            out.push(name);
        }
    };
    add(st.function.is_some(), "function");
    add(st.timeout.is_some(), "timeout");
    add(st.retry.is_some(), "retry");
    add(st.wait_for_callback, "waitForCallback");
    add(!st.catch.is_empty(), "catch");
    add(!st.choices.is_empty(), "choices");
    add(st.default.is_some(), "default");
    add(!st.branches.is_empty(), "branches");
    add(st.items_path.is_some(), "itemsPath");
    add(st.max_concurrency.is_some(), "maxConcurrency");
    add(st.duration.is_some(), "duration");
    add(st.input_path.is_some(), "inputPath");
    add(!st.result_path.is_replace(), "resultPath");
    add(st.output_path.is_some(), "outputPath");
    add(st.next.is_some(), "next");
    add(st.end, "end");
    out
}

fn join(base: &[Step], more: &[Step]) -> Vec<Step> {
    base.iter().cloned().chain(more.iter().cloned()).collect()
}

impl Validator {
    fn push(
        &mut self,
        (line, column): (usize, usize),
        code: &'static str,
        message: impl Into<String>,
    ) {
        self.errors.push(ValidationError {
            code,
            message: message.into(),
            line,
            column,
        });
    }

    fn at_value(&mut self, path: &[Step], code: &'static str, message: impl Into<String>) {
        let p = self.pos.value(path);
        self.push(p, code, message);
    }

    fn at_key(&mut self, path: &[Step], code: &'static str, message: impl Into<String>) {
        let p = self.pos.key(path);
        self.push(p, code, message);
    }

    fn duration(&mut self, path: &[Step], code: &'static str, field: &str, text: &str) {
        match parse_go_duration(text) {
            Some(d) if !d.is_zero() => {}
            Some(_) => self.at_value(path, code, format!("{field} must be > 0")),
            None => self.at_value(
                path,
                code,
                format!(
                    "{field} {text:?} {}",
                    crate::spec::not_a_duration(text, "\"30s\", \"1m30s\", \"1.5h\"")
                ),
            ),
        }
    }

    fn jsonpath(&mut self, path: &[Step], field: &str, text: &str, must_be_singular: bool) {
        if let Err(reason) = parse_path(text) {
            self.at_value(
                path,
                "invalid_jsonpath",
                format!("{field} {text:?} is not a JSONPath (RFC 9535, starting with $): {reason}"),
            );
        } else if must_be_singular && !is_singular(text) {
            self.at_value(
                path,
                "invalid_jsonpath",
                format!(
                    "{field} {text:?} must name one place to write to (names and indexes only; no wildcard, filter, slice, union or `..`)"
                ),
            );
        }
    }

    fn retry(&mut self, path: &[Step], r: &RetryPolicy) {
        if let Some(n) = r.max_attempts {
            if !(1..=MAX_ATTEMPTS).contains(&n) {
                self.at_value(
                    &join(path, &[Step::from("maxAttempts")]),
                    "invalid_retry",
                    format!("maxAttempts is {n}; it must be from 1 to {MAX_ATTEMPTS}"),
                );
            }
        }
        let mut bound = |field: &'static str, text: &Option<String>| {
            let text = text.as_ref()?;
            let d = parse_go_duration(text);
            if d.is_none() {
                self.at_value(
                    &join(path, &[Step::from(field)]),
                    "invalid_retry",
                    format!(
                        "{field} {text:?} {}",
                        crate::spec::not_a_duration(text, "\"1s\", \"500ms\"")
                    ),
                );
            }
            d
        };
        let base = bound("backoffBase", &r.backoff_base);
        let cap = bound("backoffCap", &r.backoff_cap);
        if let (Some(base), Some(cap)) = (base, cap) {
            if cap < base {
                self.at_value(
                    &join(path, &[Step::from("backoffCap")]),
                    "invalid_retry",
                    "backoffCap must be >= backoffBase",
                );
            }
        }
    }

    /// One state machine: the top level (`in_branch` false) or a branch.
    fn machine(
        &mut self,
        base: &[Step],
        start_at: &str,
        states: &BTreeMap<String, WorkflowState>,
        in_branch: bool,
    ) {
        let before = self.errors.len();
        let states_path = join(base, &[Step::from("states")]);
        let max = if in_branch {
            MAX_BRANCH_STATES
        } else {
            MAX_STATES
        };
        if states.is_empty() {
            self.at_key(&states_path, "no_states", "at least one state is required");
            return;
        }
        if states.len() > max {
            self.at_key(
                &states_path,
                "too_many_states",
                format!(
                    "{} states; at most {max}{}",
                    states.len(),
                    if in_branch { " per branch" } else { "" }
                ),
            );
        }
        if !states.contains_key(start_at) {
            self.at_value(
                &join(base, &[Step::from("startAt")]),
                "unknown_state",
                format!("startAt {start_at:?} names no state"),
            );
        }
        for (name, st) in states {
            let path = join(&states_path, &[Step::from(name)]);
            if !is_state_name(name) {
                self.at_key(
                    &path,
                    "invalid_state_name",
                    format!("state name {name:?} must match ^[A-Za-z0-9_-]{{1,64}}$ (names are kept in run history)"),
                );
            }
            if in_branch && matches!(st.state_type, StateType::Parallel | StateType::Map) {
                self.at_value(
                    &join(&path, &[Step::from("type")]),
                    "nested_fan_out",
                    format!("state {name:?}: a branch state cannot be Parallel or Map (nested fan-out is not supported)"),
                );
                continue;
            }
            self.state(&path, name, st, states, in_branch);
        }
        if states.contains_key(start_at) {
            // With the states' own errors too: a state a misspelt `next`
            // leaves unreachable is said at once (a hint to what it meant).
            let whole = self.errors.len() == before;
            self.graph(base, start_at, states, whole);
        }
    }

    fn state(
        &mut self,
        path: &[Step],
        name: &str,
        st: &WorkflowState,
        states: &BTreeMap<String, WorkflowState>,
        in_branch: bool,
    ) {
        let t = st.state_type;
        let field = |f: &str| join(path, &[Step::from(f)]);
        for f in fields_set(st) {
            if in_branch && matches!(f, "branches" | "itemsPath" | "maxConcurrency") {
                self.at_key(
                    &field(f),
                    "nested_fan_out",
                    format!("state {name:?}: a branch state cannot set {f} (nested fan-out is not supported)"),
                );
            } else if !allowed_on(f, t) {
                self.at_key(
                    &field(f),
                    "field_not_allowed",
                    format!("state {name:?}: a {t} state must not set {f}"),
                );
            }
        }
        let target = |v: &mut Self, p: Vec<Step>, what: &str, to: &str| {
            if !states.contains_key(to) {
                v.at_value(
                    &p,
                    "unknown_state",
                    format!("state {name:?}: {what} {to:?} names no state"),
                );
            }
        };
        if let Some(n) = &st.next {
            target(self, field("next"), "next", n);
        }
        if let Some(d) = &st.default {
            target(self, field("default"), "default", d);
        }
        if let Some(p) = &st.input_path {
            self.jsonpath(&field("inputPath"), "inputPath", p, false);
        }
        if let ResultPath::At(p) = &st.result_path {
            self.jsonpath(&field("resultPath"), "resultPath", p, true);
        }
        if let Some(p) = &st.output_path {
            self.jsonpath(&field("outputPath"), "outputPath", p, false);
        }
        if let Some(p) = &st.items_path {
            self.jsonpath(&field("itemsPath"), "itemsPath", p, false);
        }
        if let Some(t) = &st.timeout {
            self.duration(&field("timeout"), "invalid_timeout", "timeout", t);
        }
        let mut seen = HashSet::new();
        for (i, c) in st.catch.iter().enumerate() {
            let cp = join(path, &[Step::from("catch"), Step::from(i)]);
            if c.error_type.is_empty() {
                self.at_value(
                    &join(&cp, &[Step::from("errorType")]),
                    "invalid_catch",
                    "errorType must not be empty",
                );
            } else if let Some(ours) = step_functions_error(&c.error_type) {
                self.at_value(
                    &join(&cp, &[Step::from("errorType")]),
                    "invalid_catch",
                    format!(
                        "{:?} is Step Functions' name, never raised here; Fission's is {ours}",
                        c.error_type
                    ),
                );
            } else if !seen.insert(c.error_type.as_str()) {
                self.at_value(
                    &join(&cp, &[Step::from("errorType")]),
                    "invalid_catch",
                    format!("state {name:?}: a second catch route for {:?} is never used (the first match wins)", c.error_type),
                );
            } else if c.error_type == ALL && i + 1 < st.catch.len() {
                // As Step Functions' States.ALL: the routes after it never match.
                self.at_value(
                    &join(&cp, &[Step::from("errorType")]),
                    "invalid_catch",
                    format!("state {name:?}: the {ALL} route catches every error, so it must be the last (the first match wins)"),
                );
            }
            target(
                self,
                join(&cp, &[Step::from("next")]),
                "catch next",
                &c.next,
            );
            if let Some(p) = &c.result_path {
                self.jsonpath(
                    &join(&cp, &[Step::from("resultPath")]),
                    "catch resultPath",
                    p,
                    true,
                );
            }
        }
        let next_or_end = |v: &mut Self| {
            if st.next.is_some() == st.end {
                v.at_key(
                    path,
                    "invalid_transition",
                    format!(
                        "state {name:?}: a {t} state sets exactly one of next and end ({})",
                        if st.end {
                            "it sets both"
                        } else {
                            "it sets neither"
                        }
                    ),
                );
            }
        };
        match t {
            StateType::Task => {
                match &st.function {
                    None => self.at_key(path, "missing_field", format!("state {name:?}: a Task state needs a function")),
                    Some(f) if f.ref_type != "name" => self.at_value(
                        &join(path, &[Step::from("function"), Step::from("type")]),
                        "invalid_function_ref",
                        format!("state {name:?}: a Task's function is referenced by name (type: name), not {:?}", f.ref_type),
                    ),
                    Some(f) if !is_dns1123_label(&f.name) => self.at_value(
                        &join(path, &[Step::from("function"), Step::from("name")]),
                        "invalid_function_ref",
                        format!("state {name:?}: function name {:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)", f.name),
                    ),
                    Some(_) => {}
                }
                next_or_end(self);
                if let Some(r) = &st.retry {
                    self.retry(&field("retry"), r);
                }
            }
            StateType::Choice => {
                if st.choices.is_empty() {
                    self.at_key(
                        path,
                        "invalid_choice",
                        format!(
                            "state {name:?}: a Choice state needs at least one rule in choices"
                        ),
                    );
                }
                for (i, rule) in st.choices.iter().enumerate() {
                    let rp = join(path, &[Step::from("choices"), Step::from(i)]);
                    target(
                        self,
                        join(&rp, &[Step::from("next")]),
                        "choice next",
                        &rule.next,
                    );
                    // A rule is a condition with a `next`, checked as one.
                    self.condition(&rp, &rule.condition());
                }
            }
            StateType::Parallel | StateType::Map => {
                next_or_end(self);
                if st.max_concurrency.is_some_and(|n| n < 0) {
                    self.at_value(
                        &field("maxConcurrency"),
                        "invalid_concurrency",
                        "maxConcurrency must be >= 0 (0 means the default, 10)",
                    );
                }
                if t == StateType::Map {
                    if st.items_path.is_none() {
                        self.at_key(
                            path,
                            "missing_field",
                            format!("state {name:?}: a Map state needs itemsPath"),
                        );
                    }
                    if st.branches.len() != 1 {
                        self.at_key(
                            &if st.branches.is_empty() { path.to_vec() } else { field("branches") },
                            "invalid_branches",
                            format!("state {name:?}: a Map state has exactly one branch (the iterator), not {}", st.branches.len()),
                        );
                    }
                } else if st.branches.is_empty() {
                    self.at_key(
                        path,
                        "invalid_branches",
                        format!("state {name:?}: a Parallel state needs at least one branch"),
                    );
                } else if st.branches.len() > MAX_BRANCHES {
                    self.at_key(
                        &field("branches"),
                        "invalid_branches",
                        format!("state {name:?}: at most {MAX_BRANCHES} branches"),
                    );
                }
                if !in_branch {
                    for (i, b) in st.branches.iter().enumerate() {
                        let bp = join(path, &[Step::from("branches"), Step::from(i)]);
                        self.machine(&bp, &b.start_at, &b.states, true);
                    }
                }
            }
            StateType::Wait => {
                match &st.duration {
                    None => self.at_key(
                        path,
                        "invalid_duration",
                        format!("state {name:?}: a Wait state needs a duration"),
                    ),
                    Some(d) => self.duration(&field("duration"), "invalid_duration", "duration", d),
                }
                next_or_end(self);
            }
            StateType::Succeed | StateType::Fail => {}
        }
    }

    fn condition(&mut self, path: &[Step], c: &ChoiceCondition) {
        match c.composite_count() {
            0 => {}
            1 if c.is_empty() => {
                for (op, conds) in [("and", &c.and), ("or", &c.or)] {
                    for (j, inner) in conds.iter().enumerate() {
                        self.condition(&join(path, &[Step::from(op), Step::from(j)]), inner);
                    }
                }
                if let Some(inner) = &c.not {
                    self.condition(&join(path, &[Step::from("not")]), inner);
                }
                return;
            }
            1 => {
                return self.at_value(
                    path,
                    "invalid_choice",
                    "a condition is either a comparison (variable and one operator) or one of and/or/not, not both",
                )
            }
            _ => {
                return self.at_value(
                    path,
                    "invalid_choice",
                    "a condition sets exactly one of and, or, not",
                )
            }
        }
        match &c.variable {
            None => self.at_value(
                path,
                "invalid_choice",
                "a comparison needs a variable (a JSONPath into the state's input)",
            ),
            Some(v) => self.jsonpath(&join(path, &[Step::from("variable")]), "variable", v, false),
        }
        let n = c.operator_count();
        if n != 1 {
            self.at_value(
                path,
                "invalid_choice",
                format!(
                    "a comparison sets exactly one of stringEquals, numericEquals, numericGreaterThan, numericLessThan, booleanEquals, isPresent, isNull ({n} set)"
                ),
            );
        }
    }

    /// Walks the machine from `start_at`: a terminal state must be reachable
    /// (said only of states without errors of their own, which may be why),
    /// and every state reached. Cycles are allowed (the run timeout bounds them).
    fn graph(
        &mut self,
        base: &[Step],
        start_at: &str,
        states: &BTreeMap<String, WorkflowState>,
        whole: bool,
    ) {
        let mut reached: HashSet<&str> = HashSet::from([start_at]);
        let mut queue = VecDeque::from([start_at]);
        let mut terminal = false;
        while let Some(name) = queue.pop_front() {
            let Some(st) = states.get(name) else { continue };
            terminal |= st.is_terminal();
            for next in st.targets() {
                if reached.insert(next) {
                    queue.push_back(next);
                }
            }
        }
        if !terminal && whole {
            self.at_value(
                &join(base, &[Step::from("startAt")]),
                "no_terminal_state",
                format!(
                    "no terminal state (end: true, Succeed or Fail) is reachable from {start_at:?}"
                ),
            );
        }
        for name in states.keys() {
            if !reached.contains(name.as_str()) {
                self.at_key(
                    &join(base, &[Step::from("states"), Step::from(name)]),
                    "unreachable_state",
                    format!("state {name:?} is not reachable from {start_at:?}"),
                );
            }
        }
    }
}

/// Fission's name for the error a Step Functions `States.*` error type
/// stands for: a catch route for the latter would never match.
fn step_functions_error(error_type: &str) -> Option<&'static str> {
    Some(match error_type.strip_prefix("States.")? {
        "ALL" => "Fission.All",
        "Timeout" | "HeartbeatTimeout" => "Fission.Timeout",
        "TaskFailed" => "Fission.FunctionError (5xx, timeouts apart) or Fission.PermanentError (4xx)",
        "BranchFailed" => "Fission.BranchFailed",
        "NoChoiceMatched" => "Fission.NoChoiceMatched",
        "ResultPathMatchFailure" | "ParameterPathFailure" => "Fission.InvalidPath",
        _ => "one of Fission.All, Fission.Timeout, Fission.FunctionError, Fission.PermanentError, Fission.BranchFailed, Fission.NoChoiceMatched, Fission.InvalidPath, Fission.Failed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errors of `yaml` as (code, line, column).
    fn check(yaml: &str) -> Vec<(&'static str, usize, usize)> {
        match parse_and_validate(yaml) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| (e.code, e.line, e.column)).collect(),
        }
    }

    /// RFC-0022's worked example, as Fission documents it.
    const ORDER_PIPELINE: &str = "\
apiVersion: fission.io/v1
kind: Workflow
metadata:
  name: order-pipeline
spec:
  startAt: validate
  timeout: 1h
  defaultRetry: { maxAttempts: 3, backoffBase: 2s, backoffCap: 30s }
  states:
    validate:
      type: Task
      function: { name: validate-order }
      timeout: 30s
      catch:
        - errorType: Fission.PermanentError
          next: reject
      next: charge
    charge:
      type: Task
      function: { name: charge-card }
      retry: { maxAttempts: 5, backoffBase: 1s, backoffCap: 60s }
      catch:
        - errorType: PaymentDeclined
          next: reject
      resultPath: $.charge
      next: fulfil
    fulfil:
      type: Task
      function: { name: fulfil-order }
      end: true
    reject:
      type: Task
      function: { name: notify-rejection }
      end: true
";

    #[test]
    fn rfc_worked_example_is_valid() {
        let parsed = parse_and_validate(ORDER_PIPELINE).unwrap();
        assert!(parsed.is_document());
        let spec = parsed.spec();
        assert_eq!(spec.start_at, "validate");
        assert_eq!(
            spec.states["charge"].result_path,
            ResultPath::At("$.charge".into())
        );
        assert_eq!(
            spec.states["fulfil"].function.as_ref().unwrap().ref_type,
            "name"
        );
    }

    #[test]
    fn every_state_type_is_valid_in_a_bare_spec() {
        let yaml = "\
startAt: pick
states:
  pick:
    type: Choice
    choices:
      - variable: $.kind
        stringEquals: fan
        next: fan
      - and:
          - { variable: $.n, numericGreaterThan: 1 }
          - { variable: $.n, numericLessThan: '1k' }
        next: each
    default: nap
  fan:
    type: Parallel
    branches:
      - startAt: a
        states:
          a: { type: Task, function: { name: fa }, end: true }
      - startAt: b
        states:
          b: { type: Succeed }
    next: done
  each:
    type: Map
    itemsPath: $.items
    maxConcurrency: 3
    branches:
      - startAt: one
        states:
          one: { type: Task, function: { name: per-item }, end: true }
    end: true
  nap: { type: Wait, duration: 1m30s, next: failed }
  failed: { type: Fail }
  done: { type: Succeed }
";
        assert_eq!(check(yaml), vec![]);
        let parsed = parse_and_validate(yaml).unwrap();
        assert!(!parsed.is_document());
        assert_eq!(parsed.spec().states["each"].effective_max_concurrency(), 3);
    }

    #[test]
    fn json_spec_is_read_too() {
        let json = r#"{"startAt": "a", "states": {"a": {"type": "Task", "function": {"name": "f"}, "end": true}}}"#;
        assert_eq!(check(json), vec![]);
        let json = "{\n  \"startAt\": \"a\",\n  \"states\": {\"a\": {\"type\": \"Succeed\", \"next\": \"a\"}}\n}";
        assert_eq!(check(json), vec![("field_not_allowed", 3, 39)]);
    }

    #[test]
    fn yaml_syntax_error_has_position() {
        assert_eq!(
            check("startAt: a\nstates: [\n"),
            vec![("yaml_syntax", 3, 1)]
        );
    }

    #[test]
    fn unknown_field_and_wrong_type_have_position() {
        let yaml = "startAt: a\nstates:\n  a:\n    type: Succeed\n    requirez: x\n";
        let e = parse_and_validate(yaml).unwrap_err();
        assert_eq!((e[0].code, e[0].line, e[0].column), ("invalid_spec", 5, 5));
        assert!(e[0].message.contains("requirez"), "{}", e[0].message);
        let yaml = "startAt: a\nstates:\n  a:\n    type: Sleep\n";
        assert_eq!(check(yaml)[0].0, "invalid_spec");
        let yaml = "startAt: a\nstates:\n  a:\n    type: Task\n    end: yes please\n";
        assert_eq!(check(yaml)[0].0, "invalid_spec");
    }

    /// A document without `metadata` reads as one with `metadata: {}`.
    #[test]
    fn a_document_without_metadata_is_one_with_empty_metadata() {
        let spec = "spec:\n  startAt: a\n  states:\n    a: { type: Succeed }\n";
        let head = "apiVersion: fission.io/v1\nkind: Workflow\n";
        let without = format!("{head}{spec}");
        let empty = format!("{head}metadata: {{}}\n{spec}");
        assert_eq!(check(&empty), vec![]);
        assert_eq!(check(&without), vec![]);
        let (Ok(ParsedWorkflow::Document(a)), Ok(ParsedWorkflow::Document(b))) =
            (parse_and_validate(&without), parse_and_validate(&empty))
        else {
            panic!("both are documents");
        };
        assert_eq!(a.metadata, b.metadata);
        assert_eq!(a.metadata.namespace, "default");
    }

    #[test]
    fn wrong_api_version_kind_and_name() {
        let yaml = "apiVersion: v1\nkind: Workflo\nmetadata:\n  name: Bad_Name\nspec:\n  startAt: a\n  states:\n    a: { type: Succeed }\n";
        assert_eq!(
            check(yaml),
            vec![
                ("invalid_kind", 1, 13),
                ("invalid_kind", 2, 7),
                ("invalid_name", 4, 9)
            ]
        );
    }

    #[test]
    fn start_at_and_targets_must_resolve() {
        let yaml = "\
startAt: nope
states:
  a:
    type: Task
    function: { name: f }
    catch:
      - { errorType: Fission.All, next: gone }
    next: missing
  c:
    type: Choice
    choices:
      - { variable: $.x, isPresent: true, next: lost }
    default: away
";
        assert_eq!(
            check(yaml),
            vec![
                ("unknown_state", 1, 10),
                ("unknown_state", 7, 41),
                ("unknown_state", 8, 11),
                ("unknown_state", 12, 49),
                ("unknown_state", 13, 14),
            ]
        );
    }

    #[test]
    fn no_states() {
        assert_eq!(check("startAt: a\nstates: {}\n"), vec![("no_states", 2, 1)]);
    }

    #[test]
    fn a_terminal_state_must_be_reachable() {
        let yaml = "\
startAt: a
states:
  a: { type: Wait, duration: 1s, next: b }
  b: { type: Wait, duration: 1s, next: a }
";
        assert_eq!(check(yaml), vec![("no_terminal_state", 1, 10)]);
    }

    #[test]
    fn every_state_must_be_reachable() {
        let yaml = "\
startAt: a
states:
  a: { type: Succeed }
  island: { type: Succeed }
";
        assert_eq!(check(yaml), vec![("unreachable_state", 4, 3)]);
        // Said with the other errors, where a misspelt `next` is why.
        let yaml = "\
startAt: a
states:
  a: { type: Wait, duration: 1s, next: zz }
  e: { type: Succeed }
";
        assert_eq!(
            check(yaml),
            vec![("unknown_state", 3, 40), ("unreachable_state", 4, 3)]
        );
    }

    #[test]
    fn fields_belong_to_their_state_type() {
        let yaml = "\
startAt: a
states:
  a:
    type: Choice
    function: { name: f }
    inputPath: $.x
    choices: [{ variable: $.x, isNull: true, next: b }]
    default: b
  b:
    type: Succeed
    next: a
    duration: 1s
";
        assert_eq!(
            check(yaml),
            vec![
                ("field_not_allowed", 5, 5),
                ("field_not_allowed", 6, 5),
                ("field_not_allowed", 11, 5),
                ("field_not_allowed", 12, 5),
            ]
        );
    }

    #[test]
    fn task_needs_a_function_by_name_and_next_or_end() {
        let yaml = "\
startAt: a
states:
  a: { type: Task, next: b, end: true }
  b:
    type: Task
    function: { type: function-weights, name: f }
    end: true
  c:
    type: Task
    function: { name: Not_A_Label }
";
        assert_eq!(
            check(yaml),
            vec![
                ("missing_field", 3, 3),
                ("invalid_transition", 3, 3),
                ("invalid_function_ref", 6, 23),
                ("invalid_transition", 8, 3),
                ("unreachable_state", 8, 3),
                ("invalid_function_ref", 10, 23),
            ]
        );
    }

    #[test]
    fn jsonpaths_must_parse_and_result_paths_name_one_place() {
        let yaml = "\
startAt: a
states:
  a:
    type: Task
    function: { name: f }
    inputPath: order.id
    resultPath: $.items[*]
    outputPath: $[
    catch:
      - { errorType: Fission.All, next: a, resultPath: $..err }
    end: true
";
        assert_eq!(
            check(yaml),
            vec![
                ("invalid_jsonpath", 6, 16),
                ("invalid_jsonpath", 7, 17),
                ("invalid_jsonpath", 8, 17),
                ("invalid_jsonpath", 10, 56),
            ]
        );
    }

    #[test]
    fn wait_for_callback_belongs_to_tasks() {
        let yaml = "startAt: a\nstates:\n  a: { type: Task, function: { name: f }, waitForCallback: true, end: true }\n";
        assert!(parse_and_validate(yaml).unwrap().spec().states["a"].wait_for_callback);
        let yaml = "startAt: a\nstates:\n  a: { type: Wait, duration: 1s, waitForCallback: true, end: true }\n";
        assert_eq!(check(yaml), vec![("field_not_allowed", 3, 34)]);
    }

    #[test]
    fn result_path_null_means_discard() {
        let yaml = "startAt: a\nstates:\n  a: { type: Task, function: { name: f }, resultPath: null, end: true }\n";
        let parsed = parse_and_validate(yaml).unwrap();
        assert_eq!(parsed.spec().states["a"].result_path, ResultPath::Discard);
        // And null is still a resultPath: a Succeed state may not set one.
        let yaml = "startAt: a\nstates:\n  a: { type: Succeed, resultPath: null }\n";
        assert_eq!(check(yaml), vec![("field_not_allowed", 3, 23)]);
    }

    #[test]
    fn nested_fan_out_is_refused() {
        let yaml = "\
startAt: p
states:
  p:
    type: Parallel
    end: true
    branches:
      - startAt: inner
        states:
          inner:
            type: Map
            itemsPath: $.xs
            branches: []
            end: true
      - startAt: t
        states:
          t:
            type: Task
            function: { name: f }
            itemsPath: $.xs
            end: true
";
        assert_eq!(
            check(yaml),
            vec![("nested_fan_out", 10, 19), ("nested_fan_out", 19, 13)]
        );
    }

    #[test]
    fn branches_are_counted_and_checked_like_machines() {
        let yaml = "\
startAt: m
states:
  m:
    type: Map
    end: true
  p:
    type: Parallel
    next: m
    branches:
      - startAt: x
        states:
          y: { type: Succeed }
";
        assert_eq!(
            check(yaml),
            vec![
                ("missing_field", 3, 3),
                ("invalid_branches", 3, 3),
                ("unreachable_state", 6, 3),
                ("unknown_state", 10, 18),
            ]
        );
    }

    #[test]
    fn choice_rules_are_well_formed() {
        let yaml = "\
startAt: c
states:
  c:
    type: Choice
    choices:
      - { stringEquals: a, next: d }
      - { variable: $.x, stringEquals: a, isNull: true, next: d }
      - { variable: $.x, and: [{ variable: $.x, isNull: true }], next: d }
      - { and: [{ variable: $.x }], or: [{ variable: $.y, isNull: true }], next: d }
      - { not: { variable: '$[', isNull: true }, next: d }
  d: { type: Succeed }
  e: { type: Choice, next: d }
";
        assert_eq!(
            check(yaml),
            vec![
                ("invalid_choice", 6, 9),
                ("invalid_choice", 7, 9),
                ("invalid_choice", 8, 9),
                ("invalid_choice", 9, 9),
                ("invalid_jsonpath", 10, 28),
                ("invalid_choice", 12, 3),
                ("unreachable_state", 12, 3),
                ("field_not_allowed", 12, 22),
            ]
        );
    }

    /// Conditions nest (`or` in `and`, `not` over `and`), each checked as a
    /// rule's own are, where it is written.
    #[test]
    fn nested_conditions_are_checked_where_they_are_written() {
        let ok = "\
startAt: c
states:
  c:
    type: Choice
    choices:
      - next: d
        and:
          - { variable: $.a, booleanEquals: true }
          - or:
              - { variable: $.n, numericGreaterThan: 1 }
              - not: { and: [{ variable: $.s, stringEquals: x }] }
  d: { type: Succeed }
";
        assert_eq!(check(ok), vec![]);
        let bad = "\
startAt: c
states:
  c:
    type: Choice
    choices:
      - next: d
        and:
          - { variable: $.a, booleanEquals: true }
          - or:
              - { variable: $.n }
              - { variable: $.n, isNull: true, not: { variable: $.m, isNull: true } }
              - { and: [{ variable: $.n, isNull: true }], or: [{ variable: $.n, isNull: true }] }
  d: { type: Succeed }
";
        assert_eq!(
            check(bad),
            vec![
                ("invalid_choice", 10, 17),
                ("invalid_choice", 11, 17),
                ("invalid_choice", 12, 17),
            ]
        );
    }

    #[test]
    fn numeric_operands_must_be_numbers_or_quantities() {
        let yaml = "startAt: c\nstates:\n  c:\n    type: Choice\n    choices:\n      - { variable: $.x, numericEquals: lots, next: c }\n";
        let e = parse_and_validate(yaml).unwrap_err();
        assert_eq!(e[0].code, "invalid_spec");
        assert!(e[0].message.contains("quantity"), "{}", e[0].message);
    }

    #[test]
    fn retry_fields_in_range() {
        let yaml = "\
startAt: a
defaultRetry: { maxAttempts: 0 }
states:
  a:
    type: Task
    function: { name: f }
    retry: { maxAttempts: 11, backoffBase: 10s, backoffCap: 1s }
    end: true
  b:
    type: Task
    function: { name: f }
    retry: { backoffBase: soon }
    end: true
";
        let got = check(yaml);
        assert_eq!(
            got,
            vec![
                ("invalid_retry", 2, 30),
                ("invalid_retry", 7, 27),
                ("invalid_retry", 7, 61),
                ("unreachable_state", 9, 3),
                ("invalid_retry", 12, 27),
            ]
        );
    }

    #[test]
    fn durations_timeouts_concurrency_and_retention() {
        let yaml = "\
startAt: a
timeout: forever
historyRetention: { maxAge: 1d, maxCount: -1 }
states:
  a: { type: Task, function: { name: f }, timeout: 0s, next: w }
  w: { type: Wait, duration: '5', next: n }
  n: { type: Wait, next: m }
  m:
    type: Map
    itemsPath: $.xs
    maxConcurrency: -2
    branches: [{ startAt: s, states: { s: { type: Succeed } } }]
    end: true
";
        assert_eq!(
            check(yaml),
            vec![
                ("invalid_timeout", 2, 10),
                ("invalid_retention", 3, 29),
                ("invalid_retention", 3, 43),
                ("invalid_timeout", 5, 52),
                ("invalid_duration", 6, 30),
                ("invalid_duration", 7, 3),
                ("invalid_concurrency", 11, 21),
            ]
        );
    }

    #[test]
    fn catch_routes_need_an_error_type_once() {
        let yaml = "\
startAt: a
states:
  a:
    type: Task
    function: { name: f }
    catch:
      - { errorType: '', next: a }
      - { errorType: X, next: a }
      - { errorType: X, next: a }
      - { errorType: States.ALL, next: a }
    end: true
";
        assert_eq!(
            check(yaml),
            vec![
                ("invalid_catch", 7, 22),
                ("invalid_catch", 9, 22),
                ("invalid_catch", 10, 22)
            ]
        );
        let message = parse_and_validate(yaml).unwrap_err()[2].message.clone();
        assert!(message.contains("Fission.All"), "{message}");
        // A catch-all before other routes would take every error from them.
        let yaml = "\
startAt: a
states:
  a:
    type: Task
    function: { name: f }
    catch:
      - { errorType: Fission.All, next: a }
      - { errorType: Card.Declined, next: a }
    end: true
";
        assert_eq!(check(yaml), vec![("invalid_catch", 7, 22)]);
        let message = parse_and_validate(yaml).unwrap_err()[0].message.clone();
        assert!(message.contains("must be the last"), "{message}");
    }

    #[test]
    fn state_names_are_pinned() {
        let yaml = "startAt: a b\nstates:\n  a b: { type: Succeed }\n";
        assert_eq!(check(yaml), vec![("invalid_state_name", 3, 3)]);
    }

    #[test]
    fn too_many_states() {
        let mut yaml = String::from("startAt: s0\nstates:\n");
        for i in 0..=MAX_STATES {
            yaml.push_str(&format!("  s{i}: {{ type: Succeed }}\n"));
        }
        assert!(check(&yaml).contains(&("too_many_states", 2, 1)));
    }

    #[test]
    fn missing_functions_are_warnings_with_position() {
        let parsed = parse_workflow(ORDER_PIPELINE).unwrap();
        let w = missing_functions(&parsed, ORDER_PIPELINE, |f| f != "charge-card", |_| false);
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0].code, w[0].line, w[0].column),
            ("unknown_function", 20, 25)
        );
    }

    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../../docs/error-codes.md");
        for code in ERROR_CODES
            .iter()
            .chain(&["unknown_function", "namespace_ignored"])
        {
            assert!(
                doc.contains(&format!("`{code}`")),
                "{code} is not in docs/error-codes.md"
            );
        }
    }

    proptest::proptest! {
        /// Validation answers every text with a workflow or errors, never a panic;
        /// every error has a position inside the text.
        #[test]
        fn validation_never_panics(
            lines in proptest::collection::vec(
                proptest::sample::select(vec![
                    "startAt: a", "states:", "  a:", "  b:", "    type: Task", "    type: Map",
                    "    type: Choice", "    type: Parallel", "    next: b", "    end: true",
                    "    function: { name: f }", "    resultPath: $.x[*]", "    inputPath: $[",
                    "    branches:", "      - startAt: a", "        states:", "          a: { type: Map }",
                    "    choices:", "      - { variable: $.x, isNull: true, next: a }",
                    "      - { and: [], next: zz }", "    retry: { maxAttempts: 99 }", "spec:",
                    "kind: Workflow", "  - [", "{", "\"x\": 1}", "    duration: 1s",
                ]),
                0..24,
            )
        ) {
            let text = lines.join("\n");
            if let Err(errors) = parse_and_validate(&text) {
                let line_count = text.lines().count().max(1) + 1;
                for e in errors {
                    proptest::prop_assert!(e.line >= 1 && e.line <= line_count, "{:?}", e);
                    proptest::prop_assert!(e.column >= 1, "{:?}", e);
                }
            }
        }
    }

    #[test]
    fn a_spec_round_trips_through_json() {
        let parsed = parse_workflow(ORDER_PIPELINE).unwrap();
        let json = serde_json::to_string(parsed.spec()).unwrap();
        let again = parse_workflow(&json).unwrap();
        assert_eq!(again.spec(), parsed.spec());
    }
}
