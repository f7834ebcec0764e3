//! The pod backend against a mock API server that plays scenarios (kube-rs's
//! `mock_tests.rs` way): every request the backend sends is asserted in order
//! (method, path, query, the body fields that matter) and answered by the test.
//! Requests go in two lanes, each in its own order: the watch's lists (paged,
//! so with a `limit`) and watches, and everything else (create, patch, delete,
//! cleanup's list, which is not paged); the
//! test feeds watch events through an open watch stream. Loopback servers play
//! the fetcher where a test needs one (pods' IP is 127.0.0.1, ports configured).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use pool_manager::PoolManager;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use pool_manager::backend::{Address, Backend, Exit, Handle, Staging, StartRequest};
use pool_manager::delivery::Credentials;
use pool_manager::{Environment, PackageKind, PackageRef};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{PodBackend, PodConfig};

type MockBody = UnsyncBoxBody<Bytes, Infallible>;

/// One request the backend sent, waiting for its answer.
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
    respond: tower_test::mock::SendResponse<Response<MockBody>>,
}

impl Call {
    fn answer(self, status: u16, body: Value) {
        let resp = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
            .unwrap();
        self.respond.send_response(resp);
    }

    /// A Kubernetes `Status` failure.
    fn fail(self, code: u16, reason: &str, message: &str) {
        self.answer(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": message, "reason": reason, "code": code}),
        );
    }

    /// Opens a watch stream the test writes events to.
    fn stream(self) -> mpsc::UnboundedSender<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let resp = Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(events).boxed_unsync())
            .unwrap();
        self.respond.send_response(resp);
        tx
    }
}

/// The mock API server: its lanes of requests (pods' logs in a third, which
/// only the test of logs looks at).
struct Cluster {
    api: mpsc::UnboundedReceiver<Call>,
    watch: mpsc::UnboundedReceiver<Call>,
    logs: mpsc::UnboundedReceiver<Call>,
}

/// How long a test waits for the backend's next request before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

async fn next(lane: &mut mpsc::UnboundedReceiver<Call>, what: &str) -> Call {
    tokio::time::timeout(PATIENCE, lane.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} request came"))
        .unwrap_or_else(|| panic!("the client went away before {what}"))
}

impl Cluster {
    /// The next non-watch request, which must be `method` on `path`.
    async fn expect(&mut self, method: &str, path: &str) -> Call {
        let call = next(&mut self.api, path).await;
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            (method, path),
            "query {}",
            call.query
        );
        call
    }

    /// The watch's list (answered with `pods` at `version`) and the watch that
    /// follows from that version: its stream.
    async fn open_watch(&mut self, pods: Vec<Value>, version: &str) -> Watch {
        let list = next(&mut self.watch, "watch list").await;
        assert_eq!(list.method, "GET");
        assert_eq!(list.path, PODS);
        assert!(
            list.query
                .contains("labelSelector=fusion.dev%2Fpool%3Dfusion")
                && !list.query.contains("watch=true"),
            "{}",
            list.query
        );
        list.answer(
            200,
            json!({"kind": "PodList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": version}, "items": pods}),
        );
        let watch = next(&mut self.watch, "watch").await;
        assert!(
            watch.query.contains("watch=true")
                && watch.query.contains(&format!("resourceVersion={version}"))
                && watch
                    .query
                    .contains("labelSelector=fusion.dev%2Fpool%3Dfusion"),
            "{}",
            watch.query
        );
        Watch { tx: watch.stream() }
    }
}

struct Watch {
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Watch {
    fn send(&self, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.tx.send(Bytes::from(line)).expect("the watch is open");
    }
}

const NS: &str = "fusion-functions";
const PODS: &str = "/api/v1/namespaces/fusion-functions/pods";

/// A mock API server: a client of it, and a task that reads each request and
/// hands it, to be answered, to the lane `route` picks (none: the mock stops).
fn mock_api(
    route: impl Fn(&Call) -> Option<mpsc::UnboundedSender<Call>> + Send + 'static,
) -> kube::Client {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                respond,
            };
            let Some(lane) = route(&call) else { return };
            if lane.send(call).is_err() {
                return;
            }
        }
    });
    kube::Client::new(service, "default")
}

/// A backend on the mock, and the mock's lanes.
fn setup(cfg: PodConfig) -> (Arc<PodBackend>, Cluster, Arc<Credentials>) {
    let (api_tx, api) = mpsc::unbounded_channel();
    let (watch_tx, watch) = mpsc::unbounded_channel();
    let (logs_tx, logs) = mpsc::unbounded_channel();
    let client = mock_api(move |call| {
        let watching = call.method == "GET"
            && (call.query.contains("watch=true") || call.query.contains("limit="));
        Some(if call.path.ends_with("/log") {
            logs_tx.clone()
        } else if watching {
            watch_tx.clone()
        } else {
            api_tx.clone()
        })
    });
    let credentials = Arc::new(Credentials::default());
    let backend = PodBackend::new(client, cfg, credentials.clone());
    (Arc::new(backend), Cluster { api, watch, logs }, credentials)
}

/// A pool manager on `backend`, starting (it lists the pool's pods first, so
/// the test answers the mock while it starts), and its data directory.
fn start_pool(
    backend: Arc<PodBackend>,
) -> (
    tokio::task::JoinHandle<pool_manager::Result<PoolManager>>,
    tempfile::TempDir,
) {
    let data = tempfile::tempdir().unwrap();
    let db = sled::Config::new().temporary(true).open().unwrap();
    let pool_cfg = pool_manager::PoolConfig {
        data_dir: data.path().to_path_buf(),
        backend,
        specialize_timeout: Duration::from_secs(10),
        lease_wait: Duration::from_secs(10),
        body_limit: 1 << 20,
        packages: Default::default(),
        reap_interval: Duration::from_secs(3600),
        build_timeout: Duration::from_secs(60),
        build_disk_mb: 4096,
        prune_interval: None,
    };
    let starting = tokio::spawn(async move { PoolManager::start(&db, pool_cfg).await });
    (starting, data)
}

fn config() -> PodConfig {
    let mut cfg = PodConfig::new(NS, "http://fusion.fusion.svc:8889");
    cfg.watch_backoff = false;
    cfg.start_timeout = PATIENCE;
    cfg.fetch_timeout = PATIENCE;
    cfg.delete_backoff = Duration::from_millis(1);
    // No sweep of unknown pods within a test unless it asks for one.
    cfg.sweep_grace = Duration::from_secs(3600);
    cfg
}

