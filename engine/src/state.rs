//! The run state machine, pure: `apply` folds a run's events into its state and
//! `decide` says what should happen next at a given time. No I/O, no clock: the
//! driver persists events, performs the actions and feeds outcomes back as events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::retry::{sample_from, RetryPolicy};
use crate::spec::{parse_duration, TaskSpec, WorkflowSpec};

/// The engine's rules a run started now follows (`Event::RunStarted`'s
/// `rules`), by the version that brought them:
/// - 1: the iterations of a `while` are numbered side by side (`W/1/action`,
///   `W/2/action`; see `RunState::child_base`), where they were nested each
///   in the last (`W/condition/action`); and a task that runs a sub-workflow
///   ends once the tasks beside its output have run too, as a run does
///   (they were left unstarted, or running).
/// - 2: times in expressions' scope (`CreatedAt`, `UpdatedAt`) are whole
///   nanoseconds since the epoch, as Fission Workflows' scope had them
///   (`formatTimestamp`: `UnixNano()`); they were RFC 3339 text.
pub const RULES: u32 = 2;

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
    /// The run where the task ran, when a retry of a retry keeps it: not the
    /// run this one retries (which kept it in its turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
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
        /// The idempotency keys of calls that were in flight when the run
        /// this one retries ended, by task: the attempts of each here are
        /// sent under the same key, so that a function that took the first
        /// call can tell the second is the same.
        /// Boxed: only a retry has them, and every event is as large as
        /// the largest kind.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keys: Option<Box<BTreeMap<String, String>>>,
        /// The engine's rules the run follows (`RULES` when it started;
        /// absent, 0, in the runs of versions before them), so that a run is
        /// always read back as it ran.
        #[serde(default, skip_serializing_if = "is_zero")]
        rules: u32,
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
        /// The sub-workflow's own `concurrency` (most of its tasks in flight).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        concurrency: Option<u32>,
        /// For a stored workflow run by name: the version whose tasks these are.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
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
    /// The server started again while the run was unfinished (after a crash
    /// or a stop) and took it up: the calls of the `repeated` tasks, in flight
    /// then, were made again with the same idempotency keys (and callback URLs
    /// not yet handed out, handed out again).
    RunResumed {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        repeated: Vec<String>,
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
            | Event::RunResumed { at, .. }
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
            | Event::RunResumed { .. }
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
    pub const ALL: [RunStatus; 4] = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

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
    /// Not started (its requirements have not all finished).
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
    /// The status as Fission Workflows' expressions see it
    /// (`$.Tasks.X.Status`): its task invocation's status names.
    pub fn fission_name(self) -> &'static str {
        match self {
            TaskStatus::Pending => "UNKNOWN",
            TaskStatus::Running | TaskStatus::Retrying | TaskStatus::Waiting => "IN_PROGRESS",
            TaskStatus::Succeeded => "SUCCEEDED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "ABORTED",
        }
    }

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

impl RunError {
    /// The run's error as a code a program tells apart, the same a
    /// synchronous caller of the run is answered: `run_cancelled`,
    /// `run_timed_out` (a call, a callback or the run past its time),
    /// `run_failed`.
    pub fn code(&self, status: RunStatus) -> &'static str {
        match status {
            RunStatus::Cancelled => "run_cancelled",
            _ if self.is_timeout() => "run_timed_out",
            _ => "run_failed",
        }
    }

    /// Whether the run failed because something took too long: a function
    /// call past its timeout, the run past its own, a callback past its
    /// deadline (RFC-0022's `Fission.Timeout` among them).
    pub fn is_timeout(&self) -> bool {
        // A workflow run by a task fails with the words of the task that
        // failed in it: `task "S" failed: function call timed out ...`.
        let m = innermost_failure(&self.message);
        m.starts_with("function call timed out")
            || m.starts_with("the http call timed out")
            || m.starts_with("the task timed out")
            || m.starts_with("the run timed out")
            || m.starts_with("the callback timed out")
            || m.starts_with("Fission.Timeout")
    }
}

/// What failed after `task "S" failed: `: one such prefix now, a chain of
/// them (cut short with `… `) in the records older versions wrote.
fn innermost_failure(message: &str) -> &str {
    let mut m = message;
    loop {
        if let Some(rest) = m.strip_prefix("… ") {
            m = rest;
            continue;
        }
        match m
            .strip_prefix("task \"")
            .and_then(|rest| rest.split_once("\" failed: "))
        {
            Some((_, after)) => m = after,
            None => return m,
        }
    }
}

