//! The run state machine, pure: `apply` folds a run's events into its state and
//! `decide` says what should happen next at a given time. No I/O, no clock: the
//! driver persists events, performs the actions and feeds outcomes back as events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::retry::{sample_from, RetryPolicy};
use crate::spec::{parse_duration, TaskSpec, WorkflowSpec};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;
pub type Headers = BTreeMap<String, String>;

/// A task's recorded result, kept by retry-from-failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub output: Value,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub inputs: Value,
}

/// One durable fact about a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    RunStarted {
        run_id: String,
        workflow: String,
        version: u32,
        spec: WorkflowSpec,
        input: Value,
        at: Millis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<String>,
        /// Results of tasks that succeeded in the run this one retries.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        preserved: BTreeMap<String, TaskResult>,
    },
    TaskDispatched {
        task: String,
        attempt: u32,
        key: String,
        inputs: Value,
        at: Millis,
        /// For `sleep`: when the timer fires.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wake_at: Option<Millis>,
    },
    TaskSucceeded {
        task: String,
        attempt: u32,
        output: Value,
        #[serde(default)]
        headers: Headers,
        at: Millis,
    },
    TaskFailed {
        task: String,
        attempt: u32,
        error: String,
        #[serde(default)]
        status: Option<u16>,
        retryable: bool,
        at: Millis,
    },
    RetryScheduled {
        task: String,
        attempt: u32,
        due: Millis,
        at: Millis,
    },
    /// A task's output was a task or workflow spec (or it runs a stored
    /// workflow): its tasks join the run in the parent's scope.
    TasksAdded {
        parent: String,
        tasks: BTreeMap<String, TaskSpec>,
        output: String,
        #[serde(default)]
        scope_inputs: Option<Value>,
        at: Millis,
    },
    TimerFired {
        task: String,
        at: Millis,
    },
    /// A `callback` task's attempt waits for an outside POST to its one-time
    /// token (recorded with its dispatch), until `deadline` if it has a timeout.
    CallbackIssued {
        task: String,
        attempt: u32,
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<Millis>,
        at: Millis,
    },
    /// The `notify` function of a `callback` task took its URL (2xx).
    CallbackNotified {
        task: String,
        attempt: u32,
        at: Millis,
    },
    /// The outside completed a waiting `callback` task: with its output, or
    /// with an error (then the task fails, not retried).
    CallbackCompleted {
        task: String,
        attempt: u32,
        #[serde(default)]
        output: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        at: Millis,
    },
    /// A task stopped before it finished because its run no longer needs it
    /// (a sibling branch of a Parallel or Map failed): its attempt in flight is
    /// aborted, its timer dropped, and a late result changes nothing.
    TaskCancelled {
        task: String,
        reason: String,
        at: Millis,
    },
    RunSucceeded {
        output: Value,
        #[serde(default)]
        headers: Headers,
        at: Millis,
    },
    RunFailed {
        task: Option<String>,
        error: String,
        status: Option<u16>,
        at: Millis,
    },
    RunCancelled {
        reason: String,
        at: Millis,
    },
}

impl Event {
    pub fn at(&self) -> Millis {
        match self {
            Event::RunStarted { at, .. }
            | Event::TaskDispatched { at, .. }
            | Event::TaskSucceeded { at, .. }
            | Event::TaskFailed { at, .. }
            | Event::RetryScheduled { at, .. }
            | Event::TasksAdded { at, .. }
            | Event::TimerFired { at, .. }
            | Event::CallbackIssued { at, .. }
            | Event::CallbackNotified { at, .. }
            | Event::CallbackCompleted { at, .. }
            | Event::TaskCancelled { at, .. }
            | Event::RunSucceeded { at, .. }
            | Event::RunFailed { at, .. }
            | Event::RunCancelled { at, .. } => *at,
        }
    }

