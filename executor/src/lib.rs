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
pub const IDEMPOTENCY_HEADER: &str = "X-Fusion-Idempotency-Key";

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
    #[error("function call timed out after {0:?}")]
    Timeout(Duration),
    #[error("no capacity: {0}")]
    Overloaded(String),
    #[error("the function's instance failed: {0}")]
    Instance(String),
    #[error("call cancelled")]
    Cancelled,
}

impl CallError {
    /// Whether trying again may succeed: timeouts, overload and instance failures are
    /// transient; an unknown function or a cancellation is not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallError::Timeout(_) | CallError::Overloaded(_) | CallError::Instance(_)
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

/// Whether a completed call's status means the task failed in a way worth retrying:
/// 5xx and 429 are retried, 4xx never.
pub fn status_is_retryable(status: u16) -> bool {
    status >= 500 || status == 429
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
        assert!(CallError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!CallError::UnknownFunction("x".into()).is_retryable());
    }
}
