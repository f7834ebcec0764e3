//! The engine's HTTP API: workflows (create, update, get, list, versions, delete,
//! invoke) and runs (list, detail, events, cancel, retry), plus `invoke_http`, the
//! invocation of a workflow by URL that the router uses. Every error is a status
//! and `{"error": {"code", "message"}}`.
//!
//! `POST /v1/workflows` takes the YAML as the body and the name from `?name=`, or
//! else from a top-level `name:` field of the document.
//! Run listing: `since`/`until` are milliseconds since the Unix epoch, `limit`
//! defaults to 50 (1 to 1000, else 400), `cursor` is the `next_cursor` of the last page.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::driver::{canonical_header, Engine, EngineError};
use crate::state::{Event, RunState, RunStatus};
use crate::store::{RunFilter, RunSummary, WorkflowVersion};
use crate::validate::{precheck, ValidationError};

/// Largest request body the API reads: a workflow document, a resource, a
/// cancel's reason (an invocation's is `--body-limit`, by default the same).
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What a request whose body is past `BODY_LIMIT` is told (413 `payload_too_large`).
pub fn body_too_large() -> String {
    format!(
        "the request body is larger than the limit of {BODY_LIMIT} bytes ({} MiB)",
        BODY_LIMIT >> 20
    )
}
/// Inputs and outputs longer than this (as JSON) are cut in listings.
const LISTING_VALUE_LIMIT: usize = 1024;

/// An API error: status, stable code, message, and validation details.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Vec<ValidationError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::NotFound(_) | EngineError::NoSuchVersion { .. } => StatusCode::NOT_FOUND,
            EngineError::Conflict(_)
            | EngineError::NameTaken(_)
            | EngineError::AlreadyExists(_) => StatusCode::CONFLICT,
            EngineError::Invalid(_) | EngineError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EngineError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::Store(crate::store::StoreError::Cursor) => StatusCode::BAD_REQUEST,
            EngineError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            EngineError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        let details = match &e {
            EngineError::Invalid(list) => list.clone(),
            _ => Vec::new(),
        };
        ApiError {
            status,
            code: e.code().to_string(),
            message: e.to_string(),
            details,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The server's own failures reach its log too, not only the caller.
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(code = %self.code, error = %self.message, "answered 500");
        }
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(first) = self.details.first() {
            // Where the first problem is, as the code is the first's.
            err["line"] = json!(first.line);
            err["column"] = json!(first.column);
            err["details"] = json!(self.details);
        }
        (self.status, Json(json!({ "error": err }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// `Query`, with a malformed query string answered as a JSON error (axum's own
/// rejection is a plain-text body).
struct ApiQuery<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| query_error(&e.body_text()))
    }
}

/// A query string that does not parse, in plain words: which parameter, and
/// what it takes.
fn query_error(text: &str) -> ApiError {
    let what = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    if let Some((_, rest)) = what.split_once("unknown field ") {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("unknown query parameter {rest}"),
        );
    }
    let takes = match what.split(':').next().unwrap_or_default().trim() {
        "limit" => " (a whole number from 1 to 1000)",
        "since" | "until" => {
            " (a time in epoch milliseconds; `fusion run list` also takes RFC 3339 and `2h`)"
        }
        "wait" => " (whole seconds, at most 300)",
        "version" => " (a version number: 1, 2, ...)",
        _ => "",
    };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("a query parameter is malformed: {what}{takes}"),
    )
}

/// `Path`, with a path that does not decode (e.g. bad UTF-8) as a JSON error.
struct ApiPath<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))
    }
}

/// A request body of at most `BODY_LIMIT` bytes; a larger one is a JSON error
/// (axum's `Bytes` stops at 2 MB with a plain-text body).
struct LimitedBody(Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        axum::body::to_bytes(req.into_body(), BODY_LIMIT)
            .await
            .map(LimitedBody)
            .map_err(|e| {
                if pool_manager::router::caused_by_limit(&e) {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        body_too_large(),
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("cannot read the request body: {e}"),
                    )
                }
            })
    }
}

/// The API routes (mount under the API listener).
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/workflows", post(create_workflow).get(list_workflows))
        .route(
            "/v1/workflows/{name}",
            get(get_workflow)
                .put(update_workflow)
                .delete(delete_workflow),
        )
        .route("/v1/workflows/{name}/versions", get(workflow_versions))
        .route("/v1/workflows/{name}/invoke", post(invoke))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run).delete(delete_run))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/runs/{id}/workflow", get(run_workflow))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/runs/{id}/retry", post(retry_run))
        .route("/v1/callbacks/{token}", post(complete_callback))
        .with_state(engine)
}

fn workflow_json(w: &WorkflowVersion, full: bool) -> Value {
    let mut v = json!({
        "name": w.name,
        "version": w.version,
        "created_at": w.created_at,
        "description": w.spec.description,
        "format": if w.spec.state_machine.is_some() { "rfc-0022" } else { "fission-workflows" },
    });
    if full {
        v["source"] = json!(w.source);
        // A Fission `Workflow`'s spec is its state machine, as its document's
        // `spec` holds it (not the engine's empty task graph around it).
        v["spec"] = match &w.spec.state_machine {
            Some(machine) => json!(machine),
            None => json!(w.spec),
        };
    }
    v
}

#[derive(Deserialize)]
struct NameQuery {
    name: Option<String>,
    /// Check everything a store would, store nothing (`?dry_run=true`).
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
struct DryRunQuery {
    #[serde(default)]
    dry_run: bool,
}

/// What a dry run answers: the workflow as it would be stored (the version
/// it would get), its warnings, and `dry_run: true`.
fn checked(
    engine: &Engine,
    name: &str,
    file: &str,
    source: &str,
    create: bool,
) -> ApiResult<Response> {
    let w = engine.check_workflow(name, file, create)?;
    let mut body = with_warnings(workflow_json(&w, false), engine, source);
    body["dry_run"] = json!(true);
    Ok(Json(body).into_response())
}

/// A workflow file from a request's body (without a byte-order mark), as it
/// is stored and shown, and its one document (`validate::workflow_text`),
/// which is read.
fn yaml_text(body: &Bytes) -> ApiResult<(&str, Cow<'_, str>)> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the workflow must be UTF-8 YAML",
        )
    })?;
    let doc = crate::validate::workflow_text(text)
        .map_err(|e| ApiError::from(EngineError::Invalid(vec![e])))?;
    Ok((crate::document::without_bom(text), doc))
}

async fn create_workflow(
    State(engine): State<Arc<Engine>>,
    ApiQuery(q): ApiQuery<NameQuery>,
    LimitedBody(body): LimitedBody,
) -> ApiResult<Response> {
    let (file, doc) = yaml_text(&body)?;
    let source: &str = &doc;
    let named = own_name(source)?;
    let name = match (q.name.filter(|n| !n.is_empty()), named) {
        (Some(asked), Some(named)) if asked != named => return Err(mismatch(&asked, &named)),
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => {
            // A document that does not parse has no name to find: its own
            // errors (with line and column) say more than a missing name.
            if let Err(errors) = crate::validate::check_offline(source) {
                return Err(EngineError::Invalid(errors).into());
            }
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_name",
                "give the workflow's name as ?name=, a top-level `name:` (Fission Workflows) or `metadata.name` (a Fission `Workflow`)",
            ));
        }
    };
    if q.dry_run {
        return checked(&engine, &name, file, source, true);
    }
    let w = engine.create_workflow(&name, file)?;
    engine.flush().await?;
    let body = with_warnings(workflow_json(&w, false), &engine, source);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A stored workflow's JSON with what is worth telling about it, if anything:
