//! Asynchronous invocation of functions (`X-Async: true` or `Prefer:
//! respond-async`): the call is stored durably and answered 202, then tried
//! in the background through the [`Invoker`] with the function's retry policy
//! (`invocation`, as Fission's RFC-0024 has it), its outcome kept; after its
//! last attempt it is dead-lettered, to be listed and redriven. Pending
//! invocations resume when the server starts again (at least once: every
//! attempt carries the same `X-Fusion-Idempotency-Key`).

pub mod destination;
pub mod policy;
pub mod record;
pub mod sink;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use http_body_util::BodyExt;
use pool_manager::error::error_response;
use pool_manager::{Error, Result};
use tokio::sync::Semaphore;

use crate::invoke::{Invoker, Target};
use crate::workflows::ApiListener;
use policy::{Policy, Settle};
use record::{Attempt, Invocation, Status, StoredRequest, StoredResponse, RESPONSE_BODY_LIMIT};
pub use sink::DeadLetterSink;
use store::{Filter, Store};

/// Sent on every attempt: the invocation's id, stable across its attempts.
pub const IDEMPOTENCY_HEADER: &str = "x-fusion-idempotency-key";
pub const INVOCATION_HEADER: &str = "x-fusion-invocation-id";
pub const ATTEMPT_HEADER: &str = "x-fusion-attempt";
/// Fission's enqueue collapse (RFC-0024): a call of a function with the key
/// of one it holds is that one.
pub const DEDUP_HEADER: &str = "x-fission-dedup-key";
/// Fission's delivery headers (RFC-0024): the invocation, the 1-based
/// attempt, and how deep in a chain of destinations it is (0 for a caller's).
pub const FISSION_INVOCATION_HEADER: &str = "x-fission-invocation-id";
pub const FISSION_ATTEMPT_HEADER: &str = "x-fission-invocation-attempt";
pub const FISSION_DEPTH_HEADER: &str = "x-fission-invocation-depth";

/// How long an invocation's request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's settings for background execution.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Attempts in flight at once, over every function.
    pub concurrency: usize,
    /// Succeeded and failed invocations are removed this long after they
    /// finished (dead ones stay until redriven); `None` keeps them.
    pub retention: Option<Duration>,
    /// How often retention is enforced.
    pub sweep: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            concurrency: 16,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            sweep: Duration::from_secs(60),
        }
    }
}

/// Whether a request asks to be answered at once and run in the background.
pub fn is_async(headers: &axum::http::HeaderMap) -> bool {
    engine::api::is_async(headers)
}

/// The asynchronous invocations: accepting, running, keeping and redriving them.
#[derive(Clone)]
pub struct Invocations {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    invoker: Invoker,
    api: ApiListener,
    /// Attempts in flight over every function: no permits until `start`.
    global: Semaphore,
    /// Per function: at most half its capacity (instances x requests per
    /// instance, at least 1), so synchronous calls keep the rest.
    per_function: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    sinks: RwLock<Vec<Arc<dyn DeadLetterSink>>>,
    /// Held while a redrive checks and requeues an invocation: two at once
    /// would both pass the check and run it twice.
    redrives: tokio::sync::Mutex<()>,
    /// Most invocations queued or running at once; past it a call gets 429.
    queue_limit: std::sync::atomic::AtomicUsize,
}