fn env(name: &str) -> Environment {
    serde_json::from_value(json!({
        "name": name, "runtime": "python", "poolsize": 1,
        "memory_mb": 256, "cpu_millis": 500,
    }))
    .unwrap()
}

fn start(
    backend: &Arc<PodBackend>,
    env: Environment,
) -> tokio::task::JoinHandle<pool_manager::Result<Arc<dyn Handle>>> {
    start_logging(backend, env, Arc::new(|_, _| {}))
}

fn start_logging(
    backend: &Arc<PodBackend>,
    env: Environment,
    logs: pool_manager::backend::LogSink,
) -> tokio::task::JoinHandle<pool_manager::Result<Arc<dyn Handle>>> {
    let backend = backend.clone();
    tokio::spawn(async move {
        backend
            .start(StartRequest {
                id: 1,
                env,
                logs,
                stopping: tokio::sync::watch::channel(false).1,
            })
            .await
    })
}

/// The pod as the API server has it: what was created, with `status`.
fn with_status(created: &Value, status: Value, version: u32) -> Value {
    let mut pod = created.clone();
    pod["metadata"]["resourceVersion"] = json!(version.to_string());
    pod["metadata"]["uid"] = json!("uid-1");
    pod["status"] = status;
    pod
}

fn ready(ip: &str) -> Value {
    json!({"phase": "Running", "podIP": ip,
           "conditions": [{"type": "Ready", "status": "True"}]})
}

const SECRETS: &str = "/api/v1/namespaces/fusion-functions/secrets";

/// The Secret that follows a pod's create (answered): the pod's credential.
async fn secret_of(cluster: &mut Cluster, pod: &Value) -> String {
    let create = cluster.expect("POST", SECRETS).await;
    let secret = create.body.clone();
    assert_eq!(secret["metadata"]["name"], pod["metadata"]["name"]);
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].as_str(),
            owner["name"].as_str(),
            owner["uid"].as_str()
        ),
        (Some("Pod"), pod["metadata"]["name"].as_str(), Some("uid-1")),
        "the secret goes with its pod"
    );
    create.answer(201, secret.clone());
    secret["stringData"]["token"]
        .as_str()
        .expect("the credential")
        .to_string()
}

/// A pod created and made ready: its body as created, and its handle.
async fn started_pod(
    backend: &Arc<PodBackend>,
    cluster: &mut Cluster,
    watch: &Watch,
    env: Environment,
    version: u32,
) -> (Value, Arc<dyn Handle>) {
    let (pod, handle, _) = started_pod_credential(backend, cluster, watch, env, version).await;
    (pod, handle)
}

/// `started_pod`, and the pod's credential (from its Secret).
async fn started_pod_credential(
    backend: &Arc<PodBackend>,
    cluster: &mut Cluster,
    watch: &Watch,
    env: Environment,
    version: u32,
) -> (Value, Arc<dyn Handle>, String) {
    let starting = start(backend, env);
    let create = cluster.expect("POST", PODS).await;
    let pod = create.body.clone();
    create.answer(201, with_status(&pod, json!({"phase": "Pending"}), version));
    let credential = secret_of(cluster, &pod).await;
    watch.send(
        "MODIFIED",
        with_status(&pod, ready("127.0.0.1"), version + 1),
    );
    let handle = starting.await.unwrap().expect("the pod started");
    // The credential is the Secret's, never in the pod.
    assert!(!pod.to_string().contains(&credential), "{pod}");
    (pod, handle, credential)
}

/// `f`'s output, failing the test past `PATIENCE`.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("the test waited past its deadline")
}

/// Why the instance ended, waiting for it (failing the test past `PATIENCE`).
async fn exit_of(handle: &Arc<dyn Handle>) -> Exit {
    let mut exit = handle.exit();
    let ended = tokio::time::timeout(PATIENCE, exit.wait_for(Option::is_some))
        .await
        .expect("the instance did not end")
        .expect("the backend dropped the instance");
    ended.clone().expect("ended")
}

fn name_of(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap().to_string()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_var(container: &Value, name: &str) -> String {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no env {name}"))
        .to_string()
}

#[tokio::test]
async fn a_new_pod_carries_the_labels_images_resources_and_owner() {
    let mut cfg = config();
    cfg.owner = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "fusion".into(),
            uid: "ss-uid".into(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        },
    );
    let (backend, mut cluster, credentials) = setup(cfg);
    let _watch = cluster.open_watch(vec![], "1").await;
    let _starting = start(&backend, env("py"));
    let create = cluster.expect("POST", PODS).await;
    let pod = &create.body.clone();
    create.answer(201, with_status(pod, json!({"phase": "Pending"}), 2));
    // The credential: in a Secret created right after the pod and owned by it.
    let credential = secret_of(&mut cluster, pod).await;
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["fusion.dev/pool"], "fusion");
    assert_eq!(labels["fusion.dev/env"], "py");
    assert_eq!(labels["fusion.dev/env-namespace"], "default");
    assert_eq!(labels["fusion.dev/state"], "generic");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "fusion");
    assert_eq!(labels["fusion.dev/env-digest"].as_str().unwrap().len(), 16);
    assert!(name_of(pod).starts_with("fusion-py-"), "{}", name_of(pod));
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "ss-uid");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let runtime = container(pod, "runtime");
    assert_eq!(runtime["image"], "fusion/python:0.1.0");
    assert_eq!(runtime["ports"][0]["containerPort"], 8888);
    assert_eq!(runtime["readinessProbe"]["tcpSocket"]["port"], 8888);
    for side in ["requests", "limits"] {
        assert_eq!(runtime["resources"][side]["memory"], "256Mi");
        assert_eq!(runtime["resources"][side]["cpu"], "500m");
    }
    let fetcher = container(pod, "fetcher");
    assert_eq!(fetcher["image"], "fusion/fusion:0.1.0");
    assert_eq!(
        fetcher["command"],
        json!(["/usr/local/bin/fusion", "fetcher"])
    );
    assert_eq!(
        env_var(fetcher, "FUSION_API_URL"),
        "http://fusion.fusion.svc:8889"
    );
    for c in [runtime, fetcher] {
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/userfunc");
        assert_eq!(c["volumeMounts"][1]["mountPath"], "/secrets");
        assert_eq!(c["volumeMounts"][2]["mountPath"], "/configs");
    }
    assert_eq!(
        runtime["volumeMounts"][1]["readOnly"], true,
        "the runtime may not write secrets"
    );
    assert!(pod["spec"]["volumes"][0]["emptyDir"].is_object());
    // The Secret is mounted as a file in the fetcher only; the pod spec does
    // not hold the credential (anyone who may read pods would see it).
    assert_eq!(
        pod["spec"]["volumes"][3]["secret"]["secretName"],
        name_of(pod)
    );
    assert_eq!(fetcher["volumeMounts"][3]["name"], "credential");
    assert_eq!(fetcher["volumeMounts"][3]["readOnly"], true);
    assert_eq!(
        env_var(fetcher, "FUSION_FETCH_TOKEN_FILE"),
        format!(
            "{}/token",
            fetcher["volumeMounts"][3]["mountPath"].as_str().unwrap()
        )
    );
    assert!(
        runtime["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != "credential"),
        "the runtime sees the credential"
    );
    assert!(!pod.to_string().contains(&credential), "{pod}");
    // Fusion keeps only the credential's digest, on the pod and in memory.
    assert_eq!(
        pod["metadata"]["annotations"]["fusion.dev/fetch-credential-sha256"],
        pool_manager::delivery::credential_digest(&credential)
    );
    assert!(credentials
        .check(Some(&credential), &"a".repeat(64))
        .is_err());
}