/// `warnings`, each `{code, message, line, column}`.
fn with_warnings(mut v: Value, engine: &Engine, source: &str) -> Value {
    let mut warnings = engine.warnings(source);
    if let Some(name) = v["name"].as_str() {
        warnings.extend(crate::validate::runs_itself(source, name));
        warnings.sort_by_key(|w| (w.line, w.column));
    }
    if !warnings.is_empty() {
        v["warnings"] = json!(warnings);
    }
    v
}

/// The name a workflow's document gives itself (`name:`, or a Fission
/// `Workflow`'s `metadata.name`), if any. Another kind of Fission document
/// (a `Function`) names no workflow: it is refused as what it is
/// (`not_a_workflow`), not for its name.
fn own_name(source: &str) -> ApiResult<Option<String>> {
    // Looking for it parses the document: bound its cost first.
    precheck(source).map_err(|e| EngineError::Invalid(vec![e]))?;
    Ok(serde_yaml::from_str::<serde_yaml::Value>(source)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .or_else(|| {
            crate::sfn::run::is_state_machine(source)
                .then(|| crate::sfn::run::document_name(source))
                .flatten()
        }))
}

fn mismatch(asked: &str, named: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "name_mismatch",
        format!(
            "the request names the workflow {asked:?} and its document {named:?}: give one name"
        ),
    )
}

async fn update_workflow(
    State(engine): State<Arc<Engine>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DryRunQuery>,
    LimitedBody(body): LimitedBody,
) -> ApiResult<Response> {
    let (file, doc) = yaml_text(&body)?;
    let source: &str = &doc;
    if let Some(named) = own_name(source)?.filter(|n| *n != name) {
        return Err(mismatch(&name, &named));
    }
    if q.dry_run {
        return checked(&engine, &name, file, source, false);
    }
    let (w, stored) = engine.update_workflow(&name, file)?;
    engine.flush().await?;
    let mut body = with_warnings(workflow_json(&w, false), &engine, source);
    if !stored {
        // As a secret's PUT says it: the document is the latest version's.
        body["unchanged"] = json!(true);
    }
    Ok(Json(body).into_response())
}

async fn list_workflows(State(engine): State<Arc<Engine>>) -> ApiResult<Json<Value>> {
    let list: Vec<Value> = engine
        .list_workflows()?
        .iter()
        .map(|w| workflow_json(w, false))
        .collect();
    Ok(Json(Value::Array(list)))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<u32>,
}

async fn get_workflow(
    State(engine): State<Arc<Engine>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(workflow_json(
        &engine.workflow(&name, q.version)?,
        true,
    )))
}

async fn workflow_versions(
    State(engine): State<Arc<Engine>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let list: Vec<Value> = engine
        .workflow_versions(&name)?
        .iter()
        .map(|w| workflow_json(w, false))
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn delete_workflow(
    State(engine): State<Arc<Engine>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    engine.delete_workflow(&name)?;
    engine.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn invoke(
    State(engine): State<Arc<Engine>>,
    ApiPath(name): ApiPath<String>,
    req: Request<Body>,
) -> Response {
    let base = api_base(&engine, req.headers());
    invoke_http_at(engine, &name, req, &base).await
}

/// The API's absolute URL for a 202's `Location`, as the client reached it:
/// the server's public URL, or its listener's address; the client's `Host`
/// when the listener is on every interface (0.0.0.0 is no address to call).
fn api_base(engine: &Engine, headers: &HeaderMap) -> String {
    let Some(base) = engine.config.callback_base.as_deref() else {
        return String::new();
    };
    let (scheme, authority) = base.split_once("://").unwrap_or(("http", base));
    let unspecified = authority.starts_with("0.0.0.0") || authority.starts_with("[::]");
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if unspecified && !host.is_empty() => format!("{scheme}://{host}"),
        _ => base.to_string(),
    }
}

/// A filter the history does not know is refused, not ignored (a listing of
/// every run where one was asked for).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    workflow: Option<String>,
    status: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// The run an invocation with this `Idempotency-Key` started (with
    /// `workflow`: a key is the workflow's).
    idempotency_key: Option<String>,
}

fn truncated(v: &Value) -> Value {
    let s = v.to_string();
    if s.len() <= LISTING_VALUE_LIMIT {
        v.clone()
    } else {
        let cut: String = s.chars().take(LISTING_VALUE_LIMIT).collect();
        json!({"truncated": true, "bytes": s.len(), "preview": cut})
    }
}

pub(crate) fn summary_json(s: &RunSummary) -> Value {
    json!({
        "id": s.id,
        "workflow": s.workflow,
        "version": s.version,
        "status": s.status,
        "created_at": s.created_at,
        "finished_at": s.finished_at,
        "duration_ms": s.finished_at.map(|f| f.saturating_sub(s.created_at)),
        // Its large body once, as the run itself answers it (not again as
        // `body` beside `default`, which made `bytes` twice the input's).
        "input": truncated(&answered_input(&s.input).0),
        "output": s.output.as_ref().map(truncated),
        "error": error_json(s.status, s.error.as_ref()),
        "retry_of": s.retry_of,
    })
}

/// A run's error with its code (`RunError::code`), or null.
fn error_json(status: RunStatus, error: Option<&crate::state::RunError>) -> Value {
    let Some(e) = error else { return Value::Null };
    let mut v = json!(e);
    v["code"] = json!(e.code(status));
    v
}

/// A status as a caller filters by it: Fusion's names in any case, and Fission
/// Workflows' invocation statuses (`IN_PROGRESS`, `ABORTED`...) for the same.
fn status_query(s: &str) -> Option<RunStatus> {
    let lower = s.to_ascii_lowercase();
    RunStatus::parse(&lower).or(match lower.as_str() {
        "scheduled" | "in_progress" => Some(RunStatus::Running),
        "aborted" | "canceled" => Some(RunStatus::Cancelled),
        _ => None,
    })
}

