//! The function proxy: takes a lease on an instance of a function and streams
//! the request and response through it. Which requests reach which function is
//! the trigger layer's business (the `triggers` crate).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use axum::body::Body;
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderName, HeaderValue, Request, Response, Uri};
use axum::response::IntoResponse;
use http_body::Body as HttpBody;
use http_body_util::{LengthLimitError, Limited};

use crate::backend::connect::{ClientError, ResponseBody};
use crate::backend::Exit;
use crate::error::Error;
use crate::metrics::{FunctionLabels, FunctionMetrics, RequestLabels};
use crate::pool::{Lease, PoolManager};

/// Told when a request got its instance (a request extension): a caller that
/// may give up while the request waits in line at the function's max scale
/// (a message-queue trigger that stops) knows whether the call has begun.
#[derive(Clone)]
pub struct OnLeased(pub Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);

impl OnLeased {
    /// The extension, and what resolves once the request has its instance
    /// (or has failed before it could get one).
    pub fn new() -> (OnLeased, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (OnLeased(Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }
}

/// Marks a call made by the function's owner through the authenticated API
/// (`fusion fn test`, a request extension): a function whose code cannot be
/// loaded is answered with what its runtime said.
#[derive(Debug, Clone, Copy)]
pub struct OwnerCall;

/// The address of the client that sent a request, as its listener accepted
/// it (a request extension): the router adds it to `X-Forwarded-For`, as
/// Fission's router does, since an instance sees only the router's connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The header that carries a call's idempotency key to a function: a
/// workflow task's attempt (`<run>/<task>/<attempt>`), a timer's tick, a
/// queue message. A failed answer's line in the function's log names it.
pub const IDEMPOTENCY_HEADER: &str = "X-Fusion-Idempotency-Key";

/// Headers that belong to one connection and are never forwarded (as header
/// names, so removing them parses nothing).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Sends `req` to an instance of `function` at `path` (plus the original query),
/// adding `X-Fission-Params-<name>` for each URL parameter.
pub async fn forward(
    pm: &PoolManager,
    function: &str,
    req: Request<Body>,
    path: &str,
    params: &[(String, String)],
) -> Response<Body> {
    forward_within(
        pm,
        function,
        req,
        path,
        params,
        Some(pm.config().lease_wait),
    )
    .await
}

/// As `forward`, waiting up to `lease_wait` for capacity (see
/// `PoolManager::lease_within`; `None`: the function's timeout).
pub async fn forward_within(
    pm: &PoolManager,
    function: &str,
    req: Request<Body>,
    path: &str,
    params: &[(String, String)],
    lease_wait: Option<Duration>,
) -> Response<Body> {
    match try_forward_within(pm, function, req, path, params, lease_wait).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Like `forward`, but returns the router's own failures as errors so callers
/// (the executor) can tell them from the function's answers.
pub async fn try_forward(
    pm: &PoolManager,
    function: &str,
    req: Request<Body>,
    path: &str,
    params: &[(String, String)],
) -> Result<Response<Body>, Error> {
    try_forward_within(
        pm,
        function,
        req,
        path,
        params,
        Some(pm.config().lease_wait),
    )
    .await
}

/// As `try_forward`, waiting up to `lease_wait` (`None`: the function's own
/// timeout) for a free instance of a function at its max scale (a
/// workflow's step waits as in a queue).
pub async fn try_forward_within(
    pm: &PoolManager,
    function: &str,
    req: Request<Body>,
    path: &str,
    params: &[(String, String)],
    lease_wait: Option<Duration>,
) -> Result<Response<Body>, Error> {
    let mut counted = Counted {
        pm,
        function,
        started: std::time::Instant::now(),
        series: None,
        code: None,
    };
    let result = forward_inner(
        pm,
        function,
        req,
        path,
        params,
        lease_wait,
        &mut counted.series,
    )
    .await;
    counted.code = Some(match &result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    });
    result
}

/// The status a request is counted with when its caller went away before
/// the answer (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// Counts a request once in `fusion_function_requests_total` and its latency,
/// however it ends: with the status it was answered, or, dropped unanswered
/// (its caller hung up, a workflow task's time ran out), with 499.
struct Counted<'a> {
    pm: &'a PoolManager,
    function: &'a str,
    started: std::time::Instant,
    series: Option<Arc<FunctionMetrics>>,
    code: Option<u16>,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(CLIENT_CLOSED);
        let seconds = self.started.elapsed().as_secs_f64();
        let m = self.pm.metrics();
        // A request that got no instance (its code failed to load, no
        // capacity) counts on the function's own series too, where a canary
        // reads it.
        let series = self
            .series
            .take()
            .or_else(|| self.pm.series_of(self.function));
        match series {
            Some(series) => series.record(m, self.function, code, seconds),
            // No function of that name (404) ...
            None => {
                m.requests
                    .get_or_create(&RequestLabels {
                        function: self.function.to_string(),
                        code,
                    })
                    .inc();
                m.request_seconds
                    .get_or_create(&FunctionLabels {
                        function: self.function.to_string(),
                    })
                    .observe(seconds);
            }
        }
    }
}

