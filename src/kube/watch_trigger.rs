//! Fission's `KubernetesWatchTrigger`: while the custom resource exists, a
//! kube-rs `watcher` on the objects it names (pods, services, replication
//! controllers or jobs of its namespace, with its label selector) calls its
//! function (or workflow) through Fusion's router with each event, as
//! Fission's kubewatcher does: a POST of the object's JSON with
//! `X-Kubernetes-Event-Type` (ADDED, MODIFIED, DELETED) and
//! `X-Kubernetes-Object-Type` (Pod, Service, ...). Events are delivered in
//! order, one at a time. A relist (after a 410) sends only what changed
//! meanwhile: objects it had not seen are ADDED, changed ones MODIFIED, gone
//! ones DELETED.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use ::kube::api::{Api, ApiResource, DynamicObject, ResourceExt};
use ::kube::core::{GroupVersionKind, TypeMeta};
use ::kube::runtime::watcher::{self, watcher};
use ::kube::runtime::WatchStreamExt;
use futures_util::StreamExt;
use serde_json::Value;

use crate::client::Client;

/// What one trigger watches and calls.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    /// The namespace watched (the trigger's own).
    pub namespace: String,
    pub resource: ApiResource,
    /// A label selector (`k=v,k2=v2`), if any.
    pub selector: Option<String>,
    /// The function or workflow called, in the trigger's namespace.
    pub function: String,
}

impl WatchSpec {
    /// The router path that calls the function.
    fn path(&self) -> String {
        if self.namespace == "default" {
            format!("/fission-function/{}", self.function)
        } else {
            format!("/fission-function/{}/{}", self.namespace, self.function)
        }
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "calling {} with each event of {} in namespace {}",
            self.function, self.resource.plural, self.namespace
        );
        if let Some(sel) = &self.selector {
            s.push_str(&format!(" labelled {sel}"));
        }
        s
    }
}

