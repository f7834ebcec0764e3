//! The API listener: `/v1/...` resources (environments, functions, packages
//! (`api_pkg.rs`), routes; secrets and configmaps in `api/secrets.rs`; asynchronous
//! invocations in `api/invocations.rs`), function logs and instances, health, and the workflow endpoints the
//! engine contributes. Every error is a status with `{"error": {"code", "message"}}`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures_util::StreamExt;
use pool_manager::error::error_response;
use pool_manager::{Environment, Error, Function, PoolManager};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use triggers::{Route, Target, Triggers};

mod canaries;
mod deletions;
mod invocations;
mod mqt;
pub mod pod_packages;
mod secrets;
mod timers;

#[derive(Clone)]
pub struct AppState {
    pub pool: PoolManager,
    /// Routes (and every other trigger), and the invoker they call through.
    pub triggers: Arc<Triggers>,
    /// Every metric of the server, rendered at `/metrics`.
    pub registry: Arc<prometheus_client::registry::Registry>,
    /// Asynchronous invocations by state (`pending`, `dead`), set when scraped.
    pub invocation_gauges: InvocationGauges,
    /// The credentials of function pods' fetchers (the kubernetes backend's;
    /// none on the others), checked by `/v1/pod-packages/`.
    pub pod_credentials: Arc<pool_manager::delivery::Credentials>,
    /// What `/readyz` answers: 503 with the reason once the store failed or
    /// the server is stopping.
    pub readiness: crate::health::Readiness,
    /// The workflow engine, whose store `/readyz` watches too.
    pub engine: Arc<engine::Engine>,
    /// Where the API token is kept (what a backup takes of it).
    pub token_file: std::path::PathBuf,
}

/// 200 `ok` while the server takes traffic; 503 with the JSON error once its
/// store failed (`store_failed`) or it is stopping (`shutting_down`), and
/// while the engine's store cannot make writes durable (`store_failing`: a
/// full disk; it is ready again once the store can).
async fn readyz(State(s): State<AppState>) -> Response {
    if let Some(why) = s.readiness.get() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, why.code, &why.message);
    }
    match s.engine.store().trouble() {
        None => "ok".into_response(),
        Some(why) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_failing",
            &format!(
                "the workflow store cannot make writes durable ({why}): runs cannot start or go on until it can (it tries again each second)"
            ),
        ),
    }
}

pub fn router(state: AppState) -> Router {
    let package_limit = state.pool.config().packages.max_upload as usize + 1;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    crate::guard::OPENAPI,
                )
            }),
        )
        .route("/v1/version", get(version))
        .route("/v1/environments", get(list_envs).post(create_env))
        .route(
            "/v1/environments/{name}",
            get(get_env).put(update_env).delete(delete_env),
        )
        .route("/v1/functions", get(list_fns).post(create_fn))
        .route(
            "/v1/functions/{name}",
            get(get_fn).put(update_fn).delete(delete_fn),
        )
        .route("/v1/functions/{name}/logs", get(fn_logs))
        .route("/v1/functions/{name}/instances", get(fn_instances))
        .route("/v1/functions/{name}/code", get(fn_code))
        .route("/v1/instances", get(all_instances))
        .route("/v1/backup", get(backup).head(backup_head))
        .merge(crate::api_pkg::routes(package_limit))
        .route("/v1/routes", get(list_routes).post(create_route))
        .route(
            "/v1/routes/{name}",
            get(get_route).put(update_route).delete(delete_route),
        )
        .merge(secrets::routes())
        .merge(invocations::routes())
        .merge(timers::routes())
        .merge(canaries::routes())
        .merge(deletions::routes())
        .merge(crate::api::mqt::routes())
        .layer(axum::middleware::from_fn(json_errors))
        // Added after the layer: a function's own answers pass through untouched.
        .route("/v1/functions/{name}/invoke", any(invoke_fn))
        .route("/v1/functions/{name}/invoke/{*rest}", any(invoke_fn))
        .with_state(state.clone())
        .merge(pod_packages::routes(pod_packages::PodPackages {
            credentials: state.pod_credentials.clone(),
            locate: {
                let pool = state.pool.clone();
                Arc::new(move |p| pool.package_path(p))
            },
        }))
}

