//! The run driver (tokio) and the `Engine`: each run in flight has one actor task
//! that appends events (durable before acting), applies them, asks `decide` what
//! to do, performs it (function calls through the executor, built-ins in-process,
//! timers through the clock) and turns outcomes into events. Recovery is the same
//! loop started from the stored events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use executor::{CallError, FunctionCall, FunctionResponse, SharedInvoker};
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::builtins::{self, HttpRequest, Outcome};
use crate::expr::{contains_expression, resolve_inputs};
use crate::spec::{parse_duration, TaskSpec, WorkflowSpec};
use crate::state::{
    apply, decide, finish_event, Action, Credentials, Event, Headers, Millis, RunState, RunStatus,
    TaskResult, TaskState, TaskStatus,
};
use crate::store::{
    BoxFuture, RunFilter, RunPage, RunStore, RunSummary, SledStore, StoreError, WorkflowVersion,
    LAZY_FLUSH_DELAY,
};
use crate::validate::{parse_and_validate, ValidationError};

/// Time for the engine. The default follows tokio's clock (so tests can pause
/// time) from the wall-clock time at start.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
    fn sleep_until(&self, at: Millis) -> BoxFuture<()>;
}

pub struct TokioClock {
    wall: Millis,
    base: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> Millis {
        self.wall + self.base.elapsed().as_millis() as u64
    }

    fn sleep_until(&self, at: Millis) -> BoxFuture<()> {
        match self
            .base
            .checked_add(Duration::from_millis(at.saturating_sub(self.wall)))
        {
            Some(when) => Box::pin(tokio::time::sleep_until(when)),
            // Beyond what an Instant can hold: never.
            None => Box::pin(std::future::pending()),
        }
    }
}

/// Sends the requests of the `http` built-in (provided by the server).
/// How long an `http` task whose own `timeout` says nothing waits for its
/// answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

pub trait HttpTransport: Send + Sync + 'static {
    fn send(&self, request: HttpRequest) -> BoxFuture<Result<FunctionResponse, String>>;
}

#[derive(Clone, Default)]
pub struct EngineConfig {
    /// Finished runs older than this are deleted (besides each RFC-0022
    /// workflow's own `historyRetention`).
    pub retention: Option<Duration>,
    /// How often retention is enforced (default: every minute).
    pub retention_sweep: Option<Duration>,
    pub http: Option<Arc<dyn HttpTransport>>,
    /// Replaces the default clock (tests).
    pub clock: Option<Arc<dyn Clock>>,
    /// `scheme://host:port` of the API listener, where callback URLs point
    /// (without it a `notify` function gets the path alone).
    pub callback_base: Option<String>,
    /// The largest body an invocation may have (the server's
    /// `--body-limit`); 16 MiB when unset.
    pub body_limit: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0} does not exist")]
    NotFound(String),
    /// The resource is in a state the request does not fit (the message says which).
    #[error("{0}")]
    Conflict(String),
    /// A function already has the name (functions and workflows share names).
    #[error("{0}")]
    NameTaken(String),
    /// A version a workflow does not have (it has others, `latest` the last).
    #[error("workflow {name:?} has no version {version} (its latest is {latest}; `fusion wf versions {name}` lists them)")]
    NoSuchVersion {
        name: String,
        version: u32,
        latest: u32,
    },
    /// A workflow of that name exists (a create, not an update).
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("invalid workflow: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    #[error("{0}")]
    BadRequest(String),
    /// An idempotency key used again with another request body.
    #[error("{0}")]
    KeyReused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl EngineError {
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::NotFound(_) | EngineError::NoSuchVersion { .. } => "not_found",
            EngineError::Conflict(_) | EngineError::NameTaken(_) => "conflict",
            EngineError::AlreadyExists(_) => "already_exists",
            EngineError::Invalid(e) => e.first().map(|e| e.code).unwrap_or("invalid_workflow"),
            EngineError::BadRequest(_) => "bad_request",
            EngineError::KeyReused(_) => "idempotency_key_reused",
            EngineError::Store(StoreError::Cursor) => "invalid_cursor",
            EngineError::Store(_) => "storage_error",
            EngineError::ShuttingDown => "shutting_down",
        }
    }
}

enum Msg {
    Events(String, Vec<Event>),
    /// An outside completion of a callback token; answered once it is durable.
    Complete {
        token: String,
        output: Value,
        error: Option<String>,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
    Wake,
    Cancel(String),
    Shutdown,
}

struct RunHandle {
    tx: mpsc::UnboundedSender<Msg>,
    done: watch::Receiver<Option<RunSummary>>,
    /// While the run waits with no call in flight: the engine-clock time of
    /// the next timer it armed (`Millis::MAX` for none: a callback, say),
    /// the soonest it can move on by itself.
    parked: watch::Receiver<Option<Millis>>,
    /// The workflow and version the run runs (what it may still call).
    workflow: String,
    version: u32,
}

/// The workflow engine: stored workflows, runs in flight, run history.
pub struct Engine {
    store: Arc<SledStore>,
    invoker: SharedInvoker,
    pub(crate) config: EngineConfig,
    clock: Arc<dyn Clock>,
    runs: Mutex<HashMap<String, RunHandle>>,
    /// Starts under an idempotency key, one at a time (so that two of the
    /// same key cannot both find no run and both start one).
    keyed: tokio::sync::Mutex<()>,
    stopping: AtomicBool,
    metrics: crate::metrics::EngineMetrics,
    /// Runs whose events could not be made durable, with why: never
    /// answered as ended (what the store holds of them in memory is not on
    /// disk and goes with a restart).
    unstored: Mutex<HashMap<String, String>>,
    /// Set when the server's stop begins: long polls (`?wait=`) answer
    /// then, rather than hold the stop for its whole grace.
    polls_end: watch::Sender<bool>,
    /// Set when the server stops: the engine-clock time its grace ends. A
    /// synchronous caller of a run that cannot move on before then is
    /// answered at once (the run goes on at the next start).
    stop_by: watch::Sender<Option<Millis>>,
    /// How many tasks' calls (functions, `http`, callback notifications) are
    /// in flight or have an outcome their run has not yet taken: the stop's
    /// grace waits for them (`Engine::calls_settled`).
    calls: watch::Sender<usize>,
}

/// Where a new run comes from, besides its workflow and input: the run it
/// retries (with the outputs kept from it), and the id an idempotency key
/// gives it.
#[derive(Default)]
struct Origin {
    id: Option<String>,
    retry_of: Option<String>,
    preserved: BTreeMap<String, TaskResult>,
    /// See `Event::RunStarted`'s `keys`.
    keys: BTreeMap<String, String>,
    credentials: Credentials,
}

/// A run just started: its id and a receiver that gets its summary at the end.
pub struct StartedRun {
    pub id: String,
    pub done: watch::Receiver<Option<RunSummary>>,
}

/// A header name in canonical form: each `-`-separated part capitalized
/// (`content-type` -> `Content-Type`). Every run's input has one per request
/// header: one allocation each.
pub fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut first = true;
    for c in name.chars() {
        out.push(if first {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        first = c == '-';
    }
    out
}

/// Header names in canonical form (`Content-Type`).
pub fn canonical_headers<'a>(h: impl IntoIterator<Item = (&'a String, &'a String)>) -> Headers {
    h.into_iter()
        .map(|(k, v)| (canonical_header(k), v.clone()))
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A response body as a task output: JSON when the content type says so, or,
/// for a state machine's step (`documents`), whenever it is JSON (as Fission's
/// own engine reads an answer, whatever its type).
pub fn response_output(resp: &FunctionResponse, documents: bool) -> Value {
    if resp.body.is_empty() {
        return Value::Null;
    }
    if read_as_json(resp, documents) {
        if let Ok(v) = serde_json::from_slice(&resp.body) {
            return v;
        }
    }
    crate::binary::text_or_bytes(&resp.body)
}

/// Whether a response body is read as JSON (see `response_output`).
fn read_as_json(resp: &FunctionResponse, documents: bool) -> bool {
    documents
        || resp
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.contains("json"))
}

/// The inputs a workflow invoked by name from a task sees: those of the task, with
/// a `body` also as `default` (`param()`), as Fission Workflows' invocation API
/// and Fusion's HTTP invocation give it.
fn invocation_inputs(mut inputs: Value) -> Value {
    if let Some(m) = inputs.as_object_mut() {
        if !m.contains_key("default") {
            if let Some(body) = m.get("body").cloned() {
                m.insert("default".into(), body);
            }
        }
    }
    inputs
}

/// The status of a task (and a run) that failed because an expression over the
/// invocation's input failed: 422 Unprocessable Content, the caller's mistake.
pub const INPUT_MISFIT_STATUS: u16 = 422;

/// Why a run that has ended cannot be cancelled, in plain words.
/// The task whose current attempt waits on (or waited on) `token`.
fn callback_task<'a>(s: &'a RunState, token: &str) -> Option<&'a TaskState> {
    s.tasks
        .values()
        .find(|t| t.callback.as_deref().is_some_and(|c| secret_eq(c, token)))
}

/// Compares tokens in time independent of where they differ.
fn secret_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn callback_used(task: &str) -> EngineError {
    EngineError::Conflict(format!(
        "the callback of task {task:?} has already been completed"
    ))
}

/// The call handing a callback's URL to its `notify` function: the task's
/// `body` (or `default`) input as body, the URL and token as headers.
#[allow(clippy::too_many_arguments)]
fn notify_call(
    base: Option<&str>,
    notify: &str,
    inputs: &Value,
    token: &str,
    key: &str,
    timeout: Option<Duration>,
    documents: bool,
) -> FunctionCall {
    let mut call = function_call(notify, inputs, key, timeout, documents);
    let url = format!(
        "{}{}{token}",
        base.unwrap_or_default(),
        crate::api::CALLBACKS_PATH
    );
    call.headers.push(("X-Fusion-Callback-Url".into(), url));
    call.headers
        .push(("X-Fusion-Callback-Token".into(), token.to_string()));
    call
}

/// A one-time callback token: the run's id (to find it) and 128 random bits.
fn callback_token(run_id: &str) -> String {
    format!("{run_id}.{:032x}", rand::random::<u128>())
}

fn already_finished(id: &str, status: RunStatus) -> EngineError {
    EngineError::Conflict(format!(
        "run {id} is already {}: there is nothing left to cancel",
        status.as_str()
    ))
}

/// A task's body as sent, and its type unless the headers give one: text for
/// a string, the bytes of a bytes value (`binary`), JSON for anything else (as
/// Fission Workflows sends them).
fn body_of(v: Option<&Value>, headers: &mut Vec<(String, String)>) -> Bytes {
    let typed = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    let bytes = v.and_then(crate::binary::of);
    let (body, content_type) = match v {
        _ if bytes.is_some() => (
            Bytes::from(bytes.unwrap_or_default()),
            "application/octet-stream",
        ),
        None | Some(Value::Null) => return Bytes::new(),
        Some(Value::String(s)) => (Bytes::from(s.clone()), "text/plain; charset=utf-8"),
        Some(other) => (Bytes::from(other.to_string()), "application/json"),
    };
    if !typed {
        headers.push(("Content-Type".into(), content_type.into()));
    }
    body
}

