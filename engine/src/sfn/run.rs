//! Runs RFC-0022 state machines on the durable engine: how a stored document
//! becomes the spec a run embeds, and the `decide` step over a run's state.
//!
//! A state machine run uses the engine's own events. Each state entered that
//! does work (Task, Wait) is one task of the run, with the id
//! `NNNNNN-<state>` (a step number, so the last key is the current step); its
//! recorded inputs hold the document it was entered with (`document`), the
//! request body (`body`, the document after `inputPath`) and the headers.
//! Choice, Succeed and Fail do no work: `decide` evaluates them on the way
//! and records each as a step that ends at once (a built-in `noop`, or `fail`),
//! so that the run's history shows the path it took.
//! Pure: no I/O, no clock.

use serde_json::{json, Value};

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::choice::{eval_choice, NO_CHOICE_MATCHED};
use super::paths::{
    apply_input_path, apply_output_path, apply_result_path, parse_path, shape_output, ShapeError,
    INVALID_PATH,
};
use super::spec::{
    parse_go_duration, ParsedWorkflow, ResultPath, RetryPolicy, StateType, WorkflowSpec as Machine,
    WorkflowState,
};
use crate::retry::sample_from;
use crate::spec::{BackoffSpec, RetrySpec, TaskSpec, WorkflowSpec};
use crate::state::{
    backoff_seed, Action, Finish, RunError, RunState, RunStatus, TaskState, TaskStatus,
};
use crate::validate::ValidationError;

/// A 4xx answer: never retried.
pub const PERMANENT_ERROR: &str = "Fission.PermanentError";
/// A 5xx answer or a transport error.
pub const FUNCTION_ERROR: &str = "Fission.FunctionError";
/// The step's time ran out.
pub const TIMEOUT: &str = "Fission.Timeout";
/// A catch route's `errorType` that matches every error.
pub const ALL: &str = "Fission.All";
/// A branch of a Parallel or Map failed (fail-fast).
pub const BRANCH_FAILED: &str = "Fission.BranchFailed";
/// The state machine reached a `Fail` state.
pub const STATES_FAIL: &str = "Fission.Failed";

/// How long a run may take when the workflow does not say (RFC-0022's default).
pub const DEFAULT_RUN_TIMEOUT: &str = "24h";

/// Error code of a document that is both formats at once.
pub const INVALID_WORKFLOW: &str = "invalid_workflow";

/// Whether `source` is an RFC-0022 `Workflow` (a whole `fission.io/v1`
/// document or its spec) rather than a Fission Workflows document.
/// A document the parser should not be given (too deep, too big) is not:
/// the Fission Workflows path refuses it with its reason.
pub fn is_state_machine(source: &str) -> bool {
    if crate::validate::precheck(source).is_err() {
        return false;
    }
    let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(source) else {
        return false;
    };
    v.get("startAt").is_some()
        || v.get("spec").and_then(|s| s.get("startAt")).is_some()
        || v.get("kind").and_then(|k| k.as_str()) == Some(super::spec::KIND)
}

/// `metadata.name` of a whole document.
pub fn document_name(source: &str) -> Option<String> {
    let v = serde_yaml::from_str::<serde_yaml::Value>(source).ok()?;
    let name = v.get("metadata")?.get("name")?.as_str()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Validates an RFC-0022 document and turns it into the spec a run embeds.
pub fn engine_spec(source: &str) -> Result<WorkflowSpec, Vec<ValidationError>> {
    let parsed = super::validate::parse_and_validate(source)?;
    let name = match &parsed {
        ParsedWorkflow::Document(w) if !w.metadata.name.is_empty() => Some(w.metadata.name.clone()),
        _ => None,
    };
    let namespace = match &parsed {
        ParsedWorkflow::Document(w) => w.metadata.namespace.clone(),
        _ => "default".to_string(),
    };
    let mut machine = parsed.into_spec();
    in_namespace(&mut machine.states, &namespace);
    let timeout = machine.timeout.as_deref().unwrap_or(DEFAULT_RUN_TIMEOUT);
    Ok(WorkflowSpec {
        name,
        timeout: parse_go_duration(timeout).map(|d| format!("{}ms", d.as_millis())),
        state_machine: Some(Box::new(machine)),
        ..WorkflowSpec::default()
    })
}

/// A workflow and its functions share a namespace (RFC-0022, v1): the Task
/// functions of a document in another namespace than `default` are named by
/// their keys there (`team-a/charge`), which is how the engine calls them.
fn in_namespace(states: &mut BTreeMap<String, WorkflowState>, namespace: &str) {
    if namespace == "default" {
        return;
    }
    for state in states.values_mut() {
        if let Some(f) = &mut state.function {
            f.name = function_key(namespace, &f.name);
        }
        for branch in &mut state.branches {
            in_namespace(&mut branch.states, namespace);
        }
    }
}

/// A Task function's key: `name` in `default`, else `namespace/name`.
pub fn function_key(namespace: &str, name: &str) -> String {
    match namespace {
        "default" => name.to_string(),
        ns => format!("{ns}/{name}"),
    }
}

/// A Fission Workflows document may not carry a state machine of its own
/// (only [`engine_spec`] sets one, after validating it).
pub fn refuse_embedded_machine(spec: WorkflowSpec) -> Result<WorkflowSpec, Vec<ValidationError>> {
    if spec.state_machine.is_some() {
        return Err(vec![ValidationError {
            code: INVALID_WORKFLOW,
            message: "unknown field `stateMachine`".into(),
            line: 1,
            column: 1,
        }]);
    }
    Ok(spec)
}

/// The id of step number `seq` entering `state`.
pub fn step_id(seq: usize, state: &str) -> String {
    format!("{seq:06}-{state}")
}

/// The state a step id entered.
pub fn state_of(id: &str) -> &str {
    id.split_once('-').map(|(_, s)| s).unwrap_or(id)
}

/// What a state machine step runs, as its history shows it: a Task's
/// function reference, else the state's type (`Parallel`, `Wait`, ...), not
/// the built-in the engine runs for it.
pub fn step_shown(machine: &Machine, id: &str) -> Option<String> {
    let state = resolve(machine, id)?;
    match state.state_type {
        StateType::Task => None,
        other => Some(other.as_str().to_string()),
    }
}

/// How a Parallel or Map step stands in its run's history. The step's own
/// record ends when it starts its branches; the step itself has ended only
/// when they all have (succeeded, with their joined outputs) or one has
/// failed (failed, with that branch's error). A step whose branches were left
/// running by the end of its run was cancelled. `None` for any other step,
/// and for one whose branches have not started.
pub fn fan_out_shown(s: &RunState, machine: &Machine, t: &TaskState) -> Option<FanOutShown> {
    let state = resolve(machine, &t.id)?;
    if !matches!(state.state_type, StateType::Parallel | StateType::Map)
        || t.status != TaskStatus::Succeeded
    {
        return None;
    }
    let document = t
        .inputs
        .as_ref()
        .and_then(|i| i.get("document"))
        .unwrap_or(&Value::Null);
    let prefix = format!("{}/", t.id);
    let last_end = s
        .tasks
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(_, b)| b.ended_at)
        .max()
        .or(t.ended_at);
    let shown = match fan_in(s, machine, &t.id, state, document, 0, &mut Vec::new()) {
        Outcome::Done(Ok(joined)) => FanOutShown {
            status: TaskStatus::Succeeded,
            ended_at: last_end,
            output: Some(joined),
            error: None,
        },
        Outcome::Done(Err(f)) => FanOutShown {
            status: TaskStatus::Failed,
            ended_at: last_end,
            output: None,
            error: Some(f.message()),
        },
        Outcome::Pending(_) if s.status != RunStatus::Running => FanOutShown {
            status: TaskStatus::Cancelled,
            ended_at: s.finished_at,
            output: None,
            error: None,
        },
        Outcome::Pending(_) => FanOutShown {
            status: TaskStatus::Running,
            ended_at: None,
            output: None,
            error: None,
        },
    };
    Some(shown)
}

/// A Parallel or Map step as its history shows it (see [`fan_out_shown`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FanOutShown {
    pub status: TaskStatus,
    pub ended_at: Option<u64>,
    pub output: Option<Value>,
    pub error: Option<String>,
}

/// The state a step id (`NNNNNN-state`, or inside a branch
/// `NNNNNN-par/BBBB/NNNNNN-state`) entered.
fn resolve<'a>(machine: &'a Machine, id: &str) -> Option<&'a WorkflowState> {
    let mut states = &machine.states;
    let mut parts = id.split('/');
    loop {
        let state = states.get(state_of(parts.next()?))?;
        let Some(branch) = parts.next() else {
            return Some(state);
        };
        let i: usize = branch.parse().ok()?;
        let b = if state.state_type == StateType::Map {
            state.branches.first()?
        } else {
            state.branches.get(i)?
        };
        states = &b.states;
    }
}

/// The task a step of `machine` runs (without its inputs): what recovery
/// needs to dispatch an attempt again. Wait, Parallel and Map are timers;
/// Choice and Succeed a `noop`, Fail a `fail`.
fn task_spec(machine: &Machine, id: &str) -> TaskSpec {
    let builtin = |run: &str| TaskSpec {
        run: run.into(),
        ..TaskSpec::default()
    };
    match resolve(machine, id) {
        Some(s) if matches!(s.state_type, StateType::Choice | StateType::Succeed) => {
            builtin("noop")
        }
        Some(s) if s.state_type == StateType::Fail => builtin("fail"),
        Some(s) if s.state_type != StateType::Task => builtin("sleep"),
        Some(s) => TaskSpec {
            // A Task that waits for a callback runs the `callback` built-in,
            // which hands the URL to the function (its `notify` input); any other
            // Task is always the function, even one named like a built-in or a
            // workflow.
            run: if s.wait_for_callback {
                "callback".into()
            } else {
                s.function
                    .as_ref()
                    .map(|f| match f.name.contains('/') {
                        // A key in another namespace (`in_namespace`).
                        true => format!("{}{}", crate::spec::FISSION_SCHEME, f.name),
                        false => format!("{}default/{}", crate::spec::FISSION_SCHEME, f.name),
                    })
                    .unwrap_or_default()
            },
            timeout: s
                .timeout
                .as_deref()
                .and_then(parse_go_duration)
                .map(|d| format!("{}ms", d.as_millis())),
            retry: s
                .retry
                .as_ref()
                .or(machine.default_retry.as_ref())
                .map(retry_spec),
            ..TaskSpec::default()
        },
        None => TaskSpec::default(),
    }
}