/// The queue limit unless the server sets one (`--async-queue-limit`).
pub const DEFAULT_QUEUE_LIMIT: usize = 100_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Invocations {
    pub fn open(db: &sled::Db, invoker: Invoker, api: ApiListener) -> Result<Invocations> {
        Ok(Invocations {
            inner: Arc::new(Inner {
                store: Store::open(db)?,
                invoker,
                api,
                global: Semaphore::new(0),
                per_function: Mutex::new(HashMap::new()),
                sinks: RwLock::new(Vec::new()),
                redrives: tokio::sync::Mutex::new(()),
                queue_limit: std::sync::atomic::AtomicUsize::new(DEFAULT_QUEUE_LIMIT),
            }),
        })
    }

    /// Starts background execution: resumes every pending invocation (one
    /// whose attempt a stop cut short is tried again) and enforces retention.
    pub fn start(&self, settings: Settings) -> Result<()> {
        let inner = &self.inner;
        inner.global.add_permits(settings.concurrency.max(1));
        let (mut resumed, mut interrupted) = (0usize, 0usize);
        for id in inner.store.pending()? {
            let Some(mut inv) = inner.store.get(&id)? else {
                continue;
            };
            resumed += 1;
            if inv.status == Status::Running {
                interrupted += 1;
                let now = now_ms();
                for a in inv.attempts.iter_mut().filter(|a| a.finished_ms.is_none()) {
                    a.finished_ms = Some(now);
                    a.interrupted = true;
                    a.error = Some("the server stopped during this attempt".into());
                }
                inv.status = Status::Queued;
                inv.updated_ms = now;
                inner.store.put(&inv)?;
            }
            tokio::spawn(inner.clone().drive(id));
        }
        if resumed > 0 {
            tracing::info!(
                pending = resumed,
                interrupted,
                "resuming the asynchronous invocations the last run of the server left pending (those it stopped during an attempt are tried again)"
            );
        }
        if let Some(retention) = settings.retention {
            let weak = Arc::downgrade(inner);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(settings.sweep);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
                    if let Err(e) = inner.store.prune(cutoff).await {
                        tracing::warn!("pruning finished invocations: {e}");
                    }
                }
            });
        }
        Ok(())
    }

    /// Stops starting attempts (the server is stopping): what is pending stays
    /// pending, to resume at the next start; an attempt the stop cuts short is
    /// recorded as interrupted, not counted.
    pub fn shutdown(&self) {
        self.inner.global.close();
    }

    /// Most invocations queued or running at once (past it, 429).
    pub fn set_queue_limit(&self, limit: usize) {
        self.inner
            .queue_limit
            .store(limit.max(1), std::sync::atomic::Ordering::SeqCst);
    }

    /// Where dead letters also go (a NATS subject, ...), beside the list.
    pub fn add_dead_letter_sink(&self, sink: Arc<dyn DeadLetterSink>) {
        self.inner
            .sinks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(sink);
    }

    /// Accepts a call of function `key` (`path` is what the function sees,
    /// `params` a route's URL parameters): stores it, answers 202 with its id
    /// and a `Location` on the API listener, and tries it in the background.
    pub async fn accept(
        &self,
        key: &str,
        req: Request<Body>,
        path: &str,
        params: &[(String, String)],
    ) -> Response<Body> {
        match self.try_accept(key, req, path, params).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    async fn try_accept(
        &self,
        key: &str,
        req: Request<Body>,
        path: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>> {
        let inner = &self.inner;
        let function = inner.invoker.pool().function(key)?;
        let limit = inner.queue_limit.load(std::sync::atomic::Ordering::SeqCst);
        let queued = inner.store.pending_count();
        if queued >= limit {
            return Err(Error::Overloaded(format!(
                "the queue of asynchronous calls is full ({queued} queued or running, at most {limit}): try again later"
            )));
        }
        let base = inner.api.base_for(&req);
        let limit = inner.invoker.pool().config().body_limit;
        let (mut parts, body) = req.into_parts();
        // Stored with the call, as the router would have added it: the replay
        // has no client connection to take it from.
        if let Some(pool_manager::ClientAddr(client)) = parts.extensions.get().copied() {
            pool_manager::router::forwarded_for(&mut parts.headers, client.ip());
        }
        let body = match tokio::time::timeout(
            BODY_READ_TIMEOUT,
            axum::body::to_bytes(body, limit as usize),
        )
        .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) if pool_manager::router::caused_by_limit(&e) => {
                return Err(Error::TooLarge(format!(
                    "the request body is larger than the limit of {limit} bytes"
                )))
            }
            Ok(Err(e)) => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("cannot read the request body: {e}"),
                ))
            }
            Err(_) => {
                return Ok(error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    &format!(
                        "the request body did not arrive within {} s",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                ))
            }
        };
        let request = StoredRequest::new(
            &parts.method,
            &parts.uri,
            &parts.headers,
            path,
            params,
            body.len(),
        );
        let inv = inner.enqueue(&function, request, body).await?;
        Ok(accepted(&inv, &base))
    }

    /// How many invocations are queued or running, and how many are dead
    /// letters.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.inner.store.pending_count(),
            self.inner.store.dead_count(),
        )
    }

    /// Deletes the dead letters (of function `function`, a key, when given);
    /// returns how many.
    pub async fn purge_dead(&self, namespace: &str, function: Option<&str>) -> Result<usize> {
        self.inner.store.purge_dead(namespace, function).await
    }

    /// The request body an invocation replays.
    pub fn request_body(&self, id: &str) -> Result<bytes::Bytes> {
        self.inner.store.body(id)
    }

    pub fn get(&self, id: &str) -> Result<Invocation> {
        self.inner.store.get(id)?.ok_or_else(|| Error::NotFound {
            kind: "invocation",
            name: id.to_string(),
        })
    }

    /// A page of invocations, newest first, and the cursor of the next one.
    pub fn list(
        &self,
        filter: &Filter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Invocation>, Option<String>)> {
        self.inner.store.page(filter, cursor, limit)
    }

    /// The API listener's URL for the client of `req` (the base of `Location`s).
    pub fn api_base(&self, req: &Request<Body>) -> String {
        self.inner.api.base_for(req)
    }

    /// Tries a dead (or failed) invocation again: a new cycle of attempts,
    /// under the function's policy as it is now. Answers 202 as `accept` does,
    /// with a `Location` under `base` (see [`Invocations::api_base`]).
    pub async fn redrive(&self, id: &str, base: &str) -> Result<Response<Body>> {
        let inner = &self.inner;
        let _one_at_a_time = inner.redrives.lock().await;
        let mut inv = self.get(id)?;
        if !matches!(inv.status, Status::Dead | Status::Failed) {
            return Err(Error::Conflict(format!(
                "invocation {id:?} is {}: only a dead or failed invocation can be redriven",
                serde_json::to_value(inv.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )));
        }
        // A function that is gone would dead-letter it again at once.
        let key = inv.function_key();
        if !inner.invoker.function_exists(&key) {
            return Err(Error::Conflict(format!(
                "invocation {id:?}: function {key:?} does not exist; create it again, then redrive"
            )));
        }
        let now = now_ms();
        inv.cycle += 1;
        inv.cycle_started_ms = now;
        inv.status = Status::Queued;
        inv.updated_ms = now;
        inv.finished_ms = None;
        inv.next_attempt_ms = None;
        inv.error = None;
        inv.reason = None;
        inv.destination_invocation = None;
        inv.destination_error = None;
        inner.store.save(&inv).await?;
        tokio::spawn(inner.clone().drive(inv.id.clone()));
        Ok(accepted(&inv, base))
    }
}