async fn list_runs(
    State(engine): State<Arc<Engine>>,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> ApiResult<JsonBytes> {
    // One status, or several separated by commas (`failed,cancelled`).
    let statuses = q
        .status
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            status_query(s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_status",
                    format!("unknown status {s:?} (running, succeeded, failed, cancelled; or Fission's IN_PROGRESS, SUCCEEDED, FAILED, ABORTED)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            format!("limit {limit} is not from 1 to 1000"),
        ));
    }
    if let (Some(since), Some(until)) = (q.since, q.until) {
        if since > until {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("since ({since}) is after until ({until}): no run can match"),
            ));
        }
    }
    if let Some(key) = q.idempotency_key.as_deref() {
        let Some(workflow) = q.workflow.as_deref().filter(|w| !w.is_empty()) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "idempotency_key needs workflow: a key names a run of one workflow",
            ));
        };
        let id = crate::driver::keyed_run_id(workflow, key);
        let found = match engine.run_summary(&id) {
            Ok(s) => Some(s),
            Err(EngineError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        settled(&engine).await;
        let found: Vec<RunSummary> = found
            .into_iter()
            .filter(|s| statuses.is_empty() || statuses.contains(&s.status))
            .filter(|s| q.since.is_none_or(|t| s.created_at >= t))
            .filter(|s| q.until.is_none_or(|t| s.created_at <= t))
            .collect();
        return off_runtime(move || {
            let runs = listed_page(&engine, &found)?;
            Ok(JsonBytes::of(&json!({"runs": runs, "next_cursor": null})))
        })
        .await;
    }
    let workflow = q.workflow.filter(|w| !w.is_empty());
    // A workflow that other workflows run as a task has no runs of its own
    // from them: its tasks are in theirs. The first page names them.
    let inside = match (&workflow, q.cursor.as_deref().filter(|c| !c.is_empty())) {
        (Some(w), None) => engine.workflows_running(w)?,
        _ => Vec::new(),
    };
    let page = engine.list_runs(&RunFilter {
        workflow,
        statuses,
        since: q.since,
        until: q.until,
        limit,
        cursor: q.cursor.filter(|c| !c.is_empty()),
        scan_limit: 0,
    })?;
    settled(&engine).await;
    off_runtime(move || {
        let runs = listed_page(&engine, &page.runs)?;
        let mut body = json!({"runs": runs, "next_cursor": page.next_cursor});
        if !inside.is_empty() {
            body["also_runs_inside"] = json!(inside);
        }
        Ok(JsonBytes::of(&body))
    })
    .await
}

/// A page of runs as the history lists them (see [`listed`]).
fn listed_page(engine: &Engine, page: &[RunSummary]) -> ApiResult<Vec<Value>> {
    let mut folds = RUNNING_TASKS_LISTED;
    page.iter().map(|s| listed(engine, s, &mut folds)).collect()
}

/// The running runs of a page whose running tasks are listed: each is
/// folded from its events, a cost the first hundred bear.
const RUNNING_TASKS_LISTED: usize = 100;

/// A run as the history lists it: a failed run a retry carried on, with the
/// way to it; a running run with the tasks it is at (`running_tasks`: those
/// running or waiting for their next attempt), while `folds` lasts.
fn listed(engine: &Engine, s: &RunSummary, folds: &mut usize) -> ApiResult<Value> {
    let mut run = summary_json(s);
    if matches!(s.status, RunStatus::Failed | RunStatus::Cancelled) {
        if let Some(retry) = engine.retried_by(&s.id)? {
            run["retried_by"] = json!(retry);
        }
    }
    if s.status == RunStatus::Running && *folds > 0 {
        *folds -= 1;
        if let Ok(state) = engine.run_state(&s.id) {
            use crate::state::TaskStatus;
            let at: Vec<&str> = state
                .tasks
                .values()
                .filter(|t| matches!(t.status, TaskStatus::Running | TaskStatus::Retrying))
                .map(|t| t.id.as_str())
                .collect();
            run["running_tasks"] = json!(at);
        }
    }
    Ok(run)
}

/// What a task is shown to run: what its `run` says, except for a loop's
/// item (`foreach`) or iteration (`while`) whose `do` is a workflow, which
/// the engine passes through a `noop` the user never wrote: it ran that
/// workflow, shown as `workflow`.
fn shown_run(s: &RunState, t: &crate::state::TaskState) -> String {
    let in_loop = t
        .scope
        .as_deref()
        .and_then(|p| s.tasks.get(p))
        .is_some_and(|p| matches!(p.spec.run.as_str(), "foreach" | "while"));
    if in_loop
        && t.spec.run == "noop"
        && t.spec
            .inputs
            .as_ref()
            .is_some_and(crate::spec::is_workflow_spec)
    {
        return "workflow".into();
    }
    t.spec.run.clone()
}

/// How many bytes of JSON `v` is, without writing it out.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// Where a run's answer holds its input body (`param()`): a task input that
/// is the same value refers to it there (`inputs_from`).
const INPUT_BODY_POINTER: &str = "/input/default";

/// A run's input as answered, and its body when that is large enough to be
/// answered once: past `LISTING_VALUE_LIMIT` bytes of JSON, the request's
/// `body` (the same value as its `default`, Fission Workflows' two names for
/// it) is left out, and tasks refer to the body rather than repeat it.
fn answered_input(input: &Value) -> (Value, Option<&Value>) {
    let Some(body) = input
        .get("default")
        .filter(|b| json_len(b) > LISTING_VALUE_LIMIT)
    else {
        return (input.clone(), None);
    };
    let mut shown = serde_json::Map::new();
    for (k, v) in input.as_object().into_iter().flatten() {
        if !(k == "body" && v == body) {
            shown.insert(k.clone(), v.clone());
        }
    }
    (Value::Object(shown), Some(body))
}

/// A task's inputs as answered, and those that are the run's large input
/// body (`body`), left out and named with where the answer holds it.
fn answered_inputs(inputs: Option<&Value>, body: Option<&Value>, at: &str) -> (Value, Value) {
    let (Some(Value::Object(named)), Some(body)) = (inputs, body) else {
        return (inputs.cloned().unwrap_or(Value::Null), Value::Null);
    };
    let mut shown = serde_json::Map::new();
    let mut from = serde_json::Map::new();
    for (k, v) in named {
        if v == body {
            from.insert(k.clone(), json!(at));
        } else {
            shown.insert(k.clone(), v.clone());
        }
    }
    let from = if from.is_empty() {
        Value::Null
    } else {
        Value::Object(from)
    };
    (Value::Object(shown), from)
}

/// A run in full: status, input, output, timings and every task. A large
/// input body is in it once (see `answered_input`).
pub fn run_json(s: &RunState) -> Value {
    serde_json::to_value(RunJson {
        s,
        retried_by: None,
    })
    .unwrap_or_default()
}

/// A run as answered, written out task by task: a `Value` of the whole run
/// held it all at once (about 90 MB for a run of 30,000 tasks). Its fields in
/// the order a `Value`'s map writes them.
struct RunJson<'a> {
    s: &'a RunState,
    /// A failed or cancelled run's retry, when it has one.
    retried_by: Option<String>,
}

impl serde::Serialize for RunJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let s = self.s;
        let (input, body) = answered_input(&s.input);
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("created_at", &s.started_at)?;
        m.serialize_entry(
            "duration_ms",
            &s.finished_at.map(|f| f.saturating_sub(s.started_at)),
        )?;
        m.serialize_entry("error", &error_json(s.status, s.error.as_ref()))?;
        m.serialize_entry("finished_at", &s.finished_at)?;
        m.serialize_entry("id", &s.run_id)?;
        m.serialize_entry("input", &input)?;
        m.serialize_entry("output", &s.output)?;
        m.serialize_entry("output_headers", &s.output_headers)?;
        if let Some(retry) = &self.retried_by {
            m.serialize_entry("retried_by", retry)?;
        }
        m.serialize_entry("retry_of", &s.retry_of)?;
        m.serialize_entry("status", &s.status)?;
        m.serialize_entry("tasks", &TasksJson { s, body })?;
        m.serialize_entry("version", &s.version)?;
        m.serialize_entry("workflow", &s.workflow)?;
        m.end()
    }
}

