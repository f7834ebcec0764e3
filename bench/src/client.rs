//! One HTTP/1.1 keep-alive client (hyper-util's legacy client, TCP_NODELAY) for
//! everything: the API calls that set up the benchmark (with the server's bearer
//! token) and the measured requests, routed and direct alike, so both paths pay
//! the same client costs. Instances reached over a Unix socket (the container
//! backend's) get the same HTTP/1.1 connections from a pool of the same shape
//! (`UnixPool`).

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
        let body_ok = probe.expect_body.as_ref().is_none_or(|b| *b == body);
        if status != probe.expect_status || !body_ok {
            let want = probe
                .expect_body
                .as_ref()
                .map_or("any body".to_string(), |b| {
                    format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(100)]))
                });
            bail!(
                "{method} {uri}: expected {} {want}, got {status} {:?}",
                probe.expect_status,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok((elapsed, body))
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
/// share one after another; answers every latency and the wall time.
pub async fn run_batch(
    http: &Http,
    probe: &Probe,
    clients: usize,
    total: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let n = total / clients + usize::from(c < total % clients);
        let http = http.clone();
        let probe = probe.clone();
        set.spawn(async move {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(http.timed(&probe).await?);
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
