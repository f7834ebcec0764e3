//! What the API listener checks before a handler runs: the bearer token, on every
//! path but health, the OpenAPI document, a function pod's package fetch (its
//! own credential, checked by `api/pod_packages.rs`) and a workflow's callback URLs (so
//! `/metrics` too; a callback URL's one-time token is its own credential, so that
//! whoever completes a waiting task needs no admin token), and, for a request
//! with a body, a content type the endpoint reads. A form or `text/plain` post, the
//! kind a web page can send cross-site without asking, is refused with 415 before
//! it has any effect; the token already stops such calls, this is a second wall.
//! The API sends no CORS headers, so browsers keep other sites from reading it.
//! A body is read as it is: one with a `Content-Encoding` is refused (415).
//! A query parameter the endpoint does not take (by the OpenAPI document) is
//! refused with 400 before the handler runs: `?namepsace=ns1` must not act on
//! the default namespace.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use pool_manager::error::error_response;

use crate::token::Token;

/// The API's OpenAPI document (served at `/openapi.json`).
pub const OPENAPI: &str = include_str!("../schemas/openapi.json");

/// The query parameters of every operation of the OpenAPI document, by
/// method (lowercase) and route.
static QUERY_PARAMETERS: std::sync::LazyLock<
    std::collections::HashMap<(String, String), Vec<String>>,
> = std::sync::LazyLock::new(|| {
    let doc: serde_json::Value =
        serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON");
    let mut out = std::collections::HashMap::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let names = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            out.insert((method.clone(), path.clone()), names);
        }
    }
    out
});

/// Answers 400 `invalid_query` for a query parameter the endpoint does not
/// take, on `/v1`. Invocations pass their query on to the function or
/// workflow, a pod's fetch and a callback are not the admin's API: those take
/// any, as health and `/metrics` (scrapers may add their own). A route layer:
/// it sees the route.
pub async fn known_query(req: Request, next: Next) -> Response {
    let Some(query) = req.uri().query().filter(|q| !q.is_empty()) else {
        return next.run(req).await;
    };
    let route = route_of(&req);
    if !route.starts_with("/v1/")
        || accepted(&route).is_none()
        || route.starts_with(pool_manager::delivery::POD_PACKAGES_PATH)
    {
        return next.run(req).await;
    }
    let method = match *req.method() {
        Method::HEAD => "get".to_string(),
        ref m => m.as_str().to_ascii_lowercase(),
    };
    let Some(known) = QUERY_PARAMETERS.get(&(method, route)) else {
        return next.run(req).await;
    };
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if !known.iter().any(|k| *k == name) {
            let expected = if known.is_empty() {
                "this endpoint takes no query parameters".to_string()
            } else {
                let names: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                format!("expected one of {}", names.join(", "))
            };
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                &format!("unknown query parameter `{name}`: {expected}"),
            );
        }
    }
    next.run(req).await
}

/// The route a request matched (`/v1/functions/{name}`), for a route layer.
fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default()
}

/// The paths anyone who reaches the API listener may call.
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// Answers 401 unless the request carries `Authorization: Bearer <token>`. The
/// header that carried the token is removed, so that an invocation through the
/// API (`fusion fn test`, `wf invoke`) never hands the token to a function; any
/// other `Authorization` header is passed on.
pub async fn require_token(State(token): State<Token>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // A function pod's fetcher carries its own credential, checked by the endpoint.
    if OPEN_PATHS.contains(&path)
        || path.starts_with(engine::api::CALLBACKS_PATH)
        || path.starts_with(pool_manager::delivery::POD_PACKAGES_PATH)
    {
        return next.run(req).await;
    }
    let values: Vec<HeaderValue> = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .cloned()
        .collect();
    let carries_token = |v: &HeaderValue| bearer(v).is_some_and(|t| token.matches(t));
    let Some(at) = values.iter().position(carries_token) else {
        let message = if values.iter().any(|v| bearer(v).is_some()) {
            "the bearer token is not this server's (it is the file `token` in the server's data dir)"
        } else {
            "this API needs `Authorization: Bearer <token>` (the token is the file `token` in the server's data dir)"
        };
        return unauthorized(message);
    };
    req.headers_mut().remove(header::AUTHORIZATION);
    for (i, v) in values.into_iter().enumerate() {
        if i != at {
            req.headers_mut().append(header::AUTHORIZATION, v);
        }
    }
    next.run(req).await
}

