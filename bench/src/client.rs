//! One HTTP/1.1 keep-alive client (hyper-util's legacy client, TCP_NODELAY) for
//! everything: the API calls that set up the benchmark and the measured requests,
//! routed and direct alike, so both paths pay the same client costs.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Expected body of every hello function.
pub const HELLO: &[u8] = b"hello\n";

/// Longest a single request may take before the run is declared broken.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Http { client }
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
        let req = Request::get(uri.clone()).body(Full::new(Bytes::new()))?;
        let start = Instant::now();
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("GET {uri}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("GET {uri}"))?;
        let elapsed = start.elapsed();
        if status != StatusCode::OK || body != HELLO {
            bail!(
                "GET {uri}: expected 200 {:?}, got {status} {:?}",
                String::from_utf8_lossy(HELLO),
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok(elapsed)
    }
}