async fn forward_inner(
    pm: &PoolManager,
    function: &str,
    req: Request<Body>,
    path: &str,
    params: &[(String, String)],
    lease_wait: Option<Duration>,
    series: &mut Option<Arc<FunctionMetrics>>,
) -> Result<Response<Body>, Error> {
    if is_runtime_control(path) {
        return Err(Error::NotFound {
            kind: "function path",
            name: path.to_string(),
        });
    }
    let limit = pm.config().body_limit;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut req = req;
    // A request to switch protocols (a WebSocket's): its caller's side of
    // the connection, once the answer is a 101.
    let switch = switch_to(req.headers()).map(|to| (to, hyper::upgrade::on(&mut req)));
    let lease = match pm.lease_within(function, lease_wait).await {
        Ok(lease) => lease,
        // The function's owner (`fusion fn test`) is told what the runtime
        // said; anyone else, where to read it.
        Err(Error::LoadFailed { detail, .. }) if req.extensions().get::<OwnerCall>().is_some() => {
            return Err(Error::Upstream(detail))
        }
        Err(e) => return Err(e),
    };
    *series = Some(lease.metrics.clone());
    if let Some(OnLeased(tx)) = req.extensions().get::<OnLeased>() {
        if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
    }
    let timeout = Duration::from_secs(lease.function.timeout_secs);
    // Forward the request's own parts: no copy of its headers on the hot path.
    let (mut parts, body) = req.into_parts();
    for h in &HOP_BY_HOP {
        parts.headers.remove(h);
    }
    if let Some((to, _)) = &switch {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, to.clone());
    }
    if let Some(ClientAddr(client)) = parts.extensions.get::<ClientAddr>() {
        forwarded_for(&mut parts.headers, client.ip());
    }
    // A query of raw UTF-8 (which a browser never sends, but curl does) is
    // passed on percent-encoded, as the path is: Node's HTTP parser refuses
    // the raw bytes, and every runtime decodes the escapes to the same text.
    let raw = |q: &str| q.bytes().any(|b| !(0x20..0x7f).contains(&b));
    let path_and_query = match (parts.uri.path_and_query(), parts.uri.query()) {
        (Some(pq), q) if pq.path() == path && !q.is_some_and(raw) => pq.clone(),
        (_, Some(q)) => {
            let q = percent_encoding::utf8_percent_encode(q, percent_encoding::CONTROLS);
            PathAndQuery::try_from(format!("{path}?{q}"))
                .map_err(|e| Error::Invalid(format!("bad request path: {e}")))?
        }
        (_, None) => PathAndQuery::try_from(path)
            .map_err(|e| Error::Invalid(format!("bad request path: {e}")))?,
    };
    // Origin form: the instance's client dials only its instance.
    parts.uri = Uri::from(path_and_query);
    let headers = &mut parts.headers;
    url_params(headers, params);
    // As Fission's router: the function's own name and its namespace apart.
    let (namespace, name) = function
        .split_once('/')
        .unwrap_or((crate::secrets::DEFAULT_NAMESPACE, function));
    if let (Ok(n), Ok(ns)) = (
        HeaderValue::try_from(name),
        HeaderValue::try_from(namespace),
    ) {
        headers.insert("x-fission-function-name", n);
        headers.insert("x-fission-function-namespace", ns);
    }
    let received = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = Body::new(Whole {
        inner: Limited::new(body, limit as usize),
        received: received.clone(),
    });
    // What a failed answer's line in the function's log says the call was.
    let call = Call {
        method: parts.method.clone(),
        path,
        key: parts.headers.get(IDEMPOTENCY_HEADER).cloned(),
    };
    let out = Request::from_parts(parts, body);
    if let Some((_, from_caller)) = switch {
        return switch_protocols(pm, lease, out, from_caller, timeout).await;
    }

    // An instance that ends under the request (its pod deleted or evicted, a
    // node lost) fails it at once, also where no connection breaks to say so.
    let instance = lease.instance.clone();
    let mut in_flight = InFlight {
        exchange: Some(Box::pin(async move {
            tokio::select! {
                biased;
                sent = instance.client.request(out) => Ok(sent),
                exit = instance.wait_exited() => Err(exit),
            }
        })),
        lease: Some(lease),
        deadline: tokio::time::Instant::now() + timeout,
    };
    let sent = tokio::time::timeout(timeout, &mut in_flight).await;
    let lease = in_flight.done();
    let sent = match sent {
        // Stopped with every instance at the end of the shutdown grace.
        Ok(Err(_)) if pm.is_closing() => return Err(cut_off_at_shutdown()),
        Ok(Err(exit)) => return Err(instance_ended(&lease, &exit)),
        Ok(Ok(sent)) => Ok(sent),
        Err(elapsed) => Err(elapsed),
    };
    let resp = match sent {
        Err(_) if !received.load(Ordering::SeqCst) => {
            // The client was still sending: the instance only waited for it.
            return Err(Error::Timeout(format!(
                "the request body did not arrive within function {function:?}'s timeout of {} s",
                timeout.as_secs()
            )));
        }
        Err(_) => {
            // The instance may still be busy with the request: stop it, with every
            // process in it, rather than let the work run on unseen.
            let id = lease.instance.id;
            let why = format!(
                "a request passed the function's timeout of {} s: stopping instance {id}",
                timeout.as_secs()
            );
            pm.logs().append(&lease.function.key(), id, "fusion", &why);
            lease.instance.stop();
            return Err(Error::Timeout(format!(
                "function {function:?} did not answer within its timeout of {} s",
                timeout.as_secs()
            )));
        }
        Ok(Err(e)) if caused_by_limit(&e) => return Err(too_large(limit)),
        Ok(Err(_)) if pm.is_closing() => return Err(cut_off_at_shutdown()),
        Ok(Err(e)) => return Err(instance_failed(pm, &lease, &e).await),
        Ok(Ok(resp)) => resp,
    };
    // A 5xx, and a 4xx of a call no one watches as it is answered (a
    // workflow's step, an asynchronous call: they carry a key), which fails
    // that step or call.
    let failed =
        resp.status().is_server_error() || (resp.status().is_client_error() && call.key.is_some());
    if failed {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(held) = lease.metrics.failure_lines.admit(second) {
            let took = timeout.saturating_sub(in_flight.deadline - tokio::time::Instant::now());
            let mut line = call.failed(resp.status(), took);
            if held > 0 {
                line.push_str(&format!(
                    "; {held} more failed answers before it are not listed (at most {} a second are)",
                    crate::metrics::FailureLines::PER_SECOND
                ));
            }
            pm.logs()
                .append(&lease.function.key(), lease.instance.id, "fusion", &line);
        }
    }
    let (mut parts, body) = resp.into_parts();
    for h in &HOP_BY_HOP {
        parts.headers.remove(h);
    }
    // The lease lives as long as the response body streams, and the
    // function's timeout bounds the whole exchange, the answer's body included.
    let body = Bounded {
        inner: body,
        deadline: in_flight.deadline,
        sleep: None,
        held: Arc::new(std::sync::Mutex::new(Some(lease))),
        watchdog: None,
        ended: false,
        logs: pm.logs().clone(),
        timeout,
    };
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Whether `path` is one of the runtime's own endpoints, which only Fusion
/// calls (specializing an instance): not a function's, and never passed on
/// from a caller. Read as a runtime may still match it: percent-decoded (Go's
/// net/http, Werkzeug), in any case (Express), with doubled or trailing
/// slashes and dot segments resolved.
fn is_runtime_control(path: &str) -> bool {
    // Every request passes here: most paths are told apart without a copy.
    let named = path
        .as_bytes()
        .windows(b"specialize".len())
        .any(|w| w.eq_ignore_ascii_case(b"specialize"));
    if !named && !path.contains('%') {
        return false;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let is = |want: &[&str]| {
        segments.len() == want.len()
            && segments
                .iter()
                .zip(want)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    };
    is(&["specialize"]) || is(&["v2", "specialize"])
}

/// A request as its function's log names it when the answer is a failure.
struct Call<'a> {
    method: http::Method,
    /// Without the query, as the access log: it may carry a secret.
    path: &'a str,
    key: Option<HeaderValue>,
}