/// 202 with `{"id", "status", "location"}` and the `Location` header.
fn accepted(inv: &Invocation, base: &str) -> Response<Body> {
    let location = format!("{base}/v1/invocations/{}", inv.id);
    let body = serde_json::json!({
        "id": inv.id,
        "status": inv.status,
        "location": location,
    });
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    // Fission's header for the id of an asynchronous invocation.
    if let Ok(v) = HeaderValue::from_str(&inv.id) {
        resp.headers_mut().insert("x-fission-invocation-id", v);
    }
    resp
}

enum Next {
    Again,
    Done,
}

impl Inner {
    /// Stores a new invocation of `function` (flushed) and starts trying it.
    async fn enqueue(
        self: &Arc<Self>,
        function: &pool_manager::Function,
        request: StoredRequest,
        body: bytes::Bytes,
    ) -> Result<Invocation> {
        let now = now_ms();
        let inv = Invocation {
            id: uuid::Uuid::now_v7().to_string(),
            namespace: function.namespace.clone(),
            function: function.name.clone(),
            status: Status::Queued,
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
            next_attempt_ms: None,
            cycle: 0,
            cycle_started_ms: now,
            attempts: Vec::new(),
            request,
            response: None,
            error: None,
            reason: None,
            destination_invocation: None,
            destination_error: None,
        };
        // A call with the key of one it holds is that one: answered with it,
        // nothing stored or run again.
        if let Some(first) = self.store.insert(&inv, &body).await? {
            return Ok(first);
        }
        tokio::spawn(self.clone().drive(inv.id.clone()));
        Ok(inv)
    }

