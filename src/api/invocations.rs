//! The API of asynchronous invocations: `GET /v1/invocations[/{id}]` (newest
//! first, paged, by `?function=` in `?namespace=`, by `?status=`),
//! `GET /v1/deadletters` (the dead ones), and
//! `POST /v1/invocations/{id}/redrive` (a new cycle of attempts).

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pool_manager::error::error_response;
use serde::Deserialize;
use serde_json::json;
use triggers::invocations::record::{Invocation, Status};
use triggers::invocations::store::Filter;

use super::{ApiResult, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/invocations", get(list))
        .route("/v1/invocations/{id}", get(show))
        .route("/v1/invocations/{id}/redrive", post(redrive))
        .route("/v1/deadletters", get(deadletters).delete(purge))
}

/// The most a page holds, and what it holds when `limit` is not given.
const MOST: usize = 1000;
const DEFAULT_LIMIT: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    function: Option<String>,
    namespace: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn bad(code: &str, message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, code, &message)
}

async fn page(s: &AppState, q: ListQuery, status: Option<Status>) -> ApiResult<Response> {
    let namespace = q.namespace.as_deref().unwrap_or("default");
    pool_manager::resources::validate_name("namespace", namespace)?;
    // One status or several (`failed,dead`), as the run history takes them.
    let mut statuses = Vec::new();
    match (status, q.status.as_deref()) {
        (Some(s), _) => statuses.push(s),
        (None, None | Some("")) => {}
        (None, Some(text)) => {
            for one in text.split(',').map(str::trim) {
                // In any case, as the run history takes them.
                match Status::parse(&one.to_ascii_lowercase()) {
                    Some(s) => statuses.push(s),
                    None => {
                        return Ok(bad(
                            "invalid_status",
                            format!(
                                "unknown status {one:?}: use queued, running, succeeded, failed or dead (or several: failed,dead)"
                            ),
                        ))
                    }
                }
            }
        }
    }
    let function = match q.function.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => {
            pool_manager::resources::validate_name("function", f)?;
            Some(pool_manager::resources::qualified(namespace, f))
        }
        None => None,
    };
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MOST).contains(&n) => n,
        Some(n) => {
            return Ok(bad(
                "invalid_limit",
                format!("limit {n} must be between 1 and {MOST}"),
            ))
        }
    };
    let cursor = q.cursor.filter(|c| !c.is_empty());
    if let Some(c) = &cursor {
        if uuid::Uuid::parse_str(c).is_err() {
            return Ok(bad(
                "invalid_cursor",
                format!("cursor {c:?} is not the next_cursor of a page"),
            ));
        }
    }
    let filter = Filter {
        function,
        namespace: Some(namespace.to_string()),
        statuses,
    };
    let (items, next) = s
        .triggers
        .invocations
        .list(&filter, cursor.as_deref(), limit)?;
    let items: Vec<_> = items.iter().map(Invocation::summary).collect();
    Ok(Json(json!({"invocations": items, "next_cursor": next})).into_response())
}

async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    page(&s, q, None).await
}

async fn deadletters(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    page(&s, q, Some(Status::Dead)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    function: Option<String>,
    namespace: Option<String>,
}

/// Discards the dead letters of a namespace (of one function with
/// `?function=`), as Fission's `dlq purge`; answers how many.
async fn purge(
    State(s): State<AppState>,
    Query(q): Query<PurgeQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    // One namespace, as the listing shows: another's dead letters stay.
    let namespace = q.namespace.as_deref().unwrap_or("default");
    pool_manager::resources::validate_name("namespace", namespace)?;
    if let Some(f) = q.function.as_deref() {
        // As the listing: a name that cannot be a function's is a mistake,
        // not an empty purge.
        pool_manager::resources::validate_name("function", f)?;
    }
    let purged = s
        .triggers
        .invocations
        .purge_dead(namespace, q.function.as_deref())
        .await?;
    Ok(Json(json!({ "purged": purged })))
}

/// The most of a request's body an invocation's detail shows.
const SHOWN_BODY: usize = 64 * 1024;

/// An invocation in full, with what its request sent: the body's first 64 KiB
/// (`body`, or `body_base64` when it is not UTF-8; `body_truncated` past that).
async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let inv: Invocation = s.triggers.invocations.get(&id)?;
    let body = s.triggers.invocations.request_body(&id)?;
    let mut v =
        serde_json::to_value(&inv).map_err(|e| pool_manager::Error::Internal(e.to_string()))?;
    let shown = &body[..body.len().min(SHOWN_BODY)];
    // A cut may fall inside a character: it is then base64 like any binary.
    let (text, b64) = triggers::invocations::record::text_or_base64(shown);
    if let Some(request) = v
        .get_mut("request")
        .and_then(serde_json::Value::as_object_mut)
    {
        if let Some(t) = text {
            request.insert("body".into(), t.into());
        }
        if let Some(b) = b64 {
            request.insert("body_base64".into(), b.into());
        }
        if body.len() > SHOWN_BODY {
            request.insert("body_truncated".into(), true.into());
        }
    }
    Ok(Json(v))
}

async fn redrive(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response<Body>> {
    let base = s.triggers.invocations.api_base(&req);
    s.triggers.invocations.redrive(&id, &base).await
}