/// The credentials of a `Bearer` authorization (the scheme in any case).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let space = bytes.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = bytes.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    let end = rest.iter().rposition(|b| *b != b' ')? + 1;
    Some(&rest[start..end])
}

fn unauthorized(message: &str) -> Response {
    let mut resp = error_response(StatusCode::UNAUTHORIZED, "unauthorized", message);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fusion\""),
    );
    resp
}

const JSON: &[&str] = &["application/json"];
const YAML: &[&str] = &[
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
    "application/json",
];
const CODE: &[&str] = &["application/octet-stream", "application/zip"];
/// `POST /v1/packages`: a named package (JSON), or code as `/v1/archives` takes it.
const PACKAGES: &[&str] = &[
    "application/json",
    "application/octet-stream",
    "application/zip",
];

/// The content types an endpoint reads from a body, by its route; `None` for the
/// invocations, whose body is the function's or workflow's own input, and for a
/// callback URL: its token is its credential (a page that does not know it
/// cannot complete anything), and webhook senders often label JSON wrongly.
fn accepted(route: &str) -> Option<&'static [&'static str]> {
    match route {
        r if r.starts_with(engine::api::CALLBACKS_PATH) => None,
        "/v1/archives" => Some(CODE),
        "/v1/packages" => Some(PACKAGES),
        "/v1/workflows" | "/v1/workflows/{name}" => Some(YAML),
        r if r.ends_with("/invoke") || r.contains("/invoke/") => None,
        _ => Some(JSON),
    }
}

/// Answers 415 when a POST, PUT, PATCH or DELETE with a body has a content type
/// (or none) that its endpoint does not read. A route layer: it sees the route.
pub async fn require_content_type(req: Request, next: Next) -> Response {
    let writes = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if !writes || !has_body(req.headers()) {
        return next.run(req).await;
    }
    let route = route_of(&req);
    let Some(types) = accepted(&route) else {
        return next.run(req).await;
    };
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|e| e != "identity");
    if let Some(encoding) = encoding {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            &format!(
                "{} {} reads a body as it is sent; this one has `Content-Encoding: {encoding}`: send it without one",
                req.method(),
                req.uri().path()
            ),
        );
    }
    let given = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    if given.as_deref().is_some_and(|g| types.contains(&g)) {
        return next.run(req).await;
    }
    let what = match &given {
        Some(g) => format!("content type {g:?}"),
        None => "no content type".to_string(),
    };
    // curl's `-d`/`--data-binary` labels a body as a form unless told.
    let hint = match given.as_deref() {
        Some("application/x-www-form-urlencoded") => {
            " (curl labels -d and --data-binary so unless told)"
        }
        _ => "",
    };
    error_response(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        &format!(
            "{} {} reads {}; this request's body has {what}{hint}: send it with `Content-Type: {}`",
            req.method(),
            req.uri().path(),
            types.join(", "),
            types.first().copied().unwrap_or("application/json")
        ),
    )
}

/// Whether the request declares a body (a non-zero length, or chunks).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Gives up a request whose body stops arriving: a client that sends part of
/// one (a `Content-Length` it never fills) cannot hold a handler and its
/// connection forever. Each frame must come within `idle` of the last
/// (`--body-idle-timeout-ms`), so a large upload on a slow link goes on; the
/// answer is 408 `request_timeout`, whatever the handler made of the failed
/// read.
pub async fn body_deadline(
    State(idle): State<std::time::Duration>,
    req: Request,
    next: Next,
) -> Response {
    if !has_body(req.headers()) {
        return next.run(req).await;
    }
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(Idle {
        inner: body,
        idle,
        sleep: None,
        stalled: stalled.clone(),
    });
    let resp = next.run(Request::from_parts(parts, body)).await;
    if stalled.load(std::sync::atomic::Ordering::SeqCst) {
        return error_response(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &format!(
                "the request body stopped arriving: nothing came for {} ms",
                idle.as_millis()
            ),
        );
    }
    resp
}

