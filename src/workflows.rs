//! The transport of the workflow engine's `http` built-in.

use std::collections::BTreeMap;

use engine::builtins::HttpRequest;
use engine::driver::HttpTransport;
use engine::store::BoxFuture;
use executor::FunctionResponse;

/// Sends the `http` built-in's requests with reqwest.
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    pub fn new() -> ReqwestTransport {
        // No limit of its own: the task's `timeout` (or the engine's
        // `HTTP_TIMEOUT`) bounds each call, and says so.
        ReqwestTransport {
            client: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }
}

/// What went wrong with a request, to its cause (reqwest's own text, "error
/// sending request", hides "Connection refused").
fn said(url: &str, e: &reqwest::Error) -> String {
    let mut text = match e.is_connect() {
        true => format!("cannot connect to {url}"),
        false => format!("{url}: {e}"),
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

impl HttpTransport for ReqwestTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<Result<FunctionResponse, String>> {
        let client = self.client.clone();
        Box::pin(async move {
            let method = reqwest::Method::from_bytes(request.method.to_uppercase().as_bytes())
                .map_err(|_| format!("bad HTTP method {:?}", request.method))?;
            let mut req = client.request(method, &request.url);
            for (k, v) in request
                .headers
                .iter()
                .filter(|(k, _)| !executor::is_body_framing(k))
            {
                req = req.header(k, v);
            }
            req = match request.body {
                None | Some(serde_json::Value::Null) => req,
                Some(serde_json::Value::String(s)) => req.body(s),
                Some(other) => match engine::binary::of(&other) {
                    Some(bytes) => req.body(bytes),
                    None => req.json(&other),
                },
            };
            let resp = req.send().await.map_err(|e| said(&request.url, &e))?;
            let status = resp.status().as_u16();
            let headers: BTreeMap<String, String> = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            Ok(FunctionResponse {
                status,
                headers,
                body,
            })
        })
    }
}