/// Whether a task's `run` is an http(s) URL: Fission Workflows' http function
/// reference.
pub fn is_url(run: &str) -> bool {
    run.starts_with("http://") || run.starts_with("https://")
}

/// The request a URL function reference makes: as a function call's (method,
/// body, headers, query from the inputs), to the URL.
fn url_request(url: &str, inputs: &Value, key: &str) -> crate::builtins::HttpRequest {
    let call = function_call(url, inputs, key, None, false);
    let mut url = url.to_string();
    if !call.query.is_empty() {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(call.query.iter())
            .finish();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&query);
    }
    keyed(
        crate::builtins::HttpRequest {
            url,
            method: call.method,
            headers: call.headers,
            body: (!call.body.is_empty()).then(|| crate::binary::text_or_bytes(&call.body)),
        },
        key,
    )
}

/// An HTTP call of a task (a URL reference, the `http` built-in) with its
/// `X-Fusion-Idempotency-Key`, as a function call has it: a call made again
/// (a retry, after a restart) carries the same key, so that its receiver can
/// tell. A key the task's own headers set is left as it is.
fn keyed(mut request: crate::builtins::HttpRequest, key: &str) -> crate::builtins::HttpRequest {
    let named = |(k, _): &(String, String)| k.eq_ignore_ascii_case("X-Fusion-Idempotency-Key");
    if !request.headers.iter().any(named) {
        request
            .headers
            .push(("X-Fusion-Idempotency-Key".into(), key.to_string()));
    }
    request
}

/// Says which attempt of its task a call is (`X-Fusion-Attempt`, as an
/// asynchronous invocation's attempts say it), unless the task's own
/// headers set it.
fn with_attempt(headers: &mut Vec<(String, String)>, attempt: u32) {
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("X-Fusion-Attempt"))
    {
        headers.push(("X-Fusion-Attempt".into(), attempt.to_string()));
    }
}

/// The call a task makes. A state machine's step (`documents`) sends its
/// document as JSON, whatever it is (a string, a number, null), as Fission's
/// own engine does; a Fission Workflows task sends a string as text.
fn function_call(
    function: &str,
    inputs: &Value,
    key: &str,
    timeout: Option<Duration>,
    documents: bool,
) -> FunctionCall {
    let get = |k: &str| inputs.get(k).filter(|v| !v.is_null());
    let mut headers: Vec<(String, String)> = get("headers")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    // `content-type` forces the request's type (Fission Workflows' input).
    if let Some(ct) = get("content-type") {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
        headers.push(("Content-Type".into(), text(ct)));
    }
    let body = if documents {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
        headers.push(("Content-Type".into(), "application/json".into()));
        let document = inputs.get("body").unwrap_or(&Value::Null);
        Bytes::from(document.to_string())
    } else {
        body_of(get("body").or_else(|| get("default")), &mut headers)
    };
    FunctionCall {
        function: function.to_string(),
        method: get("method")
            .map(text)
            .unwrap_or_else(|| "POST".into())
            .to_uppercase(),
        path: "/".into(),
        query: get("query")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default(),
        headers,
        body,
        idempotency_key: Some(key.to_string()),
        timeout,
    }
}

/// The longest typed error answer a failed task keeps whole, in bytes.
const TYPED_ERROR_MOST: usize = 16 * 1024;

/// The most characters of any other failed answer a task's error keeps.
const FAILED_ANSWER_MOST: usize = 1000;

pub(crate) fn outcome_events(
    task: &str,
    attempt: u32,
    result: Result<FunctionResponse, CallError>,
    at: Millis,
    documents: bool,
) -> Vec<Event> {
    match result {
        // JSON nested past what its parser reads would be taken as text:
        // refused as one nested past what a run keeps (`within_depth`).
        Ok(resp)
            if (200..300).contains(&resp.status)
                && read_as_json(&resp, documents)
                && crate::document::check_json(&resp.body).is_err() =>
        {
            vec![nested_too_deep(task.into(), attempt, at)]
        }
        Ok(resp) if (200..300).contains(&resp.status) => vec![Event::TaskSucceeded {
            task: task.into(),
            attempt,
            output: response_output(&resp, documents),
            headers: canonical_headers(resp.headers.iter()),
            at,
        }],
        Ok(resp) => {
            let body = String::from_utf8_lossy(&resp.body);
            // A typed error (`{"errorType", "cause"}`, read back by state
            // machines) is kept whole up to a bound: cut, it would lose its type.
            let typed = body.len() <= TYPED_ERROR_MOST
                && serde_json::from_str::<Value>(&body).is_ok_and(|v| v.get("errorType").is_some());
            let most = if typed {
                TYPED_ERROR_MOST
            } else {
                FAILED_ANSWER_MOST
            };
            let mut kept: String = body.chars().take(most).collect();
            if kept.len() < body.len() {
                // Said, so that no one reads the cut as the function's answer.
                kept = format!(
                    "{}… (cut: {} bytes in all)",
                    kept.trim_end(),
                    resp.body.len()
                );
            }
            vec![Event::TaskFailed {
                task: task.into(),
                attempt,
                error: if kept.trim().is_empty() {
                    format!("the function answered {}", resp.status)
                } else {
                    format!("the function answered {}: {}", resp.status, kept.trim())
                },
                status: Some(resp.status),
                retryable: executor::status_is_retryable(resp.status),
                at,
            }]
        }
        Err(e) => vec![Event::TaskFailed {
            task: task.into(),
            attempt,
            error: e.to_string(),
            status: None,
            retryable: e.is_retryable(),
            at,
        }],
    }
}

/// Work the actor starts after the events that allow it are durable.
enum External {
    Call {
        task: String,
        attempt: u32,
        call: FunctionCall,
    },
    Http {
        task: String,
        attempt: u32,
        request: HttpRequest,
        timeout: Option<Duration>,
    },
    /// Hand a callback's URL to its `notify` function; its answer is not the
    /// task's output (the completion is), only a failure counts.
    Notify {
        task: String,
        attempt: u32,
        call: FunctionCall,
    },
    Timer(Millis),
    /// Stop the attempt in flight of a task that was cancelled (once the
    /// cancellation is stored).
    Abort(String),
}

/// Most tasks one run may hold, dynamic ones included: bounds a runaway loop.
pub const MAX_TASKS_PER_RUN: usize = 100_000;
/// Most steps a run takes in a row before it lets the other tasks of its
/// thread run and reads what was sent to it (a cancellation, the server's
/// stop): a loop of built-ins takes thousands of steps without waiting for
/// anything, and held a thread, deaf to a cancel or a stop, for as long.
const STEPS_PER_TURN: usize = 1_000;
/// Deepest nesting of workflows run by name: bounds a workflow that calls itself.
pub const MAX_WORKFLOW_DEPTH: usize = 32;

/// Runs one side effect under its timeout. A panic in it becomes a failed
/// attempt: otherwise no outcome would ever come back and the run would wait forever.
async fn bounded(
    timeout: Option<Duration>,
    work: impl std::future::Future<Output = Result<FunctionResponse, CallError>>,
) -> Result<FunctionResponse, CallError> {
    use futures_util::FutureExt;
    let guarded = std::panic::AssertUnwindSafe(work).catch_unwind();
    let outcome = match timeout {
        Some(d) => match tokio::time::timeout(d, guarded).await {
            Ok(r) => r,
            Err(_) => return Err(CallError::after(d)),
        },
        None => guarded.await,
    };
    outcome.unwrap_or_else(|_| {
        tracing::error!("a task's call panicked; failing the attempt");
        Err(CallError::Instance(
            "the call failed inside Fusion (see the server log)".into(),
        ))
    })
}