    /// The task the event is about, if it is about one.
    pub fn task(&self) -> Option<&str> {
        match self {
            Event::TaskDispatched { task, .. }
            | Event::TaskSucceeded { task, .. }
            | Event::TaskFailed { task, .. }
            | Event::RetryScheduled { task, .. }
            | Event::TimerFired { task, .. }
            | Event::CallbackIssued { task, .. }
            | Event::CallbackNotified { task, .. }
            | Event::CallbackCompleted { task, .. }
            | Event::TaskCancelled { task, .. } => Some(task),
            Event::TasksAdded { parent, .. } => Some(parent),
            Event::RunStarted { .. }
            | Event::RunSucceeded { .. }
            | Event::RunFailed { .. }
            | Event::RunCancelled { .. } => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::RunSucceeded { .. } | Event::RunFailed { .. } | Event::RunCancelled { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    #[default]
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    #[default]
    Pending,
    Running,
    /// Failed, another attempt will follow.
    Retrying,
    /// Waiting for the dynamic sub-workflow it produced.
    Waiting,
    Succeeded,
    Failed,
    /// Its run was cancelled before it finished (it was pending, running or waiting).
    Cancelled,
}

impl TaskStatus {
    /// Whether nothing more happens to the task (a retry aside).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub message: String,
    /// The failing function's status, when it answered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TaskState {
    pub id: String,
    /// Id inside its scope (equal to `id` for the workflow's own tasks).
    pub local: String,
    /// The task whose dynamic sub-workflow this task belongs to.
    pub scope: Option<String>,
    pub spec: TaskSpec,
    /// Full ids of the dependencies.
    pub requires: Vec<String>,
    pub status: TaskStatus,
    pub attempts: u32,
    pub key: Option<String>,
    pub inputs: Option<Value>,
    pub output: Option<Value>,
    pub headers: Headers,
    pub error: Option<String>,
    pub http_status: Option<u16>,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    pub retry_at: Option<Millis>,
    pub wake_at: Option<Millis>,
    /// For a `Waiting` task: the full id of its sub-workflow's output task.
    pub child_output: Option<String>,
    /// `$.Invocation.Inputs` for the task's sub-workflow (a workflow run by name).
    pub scope_inputs: Option<Value>,
    /// For a `callback` task: its current attempt's one-time token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// When a waiting `callback` attempt fails for want of a completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_deadline: Option<Millis>,
    /// The outside completed the current callback token (a second POST is refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub callback_completed: bool,
    /// The `notify` function took the current callback URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub callback_notified: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RunState {
    pub run_id: String,
    pub workflow: String,
    pub version: u32,
    pub spec: WorkflowSpec,
    pub input: Value,
    pub status: RunStatus,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub deadline: Option<Millis>,
    pub output: Option<Value>,
    pub output_headers: Headers,
    pub error: Option<RunError>,
    pub tasks: BTreeMap<String, TaskState>,
    pub retry_of: Option<String>,
    /// A state machine run's Parallel and Map steps: how far their branches
    /// got. Derived from `tasks` by `apply` (so never stored) to keep each
    /// event's work in proportion to what it changed.
    #[serde(skip)]
    pub fan_outs: BTreeMap<String, crate::sfn::run::FanOut>,
}

/// How a run should end.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Succeeded { output: Value, headers: Headers },
    Failed(RunError),
}

/// What should happen next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run an attempt of a task (its raw inputs are in `spec`).
    Dispatch {
        task: String,
        attempt: u32,
        key: String,
        spec: TaskSpec,
    },
    /// Record when the next attempt of a failed task is due.
    ScheduleRetry {
        task: String,
        attempt: u32,
        due: Millis,
    },
    /// Wake the run up at this time.
    StartTimer {
        at: Millis,
    },
    /// A `sleep` task's time has come: record TimerFired.
    FireTimer {
        task: String,
    },
    /// A `callback` attempt's timeout passed without a completion: fail it.
    ExpireCallback {
        task: String,
        attempt: u32,
    },
    /// Stop a task that has not finished: record TaskCancelled, abort its
    /// attempt in flight.
    CancelTask {
        task: String,
        reason: String,
    },
    Finish(Finish),
}

pub fn attempt_key(run_id: &str, task: &str, attempt: u32) -> String {
    format!("{run_id}/{task}/{attempt}")
}

/// The full id of a task `local` inside the scope of `parent`.
pub fn child_id(parent: &str, local: &str) -> String {
    format!("{parent}/{local}")
}

impl RunState {
    /// Folds events into a new state.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> RunState {
        let mut s = RunState::default();
        for e in events {
            apply(&mut s, e);
        }
        s
    }

    pub fn is_finished(&self) -> bool {
        self.status != RunStatus::Running
    }

    /// Waiting `callback` tasks whose `notify` function has not taken their URL
    /// yet (to notify again on recovery): (task, attempt, notify, token).
    pub fn unnotified_callbacks(&self) -> Vec<(&TaskState, &str, &str)> {
        self.tasks
            .values()
            .filter(|t| t.status == TaskStatus::Running && !t.callback_notified)
            .filter_map(|t| {
                let token = t.callback.as_deref()?;
                let notify = t.inputs.as_ref()?.get("notify")?.as_str()?;
                Some((t, notify, token))
            })
            .collect()
    }

    /// Tasks currently dispatched and not finished (to re-dispatch on recovery).
    pub fn in_flight(&self) -> Vec<&TaskState> {
        self.tasks
            .values()
            .filter(|t| {
                t.status == TaskStatus::Running && t.wake_at.is_none() && t.callback.is_none()
            })
            .collect()
    }

    /// The expression scope `$` for a task, and the task's id inside its scope.
    pub fn scope_for(&self, task_id: &str) -> Value {
        self.scope_with(task_id, &|_| true, true)
    }

