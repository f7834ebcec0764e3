//! The API of secrets and configmaps: `/v1/secrets[/{name}]` and
//! `/v1/configmaps[/{name}]`, each taking `?namespace=` (default `default`).
//! A secret's values go in and never come out: reads show its keys and sizes.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use pool_manager::{DataKind, DataSpec, DataView};
use serde::Deserialize;

use super::{created, parse_json, ApiResult, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/secrets",
            get(|s, q| list(DataKind::Secret, s, q))
                .post(|s, q, b| create(DataKind::Secret, s, q, b)),
        )
        .route(
            "/v1/secrets/{name}",
            get(|s, p, q| show(DataKind::Secret, s, p, q))
                .put(|s, p, q, b| update(DataKind::Secret, s, p, q, b))
                .delete(|s, p, q| delete(DataKind::Secret, s, p, q)),
        )
        .route(
            "/v1/configmaps",
            get(|s, q| list(DataKind::ConfigMap, s, q))
                .post(|s, q, b| create(DataKind::ConfigMap, s, q, b)),
        )
        .route(
            "/v1/configmaps/{name}",
            get(|s, p, q| show(DataKind::ConfigMap, s, p, q))
                .put(|s, p, q, b| update(DataKind::ConfigMap, s, p, q, b))
                .delete(|s, p, q| delete(DataKind::ConfigMap, s, p, q)),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceQuery {
    namespace: Option<String>,
}

impl NamespaceQuery {
    /// The namespace, checked: a DNS-1123 label, or 400.
    fn namespace(&self) -> ApiResult<&str> {
        super::checked_namespace(self.namespace.as_deref())
    }
}

/// What a read shows that the server keeps: ignored in a body, so what `GET`
/// answered can be sent back edited.
const READ_ONLY: [&str; 3] = ["keys", "sizes", "unchanged"];

/// A body as a secret or configmap, answering 400 with what is wrong.
fn parse(kind: DataKind, body: &[u8]) -> ApiResult<DataSpec> {
    let mut value: serde_json::Value = parse_json(body)?;
    if !value.is_object() {
        // serde would read a list as the fields in order.
        return Err(pool_manager::Error::Invalid(format!(
            "invalid {}: send a JSON object ({{\"name\": ...}}), not {}",
            kind.noun(),
            super::json_kind(&value)
        )));
    }
    if let Some(fields) = value.as_object_mut() {
        let removed = READ_ONLY.map(|f| fields.remove(f).is_some());
        let read_back = removed.contains(&true);
        // A secret's read has no values: sent back as it is, it would
        // replace them with none.
        if read_back && kind == DataKind::Secret && !fields.contains_key("data") {
            return Err(pool_manager::Error::Invalid(
                "a secret's values are never shown, so its read cannot be sent back as it is: give its values in `data`".into(),
            ));
        }
    }
    serde_json::from_value(value)
        .map_err(|e| pool_manager::Error::Invalid(format!("invalid {}: {e}", kind.noun())))
}

/// The list of a namespace, or of every namespace (`?all_namespaces=true`).
async fn list(
    kind: DataKind,
    State(s): State<AppState>,
    Query(q): Query<super::Listing>,
) -> ApiResult<Json<Vec<DataView>>> {
    let all = s.pool.data_items(kind, None)?;
    Ok(Json(q.select(all, |d| d.namespace.as_str())?))
}

async fn show(
    kind: DataKind,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> ApiResult<Json<DataView>> {
    Ok(Json(s.pool.data_item(kind, q.namespace()?, &name)?))
}

async fn create(
    kind: DataKind,
    State(s): State<AppState>,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let spec = parse(kind, &body)?;
    Ok(created(
        s.pool
            .create_data(kind, spec, q.namespace.as_deref())
            .await?,
    ))
}

async fn update(
    kind: DataKind,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Json<DataView>> {
    let spec = parse(kind, &body)?;
    Ok(Json(
        s.pool
            .update_data(kind, &name, spec, q.namespace.as_deref())
            .await?,
    ))
}

async fn delete(
    kind: DataKind,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> ApiResult<StatusCode> {
    s.pool.delete_data(kind, q.namespace()?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
