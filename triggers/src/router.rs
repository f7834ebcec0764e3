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
    // `.` and `..` segments are resolved by a redirect, as Fission's router
    // (gorilla/mux) does: no route or function sees a path that climbs
    // (`/api/../admin` matched the prefix `/api`, its function sent `/../admin`;
    // `/api/..%2Fadmin` the same once decoded).
    if let Some(clean) = without_dot_segments(path) {
        return dot_segments_redirect(&req, &clean, uri.query());
    }
    let mut req = req;
    // The URL as it came, whatever path the function is sent (Fission's
    // header; one a client sent is replaced).
    if let Some(Ok(full)) = uri
        .path_and_query()
        .map(|pq| http::HeaderValue::try_from(pq.as_str()))
    {
        req.headers_mut().insert("x-fission-full-url", full);
    }
    if let Some(rest) = function_path(path) {
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
            let rest = rest.trim_start_matches('/');
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
        if name.is_empty() {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no function named: call /fission-function/<name> (or /fission-function/<namespace>/<name>)",
            );
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
    let mut found = table.find(req.method().as_str(), host.as_deref(), path);
    if let Some(m) = found.as_mut() {
        match invoker.resolve(m.target.clone()) {
            Ok(target) => m.target = target,
            // A route made before its function (or workflow), or left by one
            // deleted elsewhere: a 404 that says which, as Fission's router
            // answers a trigger whose function it cannot resolve with a 404.
            Err(why) => {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!(
                        "route {:?} calls {why}, which does not exist (yet): create it, or change the route",
                        m.route
                    ),
                )
            }
        }
    }
    match found {
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
            // As Fission's router, where no route takes them: `/` answers 200
            // (load balancers and ingresses check it) and so does
            // `/router-healthz`.
            allowed
                if allowed.is_empty()
                    && (path == "/" || path == "/router-healthz")
                    && (req.method() == http::Method::GET
                        || req.method() == http::Method::HEAD) =>
            {
                Response::new(Body::empty())
            }
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

/// What follows `/fission-function/` in `path`, if it is a function's path.
/// A doubled slash changes nothing, as in a route's path
/// (`//fission-function/f`, `/fission-function//f`).
fn function_path(path: &str) -> Option<&str> {
    let rest = path
        .trim_start_matches('/')
        .strip_prefix(FUNCTION_PREFIX.trim_start_matches('/'))?;
    Some(rest.trim_start_matches('/'))
}

/// What a `Location` path cannot hold as it is, escaped.
const PATH_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The path cleaned as gorilla/mux cleans it (Go's `path.Clean` of the
/// decoded path: `.` and `..` resolved, repeated slashes merged, a trailing
/// slash kept), when its decoded form has a `.` or `..` segment: `%2e` is a
/// dot and `%2F` a separator there, as they are to a function that decodes
/// its path. Never `//host` (a redirect elsewhere).
fn without_dot_segments(path: &str) -> Option<String> {
    // Most paths: no dot, and no escape that could hide one.
    if !path.contains('.') && !path.contains('%') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    if !decoded.split('/').any(|seg| seg == "." || seg == "..") {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let mut clean = format!("/{}", kept.join("/"));
    let directory = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if directory && !kept.is_empty() {
        clean.push('/');
    }
    Some(percent_encoding::utf8_percent_encode(&clean, PATH_ESCAPED).to_string())
}

/// The redirect to the path without dot segments: 301 for GET and HEAD, as
/// gorilla/mux answers, 308 for other methods (which a 301 would turn into a GET).
fn dot_segments_redirect(req: &Request<Body>, clean: &str, query: Option<&str>) -> Response<Body> {
    let location = match query {
        Some(q) => format!("{clean}?{q}"),
        None => clean.to_string(),
    };
    let status = if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::try_from(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod dot_tests {
    use super::{function_path, without_dot_segments};

    #[test]
    fn a_functions_path_is_found_past_doubled_slashes() {
        assert_eq!(function_path("/fission-function/f/x"), Some("f/x"));
        assert_eq!(function_path("//fission-function//f"), Some("f"));
        assert_eq!(function_path("/fission-function/"), Some(""));
        assert_eq!(function_path("/fission-function"), None);
        assert_eq!(function_path("/fission-functions/f"), None);
        assert_eq!(function_path("/api/fission-function/f"), None);
    }

    #[test]
    fn dot_segments_are_resolved_as_gorilla_cleans_them() {
        let clean = |p: &str| without_dot_segments(p);
        assert_eq!(clean("/api/x"), None);
        assert_eq!(clean("/a..b/.c/d."), None);
        assert_eq!(clean("/a%20b//c"), None);
        assert_eq!(clean("/api/../hand/5").as_deref(), Some("/hand/5"));
        assert_eq!(clean("/a/./b").as_deref(), Some("/a/b"));
        assert_eq!(clean("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(clean("/a/.").as_deref(), Some("/a/"));
        assert_eq!(clean("/../../etc").as_deref(), Some("/etc"));
        assert_eq!(clean("/a/%2E%2e/b").as_deref(), Some("/b"));
        assert_eq!(clean("/..").as_deref(), Some("/"));
        // An escaped separator climbs too, as a function decoding its path sees it.
        assert_eq!(clean("/api/..%2Fadmin").as_deref(), Some("/admin"));
        assert_eq!(
            clean("/files/..%2F..%2Fetc%2Fpasswd").as_deref(),
            Some("/etc/passwd")
        );
        // Never a redirect to another host.
        assert_eq!(clean("/..//evil.com").as_deref(), Some("/evil.com"));
        assert_eq!(clean("/.//evil.com/x").as_deref(), Some("/evil.com/x"));
        assert_eq!(clean("/a/..//evil.com").as_deref(), Some("/evil.com"));
        // A browser reads `\` as `/`: escaped, it is not a way to another host.
        assert_eq!(clean("/./%5Cevil.com/x").as_deref(), Some("/%5Cevil.com/x"));
        assert_eq!(clean("/x/../\\evil.com").as_deref(), Some("/%5Cevil.com"));
        // What a path cannot hold is escaped again.
        assert_eq!(clean("/a/../b%20c%3Fd").as_deref(), Some("/b%20c%3Fd"));
    }
}