#[tokio::test]
async fn start_resolves_with_the_address_once_the_watch_sees_the_pod_ready() {
    let (backend, mut cluster, _) = setup(config());
    let watch = cluster.open_watch(vec![], "1").await;
    // Another pod, whose end (a DELETE the test sees) marks where the watch is.
    let (marker_pod, _marker) = started_pod(&backend, &mut cluster, &watch, env("py"), 2).await;
    let starting = start(&backend, env("py"));
    let create = cluster.expect("POST", PODS).await;
    let pod = create.body.clone();
    create.answer(201, with_status(&pod, json!({"phase": "Pending"}), 4));
    secret_of(&mut cluster, &pod).await;
    // Scheduled and running, not ready yet: start waits.
    watch.send(
        "MODIFIED",
        with_status(&pod, json!({"phase": "Running", "podIP": "127.0.0.1"}), 5),
    );
    watch.send(
        "MODIFIED",
        with_status(
            &marker_pod,
            json!({"phase": "Failed", "reason": "Evicted"}),
            6,
        ),
    );
    // Its remains are deleted: the watch has handled the event before.
    cluster
        .expect("DELETE", &format!("{PODS}/{}", name_of(&marker_pod)))
        .await
        .answer(200, with_status(&marker_pod, json!({"phase": "Failed"}), 7));
    let state = super::lock(&backend.shared.pods)[&name_of(&pod)].clone();
    assert_eq!(*state.ready.borrow(), None, "ready before the pod was");
    assert!(
        !starting.is_finished(),
        "start resolved before the pod was ready"
    );
    watch.send("MODIFIED", with_status(&pod, ready("127.0.0.1"), 8));
    let handle = starting.await.unwrap().unwrap();
    assert_eq!(
        handle.address(),
        &Address::Tcp("127.0.0.1:8888".parse().unwrap())
    );
    assert!(handle.exit().borrow().is_none());
}

#[tokio::test]
async fn a_name_conflict_on_create_is_retried_under_another_name() {
    let (backend, mut cluster, _) = setup(config());
    let watch = cluster.open_watch(vec![], "1").await;
    let starting = start(&backend, env("py"));
    let first = cluster.expect("POST", PODS).await;
    let taken = name_of(&first.body);
    first.fail(
        409,
        "AlreadyExists",
        &format!("pods \"{taken}\" already exists"),
    );
    let second = cluster.expect("POST", PODS).await;
    let pod = second.body.clone();
    assert_ne!(name_of(&pod), taken);
    second.answer(201, with_status(&pod, json!({"phase": "Pending"}), 2));
    secret_of(&mut cluster, &pod).await;
    watch.send("MODIFIED", with_status(&pod, ready("127.0.0.1"), 3));
    starting
        .await
        .unwrap()
        .expect("started under the second name");
}