/// A time as expressions see it (`CreatedAt`): nanoseconds since the epoch,
/// as Fission Workflows' scope has it (from rules 2; RFC 3339 text before);
/// null when there is none.
fn timestamp(at: Option<Millis>, rules: u32) -> Value {
    match (at, rules >= 2) {
        (None, _) => Value::Null,
        (Some(ms), true) => ms.checked_mul(1_000_000).map_or(Value::Null, Value::from),
        (Some(ms), false) => i64::try_from(ms)
            .ok()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map_or(Value::Null, |t| Value::String(t.to_string())),
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An attempt of a task that failed and was tried again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedAttempt {
    pub attempt: u32,
    pub started_at: Option<Millis>,
    pub ended_at: Millis,
    pub error: String,
    /// The function's answer's status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
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
    /// Full id of the task that runs instead when this one fails for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// For a fallback: full id of the task it runs instead of (it starts only
    /// when that task failed for good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_of: Option<String>,
    /// For a `Waiting` task: its sub-workflow's own `concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_concurrency: Option<u32>,
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
    /// When the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_started_at: Option<Millis>,
    /// The attempts that failed and were tried again, in order (the last
    /// attempt's outcome is the task's own `error` or `output`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<FailedAttempt>,
    /// Calls made a second time because the server started again while they
    /// were in flight (`RunResumed`): the function saw that attempt, with
    /// the same idempotency key, more than once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeated_after_restart: u32,
    pub retry_at: Option<Millis>,
    pub wake_at: Option<Millis>,
    /// For a `Waiting` task: the full id of its sub-workflow's output task.
    pub child_output: Option<String>,
    /// `$.Invocation.Inputs` for the task's sub-workflow (a workflow run by name).
    pub scope_inputs: Option<Value>,
    /// The version of the stored workflow the task runs, once it has started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_version: Option<u32>,
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
    /// Why a `cancelled` task ended unfinished: the run stopped it (a branch
    /// beside it failed) or ended without it (failed, cancelled, timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// For a task a retry kept (succeeded, not run again): the run whose
    /// outcome it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_from: Option<String>,
    /// For a `while` task of a run that numbers its loops: the `while` task
    /// the user wrote, whose loop this task goes on with (itself, for that
    /// one), and which iteration the tasks it adds make. Derived when the
    /// task is added, never stored.
    #[serde(skip)]
    pub loop_head: Option<String>,
    #[serde(skip)]
    pub iteration: u32,
}

/// The caller's credential headers (`Authorization`, `Cookie`,
/// `Proxy-Authorization`, lower-case names), which a run's record holds only
/// as `[redacted]`: kept in memory while the run runs here, so that a task
/// forwarding such a header sends it as the caller sent it. Never stored, so
/// a run continued after a restart forwards `[redacted]`; never shown.
#[derive(Clone, PartialEq, Default)]
pub struct Credentials(pub Vec<(String, String)>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Credentials {
    /// The value the caller sent for credential header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RunState {
    /// Never stored (see `Credentials`).
    #[serde(skip)]
    pub credentials: Credentials,
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
    /// What a retry keeps of tasks inside a `foreach`, an `if` or a called
    /// workflow, by id: such a task exists once its parent adds it again,
    /// and is then succeeded with its result rather than run a second time.
    /// From the run's `RunStarted` (so never stored).
    #[serde(skip)]
    pub preserved_inside: BTreeMap<String, TaskResult>,
    /// The keys the attempts of some tasks are sent under (see
    /// `Event::RunStarted`'s `keys`). From the run's `RunStarted`.
    #[serde(skip)]
    pub inherited_keys: BTreeMap<String, String>,
    /// See `Event::RunStarted`'s `rules`.
    #[serde(skip)]
    pub rules: u32,
    /// What `decide` looks at. Derived by `apply`, never stored.
    #[serde(skip)]
    pub progress: Progress,
}

/// The tasks `decide` has to look at, kept by `apply` as the run changes, so
/// that the work of each step follows what changed rather than the size of
/// the run: scanning every task at each step made a 10,000-item `foreach`
/// with a `concurrency`, or a `repeat` of as many, take minutes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    /// Tasks that may start or have something due: pending tasks whose
    /// requirements may all have been met (`decide` checks again), running
    /// and retrying tasks, and waiting ones with a timeout.
    live: BTreeSet<String>,
    /// Pending tasks that may start, of scopes with a `concurrency` limit
    /// (not in `live`), by scope, in the order they start in: a step takes
    /// the first few, where looking at all of them made each step's work
    /// grow with the items waiting for their turn.
    queued: BTreeMap<Option<String>, BTreeSet<(Natural, String)>>,
    /// Tasks waiting for the tasks they run.
    waiting: BTreeSet<String>,
    /// The workflow's own tasks that failed for good without a fallback,
    /// earliest first.
    failed: BTreeSet<(Option<Millis>, String)>,
    /// The tasks that require each task.
    dependents: HashMap<String, Vec<String>>,
    /// The tasks each task is the fallback of (`onFailure`).
    falls_back_for: HashMap<String, Vec<String>>,
    /// How many of each pending task's requirements have no result yet.
    unmet: HashMap<String, usize>,
    /// The tasks whose result stands (`RunState::resolved`), counted off
    /// their dependents' `unmet`: once it stands, it stays.
    met: BTreeSet<String>,
    /// Tasks running, retrying, waiting for what they run, or pending and
    /// free to start; and how many of them each sub-workflow holds (by the
    /// task running it), which ends only with none.
    active: std::collections::HashSet<String>,
    active_in: HashMap<String, usize>,
}

/// How a run should end.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Succeeded { output: Value, headers: Headers },
    Failed(RunError),
}

/// What should happen next.
// Actions live only between `decide` and the driver acting on them: boxing
// the task spec of a dispatch would buy nothing.
#[allow(clippy::large_enum_variant)]
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
    /// A `sleep` or a task waiting for the tasks it runs (a workflow, a
    /// `foreach`, ...) past its `timeout`: fail the attempt (what the task
    /// runs is cancelled by the `CancelTask`s that follow).
    TimeOut {
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

/// The idempotency key of task `task`'s calls: one logical call, the same
/// on every attempt (and on a call made again after a restart), so that
/// its function can tell a repeat.
pub fn task_key(run_id: &str, task: &str) -> String {
    format!("{run_id}/{task}")
}

/// What the jitter of the backoff after attempt `attempt` of a task is drawn
/// from: the same on every replay of the run, another for each attempt.
pub fn backoff_seed(run_id: &str, task: &str, attempt: u32) -> String {
    format!("{run_id}/{task}/{attempt}")
}

/// The full id of a task `local` inside the scope of `parent`.
pub fn child_id(parent: &str, local: &str) -> String {
    format!("{parent}/{local}")
}

impl RunState {
    /// The key every attempt of task `id` is sent under: its own, or the
    /// one a retry inherited for it from the run it retries.
    pub fn key_of(&self, id: &str) -> String {
        match self.inherited_keys.get(id) {
            Some(key) => key.clone(),
            None => task_key(&self.run_id, id),
        }
    }

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

    /// The task whose result stands for `id`'s: `id` itself once it
    /// succeeded; once it failed for good, its fallback's (and so on down a
    /// chain of fallbacks); None while that is not settled.
    pub fn resolved(&self, id: &str) -> Option<&TaskState> {
        let mut t = self.tasks.get(id)?;
        for _ in 0..=self.tasks.len() {
            match t.status {
                TaskStatus::Succeeded => return Some(t),
                TaskStatus::Failed => t = self.tasks.get(t.on_failure.as_deref()?)?,
                _ => return None,
            }
        }
        None
    }

    /// The task that `id` runs instead of: up the chain of fallbacks while
    /// the task it stands for failed; `id` itself for any other task.
    pub fn stands_for(&self, id: &str) -> String {
        let mut current = id;
        for _ in 0..=self.tasks.len() {
            match self
                .tasks
                .get(current)
                .and_then(|t| t.fallback_of.as_deref())
            {
                Some(x) if self.tasks.get(x).map(|t| t.status) == Some(TaskStatus::Failed) => {
                    current = x
                }
                _ => break,
            }
        }
        current.to_string()
    }

    /// Where the ids of the tasks that task `parent` adds begin:
    /// `{parent}/`; for a `while` task of a run that numbers its loops,
    /// `{loop}/{n}/`. Each iteration of a loop is added by the `condition`
    /// of the one before: named after it, the ids grew by a level with each
    /// iteration, and so did the work of every lookup.
    pub fn child_base(&self, parent: &str) -> String {
        match self.tasks.get(parent) {
            Some(TaskState {
                loop_head: Some(head),
                iteration,
                ..
            }) => format!("{head}/{iteration}/"),
            _ => child_id(parent, ""),
        }
    }

    /// The scope around the tasks that task `scope` added, as a walk out of
    /// them goes: the scope `scope` is in; for an iteration of a loop, the
    /// loop's own task. The iterations before it hold only tasks named as
    /// its own (`wait`, `action`, `condition`), which nothing inside it can
    /// see, and skipping them keeps each walk as short as the first
    /// iteration's.
    fn outer<'a>(&'a self, scope: &'a TaskState) -> Option<&'a str> {
        match scope.loop_head.as_deref() {
            Some(head) if head != scope.id => Some(head),
            _ => scope.scope.as_deref(),
        }
    }

    /// Whether a task whose sub-workflow holds `t`, however deep, is `which`
    /// (the iterations of a loop between aside: see `outer`).
    fn inside_any(&self, t: &TaskState, which: impl Fn(&TaskState) -> bool) -> bool {
        let mut scope = t.scope.as_deref();
        for _ in 0..=self.tasks.len() {
            let Some(p) = scope.and_then(|p| self.tasks.get(p)) else {
                return false;
            };
            if which(p) {
                return true;
            }
            scope = self.outer(p);
        }
        false
    }

    /// Whether every task whose sub-workflow holds `t` still waits for it (a
    /// task whose parent already failed is not started). The iterations of
    /// a loop between wait as long as the loop does (see `outer`).
    fn scope_open(&self, t: &TaskState) -> bool {
        let mut scope = t.scope.as_deref();
        for _ in 0..=self.tasks.len() {
            let Some(p) = scope else { return true };
            match self.tasks.get(p) {
                Some(parent) if parent.status == TaskStatus::Waiting => scope = self.outer(parent),
                _ => return false,
            }
        }
        false
    }

    /// Whether `t` is wanted at all: a fallback only once the task it stands
    /// for failed for good.
    fn wanted(&self, t: &TaskState) -> bool {
        t.fallback_of.as_deref().is_none_or(|x| {
            self.tasks
                .get(x)
                .is_some_and(|x| x.status == TaskStatus::Failed)
        })
    }

    /// Most tasks of a scope (the workflow's own, or the sub-workflow of task
    /// `scope`) in flight at once, if limited.
    fn scope_limit(&self, scope: Option<&str>) -> Option<usize> {
        let limit = match scope {
            None => self.spec.concurrency,
            Some(p) => {
                let t = self.tasks.get(p)?;
                match (t.spec.concurrency, t.child_concurrency) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        };
        limit.map(|n| n.max(1) as usize)
    }

    /// What a task is dispatched with: a fallback that declares no inputs
    /// gets the failure it stands in for as its default input.
    fn dispatch_spec(&self, t: &TaskState) -> TaskSpec {
        let mut spec = t.spec.clone();
        if spec.inputs.is_none() {
            if let Some(failed) = t.fallback_of.as_deref().and_then(|x| self.tasks.get(x)) {
                spec.inputs = Some(json!({ "default": failure_value(failed) }));
            }
        }
        spec
    }

    /// The expression scope `$` for a task: every task of its scope and of the
    /// scopes around it.
    pub fn scope_for(&self, task_id: &str) -> Value {
        self.build_scope(task_id, None, true)
    }

    /// Like `scope_for`, with only the tasks in `$.Tasks` that `sources` (the
    /// task's expressions, when they name tasks only literally) can name, and
    /// the task itself: building every task into every scope made a run's cost
    /// grow with the square of its tasks. The names are looked up (`named_in`),
    /// not the scope scanned, so a task's cost does not grow with the tasks
    /// around it (a 1,000-item `foreach` scanned 2,000 tasks per item).
    /// `invocation` says whether `$.Invocation.Inputs` is needed at all (a large
    /// request body is otherwise copied into every evaluation).
    pub fn scope_naming(&self, task_id: &str, sources: &[String], invocation: bool) -> Value {
        self.build_scope(task_id, Some(sources), invocation)
    }

    /// `$` for a task, with every task of each scope (`sources` None) or those
    /// `named_in` them.
    fn build_scope(&self, task_id: &str, sources: Option<&[String]>, invocation: bool) -> Value {
        let me = self.tasks.get(task_id);
        let local = me.map_or("", |t| t.local.as_str());
        let mut tasks = serde_json::Map::new();
        let mut scope = me.and_then(|t| t.scope.as_deref());
        let mut inputs: Option<Value> = None;
        loop {
            let level: Vec<&TaskState> = match sources {
                None => self
                    .tasks
                    .values()
                    .filter(|t| t.scope.as_deref() == scope)
                    .collect(),
                Some(sources) => self.named_in(scope, local, sources),
            };
            for t in level {
                if !tasks.contains_key(&t.local) {
                    // A task that failed for good shows its fallback's result
                    // as its own output (its status and error stay its own).
                    let result = match t.status {
                        TaskStatus::Failed => self.resolved(&t.id).unwrap_or(t),
                        _ => t,
                    };
                    // Built field by field: `json!` would copy each value
                    // once more through the serializer.
                    let text = |s: &str| Value::String(s.to_string());
                    let entry = [
                        ("Id", text(&t.id)),
                        ("Status", text(t.status.fission_name())),
                        ("Function", text(&t.spec.run)),
                        (
                            "Requires",
                            Value::Object(
                                t.requires
                                    .iter()
                                    .map(|r| (r.clone(), Value::Object(Default::default())))
                                    .collect(),
                            ),
                        ),
                        ("CreatedAt", timestamp(t.started_at, self.rules)),
                        (
                            "UpdatedAt",
                            timestamp(t.ended_at.or(t.started_at), self.rules),
                        ),
                        ("Inputs", t.inputs.clone().unwrap_or(Value::Null)),
                        ("Output", result.output.clone().unwrap_or(Value::Null)),
                        (
                            "OutputHeaders",
                            Value::Object(
                                result
                                    .headers
                                    .iter()
                                    .map(|(k, v)| (k.clone(), text(v)))
                                    .collect(),
                            ),
                        ),
                        ("Error", t.error.as_deref().map_or(Value::Null, text)),
                    ];
                    tasks.insert(
                        t.local.clone(),
                        Value::Object(entry.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
                    );
                }
            }
            match scope {
                None => break,
                Some(p) => {
                    let parent = self.tasks.get(p);
                    if inputs.is_none() {
                        inputs = parent.and_then(|t| t.scope_inputs.clone());
                    }
                    scope = parent.and_then(|t| self.outer(t));
                }
            }
        }
        let inputs = if invocation {
            inputs.unwrap_or_else(|| self.input.clone())
        } else {
            Value::Null
        };
        let mut scope = json!({
            "Workflow": {"Id": self.workflow, "Name": self.workflow, "Version": self.version, "Status": "READY"},
            "Invocation": {"Id": self.run_id, "CreatedAt": timestamp(Some(self.started_at), self.rules)},
        });
        // Moved in, not through `json!`, which would copy them again.
        scope["Invocation"]["Inputs"] = inputs;
        scope["Tasks"] = Value::Object(tasks);
        scope
    }

    /// The tasks of `scope` that `sources` can name (see `named_by`) and the
    /// one whose local id is `local`, in id order. A task's id is its local id
    /// inside its scope (`child_id`), so each name is looked up, never the
    /// scope scanned: the work follows the sources' length, not the tasks.
    fn named_in<'a>(
        &'a self,
        scope: Option<&str>,
        local: &str,
        sources: &[String],
    ) -> Vec<&'a TaskState> {
        let base = scope.map_or_else(String::new, |p| self.child_base(p));
        let mut found: BTreeMap<&str, &'a TaskState> = BTreeMap::new();
        let mut consider = |key: &str| {
            if let Some(t) = self.tasks.get(key) {
                if t.scope.as_deref() == scope && key.get(base.len()..) == Some(t.local.as_str()) {
                    found.insert(t.id.as_str(), t);
                }
            }
        };
        let mut key = format!("{base}{local}");
        consider(&key);
        let mut seen = std::collections::HashSet::new();
        for source in sources.iter().filter(|s| seen.insert(s.as_str())) {
            match named_by(source) {
                Some(names) => {
                    for name in names {
                        key.truncate(base.len());
                        key.push_str(name);
                        consider(&key);
                    }
                }
                // Every substring of the source is a name: each is looked up,
                // and extended only while some task's id starts with it.
                None => {
                    for (start, _) in source.char_indices() {
                        key.truncate(base.len());
                        consider(&key);
                        for c in source[start..].chars() {
                            key.push(c);
                            let mut after = self
                                .tasks
                                .range::<str, _>((Bound::Included(key.as_str()), Bound::Unbounded));
                            match after.next() {
                                Some((id, _)) if id.starts_with(key.as_str()) => consider(&key),
                                _ => break,
                            }
                        }
                    }
                }
            }
        }
        found.into_values().collect()
    }
}

/// The task names an expression that names tasks only literally (see
/// `expr::names_tasks_literally`) can reach: `$.Tasks.X` reads a JavaScript
/// identifier, a helper (`output('X')`, ...) a string literal without escapes.
/// So its words (runs of letters, digits, `_` and `$`) and the text between
/// any two neighbouring quotes of one kind (a superset of its string literals)
/// are all it can name, and a task named anything else keeps the expression's
/// result the same whether it is in `$.Tasks` or not. None for a source with a
/// backslash (an escape spells a name differently) or a character beyond ASCII
/// (an identifier may hold more than letters and digits there): then every
/// substring counts.
fn named_by(source: &str) -> Option<Vec<&str>> {
    if !source.is_ascii() || source.contains('\\') {
        return None;
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let mut names: Vec<&str> = source
        .split(|c| !word(c))
        .filter(|w| !w.is_empty())
        .collect();
    for quote in ['\'', '"', '`'] {
        let mut parts = source.split(quote);
        parts.next();
        let mut parts = parts.peekable();
        // The last part follows the last quote: nothing closes it.
        while let Some(between) = parts.next() {
            if parts.peek().is_some() {
                names.push(between);
            }
        }
    }
    Some(names)
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

/// How a fallback sees the failure it stands in for (its default input):
/// `{"task", "message", "status"}` as a failed run's `error` reads.
pub fn failure_value(failed: &TaskState) -> Value {
    let mut v = json!({
        "task": failed.id,
        "message": failed.error.clone().unwrap_or_default(),
    });
    if let (Some(status), Some(m)) = (failed.http_status, v.as_object_mut()) {
        m.insert("status".into(), json!(status));
    }
    v
}

/// Adds the tasks of a workflow (the run's own when `scope` is None, else the
/// sub-workflow of task `scope`) with their dependencies and fallbacks as full ids.
/// A task a retry keeps: succeeded with the result it had in the run it
/// came from (`r.from`, else `retry_of`, the run the retry retries).
fn keep_result(ts: &mut TaskState, r: &TaskResult, retry_of: Option<&str>) {
    ts.status = TaskStatus::Succeeded;
    ts.output = Some(r.output.clone());
    ts.headers = r.headers.clone();
    ts.inputs = Some(r.inputs.clone());
    ts.kept_from = r.from.clone().or_else(|| retry_of.map(String::from));
}

fn insert_tasks(
    s: &mut RunState,
    scope: Option<&str>,
    tasks: &BTreeMap<String, TaskSpec>,
    touched: &mut Vec<String>,
) {
    let base = scope.map_or_else(String::new, |p| s.child_base(p));
    let full = |local: &str| format!("{base}{local}");
    // The loop a `condition` goes on with, when its parent is an iteration.
    let going_on = scope
        .and_then(|p| s.tasks.get(p))
        .and_then(|p| Some((p.loop_head.clone()?, p.iteration + 1)));
    for (local, spec) in tasks {
        let id = full(local);
        let on_failure = spec
            .on_failure
            .as_deref()
            .filter(|f| *f != local && tasks.contains_key(*f))
            .map(full);
        let (loop_head, iteration) = match &going_on {
            _ if spec.run != "while" || s.rules < 1 => (None, 0),
            Some((head, n)) if local == "condition" => (Some(head.clone()), *n),
            _ => (Some(id.clone()), 1),
        };
        let requires: Vec<String> = spec.requires.iter().map(|r| full(r)).collect();
        let progress = &mut s.progress;
        for r in &requires {
            progress
                .dependents
                .entry(r.clone())
                .or_default()
                .push(id.clone());
        }
        progress.unmet.insert(id.clone(), requires.len());
        if let Some(f) = &on_failure {
            progress
                .falls_back_for
                .entry(f.clone())
                .or_default()
                .push(id.clone());
        }
        touched.push(id.clone());
        s.tasks.insert(
            id.clone(),
            TaskState {
                id,
                local: local.clone(),
                scope: scope.map(String::from),
                spec: spec.clone(),
                requires,
                on_failure,
                loop_head,
                iteration,
                ..TaskState::default()
            },
        );
    }
    for (local, spec) in tasks {
        if let Some(f) = spec.on_failure.as_deref().filter(|f| *f != local) {
            if let Some(t) = s.tasks.get_mut(&full(f)) {
                t.fallback_of.get_or_insert_with(|| full(local));
            }
        }
    }
}

/// Why a run's end leaves a task it had not finished unfinished, in words a
/// person reading the task reads.
fn unfinished_because(end: &Event) -> String {
    match end {
        Event::RunFailed {
            task: Some(task), ..
        } => format!("the run failed at task {task:?}"),
        Event::RunFailed { error, .. } => format!("the run failed: {error}"),
        // By whom and why is the run's error.
        Event::RunCancelled { .. } => "the run was cancelled".into(),
        _ => "the run ended without it".into(),
    }
}

/// Applies one event. The only way a run's state changes.
pub fn apply(s: &mut RunState, event: &Event) {
    if s.is_finished() && !matches!(event, Event::RunStarted { .. }) {
        return;
    }
    let mut touched = Vec::new();
    apply_event(s, event, &mut touched);
    if s.spec.state_machine.is_some() {
        if let Some(task) = event.task() {
            if !s.is_finished() {
                crate::sfn::run::note_change(s, task);
            }
        }
    } else if !s.is_finished() {
        loop {
            track(s, touched.clone());
            if s.rules < 1 {
                break;
            }
            touched = end_sub_workflows(s, &touched, event.at());
            if touched.is_empty() {
                break;
            }
        }
    }
}

/// The tasks running a sub-workflow that the change of `touched` lets end
/// (rules 1 on): its output task has its result (or the fallback standing
/// for it has), and nothing else of it runs or may start, as a run ends.
/// Each succeeds with that result; they are returned, changed in turn.
fn end_sub_workflows(s: &mut RunState, touched: &[String], at: Millis) -> Vec<String> {
    let parents: BTreeSet<String> = touched
        .iter()
        .filter_map(|id| s.tasks.get(id)?.scope.clone())
        .collect();
    let mut ended = Vec::new();
    for p in parents {
        if s.progress.active_in.get(&p).is_some_and(|n| *n > 0) {
            continue;
        }
        let Some(t) = s.tasks.get(&p).filter(|t| t.status == TaskStatus::Waiting) else {
            continue;
        };
        let Some(out) = t.child_output.as_deref().and_then(|o| s.resolved(o)) else {
            continue;
        };
        let (output, headers) = (out.output.clone(), out.headers.clone());
        if let Some(t) = s.tasks.get_mut(&p) {
            t.status = TaskStatus::Succeeded;
            t.output = output;
            t.headers = headers;
            t.ended_at = Some(at);
            ended.push(p);
        }
    }
    ended
}

/// Keeps `s.progress` up to date with the tasks whose status an event
/// changed (`touched`) and with those waiting for them: the tasks that
/// require one whose result now stands (its own, or that of the fallback
/// standing for it), and the fallback of one that failed.
fn track(s: &mut RunState, touched: Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let mut stack = touched.clone();
    let mut recheck = touched;
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(t) = s.tasks.get(&id) else { continue };
        if let Some(f) = &t.on_failure {
            recheck.push(f.clone());
        }
        if !s.progress.met.contains(&id) && s.resolved(&id).is_some() {
            s.progress.met.insert(id.clone());
            let progress = &mut s.progress;
            for d in progress.dependents.get(&id).into_iter().flatten() {
                if let Some(n) = progress.unmet.get_mut(d) {
                    *n = n.saturating_sub(1);
                }
                recheck.push(d.clone());
            }
        }
        // Their result is this one's, once they failed.
        if let Some(a) = s.progress.falls_back_for.get(&id) {
            stack.extend(a.iter().cloned());
        }
    }
    for id in recheck {
        place(s, &id);
    }
}

/// Files task `id` in `s.progress` as its status says.
fn place(s: &mut RunState, id: &str) {
    let Some(t) = s.tasks.get(id) else { return };
    let ready = t.status == TaskStatus::Pending
        && s.progress.unmet.get(id).is_none_or(|n| *n == 0)
        && s.wanted(t)
        && s.scope_open(t);
    let mut live = match t.status {
        TaskStatus::Pending => ready,
        TaskStatus::Running | TaskStatus::Retrying => true,
        TaskStatus::Waiting => t.spec.timeout.is_some(),
        TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled => false,
    };
    let active = ready
        || matches!(
            t.status,
            TaskStatus::Running | TaskStatus::Retrying | TaskStatus::Waiting
        );
    let parent = t.scope.clone();
    let waiting = t.status == TaskStatus::Waiting;
    let failed = (t.status == TaskStatus::Failed && t.scope.is_none() && t.on_failure.is_none())
        .then(|| (t.ended_at, t.id.clone()));
    let queued =
        live && t.status == TaskStatus::Pending && s.scope_limit(t.scope.as_deref()).is_some();
    live &= !queued;
    // Its place in its scope's queue, when there is a queue to put it in or
    // take it from.
    let entry = (queued || s.progress.queued.contains_key(&parent))
        .then(|| (Natural(t.local.clone()), t.id.clone()));
    let progress = &mut s.progress;
    match entry {
        Some(e) if queued => {
            progress.queued.entry(parent.clone()).or_default().insert(e);
        }
        Some(e) => {
            if let Some(q) = progress.queued.get_mut(&parent) {
                q.remove(&e);
                if q.is_empty() {
                    progress.queued.remove(&parent);
                }
            }
        }
        None => {}
    }
    if active != progress.active.contains(id) {
        if active {
            progress.active.insert(id.to_string());
        } else {
            progress.active.remove(id);
        }
        if let Some(n) = parent.map(|p| progress.active_in.entry(p).or_default()) {
            *n = if active { *n + 1 } else { n.saturating_sub(1) };
        }
    }
    if live {
        progress.live.insert(id.to_string());
    } else {
        progress.live.remove(id);
    }
    if waiting {
        progress.waiting.insert(id.to_string());
    } else {
        progress.waiting.remove(id);
    }
    if let Some(f) = failed {
        progress.failed.insert(f);
    }
}

/// Applies one event, noting in `touched` each task whose status it changed.
fn apply_event(s: &mut RunState, event: &Event, touched: &mut Vec<String>) {
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
            keys,
            rules,
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
                    inherited_keys: keys.as_deref().cloned().unwrap_or_default(),
                    rules: *rules,
                    ..RunState::default()
                };
            insert_tasks(s, None, &spec.tasks, touched);
            // A state machine's steps exist once dispatched: those a retry
            // keeps are made here, so that the run goes on after them.
            if spec.state_machine.is_some() {
                for id in preserved.keys() {
                    if let Some(step) = crate::sfn::run::new_step(s, id) {
                        s.tasks.insert(id.clone(), step);
                    }
                }
            }
            for (id, r) in preserved {
                match s.tasks.get_mut(id) {
                    Some(ts) => {
                        keep_result(ts, r, retry_of.as_deref());
                        touched.push(id.clone());
                    }
                    None => {
                        s.preserved_inside.insert(id.clone(), r.clone());
                    }
                }
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
                touched.push(task.clone());
                t.status = TaskStatus::Running;
                t.attempts = *attempt;
                t.key = Some(key.clone());
                t.inputs = Some(inputs.clone());
                t.started_at.get_or_insert(*at);
                t.attempt_started_at = Some(*at);
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
                    touched.push(task.clone());
                    succeed_parents(s, task, *at, touched);
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
            let retryable = crate::sfn::run::may_retry(
                s.spec.state_machine.is_some(),
                *retryable,
                *status,
                error,
            );
            if let Some(t) = s.tasks.get_mut(task) {
                // A task waiting for the tasks it runs fails only by its
                // timeout, and for good: a second attempt would make tasks
                // of the same ids as the first's, which cannot be told apart.
                let waiting = t.status == TaskStatus::Waiting;
                if (t.status == TaskStatus::Running || waiting) && t.attempts == *attempt {
                    touched.push(task.clone());
                    t.error = Some(error.clone());
                    t.http_status = *status;
                    let max = RetryPolicy::from_spec(t.spec.retry.as_ref())
                        .map(|p| p.max_attempts)
                        .unwrap_or(1);
                    if retryable && !waiting && *attempt < max {
                        t.status = TaskStatus::Retrying;
                        t.retry_at = None;
                        t.failed_attempts.push(FailedAttempt {
                            attempt: *attempt,
                            started_at: t.attempt_started_at,
                            ended_at: *at,
                            error: error.clone(),
                            http_status: *status,
                        });
                    } else {
                        t.status = TaskStatus::Failed;
                        t.ended_at = Some(*at);
                        fail_parents(s, task, *at, touched);
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
            concurrency,
            version,
            at,
        } => {
            let base = s.child_base(parent);
            let Some(p) = s.tasks.get_mut(parent) else {
                return;
            };
            if p.status != TaskStatus::Running {
                return;
            }
            touched.push(parent.clone());
            p.status = TaskStatus::Waiting;
            p.child_output = Some(format!("{base}{output}"));
            p.scope_inputs = scope_inputs.clone();
            p.child_concurrency = *concurrency;
            p.workflow_version = *version;
            p.wake_at = None;
            insert_tasks(s, Some(parent), tasks, touched);
            // A retry's: what succeeded in here the first time stands.
            if !s.preserved_inside.is_empty() {
                for local in tasks.keys() {
                    let id = format!("{base}{local}");
                    let Some(r) = s.preserved_inside.remove(&id) else {
                        continue;
                    };
                    if let Some(ts) = s.tasks.get_mut(&id) {
                        keep_result(ts, &r, s.retry_of.as_deref());
                        ts.ended_at = Some(*at);
                    }
                    succeed_parents(s, &id, *at, touched);
                }
            }
        }
        Event::TimerFired { task, at } => {
            if let Some(t) = s.tasks.get_mut(task) {
                if t.status == TaskStatus::Running && t.wake_at.is_some() {
                    t.status = TaskStatus::Succeeded;
                    t.output = Some(Value::Null);
                    t.ended_at = Some(*at);
                    touched.push(task.clone());
                    succeed_parents(s, task, *at, touched);
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
            touched.push(task.clone());
            match error {
                None => {
                    t.status = TaskStatus::Succeeded;
                    t.output = Some(output.clone());
                    t.error = None;
                    succeed_parents(s, task, *at, touched);
                }
                Some(e) => {
                    t.status = TaskStatus::Failed;
                    t.error = Some(e.clone());
                    fail_parents(s, task, *at, touched);
                }
            }
        }
        Event::TaskCancelled { task, reason, at } => {
            if let Some(t) = s.tasks.get_mut(task) {
                if !t.status.is_final() {
                    t.status = TaskStatus::Cancelled;
                    t.ended_at = Some(*at);
                    t.cancel_reason = Some(reason.clone());
                    touched.push(task.clone());
                }
            }
        }
        // The state it resumed is the one it had; the calls made again are
        // counted on their tasks.
        Event::RunResumed { repeated, .. } => {
            for task in repeated {
                if let Some(t) = s.tasks.get_mut(task) {
                    t.repeated_after_restart += 1;
                }
            }
        }
        Event::RunSucceeded { at, .. }
        | Event::RunFailed { at, .. }
        | Event::RunCancelled { at, .. } => {
            // What the run's end left unfinished will never finish: a task
            // beside the one that failed the run, one cut off by the run's
            // timeout or its cancellation, one that never became needed.
            let reason = unfinished_because(event);
            for t in s.tasks.values_mut() {
                if !t.status.is_final() {
                    t.status = TaskStatus::Cancelled;
                    t.ended_at = Some(*at);
                    t.cancel_reason = Some(reason.clone());
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

/// A finished output task of a sub-workflow (or the fallback standing for
/// it) finishes the task that produced it.
fn succeed_parents(s: &mut RunState, task: &str, at: Millis, touched: &mut Vec<String>) {
    // From rules 1 on, once the tasks beside the output have run too
    // (`end_sub_workflows`).
    if s.rules >= 1 {
        return;
    }
    let mut current = task.to_string();
    loop {
        let Some(t) = s.tasks.get(&current) else {
            return;
        };
        let (output, headers) = (t.output.clone(), t.headers.clone());
        let root = s.stands_for(&current);
        let Some(parent) = s.tasks.get(&root).and_then(|t| t.scope.clone()) else {
            return;
        };
        let Some(p) = s.tasks.get_mut(&parent) else {
            return;
        };
        if p.status != TaskStatus::Waiting || p.child_output.as_deref() != Some(root.as_str()) {
            return;
        }
        p.status = TaskStatus::Succeeded;
        p.output = output;
        p.headers = headers;
        p.ended_at = Some(at);
        touched.push(parent.clone());
        current = parent;
    }
}

/// A task of a sub-workflow that failed for good fails the task that produced
/// it, unless it has a fallback (which then runs instead). Each task it fails
/// says the failure as `task "<full id>" failed: <cause>`, naming the task
/// that failed as the run's task list shows it (`Each/do_1/Charge`): the
/// path down to it is in its id, so the levels between add nothing.
fn fail_parents(s: &mut RunState, task: &str, at: Millis, touched: &mut Vec<String>) {
    let mut current = task.to_string();
    // The failure as the tasks above the one that failed say it.
    let mut said: Option<(String, Option<u16>)> = None;
    loop {
        let Some(t) = s.tasks.get(&current) else {
            return;
        };
        if t.on_failure.is_some() {
            return;
        }
        let Some(parent) = t.scope.clone() else {
            return;
        };
        let (error, status) = match said.take() {
            Some(said) => said,
            None => {
                // A `while` goes on through a task of its own that runs
                // `while` again (`condition`): the user never named it, so
                // its failure is said as the loop's.
                let own_iteration = s.tasks.get(&parent).is_some_and(|p| {
                    p.spec.run == t.spec.run && crate::builtins::is_builtin(&t.spec.run)
                });
                let cause = t.error.clone().unwrap_or_default();
                let error = if own_iteration {
                    cause
                } else {
                    format!("task {:?} failed: {cause}", t.id)
                };
                (error, t.http_status)
            }
        };
        let Some(p) = s.tasks.get_mut(&parent) else {
            return;
        };
        if p.status != TaskStatus::Waiting {
            return;
        }
        p.status = TaskStatus::Failed;
        p.error = Some(error.clone());
        p.http_status = status;
        p.ended_at = Some(at);
        touched.push(parent.clone());
        said = Some((error, status));
        current = parent;
    }
}

/// What should happen next, at time `now`. Pure.
pub fn decide(s: &RunState, now: Millis) -> Vec<Action> {
    let actions = decide_among(s, now, false);
    // The tasks `Progress` keeps are all that matter: the engine's tests
    // hold each decision to the one made looking at every task.
    #[cfg(test)]
    assert_eq!(
        actions,
        decide_among(s, now, true),
        "the tracked tasks decide otherwise than all of them"
    );
    actions
}

/// The tasks `decide` goes through, in id order: every task (`all`), or
/// those `Progress` keeps for it.
fn considered(s: &RunState, all: bool) -> Box<dyn Iterator<Item = &TaskState> + '_> {
    if all {
        Box::new(s.tasks.values())
    } else {
        Box::new(s.progress.live.iter().filter_map(|id| s.tasks.get(id)))
    }
}

fn decide_among(s: &RunState, now: Millis, all: bool) -> Vec<Action> {
    if s.is_finished() || s.run_id.is_empty() {
        return Vec::new();
    }
    if let Some(machine) = s.spec.state_machine.as_deref() {
        return crate::sfn::run::decide(s, machine, now);
    }
    // A task waiting past its timeout for the tasks it runs fails, and what
    // it runs is cancelled; before the run's own time is up, when that came
    // later (a server down across both).
    let cutoff = match s.deadline {
        Some(d) if now >= d => d.saturating_sub(1),
        _ => now,
    };
    let timed_out = timed_out_waiting(s, cutoff, all);
    if !timed_out.is_empty() {
        return timed_out;
    }
    if let Some(d) = s.deadline {
        if now >= d {
            // A `sleep` that ended before the run's time was up (a server
            // down across both) ended: its history says so, not cancelled;
            // one whose own timeout came first timed out.
            let slept: Vec<Action> = s
                .tasks
                .values()
                .filter(|t| t.status == TaskStatus::Running)
                .filter_map(|t| {
                    let (at, timed_out) = sleep_end(t)?;
                    (at <= d).then(|| sleep_action(t, timed_out))
                })
                .collect();
            if !slept.is_empty() {
                return slept;
            }
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
    // A workflow task that failed for good without a fallback fails the run
    // (the earliest one).
    let failed = if all {
        s.tasks
            .values()
            .filter(|t| {
                t.scope.is_none() && t.status == TaskStatus::Failed && t.on_failure.is_none()
            })
            .min_by_key(|t| (t.ended_at, t.id.clone()))
    } else {
        s.progress
            .failed
            .first()
            .and_then(|(_, id)| s.tasks.get(id))
    };
    if let Some(t) = failed {
        return vec![Action::Finish(Finish::Failed(RunError {
            task: Some(t.id.clone()),
            message: t.error.clone().unwrap_or_default(),
            status: t.http_status,
        }))];
    }
    let mut actions = Vec::new();
    // (Those tracked leave out waiting tasks with no timeout.)
    let mut busy = !all && !s.progress.waiting.is_empty();
    // Ready tasks of scopes with a `concurrency` limit, started after the loop.
    let mut limited: BTreeMap<Option<&str>, (usize, Vec<&TaskState>)> = BTreeMap::new();
    for t in considered(s, all) {
        match t.status {
            TaskStatus::Pending => {
                // A fallback starts only once the task it stands for failed for good.
                let ready = s.wanted(t)
                    && t.requires.iter().all(|r| s.resolved(r).is_some())
                    && s.scope_open(t);
                if !ready {
                    continue;
                }
                let scope = t.scope.as_deref();
                if let Some(limit) = s.scope_limit(scope) {
                    limited
                        .entry(scope)
                        .or_insert_with(|| (limit, Vec::new()))
                        .1
                        .push(t);
                    continue;
                }
                actions.push(Action::Dispatch {
                    task: t.id.clone(),
                    attempt: 1,
                    key: s.key_of(&t.id),
                    spec: s.dispatch_spec(t),
                });
            }
            TaskStatus::Retrying => {
                busy = true;
                let next = t.attempts + 1;
                match t.retry_at {
                    None => {
                        let policy = RetryPolicy::from_spec(t.spec.retry.as_ref())
                            .unwrap_or_else(|_| RetryPolicy::none());
                        let seed = backoff_seed(&s.run_id, &t.id, t.attempts);
                        let delay = policy.backoff.delay(t.attempts, sample_from(&seed));
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
                        key: s.key_of(&t.id),
                        spec: s.dispatch_spec(t),
                    }),
                    Some(due) => actions.push(Action::StartTimer { at: due }),
                }
            }
            TaskStatus::Running => {
                busy = true;
                match (sleep_end(t), t.callback.as_ref().and(t.callback_deadline)) {
                    (Some((at, _)), _) if at > now => actions.push(Action::StartTimer { at }),
                    (Some((_, timed_out)), _) => actions.push(sleep_action(t, timed_out)),
                    (None, Some(d)) if d <= now => actions.push(Action::ExpireCallback {
                        task: t.id.clone(),
                        attempt: t.attempts,
                    }),
                    (None, Some(d)) => actions.push(Action::StartTimer { at: d }),
                    (None, None) => {}
                }
            }
            TaskStatus::Waiting => {
                busy = true;
                // (One past due waits for what came before it inside it.)
                if let Some(d) = attempt_deadline(t).filter(|d| *d > now) {
                    actions.push(Action::StartTimer { at: d });
                }
            }
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled => {}
        }
    }
    if !all {
        // The first of those queued that may start; no more than may run.
        for (scope, queue) in &s.progress.queued {
            let Some(limit) = s.scope_limit(scope.as_deref()) else {
                continue;
            };
            let ready: Vec<&TaskState> = queue
                .iter()
                .filter_map(|(_, id)| s.tasks.get(id))
                .filter(|t| {
                    t.status == TaskStatus::Pending
                        && s.wanted(t)
                        && t.requires.iter().all(|r| s.resolved(r).is_some())
                        && s.scope_open(t)
                })
                .take(limit)
                .collect();
            if !ready.is_empty() {
                limited.insert(scope.as_deref(), (limit, ready));
            }
        }
    }
    if !limited.is_empty() {
        // In flight: running (or sleeping, or waiting for a callback), between
        // attempts, or waiting for its own sub-workflow.
        let mut inflight: BTreeMap<Option<&str>, usize> = BTreeMap::new();
        let busy_tasks: Box<dyn Iterator<Item = &TaskState>> = if all {
            Box::new(s.tasks.values())
        } else {
            Box::new(
                considered(s, false)
                    .filter(|t| t.status != TaskStatus::Waiting)
                    .chain(s.progress.waiting.iter().filter_map(|id| s.tasks.get(id))),
            )
        };
        for t in busy_tasks {
            if matches!(
                t.status,
                TaskStatus::Running | TaskStatus::Retrying | TaskStatus::Waiting
            ) && limited.contains_key(&t.scope.as_deref())
            {
                *inflight.entry(t.scope.as_deref()).or_default() += 1;
            }
        }
        for (scope, (limit, mut ready)) in limited {
            let free = limit.saturating_sub(inflight.get(&scope).copied().unwrap_or(0));
            if free == 0 {
                // Busy: something of that scope is in flight and will free a slot.
                continue;
            }
            // In the order of their ids, numbers by value (`do_2` before
            // `do_10`): the first `free` of them, without sorting them all.
            let order = |a: &&TaskState, b: &&TaskState| natural_cmp(&a.local, &b.local);
            if ready.len() > free {
                ready.select_nth_unstable_by(free - 1, order);
                ready.truncate(free);
            }
            ready.sort_by(order);
            for t in ready.into_iter().take(free) {
                actions.push(Action::Dispatch {
                    task: t.id.clone(),
                    attempt: 1,
                    key: s.key_of(&t.id),
                    spec: s.dispatch_spec(t),
                });
            }
        }
    }
    if actions.is_empty() && !busy {
        // Nothing runs and nothing can start. As in Fission Workflows, a run
        // succeeds only then, once every task that can run has run, not as
        // soon as its output task has: a task beside it (a side effect no
        // other task needs) is not cut off.
        if let Some(t) = s.resolved(&s.spec.output) {
            return vec![Action::Finish(Finish::Succeeded {
                output: t.output.clone().unwrap_or(Value::Null),
                headers: t.headers.clone(),
            })];
        }
        // Otherwise end the run rather than hang.
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

/// The tasks waiting for what they run whose timeout passed by `cutoff`: each
/// fails, and what it runs is cancelled. Earliest first, as they came while
/// the server ran: one inside another whose time came first (or with it)
/// goes with it; one with something inside it whose time came before (a
/// `sleep` due, a retry, a timeout of its own) waits for that first.
fn timed_out_waiting(s: &RunState, cutoff: Millis, all: bool) -> Vec<Action> {
    let due = |t: &TaskState| {
        if t.status != TaskStatus::Waiting {
            return None;
        }
        attempt_deadline(t).filter(|d| *d <= cutoff)
    };
    // When the next thing of `t` comes that time alone brings.
    let next = |t: &TaskState| match t.status {
        TaskStatus::Running => [
            sleep_end(t).map(|(at, _)| at),
            t.callback.as_ref().and(t.callback_deadline),
        ]
        .into_iter()
        .flatten()
        .min(),
        TaskStatus::Retrying => t.retry_at,
        TaskStatus::Waiting => attempt_deadline(t),
        _ => None,
    };
    let mut out = Vec::new();
    for t in considered(s, all) {
        let Some(d) = due(t) else { continue };
        if s.inside_any(t, |p| due(p).is_some_and(|pd| pd <= d)) {
            continue;
        }
        let inside: Vec<&TaskState> = s
            .tasks
            .values()
            .filter(|c| s.inside_any(c, |p| p.id == t.id))
            .collect();
        if inside.iter().any(|c| next(c).is_some_and(|cd| cd < d)) {
            continue;
        }
        out.push(Action::TimeOut {
            task: t.id.clone(),
            attempt: t.attempts,
        });
        let reason = format!("task {:?}, which ran it, timed out", t.id);
        out.extend(
            inside
                .into_iter()
                .filter(|c| !c.status.is_final())
                .map(|c| Action::CancelTask {
                    task: c.id.clone(),
                    reason: reason.clone(),
                }),
        );
    }
    out
}

/// When a `sleep` task's attempt ends, and whether by its task's timeout
/// (one shorter than the sleep) rather than by waking.
fn sleep_end(t: &TaskState) -> Option<(Millis, bool)> {
    let wake = t.wake_at?;
    Some(match attempt_deadline(t).filter(|d| *d < wake) {
        Some(d) => (d, true),
        None => (wake, false),
    })
}

/// What ends a `sleep` task whose time has come (`sleep_end`).
fn sleep_action(t: &TaskState, timed_out: bool) -> Action {
    if timed_out {
        Action::TimeOut {
            task: t.id.clone(),
            attempt: t.attempts,
        }
    } else {
        Action::FireTimer { task: t.id.clone() }
    }
}

/// When the current attempt of `t` is past its task's `timeout`, if it has one.
fn attempt_deadline(t: &TaskState) -> Option<Millis> {
    let limit = t.spec.timeout.as_deref().and_then(parse_duration)?;
    Some(
        t.attempt_started_at?
            .saturating_add(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// A task's local id, ordered as tasks of a scope with a `concurrency` limit
/// start: by `natural_cmp`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Natural(String);

impl Ord for Natural {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        natural_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for Natural {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares ids with runs of digits by their value: `do_2` < `do_10`.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len()).then_with(|| a.cmp(b))
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
    /// The first attempt of a `sleep` task, dispatched at `at` to wake at `wake`.
    fn sleeping(task: &str, at: Millis, wake: Millis) -> Event {
        Event::TaskDispatched {
            task: task.into(),
            attempt: 1,
            key: "k".into(),
            inputs: Value::Null,
            at,
            wake_at: Some(wake),
        }
    }

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
        workflow_with(reqs, output, retries, &[], None)
    }

    /// Like `workflow`, where `fallbacks[i]` gives task `t{i}` a fallback
    /// `f{i}` (1), or one that has a fallback `g{i}` of its own (2), and the
    /// workflow runs at most `concurrency` of its tasks at once.
    fn workflow_with(
        reqs: &[Vec<usize>],
        output: usize,
        retries: u32,
        fallbacks: &[u8],
        concurrency: Option<u32>,
    ) -> WorkflowSpec {
        let mut spec = workflow_plain(reqs, output, retries);
        spec.concurrency = concurrency;
        for (i, fb) in fallbacks.iter().enumerate().take(reqs.len()) {
            if *fb == 0 {
                continue;
            }
            let fallback = |on_failure: Option<String>| TaskSpec {
                run: "fn".into(),
                on_failure,
                ..Default::default()
            };
            if let Some(t) = spec.tasks.get_mut(&format!("t{i}")) {
                t.on_failure = Some(format!("f{i}"));
            }
            let second = (*fb >= 2).then(|| format!("g{i}"));
            if let Some(g) = &second {
                spec.tasks.insert(g.clone(), fallback(None));
            }
            spec.tasks.insert(format!("f{i}"), fallback(second));
        }
        spec
    }

    fn workflow_plain(reqs: &[Vec<usize>], output: usize, retries: u32) -> WorkflowSpec {
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
            keys: None,
            rules: RULES,
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
                            assert!(s.resolved(r).is_some(), "{task} before {r}");
                        }
                        if let Some(x) = &s.tasks[&task].fallback_of {
                            assert_eq!(
                                s.tasks[x].status,
                                TaskStatus::Failed,
                                "fallback {task} while {x} did not fail"
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
                    Action::TimeOut { .. } => unreachable!("no timeouts here"),
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
            if let Some(limit) = s.spec.concurrency {
                let inflight = s
                    .tasks
                    .values()
                    .filter(|t| {
                        matches!(
                            t.status,
                            TaskStatus::Running | TaskStatus::Retrying | TaskStatus::Waiting
                        )
                    })
                    .count();
                assert!(inflight <= limit as usize, "{inflight} in flight");
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
            fallbacks in proptest::collection::vec(0u8..3, 0..8),
            concurrency in proptest::option::of(1u32..4),
        ) {
            let spec = workflow_with(&reqs, output, retries, &fallbacks, concurrency);
            let (events, s) = simulate(spec, &choices);
            // A run succeeds with its output task's result, or that of the
            // fallback standing for it; it fails on a task with no fallback.
            match s.status {
                RunStatus::Succeeded => {
                    let out = s.resolved(&s.spec.output).expect("the output is settled");
                    prop_assert_eq!(s.output.clone(), out.output.clone());
                }
                RunStatus::Failed => {
                    if let Some(t) = s.error.as_ref().and_then(|e| e.task.as_ref()) {
                        prop_assert_eq!(s.tasks[t].status, TaskStatus::Failed);
                        prop_assert!(s.tasks[t].on_failure.is_none());
                    }
                }
                other => prop_assert!(false, "{:?}", other),
            }
            // A fallback ran only for a task that failed for good.
            for t in s.tasks.values().filter(|t| t.attempts > 0) {
                if let Some(x) = &t.fallback_of {
                    prop_assert_eq!(s.tasks[x].status, TaskStatus::Failed);
                }
            }
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

    /// Task names that overlap as substrings, one empty, one of two bytes per
    /// character, one with the separator of full ids in it.
    const NAMES: [&str; 8] = ["a", "ab", "b", "do_1", "do_10", "", "é", "x/a"];

    /// A run whose tasks (named from `NAMES`) have sub-workflows, nested.
    fn nested_run(top: &[&str], children: &[(usize, Vec<&str>)]) -> RunState {
        let named = |names: &[&str]| -> BTreeMap<String, TaskSpec> {
            names
                .iter()
                .map(|n| (n.to_string(), TaskSpec::default()))
                .collect()
        };
        let spec = WorkflowSpec {
            output: top[0].to_string(),
            tasks: named(top),
            ..Default::default()
        };
        let mut s = RunState::fold(&[start(spec)]);
        for (pick, names) in children {
            let ids: Vec<String> = s.tasks.keys().cloned().collect();
            let parent = ids[pick % ids.len()].clone();
            apply(&mut s, &dispatched(&parent, 1, 0));
            apply(
                &mut s,
                &Event::TasksAdded {
                    parent,
                    tasks: named(names),
                    output: names[0].to_string(),
                    scope_inputs: None,
                    concurrency: None,
                    version: None,
                    at: 0,
                },
            );
        }
        s
    }

    /// An expression naming task `NAMES[n]` in one of the literal forms.
    fn naming(form: usize, n: usize) -> String {
        let name = NAMES[n];
        // `$.Tasks.X` takes an identifier.
        let ident = !name.is_empty() && !name.contains('/');
        match form {
            0 if ident => format!("$.Tasks.{name}.Output"),
            1 => format!("task('{name}').Status"),
            2 => "output()".to_string(),
            3 => "task().Id".to_string(),
            _ => format!("output(\"{name}\")"),
        }
    }

    proptest! {
        /// Expressions that name tasks literally give the same results with
        /// just the tasks they name in `$.Tasks` as with every task.
        #[test]
        fn a_scope_naming_tasks_gives_the_results_of_the_full_scope(
            top in proptest::sample::subsequence(NAMES.to_vec(), 1..NAMES.len()),
            children in proptest::collection::vec(
                (0usize..16, proptest::sample::subsequence(NAMES.to_vec(), 1..4)),
                0..5,
            ),
            pick in 0usize..64,
            exprs in proptest::collection::vec(
                proptest::collection::vec((0usize..5, 0..NAMES.len()), 1..3),
                1..3,
            ),
        ) {
            let mut s = nested_run(&top, &children);
            let pending: Vec<String> = s
                .tasks
                .values()
                .filter(|t| t.status == TaskStatus::Pending)
                .map(|t| t.id.clone())
                .collect();
            for id in pending.iter().skip(1) {
                apply(&mut s, &dispatched(id, 1, 0));
                apply(&mut s, &succeeded(id, json!(id), 1));
            }
            let ids: Vec<String> = s.tasks.keys().cloned().collect();
            let id = &ids[pick % ids.len()];
            // One form alone is resolved without JavaScript, two joined with it.
            let inputs: BTreeMap<String, Value> = exprs
                .iter()
                .enumerate()
                .map(|(i, parts)| {
                    let forms: Vec<String> = parts.iter().map(|(f, n)| naming(*f, *n)).collect();
                    (format!("in{i}"), json!(format!("{{ {} }}", forms.join(" + "))))
                })
                .collect();
            let mut sources = Vec::new();
            for v in inputs.values() {
                crate::expr::all_expressions(v, &mut sources);
            }
            prop_assert!(crate::expr::names_tasks_literally(&sources));
            let local = &s.tasks[id].local;
            let named = crate::expr::resolve_inputs(&s.scope_naming(id, &sources, true), local, &inputs);
            let full = crate::expr::resolve_inputs(&s.scope_for(id), local, &inputs);
            prop_assert_eq!(named, full);
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

    /// A task waiting for its next attempt shows when it is due; cancelled
    /// meanwhile, it shows none (no attempt will come).
    #[test]
    fn a_cancelled_task_shows_no_next_attempt() {
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
        apply(
            &mut s,
            &Event::RetryScheduled {
                task: "t0".into(),
                attempt: 2,
                due: 100,
                at: 10,
            },
        );
        let shown = |s: &RunState| crate::api::run_json(s)["tasks"][0]["retry_at"].clone();
        assert_eq!(shown(&s), json!(100));
        apply(
            &mut s,
            &Event::RunCancelled {
                reason: "by test".into(),
                at: 20,
            },
        );
        assert_eq!(shown(&s), Value::Null);
        let task = &crate::api::run_json(&s)["tasks"][0];
        assert_eq!(task["status"], "cancelled");
        assert_eq!(task["cancel_reason"], "the run was cancelled", "{task}");
    }

    /// A task cut off by its run's failure, and one the run never reached,
    /// say why they are `cancelled`; the task that failed says its error.
    #[test]
    fn unfinished_tasks_say_why_they_are_cancelled() {
        // t0 and t1 side by side, t2 after both.
        let spec = workflow(&[vec![], vec![], vec![0, 1]], 2, 0);
        let mut s = RunState::fold(&[start(spec)]);
        for t in ["t0", "t1"] {
            apply(&mut s, &dispatched(t, 1, 0));
        }
        apply(&mut s, &failed("t1", 1, "boom", Some(500), 5));
        let Some(Action::Finish(f @ Finish::Failed(_))) = decide(&s, 5).pop() else {
            panic!("the run fails with t1: {:?}", decide(&s, 5));
        };
        apply(&mut s, &finish_event(&f, 5));
        let shown = crate::api::run_json(&s);
        let reason = |i: usize| shown["tasks"][i]["cancel_reason"].clone();
        assert_eq!(reason(0), json!("the run failed at task \"t1\""), "{shown}");
        assert_eq!(reason(1), Value::Null, "t1 failed: {shown}");
        assert_eq!(shown["tasks"][1]["error"], "boom");
        assert_eq!(reason(2), json!("the run failed at task \"t1\""), "{shown}");
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

    /// A retry's kept result of a task inside a scope stands once its
    /// parent adds it again, in the live run as in a replay of its events
    /// (a restart between the start and the parent's expansion).
    #[test]
    fn a_kept_result_inside_a_scope_applies_when_its_parent_adds_it() {
        let spec = workflow(&[vec![]], 0, 1);
        let Event::RunStarted {
            run_id,
            workflow,
            version,
            spec,
            input,
            at,
            ..
        } = start(spec)
        else {
            unreachable!()
        };
        let kept = TaskResult {
            output: json!("first time"),
            headers: Headers::new(),
            inputs: Value::Null,
            from: None,
        };
        let events = vec![
            Event::RunStarted {
                run_id,
                workflow,
                version,
                spec,
                input,
                at,
                retry_of: Some("r0".into()),
                preserved: BTreeMap::from([("t0/a".to_string(), kept)]),
                keys: None,
                rules: RULES,
            },
            dispatched("t0", 1, 0),
            Event::TasksAdded {
                parent: "t0".into(),
                tasks: BTreeMap::from([
                    ("a".to_string(), TaskSpec::default()),
                    (
                        "b".to_string(),
                        TaskSpec {
                            requires: vec!["a".into()],
                            ..Default::default()
                        },
                    ),
                ]),
                output: "b".into(),
                scope_inputs: None,
                concurrency: None,
                version: None,
                at: 5,
            },
        ];
        // Before its parent adds it, it waits in the kept results.
        let early = RunState::fold(&events[..2]);
        assert!(early.preserved_inside.contains_key("t0/a"));
        let s = RunState::fold(&events);
        assert_eq!(s.tasks["t0/a"].status, TaskStatus::Succeeded);
        assert_eq!(s.tasks["t0/a"].output, Some(json!("first time")));
        assert!(s.preserved_inside.is_empty());
        // Only the task after it is dispatched.
        let started: Vec<_> = decide(&s, 6)
            .into_iter()
            .filter_map(|a| match a {
                Action::Dispatch { task, .. } => Some(task),
                _ => None,
            })
            .collect();
        assert_eq!(started, ["t0/b"]);
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
                concurrency: None,
                version: None,
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

    #[test]
    fn a_sleep_due_before_the_run_timed_out_ends_before_the_run_fails() {
        let mut spec = workflow(&[vec![]], 0, 1);
        spec.timeout = Some("1s".into());
        let mut s = RunState::fold(&[start(spec)]);
        apply(&mut s, &sleeping("t0", 0, 500));
        // Asked long after both (a server down across them).
        assert_eq!(
            decide(&s, 5000),
            vec![Action::FireTimer { task: "t0".into() }]
        );
        apply(
            &mut s,
            &Event::TimerFired {
                task: "t0".into(),
                at: 5000,
            },
        );
        assert_eq!(s.tasks["t0"].status, TaskStatus::Succeeded);
        assert!(matches!(
            &decide(&s, 5000)[0],
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

    fn failed(task: &str, attempt: u32, error: &str, status: Option<u16>, at: Millis) -> Event {
        Event::TaskFailed {
            task: task.into(),
            attempt,
            error: error.into(),
            status,
            retryable: false,
            at,
        }
    }

    fn dispatched_ids(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Dispatch { task, .. } => Some(task.clone()),
                _ => None,
            })
            .collect()
    }

    /// t0 (fallback f0) -> t1, the output.
    fn with_fallback() -> RunState {
        let spec = workflow_with(&[vec![], vec![0]], 1, 1, &[1], None);
        RunState::fold(&[start(spec)])
    }

    #[test]
    fn a_fallback_runs_only_when_its_task_fails_and_its_output_stands_for_it() {
        let mut s = with_fallback();
        assert_eq!(s.tasks["f0"].fallback_of.as_deref(), Some("t0"));
        assert_eq!(dispatched_ids(&decide(&s, 0)), ["t0"], "never on its own");
        apply(&mut s, &dispatched("t0", 1, 0));
        apply(
            &mut s,
            &failed("t0", 1, "the function answered 503", Some(503), 1),
        );
        let a = decide(&s, 1);
        assert_eq!(dispatched_ids(&a), ["f0"], "the run goes on: {a:?}");
        // With no inputs of its own, the fallback gets the failure.
        let Action::Dispatch { spec, .. } = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(
            spec.named_inputs()["default"],
            json!({"task": "t0", "message": "the function answered 503", "status": 503})
        );
        apply(&mut s, &dispatched("f0", 1, 1));
        apply(&mut s, &succeeded("f0", json!("plan b"), 2));
        assert_eq!(dispatched_ids(&decide(&s, 2)), ["t1"]);
        // t1 sees f0's output as t0's, and t0 still as failed, with its error.
        let scope = s.scope_for("t1");
        assert_eq!(scope["Tasks"]["t0"]["Output"], json!("plan b"));
        // Fission Workflows' names: `$.Tasks.X.Status == 'FAILED'`.
        assert_eq!(scope["Tasks"]["t0"]["Status"], json!("FAILED"));
        assert_eq!(
            scope["Tasks"]["t0"]["Error"],
            json!("the function answered 503")
        );
        apply(&mut s, &dispatched("t1", 1, 2));
        apply(&mut s, &succeeded("t1", json!("done"), 3));
        assert_eq!(
            decide(&s, 3),
            vec![Action::Finish(Finish::Succeeded {
                output: json!("done"),
                headers: Headers::new()
            })]
        );
    }

    #[test]
    fn an_unneeded_fallback_stays_pending_and_a_failed_one_fails_the_run() {
        let mut s = with_fallback();
        apply(&mut s, &dispatched("t0", 1, 0));
        apply(&mut s, &succeeded("t0", json!(1), 1));
        assert_eq!(dispatched_ids(&decide(&s, 1)), ["t1"]);
        assert_eq!(s.tasks["f0"].status, TaskStatus::Pending);

        let mut s = with_fallback();
        apply(&mut s, &dispatched("t0", 1, 0));
        apply(&mut s, &failed("t0", 1, "first", None, 1));
        apply(&mut s, &dispatched("f0", 1, 1));
        apply(&mut s, &failed("f0", 1, "second", Some(500), 2));
        assert_eq!(
            decide(&s, 2),
            vec![Action::Finish(Finish::Failed(RunError {
                task: Some("f0".into()),
                message: "second".into(),
                status: Some(500),
            }))]
        );
    }

    #[test]
    fn the_output_tasks_fallback_gives_the_runs_output() {
        let spec = workflow_with(&[vec![]], 0, 1, &[2], None);
        let mut s = RunState::fold(&[start(spec)]);
        for (t, at) in [("t0", 0), ("f0", 1)] {
            apply(&mut s, &dispatched(t, 1, at));
            apply(&mut s, &failed(t, 1, "no", None, at + 1));
        }
        assert_eq!(
            dispatched_ids(&decide(&s, 2)),
            ["g0"],
            "a chain of fallbacks"
        );
        apply(&mut s, &dispatched("g0", 1, 2));
        apply(&mut s, &succeeded("g0", json!("last resort"), 3));
        assert!(matches!(
            &decide(&s, 3)[..],
            [Action::Finish(Finish::Succeeded { output, .. })] if *output == json!("last resort")
        ));
    }

    /// Task `p` of a one-task workflow runs `tasks` as its sub-workflow.
    fn waiting_parent(
        tasks: BTreeMap<String, TaskSpec>,
        output: &str,
        concurrency: Option<u32>,
    ) -> RunState {
        waiting_parent_with(tasks, output, concurrency, |_| {})
    }

    /// `waiting_parent`, with `p` as `write` makes it.
    fn waiting_parent_with(
        tasks: BTreeMap<String, TaskSpec>,
        output: &str,
        concurrency: Option<u32>,
        write: impl FnOnce(&mut TaskSpec),
    ) -> RunState {
        let mut spec = workflow(&[vec![]], 0, 1);
        let mut p = spec.tasks.remove("t0").unwrap();
        write(&mut p);
        spec.tasks.insert("p".into(), p);
        spec.output = "p".into();
        let mut s = RunState::fold(&[start(spec)]);
        apply(&mut s, &dispatched("p", 1, 0));
        apply(
            &mut s,
            &Event::TasksAdded {
                parent: "p".into(),
                tasks,
                output: output.into(),
                scope_inputs: None,
                concurrency,
                version: None,
                at: 0,
            },
        );
        s
    }

    #[test]
    fn a_fallback_in_a_sub_workflow_keeps_its_parent_waiting_then_finishes_it() {
        let tasks = BTreeMap::from([
            (
                "a".to_string(),
                TaskSpec {
                    on_failure: Some("b".into()),
                    ..Default::default()
                },
            ),
            ("b".to_string(), TaskSpec::default()),
        ]);
        let mut s = waiting_parent(tasks, "a", None);
        assert_eq!(s.tasks["p/a"].on_failure.as_deref(), Some("p/b"));
        apply(&mut s, &dispatched("p/a", 1, 0));
        apply(&mut s, &failed("p/a", 1, "no", None, 1));
        assert_eq!(s.tasks["p"].status, TaskStatus::Waiting);
        assert_eq!(dispatched_ids(&decide(&s, 1)), ["p/b"]);
        apply(&mut s, &dispatched("p/b", 1, 1));
        apply(&mut s, &succeeded("p/b", json!("b"), 2));
        assert_eq!(s.tasks["p"].status, TaskStatus::Succeeded);
        assert_eq!(s.tasks["p"].output, Some(json!("b")));
    }

    #[test]
    fn a_task_waiting_past_its_timeout_fails_for_good_and_what_it_runs_is_cancelled() {
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
        let mut s = waiting_parent_with(tasks, "b", None, |p| {
            p.timeout = Some("1s".into());
            // Retries would make tasks of the same ids again: not for this task.
            p.retry = Some(serde_json::from_value(json!({"maxAttempts": 3})).unwrap());
        });
        apply(&mut s, &dispatched("p/a", 1, 10));
        assert!(decide(&s, 999).contains(&Action::StartTimer { at: 1000 }));
        let why = "task \"p\", which ran it, timed out".to_string();
        assert_eq!(
            decide(&s, 1000),
            vec![
                Action::TimeOut {
                    task: "p".into(),
                    attempt: 1
                },
                Action::CancelTask {
                    task: "p/a".into(),
                    reason: why.clone()
                },
                Action::CancelTask {
                    task: "p/b".into(),
                    reason: why.clone()
                },
            ]
        );
        apply(
            &mut s,
            &Event::TaskFailed {
                task: "p".into(),
                attempt: 1,
                error: "the task timed out after 1s (its timeout)".into(),
                status: None,
                retryable: true,
                at: 1000,
            },
        );
        for c in ["p/a", "p/b"] {
            apply(
                &mut s,
                &Event::TaskCancelled {
                    task: c.into(),
                    reason: why.clone(),
                    at: 1000,
                },
            );
            assert_eq!(s.tasks[c].cancel_reason.as_deref(), Some(why.as_str()));
        }
        assert_eq!(s.tasks["p"].status, TaskStatus::Failed);
        let [Action::Finish(Finish::Failed(e))] = &decide(&s, 1000)[..] else {
            panic!("{:?}", decide(&s, 1000));
        };
        assert!(e.is_timeout(), "{e:?}");
        assert_eq!(e.code(RunStatus::Failed), "run_timed_out");
    }

    /// Times in the scope are nanoseconds since the epoch from rules 2 (as
    /// Fission Workflows had them); a run started before reads them as the
    /// RFC 3339 text it ran with.
    #[test]
    fn scope_times_are_nanoseconds_from_rules_2() {
        for (rules, want) in [
            (1, json!("2025-12-04T12:00:00.123Z")),
            (RULES, json!(1_764_849_600_123_000_000u64)),
        ] {
            let tasks = BTreeMap::from([("x".to_string(), TaskSpec::default())]);
            let mut s = waiting_parent(tasks, "x", None);
            s.rules = rules;
            s.started_at = 1_764_849_600_123;
            apply(&mut s, &dispatched("p/x", 1, 1_764_849_600_123));
            let scope = s.scope_for("p/x");
            assert_eq!(scope["Invocation"]["CreatedAt"], want, "rules {rules}");
            assert_eq!(scope["Tasks"]["x"]["CreatedAt"], want, "rules {rules}");
        }
    }

    /// A sub-workflow ends once the tasks beside its output have run; in a
    /// run started before that rule (`rules` 0), it ended at its output, and
    /// its history reads back so.
    #[test]
    fn a_sub_workflow_waits_for_the_tasks_beside_its_output_from_rules_1() {
        for rules in [0, RULES] {
            let tasks = BTreeMap::from([
                ("x".to_string(), TaskSpec::default()),
                ("y".to_string(), TaskSpec::default()),
            ]);
            let mut s = waiting_parent(tasks, "x", None);
            s.rules = rules;
            apply(&mut s, &dispatched("p/x", 1, 1));
            apply(&mut s, &dispatched("p/y", 1, 1));
            apply(&mut s, &succeeded("p/x", json!("x"), 2));
            let want = if rules == 0 {
                TaskStatus::Succeeded
            } else {
                TaskStatus::Waiting
            };
            assert_eq!(s.tasks["p"].status, want, "rules {rules}");
            apply(&mut s, &succeeded("p/y", json!("y"), 3));
            assert_eq!(s.tasks["p"].status, TaskStatus::Succeeded, "rules {rules}");
            assert_eq!(s.tasks["p"].output, Some(json!("x")));
            assert_eq!(s.tasks["p"].ended_at, Some(if rules == 0 { 2 } else { 3 }));
        }
    }

    /// The iterations of a `while` are numbered under the loop
    /// (`W/3/action`), and an expression in one sees that iteration's tasks
    /// by their names; a run an earlier version started (without
    /// `rules`) is read back with the nested ids it made then.
    #[test]
    fn loop_iterations_are_numbered_and_old_runs_keep_their_nested_ids() {
        let task = |run: &str, requires: &[&str]| TaskSpec {
            run: run.into(),
            requires: requires.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        let iteration = || {
            BTreeMap::from([
                ("wait".to_string(), task("sleep", &[])),
                ("action".to_string(), task("noop", &["wait"])),
                ("condition".to_string(), task("while", &["action"])),
            ])
        };
        for (numbered, want) in [
            (true, ["W/1/action", "W/2/action", "W/3/action"]),
            (
                false,
                [
                    "W/action",
                    "W/condition/action",
                    "W/condition/condition/action",
                ],
            ),
        ] {
            let spec = WorkflowSpec {
                output: "W".into(),
                tasks: BTreeMap::from([("W".to_string(), task("while", &[]))]),
                ..Default::default()
            };
            let mut started = start(spec);
            if let Event::RunStarted { rules, .. } = &mut started {
                *rules = if numbered { RULES } else { 0 };
            }
            let mut s = RunState::fold(&[started]);
            // Each iteration's `condition` adds the next.
            let mut adding = "W".to_string();
            for _ in 0..3 {
                apply(&mut s, &dispatched(&adding, 1, 0));
                apply(
                    &mut s,
                    &Event::TasksAdded {
                        parent: adding.clone(),
                        tasks: iteration(),
                        output: "condition".into(),
                        scope_inputs: None,
                        concurrency: None,
                        version: None,
                        at: 0,
                    },
                );
                adding = s.tasks[&adding].child_output.clone().unwrap();
            }
            let actions: Vec<&str> = s
                .tasks
                .keys()
                .map(String::as_str)
                .filter(|id| id.ends_with("action"))
                .collect();
            assert_eq!(actions, want, "numbered: {numbered}");
            let named = ["{ output('action') }".to_string()];
            for scope in [s.scope_naming(&adding, &named, false), s.scope_for(&adding)] {
                assert_eq!(
                    scope["Tasks"]["action"]["Id"], want[2],
                    "numbered: {numbered}"
                );
            }
            // The loop's own task, around all its iterations, is in sight.
            assert_eq!(s.scope_for(&adding)["Tasks"]["W"]["Id"], "W");
            // (Nothing ran here:) each iteration's `wait` may start, and
            // nothing after it.
            let mut waits: Vec<String> = want.iter().map(|a| a.replace("action", "wait")).collect();
            waits.sort();
            assert_eq!(dispatched_ids(&decide(&s, 0)), waits);
        }
    }

    /// After a server was down across several times, they are taken in the
    /// order they came: what came first inside a task waiting past its
    /// timeout, the inner of two tasks whose time came first.
    #[test]
    fn timeouts_missed_while_down_are_taken_in_the_order_they_came() {
        let tasks = BTreeMap::from([("a".to_string(), TaskSpec::default())]);
        let mut s = waiting_parent_with(tasks, "a", None, |p| p.timeout = Some("1s".into()));
        apply(&mut s, &sleeping("p/a", 0, 500));
        // Its sleep was due before its timeout: it ended, and so did `p`.
        assert_eq!(
            decide(&s, 9000),
            vec![Action::FireTimer { task: "p/a".into() }]
        );
        apply(
            &mut s,
            &Event::TimerFired {
                task: "p/a".into(),
                at: 9000,
            },
        );
        assert_eq!(s.tasks["p"].status, TaskStatus::Succeeded);

        // The inner of two tasks timed out first: it alone fails (its
        // fallback, had it one, would run), the outer goes on waiting.
        let nested = |outer: &str| {
            let x = TaskSpec {
                timeout: Some("1s".into()),
                ..Default::default()
            };
            let inner = BTreeMap::from([("x".to_string(), x)]);
            let mut s = waiting_parent_with(inner, "x", None, |p| p.timeout = Some(outer.into()));
            apply(&mut s, &dispatched("p/x", 1, 0));
            apply(
                &mut s,
                &Event::TasksAdded {
                    parent: "p/x".into(),
                    tasks: BTreeMap::from([("y".to_string(), TaskSpec::default())]),
                    output: "y".into(),
                    scope_inputs: None,
                    concurrency: None,
                    version: None,
                    at: 0,
                },
            );
            apply(&mut s, &dispatched("p/x/y", 1, 0));
            s
        };
        let s = nested("2s");
        assert_eq!(
            decide(&s, 9000),
            vec![
                Action::TimeOut {
                    task: "p/x".into(),
                    attempt: 1
                },
                Action::CancelTask {
                    task: "p/x/y".into(),
                    reason: "task \"p/x\", which ran it, timed out".into()
                },
            ]
        );
        // Both at once: the outer, with all of it.
        let actions = decide(&nested("1s"), 9000);
        assert_eq!(
            actions[0],
            Action::TimeOut {
                task: "p".into(),
                attempt: 1
            }
        );
        assert_eq!(actions.len(), 3, "{actions:?}");
    }

    #[test]
    fn a_sleep_longer_than_its_timeout_fails_at_the_timeout() {
        let mut spec = workflow(&[vec![]], 0, 1);
        spec.tasks.get_mut("t0").unwrap().timeout = Some("1s".into());
        let mut s = RunState::fold(&[start(spec)]);
        apply(&mut s, &sleeping("t0", 0, 5000));
        assert_eq!(decide(&s, 500), vec![Action::StartTimer { at: 1000 }]);
        assert_eq!(
            decide(&s, 1000),
            vec![Action::TimeOut {
                task: "t0".into(),
                attempt: 1
            }]
        );
        // One shorter than its timeout wakes as before.
        s.tasks.get_mut("t0").unwrap().wake_at = Some(800);
        assert_eq!(
            decide(&s, 1000),
            vec![Action::FireTimer { task: "t0".into() }]
        );
    }

    #[test]
    fn concurrency_bounds_the_tasks_in_flight_of_each_workflow_in_id_order() {
        let ten: Vec<Vec<usize>> = vec![vec![]; 11];
        let spec = workflow_with(&ten, 0, 1, &[], Some(3));
        let mut s = RunState::fold(&[start(spec)]);
        assert_eq!(dispatched_ids(&decide(&s, 0)), ["t0", "t1", "t2"]);
        for t in ["t0", "t1", "t2"] {
            apply(&mut s, &dispatched(t, 1, 0));
        }
        assert_eq!(dispatched_ids(&decide(&s, 0)), Vec::<String>::new());
        apply(&mut s, &succeeded("t1", json!(1), 1));
        assert_eq!(dispatched_ids(&decide(&s, 1)), ["t3"], "t3 before t10");

        // A sub-workflow: the smaller of its task's limit and its own.
        let tasks: BTreeMap<String, TaskSpec> = (0..12)
            .map(|i| (format!("do_{i}"), TaskSpec::default()))
            .collect();
        let mut s = waiting_parent(tasks.clone(), "do_0", Some(4));
        assert_eq!(
            dispatched_ids(&decide(&s, 0)),
            ["p/do_0", "p/do_1", "p/do_2", "p/do_3"]
        );
        s.tasks.get_mut("p").unwrap().spec.concurrency = Some(2);
        assert_eq!(dispatched_ids(&decide(&s, 0)), ["p/do_0", "p/do_1"]);
        let s = waiting_parent(tasks, "do_0", None);
        assert_eq!(dispatched_ids(&decide(&s, 0)).len(), 12, "no limit");
    }

    #[test]
    fn a_failed_sub_workflow_starts_nothing_more() {
        let tasks = BTreeMap::from([
            ("a".to_string(), TaskSpec::default()),
            (
                "b".to_string(),
                TaskSpec {
                    requires: vec!["c".into()],
                    ..Default::default()
                },
            ),
            ("c".to_string(), TaskSpec::default()),
        ]);
        let mut spec = workflow(&[vec![]], 0, 1);
        let mut p = spec.tasks.remove("t0").unwrap();
        p.on_failure = Some("f".into());
        spec.tasks.insert("p".into(), p);
        spec.tasks.insert("f".into(), TaskSpec::default());
        spec.output = "p".into();
        let mut s = RunState::fold(&[start(spec)]);
        apply(&mut s, &dispatched("p", 1, 0));
        apply(
            &mut s,
            &Event::TasksAdded {
                parent: "p".into(),
                tasks,
                output: "b".into(),
                scope_inputs: None,
                concurrency: None,
                version: None,
                at: 0,
            },
        );
        apply(&mut s, &dispatched("p/a", 1, 0));
        apply(&mut s, &dispatched("p/c", 1, 0));
        apply(&mut s, &failed("p/a", 1, "no", None, 1));
        assert_eq!(s.tasks["p"].status, TaskStatus::Failed);
        apply(&mut s, &succeeded("p/c", json!(1), 2));
        // p's fallback runs; p/b, whose sub-workflow failed, does not.
        assert_eq!(dispatched_ids(&decide(&s, 2)), ["f"]);
    }

    #[test]
    fn ids_compare_with_numbers_by_value() {
        let mut ids = vec!["do_10", "do_2", "collector", "do_1", "a10b", "a9b", "do_02"];
        ids.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            ids,
            ["a9b", "a10b", "collector", "do_1", "do_02", "do_2", "do_10"]
        );
    }
}