/// A run's tasks as answered, one `Value` at a time.
struct TasksJson<'a> {
    s: &'a RunState,
    body: Option<&'a Value>,
}

impl serde::Serialize for TasksJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(
            self.s
                .tasks
                .values()
                .map(|t| task_json(self.s, t, self.body)),
        )
    }
}

/// One task of a run as answered; `body`, the run's large input body, is
/// named rather than repeated in its inputs.
fn task_json(s: &RunState, t: &crate::state::TaskState, body: Option<&Value>) -> Value {
    let (inputs, inputs_from) = answered_inputs(t.inputs.as_ref(), body, INPUT_BODY_POINTER);
    let machine = s.spec.state_machine.as_deref();
    let shown = machine.and_then(|m| crate::sfn::run::step_shown(m, &t.id));
    let fan_out = machine.and_then(|m| crate::sfn::run::fan_out_shown(s, m, t));
    let (status, ended_at, output, error) = match fan_out {
        Some(f) => (f.status, f.ended_at, f.output, f.error),
        None => (t.status, t.ended_at, t.output.clone(), t.error.clone()),
    };
    // A step whose call succeeded but whose result could not be
    // placed (a `resultPath` into a document that cannot hold it)
    // failed the run there: shown failed, with the run's error.
    let (status, error) = match &s.error {
        Some(e)
            if machine.is_some()
                && s.status == RunStatus::Failed
                && status == crate::state::TaskStatus::Succeeded
                && e.task.as_deref() == Some(t.id.as_str()) =>
        {
            (crate::state::TaskStatus::Failed, Some(e.message.clone()))
        }
        _ => (status, error),
    };
    json!({
        "id": t.id,
        "scope": t.scope,
        "requires": t.requires,
        "run": shown.unwrap_or_else(|| shown_run(s, t)),
        "status": status,
        "attempts": t.attempts,
        "max_attempts": crate::retry::RetryPolicy::from_spec(t.spec.retry.as_ref())
            .map_or(1, |p| p.max_attempts),
        "failed_attempts": t.failed_attempts,
        "repeated_after_restart": t.repeated_after_restart,
        // The last (or current) attempt's start, and a retrying
        // task's next attempt.
        "attempt_started_at": t.attempt_started_at,
        "retry_at": t.retry_at.filter(|_| t.status == crate::state::TaskStatus::Retrying),
        "started_at": t.started_at,
        "ended_at": ended_at,
        "inputs": inputs,
        "inputs_from": inputs_from,
        "output": output,
        "output_headers": t.headers,
        "error": error,
        "cancel_reason": t.cancel_reason.as_ref().filter(|_| status == crate::state::TaskStatus::Cancelled),
        "http_status": t.http_status,
        "workflow_version": t.workflow_version,
        "kept_from": t.kept_from,
        "callback": t.callback.as_ref().map(|token| json!({
            "token": token,
            "path": format!("{CALLBACKS_PATH}{token}"),
            "deadline": t.callback_deadline,
            "completed": t.callback_completed,
        })),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunQuery {
    /// Seconds to wait for the run to end before answering (a long poll).
    wait: Option<u64>,
}

/// The most a `GET /v1/runs/{id}?wait=` holds the request.
const MOST_WAIT_SECS: u64 = 300;

/// Deletes a finished run (204); a running one is a 409.
async fn delete_run(
    State(engine): State<Arc<Engine>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    engine.delete_run(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Waits, once runs are read and before they are shown, for the group commit
/// that makes what was read durable (a write is recorded in the journal under
/// its lock, which the settle takes: one a read saw is counted by then). A step's outcome is stored before that commit:
/// shown before it, a crash could take back what a caller saw (the step then
/// runs again). A commit with nothing new to write writes nothing. One that
/// fails (a full disk: `/readyz` says so) leaves the runs to be shown as
/// stored, reads being what still works then.
async fn settled(engine: &Engine) {
    if let Err(e) = engine.settle().await {
        tracing::debug!(error = %e, "runs shown without their last changes durable");
    }
}

/// Runs `work`, whose cost grows with a run (folding its events, writing its
/// JSON), on a blocking thread. On the runtime's own threads it held up every
/// other request for as long: a router call waited 0.8 s while a run of
/// 30,000 tasks was shown. At most [`SHOWN_AT_ONCE`] such jobs run at once
/// (each may hold a large run's state and answer); the others wait for a
/// turn, and one whose caller hangs up while it waits is never run.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SHOWN_AT_ONCE);
    let failed = |e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("answering the request failed: {e}"),
        )
    };
    let turn = TURNS.acquire().await.map_err(|e| failed(&e))?;
    let done = tokio::task::spawn_blocking(work).await;
    drop(turn);
    done.map_err(|e| failed(&e))?
}

/// Runs folded and answered at once (see [`off_runtime`]): a run of 30,000
/// tasks holds about 200 MB while it is.
const SHOWN_AT_ONCE: usize = 2;

/// A JSON answer written out where it was made (see [`off_runtime`]).
struct JsonBytes(Vec<u8>);

impl JsonBytes {
    fn of(v: &Value) -> JsonBytes {
        // A `Value` always serializes.
        JsonBytes(serde_json::to_vec(v).unwrap_or_default())
    }

    fn write(v: &impl serde::Serialize) -> ApiResult<JsonBytes> {
        serde_json::to_vec(v).map(JsonBytes).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("writing the answer failed: {e}"),
            )
        })
    }
}

impl IntoResponse for JsonBytes {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

/// A run in full; with `?wait=SECONDS`, once it has ended or that time has
/// passed (whichever is first: the status says which).
async fn get_run(
    State(engine): State<Arc<Engine>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> ApiResult<JsonBytes> {
    if let Some(secs) = q.wait {
        if secs > MOST_WAIT_SECS {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("wait {secs} s is more than the most, {MOST_WAIT_SECS} s"),
            ));
        }
        // Known or 404 first; then the wait (its end, the time, or the
        // server's stop). Known by its summary, or (half deleted by a
        // crash: its summary gone, not its events) as shown without `wait`.
        if engine.run_summary(&id).is_err() {
            let (engine, id) = (engine.clone(), id.clone());
            off_runtime(move || Ok(engine.run_state(&id).map(drop)?)).await?;
        }
        let wait = tokio::time::timeout(std::time::Duration::from_secs(secs), engine.wait(&id));
        tokio::select! {
            _ = wait => {}
            () = engine.polls_ended() => {}
        }
    }
    let state = {
        let (engine, id) = (engine.clone(), id.clone());
        off_runtime(move || Ok(engine.run_state(&id)?)).await?
    };
    settled(&engine).await;
    off_runtime(move || {
        // The way on from a failed or cancelled run: the run that retried it.
        let retried_by = match state.status {
            RunStatus::Failed | RunStatus::Cancelled => engine.retried_by(&id)?,
            _ => None,
        };
        let run = RunJson {
            s: &state,
            retried_by,
        };
        JsonBytes::write(&run)
    })
    .await
}