/// RFC-0022's retry policy as the engine's: exponential backoff (factor 2)
/// from `backoffBase` up to `backoffCap`, jitter unless turned off.
fn retry_spec(r: &RetryPolicy) -> RetrySpec {
    let ms = |d: &Option<String>| {
        d.as_deref()
            .and_then(parse_go_duration)
            .map(|d| format!("{}ms", d.as_millis()))
    };
    RetrySpec {
        max_attempts: r
            .max_attempts
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .max(1),
        backoff: Some(BackoffSpec {
            initial: ms(&r.backoff_base),
            max: ms(&r.backoff_cap),
            multiplier: Some(2.0),
        }),
        jitter: Some(if r.jitter == Some(false) { 0.0 } else { 0.2 }),
    }
}

/// Whether a failed attempt of a state machine step may be retried: as in
/// Fission's engine, only `Fission.FunctionError` and `Fission.Timeout`; never a
/// 4xx (`Fission.PermanentError`), nor an error the function typed itself
/// (`{"errorType": ...}`, the author's own vocabulary, goes straight to
/// `catch`), whatever the executor thinks of it.
pub fn may_retry(state_machine: bool, retryable: bool, status: Option<u16>, error: &str) -> bool {
    if !state_machine {
        return retryable;
    }
    retryable && !status.is_some_and(|c| (400..500).contains(&c)) && !own_error_type(status, error)
}

/// Whether an answer's error is typed by the function (`{"errorType": ...}`)
/// with a type of its own (not `Fission.FunctionError` or `Fission.Timeout`).
fn own_error_type(status: Option<u16>, error: &str) -> bool {
    let Some(status) = status else {
        return false;
    };
    let Some(body) = error.strip_prefix(&format!("the function answered {status}: ")) else {
        return false;
    };
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("errorType")?
                .as_str()
                .map(|k| k != FUNCTION_ERROR && k != TIMEOUT)
        })
        .unwrap_or(false)
}

/// How the error of a Task state that names a workflow, not a function,
/// begins (a `Fission.PermanentError`).
pub const NOT_A_FUNCTION: &str = "a Task state runs a function, and ";

/// The failure of a Task state (or its `waitForCallback` call) that names
/// the stored workflow `name`: the tasks of a workflow added under a step
/// would never run.
pub fn workflow_in_task(name: &str) -> String {
    format!(
        "{NOT_A_FUNCTION}{name:?} is a workflow: call it through a route (an `http` function), or run the steps it has as states"
    )
}

/// A new step of a state machine run, when `id` names one (`apply` adds it
/// when the step is dispatched).
pub fn new_step(s: &RunState, id: &str) -> Option<TaskState> {
    let machine = s.spec.state_machine.as_deref()?;
    resolve(machine, id)?;
    Some(TaskState {
        id: id.to_string(),
        local: id.to_string(),
        spec: task_spec(machine, id),
        ..TaskState::default()
    })
}

/// An error as RFC-0022 types it: `errorType` and `cause` (as text, and as
/// the function gave it when that was not a string: `cause_of`).
fn step_error(t: &TaskState) -> (String, String, Option<Value>) {
    let message = t.error.clone().unwrap_or_default();
    match t.http_status {
        Some(status) => {
            let prefix = format!("the function answered {status}: ");
            let body = message.strip_prefix(&prefix).unwrap_or("");
            if let Ok(v) = serde_json::from_str::<Value>(body) {
                if let Some(kind) = v.get("errorType").and_then(Value::as_str) {
                    let (cause, value) = cause_of(&v);
                    return (kind.to_string(), cause, value);
                }
            }
            let kind = if (400..500).contains(&status) {
                PERMANENT_ERROR
            } else {
                FUNCTION_ERROR
            };
            (kind.to_string(), message, None)
        }
        None if message.contains("timed out") => (TIMEOUT.to_string(), message, None),
        // A function that does not exist (`CallError::UnknownFunction`), or
        // a workflow named where a function is: never retried, as a 4xx is not.
        None if message.starts_with("function ") && message.ends_with(" does not exist")
            || message.starts_with(NOT_A_FUNCTION) =>
        {
            (PERMANENT_ERROR.to_string(), message, None)
        }
        // A callback completed with `{"error": {"errorType": ..., "cause": ...}}`.
        None if message.starts_with('{') => match serde_json::from_str::<Value>(&message) {
            Ok(v) if v.get("errorType").is_some_and(Value::is_string) => {
                let kind = v["errorType"].as_str().unwrap_or_default().to_string();
                let (cause, value) = cause_of(&v);
                (kind, cause, value)
            }
            _ => (FUNCTION_ERROR.to_string(), message, None),
        },
        None => (FUNCTION_ERROR.to_string(), message, None),
    }
}

/// A typed error's `cause`: as text (for the run's error), and as the JSON the
/// function gave when that is not a string (Fission keeps it raw, so a catch's
/// `resultPath` gets `{"errorType", "cause": {...}}`, not the object as text).
fn cause_of(error: &Value) -> (String, Option<Value>) {
    match error.get("cause") {
        None | Some(Value::Null) => (String::new(), None),
        Some(Value::String(c)) => (c.clone(), None),
        Some(other) => (other.to_string(), Some(other.clone())),
    }
}

/// How a scope (the run, or one branch) failed.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    task: Option<String>,
    error_type: String,
    cause: String,
    /// The cause as the function typed it, when it was not a string.
    cause_value: Option<Value>,
    status: Option<u16>,
}

impl Failure {
    fn new(task: Option<String>, error_type: &str, cause: &str, status: Option<u16>) -> Failure {
        Failure {
            task,
            error_type: error_type.to_string(),
            cause: cause.to_string(),
            cause_value: None,
            status,
        }
    }

    fn message(&self) -> String {
        if self.cause.is_empty() {
            self.error_type.clone()
        } else {
            format!("{}: {}", self.error_type, self.cause)
        }
    }
}

/// What a scope calls for: actions while it runs, its output or error at the end.
enum Outcome {
    Pending(Vec<Action>),
    Done(Result<Value, Failure>),
}

fn failed(task: Option<String>, error_type: &str, cause: &str, status: Option<u16>) -> Outcome {
    Outcome::Done(Err(Failure::new(task, error_type, cause, status)))
}

/// The run, or one branch of a Parallel or Map: its steps are the tasks whose
/// ids start with `prefix`.
struct Scope<'a> {
    prefix: String,
    start_at: &'a str,
    states: &'a BTreeMap<String, WorkflowState>,
    /// The document its first state is entered with (copied only then).
    input: &'a Value,
}

/// The document a run starts with: the request body of an invocation (the
/// engine's input also holds its headers, query and method), else the input.
/// A call without a body starts with `null` (its input's body is `""`, for
/// Fission Workflows' documents, which read it as text).
pub fn start_document(input: &Value) -> &Value {
    match input {
        Value::Object(m) if m.contains_key("body") && m.contains_key("headers") => {
            match m.get("body") {
                Some(Value::String(s)) if s.is_empty() => &Value::Null,
                Some(body) => body,
                None => &Value::Null,
            }
        }
        other => other,
    }
}

/// The status of step `id` whose `resultPath` cannot write into `doc`: when
/// `doc` is still what the caller sent (inside a branch, the caller's item or
/// input that branch was given), the caller's mistake (422, as an input that
/// an expression of a workflow cannot read); else the workflow's (none).
fn misfit(s: &RunState, m: &Machine, id: &str, doc: &Value) -> Option<u16> {
    callers_document(s, m, id)
        .is_some_and(|theirs| *theirs == *doc)
        .then_some(crate::driver::INPUT_MISFIT_STATUS)
}

/// What the caller sent as the scope of step `id` (or the scope's own prefix,
/// `F/BBBB/`) was given it: the run's
/// start document, or inside a branch the part of it the branch started
/// with (a Map's item, a Parallel's input) when the Parallel or Map step was
/// entered with the caller's document unchanged; none when a step's output
/// came between (then what follows is the workflow's doing). Read only when
/// a step has failed.
fn callers_document<'a>(s: &'a RunState, m: &Machine, id: &str) -> Option<Cow<'a, Value>> {
    let parts: Vec<&str> = id.split('/').collect();
    let mut theirs = Cow::Borrowed(start_document(&s.input));
    // `F/BBBB/S`, `F/BBBB/G/BBBB/S`, ...: a fan step, then its branch number.
    let mut k = 1;
    while k + 1 < parts.len() {
        let fan = parts[..k].join("/");
        let i: usize = parts[k].parse().ok()?;
        let doc = s.tasks.get(&fan)?.inputs.as_ref()?.get("document")?;
        if *doc != *theirs {
            return None;
        }
        let state = resolve(m, &fan)?;
        let input = read_ref(state.input_path.as_deref(), doc).ok()?;
        theirs = Cow::Owned(if state.state_type == StateType::Map {
            let path = parse_path(state.items_path.as_deref().unwrap_or("$")).ok()?;
            match path.query(&input).first() {
                Some(Value::Array(items)) => items.get(i)?.clone(),
                _ => return None,
            }
        } else {
            input.into_owned()
        });
        k += 2;
    }
    Some(theirs)
}