impl Engine {
    /// Opens the engine on a sled database and the store's journal in
    /// `journal_dir` (see `store`): starts the flusher, continues every
    /// unfinished run, and prunes old runs when `retention` is set.
    pub async fn open(
        db: sled::Db,
        journal_dir: &std::path::Path,
        invoker: SharedInvoker,
        config: EngineConfig,
    ) -> Result<Arc<Engine>, EngineError> {
        let store = SledStore::open(&db, journal_dir)?;
        let clock = config
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(TokioClock::new()));
        let metrics = crate::metrics::EngineMetrics {
            store_flushes: store.flushes(),
            ..Default::default()
        };
        let engine = Arc::new(Engine {
            store,
            invoker,
            config,
            clock,
            runs: Mutex::new(HashMap::new()),
            keyed: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            unstored: Mutex::new(HashMap::new()),
            polls_end: watch::channel(false).0,
            stop_by: watch::channel(None).0,
            calls: watch::channel(0).0,
            metrics,
        });
        for id in engine.store.unfinished_runs()? {
            let events = engine.store.events(&id)?;
            let state = RunState::fold(&events);
            if state.is_finished() {
                // It ended, but its summary was not updated before a crash.
                if let Some(end) = events.iter().rev().find(|e| e.is_terminal()) {
                    engine.store.repair_finished(&id, end)?;
                }
                continue;
            }
            if state.run_id.is_empty() {
                continue;
            }
            tracing::info!(run = %id, "continuing run after restart");
            engine
                .metrics
                .runs_resumed
                .get_or_create(&crate::metrics::WorkflowLabels {
                    workflow: state.workflow.clone(),
                })
                .inc();
            engine.spawn_run(state, events.len() as u64, Vec::new(), true)?;
        }
        crate::retention::start(
            &engine,
            engine
                .config
                .retention_sweep
                .unwrap_or(crate::retention::DEFAULT_SWEEP),
            engine.config.retention,
        );
        Ok(engine)
    }

    pub fn metrics(&self) -> &crate::metrics::EngineMetrics {
        &self.metrics
    }

    /// The engine's clock, in ms since the epoch.
    pub(crate) fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    pub fn store(&self) -> &Arc<SledStore> {
        &self.store
    }

    fn name_exists(&self, name: &str) -> bool {
        self.invoker.function_exists(name) || self.store.workflow_exists(name)
    }

    /// Validates and stores a new workflow (version 1).
    pub fn create_workflow(
        &self,
        name: &str,
        source: &str,
    ) -> Result<WorkflowVersion, EngineError> {
        self.put_workflow(name, source, true).map(|(w, _)| w)
    }

    /// What is worth telling about a workflow that was stored all the same: in
    /// a Fission `Workflow`, a namespace not kept (`namespace_ignored`), and a
    /// Task whose function does not exist (yet), which fails its runs until it
    /// does (`unknown_function`), each with its position.
    pub fn warnings(&self, source: &str) -> Vec<ValidationError> {
        if !crate::sfn::run::is_state_machine(source) {
            let Some(spec) = crate::validate::read_spec(source) else {
                return Vec::new();
            };
            return crate::validate::format_warnings(
                &spec,
                source,
                &|name| self.name_exists(name),
                // What runs a workflow: a function of its name runs instead.
                &|name| !self.invoker.function_exists(name) && self.store.workflow_exists(name),
            );
        }
        match crate::sfn::spec::parse_workflow(source) {
            Ok(parsed) => crate::sfn::ignored_namespace(&parsed, source)
                .into_iter()
                .chain(crate::sfn::missing_functions(
                    &parsed,
                    source,
                    |f| self.invoker.function_exists(f),
                    |f| self.store.workflow_exists(f),
                ))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Validates and stores the next version of a workflow, with `true`; or,
    /// given the latest version's document again, that version and `false`.
    pub fn update_workflow(
        &self,
        name: &str,
        source: &str,
    ) -> Result<(WorkflowVersion, bool), EngineError> {
        self.put_workflow(name, source, false)
    }

    /// Checks a workflow as `create_workflow` (`create`) or `update_workflow`
    /// would store it, without storing anything: the version it would be.
    pub fn check_workflow(
        &self,
        name: &str,
        source: &str,
        create: bool,
    ) -> Result<WorkflowVersion, EngineError> {
        let spec = self.checked_spec(name, source, create)?;
        let latest = self.store.workflow(name, None)?.map(|w| w.version);
        let version = match (create, latest) {
            (true, Some(_)) => {
                return Err(EngineError::AlreadyExists(format!("workflow {name:?}")))
            }
            (false, None) => return Err(EngineError::NotFound(format!("workflow {name:?}"))),
            (_, latest) => latest.unwrap_or(0) + 1,
        };
        Ok(WorkflowVersion {
            name: name.to_string(),
            version,
            source: source.to_string(),
            spec,
            created_at: self.clock.now_ms(),
        })
    }

    /// What `put_workflow` stores of `source`, once it passed every check.
    fn checked_spec(
        &self,
        name: &str,
        source: &str,
        create: bool,
    ) -> Result<WorkflowSpec, EngineError> {
        // Workflows are named like functions, and share their name space: both
        // answer at /fission-function/<name>.
        pool_manager::resources::validate_name("workflow", name)
            .map_err(|e| EngineError::BadRequest(e.to_string()))?;
        if create && self.invoker.function_exists(name) {
            return Err(EngineError::NameTaken(format!(
                "a function named {name:?} exists; functions and workflows share /fission-function/ names"
            )));
        }
        // The file's one document (a trailing `---` left out, every line
        // where it was); the file is what is stored and shown.
        let source = &*crate::validate::workflow_text(source)
            .map_err(|e| vec![e])
            .map_err(EngineError::Invalid)?;
        if crate::sfn::run::is_state_machine(source) {
            crate::sfn::run::engine_spec(source)
        } else {
            parse_and_validate(source, &|n| n == name || self.name_exists(n))
                .and_then(crate::sfn::run::refuse_embedded_machine)
        }
        .map_err(EngineError::Invalid)
    }

    fn put_workflow(
        &self,
        name: &str,
        source: &str,
        create: bool,
    ) -> Result<(WorkflowVersion, bool), EngineError> {
        let spec = self.checked_spec(name, source, create)?;
        self.store
            .put_workflow(name, source, &spec, create, self.clock.now_ms())
            .map_err(|e| match e {
                StoreError::Conflict(m) => EngineError::AlreadyExists(m),
                StoreError::NotFound(m) => EngineError::NotFound(m),
                other => EngineError::Store(other),
            })
    }

    pub fn workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<WorkflowVersion, EngineError> {
        if let Some(w) = self.store.workflow(name, version)? {
            return Ok(w);
        }
        // A version the workflow does not have: say which it has.
        match (version, self.store.workflow(name, None)?) {
            (Some(version), Some(latest)) => Err(EngineError::NoSuchVersion {
                name: name.to_string(),
                version,
                latest: latest.version,
            }),
            _ => Err(EngineError::NotFound(format!("workflow {name:?}"))),
        }
    }

    pub fn workflow_exists(&self, name: &str) -> bool {
        self.store.workflow_exists(name)
    }

    pub fn list_workflows(&self) -> Result<Vec<WorkflowVersion>, EngineError> {
        Ok(self.store.list_workflows()?)
    }

    pub fn workflow_versions(&self, name: &str) -> Result<Vec<WorkflowVersion>, EngineError> {
        let v = self.store.workflow_versions(name)?;
        if v.is_empty() {
            return Err(EngineError::NotFound(format!("workflow {name:?}")));
        }
        Ok(v)
    }

    /// `flush`, at no cost when every change stored so far is durable
    /// already.
    pub async fn settle(&self) -> Result<(), EngineError> {
        Ok(self.store.settle().await?)
    }

    /// Makes every change stored so far durable (workflow versions are written
    /// without waiting for the disk; runs flush their own events).
    pub async fn flush(&self) -> Result<(), EngineError> {
        Ok(self.store.flush().await?)
    }

    /// The stored workflows (their latest versions) that run `name`, a
    /// function's key or a workflow's name, by name; a workflow running
    /// itself is left out.
    pub fn workflows_running(&self, name: &str) -> Result<Vec<String>, EngineError> {
        Ok(self
            .list_workflows()?
            .into_iter()
            .filter(|w| w.name != name && crate::validate::names_run_by(&w.spec).contains(name))
            .map(|w| w.name)
            .collect())
    }

    /// The workflows that keep `name` from being deleted: those that run it,
    /// but for those `name` runs itself, at any depth (workflows that run
    /// each other would keep each other forever).
    pub fn workflows_keeping(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let all = self.list_workflows()?;
        let runs: HashMap<&str, BTreeSet<String>> = all
            .iter()
            .map(|w| (w.name.as_str(), crate::validate::names_run_by(&w.spec)))
            .collect();
        let mut reached: BTreeSet<&str> = BTreeSet::new();
        let mut todo = vec![name];
        while let Some(next) = todo.pop() {
            for target in runs.get(next).into_iter().flatten() {
                if reached.insert(target) {
                    todo.push(target);
                }
            }
        }
        Ok(all
            .iter()
            .filter(|w| {
                w.name != name
                    && !reached.contains(w.name.as_str())
                    && runs[w.name.as_str()].contains(name)
            })
            .map(|w| w.name.clone())
            .collect())
    }

    /// The runs in flight of a workflow version that runs `name` (a
    /// function's key or a workflow's name), at most `most` of them: a
    /// workflow changed or deleted since they started no longer says so,
    /// and what they run must not be deleted from under them.
    pub fn runs_in_flight_running(
        &self,
        name: &str,
        most: usize,
    ) -> Result<Vec<String>, EngineError> {
        let mut runs: Vec<(String, String, u32)> = self
            .runs
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(_, h)| h.workflow != name)
                    .map(|(id, h)| (id.clone(), h.workflow.clone(), h.version))
                    .collect()
            })
            .unwrap_or_default();
        runs.sort();
        // Each version looked at once; a version deleted since (its
        // workflow deleted) is read from the run's own start.
        let mut runs_it: HashMap<(String, u32), Option<bool>> = HashMap::new();
        let mut found = Vec::new();
        for (id, workflow, version) in runs {
            let key = (workflow, version);
            let stored = match runs_it.get(&key) {
                Some(known) => *known,
                None => {
                    let known = self
                        .store
                        .workflow(&key.0, Some(key.1))?
                        .map(|w| crate::validate::names_run_by(&w.spec).contains(name));
                    runs_it.insert(key, known);
                    known
                }
            };
            let uses = match stored {
                Some(uses) => uses,
                None => match self.run_state(&id) {
                    Ok(state) if !state.is_finished() => {
                        crate::validate::names_run_by(&state.spec).contains(name)
                    }
                    _ => false,
                },
            };
            if uses {
                found.push(id);
                if found.len() == most {
                    break;
                }
            }
        }
        Ok(found)
    }

    pub fn delete_workflow(&self, name: &str) -> Result<(), EngineError> {
        if self.store.delete_workflow(name)? {
            Ok(())
        } else {
            Err(EngineError::NotFound(format!("workflow {name:?}")))
        }
    }

    /// Starts a run of the latest version of a workflow; the run is durable
    /// when this returns (it can be acknowledged, e.g. with a 202).
    pub async fn start_run(
        self: &Arc<Self>,
        name: &str,
        input: Value,
        credentials: Credentials,
    ) -> Result<StartedRun, EngineError> {
        let wf = self.workflow(name, None)?;
        let origin = Origin {
            credentials,
            ..Origin::default()
        };
        self.start(wf.name, wf.version, wf.spec, input, origin)
            .await
    }

    /// Starts a run for a caller that waits for its end (a synchronous
    /// invocation): nothing is flushed before it starts. Its start is written
    /// with its first steps and is durable with them (see
    /// `store::LAZY_FLUSH_DELAY`), and at the latest with its end, which is
    /// durable before the caller gets it. A crash before that loses a run that
    /// nobody was told about, as a crash before `start_run` returns does.
    pub fn start_run_waited(
        self: &Arc<Self>,
        name: &str,
        input: Value,
        credentials: Credentials,
    ) -> Result<StartedRun, EngineError> {
        let wf = self.workflow(name, None)?;
        let origin = Origin {
            credentials,
            ..Origin::default()
        };
        let (started, state) = self.started(wf.name, wf.version, wf.spec, input, origin)?;
        let id = state.run_id.clone();
        let done = self.spawn_run(state, 0, vec![started], false)?;
        Ok(StartedRun { id, done })
    }

    async fn start(
        self: &Arc<Self>,
        workflow: String,
        version: u32,
        spec: WorkflowSpec,
        input: Value,
        origin: Origin,
    ) -> Result<StartedRun, EngineError> {
        let (started, state) = self.started(workflow, version, spec, input, origin)?;
        let id = state.run_id.clone();
        self.store_start(&id, &started).await?;
        let done = self.spawn_run(state, 1, Vec::new(), false)?;
        Ok(StartedRun { id, done })
    }

    /// Starts a run of `name` under the caller's idempotency key `key`, or
    /// finds the run an earlier start with that key made (as long as it is
    /// kept): the same key gives the same run id, so a caller that lost the
    /// answer can start again safely. Answers the id and whether it is new.
    /// `waited`: the caller waits for its end (see `start_run_waited`).
    pub async fn start_run_keyed(
        self: &Arc<Self>,
        name: &str,
        input: Value,
        key: &str,
        waited: bool,
        credentials: Credentials,
    ) -> Result<(String, bool), EngineError> {
        let id = keyed_run_id(name, key);
        let _one = self.keyed.lock().await;
        let running = self.runs.lock().is_ok_and(|r| r.contains_key(&id));
        let stored = self.store.run(&id)?;
        if running || stored.is_some() {
            // The same key for another request is a mistake, not a repeat
            // (its body, method and query are compared, not its headers; a
            // run not written yet is taken as is). The first request is its
            // run's summary's input: folding the run for it cost a large
            // run's whole history, on the runtime, at every repeat.
            if let Some(first) = stored {
                let part = |input: &Value, name: &str| input.get(name).cloned();
                let differs = [
                    (
                        "body",
                        crate::sfn::run::start_document(&first.input)
                            != crate::sfn::run::start_document(&input),
                    ),
                    (
                        "method",
                        part(&first.input, "method") != part(&input, "method"),
                    ),
                    (
                        "query",
                        part(&first.input, "query") != part(&input, "query"),
                    ),
                ]
                .into_iter()
                .filter(|(_, differs)| *differs)
                .map(|(what, _)| what)
                .collect::<Vec<_>>();
                if !differs.is_empty() {
                    return Err(EngineError::KeyReused(format!(
                        "Idempotency-Key {key:?} started run {id} with another request (its {} {}): a new request needs a new key",
                        differs.join(" and "),
                        if differs.len() == 1 { "differs" } else { "differ" }
                    )));
                }
            }
            // A run retried since (`fusion run retry`) answers as its latest
            // retry: the key names the operation, which the retry carried on.
            let mut latest = id;
            while let Ok(Some(next)) = self.retried_by(&latest) {
                latest = next;
            }
            return Ok((latest, false));
        }
        let wf = self.workflow(name, None)?;
        let origin = Origin {
            id: Some(id),
            credentials,
            ..Origin::default()
        };
        let (started, state) = self.started(wf.name, wf.version, wf.spec, input, origin)?;
        let id = state.run_id.clone();
        if waited {
            self.spawn_run(state, 0, vec![started], false)?;
        } else {
            self.store_start(&id, &started).await?;
            self.spawn_run(state, 1, Vec::new(), false)?;
        }
        Ok((id, true))
    }

    /// Makes the start of run `id` durable, or takes it back: a start its
    /// caller is told failed never runs (not even after a restart).
    async fn store_start(&self, id: &str, started: &Event) -> Result<(), EngineError> {
        let stored = match self.store.append(id, 0, std::slice::from_ref(started)) {
            Ok(_) => self.store.flush().await,
            Err(e) => Err(e),
        };
        if stored.is_err() {
            self.store.take_back_start(id);
        }
        Ok(stored?)
    }

    /// A new run's first event, and its state.
    fn started(
        &self,
        workflow: String,
        version: u32,
        spec: WorkflowSpec,
        input: Value,
        origin: Origin,
    ) -> Result<(Event, RunState), EngineError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(EngineError::ShuttingDown);
        }
        // A run whose start cannot be made durable does not begin: a waited
        // one would otherwise make its calls and then be answered an error
        // (its caller trying again would make them twice).
        if let Some(why) = self.store.trouble() {
            return Err(EngineError::Store(StoreError::Flush(format!(
                "the workflow store cannot make writes durable ({why}): no run starts until it can (/readyz says when)"
            ))));
        }
        let Origin {
            id,
            retry_of,
            preserved,
            keys,
            credentials,
        } = origin;
        let at = self.clock.now_ms();
        let id = id.unwrap_or_else(|| run_id_at(at));
        let labels = crate::metrics::WorkflowLabels {
            workflow: workflow.clone(),
        };
        if self.metrics.runs_started.get_or_create(&labels).inc() == 0 {
            // The workflow's resumed-runs series, at 0 from its first run
            // (an alert on it finds data before the first restart).
            drop(self.metrics.runs_resumed.get_or_create(&labels));
        }
        let started = Event::RunStarted {
            run_id: id.clone(),
            workflow,
            version,
            spec,
            input,
            at,
            retry_of,
            preserved,
            keys: (!keys.is_empty()).then(|| Box::new(keys)),
            rules: crate::state::RULES,
        };
        let mut state = RunState::fold([&started]);
        state.credentials = credentials;
        Ok((started, state))
    }

    /// Waits for a run's end and returns its summary.
    pub async fn wait(&self, id: &str) -> Result<RunSummary, EngineError> {
        let rx = self
            .runs
            .lock()
            .ok()
            .and_then(|r| r.get(id).map(|h| (h.done.clone(), h.parked.clone())));
        let known = rx.is_some();
        if let Some((mut rx, parked)) = rx {
            tokio::select! {
                done = rx.wait_for(Option::is_some) => {
                    if let Ok(s) = done {
                        if let Some(s) = s.clone() {
                            return Ok(s);
                        }
                    }
                }
                // Read as the stop left it, below: still running.
                () = parked_past_the_stop(parked, self.stop_by.subscribe()) => {}
            }
        }
        // Once the store makes writes durable again, what the run wrote is
        // durable too: its record says how it ended.
        let unstored = match self.store.trouble() {
            Some(_) => self.unstored.lock().ok().and_then(|u| u.get(id).cloned()),
            None => self
                .unstored
                .lock()
                .ok()
                .and_then(|mut u| u.remove(id))
                .and(None),
        };
        if let Some(why) = unstored {
            return Err(EngineError::Store(StoreError::Flush(format!(
                "run {id:?} could not be stored ({why}); it did not end as far as the store knows (see the server log)"
            ))));
        }
        match self.store.run(id)? {
            Some(s) => Ok(s),
            // It was running here but its events could not be written (the
            // server log says why): not the caller's mistake.
            None if known => Err(EngineError::Store(StoreError::Flush(format!(
                "run {id:?} ended without being stored (see the server log)"
            )))),
            None => Err(EngineError::NotFound(format!("run {id:?}"))),
        }
    }

    /// A run's full state (status, tasks, timings), folded from its events.
    /// As `run_state`, folded on a blocking thread: a run of 30,000 tasks
    /// takes about half a second, which would hold up every request on the
    /// runtime's threads.
    pub(crate) async fn run_state_off_runtime(&self, id: &str) -> Result<RunState, EngineError> {
        let (store, run) = (self.store.clone(), id.to_string());
        let folding = tokio::task::spawn_blocking(move || {
            store
                .events(&run)
                .map(|events| (!events.is_empty()).then(|| RunState::fold(&events)))
        });
        match folding.await {
            Ok(Ok(Some(state))) => Ok(state),
            Ok(Ok(None)) => Err(EngineError::NotFound(format!("run {id:?}"))),
            Ok(Err(e)) => Err(e.into()),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(EngineError::ShuttingDown),
        }
    }

    pub fn run_state(&self, id: &str) -> Result<RunState, EngineError> {
        let events = self.store.events(id)?;
        if events.is_empty() {
            return Err(EngineError::NotFound(format!("run {id:?}")));
        }
        Ok(RunState::fold(&events))
    }

    pub fn run_events(&self, id: &str) -> Result<Vec<Event>, EngineError> {
        let events = self.store.events(id)?;
        if events.is_empty() {
            return Err(EngineError::NotFound(format!("run {id:?}")));
        }
        Ok(events)
    }

    pub fn run_summary(&self, id: &str) -> Result<RunSummary, EngineError> {
        self.store
            .run(id)?
            .ok_or_else(|| EngineError::NotFound(format!("run {id:?}")))
    }

    pub fn list_runs(&self, filter: &RunFilter) -> Result<RunPage, EngineError> {
        Ok(self.store.list_runs(filter)?)
    }

    /// Deletes a finished run: its record, its events and its place in the
    /// listings, as retention would. A run in flight is a `Conflict` (cancel
    /// it first).
    pub async fn delete_run(&self, id: &str) -> Result<(), EngineError> {
        let in_flight = self.runs.lock().is_ok_and(|r| r.contains_key(id));
        let summary = self.run_summary(id)?;
        if in_flight || summary.status == RunStatus::Running {
            return Err(EngineError::Conflict(format!(
                "run {id} is running: cancel it first (fusion run cancel {id})"
            )));
        }
        self.store.delete_finished_run(&summary)?;
        self.store.flush().await?;
        Ok(())
    }

    /// Cancels a run in flight: no more dispatches, in-flight calls aborted.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<RunSummary, EngineError> {
        let tx = self
            .runs
            .lock()
            .ok()
            .and_then(|r| r.get(id).map(|h| h.tx.clone()));
        match tx {
            Some(tx) => {
                let _ = tx.send(Msg::Cancel(reason.to_string()));
                let summary = self.wait(id).await?;
                if summary.status != RunStatus::Cancelled {
                    // It finished on its own before the cancel was taken.
                    return Err(already_finished(id, summary.status));
                }
                Ok(summary)
            }
            None => Err(already_finished(id, self.run_summary(id)?.status)),
        }
    }

    /// Completes the `callback` task waiting on `token` with `output`, or fails
    /// it with `error`; answers the task's id once the completion is durable.
    /// An unknown, expired or superseded token is `NotFound`; a token already
    /// completed is a `Conflict`.
    pub async fn complete_callback(
        &self,
        token: &str,
        output: Value,
        error: Option<String>,
    ) -> Result<String, EngineError> {
        let unknown = || EngineError::NotFound("a callback for this token".into());
        let Some((run_id, _)) = token.rsplit_once('.') else {
            return Err(unknown());
        };
        let tx = self
            .runs
            .lock()
            .ok()
            .and_then(|r| r.get(run_id).map(|h| h.tx.clone()));
        if let Some(tx) = tx {
            let (reply, answer) = oneshot::channel();
            let msg = Msg::Complete {
                token: token.to_string(),
                output,
                error,
                reply,
            };
            if tx.send(msg).is_ok() {
                if let Ok(result) = answer.await {
                    return result;
                }
            }
        }
        // No actor (the run has ended) or it stopped meanwhile: judge by the history.
        let state = match self.run_state_off_runtime(run_id).await {
            Ok(s) => s,
            Err(EngineError::NotFound(_)) => return Err(unknown()),
            Err(e) => return Err(e),
        };
        match callback_task(&state, token) {
            Some(t) if t.callback_completed => Err(callback_used(&t.id)),
            // Still the task's token, but its run ended without it (cancelled,
            // failed elsewhere, timed out): say so rather than "unknown".
            Some(t) if state.status != RunStatus::Running => Err(EngineError::Conflict(format!(
                "run {run_id:?} has ended ({}): the callback of task {:?} can no longer complete it",
                state.status.as_str(),
                t.id
            ))),
            _ => Err(unknown()),
        }
    }

    /// The run that retried run `id`, once one has (a run is retried once).
    /// A retry made of an earlier run of the same id (a keyed run deleted,
    /// then started again by its key) is not this one's.
    pub fn retried_by(&self, id: &str) -> Result<Option<String>, EngineError> {
        let Some(run) = self.store.run(id)? else {
            return Ok(None);
        };
        let retry_id = retry_run_id(id, run.created_at);
        if let Some(retry) = self.store.run(&retry_id)? {
            return Ok((retry.retry_of.as_deref() == Some(id)).then_some(retry_id));
        }
        self.legacy_retry(id, &run)
    }

    /// Retries run `id` as a server before this one did: under the id its
    /// retries had then (see `legacy_retry`), nothing kept.
    #[cfg(test)]
    pub(crate) async fn retry_as_before(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<StartedRun, EngineError> {
        let state = self.run_state(id)?;
        let origin = Origin {
            id: Some(keyed_run_id("", &format!("retry of {id}"))),
            retry_of: Some(id.to_string()),
            ..Origin::default()
        };
        self.start(
            state.workflow,
            state.version,
            state.spec,
            state.input,
            origin,
        )
        .await
    }

    /// The retry of run `run` made by a server before retries' ids named the
    /// run's start (they named its id only, which a keyed run deleted and
    /// started again shares): told apart by time. A retry starts once its
    /// run has ended; a run of the same id made after the retry had ended is
    /// another. Both in milliseconds: what happens within the same one is told
    /// apart by the second.
    fn legacy_retry(&self, id: &str, run: &RunSummary) -> Result<Option<String>, EngineError> {
        let retry_id = keyed_run_id("", &format!("retry of {id}"));
        let Some(retry) = self.store.run(&retry_id)? else {
            return Ok(None);
        };
        let ours = retry.retry_of.as_deref() == Some(id)
            && run
                .finished_at
                .is_some_and(|ended| retry.created_at >= ended)
            && retry
                .finished_at
                .is_none_or(|retry_ended| run.created_at < retry_ended);
        Ok(ours.then_some(retry_id))
    }

    /// Runs a failed or cancelled run again as a new run: tasks that succeeded
    /// keep their outputs, the others run again.
    pub async fn retry(self: &Arc<Self>, id: &str) -> Result<StartedRun, EngineError> {
        let state = self.run_state_off_runtime(id).await?;
        if !matches!(state.status, RunStatus::Failed | RunStatus::Cancelled) {
            let now = match state.status {
                RunStatus::Running => "is still running",
                _ => "succeeded",
            };
            return Err(EngineError::Conflict(format!(
                "run {id:?} {now}; only failed or cancelled runs can be retried"
            )));
        }
        // A run is retried once: its retry's id comes from its own and its
        // start, so a second retry finds the first (which would repeat what
        // that one did, a charge that succeeded there made again), and a run
        // of the same id started again later (a keyed run deleted) is retried
        // afresh. Its retry is retried instead, as a chain. Retries take turns
        // with keyed starts.
        let retry_id = retry_run_id(id, state.started_at);
        let _one = self.keyed.lock().await;
        let running = self.runs.lock().is_ok_and(|r| r.contains_key(&retry_id));
        let status = match self.store.run(&retry_id)? {
            Some(s) => Some((retry_id.clone(), s.status)),
            None if running => Some((retry_id.clone(), RunStatus::Running)),
            None => match self.store.run(id)? {
                Some(run) => match self.legacy_retry(id, &run)? {
                    Some(legacy) => self.store.run(&legacy)?.map(|s| (legacy, s.status)),
                    None => None,
                },
                None => None,
            },
        };
        if let Some((retry_id, status)) = status {
            return Err(EngineError::Conflict(format!(
                "run {id:?} was retried already, as run {retry_id} ({}): retry that one instead",
                status.as_str()
            )));
        }
        // A task that succeeded keeps its output; so does one that failed for
        // good but whose fallback succeeded (the fallback's output stood for
        // it): running it again would repeat its side effects. So do those
        // inside a `foreach`, an `if` or a called workflow that did not
        // succeed as a whole (what is inside one that did goes with it).
        // Inside a stored workflow run by name, only while that workflow is
        // still the version the run ran: the retry runs the latest, whose
        // tasks of the same names may be others.
        let mut latest: HashMap<String, Option<u32>> = HashMap::new();
        let mut same_version = |t: &crate::state::TaskState| -> Result<bool, EngineError> {
            let mut scope = t.scope.clone();
            while let Some(parent) = scope {
                let Some(p) = state.tasks.get(&parent) else {
                    break;
                };
                if let Some(v) = p.workflow_version {
                    let now = match latest.get(&p.spec.run) {
                        Some(now) => *now,
                        None => {
                            let now = self.store.workflow(&p.spec.run, None)?.map(|w| w.version);
                            latest.insert(p.spec.run.clone(), now);
                            now
                        }
                    };
                    if now != Some(v) {
                        return Ok(false);
                    }
                }
                scope = p.scope.clone();
            }
            Ok(true)
        };
        let mut kept = Vec::new();
        for t in state.tasks.values() {
            let inside_unfinished = t
                .scope
                .as_deref()
                .is_none_or(|parent| state.resolved(parent).is_none());
            if inside_unfinished && same_version(t)? {
                kept.push(t);
            }
        }
        // What this run kept itself and had not reached yet (a retry of a
        // retry that ended before its parent added them again).
        let mut preserved: BTreeMap<String, TaskResult> = state
            .preserved_inside
            .iter()
            .map(|(id, r)| {
                let mut r = r.clone();
                r.from = r.from.or_else(|| state.retry_of.clone());
                (id.clone(), r)
            })
            .collect();
        preserved.extend(kept.into_iter().filter_map(|t| {
            let result = state.resolved(&t.id)?;
            Some((
                t.id.clone(),
                TaskResult {
                    output: result.output.clone().unwrap_or(Value::Null),
                    headers: result.headers.clone(),
                    inputs: t.inputs.clone().unwrap_or(Value::Null),
                    // Kept by this run in its turn: from where it ran.
                    from: t.kept_from.clone(),
                },
            ))
        }));
        // A call in flight when the run ended may have been made (its
        // answer unused): the retry's attempts of that task go under the
        // same key, so that the function can tell. So do the keys this run
        // inherited itself and had not used yet.
        let mut keys: BTreeMap<String, String> = state
            .inherited_keys
            .iter()
            .filter(|(task, _)| state.tasks.get(*task).is_none_or(|t| t.attempts == 0))
            .map(|(t, k)| (t.clone(), k.clone()))
            .collect();
        keys.extend(
            state
                .tasks
                .values()
                .filter(|t| t.status == TaskStatus::Cancelled && t.attempts > 0)
                // In flight, not between attempts (whose last call answered).
                .filter(|t| t.retry_at.is_none())
                .filter(|t| !preserved.contains_key(&t.id))
                .filter_map(|t| Some((t.id.clone(), t.key.clone()?))),
        );
        self.start(
            state.workflow,
            state.version,
            state.spec,
            state.input,
            Origin {
                retry_of: Some(id.to_string()),
                preserved,
                keys,
                id: Some(retry_id),
                // A retry is asked for later, by someone else: the first
                // caller's credentials are not its own.
                credentials: Credentials::default(),
            },
        )
        .await
    }

    /// Ends the long polls (`?wait=`) waiting now and from now on: the
    /// server is stopping, and a poll would hold its stop for the whole
    /// grace. Runs go on meanwhile.
    pub fn end_polls(&self) {
        self.polls_end.send_replace(true);
    }

    /// The server stops within `grace`: the waits of synchronous callers for
    /// runs that cannot move on before it ends (asleep past it, waiting for a
    /// callback) end now, answered as at the stop; the others go on waiting.
    pub fn stopping_within(&self, grace: Duration) {
        let ms = Millis::try_from(grace.as_millis()).unwrap_or(Millis::MAX);
        self.stop_by
            .send_replace(Some(self.clock.now_ms().saturating_add(ms)));
    }

    /// How many long polls wait (for tests).
    #[cfg(test)]
    pub(crate) fn polls_waiting(&self) -> usize {
        self.polls_end.receiver_count()
    }

    /// Resolves once `end_polls` was called.
    pub async fn polls_ended(&self) {
        let mut rx = self.polls_end.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Waits, up to `limit`, until no task's call is in flight and every
    /// outcome is taken by its run (written at the latest by `shutdown`):
    /// whether that happened. The server's stop waits for them within its
    /// grace, so an `http` task that ended is not made again at the next start.
    pub async fn calls_settled(&self, limit: Duration) -> bool {
        let mut calls = self.calls.subscribe();
        let settled = tokio::time::timeout(limit, calls.wait_for(|n| *n == 0)).await;
        settled.is_ok()
    }

    /// Stops every run actor (their state is durable; `open` continues them).
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let handles: Vec<_> = self
            .runs
            .lock()
            .map(|mut r| r.drain().map(|(_, h)| (h.tx, h.done)).collect())
            .unwrap_or_default();
        for (tx, _) in &handles {
            let _ = tx.send(Msg::Shutdown);
        }
        // Each actor writes what it holds, then ends (dropping its sender).
        for (_, mut done) in handles {
            while done.changed().await.is_ok() {}
        }
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %e, "closing the store at shutdown failed");
        }
    }

    fn spawn_run(
        self: &Arc<Self>,
        state: RunState,
        seq: u64,
        pending: Vec<Event>,
        recovering: bool,
    ) -> Result<watch::Receiver<Option<RunSummary>>, EngineError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = watch::channel(None);
        let (parked_tx, parked_rx) = watch::channel(None);
        {
            let mut runs = self.runs.lock().map_err(|_| EngineError::ShuttingDown)?;
            // Checked under the lock `shutdown` drains the runs with (after
            // setting `stopping`): a run is either refused here or waited for
            // there, never left holding unwritten events.
            if self.stopping.load(Ordering::SeqCst) {
                return Err(EngineError::ShuttingDown);
            }
            runs.insert(
                state.run_id.clone(),
                RunHandle {
                    tx: tx.clone(),
                    done: done_rx.clone(),
                    parked: parked_rx,
                    workflow: state.workflow.clone(),
                    version: state.version,
                },
            );
        }
        let actor = Actor {
            engine: self.clone(),
            state,
            seq,
            pending,
            tx,
            calls: Default::default(),
            inflight: HashMap::new(),
            armed: BTreeSet::new(),
            timers: Vec::new(),
            replies: Vec::new(),
            held_since: None,
            summary: None,
            parked: parked_tx,
        };
        tokio::spawn(actor.run(rx, done_tx, recovering));
        Ok(done_rx)
    }
}

