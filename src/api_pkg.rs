//! The API of packages: content-addressed archives (`POST /v1/archives`, and
//! `POST /v1/archives/prune` to remove those nothing uses now) and
//! named packages with their builds (`/v1/packages`: list, create, get,
//! update, delete, `POST .../rebuild`, `GET .../logs`), each taking
//! `?namespace=NS` (default `default`). `POST /v1/packages` with a body that
//! is not JSON is still the raw upload it used to be (as `/v1/archives`), so
//! older clients keep working.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pool_manager::{Error, Package};
use serde::Deserialize;

use crate::api::{parse_json, AppState};

pub fn routes(upload_limit: usize) -> Router<AppState> {
    // axum's 413 for a body past the limit names no limit: this one does.
    let name_the_limit = axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            let resp = next.run(req).await;
            let json = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if resp.status() != StatusCode::PAYLOAD_TOO_LARGE || json {
                return resp;
            }
            let most = upload_limit.saturating_sub(1);
            pool_manager::error::error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!(
                    "the upload is larger than the limit of {most} bytes ({} MiB)",
                    most >> 20
                ),
            )
        },
    );
    Router::new()
        .route(
            "/v1/archives",
            post(upload_archive)
                .layer(DefaultBodyLimit::max(upload_limit))
                .layer(name_the_limit.clone()),
        )
        .route("/v1/archives/prune", post(prune))
        .route(
            "/v1/packages",
            get(list)
                .post(create_or_upload)
                .layer(DefaultBodyLimit::max(upload_limit))
                .layer(name_the_limit),
        )
        .route(
            "/v1/packages/{name}",
            get(get_one).put(update).delete(delete),
        )
        .route("/v1/packages/{name}/rebuild", post(rebuild))
        .route("/v1/packages/{name}/logs", get(logs))
        .route("/v1/packages/{name}/source", get(source))
        .route("/v1/packages/{name}/deployment", get(deployment))
}

/// A package's source as stored (Fission's `pkg getsrc`): a file as it was
/// uploaded, a directory as a tar stream.
async fn source(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PackageQuery>,
) -> ApiResult<Response> {
    let p = s.pool.package(q.namespace()?, &name)?;
    let Some(code) = &p.source else {
        return Err(Error::Conflict(format!(
            "package {name:?} has no source: it holds a deployment only (GET .../deployment)"
        )));
    };
    let path = s.pool.package_path(code)?;
    Ok(crate::api::pod_packages::package_response(path).await)
}

/// The code a package's functions run (Fission's `pkg getdeploy`): its
/// build, or the deployment it was given; as `source` sends it. While it
/// builds again, the last deployment it built (as Fission's package keeps
/// its deployment archive until a build replaces it).
async fn deployment(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PackageQuery>,
) -> ApiResult<Response> {
    let p = s.pool.package(q.namespace()?, &name)?;
    let Some(code) = p.runnable() else {
        return Err(Error::Conflict(format!(
            "package {name:?} has no deployment yet: its build is {} (fusion pkg info {name})",
            p.status.buildstatus
        )));
    };
    let path = s.pool.package_path(code)?;
    Ok(crate::api::pod_packages::package_response(path).await)
}

type ApiResult<T> = Result<T, Error>;

#[derive(Deserialize)]
struct PackageQuery {
    /// The file name of an uploaded single file.
    filename: Option<String>,
    namespace: Option<String>,
    /// An update that moves the package to another environment moves the
    /// functions that run it too.
    #[serde(default)]
    move_functions: bool,
}

impl PackageQuery {
    /// The namespace, checked: a DNS-1123 label, or 400.
    fn namespace(&self) -> ApiResult<&str> {
        crate::api::checked_namespace(self.namespace.as_deref())
    }
}

