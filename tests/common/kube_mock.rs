//! A mock Kubernetes API server on loopback, for tests that point the real
//! `fusion` binary at a cluster through a kubeconfig. It keeps objects of any
//! group/version/plural in memory as an API server does (resourceVersions,
//! generations, finalizers and deletionTimestamp, JSON and merge patches,
//! status subresources, list and watch with label selectors, 410 for a watch
//! from a compacted resourceVersion), records every request with the status it
//! answered, in order, and answers scripted faults (403, 409, 500...) for the
//! requests a test names. Test code drives it synchronously (create, replace,
//! delete objects; inject faults; read the request log).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// One request the mock received, with the status it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.query.is_empty() {
            let q: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, "?{}", q.join("&"))?;
        }
        write!(f, " -> {}", self.status)
    }
}

/// A scripted answer: requests with `method` whose path ends with
/// `path_suffix` (and whose query holds `query`, when given) get `status`,
/// `times` times.
struct Fault {
    method: String,
    path_suffix: String,
    query: Option<(String, String)>,
    status: u16,
    times: usize,
}

/// Where an object lives: `group/version` ("v1" for the core group), plural,
/// namespace, name.
type Key = (String, String, String, String);

#[derive(Clone)]
enum Msg {
    Event {
        gv: String,
        plural: String,
        namespace: String,
        kind: &'static str,
        rv: u64,
        object: Value,
    },
    /// Every open watch ends (as an API server restarting would do).
    CloseWatches,
}

struct State {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    /// Watches from a resourceVersion below this are answered 410 Gone.
    compacted: u64,
    /// Every event, for watches that start from an older resourceVersion.
    history: Vec<Msg>,
    faults: Vec<Fault>,
    seen: Vec<Seen>,
    next_uid: u64,
    /// Watches open now, by path.
    open_watches: BTreeMap<String, usize>,
}

