//! `POST /v1/deletions/check`: what would keep a set of resources from being
//! deleted together. Each resource that something outside the set still uses
//! (a route, a trigger or a workflow its function, a function its
//! environment, package, secret or configmap; a run in flight) is answered
//! with those users, so that `fusion spec destroy` refuses before it deletes
//! anything, instead of stopping half-way at the first 409. The same users
//! the deletes themselves refuse on, read the same way; nothing is deleted.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use pool_manager::resources::qualified;
use pool_manager::Error;
use serde::{Deserialize, Serialize};

use super::{ApiResult, AppState};
use crate::spec::model::Kind;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/deletions/check", post(check))
}

/// One resource, as a spec project's record names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Resource {
    /// `Function`, `Workflow`, `Environment`, `Package`, `Secret`,
    /// `ConfigMap`, `HTTPTrigger`, `TimeTrigger`, `MessageQueueTrigger`,
    /// `CanaryConfig` (and, as a user only, `Run`).
    pub kind: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
}

fn default_namespace() -> String {
    pool_manager::secrets::DEFAULT_NAMESPACE.to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    resources: Vec<Resource>,
}

/// A resource of the set and what outside the set still uses it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Blocked {
    #[serde(flatten)]
    pub resource: Resource,
    pub used_by: Vec<Resource>,
}

fn res(kind: &str, namespace: &str, name: &str) -> Resource {
    Resource {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

async fn check(State(s): State<AppState>, body: Bytes) -> ApiResult<Json<serde_json::Value>> {
    let v: serde_json::Value = super::parse_json(&body)?;
    if !v.is_object() {
        // serde would read a list as the fields in order.
        return Err(Error::Invalid(format!(
            "send a JSON object ({{\"resources\": [...]}}), not {}",
            super::json_kind(&v)
        )));
    }
    let c: Check = super::parse_json(&body)?;
    for r in &c.resources {
        // A kind nothing is called would otherwise be "used by nothing":
        // a typo must not read as safe to delete.
        if !Kind::ALL.iter().any(|k| k.name() == r.kind) {
            let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            return Err(Error::Invalid(format!(
                "unknown kind {:?}: use one of {}",
                r.kind,
                kinds.join(", ")
            )));
        }
        pool_manager::resources::validate_name("namespace", &r.namespace)?;
    }
    let blocked = blocked(&s, &c.resources)?;
    Ok(Json(serde_json::json!({ "blocked": blocked })))
}

/// Each resource of `set` that something outside `set` uses, with its users.
fn blocked(s: &AppState, set: &[Resource]) -> Result<Vec<Blocked>, Error> {
    let mut out = Vec::new();
    for r in set {
        let used_by: Vec<Resource> = users(s, r)?
            .into_iter()
            .filter(|u| !set.contains(u))
            .collect();
        if !used_by.is_empty() {
            out.push(Blocked {
                resource: r.clone(),
                used_by,
            });
        }
    }
    Ok(out)
}

/// What uses `r` now: what its delete would be refused for.
fn users(s: &AppState, r: &Resource) -> Result<Vec<Resource>, Error> {
    let t = &s.triggers;
    let key = qualified(&r.namespace, &r.name);
    let default = pool_manager::secrets::DEFAULT_NAMESPACE;
    let mut out = Vec::new();
    // A function and a workflow are used alike: by triggers, workflows and runs.
    let (routes, timers, mqts, target) = match r.kind.as_str() {
        "Function" => (
            t.routes.targeting_function(&key)?,
            t.timers.targeting_function(&key)?,
            t.mqt.targeting_function(&key)?,
            key.clone(),
        ),
        "Workflow" => (
            t.routes
                .list()?
                .into_iter()
                .filter(|x| x.workflow.as_deref() == Some(r.name.as_str()))
                .collect(),
            t.timers.targeting_workflow(&r.name)?,
            t.mqt.targeting_workflow(&r.name)?,
            r.name.clone(),
        ),
        "Environment" => {
            for f in s.pool.functions()? {
                if f.env_key() == key {
                    out.push(res("Function", &f.namespace, &f.name));
                }
            }
            for p in s.pool.packages()? {
                if p.namespace == r.namespace && p.environment == r.name {
                    out.push(res("Package", &p.namespace, &p.name));
                }
            }
            return Ok(out);
        }
        "Package" => {
            for f in s.pool.functions()? {
                let uses = f
                    .package
                    .named()
                    .is_some_and(|p| p.namespace == r.namespace && p.name == r.name);
                if uses {
                    out.push(res("Function", &f.namespace, &f.name));
                }
            }
            return Ok(out);
        }
        kind @ ("Secret" | "ConfigMap") => {
            for f in s.pool.functions()? {
                let refs = if kind == "Secret" {
                    &f.secrets
                } else {
                    &f.configmaps
                };
                if refs
                    .iter()
                    .any(|o| o.namespace == r.namespace && o.name == r.name)
                {
                    out.push(res("Function", &f.namespace, &f.name));
                }
            }
            return Ok(out);
        }
        _ => return Ok(out),
    };
    out.extend(
        routes
            .iter()
            .map(|x| res("HTTPTrigger", &x.namespace, &x.name)),
    );
    out.extend(
        timers
            .iter()
            .map(|x| res("TimeTrigger", &x.namespace, &x.name)),
    );
    out.extend(
        mqts.iter()
            .map(|x| res("MessageQueueTrigger", &x.namespace, &x.name)),
    );
    out.extend(
        t.invoker
            .workflows_running(&target)?
            .iter()
            .map(|w| res("Workflow", default, w)),
    );
    out.extend(
        t.invoker
            .runs_running(&target)?
            .iter()
            .map(|id| res("Run", default, id)),
    );
    Ok(out)
}
