//! Stored declarations that are not (yet) run by anything, and the records of
//! what each spec project applied.
//!
//! - `/v1/declared/{kind}`: Fission's `TimeTrigger` and `MessageQueueTrigger`
//!   documents that an earlier Fusion stored from `fusion spec apply`, before it
//!   ran them; they stay readable and deletable, each with `status.active:
//!   false` and why. Both now run: `/v1/timers` and `/v1/mqtriggers`. (RFC-0022
//!   `Workflow`s go to the engine, `/v1/workflows`.)
//! - `/v1/deployments/{uid}`: per DeploymentConfig uid, the resources that
//!   project applied (what `spec apply --delete`, `spec destroy` and `spec list`
//!   act on), as Fission marks them with its `fission-uid` annotation.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pool_manager::Error;
use serde_json::{json, Value};

use crate::api::{parse_json, Ns};

#[derive(Clone)]
pub struct Declared {
    db: sled::Db,
    declared: sled::Tree,
    deployments: sled::Tree,
}

const KINDS: &[(&str, &str)] = &[
    ("timetriggers", "a declaration only, which nothing runs (an earlier Fusion stored time triggers so, or it was posted here): `fusion spec apply` creates it as a running time trigger (/v1/timers)"),
    ("messagequeuetriggers", "a declaration only, which nothing runs (an earlier Fusion stored message-queue triggers so, or it was posted here): `fusion spec apply` creates it as a running trigger (/v1/mqtriggers)"),
];

fn kind_reason(kind: &str) -> Result<&'static str, Error> {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, why)| *why)
        .ok_or_else(|| Error::NotFound {
            kind: "declaration kind",
            name: kind.to_string(),
        })
}

impl Declared {
    pub fn open(db: &sled::Db) -> Result<Declared, Error> {
        Ok(Declared {
            db: db.clone(),
            declared: db.open_tree("declared")?,
            deployments: db.open_tree("deployments")?,
        })
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/declared/{kind}", get(list).post(create))
            .route(
                "/v1/declared/{kind}/{name}",
                get(get_one).put(update).delete(delete),
            )
            .route("/v1/deployments", get(list_deployments))
            .route(
                "/v1/deployments/{uid}",
                get(get_deployment)
                    .put(put_deployment)
                    .delete(delete_deployment),
            )
            .with_state(self)
    }

    async fn flush(&self) -> Result<(), Error> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Takes a deleted resource out of every project's record: one made
    /// again under its name (by hand, or by another project) is not the one a
    /// project applied, so `spec destroy` and `spec apply --delete` leave it,
    /// and `spec apply` does not take it over (as Fission's `fission-uid`
    /// annotation goes with the object it is on).
    async fn forget(&self, collection: &str, namespace: &str, name: &str) -> Result<(), Error> {
        let mut changed = false;
        for item in self.deployments.iter() {
            let (uid, bytes) = item?;
            let Ok(mut dep) = serde_json::from_slice::<Deployment>(&bytes) else {
                continue;
            };
            let before = dep.resources.len();
            dep.resources.retain(|r| {
                !(r.collection == collection && r.namespace == namespace && r.name == name)
            });
            if dep.resources.len() != before {
                let v = serde_json::to_vec(&dep).map_err(|e| Error::Internal(e.to_string()))?;
                self.deployments.insert(uid, v)?;
                changed = true;
            }
        }
        if changed {
            self.flush().await?;
        }
        Ok(())
    }
}

/// The collections whose resources a project's record may hold.
const RECORDED: [&str; 10] = [
    "environments",
    "secrets",
    "configmaps",
    "packages",
    "functions",
    "workflows",
    "routes",
    "timers",
    "mqtriggers",
    "canaries",
];

/// In front of the whole API: a resource deleted (`DELETE /v1/{collection}/
/// {name}` answered 204) leaves every project's record (`Declared::forget`).
pub async fn forget_deleted(
    State(d): State<Declared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let deleted = (req.method() == axum::http::Method::DELETE)
        .then(|| deleted_resource(req.uri()))
        .flatten();
    let resp = next.run(req).await;
    if let Some((collection, namespace, name)) = deleted {
        if resp.status() == StatusCode::NO_CONTENT {
            if let Err(e) = d.forget(&collection, &namespace, &name).await {
                tracing::warn!(error = %e, collection, name, "cannot take a deleted resource out of the projects' records");
            }
        }
    }
    resp
}

/// The collection (`/v1/functions`), namespace and name a delete's path names.
fn deleted_resource(uri: &axum::http::Uri) -> Option<(String, String, String)> {
    let mut parts = uri.path().strip_prefix("/v1/")?.split('/');
    let (collection, name) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || !RECORDED.contains(&collection) || name.is_empty() {
        return None;
    }
    let namespace = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("namespace="))
        .filter(|ns| !ns.is_empty())
        .unwrap_or(pool_manager::secrets::DEFAULT_NAMESPACE);
    Some((
        format!("/v1/{collection}"),
        namespace.to_string(),
        name.to_string(),
    ))
}

fn key(kind: &str, ns: &str, name: &str) -> String {
    format!("{kind}/{ns}/{name}")
}

fn decode(bytes: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("corrupt record: {e}")))
}

fn view(kind: &str, mut v: Value) -> Value {
    let why = kind_reason(kind).unwrap_or("");
    v["status"] = json!({"active": false, "reason": why});
    v
}

