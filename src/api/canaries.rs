//! The API of canary releases (Fission's `CanaryConfig`): `/v1/canaries[/{name}]`
//! (create, get, update, delete, list; `?namespace=`, default `default`).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use triggers::canary::Canary;

use super::{created, same_name, ApiResult, AppState, Listing, Ns};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/canaries", get(list).post(create))
        .route("/v1/canaries/{name}", get(show).put(update).delete(delete))
}

async fn list(State(s): State<AppState>, Query(l): Query<Listing>) -> ApiResult<Json<Vec<Canary>>> {
    Ok(Json(
        l.select(s.triggers.canaries.list()?, |c| &c.namespace)?,
    ))
}

async fn show(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<Json<Canary>> {
    Ok(Json(s.triggers.canaries.get(&ns.key(&name)?)?))
}

async fn create(
    State(s): State<AppState>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Response> {
    let c: Canary = ns.parse("canary", &body)?;
    Ok(created(
        s.triggers.canaries.put(c, &s.triggers, false).await?,
    ))
}

/// A changed canary starts again from the route's weights as they are.
async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
    body: Bytes,
) -> ApiResult<Json<Canary>> {
    let c: Canary = ns.parse("canary", &body)?;
    same_name(&name, &c.name)?;
    Ok(Json(s.triggers.canaries.put(c, &s.triggers, true).await?))
}

async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(ns): Query<Ns>,
) -> ApiResult<StatusCode> {
    s.triggers.canaries.delete(&ns.key(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
