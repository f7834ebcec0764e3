//! Connections to one instance's runtime, whatever its address: each instance gets
//! its own HTTP client whose connections always dial that instance (TCP, a Unix
//! socket, or a port inside the instance's own network namespace), so requests
//! carry no per-request address lookup.
//!
//! The client is a pool of HTTP/1.1 keep-alive connections, each driven by the
//! task that uses it: the request's own task while the head goes out and the
//! response head comes back, then the response body as it is read. A request
//! thus costs no hop through a separate connection task, and putting a
//! connection back is a push onto a list, not a spawned task (hyper-util's
//! legacy client does both, and on the router's hot path they cost more than
//! the proxying itself).

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::Address;
use crate::instance::lock;

/// How long a connect inside a namespace may hold its blocking thread (a
/// loopback connect answers at once unless the listener's queue is full).
const NETNS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client the router and the pool use to talk to one instance.
pub struct InstanceClient {
    address: Address,
    /// Open connections not in use, the most recently used last.
    idle: Arc<Mutex<Vec<Idle>>>,
}

/// One open connection: the half that sends requests, and the connection
/// itself, which does the I/O whenever it is polled (`None` once it has ended).
struct Conn {
    sender: http1::SendRequest<Body>,
    conn: Option<Pin<Box<Connection>>>,
}

impl Conn {
    /// Polls the connection, which does its I/O; forgets it once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = self.conn.as_mut() {
            if c.as_mut().poll(cx).is_ready() {
                self.conn = None;
            }
        }
    }
}

type Connection = http1::Connection<TokioIo<InstanceStream>, Body>;

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Why a request to an instance got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the instance: {0}")]
    Connect(#[source] io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl InstanceClient {
    /// The client of the instance at `address`; it opens nothing until used.
    pub fn new(address: Address) -> InstanceClient {
        InstanceClient {
            address,
            idle: Arc::default(),
        }
    }

    /// Sends `req` and returns the response once its head is in. Only the URI's
    /// path and query are sent, with `Host: instance` unless the request has a
    /// `Host`. The response body drives the connection and gives it back for
    /// reuse once read to its end. A request that a reused connection could
    /// not send (the instance had closed it) is sent again on another.
    pub async fn request(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<ResponseBody>, ClientError> {
        if req.uri().authority().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        req.headers_mut()
            .entry(http::header::HOST)
            .or_insert_with(|| HeaderValue::from_static("instance"));
        loop {
            let (mut conn, reused) = match self.checkout().await {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            let sent = conn.sender.try_send_request(req);
            match send(&mut conn, sent).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = ResponseBody {
                        body,
                        conn: conn.conn.is_some().then_some(conn),
                        idle: Arc::downgrade(&self.idle),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(ClientError::Http(e.into_error())),
                },
            }
        }
    }

    /// Sends `req`, a request to switch protocols (a WebSocket's), on a
    /// connection of its own, which the instance may take over with a 101
    /// (`hyper::upgrade::on` the response then gives its two directions);
    /// it is never put back for reuse.
    pub async fn upgrade(&self, mut req: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        req.headers_mut()
            .entry(http::header::HOST)
            .or_insert_with(|| HeaderValue::from_static("instance"));
        let stream = InstanceConnector::dial(&self.address)
            .await
            .map_err(ClientError::Connect)?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        // Driven apart: after a 101 it hands its stream to the upgrade.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender.send_request(req).await?)
    }

    /// An idle connection that is still open and ready for a request. One that
    /// is not ready at once (the instance closed it, or it still sends the body
    /// of a request the instance answered early) is closed.
    async fn checkout(&self) -> Option<Conn> {
        loop {
            let Idle { mut conn, since } = lock(&self.idle).pop()?;
            if since.elapsed() >= IDLE_TIMEOUT {
                // The ones below it have been idle longer still.
                lock(&self.idle).clear();
                return None;
            }
            let ready = poll_fn(|cx| {
                // The connection has been polled by no one while idle: let it
                // see a close, and take up its next request.
                conn.drive(cx);
                let ready = conn.conn.is_some()
                    && matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(())));
                Poll::Ready(ready)
            })
            .await;
            if ready {
                return Some(conn);
            }
        }
    }

    /// Opens a new connection.
    async fn connect(&self) -> Result<Conn, ClientError> {
        let stream = InstanceConnector::dial(&self.address)
            .await
            .map_err(ClientError::Connect)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            sender,
            conn: Some(Box::pin(conn)),
        })
    }
}