/// What should happen next in a state machine run, at time `now`. Pure.
pub fn decide(s: &RunState, machine: &Machine, now: u64) -> Vec<Action> {
    if s.is_finished() || s.run_id.is_empty() {
        return Vec::new();
    }
    if let Some(d) = s.deadline {
        if now >= d {
            let limit = machine.timeout.as_deref().unwrap_or(DEFAULT_RUN_TIMEOUT);
            let f = Failure::new(
                None,
                TIMEOUT,
                &format!("the run timed out after {limit}"),
                None,
            );
            return vec![finish_failed(f)];
        }
    }
    let top = Scope {
        prefix: String::new(),
        start_at: &machine.start_at,
        states: &machine.states,
        input: start_document(&s.input),
    };
    // Cancellations come first: they are stored before anything follows.
    let mut actions = Vec::new();
    match run_scope(s, machine, &top, now, &mut actions) {
        Outcome::Done(Ok(output)) => actions.push(Action::Finish(Finish::Succeeded {
            output,
            headers: Default::default(),
        })),
        Outcome::Done(Err(f)) => actions.push(finish_failed(f)),
        Outcome::Pending(more) => {
            actions.extend(more);
            if let Some(d) = s.deadline {
                actions.push(Action::StartTimer { at: d });
            }
        }
    }
    actions
}

fn finish_failed(f: Failure) -> Action {
    Action::Finish(Finish::Failed(RunError {
        message: f.message(),
        task: f.task,
        status: f.status,
    }))
}

/// The number of steps `prefix` holds and the id (inside it) of the last. The
/// last key under the prefix names the last step, whose number counts the
/// steps (they are numbered 1, 2, ... as they are entered): no scan.
fn last_step<'a>(s: &'a RunState, prefix: &str) -> (usize, Option<&'a str>) {
    let last = match prefix.strip_suffix('/') {
        // Keys under `x/` sort before `x0` ('/' + 1).
        Some(stem) => {
            let upper = format!("{stem}0");
            s.tasks
                .range::<str, _>((Bound::Included(prefix), Bound::Excluded(upper.as_str())))
                .next_back()
        }
        None if prefix.is_empty() => s.tasks.iter().next_back(),
        None => None,
    };
    let Some((key, _)) = last else {
        return (0, None);
    };
    let rest = &key[prefix.len()..];
    let seg = rest.split('/').next().unwrap_or(rest);
    match seg.split_once('-').and_then(|(n, _)| n.parse().ok()) {
        Some(n) => (n, Some(seg)),
        None => count_steps(s, prefix),
    }
}

/// [`last_step`] by counting, for ids that are not numbered.
fn count_steps<'a>(s: &'a RunState, prefix: &str) -> (usize, Option<&'a str>) {
    let mut last: Option<&str> = None;
    let mut count = 0;
    for id in s
        .tasks
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .map(|(k, _)| k)
        .take_while(|k| k.starts_with(prefix))
    {
        let rest = &id[prefix.len()..];
        let seg = rest.split('/').next().unwrap_or(rest);
        if last != Some(seg) {
            count += 1;
            last = Some(seg);
        }
    }
    (count, last)
}

/// How far the branches of one Parallel or Map step got, kept by `apply`
/// (see [`note_change`]) so that `decide` looks only at branches that may
/// call for something, not at every item of a large Map on every event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FanOut {
    /// Branches start in order: the first `started` have a step.
    pub started: usize,
    /// The started branches that have not ended with an output.
    pub open: BTreeSet<usize>,
}

/// After task `id` changed: for each Parallel or Map step it is inside
/// (innermost first, as an outer branch's end depends on the inner join),
/// whether its branch there has ended with an output.
pub fn note_change(s: &mut RunState, id: &str) {
    let parts: Vec<&str> = id.split('/').collect();
    // `F/BBBB/S`, `F/BBBB/G/BBBB/S`, ...: the branch numbers are at odd places.
    let mut k = parts.len();
    while k >= 3 {
        k -= 2;
        let Ok(i) = parts[k].parse::<usize>() else {
            return;
        };
        let fan = parts[..k].join("/");
        let prefix = format!("{fan}/{}/", parts[k]);
        let Some(ended) = branch_ended(s, &fan, i, &prefix) else {
            return;
        };
        let book = s.fan_outs.entry(fan).or_default();
        book.started = book.started.max(i + 1);
        if ended {
            book.open.remove(&i);
        } else {
            book.open.insert(i);
        }
    }
}

/// Whether branch `i` (its steps under `prefix`) of the Parallel or Map step
/// `fan` has ended with an output: what `decide` would find.
fn branch_ended(s: &RunState, fan: &str, i: usize, prefix: &str) -> Option<bool> {
    let m = s.spec.state_machine.as_deref()?;
    let state = resolve(m, fan)?;
    let branch = if state.state_type == StateType::Map {
        state.branches.first()?
    } else {
        state.branches.get(i)?
    };
    let (_, seg) = last_step(s, prefix);
    let seg = seg?;
    let last = s.tasks.get(&format!("{prefix}{seg}"))?;
    let passes = branch.states.get(state_of(seg)).is_some_and(|st| {
        matches!(
            st.state_type,
            StateType::Choice | StateType::Succeed | StateType::Fail
        )
    });
    if !passes && !last.status.is_final() {
        return Some(false);
    }
    let scope = Scope {
        prefix: prefix.to_string(),
        start_at: &branch.start_at,
        states: &branch.states,
        input: &Value::Null,
    };
    let outcome = run_scope(s, m, &scope, 0, &mut Vec::new());
    Some(matches!(outcome, Outcome::Done(Ok(_))))
}

/// What the current step of `scope` calls for. Cancellations of the branches
/// of a Parallel or Map that failed go to `cancels`, whatever the outcome.
fn run_scope(
    s: &RunState,
    m: &Machine,
    scope: &Scope,
    now: u64,
    cancels: &mut Vec<Action>,
) -> Outcome {
    let (count, last) = last_step(s, &scope.prefix);
    let seq = count + 1;
    let Some(seg) = last else {
        return enter(s, m, scope, scope.start_at, scope.input.clone(), seq);
    };
    let id = format!("{}{seg}", scope.prefix);
    let name = state_of(seg);
    let (Some(last), Some(state)) = (s.tasks.get(&id), scope.states.get(name)) else {
        return failed(Some(id), FUNCTION_ERROR, "a step of an unknown state", None);
    };
    let document = last
        .inputs
        .as_ref()
        .and_then(|i| i.get("document"))
        .unwrap_or(&Value::Null);
    if let StateType::Choice | StateType::Succeed | StateType::Fail = state.state_type {
        // The step recorded what was decided; deciding again from the
        // document it recorded gives the same.
        return match pass(state, name, document.clone()) {
            Ok(Passed::Next(next, doc)) => enter(s, m, scope, &next, doc, seq),
            Ok(Passed::End(output)) => Outcome::Done(Ok(output)),
            Err(f) => Outcome::Done(Err(Failure {
                task: Some(id),
                ..f
            })),
        };
    }
    match last.status {
        TaskStatus::Running => Outcome::Pending(
            match (
                last.wake_at,
                last.callback.as_ref().and(last.callback_deadline),
            ) {
                (Some(w), _) if w <= now => vec![Action::FireTimer {
                    task: last.id.clone(),
                }],
                (Some(w), _) => vec![Action::StartTimer { at: w }],
                (None, Some(d)) if d <= now => vec![Action::ExpireCallback {
                    task: last.id.clone(),
                    attempt: last.attempts,
                }],
                (None, Some(d)) => vec![Action::StartTimer { at: d }],
                (None, None) => Vec::new(),
            },
        ),
        TaskStatus::Retrying => Outcome::Pending(retry(s, last, now)),
        // A cancelled step belongs to a cancelled run or to a branch stopped
        // by a sibling's failure: nothing more happens (a retry makes it
        // pending again).
        TaskStatus::Pending | TaskStatus::Waiting | TaskStatus::Cancelled => {
            Outcome::Pending(Vec::new())
        }
        TaskStatus::Succeeded => {
            let shaped = match state.state_type {
                StateType::Wait => apply_input_path(state.input_path.as_deref(), document)
                    .and_then(|d| apply_output_path(state.output_path.as_deref(), &d)),
                StateType::Parallel | StateType::Map => {
                    match fan_in(s, m, &id, state, document, now, cancels) {
                        Outcome::Pending(a) => return Outcome::Pending(a),
                        Outcome::Done(Err(f)) => {
                            cancel_branches(s, &id, &f, cancels);
                            return caught(s, m, scope, state, f, document, seq);
                        }
                        Outcome::Done(Ok(results)) => shape_output(state, document, results),
                    }
                }
                _ => shape_output(state, document, last.output.clone().unwrap_or(Value::Null)),
            };
            match shaped {
                Ok(doc) => match state.next.as_deref() {
                    Some(next) => enter(s, m, scope, next, doc, seq),
                    None => Outcome::Done(Ok(doc)),
                },
                Err(e) => {
                    let status = misfit(s, m, &id, document);
                    let f = Failure::new(Some(id), e.error_type(), &e.to_string(), status);
                    caught(s, m, scope, state, f, document, seq)
                }
            }
        }
        TaskStatus::Failed => {
            let (error_type, cause, cause_value) = step_error(last);
            let f = Failure {
                cause_value,
                ..Failure::new(Some(id), &error_type, &cause, last.http_status)
            };
            caught(s, m, scope, state, f, document, seq)
        }
    }
}

/// Fail-fast: every task of the Parallel or Map step `id` that has not
/// finished is cancelled (its call aborted, its timer dropped).
fn cancel_branches(s: &RunState, id: &str, f: &Failure, cancels: &mut Vec<Action>) {
    let prefix = format!("{id}/");
    for (task, t) in s
        .tasks
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(&prefix))
    {
        let known = cancels
            .iter()
            .any(|a| matches!(a, Action::CancelTask { task: c, .. } if c == task));
        if !t.status.is_final() && !known {
            cancels.push(Action::CancelTask {
                task: task.clone(),
                reason: format!("{id} stopped: {}", f.message()),
            });
        }
    }
}

