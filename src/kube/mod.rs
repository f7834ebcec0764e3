//! Fusion in a cluster, the control plane's side: the controller that
//! reconciles Fission's `fission.io/v1` custom resources into Fusion (through
//! the server's own API, as `fusion spec apply` does), Fission's
//! KubernetesWatchTriggers (a watch per trigger calling its function), and
//! what it says about
//! itself at `GET /v1/kubernetes/controller`. Built only with the `kubernetes`
//! feature.

mod controller;
mod status;
mod watch_trigger;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

pub use controller::start;

/// What the controller needs: the cluster, Fusion's API, and how often every
/// custom resource is applied again.
pub struct Settings {
    pub kube: ::kube::Client,
    /// Fusion's own API on loopback, with the admin token.
    pub fusion: crate::client::Client,
    /// Fusion's router on loopback, for KubernetesWatchTriggers' calls.
    pub router: crate::client::Client,
    /// How often each custom resource is applied again, reverting what was
    /// changed in Fusion outside it.
    pub resync: Duration,
    /// Where Fusion's function pods run (`--kube-namespace`): a
    /// KubernetesWatchTrigger there is refused.
    pub functions_namespace: String,
}

/// The last trouble of each kind's watch, for `GET /v1/kubernetes/controller`.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<BTreeMap<&'static str, Option<String>>>>);

impl Health {
    fn set(&self, kind: &'static str, error: Option<String>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(kind, error);
        }
    }

    fn view(&self) -> Value {
        let kinds: Vec<Value> = match self.0.lock() {
            Ok(m) => m
                .iter()
                .map(|(kind, error)| json!({"kind": kind, "error": error}))
                .collect(),
            Err(_) => Vec::new(),
        };
        json!({"kinds": kinds})
    }

    /// `GET /v1/kubernetes/controller`: each kind watched, with the last error
    /// of its watch or its reconciles (null once one succeeds).
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/kubernetes/controller", get(health))
            .with_state(self)
    }
}

async fn health(State(h): State<Health>) -> Json<Value> {
    Json(h.view())
}