/// `GET /v1/backup`: a backup of the running server as a tar archive
/// (`crate::backup`). The database is read first, then the archive is
/// streamed: a backup that cannot be made says why (507 `insufficient_storage`
/// without room for it, 503 `busy` when the store changed too much while it
/// was read, 500 otherwise); 409 `backup_running` while another is made. An
/// error once the archive has started (a file unreadable) cuts it off: the
/// client sees a body cut short, which `fusion backup` checks for.
async fn backup(State(s): State<AppState>) -> Response {
    let Some(turn) = crate::backup::Turn::take() else {
        return error_response(
            StatusCode::CONFLICT,
            "backup_running",
            "a backup of this server is being made: one at a time",
        );
    };
    let engine = s.engine.clone();
    let data_dir = s.pool.config().data_dir.clone();
    let dir = data_dir.clone();
    // Set when this handler is dropped before the read is done (its client
    // went away): the read stops, and the turn goes with it.
    let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_drop = CancelOnDrop(Some(cancelled.clone()));
    let prepared = tokio::task::spawn_blocking(move || {
        crate::backup::prepare(&engine, &dir, turn, &cancelled)
    })
    .await;
    on_drop.defuse();
    let prepared = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let (status, code) = match &e {
                crate::backup::NotMade::NoRoom(_) => {
                    (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
                }
                crate::backup::NotMade::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                crate::backup::NotMade::Failed(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "backup_failed")
                }
            };
            tracing::warn!(error = %e, "a backup was not made");
            return error_response(status, code, &e.to_string());
        }
        Err(e) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backup_failed",
                &format!("the backup stopped: {e}"),
            )
        }
    };
    let token_file = s.token_file.clone();
    let body = pod_packages::stream_body(
        "the backup",
        pod_packages::CHUNK,
        pod_packages::DEPTH,
        pod_packages::IDLE,
        move |out| {
            let m = crate::backup::send(prepared, &data_dir, &token_file, out)
                .map_err(|e| pool_manager::Error::Storage(format!("{e:#}")))?;
            tracing::info!(
                records = m.records,
                during = m.records_during,
                "made a backup"
            );
            Ok(())
        },
    );
    (BACKUP_HEADERS, body).into_response()
}

/// What a backup's answer would be, without making one (a HEAD made the
/// whole backup and dropped it): its headers.
async fn backup_head() -> Response {
    (StatusCode::OK, BACKUP_HEADERS).into_response()
}

/// The headers of a backup's answer.
const BACKUP_HEADERS: [(axum::http::HeaderName, &str); 2] = [
    (axum::http::header::CONTENT_TYPE, "application/x-tar"),
    (
        axum::http::header::CONTENT_DISPOSITION,
        "attachment; filename=\"fusion-backup.tar\"",
    ),
];

/// Sets its flag when dropped, unless defused first.
struct CancelOnDrop(Option<Arc<std::sync::atomic::AtomicBool>>);

impl CancelOnDrop {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The JSON 404 for paths no handler serves.
/// Functions and workflows share one name space (`/fission-function/<name>`),
/// kept in two stores: each creation checks the other store, then writes its
/// own. Creations of either run one at a time, so two of them cannot both pass
/// the check for the same name. Owned here, above both the pool manager and
/// the engine.
pub async fn one_name_at_a_time(
    axum::extract::State(names): axum::extract::State<Arc<tokio::sync::Mutex<()>>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let creates_a_name = req.method() == axum::http::Method::POST
        && matches!(req.uri().path(), "/v1/functions" | "/v1/workflows");
    if !creates_a_name {
        return next.run(req).await;
    }
    // The body is read before the turn is taken: a slow client must not hold
    // up everyone else's creations. The handlers apply their own, smaller limits.
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, CREATION_BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) if pool_manager::router::caused_by_limit(&e) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &engine::api::body_too_large(),
            )
        }
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("cannot read the request body: {e}"),
            )
        }
    };
    let _one = names.lock().await;
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// The most a function or workflow creation's body may be, as read before its
/// handler (which then applies its own limit).
const CREATION_BODY_LIMIT: usize = engine::api::BODY_LIMIT;

pub async fn not_found(req: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no API endpoint {} {}", req.method(), req.uri().path()),
    )
}

/// The JSON 405 for a method an endpoint does not take (axum's own is empty);
/// the `Allow` header still lists the methods it does take.
pub async fn method_not_allowed(req: Request) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!(
            "{} does not take {} (the Allow header lists what it takes)",
            req.uri().path(),
            req.method()
        ),
    )
}

/// Parses a JSON body into `T`, answering 400 with the line and column on error;
/// a body nested past `engine::document::MAX_DOCUMENT_DEPTH` is refused unparsed.
/// A field with a wrong value is named (`field "poolsize": invalid type ...`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Invalid(
            "the request body is empty: send the resource as JSON".into(),
        ));
    }
    engine::document::check_json(body).map_err(|e| Error::TooDeep(e.to_string()))?;
    engine::document::check_unique_keys(body).map_err(|e| json_error(".".into(), e))?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| json_error(e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| json_error(".".into(), e))?;
    Ok(value)
}