#[tokio::test]
async fn forbidden_pod_creation_says_what_to_grant() {
    let (backend, mut cluster, _) = setup(config());
    let _watch = cluster.open_watch(vec![], "1").await;
    let starting = start(&backend, env("py"));
    cluster.expect("POST", PODS).await.fail(
        403,
        "Forbidden",
        "pods is forbidden: User \"system:serviceaccount:fusion:fusion\" cannot create resource \"pods\"",
    );
    let e = starting.await.unwrap().err().expect("refused");
    let msg = e.to_string();
    assert_eq!(e.code(), "unavailable");
    assert!(
        msg.contains("may not create pods in namespace fusion-functions (403 Forbidden)")
            && msg.contains("deploy/kubernetes/rbac.yaml"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_pod_deleted_or_killed_under_the_pool_reports_why_it_ended() {
    let (backend, mut cluster, _) = setup(config());
    let watch = cluster.open_watch(vec![], "1").await;
    let (pod_a, a) = started_pod(&backend, &mut cluster, &watch, env("py"), 2).await;
    let (pod_b, b) = started_pod(&backend, &mut cluster, &watch, env("py"), 4).await;
    // Someone deletes pod a.
    watch.send("DELETED", with_status(&pod_a, ready("127.0.0.1"), 10));
    let ended = Some(exit_of(&a).await);
    assert_eq!(ended, Some(Exit::Vanished("its pod was deleted".into())));
    // Pod b's runtime is killed for its memory: reported, and the pod goes.
    let mut oom = with_status(&pod_b, ready("127.0.0.1"), 11);
    oom["status"]["containerStatuses"] = json!([{
        "name": "runtime", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    }]);
    watch.send("MODIFIED", oom);
    let ended = Some(exit_of(&b).await);
    assert_eq!(ended, Some(Exit::OutOfMemory));
    let delete = cluster
        .expect("DELETE", &format!("{PODS}/{}", name_of(&pod_b)))
        .await;
    delete.answer(200, with_status(&pod_b, json!({"phase": "Failed"}), 12));
}

#[tokio::test]
async fn stopping_an_instance_deletes_its_pod() {
    let (backend, mut cluster, _) = setup(config());
    let watch = cluster.open_watch(vec![], "1").await;
    let (pod, handle) = started_pod(&backend, &mut cluster, &watch, env("py"), 2).await;
    handle.stop();
    let delete = cluster
        .expect("DELETE", &format!("{PODS}/{}", name_of(&pod)))
        .await;
    assert!(
        handle.exit().borrow().is_none(),
        "stopped before the delete"
    );
    delete.answer(200, with_status(&pod, ready("127.0.0.1"), 3));
    let ended = Some(exit_of(&handle).await);
    assert_eq!(ended, Some(Exit::Stopped));
}

#[tokio::test]
async fn a_watch_restarted_from_a_stale_version_relists_and_finds_what_went() {
    let (backend, mut cluster, _) = setup(config());
    let watch = cluster.open_watch(vec![], "1").await;
    let (pod_a, a) = started_pod(&backend, &mut cluster, &watch, env("py"), 2).await;
    let (_pod_b, b) = started_pod(&backend, &mut cluster, &watch, env("py"), 4).await;
    // The watch's version is too old: 410 Gone; the watcher lists again, and
    // pod b was deleted meanwhile.
    watch.send(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "too old resource version: 5 (100)", "reason": "Expired", "code": 410}),
    );
    let _watch = cluster
        .open_watch(vec![with_status(&pod_a, ready("127.0.0.1"), 100)], "101")
        .await;
    let ended = Some(exit_of(&b).await);
    assert_eq!(ended, Some(Exit::Vanished("its pod was deleted".into())));
    assert!(a.exit().borrow().is_none(), "pod a is still there");
}

#[tokio::test]
async fn specializing_has_the_fetcher_pull_exactly_the_staged_package() {
    // A loopback fetcher: it checks, while it is being called, that the pod's
    // credential may fetch this package and no other.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Value>();
    let (credential_tx, credential_rx) = tokio::sync::watch::channel(String::new());
    let mut cfg = config();
    cfg.fetcher_port = port;
    let (backend, mut cluster, credentials) = setup(cfg);
    let checker = credentials.clone();
    let fetcher = axum::Router::new().route(
        "/fetch",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let credential = credential_rx.borrow().clone();
            let sha = body["package"].as_str().unwrap_or_default().to_string();
            let allowed = checker.check(Some(&credential), &sha).is_ok();
            let other = checker.check(Some(&credential), &"b".repeat(64)).is_ok();
            let _ = seen_tx.send(json!({"body": body, "allowed": allowed, "other": other}));
            async move { axum::Json(json!({"filepath": format!("/userfunc/{sha}/hello.py")})) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, fetcher).await });
    let watch = cluster.open_watch(vec![], "1").await;
    let (pod, handle, credential) =
        started_pod_credential(&backend, &mut cluster, &watch, env("py"), 2).await;
    credential_tx.send_replace(credential.clone());
    let package = PackageRef {
        sha256: "a".repeat(64),
        kind: PackageKind::File,
        filename: Some("hello.py".into()),
    };
    let staging = handle.clone().stage(Staging {
        package: package.clone(),
        path: "/nonexistent".into(),
        files: vec![],
    });
    let staging = tokio::spawn(staging);
    // First the pod is marked specialized, so no later server adopts it.
    let patch = cluster
        .expect("PATCH", &format!("{PODS}/{}", name_of(&pod)))
        .await;
    assert_eq!(
        patch.body["metadata"]["labels"]["fusion.dev/state"],
        "specialized"
    );
    patch.answer(200, with_status(&pod, ready("127.0.0.1"), 3));
    let path = staging.await.unwrap().expect("staged");
    assert_eq!(path, format!("/userfunc/{}/hello.py", "a".repeat(64)));
    let call = within(seen.recv()).await.unwrap();
    assert_eq!(
        call["body"],
        json!({"package": "a".repeat(64), "kind": "file", "filename": "hello.py", "files": false})
    );
    assert_eq!(
        call["allowed"], true,
        "the credential could not fetch its package"
    );
    assert_eq!(
        call["other"], false,
        "the credential could fetch another package"
    );
    // Once staged, the credential fetches nothing.
    assert!(credentials
        .check(Some(&credential), &package.sha256)
        .is_err());
    server.abort();
}

#[tokio::test]
async fn a_restarted_server_adopts_current_generic_pods_and_deletes_the_rest() {
    let (backend, mut cluster, credentials) = setup(config());
    let cfg = config();
    let current = env("py");
    let digest = super::spec::env_digest(&current, &cfg);
    let left = |name: &str, state: &str, digest: &str| {
        json!({
            "metadata": {"name": name, "namespace": NS, "resourceVersion": "5",
                "labels": {"fusion.dev/pool": "fusion", "fusion.dev/state": state,
                           "fusion.dev/env-digest": digest},
                "annotations": {"fusion.dev/fetch-credential-sha256":
                    pool_manager::delivery::credential_digest("old-credential")}},
            "spec": {"containers": [{"name": "runtime", "image": "i"}]},
            "status": ready("127.0.0.1"),
        })
    };
    let envs = vec![current.clone()];
    let cleanup = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.cleanup_stale(&envs).await })
    };
    let list = cluster.expect("GET", PODS).await;
    assert!(list
        .query
        .contains("labelSelector=fusion.dev%2Fpool%3Dfusion"));
    list.answer(
        200,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "6"},
               "items": [left("keep", "generic", &digest),
                         left("used", "specialized", &digest),
                         left("stale", "generic", "0000000000000000"),
                         left("extra", "generic", &digest)]}),
    );
    for gone in ["used", "stale", "extra"] {
        cluster
            .expect("DELETE", &format!("{PODS}/{gone}"))
            .await
            .answer(200, left(gone, "generic", &digest));
    }
    cleanup.await.unwrap();
    // The adopted pod's fetcher keeps its credential.
    assert!(matches!(
        credentials.check(Some("old-credential"), &"a".repeat(64)),
        Err(pool_manager::delivery::FetchDenied::NotAllowed { .. })
    ));
    let _watch = cluster
        .open_watch(vec![left("keep", "generic", &digest)], "7")
        .await;
    // Starting an instance of the same environment creates no pod.
    let handle = start(&backend, current).await.unwrap().expect("adopted");
    assert_eq!(
        handle.address(),
        &Address::Tcp("127.0.0.1:8888".parse::<SocketAddr>().unwrap())
    );
    assert!(cluster.api.try_recv().is_err(), "a request was sent");
}