pub struct KubeMock {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Msg>,
    pub url: String,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeMock {
    /// Starts the mock on a free loopback port and writes a kubeconfig for it.
    pub fn start() -> KubeMock {
        let state = Arc::new(Mutex::new(State {
            objects: BTreeMap::new(),
            rv: 100,
            compacted: 0,
            history: Vec::new(),
            faults: Vec::new(),
            seen: Vec::new(),
            next_uid: 1,
            open_watches: BTreeMap::new(),
        }));
        let (events, _) = broadcast::channel(4096);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock API");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let app_events = events.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(move |req: Request| {
                    let state = app_state.clone();
                    let events = app_events.clone();
                    async move { handle(state, events, req).await }
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {url}\n\
                 users:\n- name: mock\n  user: {{}}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\n    namespace: default\n\
                 current-context: mock\n"
            ),
        )
        .unwrap();
        KubeMock {
            state,
            events,
            url,
            kubeconfig,
            _dir: dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `KUBECONFIG` for the server under test.
    pub fn kubeconfig_env(&self) -> (&'static str, String) {
        ("KUBECONFIG", self.kubeconfig.display().to_string())
    }

    fn emit(&self, st: &mut State, msg: Msg) {
        st.history.push(msg.clone());
        let _ = self.events.send(msg);
    }

    /// Creates an object (`gv` like "fission.io/v1", `plural` like
    /// "functions"); answers it as stored.
    pub fn create(&self, gv: &str, plural: &str, object: Value) -> Value {
        let mut st = self.state.lock().unwrap();
        let out = create_in(&mut st, gv, plural, object).expect("create");
        let msg = event(gv, plural, "ADDED", &out);
        self.emit(&mut st, msg);
        out
    }

    /// The stored object, if any.
    pub fn get(&self, gv: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.objects.get(&key(gv, plural, ns, name)).cloned()
    }

    /// Replaces the object's spec (a user's `kubectl apply`): a new generation.
    pub fn set_spec(&self, gv: &str, plural: &str, ns: &str, name: &str, spec: Value) {
        let mut st = self.state.lock().unwrap();
        let k = key(gv, plural, ns, name);
        let mut obj = st.objects.get(&k).cloned().expect("object to change");
        obj["spec"] = spec;
        let out = store_changed(&mut st, k, obj);
        let msg = event(gv, plural, "MODIFIED", &out);
        self.emit(&mut st, msg);
    }

    /// Deletes the object as `kubectl delete` does: marked with a
    /// deletionTimestamp while it has finalizers, else gone.
    pub fn delete(&self, gv: &str, plural: &str, ns: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        let msg = delete_in(&mut st, &key(gv, plural, ns, name)).expect("object to delete");
        self.emit(&mut st, msg);
    }

    /// Forgets every event so far: a watch from an older resourceVersion is
    /// answered 410 Gone; and ends every open watch, so watchers come back.
    pub fn compact_and_close_watches(&self) {
        let mut st = self.state.lock().unwrap();
        st.compacted = st.rv + 1;
        st.history.clear();
        let _ = self.events.send(Msg::CloseWatches);
    }

    /// As `set_spec`, but with no event: a change made while no watch was open.
    pub fn set_spec_unseen(&self, gv: &str, plural: &str, ns: &str, name: &str, spec: Value) {
        let mut st = self.state.lock().unwrap();
        let k = key(gv, plural, ns, name);
        let mut obj = st.objects.get(&k).cloned().expect("object to change");
        obj["spec"] = spec;
        store_changed(&mut st, k, obj);
    }

    /// The next `times` requests with `method` whose path ends with
    /// `path_suffix` are answered `status` (a Kubernetes `Status`).
    pub fn fail(&self, method: &str, path_suffix: &str, status: u16, times: usize) {
        self.fail_query(method, path_suffix, None, status, times);
    }

    /// As `fail`, for requests whose query has `query` (e.g. ("watch", "true")).
    pub fn fail_query(
        &self,
        method: &str,
        path_suffix: &str,
        query: Option<(&str, &str)>,
        status: u16,
        times: usize,
    ) {
        self.state.lock().unwrap().faults.push(Fault {
            method: method.to_string(),
            path_suffix: path_suffix.to_string(),
            query: query.map(|(k, v)| (k.to_string(), v.to_string())),
            status,
            times,
        });
    }

    /// No more scripted faults.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests whose path starts with `prefix`, in order.
    pub fn requests_to(&self, prefix: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }

    /// How many watches on `path` are open now (a client that goes away
    /// closes its watch).
    pub fn open_watches(&self, path: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.open_watches.get(path).copied().unwrap_or(0)
    }

    /// The requests whose path is exactly `path`, in order.
    pub fn requests_at(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path == path)
            .collect()
    }
}