/// What a JSON value is, as its reader says it.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// serde's words for what it expected, in a JSON user's: `struct Function
/// with 13 elements` is an object, `u32` a whole number, a `sequence` a list.
fn plain(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("struct ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "struct ".len()..];
        let name_end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_end == 0 || !after.starts_with(|c: char| c.is_ascii_uppercase()) {
            out.push_str("struct ");
            rest = after;
            continue;
        }
        out.push_str("an object");
        rest = &after[name_end..];
        // " with 9 elements" / " with 1 element"
        if let Some(w) = rest.strip_prefix(" with ") {
            if let Some(end) = w.find(" element") {
                if w[..end].bytes().all(|b| b.is_ascii_digit()) {
                    let tail = &w[end + " element".len()..];
                    rest = tail.strip_prefix('s').unwrap_or(tail);
                }
            }
        }
    }
    out.push_str(rest);
    let mut out = out.replace("invalid type: sequence", "invalid type: a list");
    out = out.replace("invalid type: map", "invalid type: an object");
    engine::document::plain_numbers(&out)
}

/// A JSON error as one line: where it is, and which field when the JSON is
/// well-formed but a value is wrong.
fn json_error(path: String, inner: serde_json::Error) -> Error {
    let (line, column) = (inner.line(), inner.column());
    // serde_json ends its message with the position; it is said once, below.
    let text = plain(&inner.to_string());
    let text = text
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&text);
    match inner.classify() {
        serde_json::error::Category::Data if path != "." => Error::Invalid(format!(
            "field {path:?}: {text} (line {line} column {column})"
        )),
        _ => Error::Invalid(format!(
            "invalid JSON at line {line} column {column}: {text}"
        )),
    }
}

/// A resource from a JSON value (already parsed), naming the field at fault.
fn from_value<T: DeserializeOwned>(kind: &str, value: serde_json::Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = plain(&e.into_inner().to_string());
        if path == "." {
            Error::Invalid(format!("invalid {kind}: {inner}"))
        } else {
            Error::Invalid(format!("invalid {kind}: field {path:?}: {inner}"))
        }
    })
}

type ApiResult<T> = Result<T, Error>;

/// `?namespace=NS` on environment, function and route endpoints (default `default`).
#[derive(Deserialize, Default)]
pub(crate) struct Ns {
    namespace: Option<String>,
}

/// The namespace a query names (`default` when it names none), checked: a
/// DNS-1123 label, or 400 `invalid`. Every `?namespace=` (and an invocation's
/// `?fusion-namespace=`) is read through this, so an invalid one is said as
/// such, never as a resource not found.
pub(crate) fn checked_namespace(namespace: Option<&str>) -> ApiResult<&str> {
    let ns = namespace.unwrap_or("default");
    pool_manager::resources::validate_name("namespace", ns)?;
    Ok(ns)
}

