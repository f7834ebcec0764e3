//! The accept loop of each listener (router and API): plain TCP or TLS, hyper's
//! HTTP/1 with a header-read timeout (which also closes idle keep-alive
//! connections), a cap on open connections per listener, limits on the request
//! head answered with the JSON error, and graceful shutdown.
//!
//! hyper answers a request it cannot parse by itself, with an empty body: 400 for
//! bad syntax, 431 past its buffer or its 100 header fields, 414 past 65,534 bytes
//! of URI. Its buffer is set above this module's head and URI limits, so a head past
//! those gets the JSON 431 or 414 from here with a message that says which limit;
//! the header count is hyper's own, and [`own_answers`] puts the JSON error into
//! the answers hyper still writes itself.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use pool_manager::error::error_response;
use std::pin::Pin;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

mod own_answers;
use own_answers::{OwnAnswersIo, Turns};

/// hyper's own read buffer, past which it answers 431 itself (must stay above
/// `Limits::max_head_bytes`, whose refusal says which limit was passed).
const HYPER_MAX_BUF: usize = 256 * 1024;

/// Repeated warnings about one listener are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What one listener allows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a client may take to send a request's head; also how long an
    /// idle keep-alive connection is kept (and the bound on a TLS handshake).
    pub header_timeout: Duration,
    /// Open connections at most; past it a new connection is closed at once.
    pub max_connections: usize,
    /// Request line and headers, in bytes, at most (431 past it).
    pub max_head_bytes: usize,
    /// URI length at most (414 past it).
    pub max_uri_bytes: usize,
}

impl Limits {
    pub fn new(header_timeout: Duration, max_connections: usize) -> Limits {
        Limits {
            header_timeout,
            max_connections,
            max_head_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// The default connection cap per listener, from the process's open-file limit:
/// a quarter of what is left after 256 descriptors for the store, instances and
/// logs, so that both listeners full, and the router's connections to instances,
/// still leave room. Between 32 and 16,384.
pub fn default_max_connections() -> usize {
    let nofile = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    (nofile.saturating_sub(256) / 4).clamp(32, 16_384)
}

/// An axum app as a handler for `serve`.
pub fn app_handler(
    app: Router,
) -> impl Fn(Request) -> BoxFuture<'static, Response> + Clone + Send + Sync + 'static {
    move |req| {
        let app = app.clone();
        Box::pin(async move {
            match app.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        })
    }
}

/// Listening sockets a stop has ended, kept bound to their addresses until
/// this is dropped. A socket simply closed at the stop frees its port while
/// instances still run through the grace, and an instance on the host's
/// network could take the port and read the next client's token; one kept
/// bound (and no longer sharing its address) refuses connections as a closed
/// one does, and no one else can listen there. Dropped once the instances
/// have stopped.
#[derive(Clone, Default)]
pub struct Reserved(Arc<std::sync::Mutex<Vec<Kept>>>);

/// A listener that no longer listens, and the socket that keeps its port
/// when the listener let it go.
type Kept = (TcpListener, Option<socket2::Socket>);

impl Reserved {
    /// Stops `listener` listening, and keeps its address.
    fn keep(&self, name: &str, listener: TcpListener) {
        let socket = socket2::SockRef::from(&listener);
        // Not shared: no socket of another user, or of ours, binds it while
        // ours is not listening.
        if let Err(e) = socket
            .set_reuse_address(false)
            .and_then(|()| socket.shutdown(std::net::Shutdown::Read))
        {
            tracing::warn!(
                listener = name,
                "cannot stop listening and keep the address: {e}"
            );
        }
        // A listener given port 0 lets its port go when it stops listening
        // (the kernel chose it); a socket bound there at once keeps it. One
        // given its port keeps it, and this bind finds it taken (a socket not
        // sharing its address is never shared).
        let held = listener.local_addr().ok().and_then(|addr| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )
            .ok()?;
            // Bound beside the connections still open on the port (theirs
            // share it), then shared with no one.
            s.set_reuse_address(true).ok()?;
            s.bind(&addr.into()).ok()?;
            s.set_reuse_address(false).ok()?;
            Some(s)
        });
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((listener, held));
    }
}

/// Serves `handler` on `listener` until `stop` turns true; then stops
/// accepting (the listening socket stops listening, its address kept in
/// `reserved`), lets every open connection finish its request, and returns
/// once all have closed. The handler is called for
/// each request within the limits; the router listener passes a plain function
/// here (no axum routing or layers on its hot path), the API its axum app.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    reserved: Reserved,
) where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(HYPER_MAX_BUF);
    // Header fields at most: hyper's default, 100, past which hyper answers 431
    // itself (the JSON error through `own_answers`). A larger setting would cost
    // every request two heap arrays of that many entries (2% of the router's
    // CPU at 512); the default parses into arrays on the stack.
    let mut refused = Refusals::default();
    let mut last_accept_error = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: back off a little
                // rather than spin; the other listener has its own loop.
                if last_accept_error.is_none_or(|t: Instant| t.elapsed() >= LOG_EVERY) {
                    tracing::warn!(listener = name, "cannot accept a connection: {e}");
                    last_accept_error = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            refused.note(name, limits.max_connections);
            continue;
        };
        refused.accepting_again(name);
        let _ = stream.set_nodelay(true);
        // A peer gone without a word (a NAT that forgot it, a pulled cable)
        // is found within minutes: it matters for a WebSocket, which holds
        // its instance while the connection lasts.
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(10))
                .with_retries(6),
        );
        let turns = Turns::new();
        let service = {
            let handler = handler.clone();
            let limits = limits.clone();
            let turns = turns.clone();
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                turns.request();
                req.extensions_mut().insert(pool_manager::ClientAddr(peer));
                let turns = turns.clone();
                let answer = match check_head(&req, &limits) {
                    None => Ok(handler(req.map(Body::new))),
                    Some(refusal) => Err(refusal),
                };
                async move {
                    match answer {
                        Ok(answer) => {
                            let answer = answer.await;
                            if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
                                // The connection is the function's from now
                                // on: nothing on it is hyper's own answer.
                                turns.request();
                            }
                            Ok::<_, std::convert::Infallible>(answer.map(|body| turns.track(body)))
                        }
                        Err(mut refusal) => {
                            // Such a client gets no second request on this connection.
                            refusal.headers_mut().insert(
                                axum::http::header::CONNECTION,
                                axum::http::HeaderValue::from_static("close"),
                            );
                            Ok(refusal.map(|body| turns.track(body)))
                        }
                    }
                }
            })
        };
        let http = http.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        let handshake_limit = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                None => {
                    let stream = OwnAnswersIo::new(stream, turns);
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    until_stopped(conn.with_upgrades(), stop, |c| c.graceful_shutdown()).await
                }
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(handshake_limit, tls.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let stream = OwnAnswersIo::new(stream, turns);
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    until_stopped(conn.with_upgrades(), stop, |c| c.graceful_shutdown()).await
                }
            };
            log_connection_end(name, peer, result);
        });
    }
    reserved.keep(name, listener);
    // Every connection's task holds a permit: all of them back, all ended.
    let _ = permits
        .acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX))
        .await;
}