impl Drop for KubeMock {
    fn drop(&mut self) {
        let _ = self.events.send(Msg::CloseWatches);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn key(gv: &str, plural: &str, ns: &str, name: &str) -> Key {
    (gv.into(), plural.into(), ns.into(), name.into())
}

fn event(gv: &str, plural: &str, kind: &'static str, object: &Value) -> Msg {
    Msg::Event {
        gv: gv.into(),
        plural: plural.into(),
        namespace: object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .into(),
        kind,
        rv: object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        object: object.clone(),
    }
}

fn status_body(code: u16, message: &str) -> Value {
    let reason = match code {
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        _ => "InternalError",
    };
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn create_in(st: &mut State, gv: &str, plural: &str, mut object: Value) -> Result<Value, u16> {
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or(422u16)?
        .to_string();
    let k = key(gv, plural, &ns, &name);
    if st.objects.contains_key(&k) {
        return Err(409);
    }
    st.rv += 1;
    let uid = format!("00000000-0000-4000-8000-{:012}", st.next_uid);
    st.next_uid += 1;
    let meta = &mut object["metadata"];
    meta["namespace"] = json!(ns);
    meta["uid"] = json!(uid);
    meta["resourceVersion"] = json!(st.rv.to_string());
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    st.objects.insert(k, object.clone());
    Ok(object)
}

/// Stores a changed object: a new resourceVersion, and a new generation when
/// its spec changed. A deleted object whose last finalizer went is removed.
fn store_changed(st: &mut State, k: Key, mut obj: Value) -> Value {
    let old = st.objects.get(&k).cloned().unwrap_or(Value::Null);
    st.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    obj["metadata"]["generation"] = json!(if old["spec"] != obj["spec"] {
        generation + 1
    } else {
        generation
    });
    st.objects.insert(k, obj.clone());
    obj
}

fn delete_in(st: &mut State, k: &Key) -> Result<Msg, u16> {
    let mut obj = st.objects.get(k).cloned().ok_or(404u16)?;
    let has_finalizers = obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if obj["metadata"]["deletionTimestamp"].is_null() {
            obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
        }
        let out = store_changed(st, k.clone(), obj);
        Ok(event(&k.0, &k.1, "MODIFIED", &out))
    } else {
        st.objects.remove(k);
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        Ok(event(&k.0, &k.1, "DELETED", &obj))
    }
}

/// Applies a patch as an API server does; `status` patches only the status.
fn patch_in(
    st: &mut State,
    k: &Key,
    content_type: &str,
    patch: &Value,
    status_only: bool,
) -> Result<Msg, (u16, String)> {
    let old = st
        .objects
        .get(k)
        .cloned()
        .ok_or((404, format!("{} {:?} not found", k.1, k.3)))?;
    let mut new = old.clone();
    if content_type.starts_with("application/json-patch+json") {
        // A `test` of a missing path against null passes, as in Kubernetes.
        let ops: Vec<Value> = patch
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|op| {
                let missing = json_pointer_missing(&new, op["path"].as_str().unwrap_or(""));
                !(op["op"] == "test" && op["value"].is_null() && missing)
            })
            .collect();
        let ops: json_patch::Patch = serde_json::from_value(Value::Array(ops))
            .map_err(|e| (400, format!("bad JSON patch: {e}")))?;
        json_patch::patch(&mut new, &ops).map_err(|e| (422, format!("{e}")))?;
    } else {
        json_patch::merge(&mut new, patch);
    }
    if status_only {
        let status = new["status"].clone();
        new = old.clone();
        new["status"] = status;
    } else {
        new["status"] = old["status"].clone();
        if new["status"].is_null() {
            new.as_object_mut().unwrap().remove("status");
        }
    }
    let deleting = !new["metadata"]["deletionTimestamp"].is_null();
    let finalizers_left = new["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if deleting && !finalizers_left {
        st.objects.insert(k.clone(), new);
        return delete_in(st, k).map_err(|c| (c, "gone".into()));
    }
    let out = store_changed(st, k.clone(), new);
    Ok(event(&k.0, &k.1, "MODIFIED", &out))
}

fn json_pointer_missing(doc: &Value, pointer: &str) -> bool {
    doc.pointer(pointer).is_none()
}

fn matches_selector(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let v = v.trim_start_matches('=');
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Splits `/api/v1/...` or `/apis/GROUP/VERSION/...` into the group/version
/// and the rest's segments.
fn split_path(path: &str) -> Option<(String, Vec<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", v, rest @ ..] => {
            Some((v.to_string(), rest.iter().map(|s| s.to_string()).collect()))
        }
        ["apis", g, v, rest @ ..] => Some((
            format!("{g}/{v}"),
            rest.iter().map(|s| s.to_string()).collect(),
        )),
        _ => None,
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Msg>,
    req: Request,
) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> =
        req.uri().query().map(url_decode_pairs).unwrap_or_default();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut seen = Seen {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
        status: 0,
    };
    let mut st = state.lock().unwrap();
    // A scripted fault first.
    if let Some(f) = st.faults.iter_mut().find(|f| {
        f.times > 0
            && f.method == method
            && path.ends_with(&f.path_suffix)
            && f.query
                .as_ref()
                .is_none_or(|(k, v)| query.get(k) == Some(v))
    }) {
        f.times -= 1;
        let status = f.status;
        seen.status = status;
        st.seen.push(seen);
        return json_response(status, &status_body(status, "scripted by the test"));
    }
    let Some((gv, segs)) = split_path(&path) else {
        seen.status = 404;
        st.seen.push(seen);
        return json_response(404, &status_body(404, "not an API path"));
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (ns, plural, name, sub) = match segs.as_slice() {
        [plural] => (None, *plural, None, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        _ => {
            seen.status = 404;
            st.seen.push(seen);
            return json_response(404, &status_body(404, "unknown path"));
        }
    };
    let answer = |st: &mut State, seen: Seen, status: u16, body: Value| {
        let mut seen = seen;
        seen.status = status;
        st.seen.push(seen);
        json_response(status, &body)
    };
    match (method.as_str(), name) {
        ("GET", None) if seen.is_watch() => {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let selector = query.get("labelSelector").cloned();
            seen.status = 200;
            st.seen.push(seen);
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
            let line = |kind: &str, object: &Value| {
                let mut l = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
                l.push(b'\n');
                Ok(bytes::Bytes::from(l))
            };
            if from > 0 && from < st.compacted {
                let _ = tx.try_send(line("ERROR", &status_body(410, "too old resource version")));
                drop(tx);
            } else {
                let wanted = {
                    let gv = gv.clone();
                    let plural = plural.to_string();
                    let ns = ns.map(str::to_string);
                    move |m: &Msg| -> Option<(&'static str, Value)> {
                        match m {
                            Msg::Event {
                                gv: g,
                                plural: p,
                                namespace,
                                kind,
                                rv,
                                object,
                            } if *g == gv
                                && *p == plural
                                && ns.as_ref().is_none_or(|n| n == namespace)
                                && *rv > from
                                && matches_selector(object, selector.as_ref()) =>
                            {
                                Some((kind, object.clone()))
                            }
                            _ => None,
                        }
                    }
                };
                let past: Vec<(&'static str, Value)> =
                    st.history.iter().filter_map(&wanted).collect();
                let mut live = events.subscribe();
                *st.open_watches.entry(path.clone()).or_insert(0) += 1;
                let state = state.clone();
                let watch_path = path.clone();
                tokio::spawn(async move {
                    'stream: {
                        for (kind, object) in past {
                            if tx.send(line(kind, &object)).await.is_err() {
                                break 'stream;
                            }
                        }
                        loop {
                            let m = tokio::select! {
                                _ = tx.closed() => break 'stream,
                                m = live.recv() => m,
                            };
                            match m {
                                Ok(Msg::CloseWatches) | Err(_) => break 'stream,
                                Ok(m) => {
                                    if let Some((kind, object)) = wanted(&m) {
                                        if tx.send(line(kind, &object)).await.is_err() {
                                            break 'stream;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    let mut st = state.lock().unwrap();
                    if let Some(n) = st.open_watches.get_mut(&watch_path) {
                        *n = n.saturating_sub(1);
                    }
                });
            }
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .unwrap()
        }
        ("GET", None) => {
            let selector = query.get("labelSelector");
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((g, p, n, _), o)| {
                    *g == gv
                        && p == plural
                        && ns.is_none_or(|ns| ns == n)
                        && matches_selector(o, selector)
                })
                .map(|(_, o)| o.clone())
                .collect();
            let rv = st.rv.to_string();
            answer(
                &mut st,
                seen,
                200,
                json!({"kind": "List", "apiVersion": gv, "metadata": {"resourceVersion": rv}, "items": items}),
            )
        }
        ("POST", None) => {
            let mut object = body.clone();
            if let Some(ns) = ns {
                object["metadata"]["namespace"] = json!(ns);
            }
            match create_in(&mut st, &gv, plural, object) {
                Ok(out) => {
                    let msg = event(&gv, plural, "ADDED", &out);
                    st.history.push(msg.clone());
                    let _ = events.send(msg);
                    answer(&mut st, seen, 201, out)
                }
                Err(code) => answer(&mut st, seen, code, status_body(code, "cannot create")),
            }
        }
        ("GET", Some(name)) => {
            let k = key(&gv, plural, ns.unwrap_or(""), name);
            match st.objects.get(&k).cloned() {
                Some(o) => answer(&mut st, seen, 200, o),
                None => answer(&mut st, seen, 404, status_body(404, "not found")),
            }
        }
        ("PATCH", Some(name)) => {
            let k = key(&gv, plural, ns.unwrap_or(""), name);
            match patch_in(&mut st, &k, &content_type, &body, sub == Some("status")) {
                Ok(msg) => {
                    let out = match &msg {
                        Msg::Event { object, .. } => object.clone(),
                        Msg::CloseWatches => Value::Null,
                    };
                    st.history.push(msg.clone());
                    let _ = events.send(msg);
                    answer(&mut st, seen, 200, out)
                }
                Err((code, m)) => answer(&mut st, seen, code, status_body(code, &m)),
            }
        }
        ("DELETE", Some(name)) => {
            let k = key(&gv, plural, ns.unwrap_or(""), name);
            match delete_in(&mut st, &k) {
                Ok(msg) => {
                    let out = match &msg {
                        Msg::Event { object, .. } => object.clone(),
                        Msg::CloseWatches => Value::Null,
                    };
                    st.history.push(msg.clone());
                    let _ = events.send(msg);
                    answer(&mut st, seen, 200, out)
                }
                Err(code) => answer(&mut st, seen, code, status_body(code, "not found")),
            }
        }
        _ => answer(
            &mut st,
            seen,
            405,
            status_body(405, "not supported by the mock"),
        ),
    }
}

/// `a=b&c=d` with percent-decoding.
fn url_decode_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A recording proxy on loopback in front of an HTTP API (for the controller
/// under test: Fusion's own API), so that a test sees every request the
/// controller sends there, in order, and can have some answered with a
/// scripted error instead of being forwarded. The upstream is set once the
/// server behind it listens; until then every request is answered 502.
pub struct RecordingProxy {
    state: Arc<Mutex<ProxyState>>,
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyState {
    upstream: Option<String>,
    faults: Vec<Fault>,
    seen: Vec<Seen>,
}

impl RecordingProxy {
    pub fn start() -> RecordingProxy {
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let http = reqwest::Client::new();
                let app = axum::Router::new().fallback(move |req: Request| {
                    let state = app_state.clone();
                    let http = http.clone();
                    async move { forward(state, http, req).await }
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        RecordingProxy {
            state,
            url: format!("http://{addr}"),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Where requests go from now on (e.g. `http://127.0.0.1:PORT`).
    pub fn set_upstream(&self, url: &str) {
        self.state.lock().unwrap().upstream = Some(url.trim_end_matches('/').to_string());
    }

    /// The next `times` requests with `method` whose path ends with
    /// `path_suffix` are answered `status` with a JSON error, not forwarded.
    pub fn fail(&self, method: &str, path_suffix: &str, status: u16, times: usize) {
        self.state.lock().unwrap().faults.push(Fault {
            method: method.to_string(),
            path_suffix: path_suffix.to_string(),
            query: None,
            status,
            times,
        });
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Every request so far, in order, with the status it was answered.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Every request so far as `METHOD /path -> status`, in order.
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(|s| s.to_string()).collect()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn forward(state: Arc<Mutex<ProxyState>>, http: reqwest::Client, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().map(str::to_string);
    let query: BTreeMap<String, String> = raw_query
        .as_deref()
        .map(url_decode_pairs)
        .unwrap_or_default();
    let headers = req.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let mut seen = Seen {
        method: method.to_string(),
        path: path.clone(),
        query,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        status: 0,
    };
    let upstream = {
        let mut st = state.lock().unwrap();
        let fault = st
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method.as_str() && path.ends_with(&f.path_suffix));
        if let Some(f) = fault {
            f.times -= 1;
            let status = f.status;
            seen.status = status;
            st.seen.push(seen);
            return json_response(
                status,
                &json!({"error": {"code": "injected", "message": format!("a fault the test injected ({status})")}}),
            );
        }
        st.upstream.clone()
    };
    let Some(upstream) = upstream else {
        seen.status = 502;
        state.lock().unwrap().seen.push(seen);
        return json_response(
            502,
            &json!({"error": {"code": "no_upstream", "message": "no upstream yet"}}),
        );
    };
    let mut url = format!("{upstream}{path}");
    if let Some(q) = raw_query {
        url = format!("{url}?{q}");
    }
    let mut out = http.request(method, url).body(bytes);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    let (status, ctype, body) = match out.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            (status, ctype, r.bytes().await.unwrap_or_default())
        }
        Err(e) => (
            502,
            "text/plain".to_string(),
            e.to_string().into_bytes().into(),
        ),
    };
    seen.status = status;
    state.lock().unwrap().seen.push(seen);
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Body::from(body))
        .unwrap()
}