#[tokio::test]
async fn an_environment_with_only_a_command_is_refused() {
    let (backend, _cluster, _) = setup(config());
    let e: Environment =
        serde_json::from_value(json!({"name": "cmd", "command": ["./serve"]})).unwrap();
    let err = backend.accepts(&e).unwrap_err();
    assert_eq!(err.code(), "invalid");
    assert!(err.to_string().contains("runs images"), "{err}");
    let image: Environment =
        serde_json::from_value(json!({"name": "img", "image": "ghcr.io/fission/python-env"}))
            .unwrap();
    backend.accepts(&image).unwrap();
    let local: Environment =
        serde_json::from_value(json!({"name": "img", "image": "/var/lib/images/py.tar"})).unwrap();
    let err = backend.accepts(&local).unwrap_err();
    assert!(err.to_string().contains("push it to one"), "{err}");
}

/// A loopback runtime: answers `/v2/specialize` (reporting its body) and
/// holds every other request open (reporting that it came), as a function
/// that is still working when its pod goes.
async fn loopback_runtime() -> (
    u16,
    mpsc::UnboundedReceiver<Value>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let specialized = tx.clone();
    let app = axum::Router::new()
        .route(
            "/v2/specialize",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let _ = specialized.send(json!({"specialize": body}));
                async { "ok" }
            }),
        )
        .fallback(move || {
            let _ = tx.send(json!({"request": true}));
            std::future::pending::<&'static str>()
        });
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, rx, server)
}

/// A loopback fetcher that answers where it put the package.
async fn loopback_fetcher() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/fetch",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            let path = format!(
                "/userfunc/{}/{}",
                body["package"].as_str().unwrap(),
                body["filename"].as_str().unwrap()
            );
            axum::Json(json!({"filepath": path}))
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, server)
}

#[tokio::test]
async fn the_pool_specializes_a_pod_and_a_request_whose_pod_is_deleted_answers_502() {
    let (runtime_port, mut runtime, runtime_server) = loopback_runtime().await;
    let (fetcher_port, fetcher_server) = loopback_fetcher().await;
    let mut cfg = config();
    cfg.runtime_port = runtime_port;
    cfg.fetcher_port = fetcher_port;
    let (backend, mut cluster, _) = setup(cfg);
    let (starting, _data) = start_pool(backend);
    // The server's start tidies what an earlier one left: nothing here.
    cluster
        .expect("GET", PODS)
        .await
        .answer(200, json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}));
    let pm = starting.await.unwrap().unwrap();
    let watch = cluster.open_watch(vec![], "1").await;
    let mut py = env("py");
    py.poolsize = 0;
    pm.create_environment(py).await.unwrap();
    let package = pm
        .put_package("hello.py", b"def main():\n    return 'hi'\n")
        .unwrap();
    let function: pool_manager::Function = serde_json::from_value(json!({
        "name": "hello", "env": "py", "package": package, "entrypoint": "main",
    }))
    .unwrap();
    pm.create_function(function).await.unwrap();

    let calling = {
        let pm = pm.clone();
        tokio::spawn(async move {
            let req = Request::get("/hello")
                .body(axum::body::Body::empty())
                .unwrap();
            pool_manager::try_forward(&pm, "hello", req, "/", &[]).await
        })
    };
    // A pod for the call, ready, marked specialized, fetched, specialized.
    let create = cluster.expect("POST", PODS).await;
    let pod = create.body.clone();
    create.answer(201, with_status(&pod, json!({"phase": "Pending"}), 2));
    secret_of(&mut cluster, &pod).await;
    watch.send("MODIFIED", with_status(&pod, ready("127.0.0.1"), 3));
    let patch = cluster
        .expect("PATCH", &format!("{PODS}/{}", name_of(&pod)))
        .await;
    patch.answer(200, with_status(&pod, ready("127.0.0.1"), 4));
    let specialize = within(runtime.recv()).await.unwrap();
    assert_eq!(
        specialize["specialize"]["filepath"],
        format!("/userfunc/{}/hello.py", package.sha256)
    );
    assert_eq!(specialize["specialize"]["functionName"], "main");
    // The request reaches the runtime, which is still working when the pod is deleted.
    assert_eq!(
        within(runtime.recv()).await.unwrap(),
        json!({"request": true})
    );
    watch.send("DELETED", with_status(&pod, ready("127.0.0.1"), 5));
    let e = within(calling)
        .await
        .unwrap()
        .expect_err("the request failed");
    assert_eq!(e.status(), axum::http::StatusCode::BAD_GATEWAY, "{e}");
    assert!(e.to_string().contains("its pod was deleted"), "{e}");
    // The pool forgot the instance.
    assert!(pm.instances(None).is_empty(), "{:?}", pm.instances(None));
    runtime_server.abort();
    fetcher_server.abort();
}

#[tokio::test]
async fn what_the_runtime_writes_goes_to_the_instance_log() {
    let (backend, mut cluster, _) = setup(config());
    let watch = cluster.open_watch(vec![], "1").await;
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<(String, String)>();
    let sink: pool_manager::backend::LogSink = Arc::new(move |stream, line| {
        let _ = lines_tx.send((stream.to_string(), line.to_string()));
    });
    let starting = start_logging(&backend, env("py"), sink);
    let create = cluster.expect("POST", PODS).await;
    let pod = create.body.clone();
    create.answer(201, with_status(&pod, json!({"phase": "Pending"}), 2));
    secret_of(&mut cluster, &pod).await;
    watch.send("MODIFIED", with_status(&pod, ready("127.0.0.1"), 3));
    within(starting).await.unwrap().unwrap();
    let follow = within(cluster.logs.recv()).await.unwrap();
    assert_eq!(follow.method, "GET");
    assert_eq!(follow.path, format!("{PODS}/{}/log", name_of(&pod)));
    assert!(
        follow.query.contains("container=runtime") && follow.query.contains("follow=true"),
        "{}",
        follow.query
    );
    let log = follow.stream();
    log.send(Bytes::from("listening on 8888\nhello from the function\n"))
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(within(lines.recv()).await.unwrap());
    }
    assert_eq!(got[0].0, "fusion");
    assert!(got[0].1.starts_with("created pod fusion-py-"), "{got:?}");
    assert_eq!(got[1], ("stdout".into(), "listening on 8888".into()));
    assert_eq!(got[2], ("stdout".into(), "hello from the function".into()));
}