    /// Calls the destination `policy` names for how `inv` ended, with the
    /// result envelope, as an invocation of its own; notes it (or why not) on
    /// `inv`, which the caller then saves. Done before the invocation is saved
    /// as settled: a crash between the two calls the destination again (at
    /// least once), never not at all.
    async fn call_destination(self: &Arc<Self>, inv: &mut Invocation, policy: &Policy) {
        let target = match inv.status {
            Status::Succeeded => &policy.on_success,
            _ => &policy.on_failure,
        };
        let Some(name) = target else { return };
        let depth = destination::depth(inv);
        if depth + 1 > destination::MAX_DEPTH {
            inv.destination_error = Some(format!(
                "not called: destinations of destinations go {} deep at most",
                destination::MAX_DEPTH
            ));
            return;
        }
        let key = pool_manager::resources::qualified(&inv.namespace, name);
        let called = async {
            let function = self.invoker.pool().function(&key)?;
            let envelope = destination::envelope(inv, &self.store.body(&inv.id)?);
            let body = serde_json::to_vec(&envelope).map_err(|e| Error::Internal(e.to_string()))?;
            let request = StoredRequest {
                method: "POST".into(),
                path: "/".into(),
                query: None,
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    (destination::DEPTH_HEADER.into(), (depth + 1).to_string()),
                ],
                params: Vec::new(),
                body_bytes: body.len(),
            };
            self.enqueue(&function, request, body.into()).await
        };
        match called.await {
            Ok(d) => inv.destination_invocation = Some(d.id),
            Err(e) => inv.destination_error = Some(e.to_string()),
        }
    }

    /// Tries invocation `id` until it is settled. Boxed, and `Send` by its
    /// type: a destination's invocation is driven from within another's drive.
    fn drive(self: Arc<Self>, id: String) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            loop {
                match self.step(&id).await {
                    Ok(Next::Again) => {}
                    Ok(Next::Done) => return,
                    Err(e) => {
                        // Storage trouble: the invocation stays pending and resumes
                        // at the next start; try again a little later meanwhile.
                        tracing::error!(invocation = %id, "async invocation: {e}");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        })
    }

    fn function_permits(&self, f: &pool_manager::Function) -> Arc<Semaphore> {
        let capacity = (f.concurrency * f.requests_per_instance / 2).max(1);
        let mut map = self.per_function.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(f.key())
            .or_insert_with(|| (capacity, Arc::new(Semaphore::new(capacity))));
        if entry.0 != capacity {
            // The function changed: holders of the old permits finish on them.
            *entry = (capacity, Arc::new(Semaphore::new(capacity)));
        }
        entry.1.clone()
    }

    /// One attempt (after waiting out its backoff), and its settlement.
    async fn step(self: &Arc<Self>, id: &str) -> Result<Next> {
        let Some(mut inv) = self.store.get(id)? else {
            return Ok(Next::Done);
        };
        if !inv.status.is_pending() {
            return Ok(Next::Done);
        }
        if let Some(due) = inv.next_attempt_ms {
            let now = now_ms();
            if due > now {
                tokio::time::sleep(Duration::from_millis(due - now)).await;
                return Ok(Next::Again);
            }
        }
        let key = inv.function_key();
        let function = match self.invoker.pool().function(&key) {
            Ok(f) => f,
            Err(Error::NotFound { .. }) => {
                // Deleted after the call was accepted: a dead letter, to redrive
                // once the function is there again, not a 4xx it never answered.
                let why = format!(
                    "function {key:?} was deleted before this invocation was delivered; create it again and redrive"
                );
                let policy = Policy::of(None).map_err(|e| Error::Internal(e.to_string()))?;
                return self
                    .finish(inv, Status::Dead, "function_deleted", why, &policy)
                    .await;
            }
            Err(e) => return Err(e),
        };
        // Validated when the function was stored; defaults should that change.
        let policy = Policy::of(function.invocation.as_ref())
            .or_else(|_| Policy::of(None))
            .map_err(|e| Error::Internal(e.to_string()))?;
        if now_ms().saturating_sub(inv.cycle_started_ms) > policy.max_age.as_millis() as u64 {
            let why = format!("not delivered within its max age of {:?}", policy.max_age);
            return self
                .finish(inv, Status::Dead, "expired", why, &policy)
                .await;
        }
        let permits = self.function_permits(&function);
        let _for_function = permits
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let Ok(_overall) = self.global.acquire().await else {
            // Closed: the server is stopping.
            return Ok(Next::Done);
        };
        if !self.invoker.function_exists(&key) {
            // Deleted while this one waited for its turn.
            return Ok(Next::Again);
        }

        let number = inv.attempts_in_cycle() + 1;
        let started = now_ms();
        inv.status = Status::Running;
        inv.next_attempt_ms = None;
        inv.updated_ms = started;
        inv.attempts.push(Attempt {
            number,
            cycle: inv.cycle,
            started_ms: started,
            finished_ms: None,
            status: None,
            error: None,
            interrupted: false,
        });
        self.store.put(&inv)?;

        let request = self.replay(&inv, number)?;
        let resp = self
            .invoker
            .call(
                &Target::Function(key),
                request,
                &inv.request.path,
                &inv.request.params,
            )
            .await;
        let answer = read_answer(resp).await;
        let finished = now_ms();
        let error = match answer.status {
            s if s < 400 => None,
            s => Some(
                answer
                    .fusion_error()
                    .unwrap_or_else(|| format!("the function answered {s}")),
            ),
        };
        if let Some(a) = inv.attempts.last_mut() {
            a.finished_ms = Some(finished);
            a.status = Some(answer.status);
            a.error = error.clone();
        }
        let outcome = policy::classify(answer.status);
        if self.global.is_closed() && outcome == policy::Outcome::Retryable {
            // The server stopped under it (its instance was stopped): tried
            // again at the next start, not counted. A permanent answer (a
            // 4xx) stands: trying again would not change it.
            if let Some(a) = inv.attempts.last_mut() {
                a.interrupted = true;
            }
            inv.status = Status::Queued;
            inv.response = Some(answer);
            self.store.save(&inv).await?;
            return Ok(Next::Done);
        }
        let settle = policy.settle(outcome, number, rand::random());
        inv.response = Some(answer);
        inv.updated_ms = finished;
        match settle {
            Settle::Succeeded => {
                inv.status = Status::Succeeded;
                inv.finished_ms = Some(finished);
                self.call_destination(&mut inv, &policy).await;
                self.store.save(&inv).await?;
                Ok(Next::Done)
            }
            // As Fission: a 4xx is not retried, and dead-lettered at once (a
            // retry cannot fix it; a redrive after a fix can).
            Settle::Failed => {
                let e = error.unwrap_or_default();
                self.finish(inv, Status::Dead, "http_4xx", e, &policy).await
            }
            Settle::Dead => {
                let e = format!(
                    "{number} {} failed; the last: {}",
                    if number == 1 { "attempt" } else { "attempts" },
                    error.unwrap_or_default()
                );
                self.finish(inv, Status::Dead, "retries_exhausted", e, &policy)
                    .await
            }
            Settle::RetryAfter(delay) => {
                inv.status = Status::Queued;
                inv.next_attempt_ms = Some(finished + delay.as_millis() as u64);
                self.store.save(&inv).await?;
                Ok(Next::Again)
            }
        }
    }

    async fn finish(
        self: &Arc<Self>,
        mut inv: Invocation,
        status: Status,
        reason: &str,
        error: String,
        policy: &Policy,
    ) -> Result<Next> {
        let now = now_ms();
        inv.status = status;
        inv.reason = Some(reason.to_string());
        inv.error = Some(error);
        inv.finished_ms = Some(now);
        inv.updated_ms = now;
        self.call_destination(&mut inv, policy).await;
        self.store.save(&inv).await?;
        if status == Status::Dead {
            // An operator's business: it waits for a redrive.
            tracing::warn!(
                invocation = %inv.id,
                function = %inv.function_key(),
                reason,
                error = inv.error.as_deref().unwrap_or_default(),
                "an asynchronous invocation is dead-lettered (`fusion fn dlq redrive` tries it again)"
            );
            // Published apart from the attempt: a slow or unreachable sink
            // must not hold the slots other invocations are waiting for.
            let sinks = self.sinks.read().unwrap_or_else(|p| p.into_inner()).clone();
            if !sinks.is_empty() {
                let letter = inv.clone();
                tokio::spawn(async move {
                    for sink in sinks {
                        sink.dead_lettered(&letter).await;
                    }
                });
            }
        }
        Ok(Next::Done)
    }

    /// The stored request, as attempt `number` sends it.
    fn replay(&self, inv: &Invocation, number: u32) -> Result<Request<Body>> {
        let r = &inv.request;
        let uri = match &r.query {
            Some(q) => format!("{}?{q}", r.path),
            None => r.path.clone(),
        };
        let body = self.store.body(&inv.id)?;
        let length = body.len();
        let mut req = Request::builder()
            .method(r.method.as_str())
            .uri(uri)
            .body(Body::from(body))
            .map_err(|e| Error::Internal(format!("cannot rebuild the request: {e}")))?;
        let headers = req.headers_mut();
        for (k, v) in &r.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        // Fusion's own headers replace any the caller sent under those names.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        for (name, value) in [
            (IDEMPOTENCY_HEADER, inv.id.as_str()),
            (INVOCATION_HEADER, inv.id.as_str()),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        headers.insert(ATTEMPT_HEADER, HeaderValue::from(number));
        // Fission's names for the same (RFC-0024's delivery headers), which
        // its functions read to deduplicate and count attempts.
        if let Ok(v) = HeaderValue::from_str(&inv.id) {
            headers.insert(FISSION_INVOCATION_HEADER, v);
        }
        headers.insert(FISSION_ATTEMPT_HEADER, HeaderValue::from(number));
        headers.insert(
            FISSION_DEPTH_HEADER,
            HeaderValue::from(destination::depth(inv)),
        );
        Ok(req)
    }
}

/// The answer, with its body up to the bound (the rest is dropped, which ends
/// the call and frees its instance).
async fn read_answer(resp: Response<Body>) -> StoredResponse {
    let (parts, mut body) = resp.into_parts();
    let mut kept: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            let room = RESPONSE_BODY_LIMIT - kept.len();
            if data.len() > room {
                kept.extend_from_slice(&data[..room]);
                truncated = true;
                break;
            }
            kept.extend_from_slice(&data);
        }
    }
    StoredResponse::new(parts.status.as_u16(), &parts.headers, &kept, truncated)
}