impl Call<'_> {
    /// `POST / answered 500 after 12 ms (X-Fusion-Idempotency-Key: <run>/<task>)`:
    /// next to what the function wrote to stderr, which call failed.
    fn failed(&self, status: http::StatusCode, took: Duration) -> String {
        let mut line = format!(
            "{} {} answered {} after {} ms",
            self.method,
            self.path,
            status.as_u16(),
            took.as_millis()
        );
        if let Some(key) = self.key.as_ref().and_then(|k| k.to_str().ok()) {
            // Fusion's own keys are short; anything longer is cut.
            let key: String = key.chars().take(200).collect();
            line.push_str(&format!(" ({IDEMPOTENCY_HEADER}: {key})"));
        }
        line
    }
}

/// `Upgrade: websocket` when a request asks to switch to WebSocket
/// (`Connection: upgrade` too). Other upgrades (`h2c`, which HTTP/2 clients
/// offer on every plain request) are hop-by-hop: not passed on, the request
/// answered as HTTP/1.1.
fn switch_to(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let has = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    (has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket"))
        .then(|| HeaderValue::from_static("websocket"))
}

/// Sends a request to switch protocols to the leased instance, on a
/// connection of its own. A 101 joins the caller's connection to the
/// instance's both ways, the lease held until either side closes it or the
/// instance ends (the function's timeout bounds only the answer's head);
/// another answer is passed on as it is.
async fn switch_protocols(
    pm: &PoolManager,
    lease: Lease,
    out: Request<Body>,
    from_caller: hyper::upgrade::OnUpgrade,
    timeout: Duration,
) -> Result<Response<Body>, Error> {
    let instance = lease.instance.clone();
    let sent = tokio::time::timeout(timeout, async {
        tokio::select! {
            biased;
            sent = instance.client.upgrade(out) => Ok(sent),
            exit = instance.wait_exited() => Err(exit),
        }
    })
    .await;
    let mut resp = match sent {
        Err(_) => {
            let why = format!(
                "a request to switch protocols passed the function's timeout of {} s: stopping instance {}",
                timeout.as_secs(),
                instance.id
            );
            pm.logs()
                .append(&lease.function.key(), instance.id, "fusion", &why);
            instance.stop();
            return Err(Error::Timeout(format!(
                "function {:?} did not answer within its timeout of {} s",
                lease.function.key(),
                timeout.as_secs()
            )));
        }
        Ok(Err(_) | Ok(Err(_))) if pm.is_closing() => return Err(cut_off_at_shutdown()),
        Ok(Err(exit)) => return Err(instance_ended(&lease, &exit)),
        Ok(Ok(Err(e))) => return Err(instance_failed(pm, &lease, &e).await),
        Ok(Ok(Ok(resp))) => resp,
    };
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // Refused: the whole answer, read within what is left of the timeout.
        let (mut parts, body) = resp.into_parts();
        for h in &HOP_BY_HOP {
            parts.headers.remove(h);
        }
        let limit = pm.config().body_limit as usize;
        let read = tokio::time::timeout(timeout, axum::body::to_bytes(Body::new(body), limit));
        let bytes = match read.await {
            Ok(Ok(b)) => b,
            _ => {
                return Err(Error::Upstream(format!(
                    "function {:?} refused to switch protocols and its answer could not be read",
                    lease.function.key()
                )))
            }
        };
        drop(lease);
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    }
    let to_instance = hyper::upgrade::on(&mut resp);
    let stopping = pm.tunnels_ended();
    let open = pm
        .metrics()
        .websockets
        .get_or_create(&crate::metrics::FunctionLabels {
            function: lease.function.key(),
        })
        .clone();
    open.inc();
    tokio::spawn(async move {
        // Counted until the tunnel ends, whichever way.
        let _counted = decrement_on_drop(open);
        let (Ok(caller), Ok(instance_io)) = tokio::join!(from_caller, to_instance) else {
            return;
        };
        let tunnel = join_halves(
            hyper_util::rt::TokioIo::new(caller),
            hyper_util::rt::TokioIo::new(instance_io),
        );
        tokio::select! {
            () = tunnel => {}
            _ = lease.instance.wait_exited() => {}
            () = stopping => {}
        }
        drop(lease);
    });
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::empty()))
}

