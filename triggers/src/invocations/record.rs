//! What is kept of one asynchronous invocation: the request as it will be
//! replayed (credentials redacted), its status, every attempt, and the last
//! answer (its body up to a bound).

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, Uri};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The most of an answer's body an invocation keeps.
pub const RESPONSE_BODY_LIMIT: usize = 64 * 1024;

/// Request headers whose values are never stored (lower case), as in run records.
pub use engine::api::{CREDENTIAL_HEADERS, REDACTED};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Dead,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "dead" => Status::Dead,
            _ => return None,
        })
    }

    /// Whether the invocation is still to be (or being) tried.
    pub fn is_pending(self) -> bool {
        matches!(self, Status::Queued | Status::Running)
    }
}

/// One try of the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt of its cycle (a redrive starts a new cycle).
    pub number: u32,
    pub cycle: u32,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The HTTP status the call answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Cut short by a server stop: not counted against the attempts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// The request, as each attempt replays it. Its body is kept apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub method: String,
    /// The path the function sees (below `/fission-function/<name>`, or the
    /// route's path).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// In order; credential headers hold `[redacted]`.
    pub headers: Vec<(String, String)>,
    /// A route's URL parameters, sent as `X-Fission-Params-<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, String)>,
    pub body_bytes: usize,
}

impl StoredRequest {
    pub fn new(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        path: &str,
        params: &[(String, String)],
        body_bytes: usize,
    ) -> StoredRequest {
        let headers = headers
            .iter()
            .filter(|(k, _)| {
                // The body is replayed whole, with its own length.
                !matches!(k.as_str(), "content-length" | "transfer-encoding")
            })
            .map(|(k, v)| {
                let value = if CREDENTIAL_HEADERS.contains(&k.as_str()) {
                    REDACTED.to_string()
                } else {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                };
                (k.as_str().to_string(), value)
            })
            .collect();
        StoredRequest {
            method: method.as_str().to_string(),
            path: path.to_string(),
            query: uri.query().map(str::to_string),
            headers,
            params: params.to_vec(),
            body_bytes,
        }
    }
}

/// The last answer: status, headers and the body up to [`RESPONSE_BODY_LIMIT`]
/// (as text when it is UTF-8, else in base64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body was longer than what is kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A body as JSON carries it: its text when it is UTF-8, else its base64.
pub fn text_or_base64(body: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(body) {
        Ok(t) => (Some(t.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    }
}

impl StoredResponse {
    pub fn new(status: u16, headers: &HeaderMap, body: &[u8], truncated: bool) -> StoredResponse {
        let headers = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let (text, b64) = text_or_base64(body);
        StoredResponse {
            status,
            headers,
            body: text,
            body_base64: b64,
            truncated,
        }
    }

    /// Fusion's own error message, when the answer is `{"error": {"code", "message"}}`.
    pub fn fusion_error(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(self.body.as_deref()?).ok()?;
        v.pointer("/error/code")?.as_str()?;
        Some(v.pointer("/error/message")?.as_str()?.to_string())
    }
}

/// One asynchronous invocation of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// A UUIDv7: ids sort by the time they were accepted.
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub status: Status,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// When the next attempt is due (a retry waiting out its backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
    /// 0 at first; each redrive starts the next cycle of attempts.
    #[serde(default)]
    pub cycle: u32,
    /// When the current cycle began (the invocation's max age counts from it).
    pub cycle_started_ms: u64,
    pub attempts: Vec<Attempt>,
    pub request: StoredRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<StoredResponse>,
    /// Why it failed or is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `http_4xx`, `retries_exhausted` or `expired` (Fission's dead-letter
    /// reasons), or `function_deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The invocation of its `onSuccess` / `onFailure` destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_invocation: Option<String>,
    /// Why its destination could not be called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_error: Option<String>,
}

impl Invocation {
    /// The key of its function (`name` in `default`, `namespace/name` elsewhere).
    pub fn function_key(&self) -> String {
        pool_manager::resources::qualified(&self.namespace, &self.function)
    }

    /// The caller's `X-Fission-Dedup-Key`, when it sent one: a second call of
    /// the same function with the same key is this invocation (RFC-0024's
    /// enqueue collapse).
    pub fn dedup_key(&self) -> Option<&str> {
        self.request
            .headers
            .iter()
            .find(|(k, v)| k == super::DEDUP_HEADER && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Attempts of the current cycle that count (not interrupted).
    pub fn attempts_in_cycle(&self) -> u32 {
        self.attempts
            .iter()
            .filter(|a| a.cycle == self.cycle && !a.interrupted)
            .count() as u32
    }

    /// The summary a list shows.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "namespace": self.namespace,
            "function": self.function,
            "status": self.status,
            // What counts toward the policy's limit: this cycle's attempts,
            // not one the server's stop interrupted; every attempt of every
            // cycle is `attempts_total` (and the record's list).
            "attempts": self.attempts_in_cycle(),
            "attempts_total": self.attempts.len(),
            "http_status": self.response.as_ref().map(|r| r.status),
            "created_ms": self.created_ms,
            "finished_ms": self.finished_ms,
            "error": self.error,
            "reason": self.reason,
            "destination_error": self.destination_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stored_redacted_and_lengths_dropped() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        h.insert("cookie", "a=b".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        h.insert("x-other", "visible".parse().unwrap());
        let uri: Uri = "/fission-function/f/sub?a=1".parse().unwrap();
        let r = StoredRequest::new(&Method::POST, &uri, &h, "/sub", &[], 3);
        let get = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("authorization"), Some(REDACTED));
        assert_eq!(get("cookie"), Some(REDACTED));
        assert_eq!(get("x-other"), Some("visible"));
        assert_eq!(get("content-length"), None);
        assert_eq!((r.path.as_str(), r.query.as_deref()), ("/sub", Some("a=1")));
    }

    #[test]
    fn a_binary_answer_is_kept_in_base64_and_fusion_errors_are_read() {
        let r = StoredResponse::new(200, &HeaderMap::new(), &[0xff, 0x00], false);
        assert_eq!((r.body, r.body_base64.as_deref()), (None, Some("/wA=")));
        let e = StoredResponse::new(
            504,
            &HeaderMap::new(),
            br#"{"error": {"code": "function_timeout", "message": "too slow"}}"#,
            false,
        );
        assert_eq!(e.fusion_error().as_deref(), Some("too slow"));
    }
}