/// A body that fails once `idle` passes without a frame.
struct Idle {
    inner: axum::body::Body,
    idle: std::time::Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for Idle {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame);
        }
        let idle = this.idle;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match std::future::Future::poll(sleep.as_mut(), cx) {
            Poll::Ready(()) => {
                this.stalled
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Poll::Ready(Some(Err(axum::Error::new(
                    "the request body stopped arriving",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_read_in_any_case() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(&v("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&v("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&v("Basic abc")), None);
        assert_eq!(bearer(&v("Bearer")), None);
        assert_eq!(bearer(&v("Bearer ")), None);
    }

    #[test]
    fn every_endpoint_but_invocations_names_its_types() {
        assert_eq!(accepted("/v1/environments"), Some(JSON));
        assert_eq!(accepted("/v1/runs/{id}/cancel"), Some(JSON));
        assert_eq!(accepted("/v1/archives"), Some(CODE));
        assert_eq!(accepted("/v1/packages"), Some(PACKAGES));
        assert_eq!(accepted("/v1/packages/{name}"), Some(JSON));
        assert_eq!(accepted("/v1/workflows/{name}"), Some(YAML));
        assert_eq!(accepted("/v1/functions/{name}/invoke"), None);
        assert_eq!(accepted("/v1/functions/{name}/invoke/{*rest}"), None);
        assert_eq!(accepted("/v1/workflows/{name}/invoke"), None);
        assert_eq!(accepted(""), Some(JSON));
    }

    /// Every operation whose body this guard checks can answer 415, and the
    /// OpenAPI document says so (a DELETE or a body-less POST too: a body
    /// sent to one is checked as any other).
    #[test]
    fn the_document_declares_the_415_of_every_write_the_guard_checks() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            if !path.starts_with("/v1/") || accepted(path).is_none() {
                continue;
            }
            for method in ["post", "put", "patch", "delete"] {
                let Some(op) = item.get(method) else { continue };
                if op["responses"].get("415").is_none() {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        assert!(missing.is_empty(), "no 415 declared: {missing:?}");
    }

    /// Every operation that takes a body can answer 413 (the API reads at
    /// most 16 MiB of one, an upload its own limit), and the document says so.
    #[test]
    fn the_document_declares_the_413_of_every_operation_that_takes_a_body() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if op.get("requestBody").is_some() && op["responses"].get("413").is_none() {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        assert!(missing.is_empty(), "no 413 declared: {missing:?}");
    }

    /// The fields the server answers that a client reads by the document:
    /// each view's own (serialized here) and those handlers add.
    #[test]
    fn the_document_names_what_the_server_answers() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let schema = |name: &str| doc["components"]["schemas"][name].clone();
        let undeclared = |schema: &serde_json::Value, answer: serde_json::Value| -> Vec<String> {
            answer
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| schema["properties"].get(k.as_str()).is_none())
                .cloned()
                .collect()
        };
        let view = pool_manager::DataView {
            name: "c".into(),
            namespace: "default".into(),
            keys: vec![],
            sizes: Default::default(),
            data: Some(Default::default()),
            unchanged: true,
        };
        let view = serde_json::to_value(view).unwrap();
        assert_eq!(undeclared(&schema("DataView"), view), Vec::<String>::new());
        let status = serde_json::to_value(triggers::mqt::status::StatusCell::new().get()).unwrap();
        let mqt_status = schema("MessageQueueTrigger")["properties"]["status"].clone();
        assert_eq!(undeclared(&mqt_status, status), Vec::<String>::new());
        // `accepted_with` of a retry (engine/src/api.rs).
        let retry = serde_json::json!({"id": "r", "status": "running", "location": "/v1/runs/r",
            "workflow": "w", "version": 1, "retry_of": "q"});
        assert_eq!(undeclared(&schema("Accepted"), retry), Vec::<String>::new());
        let dry_run = serde_json::json!({"dry_run": true});
        assert_eq!(
            undeclared(&schema("WorkflowVersion"), dry_run),
            Vec::<String>::new()
        );
        assert!(doc["paths"]["/v1/workflows"]["post"]["responses"]
            .get("200")
            .is_some());
    }
}