/// How long one side of a tunnel may go on once the other has closed its
/// side: a WebSocket's peer answers a close at once; one that does not (a
/// runtime that never ends a half-closed connection) would hold its instance
/// for good.
const HALF_CLOSED_GRACE: Duration = Duration::from_secs(10);

/// Copies `a` to `b` and `b` to `a` until both directions have ended, or
/// `HALF_CLOSED_GRACE` after the first did (its end passed on as a shutdown).
async fn join_halves<A, B>(a: A, b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let forth = async {
        let _ = tokio::io::copy(&mut a_read, &mut b_write).await;
        let _ = b_write.shutdown().await;
    };
    let back = async {
        let _ = tokio::io::copy(&mut b_read, &mut a_write).await;
        let _ = a_write.shutdown().await;
    };
    tokio::pin!(forth, back);
    tokio::select! {
        () = &mut forth => {
            let _ = tokio::time::timeout(HALF_CLOSED_GRACE, back).await;
        }
        () = &mut back => {
            let _ = tokio::time::timeout(HALF_CLOSED_GRACE, forth).await;
        }
    }
}

/// Decrements `gauge` when dropped.
fn decrement_on_drop(gauge: prometheus_client::metrics::gauge::Gauge) -> impl Drop {
    struct Dec(prometheus_client::metrics::gauge::Gauge);
    impl Drop for Dec {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(gauge)
}

/// An instance's answer as it streams to the caller: its lease held to the
/// end, and cut off at the function's timeout, which bounds the whole
/// exchange as Fission's router's does. An answer still streaming then (a
/// function that sent its head and hangs, a `Content-Length` it never fills,
/// a stream longer than the timeout) stops its instance, with every process
/// in it, and ends in an error: the caller sees the answer cut short, and the
/// lease is given back.
struct Bounded {
    inner: ResponseBody,
    deadline: tokio::time::Instant,
    /// Wakes a poll waiting for the instance's next bytes at the deadline.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The lease while the answer streams; shared with the watchdog, which
    /// takes it at the deadline when the caller stopped reading (the body is
    /// then not polled, by this end).
    held: Arc<std::sync::Mutex<Option<Lease>>>,
    watchdog: Option<tokio::task::AbortHandle>,
    ended: bool,
    logs: Arc<crate::logs::Logs>,
    timeout: Duration,
}

/// Takes the lease at the deadline, when it is still held: the instance is
/// stopped, with every process in it, and its function's log says why.
fn cut_off(held: &std::sync::Mutex<Option<Lease>>, logs: &crate::logs::Logs, timeout: Duration) {
    let lease = held.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(lease) = lease {
        let id = lease.instance.id;
        logs.append(
            &lease.function.key(),
            id,
            "fusion",
            &format!(
                "an answer passed the function's timeout of {} s while streaming: stopping instance {id}",
                timeout.as_secs()
            ),
        );
        lease.instance.stop();
    }
}

impl Bounded {
    /// The answer ended (or failed, or its caller went): the lease is given back.
    fn finish(&mut self) {
        self.ended = true;
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }

    fn timed_out(&mut self) -> axum::BoxError {
        self.finish();
        format!(
            "the function's answer did not end within its timeout of {} s",
            self.timeout.as_secs()
        )
        .into()
    }
}

impl HttpBody for Bounded {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        // Past the deadline (a function that writes without end never leaves
        // the inner body pending), or cut off by the watchdog.
        let cut = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if cut || tokio::time::Instant::now() >= self.deadline {
            cut_off(&self.held, &self.logs, self.timeout);
            return Poll::Ready(Some(Err(self.timed_out())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.finish();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish();
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(Some(Ok(frame))) => {
                // More to come: the caller may stop reading, and then this
                // body is not polled again until it does. A watchdog keeps the
                // deadline meanwhile (a whole answer in one frame needs none).
                if self.watchdog.is_none() && !self.inner.is_end_stream() {
                    let (held, logs, timeout) =
                        (self.held.clone(), self.logs.clone(), self.timeout);
                    let deadline = self.deadline;
                    let task = tokio::spawn(async move {
                        tokio::time::sleep_until(deadline).await;
                        cut_off(&held, &logs, timeout);
                    });
                    self.watchdog = Some(task.abort_handle());
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Pending => {}
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        cut_off(&self.held, &self.logs, self.timeout);
        Poll::Ready(Some(Err(self.timed_out())))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}

type Sent = Result<Result<Response<ResponseBody>, ClientError>, Exit>;

/// A request sent to an instance, with the lease it holds, until the instance
/// answers. A caller that goes away before that (a client that hangs up, a
/// proxy's own timeout) drops it while the function is still at work on the
/// request: the exchange then goes on in the background, and the lease is
/// given back only when the instance answers (its answer dropped), ends, or
/// passes the function's timeout (then it is stopped, as for a caller still
/// waiting). Otherwise any caller could run more requests at once in an
/// instance than `requests_per_instance` allows, and more instances than
/// `max_scale`, by hanging up.
struct InFlight {
    exchange: Option<Pin<Box<dyn Future<Output = Sent> + Send>>>,
    lease: Option<Lease>,
    deadline: tokio::time::Instant,
}

impl InFlight {
    /// The lease back, the exchange over or given up by the caller.
    fn done(&mut self) -> Lease {
        self.exchange = None;
        self.lease
            .take()
            .expect("an in-flight request holds its lease")
    }
}

impl Future for InFlight {
    type Output = Sent;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Sent> {
        match self.exchange.as_mut() {
            Some(exchange) => exchange.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let (Some(exchange), Some(lease)) = (self.exchange.take(), self.lease.take()) else {
            return;
        };
        // Without a runtime the server is ending, and its instances with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        lease.abandoned();
        let deadline = self.deadline;
        runtime.spawn(async move {
            if tokio::time::timeout_at(deadline, exchange).await.is_err() {
                lease.instance.stop();
            }
            drop(lease);
        });
    }
}

/// Gives each of a route's URL parameters as `X-Fission-Params-<name>`, as
/// Fission's router does: a value past ASCII (`zoë`) as its UTF-8 bytes; one
/// no header can hold (a control character) is left out.
pub fn url_params(headers: &mut http::HeaderMap, params: &[(String, String)]) {
    for (k, v) in params {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(format!("X-Fission-Params-{k}")),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            headers.insert(name, value);
        }
    }
}

/// Appends `client` to the request's `X-Forwarded-For` (after what earlier
/// proxies put there, in one field), or starts it.
pub fn forwarded_for(headers: &mut http::HeaderMap, client: std::net::IpAddr) {
    let client = client.to_string();
    let earlier: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if earlier.is_empty() {
        client
    } else {
        format!("{}, {client}", earlier.join(", "))
    };
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// A request body that records when it has been read to its end.
struct Whole<B> {
    inner: B,
    received: Arc<AtomicBool>,
}

impl<B: HttpBody + Unpin> HttpBody for Whole<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.received.store(true, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a failed request waits for its instance's exit to be reported, to
/// tell an out-of-memory kill from other failures.
const EXIT_REPORT_WAIT: Duration = Duration::from_millis(500);
/// How long it waits in all when the kernel has killed a process of the
/// instance for memory: an instance whose runtime was killed with hundreds of
/// processes in it (or on a busy machine) takes longer to be torn down and
/// reported than `EXIT_REPORT_WAIT`, and its caller should still learn it was
/// memory. The exit's report decides; an instance that lives on is
/// `instance_failed` as before.
const OOM_EXIT_REPORT_WAIT: Duration = Duration::from_secs(5);

/// The error for a request its instance failed: `out_of_memory` when the instance
/// was killed for its memory use, else the transport failure, which the
/// function's log says too (an answer that is not valid HTTP, say: a header
/// name with a space), where its developer looks.
async fn instance_failed(pm: &PoolManager, lease: &Lease, e: &ClientError) -> Error {
    let function = &lease.function.key();
    // An answer the router does not read is the function's doing, and its
    // instance is well: said as such, at once (it waited for an exit).
    if matches!(e, ClientError::Http(h) if h.is_parse_too_large()) {
        let reason = format!(
            "the answer of function {function:?} has more than {RESPONSE_MAX_HEADERS} header fields, or a head (status line and headers) over {} KiB, past what the router reads",
            RESPONSE_MAX_HEAD / 1024
        );
        tracing::warn!(
            function,
            instance = lease.instance.id,
            "an instance's answer had too large a head (502)"
        );
        log_failure(
            pm,
            lease,
            &format!("the request failed with 502 response_head_too_large: {reason}"),
        );
        return Error::ResponseHeadTooLarge(reason);
    }
    let mut exit = tokio::time::timeout(EXIT_REPORT_WAIT, lease.instance.wait_exited())
        .await
        .ok();
    if exit.is_none()
        && lease
            .instance
            .handle
            .usage()
            .oom_kills
            .is_some_and(|n| n > 0)
    {
        exit = tokio::time::timeout(
            OOM_EXIT_REPORT_WAIT - EXIT_REPORT_WAIT,
            lease.instance.wait_exited(),
        )
        .await
        .ok();
    }
    if exit == Some(Exit::OutOfMemory) {
        return out_of_memory(function);
    }
    let reason = match std::error::Error::source(e) {
        Some(s) => s.to_string(),
        None => e.to_string(),
    };
    tracing::warn!(function, instance = lease.instance.id, error = %reason, "an instance failed a request (502)");
    log_failure(
        pm,
        lease,
        &format!("the request failed with 502 instance_failed: {reason}"),
    );
    Error::Upstream(format!(
        "the instance serving function {function:?} failed while handling the request: {reason}"
    ))
}

/// Header fields in an instance's answer at most (hyper's default, which
/// parses them on the stack).
const RESPONSE_MAX_HEADERS: usize = 100;
/// The bytes of an instance's answer's head at most (hyper's default read
/// buffer, 8 KiB + 100 x 4 KiB).
const RESPONSE_MAX_HEAD: usize = 8192 + 4096 * 100;

/// Writes `line` to the function's log, where its developer looks, at most
/// a few times a second.
fn log_failure(pm: &PoolManager, lease: &Lease, line: &str) {
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if lease.metrics.failure_lines.admit(second).is_some() {
        pm.logs()
            .append(&lease.function.key(), lease.instance.id, "fusion", line);
    }
}

/// The error for a request whose instance ended before it answered.
fn instance_ended(lease: &Lease, exit: &Exit) -> Error {
    let function = &lease.function.key();
    tracing::warn!(function, instance = lease.instance.id, %exit, "an instance ended under a request (502)");
    if *exit == Exit::OutOfMemory {
        return out_of_memory(function);
    }
    Error::Upstream(format!(
        "the instance serving function {function:?} {exit} while handling the request"
    ))
}

/// The error for a request whose instance the server stopped, stopping
/// itself at the end of its shutdown grace: the server's doing, not the
/// function's.
fn cut_off_at_shutdown() -> Error {
    Error::ShuttingDown(
        "the server stopped before the function answered (its shutdown grace ended, or a second signal cut it short); try again once it is back"
            .into(),
    )
}

/// The error for a request whose instance was killed for its memory.
fn out_of_memory(function: &str) -> Error {
    Error::OutOfMemory(format!(
        "the instance serving function {function:?} was killed for using more memory than its environment allows"
    ))
}

fn too_large(limit: u64) -> Error {
    Error::TooLarge(format!(
        "the request body is larger than the limit of {limit} bytes"
    ))
}

/// Whether a body error, anywhere in its chain of sources, is a body passing its
/// size limit.
pub fn caused_by_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_past_ascii_are_given_as_their_utf8_bytes() {
        let mut headers = http::HeaderMap::new();
        let params = [
            ("who".to_string(), "zoë".to_string()),
            ("bad".to_string(), "a\nb".to_string()),
        ];
        url_params(&mut headers, &params);
        assert_eq!(headers["x-fission-params-who"].as_bytes(), "zoë".as_bytes());
        assert!(!headers.contains_key("x-fission-params-bad"));
    }
}