#[tokio::test]
async fn an_evicted_generic_pod_is_deleted_and_the_pool_gets_a_new_one() {
    let (backend, mut cluster, _) = setup(config());
    let (starting, _data) = start_pool(backend);
    cluster.expect("GET", PODS).await.answer(
        200,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}),
    );
    let pm = within(starting).await.unwrap().unwrap();
    let watch = cluster.open_watch(vec![], "1").await;
    pm.create_environment(env("py")).await.unwrap();
    // The pool fills itself: one generic pod.
    let create = cluster.expect("POST", PODS).await;
    let first = create.body.clone();
    create.answer(201, with_status(&first, json!({"phase": "Pending"}), 2));
    secret_of(&mut cluster, &first).await;
    watch.send("MODIFIED", with_status(&first, ready("127.0.0.1"), 3));
    // The node runs short of memory: the pod is evicted.
    watch.send(
        "MODIFIED",
        with_status(
            &first,
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
            4,
        ),
    );
    // Its remains are deleted, and the pool starts another (in either order).
    let mut calls = vec![
        within(cluster.api.recv()).await.unwrap(),
        within(cluster.api.recv()).await.unwrap(),
    ];
    calls.sort_by(|a, b| a.method.cmp(&b.method));
    let [delete, create] = <[Call; 2]>::try_from(calls).ok().unwrap();
    assert_eq!(delete.method, "DELETE");
    assert_eq!(delete.path, format!("{PODS}/{}", name_of(&first)));
    assert_eq!(create.method, "POST");
    let second = create.body.clone();
    assert_ne!(name_of(&second), name_of(&first));
    delete.answer(200, with_status(&first, json!({"phase": "Failed"}), 5));
    create.answer(201, with_status(&second, json!({"phase": "Pending"}), 6));
    secret_of(&mut cluster, &second).await;
    watch.send("MODIFIED", with_status(&second, ready("127.0.0.1"), 7));
    let generic = |pm: &PoolManager| {
        pm.instances(None)
            .iter()
            .filter(|i| i.state == "generic")
            .count()
    };
    // The evicted instance is gone from the pool, the new one is in it.
    within(async {
        while generic(&pm) != 1 || pm.instances(None).len() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_failed_pod_delete_is_tried_again_before_the_instance_ends() {
    let (backend, mut cluster, _) = setup(config());
    let watch = cluster.open_watch(vec![], "1").await;
    let (pod, handle) = started_pod(&backend, &mut cluster, &watch, env("py"), 2).await;
    let path = format!("{PODS}/{}", name_of(&pod));
    handle.stop();
    cluster.expect("DELETE", &path).await.fail(
        500,
        "InternalError",
        "etcdserver: request timed out",
    );
    let again = cluster.expect("DELETE", &path).await;
    assert!(
        handle.exit().borrow().is_none(),
        "the instance ended before its pod was deleted"
    );
    again.answer(200, with_status(&pod, ready("127.0.0.1"), 3));
    assert_eq!(exit_of(&handle).await, Exit::Stopped);
}

#[tokio::test]
async fn a_pod_that_cannot_be_deleted_still_ends_its_instance() {
    let (backend, mut cluster, _) = setup(config());
    let watch = cluster.open_watch(vec![], "1").await;
    let (pod, handle) = started_pod(&backend, &mut cluster, &watch, env("py"), 2).await;
    let path = format!("{PODS}/{}", name_of(&pod));
    handle.stop();
    for _ in 0..super::DELETE_ATTEMPTS {
        assert!(handle.exit().borrow().is_none());
        cluster.expect("DELETE", &path).await.fail(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    // Bounded: the instance ends (the pool does not keep a zombie), and no
    // further delete is sent; the pod is left to the sweep.
    assert_eq!(exit_of(&handle).await, Exit::Stopped);
    assert!(cluster.api.try_recv().is_err(), "another request was sent");
}

#[tokio::test]
async fn a_create_that_fails_with_a_server_error_deletes_the_pod_it_named() {
    let (backend, mut cluster, _) = setup(config());
    let _watch = cluster.open_watch(vec![], "1").await;
    let starting = start(&backend, env("py"));
    let create = cluster.expect("POST", PODS).await;
    let name = name_of(&create.body);
    // The API server may have created it before it failed to answer.
    create.fail(
        504,
        "Timeout",
        "the server was unable to return a response in the time allotted",
    );
    let e = within(starting).await.unwrap().err().expect("refused");
    assert_eq!(e.code(), "unavailable");
    cluster
        .expect("DELETE", &format!("{PODS}/{name}"))
        .await
        .fail(404, "NotFound", &format!("pods \"{name}\" not found"));
}

#[tokio::test]
async fn a_refused_create_deletes_nothing() {
    let (backend, mut cluster, _) = setup(config());
    let _watch = cluster.open_watch(vec![], "1").await;
    let starting = start(&backend, env("py"));
    cluster
        .expect("POST", PODS)
        .await
        .fail(422, "Invalid", "Pod \"x\" is invalid");
    within(starting).await.unwrap().err().expect("refused");
    // The next request is the next start's create, not a delete.
    let _again = start(&backend, env("py"));
    cluster.expect("POST", PODS).await;
}

/// A pod of the pool as another server (or a lost create) left it.
fn stray(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "5", "uid": format!("uid-{name}"),
            "labels": {"fusion.dev/pool": "fusion", "fusion.dev/state": "generic",
                       "fusion.dev/env-digest": "0000000000000000"}},
        "spec": {"containers": [{"name": "runtime", "image": "i"}]},
        "status": {"phase": "Pending"},
    })
}

#[tokio::test]
async fn once_cleanup_is_done_the_watch_deletes_pool_pods_it_does_not_know() {
    let mut cfg = config();
    cfg.sweep_grace = Duration::ZERO;
    let (backend, mut cluster, _) = setup(cfg);
    let watch = cluster.open_watch(vec![], "1").await;
    // Before cleanup has sorted the pool, an unknown pod is left alone
    // (cleanup decides: adopt or delete): the next request is cleanup's list.
    watch.send("ADDED", stray("early"));
    let cleanup = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.cleanup_stale(&[]).await })
    };
    cluster.expect("GET", PODS).await.answer(
        200,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "6"}, "items": []}),
    );
    within(cleanup).await.unwrap();
    // A pod being deleted is not deleted again; one nobody knows is.
    let mut going = stray("going");
    going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    watch.send("MODIFIED", going);
    watch.send("ADDED", stray("orphan"));
    cluster
        .expect("DELETE", &format!("{PODS}/orphan"))
        .await
        .answer(200, stray("orphan"));
    // A pod this server knows is not swept.
    let (_pod, handle) = started_pod(&backend, &mut cluster, &watch, env("py"), 10).await;
    assert!(handle.exit().borrow().is_none());
    assert!(cluster.api.try_recv().is_err(), "another request was sent");
}