/// The workflow a run runs, as `GET /v1/workflows/{name}?version=` gives
/// it, from the run itself: the version it started with, also once that
/// workflow was changed or deleted.
async fn run_workflow(
    State(engine): State<Arc<Engine>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<JsonBytes> {
    off_runtime(move || {
        let state = engine.run_state(&id)?;
        let spec = match &state.spec.state_machine {
            Some(machine) => json!(machine),
            None => json!(state.spec),
        };
        Ok(JsonBytes::of(&json!({
            "name": state.workflow,
            "version": state.version,
            "format": if state.spec.state_machine.is_some() { "rfc-0022" } else { "fission-workflows" },
            "spec": spec,
        })))
    })
    .await
}

async fn run_events(
    State(engine): State<Arc<Engine>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<JsonBytes> {
    let events = {
        let (engine, id) = (engine.clone(), id.clone());
        off_runtime(move || Ok(engine.run_events(&id)?)).await?
    };
    settled(&engine).await;
    off_runtime(move || {
        let events = EventsJson {
            id: &id,
            events: &events,
        };
        JsonBytes::write(&events)
    })
    .await
}

/// Where a run's events answer its large input body: in its start.
const EVENTS_BODY_POINTER: &str = "/events/0/input/default";

/// A run's events as answered. A large input body is in them once, as in
/// `run_json`: in the run's start, and a dispatch whose inputs take it
/// refers to it there (`inputs_from`) rather than repeat it.
pub fn events_json(id: &str, events: &[Event]) -> Value {
    serde_json::to_value(EventsJson { id, events }).unwrap_or_default()
}

/// A run's events as answered, written out one at a time (as [`RunJson`]).
struct EventsJson<'a> {
    id: &'a str,
    events: &'a [Event],
}

impl serde::Serialize for EventsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(2))?;
        m.serialize_entry("events", &EventList(self.events))?;
        m.serialize_entry("id", self.id)?;
        m.end()
    }
}

struct EventList<'a>(&'a [Event]);

impl serde::Serialize for EventList<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let events = self.0;
        let mut body = None;
        ser.collect_seq(events.iter().enumerate().map(|(i, e)| {
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            match e {
                Event::RunStarted { input, .. } if i == 0 => {
                    let (answered, b) = answered_input(input);
                    body = b;
                    v["input"] = answered;
                }
                Event::TaskDispatched { inputs, .. } if body.is_some() => {
                    let (answered, from) = answered_inputs(Some(inputs), body, EVENTS_BODY_POINTER);
                    v["inputs"] = answered;
                    if !from.is_null() {
                        v["inputs_from"] = from;
                    }
                }
                _ => {}
            }
            v
        }))
    }
}

/// Where a `callback` task's token is completed. A capability URL: the token is
/// the credential, the admin token is not asked for (see `fusion::guard`).
pub const CALLBACKS_PATH: &str = "/v1/callbacks/";

/// Completes a waiting `callback` task: a JSON body is its output, except an
/// object with the single key `error`, which fails the task with that error.
/// An empty body is a completion with no data (output `null`, as the body
/// `null`): a callback is often only a signal (an approval, a resume, a
/// webhook without payload), and a sender that cannot write JSON can still
/// give it; `fusion run complete` without `--result` sends the same.
async fn complete_callback(
    State(engine): State<Arc<Engine>>,
    ApiPath(token): ApiPath<String>,
    LimitedBody(body): LimitedBody,
) -> ApiResult<Json<Value>> {
    crate::document::check_json(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            e.code(),
            format!("the callback body: {e}"),
        )
    })?;
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the callback body is not JSON: {e}"),
            )
        })?
    };
    let (output, error) = match value {
        Value::Object(m) if m.len() == 1 && m.contains_key("error") => {
            let e = match &m["error"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (Value::Null, Some(e))
        }
        v => (v, None),
    };
    let failed = error.is_some();
    let task = engine.complete_callback(&token, output, error).await?;
    Ok(Json(json!({
        "task": task,
        "completed": if failed { "failed" } else { "succeeded" },
    })))
}

/// The most characters of a cancel's reason a run keeps.
const CANCEL_REASON_MOST: usize = 1000;

/// Cancels a running run; an optional body `{"reason": "..."}` says why, and
/// the run's error keeps it.
async fn cancel_run(
    State(engine): State<Arc<Engine>>,
    ApiPath(id): ApiPath<String>,
    LimitedBody(body): LimitedBody,
) -> ApiResult<Json<Value>> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message);
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        crate::document::check_json(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
        // A misspelt key (`reasn`) is said, not dropped with the reason in it.
        if let Some(other) = v
            .as_object()
            .and_then(|m| m.keys().find(|k| k.as_str() != "reason"))
        {
            return Err(bad(format!(
                r#"the body has the key {other:?}; it is {{"reason": "why"}}, or empty"#
            )));
        }
        match v.get("reason") {
            None | Some(Value::Null) if v.is_object() => None,
            Some(Value::String(r)) => Some(r.chars().take(CANCEL_REASON_MOST).collect::<String>()),
            _ => return Err(bad(r#"the body is {"reason": "why"}, or empty"#.into())),
        }
    };
    let why = match reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => format!("cancelled through the API: {r}"),
        _ => "cancelled through the API".to_string(),
    };
    let s = engine.cancel(&id, &why).await?;
    Ok(Json(summary_json(&s)))
}

async fn retry_run(
    State(engine): State<Arc<Engine>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let started = engine.retry(&id).await?;
    // Say which workflow and version the new run runs (a retry keeps the version
    // of the run it retries); its Location absolute, as an invocation's.
    let s = engine.run_summary(&started.id)?;
    Ok(accepted_with(
        &started.id,
        &api_base(&engine, &headers),
        json!({"workflow": s.workflow, "version": s.version, "retry_of": id}),
    ))
}

/// 202 for a run started in the background, with `fields` in the body (its
/// `status` "running" unless they say another); its `Location` is the run on
/// the API listener: `{api_base}/v1/runs/{id}` (`api_base` is empty on the API
/// listener itself, the absolute URL of the API listener on the router's).
fn accepted_with(id: &str, api_base: &str, mut fields: Value) -> Response {
    let location = format!("{api_base}/v1/runs/{id}");
    if let Some(m) = fields.as_object_mut() {
        m.insert("id".into(), json!(id));
        m.entry("status").or_insert(json!("running"));
        m.insert("location".into(), json!(location));
    }
    let mut resp = (StatusCode::ACCEPTED, Json(fields)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The `key=value` pairs of a query string or form body, percent-decoded.
fn pairs(encoded: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(encoded).into_owned().collect()
}

/// The input a form-encoded body (what `curl -d` sends) stands for:
/// - a body that is a JSON document is that JSON, since `curl -d '{"x": 1}'`
///   means JSON whatever content type curl puts on it;
/// - a body with `key=value` fields is an object of them, each value a string
///   (a key given more than once: an array of its values, in order);
/// - any other body (`curl -d hello`) is the text as sent.
///
/// Never an empty object for a body that has something in it.
fn form_input(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        crate::document::check_json(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                e.code(),
                format!("the request body: {e}"),
            )
        })?;
        return Ok(v);
    }
    // What `curl --data-binary @image.png` sends is a form by its type only.
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(crate::binary::value(body));
    };
    if !text.contains('=') {
        return Ok(Value::String(text.to_owned()));
    }
    let mut fields = serde_json::Map::new();
    for (k, v) in pairs(body) {
        match fields.get_mut(&k) {
            None => {
                fields.insert(k, Value::String(v));
            }
            Some(Value::Array(values)) => values.push(Value::String(v)),
            Some(first) => *first = Value::Array(vec![first.take(), Value::String(v)]),
        }
    }
    Ok(Value::Object(fields))
}