/// Resolves once the server is stopping and the run cannot move on before
/// the stop's grace ends: parked until a timer past it (or none at all).
async fn parked_past_the_stop(
    mut parked: watch::Receiver<Option<Millis>>,
    mut stop_by: watch::Receiver<Option<Millis>>,
) {
    loop {
        let past = match (*stop_by.borrow_and_update(), *parked.borrow_and_update()) {
            (Some(by), Some(next)) => next > by,
            _ => false,
        };
        if past {
            return;
        }
        tokio::select! {
            r = parked.changed() => if r.is_err() { return std::future::pending().await },
            r = stop_by.changed() => if r.is_err() { return std::future::pending().await },
        }
    }
}

/// A call in flight: its task and outcome, or `None` once aborted.
type CallFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<(String, Vec<Event>)>> + Send>>;

/// What the actor woke up for.
enum Woke {
    Msg(Option<Msg>),
    Call(Option<(String, Vec<Event>)>),
    Held,
    /// A turn of `STEPS_PER_TURN` ended with more to do, and nothing came.
    Turn,
}

struct Actor {
    engine: Arc<Engine>,
    state: RunState,
    seq: u64,
    pending: Vec<Event>,
    tx: mpsc::UnboundedSender<Msg>,
    /// The calls in flight, polled by the actor itself (no task of their
    /// own: a call's outcome reaches the run without crossing tasks). They
    /// are polled while the actor waits for what comes next; while it waits
    /// for a flush (one group commit) their connections go on, and only the
    /// outcomes wait.
    calls: futures_util::stream::FuturesUnordered<CallFuture>,
    inflight: HashMap<String, InFlight>,
    armed: BTreeSet<Millis>,
    /// The armed timers' tasks: aborted when the actor stops, so a finished run
    /// does not leave (say) its one-hour timeout timer holding the engine.
    timers: Vec<AbortHandle>,
    /// Answers to callback completions, sent once their events are durable.
    replies: Vec<(oneshot::Sender<Result<String, EngineError>>, String)>,
    /// Since when `pending` holds events that nothing needed written yet.
    held_since: Option<tokio::time::Instant>,
    /// The run's summary as its last write that changed it left it.
    summary: Option<RunSummary>,
    /// What the run waits for while nothing of its own runs (`RunHandle::parked`).
    parked: watch::Sender<Option<Millis>>,
}