    /// Like `scope_for`, with only the tasks (by local id) that `include` wants
    /// in `$.Tasks`: building every task into every scope made a run's cost grow
    /// with the square of its tasks.
    /// `invocation` says whether `$.Invocation.Inputs` is needed at all (a large
    /// request body is otherwise copied into every evaluation).
    pub fn scope_with(
        &self,
        task_id: &str,
        include: &dyn Fn(&str) -> bool,
        invocation: bool,
    ) -> Value {
        let mut tasks = serde_json::Map::new();
        let mut scope = self.tasks.get(task_id).and_then(|t| t.scope.clone());
        let mut inputs: Option<Value> = None;
        loop {
            for t in self.tasks.values().filter(|t| t.scope == scope) {
                if !tasks.contains_key(&t.local) && include(&t.local) {
                    tasks.insert(
                        t.local.clone(),
                        json!({
                            "Id": t.id,
                            "Status": t.status,
                            "Inputs": t.inputs.clone().unwrap_or(Value::Null),
                            "Output": t.output.clone().unwrap_or(Value::Null),
                            "OutputHeaders": t.headers,
                            "Error": t.error,
                        }),
                    );
                }
            }
            match scope {
                None => break,
                Some(p) => {
                    let parent = self.tasks.get(&p);
                    if inputs.is_none() {
                        inputs = parent.and_then(|t| t.scope_inputs.clone());
                    }
                    scope = parent.and_then(|t| t.scope.clone());
                }
            }
        }
        json!({
            "Workflow": {"Id": self.workflow, "Name": self.workflow, "Version": self.version},
            "Invocation": {
                "Id": self.run_id,
                "Inputs": if invocation {
                    inputs.unwrap_or_else(|| self.input.clone())
                } else {
                    Value::Null
                },
            },
            "Tasks": tasks,
        })
    }
}

/// What a terminal event says about a run's end (the state and the stored
/// summary both take it from here).
pub struct RunEnd {
    pub status: RunStatus,
    pub at: Millis,
    /// The output and its headers, when the run succeeded.
    pub output: Option<(Value, Headers)>,
    pub error: Option<RunError>,
}

impl RunEnd {
    pub fn of(event: &Event) -> Option<RunEnd> {
        Some(match event {
            Event::RunSucceeded {
                output,
                headers,
                at,
            } => RunEnd {
                status: RunStatus::Succeeded,
                at: *at,
                output: Some((output.clone(), headers.clone())),
                error: None,
            },
            Event::RunFailed {
                task,
                error,
                status,
                at,
            } => RunEnd {
                status: RunStatus::Failed,
                at: *at,
                output: None,
                error: Some(RunError {
                    task: task.clone(),
                    message: error.clone(),
                    status: *status,
                }),
            },
            Event::RunCancelled { reason, at } => RunEnd {
                status: RunStatus::Cancelled,
                at: *at,
                output: None,
                error: Some(RunError {
                    task: None,
                    message: reason.clone(),
                    status: None,
                }),
            },
            _ => return None,
        })
    }

    /// Records the end into a run's fields (of its state, or of its summary).
    pub fn write(
        self,
        status: &mut RunStatus,
        finished_at: &mut Option<Millis>,
        output: &mut Option<Value>,
        output_headers: &mut Headers,
        error: &mut Option<RunError>,
    ) {
        *status = self.status;
        *finished_at = Some(self.at);
        if let Some((o, h)) = self.output {
            *output = Some(o);
            *output_headers = h;
        }
        if self.error.is_some() {
            *error = self.error;
        }
    }
}

/// Applies one event. The only way a run's state changes.
pub fn apply(s: &mut RunState, event: &Event) {
    if s.is_finished() && !matches!(event, Event::RunStarted { .. }) {
        return;
    }
    apply_event(s, event);
    if let Some(task) = event.task() {
        if s.spec.state_machine.is_some() && !s.is_finished() {
            crate::sfn::run::note_change(s, task);
        }
    }
}