/// The kinds Fission's kubewatcher watches, by `spec.type` (any case, with or
/// without a plural s).
fn resource_of(kind: &str) -> Option<ApiResource> {
    let lower = kind.to_ascii_lowercase();
    let (group, version, kind, plural) = match lower.trim_end_matches('s') {
        "pod" => ("", "v1", "Pod", "pods"),
        "service" => ("", "v1", "Service", "services"),
        "replicationcontroller" => ("", "v1", "ReplicationController", "replicationcontrollers"),
        "job" => ("batch", "v1", "Job", "jobs"),
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

/// Reads a trigger's spec; errors name the field, as spec files' do.
pub fn parse(trigger_namespace: &str, spec: &Value) -> Result<WatchSpec, String> {
    let str_at = |p: &str| {
        spec.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let namespace = match str_at("/namespace") {
        Some(ns) if ns != trigger_namespace => {
            return Err(format!(
            "spec.namespace: a trigger watches its own namespace ({trigger_namespace}), not {ns}"
        ))
        }
        _ => trigger_namespace.to_string(),
    };
    let kind = str_at("/type").ok_or("spec.type: a KubernetesWatchTrigger needs `type` (pod, service, replicationcontroller or job)")?;
    let resource = resource_of(kind).ok_or_else(|| {
        format!("spec.type: {kind:?} is not one of pod, service, replicationcontroller, job")
    })?;
    let selector = match spec.get("labelselector") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            let mut terms = BTreeMap::new();
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("spec.labelselector.{k}: a label value is a string"))?;
                terms.insert(k.clone(), v.to_string());
            }
            (!terms.is_empty()).then(|| {
                terms
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
        }
        Some(_) => return Err("spec.labelselector: a map of labels to values".into()),
    };
    let ref_type = str_at("/functionref/type").unwrap_or("name");
    if ref_type != "name" {
        return Err(format!(
            "spec.functionref.type: {ref_type:?} is not supported (only \"name\")"
        ));
    }
    let function = str_at("/functionref/name")
        .ok_or("spec.functionref: a KubernetesWatchTrigger needs `functionref.name`")?
        .to_string();
    Ok(WatchSpec {
        namespace,
        resource,
        selector,
        function,
    })
}

/// The watches running, one per trigger (`namespace/name`).
pub struct Watches {
    kube: ::kube::Client,
    router: Client,
    running: Mutex<HashMap<String, (WatchSpec, tokio::task::JoinHandle<()>)>>,
}

impl Watches {
    pub fn new(kube: ::kube::Client, router: Client) -> Watches {
        Watches {
            kube,
            router,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Runs the trigger's watch with this spec: kept when it already does,
    /// else (re)started.
    pub fn ensure(&self, key: &str, spec: WatchSpec) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        if let Some((current, task)) = running.get(key) {
            if *current == spec && !task.is_finished() {
                return;
            }
        }
        if let Some((_, old)) = running.remove(key) {
            old.abort();
        }
        tracing::info!(trigger = key, "{}", spec.describe());
        let task = tokio::spawn(watch(
            key.to_string(),
            spec.clone(),
            self.kube.clone(),
            self.router.clone(),
        ));
        running.insert(key.to_string(), (spec, task));
    }

    /// Stops the trigger's watch, if it runs.
    pub fn stop(&self, key: &str) {
        if let Ok(mut running) = self.running.lock() {
            if let Some((_, task)) = running.remove(key) {
                task.abort();
                tracing::info!(trigger = key, "watch stopped");
            }
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        if let Ok(running) = self.running.lock() {
            for (_, task) in running.values() {
                task.abort();
            }
        }
    }
}

/// What a relist or an event means for the function: None when nothing
/// changed since it was last told.
#[derive(Default)]
struct Seen {
    /// uid -> the object last sent.
    objects: HashMap<String, DynamicObject>,
    /// The uids of a relist under way.
    relist: Option<HashSet<String>>,
}

impl Seen {
    fn applied(&mut self, obj: DynamicObject) -> Option<(&'static str, DynamicObject)> {
        let uid = obj.uid().unwrap_or_else(|| obj.name_any());
        if let Some(r) = &mut self.relist {
            r.insert(uid.clone());
        }
        let event = match self.objects.get(&uid) {
            None => "ADDED",
            Some(old) if old.resource_version() == obj.resource_version() => return None,
            Some(_) => "MODIFIED",
        };
        self.objects.insert(uid, obj.clone());
        Some((event, obj))
    }

    fn deleted(&mut self, obj: DynamicObject) -> (&'static str, DynamicObject) {
        let uid = obj.uid().unwrap_or_else(|| obj.name_any());
        self.objects.remove(&uid);
        ("DELETED", obj)
    }

    /// A relist is over: what it no longer holds was deleted meanwhile.
    fn relisted(&mut self) -> Vec<(&'static str, DynamicObject)> {
        let Some(listed) = self.relist.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .objects
            .keys()
            .filter(|uid| !listed.contains(*uid))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|uid| self.objects.remove(&uid))
            .map(|o| ("DELETED", o))
            .collect()
    }
}

async fn watch(key: String, spec: WatchSpec, kube: ::kube::Client, router: Client) {
    let api: Api<DynamicObject> = Api::namespaced_with(kube, &spec.namespace, &spec.resource);
    let mut config = watcher::Config::default();
    if let Some(sel) = &spec.selector {
        config = config.labels(sel);
    }
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut seen = Seen::default();
    while let Some(event) = events.next().await {
        let out = match event {
            Ok(watcher::Event::Init) => {
                seen.relist = Some(HashSet::new());
                Vec::new()
            }
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                seen.applied(o).into_iter().collect()
            }
            Ok(watcher::Event::InitDone) => seen.relisted(),
            Ok(watcher::Event::Delete(o)) => vec![seen.deleted(o)],
            Err(e) => {
                tracing::warn!(trigger = %key, "watching {}: {e}", spec.resource.plural);
                Vec::new()
            }
        };
        for (event_type, object) in out {
            deliver(&key, &spec, &router, event_type, object).await;
        }
    }
}

/// Calls the function with one event; a failure is said, and the next event
/// goes on.
async fn deliver(
    key: &str,
    spec: &WatchSpec,
    router: &Client,
    event_type: &str,
    mut object: DynamicObject,
) {
    if object.types.is_none() {
        object.types = Some(TypeMeta {
            api_version: spec.resource.api_version.clone(),
            kind: spec.resource.kind.clone(),
        });
    }
    let mut body = serde_json::to_vec_pretty(&object).unwrap_or_default();
    body.push(b'\n');
    let req = router
        .request(reqwest::Method::POST, &spec.path())
        .header("content-type", "application/json")
        .header("X-Kubernetes-Event-Type", event_type)
        .header("X-Kubernetes-Object-Type", spec.resource.kind.as_str())
        .body(body);
    if let Err(e) = router.send(req).await {
        tracing::warn!(
            trigger = key,
            "calling {} with {event_type} {} {}: {e:#}",
            spec.function,
            spec.resource.kind,
            object.name_any()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_trigger_spec_is_read_with_fissions_field_names() {
        let s = parse(
            "default",
            &json!({"namespace": "default", "type": "POD", "labelselector": {"b": "2", "a": "1"},
                    "functionref": {"type": "name", "name": "f"}}),
        )
        .unwrap();
        assert_eq!(s.resource.plural, "pods");
        assert_eq!(s.selector.as_deref(), Some("a=1,b=2"));
        assert_eq!(s.path(), "/fission-function/f");
        let s = parse(
            "team",
            &json!({"type": "jobs", "functionref": {"name": "f"}}),
        )
        .unwrap();
        assert_eq!(s.resource.api_version, "batch/v1");
        assert_eq!(s.path(), "/fission-function/team/f");
    }

    #[test]
    fn mistakes_name_the_field() {
        let bad = |spec: Value| parse("default", &spec).unwrap_err();
        assert!(
            bad(json!({"type": "secret", "functionref": {"name": "f"}})).starts_with("spec.type:")
        );
        assert!(bad(json!({"type": "pod"})).starts_with("spec.functionref"));
        assert!(
            bad(json!({"namespace": "other", "type": "pod", "functionref": {"name": "f"}}))
                .starts_with("spec.namespace:")
        );
    }

    fn pod(uid: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": uid, "uid": uid, "resourceVersion": rv}}))
        .unwrap()
    }

    #[test]
    fn a_relist_sends_only_what_changed_meanwhile() {
        let mut seen = Seen {
            relist: Some(HashSet::new()),
            ..Seen::default()
        };
        assert_eq!(seen.applied(pod("a", "1")).unwrap().0, "ADDED");
        assert_eq!(seen.applied(pod("b", "1")).unwrap().0, "ADDED");
        assert!(seen.relisted().is_empty());
        assert_eq!(seen.applied(pod("a", "2")).unwrap().0, "MODIFIED");
        // Listed again: a unchanged, b gone, c new.
        seen.relist = Some(HashSet::new());
        assert!(seen.applied(pod("a", "2")).is_none());
        assert_eq!(seen.applied(pod("c", "1")).unwrap().0, "ADDED");
        let gone = seen.relisted();
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].0, gone[0].1.name_any().as_str()), ("DELETED", "b"));
    }
}