/// Waits for the response to a request handed to `conn`, driving the connection.
async fn send(
    conn: &mut Conn,
    sent: impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>>,
) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
    let mut sent = std::pin::pin!(sent);
    poll_fn(|cx| {
        // Once the connection has ended (and is dropped), the request has its
        // answer: the response, or the error.
        conn.drive(cx);
        sent.as_mut().poll(cx)
    })
    .await
}

/// A response body from an instance. It drives its connection while it is read,
/// and puts the connection back into its client's pool once read to its end.
pub struct ResponseBody {
    body: Incoming,
    /// The connection the response came on, until it ends or is given back.
    conn: Option<Conn>,
    idle: Weak<Mutex<Vec<Idle>>>,
}

impl ResponseBody {
    /// The body has been read to its end: the connection goes back to the
    /// pool, unless it has ended (the next checkout checks that it is ready).
    fn release(&mut self) {
        let Some(conn) = self.conn.take().filter(|c| c.conn.is_some()) else {
            return;
        };
        if let Some(idle) = self.idle.upgrade() {
            lock(&idle).push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper's server never polls a body that is empty from the start.
        if http_body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() {
            if let Some(c) = this.conn.as_mut() {
                c.drive(cx);
                polled = Pin::new(&mut this.body).poll_frame(cx);
            }
        }
        if let Poll::Ready(None) = polled {
            if let Some(c) = this.conn.as_mut() {
                c.drive(cx);
            }
            this.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}

/// Dials one fixed address.
#[derive(Clone, Debug)]
pub struct InstanceConnector;

impl InstanceConnector {
    /// Opens one connection (also used to check that a runtime listens).
    pub async fn dial(address: &Address) -> io::Result<InstanceStream> {
        match address {
            Address::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Ok(InstanceStream::Tcp(s))
            }
            Address::Unix(p) => Ok(InstanceStream::Unix(connect_unix(p).await?)),
            Address::NetNs { ns, port } => {
                // Entering a namespace is per thread: do it on a blocking one.
                let ns = ns.clone();
                let port = *port;
                let std = tokio::task::spawn_blocking(move || {
                    crate::sys::connect_in_netns(
                        ns.file(),
                        SocketAddr::from(([127, 0, 0, 1], port)),
                        NETNS_CONNECT_TIMEOUT,
                    )
                })
                .await
                .map_err(io::Error::other)??;
                std.set_nonblocking(true)?;
                let s = TcpStream::from_std(std)?;
                s.set_nodelay(true)?;
                Ok(InstanceStream::Tcp(s))
            }
        }
    }
}
/// The longest path a Unix socket address holds (`sun_path`, with its NUL).
const SOCKET_PATH_MAX: usize = 108;

/// Connects to the socket at `path`, also past the length a socket address
/// holds: through its directory's descriptor (`/proc/self/fd/N/name`), so a
/// long data-directory path (an instance's bundle under it, whose id grows
/// with every instance) reaches it all the same.
async fn connect_unix(path: &std::path::Path) -> io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path).await;
    };
    if path.as_os_str().len() < SOCKET_PATH_MAX {
        return UnixStream::connect(path).await;
    }
    let dir = std::fs::File::open(dir)?;
    let short = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    let connected = UnixStream::connect(&short).await;
    drop(dir);
    connected
}

/// A connection to a runtime over TCP or a Unix socket.
pub enum InstanceStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for InstanceStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            InstanceStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for InstanceStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            InstanceStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            InstanceStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            InstanceStream::Tcp(s) => s.is_write_vectored(),
            InstanceStream::Unix(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            InstanceStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InstanceStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            InstanceStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket whose path is longer than a socket address holds (a bundle
    /// under a long data directory) is reached all the same.
    #[tokio::test]
    async fn a_socket_past_the_address_length_is_reached() {
        use std::os::fd::AsRawFd;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("runtime.sock");
        assert!(path.as_os_str().len() >= SOCKET_PATH_MAX);
        // Bound as a runtime inside a container binds it: by a short path.
        let handle = std::fs::File::open(&dir).unwrap();
        let bound = format!("/proc/self/fd/{}/runtime.sock", handle.as_raw_fd());
        let listener = tokio::net::UnixListener::bind(&bound).unwrap();
        let accepted = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        let stream = InstanceConnector::dial(&Address::Unix(path)).await;
        assert!(stream.is_ok(), "{:?}", stream.err());
        accepted.await.unwrap().unwrap();
    }
}
