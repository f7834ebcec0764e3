//! The API of message-queue triggers: `/v1/mqtriggers[/{name}]`, each taking
//! `?namespace=` (default `default`). Every answer carries the trigger's live
//! `status` (connecting, running or error, with the reason and since when).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use triggers::mqt::{MessageQueueTrigger, TriggerView};

use super::{created, same_name, ApiResult, AppState, Listing, Ns};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/mqtriggers", get(list).post(create))
        .route(
            "/v1/mqtriggers/{name}",
            get(show).put(update).delete(delete),
        )
}

async fn list(
    State(s): State<AppState>,
    Query(l): Query<Listing>,
) -> ApiResult<Json<Vec<TriggerView>>> {
    Ok(Json(l.select(s.triggers.mqt.list()?, |t| {
        &t.trigger.namespace
    })?))
}

async fn show(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<Json<TriggerView>> {
    Ok(Json(s.triggers.mqt.get(&ns.key(&name)?)?))
}

async fn create(
    State(s): State<AppState>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Response> {
    let t: MessageQueueTrigger = ns.parse("mqtrigger", &body)?;
    Ok(created(s.triggers.mqt.create(t).await?))
}

async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Json<TriggerView>> {
    let t: MessageQueueTrigger = ns.parse("mqtrigger", &body)?;
    same_name(&name, &t.name)?;
    Ok(Json(s.triggers.mqt.update(t).await?))
}

async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<StatusCode> {
    s.triggers.mqt.delete(&ns.key(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
