//! The API of time triggers: `/v1/timers[/{name}]` (create, get, update,
//! delete, list; `?namespace=`, default `default`) and
//! `/v1/timers/{name}/history` (the trigger's last firings, newest first).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use triggers::timer::{TimeTrigger, HISTORY_PER_TRIGGER};

use super::{created, same_name, ApiResult, AppState, Listing, Ns};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/timers", get(list).post(create))
        .route("/v1/timers/{name}", get(show).put(update).delete(delete))
        .route("/v1/timers/{name}/history", get(history))
}

/// A time trigger as the API shows it: what was declared, and when it fires next.
#[derive(Serialize)]
struct TimerView {
    #[serde(flatten)]
    trigger: TimeTrigger,
    status: TimerStatus,
}

#[derive(Serialize)]
struct TimerStatus {
    /// The next tick it fires for (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<Timestamp>,
}

fn view(s: &AppState, trigger: TimeTrigger) -> TimerView {
    let next = s.triggers.timers.next_tick(&trigger.key());
    TimerView {
        trigger,
        status: TimerStatus { next },
    }
}

async fn list(
    State(s): State<AppState>,
    Query(l): Query<Listing>,
) -> ApiResult<Json<Vec<TimerView>>> {
    let all = l.select(s.triggers.timers.list()?, |t| &t.namespace)?;
    Ok(Json(all.into_iter().map(|t| view(&s, t)).collect()))
}

async fn show(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<Json<TimerView>> {
    let t = s.triggers.timers.get(&ns.key(&name)?)?;
    Ok(Json(view(&s, t)))
}

async fn create(
    State(s): State<AppState>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Response> {
    let t: TimeTrigger = ns.parse("time trigger", &body)?;
    let tr = &s.triggers;
    let t = tr.timers.create(t, &tr.invoker).await?;
    Ok(created(view(&s, t)))
}

async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Json<TimerView>> {
    let t: TimeTrigger = ns.parse("time trigger", &body)?;
    same_name(&name, &t.name)?;
    let tr = &s.triggers;
    let t = tr.timers.update(t, &tr.invoker).await?;
    Ok(Json(view(&s, t)))
}

async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<StatusCode> {
    s.triggers.timers.delete(&ns.key(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    namespace: Option<String>,
    /// How many firings, newest first (default and most: all that are kept).
    limit: Option<usize>,
}

async fn history(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    use axum::response::IntoResponse;
    let key = Ns {
        namespace: q.namespace,
    }
    .key(&name)?;
    if q.limit == Some(0) {
        return Ok(pool_manager::error::error_response(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            &format!("limit 0: give 1 or more (the last {HISTORY_PER_TRIGGER} firings are kept)"),
        ));
    }
    let limit = q
        .limit
        .unwrap_or(HISTORY_PER_TRIGGER)
        .min(HISTORY_PER_TRIGGER);
    Ok(Json(s.triggers.timers.history(&key, limit)?).into_response())
}