/// A declaration from a request body: `name`, `namespace` and `spec`, and
/// the namespace it is in: the body's, or the query's when the body names
/// none (as every resource; a body that contradicts `?namespace=` is refused).
fn parse_declaration(body: &[u8], q: &Ns) -> Result<(String, String, Value), Error> {
    q.checked()?;
    let mut v: Value = parse_json(body)?;
    let Some(obj) = v.as_object_mut() else {
        return Err(Error::Invalid("a declaration must be a JSON object".into()));
    };
    obj.remove("status");
    q.reconcile(obj)?;
    let ns = obj
        .get("namespace")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Invalid("a declaration's `namespace` is a string".into()))?
        .to_string();
    pool_manager::resources::validate_name("namespace", &ns)?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Invalid("a declaration needs `name`".into()))?
        .to_string();
    pool_manager::resources::validate_name("declaration", &name)?;
    if !obj.get("spec").is_some_and(Value::is_object) {
        return Err(Error::Invalid("a declaration needs a `spec` object".into()));
    }
    Ok((name, ns, v))
}

async fn list(
    State(d): State<Declared>,
    Path(kind): Path<String>,
    Query(q): Query<Ns>,
) -> Result<Json<Vec<Value>>, Error> {
    kind_reason(&kind)?;
    let prefix = format!("{kind}/{}/", q.checked()?);
    let mut out = Vec::new();
    for item in d.declared.scan_prefix(prefix.as_bytes()) {
        let (_, v) = item?;
        out.push(view(&kind, decode(&v)?));
    }
    Ok(Json(out))
}

async fn get_one(
    State(d): State<Declared>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<Ns>,
) -> Result<Json<Value>, Error> {
    kind_reason(&kind)?;
    pool_manager::resources::validate_name("declaration", &name)?;
    match d.declared.get(key(&kind, q.checked()?, &name))? {
        Some(v) => Ok(Json(view(&kind, decode(&v)?))),
        None => Err(Error::NotFound {
            kind: "declaration",
            name,
        }),
    }
}

async fn create(
    State(d): State<Declared>,
    Path(kind): Path<String>,
    Query(q): Query<Ns>,
    body: Bytes,
) -> Result<Response, Error> {
    kind_reason(&kind)?;
    let (name, ns, v) = parse_declaration(&body, &q)?;
    let bytes = serde_json::to_vec(&v).map_err(|e| Error::Internal(e.to_string()))?;
    let swapped =
        d.declared
            .compare_and_swap(key(&kind, &ns, &name), None as Option<&[u8]>, Some(bytes))?;
    if swapped.is_err() {
        return Err(Error::AlreadyExists {
            kind: "declaration",
            name,
        });
    }
    d.flush().await?;
    Ok((StatusCode::CREATED, Json(view(&kind, v))).into_response())
}

async fn update(
    State(d): State<Declared>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<Ns>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    kind_reason(&kind)?;
    let (body_name, ns, v) = parse_declaration(&body, &q)?;
    if body_name != name {
        return Err(Error::Invalid(format!(
            "the name in the body ({body_name:?}) differs from the name in the path ({name:?})"
        )));
    }
    let k = key(&kind, &ns, &name);
    if d.declared.get(&k)?.is_none() {
        return Err(Error::NotFound {
            kind: "declaration",
            name,
        });
    }
    let bytes = serde_json::to_vec(&v).map_err(|e| Error::Internal(e.to_string()))?;
    d.declared.insert(k, bytes)?;
    d.flush().await?;
    Ok(Json(view(&kind, v)))
}

async fn delete(
    State(d): State<Declared>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<Ns>,
) -> Result<StatusCode, Error> {
    kind_reason(&kind)?;
    pool_manager::resources::validate_name("declaration", &name)?;
    if d.declared
        .remove(key(&kind, q.checked()?, &name))?
        .is_none()
    {
        return Err(Error::NotFound {
            kind: "declaration",
            name,
        });
    }
    d.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- deployments ----

/// What one project applied.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Deployment {
    #[serde(default)]
    name: String,
    uid: String,
    resources: Vec<Applied>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Applied {
    kind: String,
    namespace: String,
    name: String,
    collection: String,
}

pub(crate) fn check_uid(uid: &str) -> Result<(), Error> {
    let ok = !uid.is_empty()
        && uid != "."
        && uid != ".."
        && uid.len() <= 128
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "deployment uid {uid:?} must be 1 to 128 letters, digits, '-', '_' or '.'"
        )))
    }
}

async fn list_deployments(State(d): State<Declared>) -> Result<Json<Vec<Value>>, Error> {
    let mut out = Vec::new();
    for item in d.deployments.iter() {
        let (_, v) = item?;
        out.push(decode(&v)?);
    }
    Ok(Json(out))
}

async fn get_deployment(
    State(d): State<Declared>,
    Path(uid): Path<String>,
) -> Result<Json<Value>, Error> {
    check_uid(&uid)?;
    match d.deployments.get(&uid)? {
        Some(v) => Ok(Json(decode(&v)?)),
        None => Err(Error::NotFound {
            kind: "deployment",
            name: uid,
        }),
    }
}

async fn put_deployment(
    State(d): State<Declared>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    check_uid(&uid)?;
    let dep: Deployment = parse_json(&body)?;
    if dep.uid != uid {
        return Err(Error::Invalid(format!(
            "the uid in the body ({:?}) differs from the uid in the path ({uid:?})",
            dep.uid
        )));
    }
    let v = serde_json::to_value(&dep).map_err(|e| Error::Internal(e.to_string()))?;
    d.deployments.insert(
        &uid,
        serde_json::to_vec(&v).map_err(|e| Error::Internal(e.to_string()))?,
    )?;
    d.flush().await?;
    Ok(Json(v))
}

async fn delete_deployment(
    State(d): State<Declared>,
    Path(uid): Path<String>,
) -> Result<StatusCode, Error> {
    check_uid(&uid)?;
    if d.deployments.remove(&uid)?.is_none() {
        return Err(Error::NotFound {
            kind: "deployment",
            name: uid,
        });
    }
    d.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}