/// A failed state: its catch route for the error, else the scope fails.
fn caught(
    s: &RunState,
    m: &Machine,
    scope: &Scope,
    state: &WorkflowState,
    f: Failure,
    document: &Value,
    seq: usize,
) -> Outcome {
    let route = state
        .catch
        .iter()
        .find(|r| r.error_type == f.error_type || r.error_type == ALL);
    let Some(route) = route else {
        return Outcome::Done(Err(f));
    };
    let cause = f.cause_value.clone().unwrap_or_else(|| json!(f.cause));
    let error = json!({"errorType": f.error_type, "cause": cause});
    let doc = match route.result_path.as_deref() {
        None => Ok(error),
        Some(p) => apply_result_path(&ResultPath::At(p.to_string()), document, error),
    };
    match doc {
        Ok(doc) => enter(s, m, scope, &route.next, doc, seq),
        Err(e) => {
            let status = misfit(s, m, &scope.prefix, document);
            failed(f.task, e.error_type(), &e.to_string(), status)
        }
    }
}

/// `inputPath` applied to `doc`, without copying it.
fn read_ref<'a>(path: Option<&str>, doc: &'a Value) -> Result<Cow<'a, Value>, ShapeError> {
    let Some(p) = path else {
        return Ok(Cow::Borrowed(doc));
    };
    let q = parse_path(p).map_err(|reason| ShapeError::Syntax {
        field: "inputPath",
        path: p.to_string(),
        reason,
    })?;
    Ok(match q.query(doc).first() {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(Value::Null),
    })
}

/// The branches of the Parallel or Map step `id`: started in order (a Map at
/// most `maxConcurrency` at once), joined as the ordered array of their
/// outputs; the first that fails fails the step with `Fission.BranchFailed`
/// and no other starts. Only the branches that have not ended are looked at
/// (and the next to start), until all have: then they are joined, once.
fn fan_in(
    s: &RunState,
    m: &Machine,
    id: &str,
    state: &WorkflowState,
    document: &Value,
    now: u64,
    cancels: &mut Vec<Action>,
) -> Outcome {
    let input = match read_ref(state.input_path.as_deref(), document) {
        Ok(i) => i,
        Err(e) => return failed(Some(id.into()), e.error_type(), &e.to_string(), None),
    };
    let path;
    let selected;
    let (n, items): (usize, Option<&[Value]>) = if state.state_type == StateType::Map {
        if state.branches.is_empty() {
            return failed(
                Some(id.into()),
                FUNCTION_ERROR,
                "a Map without its iterator",
                None,
            );
        }
        let items_path = state.items_path.as_deref().unwrap_or("$");
        path = match parse_path(items_path) {
            Ok(p) => p,
            Err(e) => return failed(Some(id.into()), INVALID_PATH, &e, None),
        };
        selected = path.query(&input);
        let Some(Value::Array(items)) = selected.first() else {
            // The caller's mistake when what the caller sent holds the same
            // there: the items were the caller's, not a step's output.
            let theirs = callers_document(s, m, id).is_some_and(|doc| {
                read_ref(state.input_path.as_deref(), &doc)
                    .is_ok_and(|i| path.query(&i).first() == selected.first())
            });
            return failed(
                Some(id.into()),
                INVALID_PATH,
                &format!("itemsPath {items_path:?} does not select an array"),
                theirs.then_some(crate::driver::INPUT_MISFIT_STATUS),
            );
        };
        (items.len(), Some(items.as_slice()))
    } else {
        (state.branches.len(), None)
    };
    // Branch `i`, with its input when it starts (a started one has its own).
    let branch = |i: usize, starts: bool| {
        let b = match items {
            Some(_) => &state.branches[0],
            None => &state.branches[i],
        };
        let input = match (starts, items) {
            (false, _) => &Value::Null,
            (true, Some(items)) => &items[i],
            (true, None) => input.as_ref(),
        };
        Scope {
            prefix: format!("{id}/{i:04}/"),
            start_at: &b.start_at,
            states: &b.states,
            input,
        }
    };
    let branch_failed = |i: usize, f: Failure| {
        failed(
            f.task.clone(),
            BRANCH_FAILED,
            &format!("branch {i}: {}", f.message()),
            f.status,
        )
    };
    let limit = if items.is_some() {
        state.effective_max_concurrency()
    } else {
        usize::MAX
    };
    let book = s.fan_outs.get(id);
    let mut started = book.map_or(0, |b| b.started);
    let mut actions = Vec::new();
    let mut running = 0;
    for &i in book.iter().flat_map(|b| b.open.iter()) {
        match run_scope(s, m, &branch(i, false), now, cancels) {
            Outcome::Done(Ok(_)) => {}
            Outcome::Done(Err(f)) => return branch_failed(i, f),
            Outcome::Pending(a) => {
                running += 1;
                actions.extend(a);
            }
        }
    }
    while started < n && running < limit {
        match run_scope(s, m, &branch(started, true), now, cancels) {
            Outcome::Done(Ok(_)) => {}
            Outcome::Done(Err(f)) => return branch_failed(started, f),
            Outcome::Pending(a) => {
                running += 1;
                actions.extend(a);
            }
        }
        started += 1;
    }
    if started < n || running > 0 {
        return Outcome::Pending(actions);
    }
    // Every branch has ended: their outputs, in order.
    let mut results = Vec::with_capacity(n);
    let mut done = true;
    for i in 0..n {
        match run_scope(s, m, &branch(i, true), now, cancels) {
            Outcome::Done(Ok(v)) => results.push(v),
            Outcome::Done(Err(f)) => return branch_failed(i, f),
            Outcome::Pending(a) => {
                done = false;
                actions.extend(a);
            }
        }
    }
    if done {
        Outcome::Done(Ok(Value::Array(results)))
    } else {
        Outcome::Pending(actions)
    }
}

/// The next attempt of a step that failed and may be retried: its time, then
/// its dispatch with the same document and the attempt in its headers.
fn retry(s: &RunState, t: &TaskState, now: u64) -> Vec<Action> {
    let next = t.attempts + 1;
    match t.retry_at {
        None => {
            let policy = crate::retry::RetryPolicy::from_spec(t.spec.retry.as_ref())
                .unwrap_or_else(|_| crate::retry::RetryPolicy::none());
            let delay = policy.backoff.delay(
                t.attempts,
                sample_from(&backoff_seed(&s.run_id, &t.id, t.attempts)),
            );
            vec![Action::ScheduleRetry {
                task: t.id.clone(),
                attempt: next,
                due: now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
            }]
        }
        Some(due) if due <= now => {
            let mut inputs = t.inputs.clone().unwrap_or_else(|| json!({}));
            inputs["headers"]["X-Fission-Workflow-Attempt"] = json!(next.to_string());
            let mut spec = t.spec.clone();
            spec.inputs = Some(inputs);
            vec![Action::Dispatch {
                task: t.id.clone(),
                attempt: next,
                key: s.key_of(&t.id),
                spec,
            }]
        }
        Some(due) => vec![Action::StartTimer { at: due }],
    }
}

/// Where a Choice, Succeed or Fail state leads with a document.
enum Passed {
    /// A Choice's next state and the document it hands on.
    Next(String, Value),
    /// A Succeed state's output: its scope ends.
    End(Value),
}

/// Evaluates Choice, Succeed or Fail state `name` (which do no work) on `doc`.
fn pass(state: &WorkflowState, name: &str, doc: Value) -> Result<Passed, Failure> {
    let path_error =
        |e: super::paths::ShapeError| Failure::new(None, e.error_type(), &e.to_string(), None);
    match state.state_type {
        StateType::Choice => {
            let input = apply_input_path(state.input_path.as_deref(), &doc).map_err(path_error)?;
            let Some(next) = eval_choice(state, &input) else {
                return Err(Failure::new(
                    None,
                    NO_CHOICE_MATCHED,
                    &format!("no rule of Choice state {name:?} matched"),
                    None,
                ));
            };
            let next = next.to_string();
            let doc =
                apply_output_path(state.output_path.as_deref(), &input).map_err(path_error)?;
            Ok(Passed::Next(next, doc))
        }
        StateType::Succeed => apply_input_path(state.input_path.as_deref(), &doc)
            .and_then(|d| apply_output_path(state.output_path.as_deref(), &d))
            .map(Passed::End)
            .map_err(path_error),
        _ => Err(Failure::new(
            None,
            STATES_FAIL,
            &format!("the workflow reached Fail state {name:?}"),
            None,
        )),
    }
}

/// The steps recorded on the way (Choice states passed) come before what
/// follows them; an end waits until they are recorded (it then follows from
/// the last of them).
fn after(mut steps: Vec<Action>, outcome: Outcome) -> Outcome {
    if steps.is_empty() {
        return outcome;
    }
    if let Outcome::Pending(more) = outcome {
        steps.extend(more);
    }
    Outcome::Pending(steps)
}

