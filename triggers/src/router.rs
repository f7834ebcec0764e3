//! The router listener's dispatch: the built-in `/fission-function/<name>`
//! paths (also `/fission-function/<namespace>/<name>`, as in Fission) and the
//! HTTP triggers (routes), each sent to its function or workflow; a function
//! called asynchronously (`X-Async: true`) is queued instead.

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use pool_manager::error::error_response;
use pool_manager::resources::qualified;
use pool_manager::Error;

use crate::invocations::is_async;
use crate::invoke::Target;
use crate::Triggers;

pub const FUNCTION_PREFIX: &str = "/fission-function/";

/// Answers one request on the router listener.
pub async fn route_request(triggers: &Triggers, req: Request<Body>) -> Response<Body> {
    let invoker = &triggers.invoker;
    // A clone of the URI shares its bytes: the path is borrowed from it, not copied.
    let uri = req.uri().clone();
    let path = uri.path();
    let mut req = req;
    // The URL as it came, whatever path the function is sent (Fission's
    // header; one a client sent is replaced).
    if let Some(Ok(full)) = uri
        .path_and_query()
        .map(|pq| http::HeaderValue::try_from(pq.as_str()))
    {
        req.headers_mut().insert("x-fission-full-url", full);
    }
    if let Some(rest) = path.strip_prefix(FUNCTION_PREFIX) {
        if let Err(m) = engine::api::async_header(req.headers()) {
            return error_response(StatusCode::BAD_REQUEST, "invalid_header", &m);
        }
        let (name, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // `/fission-function/<namespace>/<name>` for a function of another
        // namespace than `default`, as in Fission.
        if let Some(rest) = tail.strip_prefix('/') {
            let (second, tail2) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            // `default/<name>` is `<name>`.
            let key = qualified(name, second);
            if !second.is_empty() && invoker.function_exists(&key) {
                if is_async(req.headers()) {
                    return triggers.invocations.accept(&key, req, tail2, &[]).await;
                }
                return pool_manager::forward(invoker.pool(), &key, req, tail2, &[]).await;
            }
        }
        if invoker.function_exists(name) {
            if is_async(req.headers()) {
                return triggers.invocations.accept(name, req, tail, &[]).await;
            }
            return pool_manager::forward(invoker.pool(), name, req, tail, &[]).await;
        }
        if invoker.workflow_exists(name) {
            let target = Target::Workflow(name.to_string());
            return invoker.call(&target, req, tail, &[]).await;
        }
        return Error::NotFound {
            kind: "function",
            name: name.to_string(),
        }
        .into_response();
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let table = triggers.routes.table();
    match table.find(req.method().as_str(), host.as_deref(), path) {
        // A route in async mode makes the call asynchronous, whatever the
        // request says (its caller may be unable to set a header).
        Some(m) if m.asynchronous => {
            req.headers_mut()
                .insert("x-async", http::HeaderValue::from_static("true"));
            match &m.target {
                Target::Function(key) => {
                    triggers
                        .invocations
                        .accept(key, req, m.sent(path), &m.params)
                        .await
                }
                target => invoker.call(target, req, m.sent(path), &m.params).await,
            }
        }
        // A route in sync-only mode: every call answers, whatever the request's
        // headers; a function gets them as sent (its own X-Async is its
        // business), a workflow is not told them.
        Some(m) if m.synchronous => {
            if matches!(m.target, Target::Workflow(_)) {
                for h in ["x-async", "x-fission-invoke-mode", "prefer"] {
                    req.headers_mut().remove(h);
                }
            }
            invoker.call(&m.target, req, m.sent(path), &m.params).await
        }
        Some(m) => {
            if let Err(e) = engine::api::async_header(req.headers()) {
                return error_response(StatusCode::BAD_REQUEST, "invalid_header", &e);
            }
            match &m.target {
                // A function called asynchronously is queued; a workflow runs in
                // the background by itself.
                Target::Function(key) if is_async(req.headers()) => {
                    triggers
                        .invocations
                        .accept(key, req, m.sent(path), &m.params)
                        .await
                }
                target => invoker.call(target, req, m.sent(path), &m.params).await,
            }
        }
        None => match table.allowed(host.as_deref(), path) {
            allowed if allowed.is_empty() => error_response(
                StatusCode::NOT_FOUND,
                "route_not_found",
                &format!("no route matches {} {path}", req.method()),
            ),
            // The path has routes, for other methods (as Fission's router answers).
            allowed => {
                let mut resp = error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    &format!(
                        "the routes of {path} take {}, not {}",
                        allowed.join(", "),
                        req.method()
                    ),
                );
                if let Ok(v) = http::HeaderValue::try_from(allowed.join(", ")) {
                    resp.headers_mut().insert(http::header::ALLOW, v);
                }
                resp
            }
        },
    }
}