fn apply_event(s: &mut RunState, event: &Event) {
    match event {
        Event::RunStarted {
            run_id,
            workflow,
            version,
            spec,
            input,
            at,
            retry_of,
            preserved,
        } => {
            *s =
                RunState {
                    run_id: run_id.clone(),
                    workflow: workflow.clone(),
                    version: *version,
                    spec: spec.clone(),
                    input: input.clone(),
                    started_at: *at,
                    deadline: spec.timeout.as_deref().and_then(parse_duration).map(|d| {
                        at.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    }),
                    retry_of: retry_of.clone(),
                    ..RunState::default()
                };
            for (id, t) in &spec.tasks {
                let mut ts = TaskState {
                    id: id.clone(),
                    local: id.clone(),
                    spec: t.clone(),
                    requires: t.requires.clone(),
                    ..TaskState::default()
                };
                if let Some(r) = preserved.get(id) {
                    ts.status = TaskStatus::Succeeded;
                    ts.output = Some(r.output.clone());
                    ts.headers = r.headers.clone();
                    ts.inputs = Some(r.inputs.clone());
                }
                s.tasks.insert(id.clone(), ts);
            }
        }
        Event::TaskDispatched {
            task,
            attempt,
            key,
            inputs,
            at,
            wake_at,
        } => {
            if !s.tasks.contains_key(task) {
                if let Some(step) = crate::sfn::run::new_step(s, task) {
                    s.tasks.insert(task.clone(), step);
                }
            }
            if let Some(t) = s.tasks.get_mut(task) {
                t.status = TaskStatus::Running;
                t.attempts = *attempt;
                t.key = Some(key.clone());
                t.inputs = Some(inputs.clone());
                t.started_at.get_or_insert(*at);
                t.retry_at = None;
                t.wake_at = *wake_at;
                t.callback = None;
                t.callback_deadline = None;
                t.callback_completed = false;
                t.callback_notified = false;
            }
        }
        Event::TaskSucceeded {
            task,
            attempt,
            output,
            headers,
            at,
        } => {
            if let Some(t) = s.tasks.get_mut(task) {
                if t.status == TaskStatus::Running && t.attempts == *attempt {
                    t.status = TaskStatus::Succeeded;
                    t.output = Some(output.clone());
                    t.headers = headers.clone();
                    t.error = None;
                    t.http_status = None;
                    t.ended_at = Some(*at);
                    succeed_parents(s, task, *at);
                }
            }
        }
        Event::TaskFailed {
            task,
            attempt,
            error,
            status,
            retryable,
            at,
        } => {
            let retryable =
                crate::sfn::run::may_retry(s.spec.state_machine.is_some(), *retryable, *status);
            if let Some(t) = s.tasks.get_mut(task) {
                if t.status == TaskStatus::Running && t.attempts == *attempt {
                    t.error = Some(error.clone());
                    t.http_status = *status;
                    let max = RetryPolicy::from_spec(t.spec.retry.as_ref())
                        .map(|p| p.max_attempts)
                        .unwrap_or(1);
                    if retryable && *attempt < max {
                        t.status = TaskStatus::Retrying;
                        t.retry_at = None;
                    } else {
                        t.status = TaskStatus::Failed;
                        t.ended_at = Some(*at);
                        fail_parents(s, task, *at);
                    }
                }
            }
        }
        Event::RetryScheduled { task, due, .. } => {
            if let Some(t) = s.tasks.get_mut(task) {
                if t.status == TaskStatus::Retrying {
                    t.retry_at = Some(*due);
                }
            }
        }
        Event::TasksAdded {
            parent,
            tasks,
            output,
            scope_inputs,
            ..
        } => {
            let Some(p) = s.tasks.get_mut(parent) else {
                return;
            };
            if p.status != TaskStatus::Running {
                return;
            }
            p.status = TaskStatus::Waiting;
            p.child_output = Some(child_id(parent, output));
            p.scope_inputs = scope_inputs.clone();
            p.wake_at = None;
            for (local, spec) in tasks {
                let id = child_id(parent, local);
                s.tasks.insert(
                    id.clone(),
                    TaskState {
                        id,
                        local: local.clone(),
                        scope: Some(parent.clone()),
                        spec: spec.clone(),
                        requires: spec.requires.iter().map(|r| child_id(parent, r)).collect(),
                        ..TaskState::default()
                    },
                );
            }
        }
        Event::TimerFired { task, at } => {
            if let Some(t) = s.tasks.get_mut(task) {
                if t.status == TaskStatus::Running && t.wake_at.is_some() {
                    t.status = TaskStatus::Succeeded;
                    t.output = Some(Value::Null);
                    t.ended_at = Some(*at);
                    succeed_parents(s, task, *at);
                }
            }
        }
        Event::CallbackIssued {
            task,
            attempt,
            token,
            deadline,
            ..
        } => {
            if let Some(t) = s.tasks.get_mut(task) {
                if t.status == TaskStatus::Running && t.attempts == *attempt {
                    t.callback = Some(token.clone());
                    t.callback_deadline = *deadline;
                }
            }
        }
        Event::CallbackNotified { task, attempt, .. } => {
            if let Some(t) = s.tasks.get_mut(task) {
                if t.attempts == *attempt && t.callback.is_some() {
                    t.callback_notified = true;
                }
            }
        }
        Event::CallbackCompleted {
            task,
            attempt,
            output,
            error,
            at,
        } => {
            let Some(t) = s.tasks.get_mut(task) else {
                return;
            };
            if t.status != TaskStatus::Running || t.attempts != *attempt || t.callback.is_none() {
                return;
            }
            t.callback_completed = true;
            t.ended_at = Some(*at);
            match error {
                None => {
                    t.status = TaskStatus::Succeeded;
                    t.output = Some(output.clone());
                    t.error = None;
                    succeed_parents(s, task, *at);
                }
                Some(e) => {
                    t.status = TaskStatus::Failed;
                    t.error = Some(e.clone());
                    fail_parents(s, task, *at);
                }
            }
        }
        Event::TaskCancelled { task, at, .. } => {
            if let Some(t) = s.tasks.get_mut(task) {
                if !t.status.is_final() {
                    t.status = TaskStatus::Cancelled;
                    t.ended_at = Some(*at);
                }
            }
        }
        Event::RunSucceeded { .. } | Event::RunFailed { .. } | Event::RunCancelled { .. } => {
            if let Event::RunCancelled { at, .. } = event {
                for t in s.tasks.values_mut() {
                    if !t.status.is_final() {
                        t.status = TaskStatus::Cancelled;
                        t.ended_at = Some(*at);
                    }
                }
            }
            if let Some(end) = RunEnd::of(event) {
                end.write(
                    &mut s.status,
                    &mut s.finished_at,
                    &mut s.output,
                    &mut s.output_headers,
                    &mut s.error,
                );
            }
        }
    }
}