/// Enters state `name` of `scope` with `doc`, as step number `seq`. Every state
/// entered is a step of the run: one that does work is dispatched; Choice,
/// Succeed and Fail are evaluated and recorded as steps that end at once (a
/// Choice's output names the state it chose; Fail, an unmatched Choice or a
/// bad path records a failed step), so the run's history shows its path. A
/// Parallel or Map first records its input document in a zero-length timer step.
fn enter(
    s: &RunState,
    m: &Machine,
    scope: &Scope,
    name: &str,
    mut doc: Value,
    mut seq: usize,
) -> Outcome {
    let mut name = name.to_string();
    let mut steps = Vec::new();
    // Choices only move between states: more hops than states is a loop.
    for _ in 0..=scope.states.len() {
        let Some(state) = scope.states.get(&name) else {
            return failed(None, FUNCTION_ERROR, &format!("no state {name:?}"), None);
        };
        let id = format!("{}{}", scope.prefix, step_id(seq, &name));
        let inputs = match state.state_type {
            StateType::Wait => json!({
                "duration": state.duration.as_deref().and_then(parse_go_duration)
                    .map(|d| format!("{}ms", d.as_millis())),
                "document": doc,
            }),
            StateType::Task => {
                let body = match apply_input_path(state.input_path.as_deref(), &doc) {
                    Ok(b) => b,
                    Err(e) => {
                        let f = Failure::new(Some(id), e.error_type(), &e.to_string(), None);
                        return after(steps, caught(s, m, scope, state, f, &doc, seq));
                    }
                };
                let mut inputs = json!({
                    "body": body,
                    "headers": {
                        "X-Fission-Workflow-Run": s.run_id,
                        "X-Fission-Workflow-Attempt": "1",
                    },
                    "document": doc,
                });
                if state.wait_for_callback {
                    inputs["notify"] = json!(state.function.as_ref().map(|f| &f.name));
                }
                inputs
            }
            StateType::Parallel | StateType::Map => json!({"duration": 0, "document": doc}),
            StateType::Choice | StateType::Succeed | StateType::Fail => {
                let passed = pass(state, &name, doc.clone());
                let (run, default) = match &passed {
                    Ok(Passed::Next(next, _)) => ("noop", json!({ "next": next })),
                    Ok(Passed::End(_)) => ("noop", Value::Null),
                    Err(f) => ("fail", json!(f.message())),
                };
                steps.push(Action::Dispatch {
                    key: s.key_of(&id),
                    task: id,
                    attempt: 1,
                    spec: TaskSpec {
                        run: run.into(),
                        inputs: Some(json!({"default": default, "document": doc})),
                        ..TaskSpec::default()
                    },
                });
                match passed {
                    Ok(Passed::Next(next, d)) => {
                        name = next;
                        doc = d;
                        seq += 1;
                        continue;
                    }
                    _ => return Outcome::Pending(steps),
                }
            }
        };
        let mut spec = task_spec(m, &id);
        spec.inputs = Some(inputs);
        steps.push(Action::Dispatch {
            key: s.key_of(&id),
            task: id,
            attempt: 1,
            spec,
        });
        return Outcome::Pending(steps);
    }
    failed(
        None,
        FUNCTION_ERROR,
        "Choice states loop without doing any work",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apply, Event};
    use std::cell::RefCell;

    thread_local! {
        /// The events the test recorded, as the store would hold them.
        static LOG: RefCell<Vec<Event>> = const { RefCell::new(Vec::new()) };
    }

    /// Applies an event and logs it.
    fn ap(s: &mut RunState, e: &Event) {
        apply(s, e);
        LOG.with(|l| l.borrow_mut().push(e.clone()));
    }

    /// The run as a restarted server folds it from its stored events.
    fn refold() -> RunState {
        LOG.with(|l| RunState::fold(l.borrow().iter()))
    }
    use std::collections::BTreeMap;

    const ORDER: &str = "apiVersion: fission.io/v1
kind: Workflow
metadata: {name: order}
spec:
  startAt: validate
  states:
    validate:
      type: Task
      function: {name: validate-order}
      inputPath: $.order
      resultPath: $.valid
      next: route
      catch: [{errorType: Fission.PermanentError, next: reject, resultPath: $.error}]
    route:
      type: Choice
      choices:
        - {variable: $.valid.ok, booleanEquals: true, next: charge}
      default: reject
    charge: {type: Task, function: {name: charge-card}, resultPath: $.charge, outputPath: $.charge, end: true}
    reject: {type: Fail}
";

    fn started(source: &str, input: Value) -> RunState {
        let spec = engine_spec(source).unwrap();
        LOG.with(|l| l.borrow_mut().clear());
        let mut s = RunState::default();
        ap(
            &mut s,
            &Event::RunStarted {
                run_id: "r1".into(),
                workflow: "order".into(),
                version: 1,
                spec,
                input,
                at: 0,
                retry_of: None,
                preserved: BTreeMap::new(),
                keys: None,
                rules: 0,
            },
        );
        s
    }

    /// What `decide` asks for at `now`, less the run's own timeout timer.
    fn work(s: &RunState, now: u64) -> Vec<Action> {
        decide(s, s.spec.state_machine.as_deref().unwrap(), now)
            .into_iter()
            .filter(|a| !matches!(a, Action::StartTimer { at } if Some(*at) == s.deadline))
            .collect()
    }

    /// Does what the driver does with a step that is a built-in: `noop` and
    /// `fail` end at once, `sleep` (with `timers`) starts a timer due at `at`.
    /// False for anything else.
    fn builtin(s: &mut RunState, a: &Action, at: u64, timers: bool) -> bool {
        let Action::Dispatch {
            task,
            attempt,
            key,
            spec,
        } = a
        else {
            return false;
        };
        let run = spec.run.as_str();
        if !(matches!(run, "noop" | "fail") || timers && run == "sleep") {
            return false;
        }
        let inputs = spec.inputs.clone().unwrap();
        ap(
            s,
            &Event::TaskDispatched {
                task: task.clone(),
                attempt: *attempt,
                key: key.clone(),
                inputs: inputs.clone(),
                at,
                wake_at: (run == "sleep").then(|| at + millis(&inputs["duration"])),
            },
        );
        let (task, attempt) = (task.clone(), *attempt);
        match run {
            "noop" => ap(
                s,
                &Event::TaskSucceeded {
                    task,
                    attempt,
                    output: inputs["default"].clone(),
                    headers: Default::default(),
                    at,
                },
            ),
            "fail" => ap(
                s,
                &Event::TaskFailed {
                    task,
                    attempt,
                    error: inputs["default"].as_str().unwrap().into(),
                    status: None,
                    retryable: false,
                    at,
                },
            ),
            _ => {}
        }
        true
    }

    /// A timer step's duration: `"2000ms"` or 0.
    fn millis(d: &Value) -> u64 {
        match d {
            Value::String(d) => d.trim_end_matches("ms").parse().unwrap(),
            other => other.as_u64().unwrap(),
        }
    }

    /// Records the dispatch `decide` asks for (after any Choice steps on the
    /// way); returns the step id and its inputs.
    fn dispatch(s: &mut RunState) -> (String, Value) {
        let mut actions = work(s, 1);
        while actions.iter().any(|a| builtin(s, a, 1, false)) {
            actions = work(s, 1);
        }
        let [Action::Dispatch {
            task,
            attempt,
            key,
            spec,
        }] = actions.as_slice()
        else {
            panic!("expected one dispatch, got {actions:?}");
        };
        let inputs = spec.inputs.clone().unwrap();
        ap(
            s,
            &Event::TaskDispatched {
                task: task.clone(),
                attempt: *attempt,
                key: key.clone(),
                inputs: inputs.clone(),
                at: 1,
                wake_at: None,
            },
        );
        (task.clone(), inputs)
    }

    fn succeed(s: &mut RunState, task: &str, output: Value) {
        ap(
            s,
            &Event::TaskSucceeded {
                task: task.into(),
                attempt: 1,
                output,
                headers: Default::default(),
                at: 2,
            },
        );
    }

    fn failure(actions: Vec<Action>) -> RunError {
        match actions.as_slice() {
            [Action::Finish(Finish::Failed(e))] => e.clone(),
            other => panic!("expected the run to fail, got {other:?}"),
        }
    }

    fn success(actions: Vec<Action>) -> Value {
        match actions.as_slice() {
            [Action::Finish(Finish::Succeeded { output, .. })] => output.clone(),
            other => panic!("expected the run to succeed, got {other:?}"),
        }
    }

    /// What follows once the steps that end at once are recorded.
    fn next(s: &mut RunState) -> Vec<Action> {
        let mut actions = work(s, 3);
        while actions.iter().any(|a| builtin(s, a, 3, false)) {
            actions = work(s, 3);
        }
        actions
    }

    #[test]
    fn a_task_gets_its_input_path_and_the_result_lands_at_result_path() {
        let mut s = started(ORDER, json!({"order": {"id": 7}}));
        let (id, inputs) = dispatch(&mut s);
        assert_eq!(id, "000001-validate");
        assert_eq!(inputs["body"], json!({"id": 7}));
        assert_eq!(inputs["headers"]["X-Fission-Workflow-Run"], "r1");
        assert_eq!(inputs["headers"]["X-Fission-Workflow-Attempt"], "1");
        assert_eq!(s.tasks[&id].spec.run, "fission://default/validate-order");
        succeed(&mut s, &id, json!({"ok": true}));
        // Choice routes to charge with the merged document; the Choice is a
        // step of its own that names the state it chose.
        let (id, inputs) = dispatch(&mut s);
        assert_eq!(id, "000003-charge");
        let route = &s.tasks["000002-route"];
        assert_eq!(route.status, TaskStatus::Succeeded);
        assert_eq!(route.output, Some(json!({"next": "charge"})));
        assert_eq!(
            inputs["body"],
            json!({"order": {"id": 7}, "valid": {"ok": true}})
        );
        succeed(&mut s, &id, json!("charged"));
        assert_eq!(
            next(&mut s),
            vec![Action::Finish(Finish::Succeeded {
                output: json!("charged"),
                headers: Default::default()
            })]
        );
    }

    #[test]
    fn choice_default_leads_to_fail() {
        let mut s = started(ORDER, json!({"order": {}}));
        let (id, _) = dispatch(&mut s);
        succeed(&mut s, &id, json!({"ok": false}));
        let e = failure(next(&mut s));
        assert!(e.message.starts_with("Fission.Failed"), "{}", e.message);
    }

    fn fail(s: &mut RunState, task: &str, status: Option<u16>, error: &str) {
        ap(
            s,
            &Event::TaskFailed {
                task: task.into(),
                attempt: 1,
                error: error.into(),
                status,
                // As the executor says.
                retryable: status.is_none_or(|c| c >= 500 || c == 429),
                at: 2,
            },
        );
    }

    #[test]
    fn a_4xx_is_a_permanent_error_caught_with_the_error_merged() {
        let mut s = started(ORDER, json!({"order": {"id": 1}}));
        let (id, _) = dispatch(&mut s);
        fail(
            &mut s,
            &id,
            Some(422),
            "the function answered 422: bad order",
        );
        // Caught: reject is a Fail state, so the run fails there, not at validate.
        let e = failure(next(&mut s));
        assert!(e.message.starts_with("Fission.Failed"), "{}", e.message);
    }

    /// A path that cannot shape what the caller sent fails the run with 422
    /// (the caller's mistake); one that cannot shape a function's output is
    /// the workflow's failure, with no status.
    #[test]
    fn a_path_that_cannot_shape_the_callers_input_is_a_422() {
        const MERGE: &str = "startAt: a
states:
  a: {type: Task, function: {name: fa}, resultPath: $.a, next: b}
  b: {type: Task, function: {name: fb}, resultPath: $.b, end: true}
";
        let mut s = started(MERGE, json!("not an object"));
        let (id, _) = dispatch(&mut s);
        succeed(&mut s, &id, json!(1));
        let e = failure(next(&mut s));
        assert!(e.message.starts_with(INVALID_PATH), "{}", e.message);
        assert_eq!(e.status, Some(422), "{e:?}");

        const REPLACE: &str = "startAt: a
states:
  a: {type: Task, function: {name: fa}, next: b}
  b: {type: Task, function: {name: fb}, resultPath: $.b, end: true}
";
        let mut s = started(REPLACE, json!({"x": 1}));
        let (id, _) = dispatch(&mut s);
        succeed(&mut s, &id, json!("a string"));
        let (id, _) = dispatch(&mut s);
        succeed(&mut s, &id, json!(2));
        let e = failure(next(&mut s));
        assert!(e.message.starts_with(INVALID_PATH), "{}", e.message);
        assert_eq!(
            e.status, None,
            "the function's output, not the caller's input"
        );

        const MAP: &str = "startAt: m
states:
  m:
    type: Map
    itemsPath: $.items
    end: true
    branches:
      - startAt: x
        states:
          x: {type: Task, function: {name: fx}, end: true}
";
        // The Map fails without starting an item: with what status.
        let no_array = |s: &mut RunState| {
            assert!(settle(s).is_empty(), "no item starts");
            let e = failure(work(s, 6));
            assert!(
                e.message.contains("does not select an array"),
                "{}",
                e.message
            );
            e.status
        };
        let mut s = started(MAP, json!({"items": 3}));
        assert_eq!(no_array(&mut s), Some(422));
        // The items a step wrote are not the caller's.
        let made = MAP.replacen("startAt: m", "startAt: a", 1).replacen(
            "states:\n",
            "states:\n  a: {type: Task, function: {name: fa}, resultPath: $.items, next: m}\n",
            1,
        );
        let mut s = started(&made, json!({"items": [1]}));
        let (id, _) = dispatch(&mut s);
        succeed(&mut s, &id, json!(3));
        assert_eq!(no_array(&mut s), None);
    }

    /// Inside a Map, an item is the caller's when the Map was entered with
    /// the caller's document: a path that cannot write into it is a 422 as at
    /// the top, and the same misfit in items a step made is the workflow's.
    #[test]
    fn a_path_that_cannot_shape_a_callers_item_is_a_422() {
        const MAP: &str = "startAt: m
states:
  m:
    type: Map
    itemsPath: $.items
    end: true
    branches:
      - startAt: x
        states:
          x: {type: Task, function: {name: fx}, resultPath: $.r, end: true}
";
        let item_fails = |s: &mut RunState| {
            let calls = settle(s);
            assert_eq!(calls.len(), 1, "{calls:?}");
            succeed(s, &calls[0].0, json!(1));
            let e = failure(work(s, 6));
            assert!(e.message.contains(INVALID_PATH), "{}", e.message);
            e.status
        };
        let mut s = started(MAP, json!({"items": ["a string"]}));
        assert_eq!(item_fails(&mut s), Some(422));
        // Items a step wrote are the workflow's.
        let made = MAP.replacen("startAt: m", "startAt: a", 1).replacen(
            "states:\n",
            "states:\n  a: {type: Task, function: {name: fa}, resultPath: $.items, next: m}\n",
            1,
        );
        let mut s = started(&made, json!({"items": [{}]}));
        let (id, _) = dispatch(&mut s);
        succeed(&mut s, &id, json!(["a string"]));
        assert_eq!(item_fails(&mut s), None);
        // A catch's resultPath that cannot write into the caller's item.
        let caught = MAP.replace(
            "resultPath: $.r, end: true}",
            "end: true, catch: [{errorType: Fission.All, resultPath: $.e, next: y}]}\n          y: {type: Succeed}",
        );
        let mut s = started(&caught, json!({"items": [7]}));
        let calls = settle(&mut s);
        fail(&mut s, &calls[0].0, Some(400), "bad item");
        let e = failure(work(&s, 6));
        assert_eq!(e.status, Some(422), "{e:?}");
    }

    /// A function that does not exist is a permanent error (never retried,
    /// caught as one), not a function error.
    #[test]
    fn a_missing_function_is_a_permanent_error() {
        let doc = "startAt: a\nstates:\n  a: {type: Task, function: {name: validat}, end: true}\n";
        let mut s = started(doc, json!({}));
        let (id, _) = dispatch(&mut s);
        fail(&mut s, &id, None, "function \"validat\" does not exist");
        let e = failure(next(&mut s));
        assert!(e.message.starts_with(PERMANENT_ERROR), "{}", e.message);
    }

    #[test]
    fn uncaught_errors_are_typed_by_status_timeout_and_body() {
        for (status, error, want) in [
            (Some(503), "the function answered 503", FUNCTION_ERROR),
            (None, "function call timed out after 1s", TIMEOUT),
            (None, "the function's instance failed: gone", FUNCTION_ERROR),
            (
                Some(500),
                r#"the function answered 500: {"errorType": "Card.Declined", "cause": "no funds"}"#,
                "Card.Declined: no funds",
            ),
        ] {
            let mut s = started(ORDER, json!({"order": {}}));
            let (id, _) = dispatch(&mut s);
            fail(&mut s, &id, status, error);
            let e = failure(next(&mut s));
            assert!(e.message.starts_with(want), "{error}: {}", e.message);
            assert_eq!(e.task.as_deref(), Some("000001-validate"));
        }
    }

    #[test]
    fn only_function_errors_and_timeouts_are_retried() {
        // As Fission's engine: a type of the function's own goes to `catch`
        // at once, even on a 5xx and with retries left.
        let src = "startAt: a
states:
  a:
    type: Task
    function: {name: f}
    retry: {maxAttempts: 3}
    catch: [{errorType: Inventory.Unavailable, next: done, resultPath: $.err}]
    end: true
  done: {type: Succeed}
";
        let mut s = started(src, json!({}));
        let (id, _) = dispatch(&mut s);
        fail(
            &mut s,
            &id,
            Some(503),
            r#"the function answered 503: {"errorType": "Inventory.Unavailable", "cause": "later"}"#,
        );
        let output = success(next(&mut s));
        assert_eq!(output["err"]["errorType"], "Inventory.Unavailable");
        assert_eq!(output["err"]["cause"], "later");
        assert_eq!(s.tasks[&id].attempts, 1);
        // A cause that is not a string is kept as the function gave it.
        let mut s = started(src, json!({}));
        let (id, _) = dispatch(&mut s);
        fail(
            &mut s,
            &id,
            Some(500),
            r#"the function answered 500: {"errorType": "Inventory.Unavailable", "cause": {"code": 7}}"#,
        );
        let output = success(next(&mut s));
        assert_eq!(output["err"]["cause"], json!({"code": 7}));
        for (status, error) in [
            (Some(503), "the function answered 503"),
            (
                Some(500),
                r#"the function answered 500: {"errorType": "Fission.FunctionError"}"#,
            ),
            (None, "function call timed out after 1s"),
        ] {
            assert!(may_retry(true, true, status, error), "{error}");
        }
        let typed = r#"the function answered 503: {"errorType": "Inventory.Unavailable"}"#;
        assert!(!may_retry(true, true, Some(503), typed));
        // Fission Workflows' YAML knows no types: a 5xx is retried.
        assert!(may_retry(false, true, Some(503), typed));
    }

    #[test]
    fn catch_all_merges_the_error_at_its_result_path() {
        let src = "startAt: a
states:
  a:
    type: Task
    function: {name: f}
    catch: [{errorType: Fission.All, next: done, resultPath: $.err}]
    end: true
  done: {type: Succeed}
";
        let mut s = started(src, json!({"x": 1}));
        let (id, _) = dispatch(&mut s);
        fail(&mut s, &id, Some(500), "the function answered 500: boom");
        let output = success(next(&mut s));
        assert_eq!(output["x"], 1);
        assert_eq!(output["err"]["errorType"], FUNCTION_ERROR);
    }

    #[test]
    fn wait_is_a_durable_timer_that_passes_the_document_on() {
        let src = "startAt: w
states:
  w: {type: Wait, duration: 2s, next: done}
  done: {type: Succeed}
";
        let mut s = started(src, json!({"x": 1}));
        let actions = next(&mut s);
        let [Action::Dispatch { task, spec, .. }] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        assert_eq!(spec.run, "sleep");
        assert_eq!(spec.inputs.as_ref().unwrap()["duration"], "2000ms");
        ap(
            &mut s,
            &Event::TaskDispatched {
                task: task.clone(),
                attempt: 1,
                key: "k".into(),
                inputs: spec.inputs.clone().unwrap(),
                at: 0,
                wake_at: Some(2000),
            },
        );
        assert_eq!(work(&s, 10), vec![Action::StartTimer { at: 2000 }]);
        assert_eq!(
            work(&s, 2000),
            vec![Action::FireTimer { task: task.clone() }]
        );
        ap(
            &mut s,
            &Event::TimerFired {
                task: task.clone(),
                at: 2000,
            },
        );
        let output = success(next(&mut s));
        assert_eq!(output, json!({"x": 1}));
    }

    #[test]
    fn documents_are_recognised_and_named() {
        assert!(is_state_machine(ORDER));
        assert!(is_state_machine("{\"startAt\": \"a\", \"states\": {}}"));
        assert!(!is_state_machine("output: a\ntasks: {a: {run: noop}}\n"));
        assert_eq!(document_name(ORDER).as_deref(), Some("order"));
    }

    const RETRIED: &str = "startAt: a
timeout: 5s
defaultRetry: {maxAttempts: 3, backoffBase: 1s, backoffCap: 4s, jitter: false}
states:
  a: {type: Task, function: {name: f}, end: true}
";

    #[test]
    fn a_5xx_is_retried_after_its_backoff_with_the_attempt_in_the_headers_but_a_4xx_is_not() {
        let mut s = started(RETRIED, json!({"x": 1}));
        let (id, first) = dispatch(&mut s);
        fail(&mut s, &id, Some(503), "the function answered 503");
        let m = s.spec.state_machine.clone().unwrap();
        let actions = decide(&s, &m, 3);
        assert_eq!(
            actions,
            vec![
                Action::ScheduleRetry {
                    task: id.clone(),
                    attempt: 2,
                    due: 1003
                },
                Action::StartTimer { at: 5000 }
            ]
        );
        ap(
            &mut s,
            &Event::RetryScheduled {
                task: id.clone(),
                attempt: 2,
                due: 1003,
                at: 3,
            },
        );
        assert_eq!(
            decide(&s, &m, 500),
            vec![
                Action::StartTimer { at: 1003 },
                Action::StartTimer { at: 5000 }
            ]
        );
        let actions = decide(&s, &m, 1003);
        let Action::Dispatch {
            attempt, spec, key, ..
        } = &actions[0]
        else {
            panic!("{actions:?}");
        };
        assert_eq!(
            (*attempt, key.as_str()),
            (2, "r1/000001-a"),
            "the same key as the first"
        );
        let inputs = spec.inputs.clone().unwrap();
        assert_eq!(inputs["body"], first["body"]);
        assert_eq!(inputs["headers"]["X-Fission-Workflow-Attempt"], "2");
        ap(
            &mut s,
            &Event::TaskDispatched {
                task: id.clone(),
                attempt: 2,
                key: key.clone(),
                inputs,
                at: 1003,
                wake_at: None,
            },
        );
        // A 4xx is permanent, even when the executor would retry it (429).
        ap(
            &mut s,
            &Event::TaskFailed {
                task: id.clone(),
                attempt: 2,
                error: "the function answered 429".into(),
                status: Some(429),
                retryable: true,
                at: 1004,
            },
        );
        let e = failure(decide(&s, &m, 1004));
        assert!(e.message.starts_with(PERMANENT_ERROR), "{}", e.message);
    }

    #[test]
    fn a_run_past_its_timeout_fails_with_fission_timeout() {
        let mut s = started(RETRIED, json!({}));
        let _ = dispatch(&mut s);
        let m = s.spec.state_machine.clone().unwrap();
        assert_eq!(decide(&s, &m, 10), vec![Action::StartTimer { at: 5000 }]);
        let e = failure(decide(&s, &m, 5000));
        assert!(e.message.starts_with(TIMEOUT), "{}", e.message);
        // Without a timeout of its own, a run has RFC-0022's 24 hours.
        let s = started("startAt: a\nstates:\n  a: {type: Succeed}\n", json!({}));
        assert_eq!(s.deadline, Some(24 * 3600 * 1000));
    }

    #[test]
    fn every_code_and_error_type_is_documented() {
        let doc = include_str!("../../../docs/error-codes.md");
        assert!(
            doc.contains(&format!("`{INVALID_WORKFLOW}`")),
            "{INVALID_WORKFLOW}"
        );
        for t in [
            PERMANENT_ERROR,
            FUNCTION_ERROR,
            TIMEOUT,
            STATES_FAIL,
            BRANCH_FAILED,
            NO_CHOICE_MATCHED,
            super::super::paths::INVALID_PATH,
        ] {
            assert!(doc.contains(&format!("`{t}`")), "{t}");
        }
    }

    /// Performs what `decide` asks at 10 until only function calls are left:
    /// records their dispatch (at 5), fires timers due; returns the calls (id,
    /// body).
    fn settle(s: &mut RunState) -> Vec<(String, Value)> {
        let mut calls = Vec::new();
        loop {
            let mut progressed = false;
            for a in work(s, 10) {
                if builtin(s, &a, 5, true) {
                    progressed = true;
                    continue;
                }
                match a {
                    Action::Dispatch {
                        task,
                        attempt,
                        key,
                        spec,
                    } => {
                        progressed = true;
                        let inputs = spec.inputs.clone().unwrap();
                        ap(
                            s,
                            &Event::TaskDispatched {
                                task: task.clone(),
                                attempt,
                                key,
                                inputs: inputs.clone(),
                                at: 5,
                                wake_at: None,
                            },
                        );
                        calls.push((task, inputs["body"].clone()));
                    }
                    Action::FireTimer { task } => {
                        progressed = true;
                        ap(s, &Event::TimerFired { task, at: 5 });
                    }
                    Action::CancelTask { task, reason } => {
                        progressed = true;
                        ap(
                            s,
                            &Event::TaskCancelled {
                                task,
                                reason,
                                at: 5,
                            },
                        );
                    }
                    _ => {}
                }
            }
            if !progressed {
                return calls;
            }
        }
    }

    const PARALLEL: &str = "startAt: p
states:
  p:
    type: Parallel
    resultPath: $.both
    next: done
    branches:
      - startAt: a
        states:
          a: {type: Task, function: {name: fa}, end: true}
      - startAt: b
        states:
          b: {type: Task, function: {name: fb}, next: c}
          c: {type: Succeed}
  done: {type: Succeed}
";

    #[test]
    fn parallel_branches_run_at_once_and_join_in_order() {
        let mut s = started(PARALLEL, json!({"x": 1}));
        let calls = settle(&mut s);
        assert_eq!(
            calls,
            vec![
                ("000001-p/0000/000001-a".to_string(), json!({"x": 1})),
                ("000001-p/0001/000001-b".to_string(), json!({"x": 1})),
            ]
        );
        assert_eq!(
            s.tasks["000001-p/0001/000001-b"].spec.run,
            "fission://default/fb"
        );
        // The second finishes first; the join keeps the branches' order.
        succeed(&mut s, "000001-p/0001/000001-b", json!("B"));
        assert!(settle(&mut s).is_empty());
        assert!(next(&mut s).is_empty(), "{:?}", next(&mut s));
        assert_eq!(shown(&s, "000001-p").status, TaskStatus::Running);
        ap(
            &mut s,
            &Event::TaskSucceeded {
                task: "000001-p/0000/000001-a".into(),
                attempt: 1,
                output: json!("A"),
                headers: Default::default(),
                at: 42,
            },
        );
        assert_eq!(success(next(&mut s)), json!({"x": 1, "both": ["A", "B"]}));
        let p = shown(&s, "000001-p");
        assert_eq!(p.status, TaskStatus::Succeeded);
        assert_eq!(p.output, Some(json!(["A", "B"])));
        assert_eq!(p.ended_at, Some(42), "when its last branch ended");
    }

    /// How the history shows the Parallel or Map step `id`.
    fn shown(s: &RunState, id: &str) -> FanOutShown {
        let m = s.spec.state_machine.as_deref().unwrap();
        fan_out_shown(s, m, &s.tasks[id]).expect("a Parallel or Map step")
    }

    #[test]
    fn a_failed_branch_fails_the_parallel_with_branch_failed() {
        let mut s = started(PARALLEL, json!({}));
        settle(&mut s);
        fail(
            &mut s,
            "000001-p/0001/000001-b",
            Some(500),
            "the function answered 500",
        );
        let actions = work(&s, 5);
        let [Action::CancelTask { task, .. }, Action::Finish(Finish::Failed(e))] =
            actions.as_slice()
        else {
            panic!("{actions:?}");
        };
        // The other branch's call in flight is stopped.
        assert_eq!(task, "000001-p/0000/000001-a");
        assert!(e.message.starts_with(BRANCH_FAILED), "{}", e.message);
        assert!(e.message.contains("branch 1"), "{}", e.message);
        assert_eq!(e.task.as_deref(), Some("000001-p/0001/000001-b"));
        // The history shows the Parallel step failed, not its record's start.
        let p = shown(&s, "000001-p");
        assert_eq!(p.status, TaskStatus::Failed);
        assert!(p.error.unwrap().contains("branch 1"));
        let m = s.spec.state_machine.as_deref().unwrap();
        let branch_task = &s.tasks["000001-p/0001/000001-b"];
        assert_eq!(
            fan_out_shown(&s, m, branch_task),
            None,
            "a Task shows itself"
        );
    }

    const FAIL_FAST: &str = "startAt: p
states:
  p:
    type: Parallel
    next: done
    catch: [{errorType: Fission.BranchFailed, resultPath: $.failed, next: recover}]
    branches:
      - startAt: slow
        states:
          slow: {type: Task, function: {name: slow}, end: true}
      - startAt: bad
        states:
          bad: {type: Task, function: {name: bad}, end: true}
      - startAt: nap
        states:
          nap: {type: Wait, duration: 60s, next: after}
          after: {type: Task, function: {name: after}, end: true}
  recover: {type: Task, function: {name: recover}, end: true}
  done: {type: Succeed}
";

    #[test]
    fn a_failed_branch_stops_its_siblings_and_their_late_results_change_nothing() {
        let mut s = started(FAIL_FAST, json!({"x": 1}));
        let calls: Vec<String> = settle(&mut s).into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            calls,
            ["000001-p/0000/000001-slow", "000001-p/0001/000001-bad"]
        );
        let nap = "000001-p/0002/000001-nap";
        assert_eq!(s.tasks[nap].wake_at, Some(60_005));

        fail(
            &mut s,
            "000001-p/0001/000001-bad",
            Some(500),
            "the function answered 500",
        );
        let actions = work(&s, 6);
        let cancelled: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::CancelTask { task, .. } => Some(task.as_str()),
                _ => None,
            })
            .collect();
        // The call in flight and the durable timer, before the catch leads on.
        assert_eq!(cancelled, ["000001-p/0000/000001-slow", nap]);
        assert!(
            matches!(&actions[2], Action::Dispatch { task, .. } if task == "000002-recover"),
            "{actions:?}"
        );
        let calls = settle(&mut s);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].1["failed"]["errorType"], BRANCH_FAILED);
        for t in ["000001-p/0000/000001-slow", nap] {
            assert_eq!(s.tasks[t].status, TaskStatus::Cancelled, "{t}");
            assert_eq!(s.tasks[t].ended_at, Some(5), "{t}");
        }

        // The slow branch answers late: nothing changes, no timer fires, the
        // Wait's next state never starts.
        let before = s.clone();
        succeed(&mut s, "000001-p/0000/000001-slow", json!("late"));
        assert_eq!(s, before);
        assert!(work(&s, 70_000).is_empty(), "{:?}", work(&s, 70_000));

        // A restarted server folds the same run: it calls nothing again but
        // the step in flight, and cancels nothing twice.
        let again = refold();
        assert_eq!(again, s);
        let in_flight: Vec<&str> = again.in_flight().iter().map(|t| t.id.as_str()).collect();
        assert_eq!(in_flight, ["000002-recover"]);
        assert!(work(&again, 70_000).is_empty());

        succeed(&mut s, "000002-recover", json!("recovered"));
        assert_eq!(success(next(&mut s)), json!("recovered"));
    }

    #[test]
    fn a_failed_map_item_stops_the_items_in_flight_and_starts_no_other() {
        let src = "startAt: m
states:
  m:
    type: Map
    itemsPath: $
    maxConcurrency: 2
    end: true
    branches:
      - startAt: f
        states:
          f: {type: Task, function: {name: f}, end: true}
";
        let mut s = started(src, json!([1, 2, 3, 4]));
        assert_eq!(settle(&mut s).len(), 2);
        fail(&mut s, "000001-m/0001/000001-f", Some(503), "down");
        let actions = work(&s, 6);
        assert!(
            matches!(
                actions.as_slice(),
                [Action::CancelTask { task, .. }, Action::Finish(Finish::Failed(_))]
                    if task == "000001-m/0000/000001-f"
            ),
            "{actions:?}"
        );
    }

    #[test]
    fn choice_succeed_and_fail_are_steps_of_the_run() {
        // Choice then Fail: both recorded, the run fails at the Fail step.
        let mut s = started(ORDER, json!({"order": {}}));
        let (id, _) = dispatch(&mut s);
        succeed(&mut s, &id, json!({"ok": false}));
        let e = failure(next(&mut s));
        assert_eq!(e.task.as_deref(), Some("000003-reject"));
        assert_eq!(s.tasks["000002-route"].status, TaskStatus::Succeeded);
        assert_eq!(
            s.tasks["000002-route"].output,
            Some(json!({"next": "reject"}))
        );
        assert_eq!(s.tasks["000003-reject"].status, TaskStatus::Failed);
        assert_eq!(s.tasks["000003-reject"].spec.run, "fail");

        // Choice to Choice to Succeed: each a step; the output is Succeed's.
        let src = "startAt: first
states:
  first:
    type: Choice
    choices: [{variable: $.n, numericGreaterThan: 1, next: second}]
    default: none
  second:
    type: Choice
    choices: [{variable: $.n, numericGreaterThan: 2, next: big}]
    default: none
  big: {type: Succeed}
  none: {type: Fail}
";
        let mut s = started(src, json!({"n": 3}));
        assert_eq!(success(next(&mut s)), json!({"n": 3}));
        let steps: Vec<(&str, TaskStatus)> = s
            .tasks
            .values()
            .map(|t| (t.id.as_str(), t.status))
            .collect();
        assert_eq!(
            steps,
            [
                ("000001-first", TaskStatus::Succeeded),
                ("000002-second", TaskStatus::Succeeded),
                ("000003-big", TaskStatus::Succeeded),
            ]
        );

        // No rule matched and no default: a failed Choice step.
        let src = "startAt: c
states:
  c:
    type: Choice
    choices: [{variable: $.n, numericEquals: 1, next: done}]
  done: {type: Succeed}
";
        let mut s = started(src, json!({"n": 2}));
        let e = failure(next(&mut s));
        assert!(e.message.starts_with(NO_CHOICE_MATCHED), "{}", e.message);
        assert_eq!(e.task.as_deref(), Some("000001-c"));
        assert_eq!(s.tasks["000001-c"].status, TaskStatus::Failed);
    }

    #[test]
    fn map_runs_each_item_at_most_max_concurrency_at_once_and_joins_in_order() {
        let src = "startAt: m
states:
  m:
    type: Map
    itemsPath: $.items
    maxConcurrency: 2
    end: true
    branches:
      - startAt: double
        states:
          double: {type: Task, function: {name: double}, end: true}
";
        let mut s = started(src, json!({"items": [1, 2, 3]}));
        let calls = settle(&mut s);
        assert_eq!(
            calls,
            vec![
                ("000001-m/0000/000001-double".to_string(), json!(1)),
                ("000001-m/0001/000001-double".to_string(), json!(2)),
            ]
        );
        succeed(&mut s, "000001-m/0001/000001-double", json!(4));
        assert_eq!(
            settle(&mut s),
            vec![("000001-m/0002/000001-double".to_string(), json!(3))]
        );
        succeed(&mut s, "000001-m/0002/000001-double", json!(6));
        succeed(&mut s, "000001-m/0000/000001-double", json!(2));
        assert_eq!(success(next(&mut s)), json!([2, 4, 6]));

        // No items: an empty array at once; no array: Fission.InvalidPath.
        let s = started(src, json!({"items": []}));
        let mut s2 = s.clone();
        assert!(settle(&mut s2).is_empty());
        assert_eq!(success(next(&mut s2)), json!([]));
        let mut s = started(src, json!({"items": 7}));
        settle(&mut s);
        let e = failure(next(&mut s));
        assert!(e.message.starts_with(INVALID_PATH), "{}", e.message);
    }

    /// `s.fan_outs` as it would be computed from scratch.
    fn fan_outs_from_scratch(s: &RunState) -> BTreeMap<String, FanOut> {
        let mut out: BTreeMap<String, FanOut> = BTreeMap::new();
        for id in s.tasks.keys() {
            let parts: Vec<&str> = id.split('/').collect();
            for k in (1..parts.len()).step_by(2) {
                let fan = parts[..k].join("/");
                let i: usize = parts[k].parse().unwrap();
                let prefix = format!("{fan}/{}/", parts[k]);
                let ended = branch_ended(s, &fan, i, &prefix).unwrap();
                let book = out.entry(fan).or_default();
                book.started = book.started.max(i + 1);
                if !ended {
                    book.open.insert(i);
                }
            }
        }
        out
    }

    #[test]
    fn what_decide_keeps_of_map_items_follows_every_event() {
        let src = "startAt: m
states:
  m:
    type: Map
    itemsPath: $.items
    maxConcurrency: 3
    resultPath: $.out
    next: done
    branches:
      - startAt: f
        states:
          f: {type: Task, function: {name: f}, next: w}
          w: {type: Wait, duration: 1ms, next: c}
          c:
            type: Choice
            choices: [{variable: $.n, numericGreaterThan: 2, next: g}]
            default: fine
          g: {type: Task, function: {name: g}, end: true}
          fine: {type: Succeed}
  done: {type: Succeed}
";
        let items: Vec<Value> = (0..7).map(|n| json!({ "n": n })).collect();
        let mut s = started(src, json!({ "items": items }));
        let mut waiting = settle(&mut s);
        let mut finished = 0;
        // Finish the calls in a scrambled order, checking after each event.
        while !waiting.is_empty() {
            let (task, body) = waiting.remove((finished * 5) % waiting.len());
            finished += 1;
            succeed(&mut s, &task, json!({"from": task, "n": body["n"]}));
            assert_eq!(s.fan_outs, fan_outs_from_scratch(&s), "after {task}");
            waiting.extend(settle(&mut s));
            assert_eq!(s.fan_outs, fan_outs_from_scratch(&s), "after {task}");
            assert_eq!(refold(), s);
            let book = &s.fan_outs["000001-m"];
            assert!(book.open.len() <= 3, "{book:?}");
        }
        // 7 items, a call of f each, and of g for items 3 to 6.
        assert_eq!(finished, 11);
        assert_eq!(s.fan_outs["000001-m"].started, 7);
        assert!(s.fan_outs["000001-m"].open.is_empty());
        let output = success(next(&mut s));
        let out = output["out"].as_array().unwrap();
        assert_eq!(out.len(), 7);
        for (n, item) in out.iter().enumerate() {
            let (last, step) = if n > 2 { ("g", 4) } else { ("f", 1) };
            let from = format!("000001-m/{n:04}/{step:06}-{last}");
            assert_eq!(item, &json!({"from": from, "n": n}), "{output}");
        }
    }

    #[test]
    fn map_runs_ten_at_once_by_default() {
        let src = "startAt: m
states:
  m:
    type: Map
    itemsPath: $
    end: true
    branches:
      - startAt: f
        states:
          f: {type: Task, function: {name: f}, end: true}
";
        let mut s = started(src, json!((0..25).collect::<Vec<_>>()));
        assert_eq!(settle(&mut s).len(), 10);
    }
}