impl Ns {
    fn name(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// The namespace of the query, checked.
    pub(crate) fn checked(&self) -> ApiResult<&str> {
        checked_namespace(self.namespace.as_deref())
    }

    /// The store key of `name` in this namespace.
    fn key(&self, name: &str) -> ApiResult<String> {
        self.checked()?;
        pool_manager::resources::validate_name("the", name)?;
        Ok(pool_manager::resources::qualified(self.name(), name))
    }

    /// Puts a body's fields in this namespace: a body that names none gets
    /// the query's (or `default`); one that names another than `?namespace=`
    /// is refused. The namespace it ends with is not checked here.
    pub(crate) fn reconcile(
        &self,
        fields: &mut serde_json::Map<String, serde_json::Value>,
    ) -> ApiResult<()> {
        match fields.get("namespace").and_then(serde_json::Value::as_str) {
            None => {
                fields.insert("namespace".into(), self.name().into());
            }
            Some(given) if self.namespace.is_some() && given != self.name() => {
                return Err(Error::Invalid(format!(
                    "the namespace in the body ({given:?}) differs from ?namespace= ({:?})",
                    self.name()
                )))
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// A resource from a body, in this namespace: a body that names none gets
    /// it; one that names another is refused.
    fn parse<T: DeserializeOwned>(&self, kind: &str, body: &[u8]) -> ApiResult<T> {
        let mut value: serde_json::Value = parse_json(body)?;
        if !value.is_object() {
            // serde would read a list as the fields in order.
            return Err(Error::Invalid(format!(
                "invalid {kind}: send a JSON object ({{\"name\": ...}}), not {}",
                json_kind(&value)
            )));
        }
        if let Some(fields) = value.as_object_mut() {
            fields.remove("status");
            self.reconcile(fields)?;
            if kind == "function" {
                refs_in_namespace(fields);
            }
        }
        from_value(kind, value)
    }
}

/// A function's package, secret and configmap references name no namespace:
/// they are in the function's, as in Fission.
fn refs_in_namespace(fields: &mut serde_json::Map<String, serde_json::Value>) {
    let Some(ns) = fields.get("namespace").cloned() else {
        return;
    };
    if let Some(r) = fields
        .get_mut("package")
        .and_then(|p| p.get_mut("packageref"))
        .and_then(serde_json::Value::as_object_mut)
    {
        r.entry("namespace").or_insert(ns.clone());
    }
    for list in ["secrets", "configmaps"] {
        if let Some(items) = fields
            .get_mut(list)
            .and_then(serde_json::Value::as_array_mut)
        {
            for item in items
                .iter_mut()
                .filter_map(serde_json::Value::as_object_mut)
            {
                item.entry("namespace").or_insert(ns.clone());
            }
        }
    }
}

/// The query of a list: `?namespace=NS` (default `default`), or
/// `?all_namespaces=true` for every namespace's (Fission's `--all-namespaces`).
#[derive(Deserialize, Default)]
pub(crate) struct Listing {
    namespace: Option<String>,
    #[serde(default)]
    all_namespaces: bool,
}

impl Listing {
    /// The items of the namespace asked for, or all of them.
    pub(crate) fn select<T>(&self, items: Vec<T>, of: impl Fn(&T) -> &str) -> ApiResult<Vec<T>> {
        if self.all_namespaces {
            if let Some(ns) = &self.namespace {
                return Err(Error::Invalid(format!(
                    "?namespace={ns} and ?all_namespaces=true ask for different lists: give one"
                )));
            }
            return Ok(items);
        }
        let ns = self.namespace.as_deref().unwrap_or("default");
        pool_manager::resources::validate_name("namespace", ns)?;
        Ok(items.into_iter().filter(|i| of(i) == ns).collect())
    }
}

fn created<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn same_name(path: &str, body: &str) -> ApiResult<()> {
    if path == body {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the name in the body ({body:?}) differs from the name in the path ({path:?})"
        )))
    }
}

/// The gauges of asynchronous invocations, by state.
pub type InvocationGauges = prometheus_client::metrics::family::Family<
    Vec<(&'static str, &'static str)>,
    prometheus_client::metrics::gauge::Gauge,
>;

/// Registers the invocation gauges in `registry`.
pub fn invocation_gauges(registry: &mut prometheus_client::registry::Registry) -> InvocationGauges {
    let gauges = InvocationGauges::default();
    registry.register(
        "fusion_async_invocations",
        "Asynchronous invocations by state: pending (queued or running) and dead (dead letters)",
        gauges.clone(),
    );
    gauges
}

/// The Prometheus (OpenMetrics text) exposition of every metric.
async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    s.pool.refresh_instance_gauges();
    let (pending, dead) = s.triggers.invocations.counts();
    for (state, n) in [("pending", pending), ("dead", dead)] {
        s.invocation_gauges
            .get_or_create(&vec![("state", state)])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &s.registry)
        .map_err(|e| Error::Internal(format!("cannot render metrics: {e}")))?;
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The server's version and the backend its instances run on.
async fn version(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backend": s.pool.isolation().backend,
    }))
}

// ---- environments ----

/// An environment as the API shows it: what was declared, and its status (the
/// isolation its instances get from the backend in use).
#[derive(serde::Serialize)]
struct EnvironmentView {
    #[serde(flatten)]
    env: Environment,
    status: EnvironmentStatus,
}

#[derive(serde::Serialize)]
struct EnvironmentStatus {
    isolation: pool_manager::Isolation,
    /// What the `image` stands for here: the local image, or a bundled runtime.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<pool_manager::ImageUse>,
    /// Settings of the environment its backend cannot enforce.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_enforced: Vec<String>,
    /// Its pool of generic instances: how many are ready, how many starting,
    /// and why the last one failed to start, if none has since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<pool_manager::PoolHealth>,
}