#[tokio::test]
async fn cleanup_carries_on_past_a_pod_it_cannot_delete() {
    let (backend, mut cluster, _) = setup(config());
    let cleanup = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.cleanup_stale(&[]).await })
    };
    cluster.expect("GET", PODS).await.answer(
        200,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "6"},
               "items": [stray("one"), stray("two")]}),
    );
    // A failure that may pass is tried again; a refusal is not, and the
    // others are still deleted.
    cluster.expect("DELETE", &format!("{PODS}/one")).await.fail(
        500,
        "InternalError",
        "etcdserver: leader changed",
    );
    cluster.expect("DELETE", &format!("{PODS}/one")).await.fail(
        403,
        "Forbidden",
        "pods \"one\" is forbidden",
    );
    cluster
        .expect("DELETE", &format!("{PODS}/two"))
        .await
        .answer(200, stray("two"));
    within(cleanup).await.unwrap();
}

/// A mock API server for the lease alone: its one lane of requests.
fn lease_mock() -> (kube::Client, mpsc::UnboundedReceiver<Call>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (mock_api(move |_| Some(tx.clone())), rx)
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/fusion-functions/leases";

async fn expect_on(lane: &mut mpsc::UnboundedReceiver<Call>, method: &str, path: &str) -> Call {
    let call = next(lane, path).await;
    assert_eq!((call.method.as_str(), call.path.as_str()), (method, path));
    call
}

/// The pool's lease as another server left it, renewed `ago` seconds ago.
fn lease_of(holder: &str, ago: i64) -> Value {
    let renewed =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "fusion", "namespace": NS, "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renewed),
                 "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renewed),
                 "leaseTransitions": 2},
    })
}

#[tokio::test]
async fn a_free_pool_lease_is_taken() {
    let (client, mut api) = lease_mock();
    let lease = super::lease::PoolLease::new(client, NS, "fusion", "me");
    let taking = tokio::spawn(async move { lease.take().await });
    expect_on(&mut api, "GET", &format!("{LEASES}/fusion"))
        .await
        .fail(
            404,
            "NotFound",
            "leases.coordination.k8s.io \"fusion\" not found",
        );
    let create = expect_on(&mut api, "POST", LEASES).await;
    assert_eq!(create.body["metadata"]["name"], "fusion");
    assert_eq!(create.body["spec"]["holderIdentity"], "me");
    assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);
    assert!(create.body["spec"]["renewTime"].is_string());
    let body = create.body.clone();
    create.answer(201, body);
    within(taking).await.unwrap().expect("taken");
}