/// Serves `conn` until it ends; once `stop` is set, it ends gracefully (the
/// request in flight is answered, then the connection closes). A connection
/// taken over by an upgrade (a WebSocket) has ended here: its stream is the
/// function's, and ends with it.
async fn until_stopped<C>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    graceful: impl FnOnce(Pin<&mut C>),
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = stop.wait_for(|s| *s) => {}
    }
    graceful(conn.as_mut());
    conn.await
}

/// The JSON refusal of a request head past the limits, if it is.
fn check_head(req: &Request<Incoming>, limits: &Limits) -> Option<Response> {
    let u = req.uri();
    let uri = u.path_and_query().map_or(0, |p| p.as_str().len())
        + u.authority().map_or(0, |a| a.as_str().len() + 3)
        + u.scheme_str().map_or(0, str::len);
    if uri > limits.max_uri_bytes {
        return Some(error_response(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            &format!(
                "the request URI has {uri} bytes; at most {} are read",
                limits.max_uri_bytes
            ),
        ));
    }
    let headers = req.headers();
    // As sent: "METHOD URI HTTP/1.1\r\n", then "name: value\r\n" per field.
    let head = req.method().as_str().len()
        + uri
        + 12
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head > limits.max_head_bytes {
        return Some(error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!(
                "the request head has {head} bytes; at most {} are read",
                limits.max_head_bytes
            ),
        ));
    }
    None
}

fn log_connection_end(name: &str, peer: SocketAddr, result: hyper::Result<()>) {
    if let Err(e) = result {
        if e.is_timeout() {
            tracing::debug!(listener = name, %peer, "closed a connection that sent no request in time");
        } else {
            tracing::debug!(listener = name, %peer, "connection ended: {e}");
        }
    }
}

/// Connections closed at the cap, logged at most every `LOG_EVERY`.
#[derive(Default)]
struct Refusals {
    count: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, listener: &str, cap: usize) {
        self.count += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                listener,
                refused = self.count,
                "{cap} connections open (the cap); closing new ones until some end"
            );
            self.count = 0;
            self.last_log = Some(Instant::now());
        }
    }

    /// A connection was taken again: the refusals not yet logged are (each
    /// one is said, not only the first of a burst).
    fn accepting_again(&mut self, listener: &str) {
        if self.count > 0 {
            tracing::warn!(
                listener,
                refused = self.count,
                "{} more connections were closed at the cap; taking new ones again",
                self.count
            );
            self.count = 0;
        }
    }
}