/// Stores code content-addressed: a zip archive is unpacked, anything else is
/// one file named `filename`. A body sent as `application/zip` must be one:
/// stored as a file, it would be loaded as code and fail at every call.
async fn upload_archive(
    State(s): State<AppState>,
    Query(q): Query<PackageQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    if is_type(&headers, "application/zip") && !pool_manager::package::is_zip(&body) {
        return Err(Error::Invalid(
            "the code is not a valid zip archive: it is sent as application/zip, but a zip file starts with PK".into(),
        ));
    }
    let name = q.filename.unwrap_or_else(|| "user".into());
    let pool = s.pool.clone();
    let package = tokio::task::spawn_blocking(move || pool.put_package(&name, &body))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(package)).into_response())
}

/// Removes the code no function, package or instance uses, now (the server
/// also does it on its own, every `--package-prune-secs`).
async fn prune(State(s): State<AppState>) -> ApiResult<Response> {
    let pruned = s.pool.prune_packages().await?;
    Ok(Json(pruned).into_response())
}

fn is_json(headers: &HeaderMap) -> bool {
    is_type(headers, "application/json")
}

/// Whether the request's `Content-Type` is `media` (parameters aside).
fn is_type(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with(media))
}

/// A package from a request body, in the namespace of the query (when given);
/// its `status` and `generation`, which the server keeps, are ignored, so what
/// `GET` answered can be sent back edited.
fn parse_package(q: &PackageQuery, body: &[u8]) -> ApiResult<Package> {
    let mut value: serde_json::Value = parse_json(body)?;
    let fields = value
        .as_object_mut()
        .ok_or_else(|| Error::Invalid("a package is a JSON object".into()))?;
    fields.remove("status");
    fields.remove("generation");
    if let Some(ns) = &q.namespace {
        match fields.get("namespace").and_then(|v| v.as_str()) {
            Some(given) if given != ns => {
                return Err(Error::Invalid(format!(
                "the namespace in the body ({given:?}) differs from the one in the query ({ns:?})"
            )))
            }
            _ => {
                fields.insert("namespace".into(), ns.clone().into());
            }
        }
    }
    serde_json::from_value(value).map_err(|e| Error::Invalid(format!("invalid package: {e}")))
}

async fn create_or_upload(
    State(s): State<AppState>,
    Query(q): Query<PackageQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    if !is_json(&headers) {
        return upload_archive(State(s), Query(q), headers, body).await;
    }
    let p = s.pool.create_package(parse_package(&q, &body)?).await?;
    Ok((StatusCode::CREATED, Json(p)).into_response())
}

async fn list(
    State(s): State<AppState>,
    Query(l): Query<crate::api::Listing>,
) -> ApiResult<Json<Vec<Package>>> {
    Ok(Json(l.select(s.pool.packages()?, |p| &p.namespace)?))
}

async fn get_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PackageQuery>,
) -> ApiResult<Json<Package>> {
    Ok(Json(s.pool.package(q.namespace()?, &name)?))
}

async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PackageQuery>,
    body: Bytes,
) -> ApiResult<Json<Package>> {
    let p = parse_package(&q, &body)?;
    if p.name != name {
        return Err(Error::Invalid(format!(
            "the name in the body ({:?}) differs from the name in the path ({name:?})",
            p.name
        )));
    }
    Ok(Json(
        s.pool.update_package_moving(p, q.move_functions).await?,
    ))
}

async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PackageQuery>,
) -> ApiResult<StatusCode> {
    s.pool.delete_package(q.namespace()?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Builds the package's source again (bypassing the build cache); answers 202
/// with the package, its build pending.
async fn rebuild(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PackageQuery>,
) -> ApiResult<Response> {
    let p = s.pool.rebuild_package(q.namespace()?, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(p)).into_response())
}

/// The log of the package's last build, as text.
async fn logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PackageQuery>,
) -> ApiResult<Response> {
    let ns = q.namespace()?;
    let p = s.pool.package(ns, &name)?;
    // While a build runs, what it has written so far (`pip install`'s
    // progress, say); after it, the log it left.
    let log = match p.status.buildstatus {
        pool_manager::BuildStatus::Running => s
            .pool
            .build_progress(ns, &name)
            .unwrap_or(p.status.buildlog),
        _ => p.status.buildlog,
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}