/// A finished output task of a sub-workflow finishes the task that produced it.
fn succeed_parents(s: &mut RunState, task: &str, at: Millis) {
    let mut current = task.to_string();
    loop {
        let Some(t) = s.tasks.get(&current) else {
            return;
        };
        let Some(parent) = t.scope.clone() else {
            return;
        };
        let (output, headers) = (t.output.clone(), t.headers.clone());
        let Some(p) = s.tasks.get_mut(&parent) else {
            return;
        };
        if p.status != TaskStatus::Waiting || p.child_output.as_deref() != Some(current.as_str()) {
            return;
        }
        p.status = TaskStatus::Succeeded;
        p.output = output;
        p.headers = headers;
        p.ended_at = Some(at);
        current = parent;
    }
}

/// A task of a sub-workflow that failed for good fails the task that produced it.
fn fail_parents(s: &mut RunState, task: &str, at: Millis) {
    let mut current = task.to_string();
    loop {
        let Some(t) = s.tasks.get(&current) else {
            return;
        };
        let Some(parent) = t.scope.clone() else {
            return;
        };
        let error = format!(
            "task {:?} failed: {}",
            t.local,
            t.error.clone().unwrap_or_default()
        );
        let status = t.http_status;
        let Some(p) = s.tasks.get_mut(&parent) else {
            return;
        };
        if p.status != TaskStatus::Waiting {
            return;
        }
        p.status = TaskStatus::Failed;
        p.error = Some(error);
        p.http_status = status;
        p.ended_at = Some(at);
        current = parent;
    }
}

/// What should happen next, at time `now`. Pure.
pub fn decide(s: &RunState, now: Millis) -> Vec<Action> {
    if s.is_finished() || s.run_id.is_empty() {
        return Vec::new();
    }
    if let Some(machine) = s.spec.state_machine.as_deref() {
        return crate::sfn::run::decide(s, machine, now);
    }
    if let Some(d) = s.deadline {
        if now >= d {
            return vec![Action::Finish(Finish::Failed(RunError {
                task: None,
                message: format!(
                    "the run timed out after {}",
                    s.spec.timeout.clone().unwrap_or_default()
                ),
                status: None,
            }))];
        }
    }
    // A workflow task that failed for good fails the run (the earliest one).
    if let Some(t) = s
        .tasks
        .values()
        .filter(|t| t.scope.is_none() && t.status == TaskStatus::Failed)
        .min_by_key(|t| (t.ended_at, t.id.clone()))
    {
        return vec![Action::Finish(Finish::Failed(RunError {
            task: Some(t.id.clone()),
            message: t.error.clone().unwrap_or_default(),
            status: t.http_status,
        }))];
    }
    if let Some(t) = s.tasks.get(&s.spec.output) {
        if t.status == TaskStatus::Succeeded {
            return vec![Action::Finish(Finish::Succeeded {
                output: t.output.clone().unwrap_or(Value::Null),
                headers: t.headers.clone(),
            })];
        }
    }
    let mut actions = Vec::new();
    let mut busy = false;
    for t in s.tasks.values() {
        match t.status {
            TaskStatus::Pending => {
                let ready = t.requires.iter().all(|r| {
                    s.tasks
                        .get(r)
                        .is_some_and(|d| d.status == TaskStatus::Succeeded)
                });
                if ready {
                    actions.push(Action::Dispatch {
                        task: t.id.clone(),
                        attempt: 1,
                        key: attempt_key(&s.run_id, &t.id, 1),
                        spec: t.spec.clone(),
                    });
                }
            }
            TaskStatus::Retrying => {
                busy = true;
                let next = t.attempts + 1;
                match t.retry_at {
                    None => {
                        let policy = RetryPolicy::from_spec(t.spec.retry.as_ref())
                            .unwrap_or_else(|_| RetryPolicy::none());
                        let key = attempt_key(&s.run_id, &t.id, t.attempts);
                        let delay = policy.backoff.delay(t.attempts, sample_from(&key));
                        actions.push(Action::ScheduleRetry {
                            task: t.id.clone(),
                            attempt: next,
                            due: now.saturating_add(
                                u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            ),
                        });
                    }
                    Some(due) if due <= now => actions.push(Action::Dispatch {
                        task: t.id.clone(),
                        attempt: next,
                        key: attempt_key(&s.run_id, &t.id, next),
                        spec: t.spec.clone(),
                    }),
                    Some(due) => actions.push(Action::StartTimer { at: due }),
                }
            }
            TaskStatus::Running => {
                busy = true;
                match (t.wake_at, t.callback.as_ref().and(t.callback_deadline)) {
                    (Some(w), _) if w <= now => {
                        actions.push(Action::FireTimer { task: t.id.clone() })
                    }
                    (Some(w), _) => actions.push(Action::StartTimer { at: w }),
                    (None, Some(d)) if d <= now => actions.push(Action::ExpireCallback {
                        task: t.id.clone(),
                        attempt: t.attempts,
                    }),
                    (None, Some(d)) => actions.push(Action::StartTimer { at: d }),
                    (None, None) => {}
                }
            }
            TaskStatus::Waiting => busy = true,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled => {}
        }
    }
    if actions.is_empty() && !busy {
        // Nothing runs and nothing can start: end the run rather than hang.
        return vec![Action::Finish(Finish::Failed(RunError {
            task: None,
            message: format!(
                "no task can run and the output task {:?} has not succeeded",
                s.spec.output
            ),
            status: None,
        }))];
    }
    if let Some(d) = s.deadline {
        actions.push(Action::StartTimer { at: d });
    }
    actions
}

