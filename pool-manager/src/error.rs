//! The pool manager's error type. Every variant a user can cause maps to an HTTP
//! status and a stable `code`, rendered as `{"error": {"code", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// Valid, but not something the backend in use can do.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    TooLarge(String),
    /// A JSON or YAML document nested past the limit, refused before parsing.
    #[error("{0}")]
    TooDeep(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Upstream(String),
    /// An instance's answer whose head the router does not take (more header
    /// fields or bytes than it reads); the instance lives on.
    #[error("{0}")]
    ResponseHeadTooLarge(String),
    /// A function's code the runtime could not load. `detail` (the
    /// runtime's own words: an exception's message may hold a secret) is for
    /// the function's log and its owner (`fusion fn test`); a caller of the
    /// router gets `public`.
    #[error("{public}")]
    LoadFailed { public: String, detail: String },
    #[error("{0}")]
    OutOfMemory(String),
    #[error("{0}")]
    Unavailable(String),
    /// The server is stopping: the call was not made, or was cut off at the
    /// end of the shutdown grace.
    #[error("{0}")]
    ShuttingDown(String),
    /// A function's package failed to build: calls fail until it is rebuilt.
    #[error("{0}")]
    BuildFailed(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code users and scripts can match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::Conflict(_) => "conflict",
            Error::Invalid(_) => "invalid",
            Error::Unsupported(_) => "unsupported_by_backend",
            Error::TooLarge(_) => "payload_too_large",
            Error::TooDeep(_) => "document_too_deep",
            Error::Overloaded(_) => "too_many_requests",
            Error::Timeout(_) => "function_timeout",
            Error::Upstream(_) | Error::LoadFailed { .. } => "instance_failed",
            Error::ResponseHeadTooLarge(_) => "response_head_too_large",
            Error::OutOfMemory(_) => "out_of_memory",
            Error::Unavailable(_) => "unavailable",
            Error::ShuttingDown(_) => "shutting_down",
            Error::BuildFailed(_) => "package_build_failed",
            Error::Storage(_) => "storage",
            Error::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::AlreadyExists { .. } | Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Invalid(_) | Error::TooDeep(_) | Error::Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Upstream(_)
            | Error::LoadFailed { .. }
            | Error::OutOfMemory(_)
            | Error::ResponseHeadTooLarge(_) => StatusCode::BAD_GATEWAY,
            Error::Unavailable(_) | Error::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            // The call depends on a build that failed; retrying does not help.
            Error::BuildFailed(_) => StatusCode::FAILED_DEPENDENCY,
            Error::Storage(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(sled_error_text(&e))
    }
}

/// A sled error as a person reads it: its I/O errors as the system says them
/// (`No space left on device (os error 28)`), not as sled's `Os { code: 28,
/// kind: StorageFull, .. }`.
pub fn sled_error_text(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => {
            // sled wraps some in text of their debug form (`Os { code: 28,
            // kind: StorageFull, .. }`): said as the system says it.
            let text = io.to_string();
            let code = text
                .split("Os { code: ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<i32>().ok());
            match code {
                Some(code) if io.raw_os_error().is_none() => {
                    format!("I/O error: {}", std::io::Error::from_raw_os_error(code))
                }
                _ => format!("I/O error: {text}"),
            }
        }
        other => other.to_string(),
    }
}

/// Renders any error as the JSON error body every Fusion endpoint uses.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        // The server's own failures reach its log too, not only the caller.
        if matches!(self, Error::Storage(_) | Error::Internal(_)) {
            tracing::error!(code = self.code(), error = %self, "answered 500");
        }
        let mut resp = error_response(self.status(), self.code(), &self.to_string());
        if matches!(self, Error::Overloaded(_)) {
            // A client's backoff reads it (the load is short-lived: a second).
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's I/O errors read as the system says them, also those it wraps
    /// in their debug form.
    #[test]
    fn sled_io_errors_read_as_the_system_says_them() {
        let wrapped = sled::Error::Io(std::io::Error::other(
            "Os { code: 28, kind: StorageFull, message: \"No space left on device\" }",
        ));
        assert_eq!(
            sled_error_text(&wrapped),
            "I/O error: No space left on device (os error 28)"
        );
        let plain = sled::Error::Io(std::io::Error::from_raw_os_error(28));
        assert_eq!(
            sled_error_text(&plain),
            "I/O error: No space left on device (os error 28)"
        );
    }

    /// Every code users can get is explained in docs/error-codes.md.
    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../docs/error-codes.md");
        let s = || String::new();
        let all = [
            Error::NotFound {
                kind: "function",
                name: s(),
            },
            Error::AlreadyExists {
                kind: "function",
                name: s(),
            },
            Error::Conflict(s()),
            Error::Invalid(s()),
            Error::Unsupported(s()),
            Error::TooLarge(s()),
            Error::Overloaded(s()),
            Error::Timeout(s()),
            Error::Upstream(s()),
            Error::ResponseHeadTooLarge(s()),
            Error::OutOfMemory(s()),
            Error::Unavailable(s()),
            Error::ShuttingDown(s()),
            Error::BuildFailed(s()),
            Error::Storage(s()),
            Error::Internal(s()),
        ];
        for e in all {
            let code = format!("`{}`", e.code());
            assert!(doc.contains(&code), "{code} is not in docs/error-codes.md");
        }
    }
}