/// The longest idempotency key taken.
const MOST_KEY_LEN: usize = 255;

/// A request's `Idempotency-Key` (1 to 255 visible ASCII characters), if it
/// has one: the same key starts a workflow's run once.
fn idempotency_key(h: &HeaderMap) -> Result<Option<&str>, ApiError> {
    // Fission's `X-Fission-Dedup-Key` (RFC-0024's enqueue collapse) means the
    // same, where no Idempotency-Key is given.
    let name = match h.contains_key("idempotency-key") {
        true => "Idempotency-Key",
        false => "X-Fission-Dedup-Key",
    };
    let Some(v) = h.get(name) else {
        return Ok(None);
    };
    if h.get_all(name).iter().count() > 1 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("{name} is given more than once: give one"),
        ));
    }
    match v.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MOST_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("{name} must be 1 to {MOST_KEY_LEN} visible ASCII characters"),
        )),
    }
}

/// Whether a request asks to be answered 202 at once and run in the background
/// (`X-Async: true` or `Prefer: respond-async`).
pub fn is_async(h: &HeaderMap) -> bool {
    let prefer = || {
        h.get("prefer")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("respond-async"))
    };
    // An explicit X-Async wins over a Prefer (which a proxy may have added).
    match async_header(h) {
        Ok(Some(explicit)) => explicit,
        Ok(None) => prefer(),
        Err(_) => false,
    }
}

/// A `Prefer` header's value without its `respond-async` preference; `None`
/// when nothing else is left.
fn without_respond_async(prefer: &str) -> Option<String> {
    let rest: Vec<&str> = prefer
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("respond-async"))
        .collect();
    (!rest.is_empty()).then(|| rest.join(", "))
}

/// What a request's `X-Async` says: `true`, `1` or `yes` (any case) ask for a
/// 202, `false`, `0` or `no` for the answer; anything else is refused (a typo
/// must not quietly make a caller wait, or not). Without it, Fission's
/// `X-Fission-Invoke-Mode` (`async` or `sync`) is read the same way.
pub fn async_header(h: &HeaderMap) -> Result<Option<bool>, String> {
    let Some(v) = h.get("x-async") else {
        // Fission's own header: `X-Fission-Invoke-Mode: async` (or `sync`).
        return match h.get("x-fission-invoke-mode") {
            None => Ok(None),
            Some(v) => match v
                .to_str()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "async" => Ok(Some(true)),
                "sync" => Ok(Some(false)),
                _ => Err(format!(
                    "X-Fission-Invoke-Mode must be async or sync, not {:?}",
                    String::from_utf8_lossy(v.as_bytes())
                )),
            },
        };
    };
    let text = v.to_str().unwrap_or("").trim();
    if ["true", "1", "yes"]
        .iter()
        .any(|t| text.eq_ignore_ascii_case(t))
    {
        Ok(Some(true))
    } else if ["false", "0", "no"]
        .iter()
        .any(|t| text.eq_ignore_ascii_case(t))
    {
        Ok(Some(false))
    } else {
        Err(format!(
            "X-Async must be true or false, not {:?}",
            String::from_utf8_lossy(v.as_bytes())
        ))
    }
}

/// The request's credential headers, as sent: the run keeps them in memory
/// only (see `Credentials`).
fn credentials(headers: &HeaderMap) -> crate::state::Credentials {
    let mut sent = Vec::new();
    for name in CREDENTIAL_HEADERS {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        // Cookies sent as several headers go on as one (RFC 6265's `; `).
        let value = match name {
            "cookie" => values.join("; "),
            _ => values.first().map(|v| v.to_string()).unwrap_or_default(),
        };
        if !values.is_empty() {
            sent.push((name.to_string(), value));
        }
    }
    crate::state::Credentials(sent)
}

/// Request headers whose values never reach a run's record (lower case).
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];
/// What a run records, and its tasks see, in place of a credential header's value.
pub const REDACTED: &str = "[redacted]";

/// The workflow input of an HTTP request: `body` and `default` (JSON to a value,
/// a form body as [`form_input`] says, anything else to a string; no body is
/// `null` as JSON, `""` otherwise), `headers` (canonical names;
/// [`CREDENTIAL_HEADERS`] keep their name with the value [`REDACTED`]: the input
/// is stored durably in RunStarted, so it cannot hold a secret), `query` and `method`.
pub fn request_input(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let json = content_type.contains("json");
    let parsed = if body.is_empty() {
        // No body is no JSON value; as text (any other type, or none) it is
        // the empty string, as Fission Workflows read it (`param().trim()`
        // works on a call without input).
        match json {
            true => Value::Null,
            false => Value::String(String::new()),
        }
    } else if json {
        crate::document::check_json(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                e.code(),
                format!("the request body: {e}"),
            )
        })?;
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            )
        })?
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        form_input(body)?
    } else {
        crate::binary::text_or_bytes(body)
    };
    // Canonical names; of a header sent more than once, the first value (as
    // Fission Workflows). `X-Async`, `X-Fission-Invoke-Mode` and `Prefer:
    // respond-async` asked how to answer: not the run's input.
    let mut canonical = serde_json::Map::new();
    for (k, v) in headers {
        if matches!(k.as_str(), "x-async" | "x-fission-invoke-mode") {
            continue;
        }
        let value = if CREDENTIAL_HEADERS.contains(&k.as_str()) {
            REDACTED.to_string()
        } else {
            // A value past ASCII (a route parameter `böb`, `X-Name: zoë`)
            // is read as UTF-8, as Go's server reads it, not dropped.
            let v = String::from_utf8_lossy(v.as_bytes());
            match k.as_str() {
                "prefer" => match without_respond_async(&v) {
                    Some(rest) => rest,
                    None => continue,
                },
                _ => v.into_owned(),
            }
        };
        canonical
            .entry(canonical_header(k.as_str()))
            .or_insert(Value::String(value));
    }
    // Of a parameter given more than once, the first value too.
    let mut query = serde_json::Map::new();
    for (k, v) in pairs(uri.query().unwrap_or("").as_bytes()) {
        query.entry(k).or_insert(Value::String(v));
    }
    Ok(json!({
        "body": parsed,
        "default": parsed,
        "headers": canonical,
        "query": query,
        "method": method.as_str(),
    }))
}

/// Invokes a workflow with an HTTP request. Synchronous by default (200 with the
/// output, 204 when empty); `X-Async: true` or `Prefer: respond-async` answers 202
/// with the run id and a `Location`. A failed run answers with the failing
/// function's 4xx status, or 500, and a JSON error naming the task.
pub async fn invoke_http(engine: Arc<Engine>, name: &str, req: Request<Body>) -> Response {
    invoke_http_at(engine, name, req, "").await
}