impl Actor {
    /// Answers the callback completions whose events are now durable.
    fn answer_completions(&mut self) {
        for (reply, task) in self.replies.drain(..) {
            let _ = reply.send(Ok(task));
        }
    }

    fn record(&mut self, e: Event) {
        let e = within_depth(e);
        apply(&mut self.state, &e);
        self.pending.push(e);
    }

    async fn persist(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.append_pending()?;
        self.engine.store.flush().await
    }

    /// Writes the pending events (not yet durable: see `flush`).
    fn append_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.pending);
        let summary = self
            .engine
            .store
            .append(&self.state.run_id, self.seq, &events)?;
        self.seq += events.len() as u64;
        self.summary = summary.or(self.summary.take());
        Ok(())
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        done: watch::Sender<Option<RunSummary>>,
        recovering: bool,
    ) {
        let id = self.state.run_id.clone();
        if recovering {
            let documents = self.state.spec.state_machine.is_some();
            // Dispatched but not recorded as finished: dispatch again, same key.
            let again: Vec<External> = self
                .state
                .in_flight()
                .iter()
                .filter_map(|t| {
                    let inputs = t.inputs.clone().unwrap_or(Value::Null);
                    let key = t.key.clone()?;
                    let timeout = t.spec.timeout.as_deref().and_then(parse_duration);
                    let target = t.spec.target();
                    if is_url(&target) {
                        return Some(External::Http {
                            task: t.id.clone(),
                            attempt: t.attempts,
                            request: url_request(&target, &inputs, &key),
                            timeout,
                        });
                    }
                    if target == "http" {
                        let named = inputs.as_object()?.clone().into_iter().collect();
                        if let Outcome::Http(request) = builtins::run("http", &named, &named) {
                            return Some(External::Http {
                                task: t.id.clone(),
                                attempt: t.attempts,
                                request: keyed(request, &key),
                                timeout,
                            });
                        }
                        return None;
                    }
                    Some(External::Call {
                        task: t.id.clone(),
                        attempt: t.attempts,
                        call: function_call(&target, &inputs, &key, timeout, documents),
                    })
                })
                .collect();
            // Waiting callbacks whose URL was not handed out yet: again, same key.
            let base = self.engine.config.callback_base.clone();
            let again = again.into_iter().chain(
                self.state
                    .unnotified_callbacks()
                    .into_iter()
                    .filter_map(|(t, notify, token)| {
                        Some(External::Notify {
                            task: t.id.clone(),
                            attempt: t.attempts,
                            call: notify_call(
                                base.as_deref(),
                                notify,
                                t.inputs.as_ref()?,
                                token,
                                t.key.as_deref()?,
                                t.spec.timeout.as_deref().and_then(parse_duration),
                                documents,
                            ),
                        })
                    })
                    .collect::<Vec<_>>(),
            );
            let again: Vec<External> = again.collect();
            // The run's history says that it was taken up again, and which
            // calls were made a second time (their functions may see both).
            let repeated = again
                .iter()
                .filter_map(|e| match e {
                    External::Call { task, .. }
                    | External::Http { task, .. }
                    | External::Notify { task, .. } => Some(task.clone()),
                    External::Timer(_) | External::Abort(_) => None,
                })
                .collect();
            self.record(Event::RunResumed {
                repeated,
                at: self.engine.clock.now_ms(),
            });
            for ext in again {
                self.perform(ext);
            }
        }
        loop {
            let mut external = Vec::new();
            let mut finished = false;
            let mut more = false;
            for step in 1..=STEPS_PER_TURN {
                let now = self.engine.clock.now_ms();
                let mut progressed = false;
                for action in decide(&self.state, now) {
                    match action {
                        Action::Dispatch {
                            task,
                            attempt,
                            key,
                            spec,
                        } => {
                            progressed = true;
                            if let Some(ext) = self.dispatch(&task, attempt, &key, &spec, now) {
                                external.push(ext);
                            }
                        }
                        Action::ScheduleRetry { task, attempt, due } => {
                            progressed = true;
                            self.record(Event::RetryScheduled {
                                task,
                                attempt,
                                due,
                                at: now,
                            });
                        }
                        Action::StartTimer { at } => {
                            if self.armed.insert(at) {
                                external.push(External::Timer(at));
                            }
                        }
                        Action::FireTimer { task } => {
                            progressed = true;
                            self.record(Event::TimerFired { task, at: now });
                        }
                        Action::ExpireCallback { task, attempt } => {
                            progressed = true;
                            self.record_timeout(task, attempt, true, now);
                        }
                        Action::TimeOut { task, attempt } => {
                            progressed = true;
                            self.record_timeout(task, attempt, false, now);
                        }
                        Action::CancelTask { task, reason } => {
                            progressed = true;
                            self.record(Event::TaskCancelled {
                                task: task.clone(),
                                reason,
                                at: now,
                            });
                            external.push(External::Abort(task));
                        }
                        Action::Finish(f) => {
                            progressed = true;
                            finished = true;
                            self.record(finish_event(&f, now));
                        }
                    }
                }
                if !progressed || finished || self.state.is_finished() {
                    break;
                }
                more = step == STEPS_PER_TURN;
            }
            // Everything seen outside waits for the disk: a run's end, a
            // callback's URL (its token must survive) and the answer to a
            // callback completion, an abort (after the cancellation is
            // stored), a timer. Function and http calls do not: the outcomes
            // before a call are written before it goes out and flushed by the
            // next group commit (`flush_soon`) while it already runs. What
            // nothing outside follows yet is held and written with what comes
            // next, at the latest `LAZY_FLUSH_DELAY` later: what only starts
            // calls (a run's start, dispatches), and outcomes while no call
            // goes out (a parallel step's, while its siblings still run), so a
            // short run is written once, with its end. If the process dies
            // before the flush, the restart decides the same calls again, with
            // the same idempotency keys (at least once, as a crash during a
            // call gives); a synchronous caller was told nothing yet, and the
            // run's history never showed what is lost.
            let ending = finished || self.state.is_finished();
            let lazy = !ending
                && self.replies.is_empty()
                && !self.pending.iter().any(|e| {
                    matches!(
                        e,
                        Event::CallbackIssued { .. } | Event::CallbackNotified { .. }
                    )
                })
                && external
                    .iter()
                    .all(|e| matches!(e, External::Call { .. } | External::Http { .. }));
            let only_starts = self
                .pending
                .iter()
                .all(|e| matches!(e, Event::RunStarted { .. } | Event::TaskDispatched { .. }));
            let flushed = if lazy && (only_starts || external.is_empty()) {
                if !self.pending.is_empty() && self.held_since.is_none() {
                    self.held_since = Some(tokio::time::Instant::now());
                }
                Ok(())
            } else {
                let wrote = !self.pending.is_empty();
                self.held_since = None;
                match self.append_pending() {
                    Ok(()) if wrote && lazy => {
                        self.engine.store.flush_soon();
                        Ok(())
                    }
                    Ok(()) if wrote => self.engine.store.flush().await,
                    r => r,
                }
            };
            if let Err(err) = flushed {
                tracing::error!(run = %id, %err, "cannot persist run events; stopping the run actor");
                self.unstored(&done, &err);
                return;
            }
            self.answer_completions();
            if ending {
                self.stop(&done);
                return;
            }
            for ext in external {
                self.perform(ext);
            }
            let woke = if more {
                // The rest after what came meanwhile, if anything did.
                tokio::task::yield_now().await;
                match rx.try_recv() {
                    Ok(m) => Woke::Msg(Some(m)),
                    Err(_) => match self.calls.next().now_or_never() {
                        Some(Some(c)) => Woke::Call(c),
                        _ => Woke::Turn,
                    },
                }
            } else {
                let due = self.held_since.map(|since| since + LAZY_FLUSH_DELAY);
                let held = async move {
                    match due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                };
                let calling = !self.calls.is_empty();
                // Nothing in flight, nothing to write, nothing sent to it:
                // only its next timer (or a message from outside) moves it.
                let parked = (!calling && due.is_none() && rx.is_empty()).then(|| {
                    let now = self.engine.clock.now_ms();
                    self.armed
                        .range(now..)
                        .next()
                        .copied()
                        .unwrap_or(Millis::MAX)
                });
                self.parked.send_if_modified(|p| {
                    let changed = *p != parked;
                    *p = parked;
                    changed
                });
                tokio::select! {
                    m = rx.recv() => Woke::Msg(m),
                    Some(c) = self.calls.next(), if calling => Woke::Call(c),
                    _ = held => Woke::Held,
                }
            };
            let msg = match woke {
                // What was held is written: once its delay is up (`Held`,
                // armed only while something is held), and before a turn's
                // next (`Turn`: the run's history shows how far it got, and
                // a crash loses no more than a turn).
                Woke::Held | Woke::Turn => {
                    if self.held_since.take().is_some() {
                        if let Err(err) = self.append_pending() {
                            tracing::error!(run = %id, %err, "cannot persist run events; stopping the run actor");
                            self.unstored(&done, &err);
                            return;
                        }
                        self.engine.store.flush_soon();
                    }
                    continue;
                }
                Woke::Msg(None) => {
                    // Nobody can send any more (the actor keeps a sender, so
                    // this is defensive): write what is held, then end.
                    if self.persist().await.is_ok() {
                        self.answer_completions();
                    }
                    self.stop(&done);
                    return;
                }
                Woke::Msg(Some(m)) => m,
                Woke::Call(Some((task, events))) => Msg::Events(task, events),
                // An aborted call: nothing to record.
                Woke::Call(None) => Msg::Wake,
            };
            let mut msgs = vec![msg];
            while let Ok(m) = rx.try_recv() {
                msgs.push(m);
            }
            while let Some(Some(c)) = self.calls.next().now_or_never() {
                if let Some((task, events)) = c {
                    msgs.push(Msg::Events(task, events));
                }
            }
            // Outcomes already in hand are taken before a stop in the same
            // batch: a call that ended is not made again at the next start.
            msgs.sort_by_key(|m| matches!(m, Msg::Shutdown));
            for msg in msgs {
                match msg {
                    Msg::Events(task, events) => {
                        self.inflight.remove(&task);
                        // The late outcome of a cancelled task changes nothing.
                        let cancelled = self
                            .state
                            .tasks
                            .get(&task)
                            .is_some_and(|t| t.status == TaskStatus::Cancelled);
                        for e in events.into_iter().filter(|_| !cancelled) {
                            self.record(e);
                        }
                    }
                    Msg::Complete {
                        token,
                        output,
                        error,
                        reply,
                    } => {
                        let found = callback_task(&self.state, &token)
                            .map(|t| (t.id.clone(), t.attempts, t.status, t.callback_completed));
                        match found {
                            Some((task, attempt, TaskStatus::Running, false)) => {
                                let at = self.engine.clock.now_ms();
                                self.record(Event::CallbackCompleted {
                                    task: task.clone(),
                                    attempt,
                                    output,
                                    error,
                                    at,
                                });
                                self.replies.push((reply, task));
                            }
                            Some((task, _, _, true)) => {
                                let _ = reply.send(Err(callback_used(&task)));
                            }
                            _ => {
                                let _ = reply.send(Err(EngineError::NotFound(
                                    "a callback for this token".into(),
                                )));
                            }
                        }
                    }
                    Msg::Wake => {}
                    Msg::Cancel(reason) => {
                        let at = self.engine.clock.now_ms();
                        self.record(Event::RunCancelled { reason, at });
                    }
                    Msg::Shutdown => {
                        for (_, call) in self.inflight.drain() {
                            call.abort();
                        }
                        for h in self.timers.drain(..) {
                            h.abort();
                        }
                        if self.persist().await.is_ok() {
                            self.answer_completions();
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Fails an attempt its task's `timeout` ran out on: a callback's wait
    /// (`callback`), a sleep, a task waiting for what it runs.
    fn record_timeout(&mut self, task: String, attempt: u32, callback: bool, now: Millis) {
        let timeout = self
            .state
            .tasks
            .get(&task)
            .and_then(|t| t.spec.timeout.clone())
            .unwrap_or_default();
        let error = if callback {
            format!("the callback timed out: no one completed it within its timeout of {timeout}")
        } else {
            format!("the task timed out after {timeout} (its timeout)")
        };
        self.record(Event::TaskFailed {
            task,
            attempt,
            error,
            status: None,
            retryable: true,
            at: now,
        });
    }

    /// Stops a run whose events could not be made durable: its callers are
    /// told so (`Engine::wait`), never answered with what only memory holds.
    fn unstored(&mut self, done: &watch::Sender<Option<RunSummary>>, err: &impl std::fmt::Display) {
        if let Ok(mut u) = self.engine.unstored.lock() {
            u.insert(self.state.run_id.clone(), err.to_string());
        }
        self.summary = None;
        self.stop_with(done, false);
    }

    fn stop(&mut self, done: &watch::Sender<Option<RunSummary>>) {
        self.stop_with(done, true);
    }

    /// Ends the actor; `answer`: its summary goes to those waiting (else
    /// they read `Engine::unstored`).
    fn stop_with(&mut self, done: &watch::Sender<Option<RunSummary>>, answer: bool) {
        for (_, call) in self.inflight.drain() {
            call.abort();
        }
        for h in self.timers.drain(..) {
            h.abort();
        }
        if let Ok(mut runs) = self.engine.runs.lock() {
            runs.remove(&self.state.run_id);
        }
        if self.state.is_finished() {
            let m = &self.engine.metrics;
            let workflow = self.state.workflow.clone();
            m.runs_finished
                .get_or_create(&crate::metrics::RunEndLabels {
                    workflow: workflow.clone(),
                    status: self.state.status.as_str(),
                })
                .inc();
            if let Some(end) = self.state.finished_at {
                let secs = end.saturating_sub(self.state.started_at) as f64 / 1000.0;
                m.run_seconds
                    .get_or_create(&crate::metrics::WorkflowLabels { workflow })
                    .observe(secs);
            }
        }
        if !answer {
            // Those waiting wake to `Engine::unstored` once the actor is gone.
            return;
        }
        // The summary the run's last write left, as the store would read it
        // back; from the store when the run did not end here.
        let summary = match self.summary.take() {
            Some(s) if s.status != RunStatus::Running => Some(s),
            _ => self.engine.store.run(&self.state.run_id).ok().flatten(),
        };
        let _ = done.send(summary);
    }

    /// Records the dispatch of a task attempt; built-ins are evaluated here.
    fn dispatch(
        &mut self,
        task: &str,
        attempt: u32,
        key: &str,
        spec: &TaskSpec,
        now: Millis,
    ) -> Option<External> {
        let raw = spec.named_inputs();
        let local = self
            .state
            .tasks
            .get(task)
            .map(|t| t.local.clone())
            .unwrap_or_default();
        // A state machine's document is data, never expressions.
        let resolved =
            if self.state.spec.state_machine.is_none() && raw.values().any(contains_expression) {
                let mut sources = Vec::new();
                for v in raw.values() {
                    crate::expr::all_expressions(v, &mut sources);
                }
                // Only the tasks the expressions can name go into their scope.
                let scope = if crate::expr::names_tasks_literally(&sources) {
                    let invocation = sources.iter().any(|s| crate::expr::reads_invocation(s));
                    self.state.scope_naming(task, &sources, invocation)
                } else {
                    self.state.scope_for(task)
                };
                resolve_inputs(&scope, &local, &raw)
            } else {
                Ok(raw.clone())
            };
        let dispatched = |inputs: Value, wake_at: Option<Millis>| Event::TaskDispatched {
            task: task.into(),
            attempt,
            key: key.into(),
            inputs,
            at: now,
            wake_at,
        };
        let fail = |error: String| Event::TaskFailed {
            task: task.into(),
            attempt,
            error,
            status: None,
            retryable: false,
            at: now,
        };
        let inputs = match resolved {
            Ok(i) if i.values().any(crate::document::too_deep) => {
                // Made by its expressions: a run holding them could not be read back.
                self.record(dispatched(Value::Object(raw.into_iter().collect()), None));
                self.record(fail(format!(
                    "its inputs nest deeper than {} levels",
                    crate::document::MAX_DOCUMENT_DEPTH
                )));
                return None;
            }
            Ok(i) => i,
            Err(e) => {
                self.record(dispatched(Value::Object(raw.into_iter().collect()), None));
                if e.reads_invocation() {
                    // The caller's input does not fit: the run answers 422.
                    self.record(Event::TaskFailed {
                        task: task.into(),
                        attempt,
                        error: format!("the input does not fit the workflow: {e}"),
                        status: Some(INPUT_MISFIT_STATUS),
                        retryable: false,
                        at: now,
                    });
                } else {
                    self.record(fail(e.to_string()));
                }
                return None;
            }
        };
        let inputs_value = Value::Object(inputs.clone().into_iter().collect());
        let timeout = spec.timeout.as_deref().and_then(parse_duration);
        let target = spec.target().into_owned();
        // `fission://...` names a function (or, as the router's
        // `/fission-function/<name>`, the workflow of that name when no
        // function has it), never a built-in (RFC-0022 Task states are
        // dispatched this way too).
        let a_function = spec.run.starts_with(crate::spec::FISSION_SCHEME);
        if !a_function && builtins::is_builtin(&target) {
            match builtins::run(&target, &inputs, &raw) {
                Outcome::Output(v) => {
                    self.record(dispatched(inputs_value, None));
                    self.record(Event::TaskSucceeded {
                        task: task.into(),
                        attempt,
                        output: v,
                        headers: Headers::new(),
                        at: now,
                    });
                    None
                }
                outcome @ (Outcome::Tasks(_) | Outcome::Task { .. }) => {
                    self.record(dispatched(inputs_value, None));
                    // Always a spec (`builtins::pass` and the loops make it so).
                    let sub = outcome
                        .sub_workflow()
                        .unwrap_or_else(|| Err("not a task or workflow spec".into()));
                    match sub {
                        Ok(sub) => match self.too_big(sub.tasks.len()) {
                            Some(why) => self.record(fail(why)),
                            None => self.record(Event::TasksAdded {
                                parent: task.into(),
                                tasks: sub.tasks,
                                output: sub.output,
                                scope_inputs: sub.invocation,
                                concurrency: sub.concurrency,
                                version: None,
                                at: now,
                            }),
                        },
                        Err(e) => self.record(fail(e)),
                    }
                    None
                }
                Outcome::Fail(msg) => {
                    self.record(dispatched(inputs_value, None));
                    self.record(fail(msg));
                    None
                }
                Outcome::Invalid(msg) => {
                    self.record(dispatched(inputs_value, None));
                    // What the caller sent is not what the built-in takes: the
                    // caller's mistake, 422, as for an expression it breaks.
                    let mut sources = Vec::new();
                    for v in raw.values() {
                        crate::expr::all_expressions(v, &mut sources);
                    }
                    if sources.iter().any(|s| crate::expr::reads_invocation(s)) {
                        self.record(Event::TaskFailed {
                            task: task.into(),
                            attempt,
                            error: format!("the input does not fit the workflow: {msg}"),
                            status: Some(INPUT_MISFIT_STATUS),
                            retryable: false,
                            at: now,
                        });
                    } else {
                        self.record(fail(msg));
                    }
                    None
                }
                Outcome::Sleep(d) => {
                    // Saturating: a sleep longer than the clock can count never wakes, but
                    // it must not overflow (a panic would kill the run's actor).
                    let wake = now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    self.record(dispatched(inputs_value, Some(wake)));
                    None
                }
                Outcome::Callback { notify } => {
                    self.record(dispatched(inputs_value.clone(), None));
                    // `notify` calls a function; a workflow's name is no
                    // function's (it said "function ... does not exist").
                    if let Some(f) = notify.as_deref().filter(|f| {
                        !self.engine.invoker.function_exists(f)
                            && self.engine.store.workflow_exists(f)
                    }) {
                        self.record(fail(if self.state.spec.state_machine.is_some() {
                            crate::sfn::run::workflow_in_task(f)
                        } else {
                            format!("callback: notify {f:?} is a workflow; notify calls a function, with the callback's URL")
                        }));
                        return None;
                    }
                    let deadline = timeout.map(|d| {
                        now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    });
                    let token = callback_token(&self.state.run_id);
                    self.record(Event::CallbackIssued {
                        task: task.into(),
                        attempt,
                        token: token.clone(),
                        deadline,
                        at: now,
                    });
                    // The token is durable before anyone hears of it.
                    notify.map(|f| External::Notify {
                        task: task.into(),
                        attempt,
                        call: notify_call(
                            self.engine.config.callback_base.as_deref(),
                            &f,
                            &inputs_value,
                            &token,
                            key,
                            timeout,
                            self.state.spec.state_machine.is_some(),
                        ),
                    })
                }
                Outcome::Http(request) => {
                    self.record(dispatched(inputs_value, None));
                    Some(External::Http {
                        task: task.into(),
                        attempt,
                        request: keyed(request, key),
                        timeout: spec.timeout.as_deref().and_then(parse_duration),
                    })
                }
            }
        } else if !self.engine.invoker.function_exists(&target)
            && self.engine.store.workflow_exists(&target)
            && self.state.spec.state_machine.is_some()
        {
            // A state machine's steps are its states: the tasks of a
            // workflow added under one would never be run (the run waited
            // for its timeout, 24 h by default).
            self.record(dispatched(inputs_value, None));
            self.record(fail(crate::sfn::run::workflow_in_task(&target)));
            None
        } else if !self.engine.invoker.function_exists(&target)
            && self.engine.store.workflow_exists(&target)
        {
            self.record(dispatched(inputs_value.clone(), None));
            let depth = task.matches('/').count() + 1;
            match self.pinned_workflow(&target) {
                Ok(Some(_)) if depth > MAX_WORKFLOW_DEPTH => self.record(fail(format!(
                    "workflow {:?} would run nested {depth} levels deep, past the limit of {MAX_WORKFLOW_DEPTH} (does a workflow call itself?)",
                    spec.run
                ))),
                // A state machine's steps are no tasks to add: the task
                // waited for them for ever.
                Ok(Some(wf)) if wf.spec.state_machine.is_some() => self.record(fail(format!(
                    "workflow {target:?} is a Fission `Workflow` (a state machine), which a task cannot run inside this one: invoke it on its own (its route, /fission-function/{target}, `fusion wf invoke {target}`)"
                ))),
                Ok(Some(wf)) => match self.too_big(wf.spec.tasks.len()) {
                    Some(why) => self.record(fail(why)),
                    None => self.record(Event::TasksAdded {
                        parent: task.into(),
                        tasks: wf.spec.tasks,
                        output: wf.spec.output,
                        scope_inputs: Some(invocation_inputs(inputs_value)),
                        concurrency: wf.spec.concurrency,
                        version: Some(wf.version),
                        at: now,
                    }),
                },
                _ => self.record(fail(format!("workflow {:?} could not be loaded", spec.run))),
            }
            None
        } else if is_url(&target) {
            // Fission Workflows' http function reference: the URL is called
            // as a function would be, with the task's inputs.
            self.record(dispatched(inputs_value.clone(), None));
            Some(External::Http {
                task: task.into(),
                attempt,
                request: url_request(&target, &inputs_value, key),
                timeout,
            })
        } else {
            self.record(dispatched(inputs_value.clone(), None));
            Some(External::Call {
                task: task.into(),
                attempt,
                call: function_call(
                    &target,
                    &inputs_value,
                    key,
                    timeout,
                    self.state.spec.state_machine.is_some(),
                ),
            })
        }
    }

    /// The version of stored workflow `name` a task of this run runs: the one
    /// that was the latest when the run started (a run in flight keeps the
    /// workflows it started with, those it calls by name too), or the latest
    /// when the workflow was made after the run started.
    fn pinned_workflow(
        &self,
        name: &str,
    ) -> Result<Option<crate::store::WorkflowVersion>, crate::store::StoreError> {
        // Once the run has run a version of it, that one again (a `foreach`
        // of it runs one version, and looks for it once).
        let used = self
            .state
            .tasks
            .values()
            .find_map(|t| t.workflow_version.filter(|_| t.spec.target() == name));
        if let Some(version) = used {
            if let Some(w) = self.engine.store.workflow(name, Some(version))? {
                return Ok(Some(w));
            }
        }
        let started = self.state.started_at;
        let latest = self.engine.store.workflow(name, None)?;
        match &latest {
            Some(w) if w.created_at > started => {
                let then = self
                    .engine
                    .store
                    .workflow_versions(name)?
                    .into_iter()
                    .filter(|v| v.created_at <= started)
                    .max_by_key(|v| v.version);
                Ok(then.or(latest))
            }
            _ => Ok(latest),
        }
    }

    /// Why adding `more` tasks would make the run too big, if it would.
    fn too_big(&self, more: usize) -> Option<String> {
        let total = self.state.tasks.len() + more;
        (total > MAX_TASKS_PER_RUN).then(|| {
            format!("the run would grow to {total} tasks, past the limit of {MAX_TASKS_PER_RUN}")
        })
    }

    fn perform(&mut self, mut ext: External) {
        // Which attempt of its task a call is: its idempotency key is the
        // same on every one.
        match &mut ext {
            External::Call { call, attempt, .. } | External::Notify { call, attempt, .. } => {
                with_attempt(&mut call.headers, *attempt)
            }
            External::Http {
                request, attempt, ..
            } => with_attempt(&mut request.headers, *attempt),
            _ => {}
        }
        // A credential header a task forwards from the caller's request goes
        // as the caller sent it, not as the run's record holds it.
        if !self.state.credentials.0.is_empty() {
            let headers = match &mut ext {
                External::Call { call, .. } | External::Notify { call, .. } => {
                    Some(&mut call.headers)
                }
                External::Http { request, .. } => Some(&mut request.headers),
                _ => None,
            };
            for (k, v) in headers.into_iter().flatten() {
                if v == crate::api::REDACTED {
                    if let Some(sent) = self.state.credentials.get(k) {
                        *v = sent.to_string();
                    }
                }
            }
        }
        let tx = self.tx.clone();
        let engine = self.engine.clone();
        let documents = self.state.spec.state_machine.is_some();
        match ext {
            External::Abort(task) => {
                if let Some(call) = self.inflight.remove(&task) {
                    call.abort();
                }
            }
            External::Timer(at) => {
                let handle = tokio::spawn(async move {
                    engine.clock.sleep_until(at).await;
                    let _ = tx.send(Msg::Wake);
                });
                self.timers.retain(|h| !h.is_finished());
                self.timers.push(handle.abort_handle());
            }
            External::Call {
                task,
                attempt,
                call,
            } => {
                let t = task.clone();
                self.call(task, async move {
                    let timeout = call.timeout;
                    let result = bounded(timeout, async { engine.invoker.call(call).await }).await;
                    let events =
                        outcome_events(&t, attempt, result, engine.clock.now_ms(), documents);
                    (t, events)
                });
            }
            External::Notify {
                task,
                attempt,
                call,
            } => {
                let t = task.clone();
                self.call(task, async move {
                    let timeout = call.timeout;
                    let result = bounded(timeout, async { engine.invoker.call(call).await }).await;
                    let at = engine.clock.now_ms();
                    let events = match outcome_events(&t, attempt, result, at, documents).as_slice()
                    {
                        [Event::TaskSucceeded { .. }] => vec![Event::CallbackNotified {
                            task: t.clone(),
                            attempt,
                            at,
                        }],
                        failed => failed.to_vec(),
                    };
                    (t, events)
                });
            }
            External::Http {
                task,
                attempt,
                request,
                timeout,
            } => {
                let t = task.clone();
                self.call(task, async move {
                    // Its own limit when the task gives none: said as a
                    // timeout (504), not as a request that failed.
                    let limit = timeout.unwrap_or(HTTP_TIMEOUT);
                    let result = bounded(Some(limit), async {
                        match &engine.config.http {
                            Some(http) => http.send(request).await.map_err(CallError::Http),
                            None => Err(CallError::UnknownFunction(
                                "http (no HTTP transport configured)".into(),
                            )),
                        }
                    })
                    .await
                    .map_err(|e| match e {
                        CallError::Timeout(_) if timeout.is_none() => CallError::Timeout(format!(
                            "the http call timed out: no answer within {limit:?} (the `http` built-in's limit: a task `timeout` sets another)"
                        )),
                        CallError::Timeout(_) => CallError::Timeout(format!(
                            "the http call timed out: no answer within {limit:?} (its timeout)"
                        )),
                        other => other,
                    });
                    let events =
                        outcome_events(&t, attempt, result, engine.clock.now_ms(), documents);
                    (t, events)
                });
            }
        }
    }

    /// Puts a call in flight, abortable by its task's name.
    fn call(
        &mut self,
        task: String,
        call: impl std::future::Future<Output = (String, Vec<Event>)> + Send + 'static,
    ) {
        let (call, handle) = futures_util::future::abortable(call);
        self.calls.push(Box::pin(call.map(Result::ok)));
        self.engine.calls.send_modify(|n| *n += 1);
        let engine = self.engine.clone();
        self.inflight.insert(task, InFlight { handle, engine });
    }
}

/// A task's call in flight, counted in `Engine::calls` until its run has
/// taken its outcome or aborted it (the entry leaves `Actor::inflight`).
struct InFlight {
    handle: futures_util::future::AbortHandle,
    engine: Arc<Engine>,
}

impl InFlight {
    fn abort(&self) {
        self.handle.abort();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.engine.calls.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The id of the run that retries run `id` started at `started_at`: derived
/// from both, so a second retry finds the first, and a run of the same id
/// started again (a keyed run deleted, its key used again) has a retry of its
/// own.
fn retry_run_id(id: &str, started_at: Millis) -> String {
    keyed_run_id("", &format!("retry of {id} started at {started_at}"))
}

/// The id of the run an idempotency key starts for a workflow: a UUID
/// (version 8) of a hash of both, the same for the same key.
pub fn keyed_run_id(workflow: &str, key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{workflow}\0{key}").as_bytes(),
    );
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A new run's id: a version-7 UUID made at the run's creation time `at`,
/// which the store's indexes then hold in the id's first bytes (see `keys`).
/// Ids made on one thread within one millisecond order as they were made.
fn run_id_at(at: Millis) -> String {
    thread_local! {
        static IDS: uuid::ContextV7 = const { uuid::ContextV7::new() };
    }
    IDS.with(|ids| {
        let nanos = (at % 1000) as u32 * 1_000_000;
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix(ids, at / 1000, nanos)).to_string()
    })
}

/// A task's output nested deeper than a document may be fails the task
/// instead: its run's record could not be read back (a function's JSON, a
/// callback's body, a JavaScript value are each bounded only by their parser).
fn within_depth(e: Event) -> Event {
    match e {
        Event::TaskSucceeded {
            task,
            attempt,
            output,
            at,
            ..
        } if crate::document::too_deep(&output) => nested_too_deep(task, attempt, at),
        e => e,
    }
}

/// The failure of a task whose output nests deeper than a run keeps.
fn nested_too_deep(task: String, attempt: u32, at: Millis) -> Event {
    Event::TaskFailed {
        task,
        attempt,
        error: format!(
            "its output nests deeper than {} levels",
            crate::document::MAX_DOCUMENT_DEPTH
        ),
        status: None,
        retryable: false,
        at,
    }
}

#[cfg(test)]
mod error_code_tests {
    use super::*;

    /// Every code users can get is explained in docs/error-codes.md.
    #[test]
    fn every_engine_code_is_documented() {
        let doc = include_str!("../../docs/error-codes.md");
        let s = String::new;
        let all = [
            EngineError::NotFound(s()),
            EngineError::Conflict(s()),
            EngineError::NameTaken(s()),
            EngineError::Invalid(Vec::new()),
            EngineError::BadRequest(s()),
            EngineError::Store(StoreError::Cursor),
            EngineError::Store(StoreError::Flush(s())),
            EngineError::ShuttingDown,
        ];
        for e in all {
            let code = format!("`{}`", e.code());
            assert!(doc.contains(&code), "{code} is not in docs/error-codes.md");
        }
    }
}

#[cfg(test)]
mod run_id_tests {
    use super::*;

    /// A run's id carries its creation time, so the store's index entries
    /// hold the time once (see `keys`), and ids made within one millisecond
    /// list in the order they were made.
    #[test]
    fn run_ids_carry_their_runs_creation_time_in_order() {
        let at = 1_796_092_216_922;
        let ids: Vec<String> = (0..100).map(|_| run_id_at(at)).collect();
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).unwrap();
            let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
            assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, at, "{id}");
            assert_eq!(crate::keys::index_key(b"s", at, id).len(), 1 + 16);
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
    }
}