/// What the process backend (the fallback without containers) cannot
/// enforce of an environment's settings: each as the setting and why.
fn not_enforced(env: &Environment, isolation: &pool_manager::Isolation) -> Vec<String> {
    if isolation.backend != "process" {
        return Vec::new();
    }
    let mut out = Vec::new();
    if env.network == pool_manager::resources::Network::None {
        out.push("network: none (processes share the host's network)".to_string());
    }
    if env.cpu_millis.is_some() {
        out.push("cpu_millis (no cgroup bounds a process's CPU)".to_string());
    }
    if env.memory_mb.is_some() {
        out.push("memory_mb for the instance as a whole (it bounds each process)".to_string());
    }
    out
}

impl AppState {
    fn env_view(&self, env: Environment) -> EnvironmentView {
        let image = self.pool.image_use(&env).ok().flatten();
        let isolation = self.pool.isolation();
        EnvironmentView {
            status: EnvironmentStatus {
                pool: self.pool.pool_health(&env.key()),
                not_enforced: not_enforced(&env, &isolation),
                isolation,
                image,
            },
            env,
        }
    }
}

async fn list_envs(
    State(s): State<AppState>,
    Query(l): Query<Listing>,
) -> ApiResult<Json<Vec<EnvironmentView>>> {
    let envs = l.select(s.pool.environments()?, |e| &e.namespace)?;
    Ok(Json(envs.into_iter().map(|e| s.env_view(e)).collect()))
}
async fn get_env(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<Json<EnvironmentView>> {
    Ok(Json(s.env_view(s.pool.environment(&ns.key(&name)?)?)))
}
async fn create_env(
    State(s): State<AppState>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Response> {
    let env = s
        .pool
        .create_environment(ns.parse("environment", &body)?)
        .await?;
    Ok(created(s.env_view(env)))
}
async fn update_env(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Json<EnvironmentView>> {
    let env: Environment = ns.parse("environment", &body)?;
    same_name(&name, &env.name)?;
    Ok(Json(s.env_view(s.pool.update_environment(env).await?)))
}
async fn delete_env(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<StatusCode> {
    s.pool.delete_environment(&ns.key(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- functions ----

async fn list_fns(
    State(s): State<AppState>,
    Query(l): Query<Listing>,
) -> ApiResult<Json<Vec<Function>>> {
    Ok(Json(l.select(s.pool.functions()?, |f| &f.namespace)?))
}
async fn get_fn(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<Json<Function>> {
    Ok(Json(s.pool.function(&ns.key(&name)?)?))
}
async fn create_fn(
    State(s): State<AppState>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Response> {
    let f: Function = ns.parse("function", &body)?;
    triggers::invocations::policy::Policy::of(f.invocation.as_ref())?;
    // Functions of `default` share /fission-function/<name> with workflows.
    if f.namespace == "default" && s.triggers.invoker.workflow_exists(&f.name) {
        return Err(Error::Conflict(format!(
            "a workflow named {:?} exists; functions and workflows share /fission-function/ names",
            f.name
        )));
    }
    Ok(created(s.pool.create_function(f).await?))
}
async fn update_fn(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Json<Function>> {
    let f: Function = ns.parse("function", &body)?;
    same_name(&name, &f.name)?;
    triggers::invocations::policy::Policy::of(f.invocation.as_ref())?;
    Ok(Json(s.pool.update_function(f).await?))
}
/// `?if_unused=true` on a delete: refused (409) while stored workflows run
/// it, as everything else that uses it is (what `spec destroy` orders its
/// deletes by), rather than deleted with a warning.
#[derive(Deserialize, Default)]
pub(crate) struct IfUnused {
    #[serde(default)]
    if_unused: bool,
}

/// The stored workflows that run what a delete deletes, refused as users when
/// the delete asked `if_unused`.
fn run_by(
    what: &str,
    name: &str,
    workflows: Vec<String>,
    if_unused: bool,
) -> ApiResult<Vec<String>> {
    match (if_unused, workflows.is_empty()) {
        (true, false) => Err(Error::Conflict(format!(
            "{what} {name:?} is run by workflows ({}); delete or change them first",
            workflows.join(", ")
        ))),
        _ => Ok(workflows),
    }
}

async fn delete_fn(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
    Query(how): Query<IfUnused>,
) -> ApiResult<Response> {
    let key = ns.key(&name)?;
    // One that does not exist is a 404, whatever still names it.
    s.pool.function(&key)?;
    let users = s.triggers.check_function_unused(&key)?;
    let workflows = run_by("function", &key, users, how.if_unused)?;
    s.pool.delete_function(&key).await?;
    Ok(match triggers::still_run_by("function", &key, &workflows) {
        Some(warned) => Json(warned).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn fn_instances(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<Json<Vec<pool_manager::InstanceInfo>>> {
    let name = ns.key(&name)?;
    s.pool.function(&name)?;
    Ok(Json(s.pool.instances(Some(&name))))
}

/// The code the function runs now (Fission's `fn get`): a file as it was
/// uploaded, a directory (an archive, or a build) as a tar stream.
async fn fn_code(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<Response> {
    let path = s.pool.function_code(&ns.key(&name)?)?;
    Ok(pod_packages::package_response(path).await)
}

async fn all_instances(State(s): State<AppState>) -> Json<Vec<pool_manager::InstanceInfo>> {
    Json(s.pool.instances(None))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    /// Only the last this many lines of what is there (then, with `follow`,
    /// what comes).
    tail: Option<usize>,
    /// Only the lines written at or after this time (epoch ms).
    since: Option<u64>,
    namespace: Option<String>,
}

/// The lines of a log written at or after `since` (epoch ms): each line
/// starts with its RFC 3339 time, which sorts as text.
fn lines_since(text: Vec<u8>, since: u64) -> Vec<u8> {
    let Some(from) = i64::try_from(since)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
    else {
        return Vec::new();
    };
    // As the log writes its times: `2026-12-01T10:00:00.000Z`.
    let from = from.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let Some(start) = text
        .split_inclusive(|b| *b == b'\n')
        .scan(0, |at, line| {
            let here = *at;
            *at += line.len();
            Some((here, line))
        })
        .find(|(_, line)| {
            line.get(..from.len())
                .is_some_and(|stamp| stamp >= from.as_bytes())
        })
        .map(|(at, _)| at)
    else {
        return Vec::new();
    };
    text[start..].to_vec()
}

/// The last `n` lines of `text`.
fn last_lines(text: Vec<u8>, n: usize) -> Vec<u8> {
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    if n == 0 {
        return Vec::new();
    }
    text[start..].to_vec()
}

/// The function's log (its last `tail` lines); with `follow=true`, the stream
/// stays open and new lines arrive as instances write them.
async fn fn_logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let name = Ns {
        namespace: q.namespace.clone(),
    }
    .key(&name)?;
    s.pool.function(&name)?;
    let logs = s.pool.logs().clone();
    let follower = q.follow.then(|| logs.follow(&name));
    let mut existing = logs.read(&name).await;
    if let Some(since) = q.since {
        existing = lines_since(existing, since);
    }
    if let Some(n) = q.tail {
        existing = last_lines(existing, n);
    }
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(existing)) });
    let body = match follower {
        None => Body::from_stream(head),
        Some(rx) => {
            let tail = tokio_stream::wrappers::BroadcastStream::new(rx)
                .filter_map(|line| async move { line.ok().map(|l| Ok(Bytes::from(l))) });
            Body::from_stream(head.chain(tail))
        }
    };
    Ok((
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response())
}

/// Calls a function through the pool manager, like the router (used by `fn test`);
/// asynchronously (202, queued) with `X-Async: true` as on the router.
async fn invoke_fn(
    State(s): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let name = params
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // What follows `/invoke`, as the request wrote it (percent-escapes kept:
    // the function gets the path it was sent, as through the router).
    let rest = req
        .uri()
        .path()
        .strip_prefix("/v1/functions/")
        .and_then(|p| p.find('/').map(|i| &p[i..]))
        .and_then(|p| p.strip_prefix("/invoke"))
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_string();
    // `fusion-namespace=NS` in the query (from `fusion fn test --namespace`)
    // picks the function's namespace; the function does not see it.
    if let Err(m) = engine::api::async_header(req.headers()) {
        return error_response(StatusCode::BAD_REQUEST, "invalid_header", &m);
    }
    let (req, namespace) = take_namespace(req);
    let name = match namespace {
        Some(ns) => match checked_namespace(Some(&ns)) {
            Ok(ns) => pool_manager::resources::qualified(ns, &name),
            Err(e) => return e.into_response(),
        },
        None => name,
    };
    if !s.pool.function_exists(&name) && s.triggers.invoker.workflow_exists(&name) {
        let target = Target::Workflow(name);
        return s.triggers.invoker.call(&target, req, &rest, &[]).await;
    }
    if triggers::invocations::is_async(req.headers()) {
        return s.triggers.invocations.accept(&name, req, &rest, &[]).await;
    }
    // The token's holder: told what the runtime said of code it cannot load.
    let mut req = req;
    req.extensions_mut().insert(pool_manager::OwnerCall);
    pool_manager::forward(&s.pool, &name, req, &rest, &[]).await
}

/// Takes `fusion-namespace=NS` out of a request's query.
fn take_namespace(mut req: Request) -> (Request, Option<String>) {
    let Some(query) = req.uri().query() else {
        return (req, None);
    };
    let mut namespace = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("fusion-namespace=") {
            Some(ns) => {
                namespace = Some(ns.to_string());
                false
            }
            None => true,
        })
        .collect();
    if namespace.is_none() {
        return (req, None);
    }
    let path = req.uri().path();
    let rebuilt = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    if let Ok(pq) = rebuilt.parse::<http::uri::PathAndQuery>() {
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    (req, namespace)
}

// ---- packages: see api_pkg.rs ----

/// In front of the engine's API: a workflow still targeted by triggers is not
/// deleted (the engine does not know triggers; the trigger layer does). One
/// that does not exist is the engine's 404, whatever still names it.
pub async fn keep_targeted_workflows(
    State((triggers, engine)): State<(Arc<Triggers>, Arc<engine::Engine>)>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let deleting = req.method() == axum::http::Method::DELETE
        && req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .is_some_and(|p| p.as_str() == "/v1/workflows/{name}");
    if !deleting {
        return next.run(req).await;
    }
    let name = req.uri().path().rsplit('/').next().unwrap_or_default();
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .into_owned();
    // A refusal asked for and not understood refuses: never a delete.
    let if_unused = match Query::<IfUnused>::try_from_uri(req.uri()) {
        Ok(q) => q.if_unused,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                &format!("if_unused must be true or false: {e}"),
            )
        }
    };
    let checked = match engine.workflow_exists(&name) {
        true => triggers
            .check_workflow_unused(&name)
            .and_then(|users| run_by("workflow", &name, users, if_unused)),
        false => Ok(Vec::new()),
    };
    let workflows = match checked {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let answer = next.run(req).await;
    match triggers::still_run_by("workflow", &name, &workflows) {
        Some(warned) if answer.status() == StatusCode::NO_CONTENT => Json(warned).into_response(),
        _ => answer,
    }
}

// ---- routes ----

/// Routes of one namespace, or of all (which share the URL paths).
async fn list_routes(
    State(s): State<AppState>,
    Query(l): Query<Listing>,
) -> ApiResult<Json<Vec<Route>>> {
    Ok(Json(l.select(s.triggers.routes.list()?, |r| &r.namespace)?))
}
async fn get_route(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<Json<Route>> {
    Ok(Json(s.triggers.routes.get(&ns.key(&name)?)?))
}
async fn create_route(
    State(s): State<AppState>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Response> {
    let r: Route = ns.parse("route", &body)?;
    let t = &s.triggers;
    Ok(created(t.routes.create(r, &t.invoker).await?))
}
async fn update_route(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Json<Route>> {
    let r: Route = ns.parse("route", &body)?;
    same_name(&name, &r.name)?;
    let t = &s.triggers;
    Ok(Json(t.routes.update(r, &t.invoker).await?))
}
async fn delete_route(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<StatusCode> {
    s.triggers.routes.delete(&ns.key(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Turns axum's own plain-text rejections (bad path, method not allowed, body too
/// large) into the JSON error shape.
pub async fn json_errors(req: Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ if status.is_client_error() => "bad_request",
        _ => "internal",
    };
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        // axum's own ("Failed to buffer the request body") names no limit:
        // every body but an upload's (which says its own) has the API's.
        engine::api::body_too_large()
    } else if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    // axum's rejection of a query string that does not parse: said as a
    // malformed query parameter, in plain words.
    if let Some(what) = message.strip_prefix("Failed to deserialize query string: ") {
        return error_response(
            status,
            "invalid_query",
            &format!("a query parameter is malformed: {what}"),
        );
    }
    error_response(status, code, &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fn logs --since`: the lines from the first written at or after the
    /// time, compared as the log writes its times.
    #[test]
    fn a_log_is_read_from_a_time() {
        let log = "2026-12-01T10:00:00.000Z [1 stderr] early\n\
                   2026-12-01T10:00:01.000Z [1 stderr] on the second\n\
                   2026-12-01T10:00:02.500Z [2 stdout] later\n";
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64;
        let from =
            |t: &str| String::from_utf8(lines_since(log.as_bytes().to_vec(), at(t))).unwrap();
        assert_eq!(
            from("2026-12-01T10:00:01Z"),
            "2026-12-01T10:00:01.000Z [1 stderr] on the second\n2026-12-01T10:00:02.500Z [2 stdout] later\n"
        );
        assert_eq!(
            from("2026-12-01T10:00:01.001Z"),
            "2026-12-01T10:00:02.500Z [2 stdout] later\n"
        );
        assert_eq!(from("2026-12-01T09:00:00Z"), log);
        assert_eq!(from("2026-12-01T11:00:00Z"), "");
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    /// What a resource's JSON got wrong, in a JSON user's words: no Rust
    /// type names.
    #[test]
    fn json_mistakes_are_said_without_rust_types() {
        let env = |body: &str| {
            let e = Ns::default()
                .parse::<pool_manager::Environment>("environment", body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(!e.contains("struct") && !e.contains("u32"), "{e}");
            e
        };
        let e = env("[1, 2]");
        assert!(e.contains("send a JSON object"), "{e}");
        assert!(e.ends_with("not a list"), "{e}");
        let e = env(r#"{"name": "x", "runtime": "python", "poolsize": "3"}"#);
        assert!(e.contains("expected a whole number"), "{e}");
        assert!(env("").contains("the request body is empty"));
        assert!(env("  ").contains("the request body is empty"));
        let e = env(r#"{"name": "x", "runtime": "python", "poolsize": -1}"#);
        assert!(e.contains("poolsize"), "{e}");
        assert_eq!(
            plain("invalid type: map, expected struct ObjectRef with 1 element"),
            "invalid type: an object, expected an object"
        );
        assert_eq!(
            plain("invalid type: string \"x\", expected u32"),
            "invalid type: string \"x\", expected a whole number from 0 to 4294967295"
        );
        assert_eq!(plain("a struct of ours"), "a struct of ours");
    }

    #[test]
    fn a_logs_tail_is_its_last_lines() {
        let tail = |text: &str, n| String::from_utf8(last_lines(text.into(), n)).unwrap();
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc\n", 3), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 10), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 1), "c\n");
        assert_eq!(tail("a\nb\nc\n", 0), "");
        assert_eq!(tail("a\nb", 1), "b");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn a_body_takes_the_namespace_of_the_query_and_may_not_contradict_it() {
        let ns = Ns {
            namespace: Some("shop".into()),
        };
        let f: Function = ns
            .parse(
                "function",
                br#"{"name": "f", "env": "py", "package": {"packageref": {"name": "p"}}}"#,
            )
            .unwrap();
        assert_eq!(
            (f.namespace.as_str(), f.key()),
            ("shop", "shop/f".to_string())
        );
        // Its references that name no namespace are in the function's.
        match &f.package {
            pool_manager::FunctionPackage::Named { packageref } => {
                assert_eq!(packageref.namespace, "shop")
            }
            other => panic!("{other:?}"),
        }
        let e = message(
            ns.parse::<Function>("function", br#"{"name": "f", "namespace": "other"}"#)
                .unwrap_err(),
        );
        assert!(e.contains("differs from ?namespace="), "{e}");
        assert_eq!(Ns::default().key("f").unwrap(), "f");
        assert!(Ns {
            namespace: Some("Bad".into())
        }
        .key("f")
        .is_err());
    }

    #[test]
    fn a_wrong_value_names_its_field_and_a_misspelt_runtime_names_the_runtime() {
        let ns = Ns::default();
        let parse_env = |body: &[u8]| ns.parse::<Environment>("environment", body);
        let e = message(parse_env(br#"{"name": "x", "runtime": "pyton"}"#).unwrap_err());
        assert_eq!(
            e,
            r#"invalid environment: field "runtime": unknown runtime "pyton": expected python, nodejs or binary (or give a command)"#
        );
        let e = message(
            parse_env(br#"{"name": "x", "runtime": "python", "poolsize": "3"}"#).unwrap_err(),
        );
        assert!(
            e.starts_with(r#"invalid environment: field "poolsize": invalid type: string "3""#),
            "{e}"
        );
        let e = message(
            ns.parse::<Function>("function", br#"{"name": "f", "executor_type": "x"}"#)
                .unwrap_err(),
        );
        assert!(
            e.starts_with(r#"invalid function: field "executor_type": unknown executor type "x""#),
            "{e}"
        );
    }

    #[test]
    fn broken_json_is_placed_by_line_and_column() {
        let e = message(parse_json::<serde_json::Value>(b"{\n  \"a\": }").unwrap_err());
        assert!(
            e.starts_with("invalid JSON at line 2 column 8: expected value"),
            "{e}"
        );
        let e = message(parse_json::<serde_json::Value>(b"{} x").unwrap_err());
        assert!(
            e.starts_with("invalid JSON at line 1 column 4: trailing characters"),
            "{e}"
        );
        let e = message(parse_json::<Route>(br#"{"name": 3}"#).unwrap_err());
        assert!(
            e.starts_with(r#"field "name": invalid type: integer `3`"#),
            "{e}"
        );
    }
}