#[tokio::test]
async fn a_pool_lease_another_server_holds_refuses_the_start_naming_it() {
    let (client, mut api) = lease_mock();
    let lease = super::lease::PoolLease::new(client, NS, "fusion", "me");
    let taking = tokio::spawn(async move { lease.take().await });
    expect_on(&mut api, "GET", &format!("{LEASES}/fusion"))
        .await
        .answer(200, lease_of("fusion-0", 2));
    let e = within(taking).await.unwrap().expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains(
            "another Fusion server (fusion-0) runs pool fusion in namespace fusion-functions"
        ) && msg.contains("--kube-pool"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert!(api.try_recv().is_err(), "the lease was written");
}

#[tokio::test]
async fn an_expired_pool_lease_is_taken_over() {
    let (client, mut api) = lease_mock();
    let lease = super::lease::PoolLease::new(client, NS, "fusion", "me");
    let taking = tokio::spawn(async move { lease.take().await });
    expect_on(&mut api, "GET", &format!("{LEASES}/fusion"))
        .await
        .answer(200, lease_of("laptop/42", 60));
    let update = expect_on(&mut api, "PUT", &format!("{LEASES}/fusion")).await;
    // At the version read, so a server that wrote it meanwhile wins.
    assert_eq!(update.body["metadata"]["resourceVersion"], "7");
    assert_eq!(update.body["spec"]["holderIdentity"], "me");
    assert_eq!(update.body["spec"]["leaseTransitions"], 3);
    let body = update.body.clone();
    update.answer(200, body);
    within(taking).await.unwrap().expect("taken over");
}

#[tokio::test]
async fn a_pool_lease_taken_by_another_server_while_running_is_said_lost() {
    let (client, mut api) = lease_mock();
    let lease = Arc::new(super::lease::PoolLease::new(client, NS, "fusion", "me"));
    let renewing = tokio::spawn({
        let lease = lease.clone();
        async move { lease.renew().await }
    });
    expect_on(&mut api, "GET", &format!("{LEASES}/fusion"))
        .await
        .answer(200, lease_of("fusion-0", 2));
    assert!(
        !within(renewing).await.unwrap(),
        "renewed a lease held by another"
    );
    assert!(lease.lost());
    assert!(api.try_recv().is_err(), "the lease was written");
}

#[tokio::test]
async fn a_released_pool_lease_has_no_holder() {
    let (client, mut api) = lease_mock();
    let lease = super::lease::PoolLease::new(client, NS, "fusion", "me");
    let releasing = tokio::spawn(async move { lease.release().await });
    expect_on(&mut api, "GET", &format!("{LEASES}/fusion"))
        .await
        .answer(200, lease_of("me", 1));
    let update = expect_on(&mut api, "PUT", &format!("{LEASES}/fusion")).await;
    assert!(
        update.body["spec"].get("holderIdentity").is_none(),
        "{}",
        update.body
    );
    let body = update.body.clone();
    update.answer(200, body);
    within(releasing).await.unwrap();
}

#[tokio::test]
async fn at_shutdown_specialized_and_starting_pods_go_and_the_next_server_adopts_and_stages_the_generic_one(
) {
    // The fetcher's port is part of what a pod is: both servers share it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config();
    cfg.fetcher_port = listener.local_addr().unwrap().port();
    let (backend, mut cluster, _) = setup(cfg.clone());
    let watch = cluster.open_watch(vec![], "1").await;
    let (generic_pod, generic, credential) =
        started_pod_credential(&backend, &mut cluster, &watch, env("py"), 2).await;
    let (special_pod, special) = started_pod(&backend, &mut cluster, &watch, env("py"), 4).await;
    let _starting = start(&backend, env("py"));
    let create = cluster.expect("POST", PODS).await;
    let starting_pod = create.body.clone();
    create.answer(
        201,
        with_status(&starting_pod, json!({"phase": "Pending"}), 6),
    );
    secret_of(&mut cluster, &starting_pod).await;
    // Shutdown as the pool does it: the generic instance is parked, the
    // specialized one stopped, then the backend's shutdown.
    assert!(generic.park());
    special.stop();
    cluster
        .expect("DELETE", &format!("{PODS}/{}", name_of(&special_pod)))
        .await
        .answer(200, with_status(&special_pod, ready("127.0.0.1"), 7));
    assert_eq!(exit_of(&special).await, Exit::Stopped);
    let shutting = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.shutdown().await })
    };
    cluster
        .expect("DELETE", &format!("{PODS}/{}", name_of(&starting_pod)))
        .await
        .answer(
            200,
            with_status(&starting_pod, json!({"phase": "Pending"}), 8),
        );
    within(shutting).await.unwrap();
    assert!(
        cluster.api.try_recv().is_err(),
        "the generic pod was deleted"
    );
    drop(backend);

    // The next server, on the same cluster (the generic pod left running), with
    // a loopback fetcher standing for that pod's: it fetches with the pod's old
    // credential, checked by the new server.
    let (backend, mut cluster, credentials) = setup(cfg);
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<bool>();
    let checker = credentials.clone();
    let old = credential.clone();
    let fetcher = axum::Router::new().route(
        "/fetch",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sha = body["package"].as_str().unwrap_or_default().to_string();
            let _ = seen_tx.send(checker.check(Some(&old), &sha).is_ok());
            async move { axum::Json(json!({"filepath": format!("/userfunc/{sha}/hello.py")})) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, fetcher).await });
    let left = with_status(&generic_pod, ready("127.0.0.1"), 20);
    let cleanup = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.cleanup_stale(&[env("py")]).await })
    };
    cluster.expect("GET", PODS).await.answer(
        200,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "21"},
               "items": [left.clone()]}),
    );
    within(cleanup).await.unwrap();
    let _watch = cluster.open_watch(vec![left], "21").await;
    let handle = within(start(&backend, env("py")))
        .await
        .unwrap()
        .expect("adopted");
    let package = PackageRef {
        sha256: "c".repeat(64),
        kind: PackageKind::File,
        filename: Some("hello.py".into()),
    };
    let staging = tokio::spawn(handle.clone().stage(Staging {
        package,
        path: "/nonexistent".into(),
        files: vec![],
    }));
    // The first request is the label PATCH of the adopted pod: no create.
    let patch = cluster
        .expect("PATCH", &format!("{PODS}/{}", name_of(&generic_pod)))
        .await;
    assert_eq!(
        patch.body["metadata"]["labels"]["fusion.dev/state"],
        "specialized"
    );
    patch.answer(200, with_status(&generic_pod, ready("127.0.0.1"), 22));
    let path = within(staging).await.unwrap().expect("staged");
    assert_eq!(path, format!("/userfunc/{}/hello.py", "c".repeat(64)));
    assert!(
        within(seen.recv()).await.unwrap(),
        "the new server refused the adopted pod's credential"
    );
    server.abort();
}

#[tokio::test]
async fn a_pod_whose_credential_secret_cannot_be_created_is_deleted() {
    let (backend, mut cluster, _) = setup(config());
    let _watch = cluster.open_watch(vec![], "1").await;
    let starting = start(&backend, env("py"));
    let create = cluster.expect("POST", PODS).await;
    let pod = create.body.clone();
    create.answer(201, with_status(&pod, json!({"phase": "Pending"}), 2));
    cluster.expect("POST", SECRETS).await.fail(
        403,
        "Forbidden",
        "secrets is forbidden: User \"system:serviceaccount:fusion:fusion\" cannot create resource \"secrets\"",
    );
    let e = within(starting).await.unwrap().err().expect("refused");
    assert!(
        e.to_string()
            .contains("may not create secrets in namespace fusion-functions (403 Forbidden)"),
        "{e}"
    );
    cluster
        .expect("DELETE", &format!("{PODS}/{}", name_of(&pod)))
        .await
        .answer(200, with_status(&pod, json!({"phase": "Pending"}), 3));
}

#[tokio::test]
async fn a_pod_whose_delete_kept_failing_is_deleted_later() {
    let mut cfg = config();
    cfg.sweep_grace = Duration::ZERO;
    let (backend, mut cluster, _) = setup(cfg);
    let watch = cluster.open_watch(vec![], "1").await;
    let (pod, handle) = started_pod(&backend, &mut cluster, &watch, env("py"), 2).await;
    let path = format!("{PODS}/{}", name_of(&pod));
    handle.stop();
    for _ in 0..super::DELETE_ATTEMPTS {
        cluster.expect("DELETE", &path).await.fail(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    assert_eq!(exit_of(&handle).await, Exit::Stopped);
    // Even without a watch event about it, the pod is tried again.
    cluster
        .expect("DELETE", &path)
        .await
        .answer(200, with_status(&pod, ready("127.0.0.1"), 3));
}

#[tokio::test]
async fn a_backend_whose_pool_lease_is_held_elsewhere_does_not_start_and_touches_no_pod() {
    let (client, mut api) = lease_mock();
    let mut cfg = config();
    cfg.identity = "laptop/7".into();
    let connecting = tokio::spawn(async move {
        PodBackend::connect(client, cfg, Arc::new(Credentials::default()))
            .await
            .map(|_| ())
    });
    expect_on(&mut api, "GET", &format!("{LEASES}/fusion"))
        .await
        .answer(200, lease_of("fusion-0", 1));
    let e = within(connecting).await.unwrap().expect_err("refused");
    assert!(e.to_string().contains("(fusion-0)"), "{e}");
    // No watch, no list, no delete: nothing of the other server's pool is touched.
    assert!(api.try_recv().is_err(), "a request was sent");
}
