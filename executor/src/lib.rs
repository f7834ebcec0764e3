//! The executor runs one side-effecting step of a workflow once: a call to a
//! function (through the embedded pool manager, or a remote router over HTTP).
//! It applies the step's timeout and classifies the outcome so the engine can
//! decide whether a failure is worth retrying.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The header that carries a task attempt's idempotency key to the function.
pub const IDEMPOTENCY_HEADER: &str = pool_manager::router::IDEMPOTENCY_HEADER;

/// One HTTP call of a function, as the engine wants it made.
#[derive(Debug, Clone, Default)]
pub struct FunctionCall {
    pub function: String,
    pub method: String,
    /// Path below the function root, starting with `/` (usually `/`).
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Sent as `X-Fusion-Idempotency-Key`; stable across re-dispatches of one attempt.
    pub idempotency_key: Option<String>,
    pub timeout: Option<Duration>,
}

/// The function's answer. A non-2xx status is still a response: the caller decides.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FunctionResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    #[serde(skip)]
    pub body: Bytes,
}

/// Why a call produced no usable response.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CallError {
    #[error("function {0:?} does not exist")]
    UnknownFunction(String),
    /// No answer in time; the message says after how long, or whose limit
    /// passed (a task's, the function's own).
    #[error("{0}")]
    Timeout(String),
    #[error("no capacity: {0}")]
    Overloaded(String),
    #[error("the function's instance failed: {0}")]
    Instance(String),
    /// An `http` task's request could not be made or got no answer.
    #[error("the request failed: {0}")]
    Http(String),
    #[error("call cancelled")]
    Cancelled,
    /// A task's input or a function's answer past the size limit: the same
    /// again would be refused again.
    #[error("{0}")]
    TooLarge(String),
}

impl CallError {
    /// A call given up after `limit` (a task's timeout).
    pub fn after(limit: Duration) -> CallError {
        CallError::Timeout(format!("function call timed out after {limit:?}"))
    }

    /// Whether trying again may succeed: timeouts, overload and instance failures are
    /// transient; an unknown function or a cancellation is not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallError::Timeout(_)
                | CallError::Overloaded(_)
                | CallError::Instance(_)
                | CallError::Http(_)
        )
    }
}

pub type CallFuture = Pin<Box<dyn Future<Output = Result<FunctionResponse, CallError>> + Send>>;

/// Something that can call a function: the embedded pool manager, or a router URL.
pub trait Invoker: Send + Sync + 'static {
    fn call(&self, call: FunctionCall) -> CallFuture;
    /// Whether a function of that name exists (used by workflow validation).
    fn function_exists(&self, name: &str) -> bool;
}

pub type SharedInvoker = Arc<dyn Invoker>;

/// Whether a header says how a body is framed: never sent as a task gives
/// it, as the body sent is the task's own (a task forwarding the caller's
/// headers would send the length of the caller's body, and cut or hang its
/// own); the body's own length is said instead.
pub fn is_body_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

/// Whether a completed call's status means the task failed in a way worth retrying:
/// 5xx and 429 are retried, 4xx never.
pub fn status_is_retryable(status: u16) -> bool {
    status >= 500 || status == 429
}

/// Calls functions through the embedded pool manager, the way the router does.
pub struct PoolInvoker {
    pool: pool_manager::PoolManager,
}

impl PoolInvoker {
    pub fn new(pool: pool_manager::PoolManager) -> PoolInvoker {
        PoolInvoker { pool }
    }
}

impl Invoker for PoolInvoker {
    fn call(&self, call: FunctionCall) -> CallFuture {
        let pool = self.pool.clone();
        Box::pin(async move {
            let timeout = call.timeout;
            let work = invoke_pool(pool, call);
            match timeout {
                Some(limit) => tokio::time::timeout(limit, work)
                    .await
                    .unwrap_or(Err(CallError::after(limit))),
                None => work.await,
            }
        })
    }

    fn function_exists(&self, name: &str) -> bool {
        self.pool.function_exists(name)
    }
}