/// The event that records a finish.
pub fn finish_event(f: &Finish, at: Millis) -> Event {
    match f {
        Finish::Succeeded { output, headers } => Event::RunSucceeded {
            output: output.clone(),
            headers: headers.clone(),
            at,
        },
        Finish::Failed(e) => Event::RunFailed {
            task: e.task.clone(),
            error: e.message.clone(),
            status: e.status,
            at,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RetrySpec;
    use proptest::prelude::*;

    /// Attempt `attempt` of `task` dispatched at `at` (key "k", no inputs).
    fn dispatched(task: &str, attempt: u32, at: Millis) -> Event {
        Event::TaskDispatched {
            task: task.into(),
            attempt,
            key: "k".into(),
            inputs: Value::Null,
            at,
            wake_at: None,
        }
    }

    /// The first attempt of `task` succeeded with `output` at `at`.
    fn succeeded(task: &str, output: Value, at: Millis) -> Event {
        Event::TaskSucceeded {
            task: task.into(),
            attempt: 1,
            output,
            headers: Headers::new(),
            at,
        }
    }

    fn workflow(reqs: &[Vec<usize>], output: usize, retries: u32) -> WorkflowSpec {
        let mut spec = WorkflowSpec {
            output: format!("t{output}"),
            ..Default::default()
        };
        for (i, r) in reqs.iter().enumerate() {
            spec.tasks.insert(
                format!("t{i}"),
                TaskSpec {
                    run: "fn".into(),
                    requires: r.iter().map(|j| format!("t{j}")).collect(),
                    retry: (retries > 1).then_some(RetrySpec {
                        max_attempts: retries,
                        backoff: None,
                        jitter: None,
                    }),
                    ..Default::default()
                },
            );
        }
        spec
    }

    fn start(spec: WorkflowSpec) -> Event {
        Event::RunStarted {
            run_id: "r".into(),
            workflow: "w".into(),
            version: 1,
            spec,
            input: Value::Null,
            at: 0,
            retry_of: None,
            preserved: BTreeMap::new(),
        }
    }

    /// Drives a run to its end: `choices` pick which in-flight task finishes
    /// next and how. Returns the events and checks invariants on the way.
    fn simulate(spec: WorkflowSpec, choices: &[(usize, u8)]) -> (Vec<Event>, RunState) {
        let mut events = vec![start(spec)];
        let mut s = RunState::fold(&events);
        let mut now = 0;
        let mut i = 0;
        for _ in 0..10_000 {
            let actions = decide(&s, now);
            let mut new = Vec::new();
            let mut timer = false;
            for a in actions {
                match a {
                    Action::Dispatch {
                        task, attempt, key, ..
                    } => {
                        for r in &s.tasks[&task].requires {
                            assert_eq!(
                                s.tasks[r].status,
                                TaskStatus::Succeeded,
                                "{task} before {r}"
                            );
                        }
                        new.push(Event::TaskDispatched {
                            task,
                            attempt,
                            key,
                            inputs: Value::Null,
                            at: now,
                            wake_at: None,
                        });
                    }
                    Action::ScheduleRetry { task, attempt, due } => {
                        assert!(due >= now);
                        new.push(Event::RetryScheduled {
                            task,
                            attempt,
                            due,
                            at: now,
                        });
                    }
                    Action::StartTimer { at } => {
                        timer = true;
                        now = now.max(at);
                    }
                    Action::FireTimer { task } => new.push(Event::TimerFired { task, at: now }),
                    Action::ExpireCallback { .. } => unreachable!("no callback tasks here"),
                    Action::CancelTask { .. } => unreachable!("no branches here"),
                    Action::Finish(f) => new.push(finish_event(&f, now)),
                }
            }
            if new.is_empty() && !timer {
                let running: Vec<_> = s
                    .in_flight()
                    .iter()
                    .map(|t| (t.id.clone(), t.attempts))
                    .collect();
                if running.is_empty() {
                    break;
                }
                let (pick, how) = choices.get(i).copied().unwrap_or((0, 0));
                i += 1;
                let (task, attempt) = running[pick % running.len()].clone();
                new.push(match how % 3 {
                    0 => Event::TaskSucceeded {
                        task,
                        attempt,
                        output: json!(attempt),
                        headers: Headers::new(),
                        at: now,
                    },
                    1 => Event::TaskFailed {
                        task,
                        attempt,
                        error: "5xx".into(),
                        status: Some(503),
                        retryable: true,
                        at: now,
                    },
                    _ => Event::TaskFailed {
                        task,
                        attempt,
                        error: "4xx".into(),
                        status: Some(400),
                        retryable: false,
                        at: now,
                    },
                });
            }
            for e in new {
                apply(&mut s, &e);
                events.push(e);
            }
            if s.is_finished() {
                break;
            }
            now += 1;
        }
        (events, s)
    }

    fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, usize)> {
        (1usize..8).prop_flat_map(|n| {
            let reqs = (0..n)
                .map(|i| {
                    proptest::collection::vec(0..i.max(1), 0..3)
                        .prop_map(move |v| v.into_iter().filter(|&j| j < i).collect::<Vec<_>>())
                })
                .collect::<Vec<_>>();
            (reqs, 0..n)
        })
    }

    proptest! {
        #[test]
        fn any_outcomes_end_in_one_terminal_state(
            (reqs, output) in dag(),
            retries in 1u32..4,
            choices in proptest::collection::vec((0usize..8, 0u8..3), 0..64),
        ) {
            let (events, s) = simulate(workflow(&reqs, output, retries), &choices);
            prop_assert!(s.is_finished(), "run did not finish: {:?}", s.status);
            prop_assert_eq!(events.iter().filter(|e| e.is_terminal()).count(), 1);
            prop_assert!(events.last().unwrap().is_terminal());
            // Folding the stored events again gives the same state.
            let json = serde_json::to_string(&events).unwrap();
            let stored: Vec<Event> = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(RunState::fold(&stored), s.clone());
            // Nothing happens after the end.
            prop_assert!(decide(&s, u64::MAX).is_empty());
        }
    }

    #[test]
    fn tasks_start_when_their_own_dependencies_succeed() {
        // t0 -> t1, and t2 alone: t2 and t0 start together, t1 after t0 only.
        let spec = workflow(&[vec![], vec![0], vec![]], 1, 1);
        let mut s = RunState::fold(&[start(spec)]);
        let ids = |a: &[Action]| {
            a.iter()
                .filter_map(|a| match a {
                    Action::Dispatch { task, .. } => Some(task.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let a = decide(&s, 0);
        assert_eq!(ids(&a), vec!["t0", "t2"]);
        for t in ["t0", "t2"] {
            apply(&mut s, &dispatched(t, 1, 0));
        }
        apply(&mut s, &succeeded("t0", json!(1), 1));
        assert_eq!(ids(&decide(&s, 1)), vec!["t1"]);
    }

    #[test]
    fn retry_then_fail_for_good() {
        let spec = workflow(&[vec![]], 0, 2);
        let mut s = RunState::fold(&[start(spec)]);
        apply(&mut s, &dispatched("t0", 1, 0));
        apply(
            &mut s,
            &Event::TaskFailed {
                task: "t0".into(),
                attempt: 1,
                error: "boom".into(),
                status: Some(500),
                retryable: true,
                at: 10,
            },
        );
        let a = decide(&s, 10);
        let Action::ScheduleRetry {
            attempt: 2, due, ..
        } = a[0].clone()
        else {
            panic!("{a:?}")
        };
        assert!((90..=110).contains(&due), "{due}");
        apply(
            &mut s,
            &Event::RetryScheduled {
                task: "t0".into(),
                attempt: 2,
                due,
                at: 10,
            },
        );
        assert_eq!(decide(&s, 10), vec![Action::StartTimer { at: due }]);
        assert!(matches!(
            &decide(&s, due)[0],
            Action::Dispatch { attempt: 2, .. }
        ));
        apply(&mut s, &dispatched("t0", 2, due));
        apply(
            &mut s,
            &Event::TaskFailed {
                task: "t0".into(),
                attempt: 2,
                error: "boom".into(),
                status: Some(500),
                retryable: true,
                at: due,
            },
        );
        match &decide(&s, due)[0] {
            Action::Finish(Finish::Failed(e)) => {
                assert_eq!(e.task.as_deref(), Some("t0"));
                assert_eq!(e.status, Some(500));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dynamic_tasks_finish_their_parent() {
        let spec = workflow(&[vec![]], 0, 1);
        let mut s = RunState::fold(&[start(spec)]);
        apply(&mut s, &dispatched("t0", 1, 0));
        let tasks = BTreeMap::from([
            ("a".to_string(), TaskSpec::default()),
            (
                "b".to_string(),
                TaskSpec {
                    requires: vec!["a".into()],
                    ..Default::default()
                },
            ),
        ]);
        apply(
            &mut s,
            &Event::TasksAdded {
                parent: "t0".into(),
                tasks,
                output: "b".into(),
                scope_inputs: None,
                at: 0,
            },
        );
        assert_eq!(s.tasks["t0"].status, TaskStatus::Waiting);
        assert_eq!(s.tasks["t0/b"].requires, vec!["t0/a"]);
        let scope = s.scope_for("t0/b");
        assert!(scope["Tasks"]["a"].is_object() && scope["Tasks"]["t0"].is_object());
        for (t, out) in [("t0/a", 1), ("t0/b", 2)] {
            apply(&mut s, &dispatched(t, 1, 0));
            apply(&mut s, &succeeded(t, json!(out), 1));
        }
        assert_eq!(s.tasks["t0"].status, TaskStatus::Succeeded);
        assert_eq!(
            decide(&s, 2),
            vec![Action::Finish(Finish::Succeeded {
                output: json!(2),
                headers: Headers::new()
            })]
        );
    }

    #[test]
    fn run_timeout() {
        let mut spec = workflow(&[vec![]], 0, 1);
        spec.timeout = Some("1s".into());
        let s = RunState::fold(&[start(spec)]);
        assert!(decide(&s, 0).contains(&Action::StartTimer { at: 1000 }));
        assert!(matches!(
            &decide(&s, 1000)[0],
            Action::Finish(Finish::Failed(_))
        ));
    }

    /// A one-task workflow whose task `c` waits on a callback issued at 0.
    fn waiting_callback(deadline: Option<Millis>, retries: u32) -> RunState {
        let spec = workflow(&[vec![]], 0, retries);
        let mut s = RunState::fold(&[start(spec)]);
        for e in [
            dispatched("t0", 1, 0),
            Event::CallbackIssued {
                task: "t0".into(),
                attempt: 1,
                token: "r.secret".into(),
                deadline,
                at: 0,
            },
        ] {
            apply(&mut s, &e);
        }
        s
    }

    fn completed(attempt: u32, output: Value, error: Option<&str>, at: Millis) -> Event {
        Event::CallbackCompleted {
            task: "t0".into(),
            attempt,
            output,
            error: error.map(String::from),
            at,
        }
    }

    #[test]
    fn a_callback_task_waits_until_completed_then_succeeds_with_the_posted_output() {
        let mut s = waiting_callback(None, 1);
        assert_eq!(decide(&s, 1_000_000), vec![], "it waits, with no timer");
        assert!(
            s.in_flight().is_empty(),
            "recovery must not dispatch it again"
        );
        apply(&mut s, &completed(1, json!({"ok": 1}), None, 10));
        assert!(s.tasks["t0"].callback_completed);
        assert_eq!(
            decide(&s, 10),
            vec![Action::Finish(Finish::Succeeded {
                output: json!({"ok": 1}),
                headers: Headers::new(),
            })]
        );
    }

    #[test]
    fn a_callback_completed_with_an_error_fails_the_run_without_retrying() {
        let mut s = waiting_callback(None, 3);
        apply(
            &mut s,
            &completed(1, Value::Null, Some("card declined"), 10),
        );
        assert_eq!(s.tasks["t0"].status, TaskStatus::Failed);
        assert_eq!(
            decide(&s, 10),
            vec![Action::Finish(Finish::Failed(RunError {
                task: Some("t0".into()),
                message: "card declined".into(),
                status: None,
            }))]
        );
    }

    #[test]
    fn a_callback_not_completed_by_its_deadline_expires() {
        let mut s = waiting_callback(Some(500), 1);
        assert_eq!(decide(&s, 100), vec![Action::StartTimer { at: 500 }]);
        assert_eq!(
            decide(&s, 500),
            vec![Action::ExpireCallback {
                task: "t0".into(),
                attempt: 1
            }]
        );
        // The driver records the expiry as a failed attempt; a late completion is ignored.
        apply(
            &mut s,
            &Event::TaskFailed {
                task: "t0".into(),
                attempt: 1,
                error: "timeout".into(),
                status: None,
                retryable: true,
                at: 500,
            },
        );
        apply(&mut s, &completed(1, json!("late"), None, 600));
        assert_eq!(s.tasks["t0"].status, TaskStatus::Failed);
        assert!(!s.tasks["t0"].callback_completed);
        assert!(matches!(
            &decide(&s, 600)[..],
            [Action::Finish(Finish::Failed(_))]
        ));
    }

    #[test]
    fn a_second_callback_completion_changes_nothing() {
        let mut s = waiting_callback(None, 1);
        apply(&mut s, &completed(1, json!("first"), None, 10));
        let after_first = s.clone();
        apply(&mut s, &completed(1, json!("second"), None, 20));
        apply(&mut s, &completed(1, Value::Null, Some("no"), 30));
        assert_eq!(s, after_first);
        assert_eq!(s.tasks["t0"].output, Some(json!("first")));
    }

    #[test]
    fn a_retried_callback_gets_a_new_token_and_ignores_the_old_attempt() {
        let mut s = waiting_callback(Some(500), 2);
        apply(
            &mut s,
            &Event::TaskFailed {
                task: "t0".into(),
                attempt: 1,
                error: "timeout".into(),
                status: None,
                retryable: true,
                at: 500,
            },
        );
        assert_eq!(s.tasks["t0"].status, TaskStatus::Retrying);
        apply(&mut s, &dispatched("t0", 2, 600));
        assert_eq!(s.tasks["t0"].callback, None, "the old token is gone");
        apply(&mut s, &completed(1, json!("old"), None, 700));
        assert_eq!(s.tasks["t0"].status, TaskStatus::Running);
    }
}
