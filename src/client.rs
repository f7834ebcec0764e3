//! The CLI's HTTP client for the API listener: JSON in and out, and the API's
//! `{"error": {"code", "message"}}` turned into one clear line.

use anyhow::{anyhow, bail, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The API answered 404; its message says what was not found.
#[derive(Debug, thiserror::Error)]
#[error("{0} (404)")]
pub struct NotFound(String);

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the Fusion API at {} (is `fusion server` running? set FUSION_URL)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.trim().to_string());
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(anyhow::Error::new(NotFound(message)));
        }
        bail!("{message} ({})", status.as_u16())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self
            .send(self.http.get(self.url(path)))
            .await?
            .json()
            .await?)
    }

    /// Like `get`, but a 404 is `None` rather than an error.
    pub async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.send(self.http.get(self.url(path))).await {
            Ok(resp) => Ok(Some(resp.json().await?)),
            Err(e) if e.downcast_ref::<NotFound>().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        Ok(self
            .send(self.http.post(self.url(path)).json(body))
            .await?
            .json()
            .await?)
    }

    pub async fn put_json<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        Ok(self
            .send(self.http.put(self.url(path)).json(body))
            .await?
            .json()
            .await?)
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send(self.http.delete(self.url(path))).await?;
        Ok(())
    }

    /// Uploads a code file (or zip archive) and returns its package reference.
    pub async fn upload(&self, path: &std::path::Path) -> Result<Value> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| anyhow!("cannot read code file {}: {e}", path.display()))?;
        let filename = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("code path {} has no file name", path.display()))?;
        let url = self.url("/v1/packages");
        let req = self
            .http
            .post(url)
            .query(&[("filename", filename)])
            .body(bytes);
        Ok(self.send(req).await?.json().await?)
    }
}
