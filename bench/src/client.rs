//! The benchmark's HTTP/1.1 client. Set-up calls and single measured requests
//! (`Http::send`, `Http::timed`) go through hyper-util's pooled keep-alive client
//! (TCP_NODELAY; the API's requests with the server's bearer token), or for a
//! Unix socket through hyper connections pooled the same way (`UnixPool`).
//! Measured loads (`run_batch`, every figure of many requests) use `LoadConn`:
//! one lean connection per client, the same for routed and direct paths.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// Expected body of every hello function.
pub const HELLO: &[u8] = b"hello\n";

/// Longest a single request may take before the run is declared broken.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    /// The API listener's base URL (with its final `/`, so that another port
    /// with the same first digits does not match) and the `Bearer` value every
    /// request to it carries; requests elsewhere (router, instances) carry none.
    api: String,
    bearer: HeaderValue,
}

impl Http {
    /// A client that sends `token` with every request to the API at `api`.
    pub fn new(api: &str, token: &str) -> Result<Http> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Below the server's idle keep-alive bound (FUSION_HEADER_TIMEOUT_MS,
            // 15 s), so the client never reuses a connection the server is closing.
            .pool_idle_timeout(Duration::from_secs(10))
            .build(connector);
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the API token is not a valid header value")?;
        Ok(Http {
            client,
            api: format!("{}/", api.trim_end_matches('/')),
            bearer,
        })
    }

    /// The authorization header for a request to `url`, when it is the API's.
    fn auth_for(&self, url: &str) -> Option<&HeaderValue> {
        url.starts_with(&self.api).then_some(&self.bearer)
    }

    /// One request; answers the status and the whole body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut req = Request::builder().method(method.clone()).uri(url);
        if let Some(auth) = self.auth_for(url) {
            req = req.header(hyper::header::AUTHORIZATION, auth);
        }
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req.body(Full::new(body))?;
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("{method} {url}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {url}"))
    }

    /// A JSON API call that must succeed (2xx); answers the parsed body (or null).
    pub async fn api(&self, method: Method, url: &str, body: Option<&Value>) -> Result<Value> {
        let (bytes, ct) = match body {
            Some(v) => (Bytes::from(v.to_string()), Some("application/json")),
            None => (Bytes::new(), None),
        };
        let (status, resp) = self.send(method.clone(), url, bytes, ct).await?;
        if !status.is_success() {
            bail!(
                "{method} {url}: {status}: {}",
                String::from_utf8_lossy(&resp).trim()
            );
        }
        if resp.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&resp)
            .with_context(|| format!("{method} {url}: the answer is not JSON"))
    }

    /// Uploads code; answers the package reference.
    pub async fn upload(&self, api: &str, filename: &str, code: &str) -> Result<Value> {
        let url = format!("{api}/v1/packages?filename={filename}");
        let (status, resp) = self
            .send(
                Method::POST,
                &url,
                Bytes::from(code.to_string()),
                Some("application/octet-stream"),
            )
            .await?;
        if !status.is_success() {
            bail!(
                "POST {url}: {status}: {}",
                String::from_utf8_lossy(&resp).trim()
            );
        }
        Ok(serde_json::from_slice(&resp)?)
    }

    /// One measured hello request: the time from sending until the whole body is
    /// in. Anything but `200 hello\n` is an error.
    pub async fn timed_hello(&self, uri: &Uri) -> Result<Duration> {
        self.timed(&Probe::hello(uri.clone())).await
    }

    /// One measured request: the time from sending until the whole body is in.
    /// An answer the probe does not expect is an error.
    pub async fn timed(&self, probe: &Probe) -> Result<Duration> {
        Ok(self.timed_body(probe).await?.0)
    }

    /// As `timed`, also answering the body.
    pub async fn timed_body(&self, probe: &Probe) -> Result<(Duration, Bytes)> {
        let mut req = Request::builder()
            .method(probe.method.clone())
            .uri(probe.uri.clone());
        for (k, v) in &probe.headers {
            req = req.header(*k, *v);
        }
        if let Some(auth) = self.auth_for(&probe.uri.to_string()) {
            req = req.header(hyper::header::AUTHORIZATION, auth);
        }
        if probe.unix.is_some() {
            req = req.header(hyper::header::HOST, "localhost");
        }
        let req = req.body(Full::new(probe.body.clone()))?;
        let start = Instant::now();
        let fut = async {
            if let Some(pool) = &probe.unix {
                return pool.request(req).await;
            }
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (method, uri) = (&probe.method, probe.target());
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("{method} {uri}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {uri}"))?;
        let elapsed = start.elapsed();
        probe.check(status, &body)?;
        Ok((elapsed, body))
    }

    /// The probe's request as written on the wire by a `LoadConn`: what hyper
    /// sends for it (the request line, `host`, the probe's headers, the API's
    /// authorization, a length when there is a body), HTTP/1.1 keep-alive.
    fn request_bytes(&self, probe: &Probe) -> Result<Vec<u8>> {
        let path = probe.uri.path_and_query().map_or("/", |p| p.as_str());
        let host = match (&probe.unix, probe.uri.authority()) {
            (Some(_), _) | (None, None) => "localhost",
            (None, Some(a)) => a.as_str(),
        };
        let mut out = format!("{} {path} HTTP/1.1\r\nhost: {host}\r\n", probe.method);
        for (k, v) in &probe.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(auth) = self.auth_for(&probe.uri.to_string()) {
            out.push_str(&format!("authorization: {}\r\n", auth.to_str()?));
        }
        if !probe.body.is_empty() || probe.method == Method::POST || probe.method == Method::PUT {
            out.push_str(&format!("content-length: {}\r\n", probe.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&probe.body);
        Ok(bytes)
    }
}

/// A measured request, prepared once and sent many times, with the answer it
/// must get.
#[derive(Clone, Debug)]
pub struct Probe {
    pub method: Method,
    /// The URL; for a Unix socket just the path (`/`).
    pub uri: Uri,
    /// Sent over this Unix socket's connections instead of TCP.
    pub unix: Option<UnixPool>,
    pub body: Bytes,
    pub headers: Vec<(&'static str, &'static str)>,
    pub expect_status: StatusCode,
    /// The exact body expected, when it is checked.
    pub expect_body: Option<Bytes>,
}

impl Probe {
    /// `GET uri` answering `200 hello\n`.
    pub fn hello(uri: Uri) -> Probe {
        Probe {
            method: Method::GET,
            uri,
            unix: None,
            body: Bytes::new(),
            headers: Vec::new(),
            expect_status: StatusCode::OK,
            expect_body: Some(Bytes::from_static(HELLO)),
        }
    }

    /// `POST uri` with `body` of `content_type`, answering `status`.
    pub fn post(uri: Uri, content_type: &'static str, body: Bytes, status: StatusCode) -> Probe {
        Probe {
            method: Method::POST,
            uri,
            unix: None,
            body,
            headers: vec![("content-type", content_type)],
            expect_status: status,
            expect_body: None,
        }
    }
}

impl Probe {
    /// An error unless the answer is the one the probe expects.
    fn check(&self, status: StatusCode, body: &[u8]) -> Result<()> {
        let body_ok = self.expect_body.as_ref().is_none_or(|b| *b == body);
        if status != self.expect_status || !body_ok {
            let want = self
                .expect_body
                .as_ref()
                .map_or("any body".to_string(), |b| {
                    format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(100)]))
                });
            bail!(
                "{} {}: expected {} {want}, got {status} {:?}",
                self.method,
                self.target(),
                self.expect_status,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok(())
    }

    /// `GET /` over the Unix socket at `socket`, answering `200 hello\n`.
    pub fn hello_unix(socket: PathBuf) -> Probe {
        Probe {
            unix: Some(UnixPool::new(socket)),
            ..Probe::hello(Uri::from_static("/"))
        }
    }

    /// Where the request goes, for messages: the URL, or `unix:<socket><path>`.
    pub fn target(&self) -> String {
        match &self.unix {
            Some(pool) => format!("unix:{}{}", pool.socket.display(), self.uri),
            None => self.uri.to_string(),
        }
    }
}