/// `invoke_http` for a listener other than the API's: the 202's `Location` is
/// `{api_base}/v1/runs/{id}`, with `api_base` the API listener's absolute URL
/// (`http://host:port`).
pub async fn invoke_http_at(
    engine: Arc<Engine>,
    name: &str,
    req: Request<Body>,
    api_base: &str,
) -> Response {
    match invoke_inner(engine, name, req, api_base).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// How long an invocation's request body may take to arrive.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn invoke_inner(
    engine: Arc<Engine>,
    name: &str,
    req: Request<Body>,
    api_base: &str,
) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    async_header(&parts.headers)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_header", m))?;
    let limit = engine.config.body_limit.unwrap_or(BODY_LIMIT);
    let body =
        match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) if pool_manager::router::caused_by_limit(&e) => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is larger than the limit of {limit} bytes (--body-limit)"
                    ),
                ))
            }
            Ok(Err(e)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("cannot read the request body: {e}"),
                ))
            }
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {} s",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                ))
            }
        };
    let input = request_input(&parts.method, &parts.uri, &parts.headers, &body)?;
    let asynchronous = is_async(&parts.headers);
    let credentials = credentials(&parts.headers);
    // With an idempotency key, a start the caller repeats finds the run the
    // first made (and answers as for it) instead of starting another.
    let (id, new) = match idempotency_key(&parts.headers)? {
        Some(key) => {
            engine
                .start_run_keyed(name, input, key, !asynchronous, credentials)
                .await?
        }
        None if asynchronous => (engine.start_run(name, input, credentials).await?.id, true),
        None => (engine.start_run_waited(name, input, credentials)?.id, true),
    };
    if asynchronous {
        // A replay says how the run it found stands (it may have ended).
        let status = if new {
            RunStatus::Running
        } else {
            engine
                .run_summary(&id)
                .map_or(RunStatus::Running, |s| s.status)
        };
        let mut resp = accepted_with(&id, api_base, json!({"status": status.as_str()}));
        if !new {
            // The run an earlier start with this key made (as Stripe says it).
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        return Ok(resp);
    }
    let mut resp = waited_answer(&engine, &id).await?;
    if !new {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// The answer to a synchronous invocation: run `id`'s output once it has
/// ended, or its error.
async fn waited_answer(engine: &Engine, id: &str) -> ApiResult<Response> {
    let id = id.to_string();
    let summary = engine.wait(&id).await?;
    if summary.status == RunStatus::Running {
        // The server stops under the run: it has not failed, and it goes on
        // at the next start. Said as such, so that no caller starts it again.
        let body = json!({"error": {
            "code": "shutting_down",
            "message": format!(
                "the server is stopping; run {id} has not ended and goes on when it starts again: GET /v1/runs/{id}"
            ),
            "run_id": id,
        }});
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-fusion-run-id", v);
        }
        return Ok(resp);
    }
    match summary.status {
        RunStatus::Succeeded => Ok(output_response(
            summary.output.unwrap_or(Value::Null),
            &summary.output_headers,
            &id,
        )),
        status => {
            let err = summary.error.unwrap_or(crate::state::RunError {
                task: None,
                message: "the run did not succeed".into(),
                status: None,
            });
            let timed_out = err.code(status) == "run_timed_out";
            let code = match err.status {
                Some(s) if (400..500).contains(&s) => {
                    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                }
                _ if status == RunStatus::Cancelled => StatusCode::CONFLICT,
                _ if timed_out => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            // A workflow run by a task fails with its own task's words
            // (`task "S" failed: ...`): said once when the names are the same.
            let message = match &err.task {
                Some(t) if !err.message.starts_with(&format!("task {t:?} failed: ")) => {
                    format!("task {t:?} failed: {}", err.message)
                }
                _ => err.message.clone(),
            };
            let mut error = json!({
                "code": err.code(status),
                "message": message,
                "run_id": id,
            });
            // Only what is known: no `"task": null` or `"status": null`.
            if let Some(task) = &err.task {
                error["task"] = json!(task);
            }
            if let Some(s) = err.status {
                error["status"] = json!(s);
            }
            let body = json!({ "error": error });
            let mut resp = (code, Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert("x-fusion-run-id", v);
            }
            Ok(resp)
        }
    }
}

fn output_response(output: Value, headers: &BTreeMap<String, String>, run_id: &str) -> Response {
    let bytes = crate::binary::of(&output);
    // A text or bytes output keeps the type its task's answer gave it.
    let typed = output.is_string() || bytes.is_some();
    let mut resp = match &output {
        _ if bytes.is_some() => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes.unwrap_or_default(),
        )
            .into_response(),
        Value::Null => StatusCode::NO_CONTENT.into_response(),
        Value::String(s) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            s.clone(),
        )
            .into_response(),
        other => Json(other.clone()).into_response(),
    };
    for (k, v) in headers {
        let lk = k.to_ascii_lowercase();
        if matches!(
            lk.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "date"
        ) || (lk == "content-type" && !typed)
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    if let Ok(v) = HeaderValue::from_str(run_id) {
        resp.headers_mut().insert("x-fusion-run-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run and its events as answered, written out task by task: each
    /// task says what it required, and the bytes are those of the whole
    /// run's `Value` (keys in the same order), a retry and a large input
    /// body named once included.
    #[test]
    fn a_run_written_task_by_task_is_the_runs_json() {
        let task = |requires: &[&str]| crate::spec::TaskSpec {
            requires: requires.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        let spec = crate::spec::WorkflowSpec {
            output: "B".into(),
            tasks: [
                ("A".to_string(), task(&[])),
                ("B".to_string(), task(&["A"])),
            ]
            .into(),
            ..Default::default()
        };
        let body = json!("x".repeat(2000));
        let events = vec![
            Event::RunStarted {
                run_id: "r".into(),
                workflow: "w".into(),
                version: 1,
                spec,
                input: json!({"default": body}),
                at: 0,
                retry_of: None,
                preserved: Default::default(),
                keys: None,
                rules: crate::state::RULES,
            },
            Event::TaskDispatched {
                task: "A".into(),
                attempt: 1,
                key: "k".into(),
                inputs: json!({"default": body}),
                at: 1,
                wake_at: None,
            },
        ];
        let state = RunState::fold(&events);
        let run = run_json(&state);
        let b = run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == "B");
        assert_eq!(b.unwrap()["requires"], json!(["A"]));
        let mut whole = run.clone();
        whole["retried_by"] = json!("r2");
        let written = RunJson {
            s: &state,
            retried_by: Some("r2".into()),
        };
        assert_eq!(serde_json::to_string(&written).unwrap(), whole.to_string());
        let written = EventsJson {
            id: "r",
            events: &events,
        };
        let whole = events_json("r", &events);
        assert_eq!(
            whole["events"][1]["inputs_from"],
            json!({"default": "/events/0/input/default"})
        );
        assert_eq!(serde_json::to_string(&written).unwrap(), whole.to_string());
    }

    /// Every field `GET /v1/runs/{id}` answers, of the run and of each task,
    /// is in the OpenAPI document: a client reads the answer by it.
    #[test]
    fn the_document_names_every_field_of_a_run_and_its_tasks() {
        let doc: Value = serde_json::from_str(include_str!("../../schemas/openapi.json")).unwrap();
        let schema = &doc["components"]["schemas"]["Run"]["properties"];
        let spec = crate::spec::WorkflowSpec {
            output: "A".into(),
            tasks: [("A".to_string(), crate::spec::TaskSpec::default())].into(),
            ..Default::default()
        };
        let state = RunState::fold(&[crate::state::Event::RunStarted {
            run_id: "r".into(),
            workflow: "w".into(),
            version: 1,
            spec,
            input: json!({"default": "x"}),
            at: 0,
            retry_of: None,
            preserved: Default::default(),
            keys: None,
            rules: crate::state::RULES,
        }]);
        let run = run_json(&state);
        let undeclared = |answer: &Value, declared: &Value| -> Vec<String> {
            answer
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| declared.get(k.as_str()).is_none())
                .cloned()
                .collect()
        };
        assert_eq!(undeclared(&run, schema), Vec::<String>::new());
        let task_schema = &schema["tasks"]["items"]["properties"];
        assert_eq!(
            undeclared(&run["tasks"][0], task_schema),
            Vec::<String>::new()
        );
    }

    #[test]
    fn x_async_is_true_false_or_refused() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-async", v.parse().unwrap());
            (async_header(&h), is_async(&h))
        };
        for v in ["true", "TRUE", "1", "yes", " Yes "] {
            assert_eq!(with(v), (Ok(Some(true)), true), "{v}");
        }
        for v in ["false", "0", "no"] {
            assert_eq!(with(v), (Ok(Some(false)), false), "{v}");
        }
        let (refused, asynchronous) = with("ture");
        assert!(refused.unwrap_err().contains("\"ture\""));
        assert!(!asynchronous);
        assert_eq!(async_header(&HeaderMap::new()), Ok(None));
        // Fission's header means the same.
        let mut h = HeaderMap::new();
        h.insert("x-fission-invoke-mode", "async".parse().unwrap());
        assert!(is_async(&h));
        h.insert("x-fission-invoke-mode", "sync".parse().unwrap());
        assert_eq!(async_header(&h), Ok(Some(false)));
        h.insert("x-fission-invoke-mode", "later".parse().unwrap());
        assert!(async_header(&h).is_err());
        // Prefer asks unless X-Async says otherwise.
        let mut h = HeaderMap::new();
        h.insert("prefer", "respond-async".parse().unwrap());
        assert!(is_async(&h));
        h.insert("x-async", "false".parse().unwrap());
        assert!(!is_async(&h));
    }

    /// The `body` input of a POST with `content_type` and `body`.
    fn body_input(content_type: &str, body: &str) -> Value {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        let uri: Uri = "/fission-function/w".parse().unwrap();
        let input = request_input(&Method::POST, &uri, &headers, body.as_bytes()).unwrap();
        assert_eq!(input["default"], input["body"]);
        input["body"].clone()
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    #[test]
    fn a_form_body_that_is_json_is_that_json() {
        // What `curl -d '{"x":1}'` sends.
        assert_eq!(body_input(FORM, r#"{"x":1}"#), json!({"x": 1}));
        assert_eq!(body_input(FORM, r#"["a", 2]"#), json!(["a", 2]));
        assert_eq!(body_input(FORM, "42"), json!(42));
    }

    #[test]
    fn form_fields_are_an_object_of_strings() {
        assert_eq!(
            body_input(FORM, "name=Ada+Lovelace&year=1815&x=%7B%7D"),
            json!({"name": "Ada Lovelace", "year": "1815", "x": "{}"})
        );
        assert_eq!(
            body_input(FORM, "tag=a&tag=b&tag=c&one=1"),
            json!({"tag": ["a", "b", "c"], "one": "1"})
        );
        assert_eq!(body_input(FORM, "flag=&b"), json!({"flag": "", "b": ""}));
    }

    #[test]
    fn a_form_body_without_fields_is_its_text_never_an_empty_object() {
        assert_eq!(body_input(FORM, "hello"), json!("hello"));
        assert_eq!(body_input(FORM, "{not json"), json!("{not json"));
        assert_eq!(
            body_input(
                "application/x-www-form-urlencoded; charset=utf-8",
                "hello world"
            ),
            json!("hello world")
        );
    }

    #[test]
    fn other_bodies_keep_their_meaning() {
        assert_eq!(
            body_input("application/json", r#"{"x":1}"#),
            json!({"x": 1})
        );
        assert_eq!(body_input("text/plain", "a=b"), json!("a=b"));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let uri: Uri = "/w".parse().unwrap();
        let e = request_input(&Method::POST, &uri, &headers, b"{nope").unwrap_err();
        assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn query_parameters_are_decoded() {
        let uri: Uri = "/w?name=Ada%20L&empty=&plus=a+b".parse().unwrap();
        let input = request_input(&Method::GET, &uri, &HeaderMap::new(), b"").unwrap();
        assert_eq!(
            input["query"],
            json!({"name": "Ada L", "empty": "", "plus": "a b"})
        );
        // No body: the empty text, as Fission Workflows read it; no JSON value.
        assert_eq!(input["body"], json!(""));
        let mut json = HeaderMap::new();
        json.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let input = request_input(&Method::POST, &uri, &json, b"").unwrap();
        assert_eq!(input["body"], Value::Null);
    }

    #[test]
    fn of_a_name_given_twice_the_first_value_and_x_async_is_left_out() {
        let uri: Uri = "/w?q=first&q=second".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-a", "first".parse().unwrap());
        headers.append("x-a", "second".parse().unwrap());
        headers.insert("x-async", "true".parse().unwrap());
        headers.insert("x-fission-invoke-mode", "async".parse().unwrap());
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.append("cookie", "a=1".parse().unwrap());
        headers.append("cookie", "b=2".parse().unwrap());
        let input = request_input(&Method::GET, &uri, &headers, b"").unwrap();
        assert_eq!(input["query"], json!({"q": "first"}));
        assert_eq!(
            input["headers"],
            json!({"X-A": "first", "Authorization": REDACTED, "Cookie": REDACTED})
        );
        // What the run keeps in memory to forward: every cookie, as one.
        let kept = credentials(&headers);
        assert_eq!(kept.get("Authorization"), Some("Bearer t"));
        assert_eq!(kept.get("cookie"), Some("a=1; b=2"));
        assert_eq!(kept.get("proxy-authorization"), None);
    }

    #[test]
    fn prefer_respond_async_is_left_out_and_other_preferences_kept() {
        let uri: Uri = "/w".parse().unwrap();
        let input_headers = |prefer: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("prefer", prefer.parse().unwrap());
            request_input(&Method::GET, &uri, &headers, b"").unwrap()["headers"].clone()
        };
        assert_eq!(input_headers("respond-async"), json!({}));
        assert_eq!(input_headers("Respond-Async"), json!({}));
        assert_eq!(
            input_headers("respond-async, wait=5"),
            json!({"Prefer": "wait=5"})
        );
        assert_eq!(
            input_headers("return=minimal"),
            json!({"Prefer": "return=minimal"})
        );
    }
}
