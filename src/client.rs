//! The CLI's HTTP client for the API listener: the bearer token on every call,
//! JSON in and out, and the API's `{"error": {"code", "message"}}` (or a 401)
//! turned into one clear line.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The API answered 404; its message says what was not found.
#[derive(Debug, thiserror::Error)]
#[error("{0} (404)")]
pub struct NotFound(String);

/// No connection to the API could be made (a server down, or restarting).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(String);

/// The API answered another error status; `status` says whose mistake it was
/// (4xx the request's, 5xx the server's).
#[derive(Debug, thiserror::Error)]
#[error("{message} ({status})")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// A document's errors, each `{code, message, line, column}` (empty
    /// for any other error).
    pub details: Vec<Value>,
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// What went wrong with TLS under a request that failed, said for the user
/// (rustls's own text names enum variants): a certificate not trusted, for
/// another name, expired or a CA's, or the two ends disagreeing on TLS.
fn tls_trouble(e: &reqwest::Error, base: &str) -> Option<String> {
    use tokio_rustls::rustls::{CertificateError as C, Error as TlsError, InvalidMessage};
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // rustls's error reaches here inside I/O errors, whose `source`
        // skips what they wrap.
        let mut inner: Option<&(dyn std::error::Error + 'static)> = Some(s);
        while let Some(io) = inner.and_then(|i| i.downcast_ref::<std::io::Error>()) {
            inner = io.get_ref().map(|i| i as _);
        }
        if let Some(tls) = inner.and_then(|i| i.downcast_ref::<TlsError>()) {
            return Some(match tls {
                TlsError::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    format!("its certificate is not for the host in {base} ({tls}): use a name the certificate has, or make one with that name in its subjectAltName")
                }
                TlsError::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    "its certificate has expired".to_string()
                }
                TlsError::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                    "its certificate is not valid yet (is this machine's clock right?)".to_string()
                }
                TlsError::InvalidCertificate(C::Other(other))
                    if format!("{other:?}").contains("CaUsedAsEndEntity") =>
                {
                    "its certificate is a CA's (basicConstraints CA:TRUE), which TLS clients refuse as a server's own: make it with basicConstraints=critical,CA:FALSE (the README shows how)".to_string()
                }
                // No issuer it trusts: webpki says so in several ways.
                TlsError::InvalidCertificate(
                    C::UnknownIssuer
                    | C::BadSignature
                    | C::UnsupportedSignatureAlgorithmContext { .. }
                    | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. },
                ) => "its certificate is not signed by one this CLI trusts: give the certificate that signed it (a self-signed one itself) with --cacert or FUSION_CA_CERT".to_string(),
                TlsError::InvalidCertificate(_) => format!(
                    "its certificate is not trusted ({tls}): give the certificate that signed it (a self-signed one itself) with --cacert or FUSION_CA_CERT"
                ),
                TlsError::InvalidMessage(InvalidMessage::InvalidContentType) => {
                    "it does not answer TLS: is its address http://, not https://?".to_string()
                }
                other => format!("TLS failed: {other}"),
            });
        }
        // TLS bytes where an HTTP answer was expected.
        if base.starts_with("http://") && s.to_string().contains("invalid HTTP version") {
            return Some("it answers TLS: use its https:// address".to_string());
        }
        source = s.source();
    }
    None
}

impl Client {
    /// A client of the API at `base`, sending `token` as the bearer token and
    /// trusting, beside the system's roots, the PEM certificates in `ca_cert`.
    pub fn new(base: &str, token: Option<String>, ca_cert: Option<&Path>) -> Result<Client> {
        match reqwest::Url::parse(base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => bail!(
                "the API address {base:?} (--server or FUSION_URL) is not an http:// or https:// URL, such as http://127.0.0.1:8889"
            ),
        }
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow!("cannot read the CA certificate {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow!("cannot read the CA certificate {}: {e}", path.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http: builder
                .build()
                .map_err(|e| anyhow!("cannot set up the HTTP client: {e}"))?,
            token,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` on the API, carrying the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            // The innermost causes say what went wrong (refused, a certificate).
            let mut cause = String::new();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            if let Some(why) = tls_trouble(&e, &self.base) {
                anyhow!("cannot talk to the Fusion API at {}: {why}", self.base)
            } else if e.is_connect() {
                anyhow::Error::new(Unreachable(format!(
                    "cannot reach the Fusion API at {} (is `fusion server` running? set FUSION_URL): {cause}",
                    self.base
                )))
            } else if e.is_request() && !e.is_builder() {
                // The connection broke under the request (a server stopping).
                anyhow::Error::new(Unreachable(format!(
                    "request to {} failed: {e}: {cause}",
                    self.base
                )))
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let what = if self.token.is_some() {
                "refused the token"
            } else {
                "needs a token"
            };
            bail!(
                "the Fusion API at {} {what} (401): set FUSION_TOKEN, or FUSION_DATA_DIR to the server's data dir (its `token` file; default ./.fusion)",
                self.base
            );
        }
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text).ok();
        let mut message = body
            .as_ref()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.trim().to_string());
        // A workflow run that failed: where to look at it.
        if let Some(id) = body
            .as_ref()
            .and_then(|v| v.pointer("/error/run_id"))
            .and_then(Value::as_str)
        {
            message.push_str(&format!(" (run {id}: `fusion run get {id}`)"));
        }
        // The router's own 404: the URL names the router, not the API.
        if body
            .as_ref()
            .and_then(|v| v.pointer("/error/code"))
            .is_some_and(|c| c == "route_not_found")
        {
            bail!(
                "{} is Fusion's router, not its API ({message}): set FUSION_URL to the API listener (`fusion up` prints it; default http://127.0.0.1:8889)",
                self.base
            );
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(anyhow::Error::new(NotFound(message)));
        }
        let details = body
            .as_ref()
            .and_then(|v| v.pointer("/error/details"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Err(anyhow::Error::new(ApiError {
            status: status.as_u16(),
            message,
            details,
        }))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self
            .send(self.request(reqwest::Method::GET, path))
            .await?
            .json()
            .await?)
    }

    /// Like `get`, but a 404 is `None` rather than an error.
    pub async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.send(self.request(reqwest::Method::GET, path)).await {
            Ok(resp) => Ok(Some(resp.json().await?)),
            Err(e) if e.downcast_ref::<NotFound>().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        Ok(self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?
            .json()
            .await?)
    }

    pub async fn put_json<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        Ok(self
            .send(self.request(reqwest::Method::PUT, path).json(body))
            .await?
            .json()
            .await?)
    }

    /// Deletes `path`; what the server warns of (workflows that still run
    /// what went) goes to stderr as `warning: ...`.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let resp = self
            .send(self.request(reqwest::Method::DELETE, path))
            .await?;
        if resp.status() != reqwest::StatusCode::NO_CONTENT {
            let answer: Value = resp.json().await.unwrap_or_default();
            for w in answer["warnings"].as_array().into_iter().flatten() {
                eprintln!(
                    "warning: {} ({})",
                    w["message"].as_str().unwrap_or_default(),
                    w["code"].as_str().unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// Uploads code (a zip archive, or one file called `filename`) and returns
    /// its content-addressed reference.
    pub async fn upload_bytes(&self, filename: &str, bytes: Vec<u8>) -> Result<Value> {
        let req = self
            .request(reqwest::Method::POST, "/v1/archives")
            .query(&[("filename", filename)])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        Ok(self.send(req).await?.json().await?)
    }
}