/// HTTP/1.1 keep-alive connections to one Unix socket, pooled as the legacy
/// client pools TCP ones: a request takes an idle open connection or opens a new
/// one (hyper's `client::conn::http1` over a tokio `UnixStream`, the connection
/// driven by a spawned task, hyper's default HTTP/1 settings), and gives it back
/// once the whole body is in. Clones share the pool.
#[derive(Clone, Debug)]
pub struct UnixPool {
    socket: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl UnixPool {
    pub fn new(socket: PathBuf) -> UnixPool {
        UnixPool {
            socket: Arc::new(socket),
            idle: Arc::default(),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<Full<Bytes>>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::UnixStream::connect(&*self.socket)
            .await
            .with_context(|| format!("cannot connect to {}", self.socket.display()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One request on a pooled connection; answers the status and the whole body.
    /// A request an idle connection could not send (the peer had closed it) is
    /// sent again on a new connection, as the legacy client retries it.
    async fn request(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        let reused = loop {
            let Some(sender) = self.idle().pop() else {
                break None;
            };
            if !sender.is_closed() {
                break Some(sender);
            }
        };
        let (mut sender, resp) = match reused {
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => (sender, resp),
                Err(mut e) => match e.take_message() {
                    Some(req) => {
                        let mut sender = self.connect().await?;
                        let resp = sender.send_request(req).await?;
                        (sender, resp)
                    }
                    None => return Err(e.into_error().into()),
                },
            },
            None => {
                let mut sender = self.connect().await?;
                let resp = sender.send_request(req).await?;
                (sender, resp)
            }
        };
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        // Ready again once the response is read: back to the pool.
        if sender.ready().await.is_ok() {
            self.idle().push(sender);
        }
        Ok((status, body))
    }
}

/// `total` requests spread over `clients` concurrent clients, each sending its
/// share one after another on a keep-alive connection of its own (`LoadConn`);
/// answers every latency and the wall time.
pub async fn run_batch(
    http: &Http,
    probe: &Probe,
    clients: usize,
    total: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let request = Arc::new(http.request_bytes(probe)?);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let n = total / clients + usize::from(c < total % clients);
        let probe = probe.clone();
        let request = request.clone();
        set.spawn(async move {
            let mut v = Vec::with_capacity(n);
            let mut conn = LoadConn::new(&probe, request);
            for _ in 0..n {
                v.push(conn.timed().await?);
            }
            Ok::<_, anyhow::Error>(v)
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    Ok((all, start.elapsed()))
}

/// The stream of a `LoadConn`: TCP (with TCP_NODELAY) or a Unix socket.
enum LoadStream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// One client of a measured load: a keep-alive HTTP/1.1 connection that sends
/// the probe's request, written out once (`Http::request_bytes`), and reads
/// each answer with `httparse` (a length, chunks, or up to the close). It does
/// what a load generator such as wrk does and nothing more, because on two
/// cores the client's CPU is taken from the server and the instance it
/// measures: in an A/B on this machine (nodejs hello, 32 clients) hyper's
/// pooled client took 16-26 us of CPU per request, this 10-16. A connection
/// the server closes is opened again.
struct LoadConn {
    probe: Probe,
    request: Arc<Vec<u8>>,
    stream: Option<LoadStream>,
    buf: Vec<u8>,
}

impl LoadConn {
    fn new(probe: &Probe, request: Arc<Vec<u8>>) -> LoadConn {
        LoadConn {
            probe: probe.clone(),
            request,
            stream: None,
            buf: Vec::with_capacity(8192),
        }
    }

    async fn connect(&self) -> Result<LoadStream> {
        if let Some(pool) = &self.probe.unix {
            let s = tokio::net::UnixStream::connect(&*pool.socket)
                .await
                .with_context(|| format!("cannot connect to {}", pool.socket.display()))?;
            return Ok(LoadStream::Unix(s));
        }
        let uri = &self.probe.uri;
        let host = uri.host().context("the probe's URL has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let s = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        s.set_nodelay(true)?;
        Ok(LoadStream::Tcp(s))
    }

    /// One measured request: the time from sending until the whole body is in.
    /// An answer the probe does not expect is an error.
    async fn timed(&mut self) -> Result<Duration> {
        let fresh = self.stream.is_none();
        if fresh {
            self.stream = Some(self.connect().await?);
        }
        let start = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange()).await;
        let elapsed = start.elapsed();
        let (method, uri) = (&self.probe.method, self.probe.target());
        let (status, body, keep) = match answer {
            Err(_) => bail!("{method} {uri}: no answer within {REQUEST_TIMEOUT:?}"),
            // A kept connection the server had closed (no answer, or a reset):
            // once more on a new one, as hyper's pool does.
            Ok(Err(e)) if !fresh && e.downcast_ref::<Closed>().is_some() => {
                self.stream = None;
                self.buf.clear();
                return Box::pin(self.timed()).await;
            }
            Ok(r) => r.with_context(|| format!("{method} {uri}"))?,
        };
        if !keep {
            self.stream = None;
            self.buf.clear();
        }
        self.probe.check(status, &body)?;
        Ok(elapsed)
    }

    /// Writes the request and reads the answer: status, body, and whether the
    /// connection stays open.
    async fn exchange(&mut self) -> Result<(StatusCode, Vec<u8>, bool)> {
        use tokio::io::AsyncWriteExt;
        let stream = self.stream.as_mut().expect("connected");
        let written = match stream {
            LoadStream::Tcp(s) => s.write_all(&self.request).await,
            LoadStream::Unix(s) => s.write_all(&self.request).await,
        };
        written.map_err(closed_or)?;
        // The head.
        let (status, head_len, framing, keep) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = resp.parse(&self.buf)? {
                let status = StatusCode::from_u16(resp.code.unwrap_or(0))?;
                let mut framing = Framing::UntilClose;
                let mut keep = resp.version == Some(1);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        framing = Framing::Length(std::str::from_utf8(h.value)?.trim().parse()?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                        && h.value.eq_ignore_ascii_case(b"chunked")
                    {
                        framing = Framing::Chunked;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep = !h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                if matches!(status.as_u16(), 204 | 304) || self.probe.method == Method::HEAD {
                    framing = Framing::Length(0);
                }
                break (status, n, framing, keep);
            }
            self.fill(true).await?;
        };
        self.buf.drain(..head_len);
        let body = match framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    self.fill(false).await?;
                }
                self.buf.drain(..n).collect()
            }
            Framing::Chunked => {
                let mut body = Vec::new();
                loop {
                    match httparse::parse_chunk_size(&self.buf)
                        .map_err(|_| anyhow!("a bad chunk size"))?
                    {
                        httparse::Status::Complete((at, 0)) => {
                            // The last chunk, then (no trailers) an empty line.
                            while self.buf.len() < at + 2 {
                                self.fill(false).await?;
                            }
                            self.buf.drain(..at + 2);
                            break body;
                        }
                        httparse::Status::Complete((at, size)) => {
                            let end = at + usize::try_from(size)? + 2;
                            while self.buf.len() < end {
                                self.fill(false).await?;
                            }
                            body.extend_from_slice(&self.buf[at..end - 2]);
                            self.buf.drain(..end);
                        }
                        httparse::Status::Partial => self.fill(false).await?,
                    }
                }
            }
            Framing::UntilClose => {
                while self.fill_or_eof().await? {}
                std::mem::take(&mut self.buf)
            }
        };
        Ok((
            status,
            body,
            keep && !matches!(framing, Framing::UntilClose),
        ))
    }

    /// Reads more into the buffer; the end of the stream is an error
    /// (`Closed` when nothing of the answer had come yet, as is a reset).
    async fn fill(&mut self, head: bool) -> Result<()> {
        let nothing_yet = head && self.buf.is_empty();
        match self.fill_or_eof().await {
            Ok(true) => Ok(()),
            Ok(false) if nothing_yet => Err(Closed.into()),
            Ok(false) => bail!("the connection closed in the middle of an answer"),
            Err(e) if nothing_yet => Err(closed_or(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads more into the buffer; false at the end of the stream.
    async fn fill_or_eof(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        self.buf.reserve(4096);
        let n = match self.stream.as_mut().expect("connected") {
            LoadStream::Tcp(s) => s.read_buf(&mut self.buf).await?,
            LoadStream::Unix(s) => s.read_buf(&mut self.buf).await?,
        };
        Ok(n > 0)
    }
}

/// `Closed` for a connection the peer reset or shut, else the error itself.
fn closed_or(e: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted => Closed.into(),
        _ => e.into(),
    }
}

/// How an answer's body ends.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The server closed a kept connection before any of the answer came.
#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection was closed before an answer")
    }
}

impl std::error::Error for Closed {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback server that reads one request head per answer and writes the
    /// next of `answers`; it closes the connection after each answer when
    /// `close_after_each` (without saying so), else after the last.
    async fn serve(
        answers: Vec<&'static [u8]>,
        close_after_each: bool,
    ) -> (Uri, Arc<Mutex<usize>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let connections = Arc::new(Mutex::new(0));
        let seen = connections.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                *seen.lock().unwrap() += 1;
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        break;
                    };
                    buf.drain(..end + 4);
                    let Some(answer) = answers.next() else { return };
                    s.write_all(answer).await.unwrap();
                    if close_after_each {
                        break;
                    }
                }
            }
        });
        (uri, connections)
    }