async fn invoke_pool(
    pool: pool_manager::PoolManager,
    call: FunctionCall,
) -> Result<FunctionResponse, CallError> {
    use http_body_util::BodyExt;
    use pool_manager::Error;

    let mut path = if call.path.starts_with('/') {
        call.path.clone()
    } else {
        format!("/{}", call.path)
    };
    if !call.query.is_empty() {
        let q: Vec<String> = call
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        path = format!("{path}?{}", q.join("&"));
    }
    let method = if call.method.is_empty() {
        "POST"
    } else {
        call.method.as_str()
    };
    let mut req = http::Request::builder().method(method).uri(&path);
    for (k, v) in call.headers.iter().filter(|(k, _)| !is_body_framing(k)) {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(key) = &call.idempotency_key {
        req = req.header(IDEMPOTENCY_HEADER, key.as_str());
    }
    let req = req
        .body(axum_body(call.body.clone()))
        .map_err(|e| CallError::Instance(format!("bad request for {}: {e}", call.function)))?;
    let path_only = call.path.clone();
    let path_only = if path_only.is_empty() {
        "/".to_string()
    } else {
        path_only
    };
    // Fusion's own limit on what a function is sent: said before any
    // instance is taken or waited for.
    let limit = pool.config().body_limit;
    if call.body.len() as u64 > limit {
        return Err(CallError::TooLarge(format!(
            "the task's input is too large to send to function {:?}: {} bytes, more than the limit of {limit} (--body-limit)",
            call.function,
            call.body.len()
        )));
    }
    // A function at its max scale is waited for, as in a queue: a workflow's
    // step is not a caller to turn away after the router's lease wait (a
    // burst of runs failed for good with "no capacity" where each would have
    // had its turn a moment later). Within the task's timeout, which bounds
    // the wait and the call together, else the function's own timeout (the
    // call then has its own).
    let forwarded = pool_manager::router::try_forward_within(
        &pool,
        &call.function,
        req,
        &path_only,
        &[],
        call.timeout,
    )
    .await;
    let resp = match forwarded {
        Ok(resp) => resp,
        // A failed package build is answered as the router answers it (424): a
        // permanent failure until the package is fixed, not an instance's.
        Err(e @ Error::BuildFailed(_)) => {
            pool_manager::error::error_response(e.status(), e.code(), &e.to_string())
        }
        Err(e) => {
            return Err(match e {
                Error::NotFound { .. } => CallError::UnknownFunction(call.function.clone()),
                // The function's own timeout: the pool manager's message names it.
                Error::Timeout(m) => CallError::Timeout(format!("function call timed out: {m}")),
                Error::Overloaded(m) => CallError::Overloaded(m),
                // Fusion's own limit, not the instance's doing.
                Error::TooLarge(m) => CallError::TooLarge(format!(
                    "the task's input is too large to send to function {:?}: {m} (--body-limit)",
                    call.function
                )),
                // The function's answer, which it would send again.
                Error::ResponseHeadTooLarge(m) => CallError::TooLarge(m),
                other => CallError::Instance(other.to_string()),
            });
        }
    };
    let status = resp.status().as_u16();
    let mut headers = BTreeMap::new();
    for (k, v) in resp.headers() {
        if let Ok(v) = v.to_str() {
            headers.insert(k.as_str().to_string(), v.to_string());
        }
    }
    // A task's output is held by the run and written with it: an answer
    // larger than what a function may be sent is refused, as the next task
    // could not be sent it anyway.
    let body = http_body_util::Limited::new(resp.into_body(), usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
        .map_err(|e| {
            if pool_manager::router::caused_by_limit(e.as_ref()) {
                CallError::TooLarge(format!(
                    "the answer of function {:?} is larger than {limit} bytes, the most a task's output may be (--body-limit)",
                    call.function
                ))
            } else {
                CallError::Instance(format!("reading the response failed: {e}"))
            }
        })?
        .to_bytes();
    Ok(FunctionResponse {
        status,
        headers,
        body,
    })
}

fn axum_body(bytes: Bytes) -> pool_manager::router::Body {
    pool_manager::router::Body::from(bytes)
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification() {
        assert!(status_is_retryable(500));
        assert!(status_is_retryable(503));
        assert!(status_is_retryable(429));
        assert!(!status_is_retryable(404));
        assert!(!status_is_retryable(400));
        assert!(CallError::after(Duration::from_secs(1)).is_retryable());
        assert!(!CallError::UnknownFunction("x".into()).is_retryable());
    }
}