    fn probe(uri: Uri, body: &'static [u8]) -> (Probe, Arc<Vec<u8>>) {
        let mut p = Probe::hello(uri);
        p.expect_body = Some(Bytes::from_static(body));
        let http = Http::new("http://127.0.0.1:1", "t").unwrap();
        let request = Arc::new(http.request_bytes(&p).unwrap());
        (p, request)
    }

    #[tokio::test]
    async fn reads_answers_by_length_and_by_chunks_on_one_connection() {
        let (uri, connections) = serve(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n3\r\nlo\n\r\n0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n",
            ],
            false,
        )
        .await;
        let (p, request) = probe(uri, b"hello\n");
        let mut conn = LoadConn::new(&p, request);
        for _ in 0..3 {
            conn.timed().await.unwrap();
        }
        assert_eq!(*connections.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_opened_again() {
        let (uri, connections) = serve(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n"; 2],
            true,
        )
        .await;
        let (p, request) = probe(uri, b"hello\n");
        let mut conn = LoadConn::new(&p, request);
        conn.timed().await.unwrap();
        conn.timed().await.unwrap();
        assert_eq!(*connections.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn an_unexpected_answer_is_an_error() {
        let (uri, _) = serve(
            vec![b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops"],
            false,
        )
        .await;
        let (p, request) = probe(uri, b"hello\n");
        let err = LoadConn::new(&p, request).timed().await.unwrap_err();
        assert!(err.to_string().contains("got 500"), "{err:#}");
    }
}
