//! The custom resources' controller, end to end: the real `fusion server
//! --kube-controller`, pointed by a kubeconfig at a mock Kubernetes API
//! (tests/common/kube_mock.rs) that plays each scenario and records every
//! request Fusion sends, in order. What Fusion made of the custom resources is
//! checked through Fusion's own API, what it said through their status.
#![cfg(feature = "kubernetes")]

mod common;

use std::time::Duration;

use base64::Engine;
use common::kube_mock::{KubeMock, RecordingProxy, Seen};
use common::{eventually, Server};
use serde_json::{json, Value};

const FISSION: &str = "fission.io/v1";
const WAIT: Duration = Duration::from_secs(60);

fn start(mock: &KubeMock, resync_secs: &str) -> Server {
    let (k, v) = mock.kubeconfig_env();
    Server::start_with(&[
        ("FUSION_KUBE_CONTROLLER", "true"),
        ("FUSION_KUBE_RESYNC_SECS", resync_secs),
        ("FUSION_BACKEND", "process"),
        (k, &v),
    ])
}

/// As `start`, with the controller applying through `proxy` (which records
/// every request it sends to Fusion's API, and answers scripted faults).
fn start_behind(mock: &KubeMock, proxy: &RecordingProxy) -> Server {
    start_behind_resync(mock, proxy, "300")
}

fn start_behind_resync(mock: &KubeMock, proxy: &RecordingProxy, resync_secs: &str) -> Server {
    let (k, v) = mock.kubeconfig_env();
    let s = Server::start_with(&[
        ("FUSION_KUBE_CONTROLLER", "true"),
        ("FUSION_KUBE_RESYNC_SECS", resync_secs),
        ("FUSION_KUBE_CONTROLLER_API_URL", &proxy.url),
        ("FUSION_BACKEND", "process"),
        (k, &v),
    ]);
    proxy.set_upstream(&s.api);
    s
}

/// `METHOD /path` of each request.
fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

fn meta(kind: &str, name: &str) -> Value {
    json!({"apiVersion": FISSION, "kind": kind, "metadata": {"name": name, "namespace": "default"}})
}

fn with_spec(mut object: Value, spec: Value) -> Value {
    object["spec"] = spec;
    object
}

fn env_spec() -> Value {
    json!({"version": 3, "runtime": {"image": "fission/python-env"}, "poolsize": 0})
}

fn env_cr(name: &str) -> Value {
    with_spec(meta("Environment", name), env_spec())
}

fn package_cr(name: &str, env: &str, code: &str) -> Value {
    let literal = base64::engine::general_purpose::STANDARD.encode(code);
    with_spec(
        meta("Package", name),
        json!({"environment": {"name": env, "namespace": "default"},
               "deployment": {"type": "literal", "literal": literal}}),
    )
}

fn function_cr(name: &str, env: &str, package: &str) -> Value {
    with_spec(
        meta("Function", name),
        json!({"environment": {"name": env, "namespace": "default"},
               "package": {"packageref": {"name": package, "namespace": "default"}, "functionName": "main"}}),
    )
}

fn route_cr(name: &str, function: &str, url: &str) -> Value {
    with_spec(
        meta("HTTPTrigger", name),
        json!({"relativeurl": url, "methods": ["GET"], "functionref": {"type": "name", "name": function}}),
    )
}

/// Function `hello` (answers `hi`), made through Fusion's API.
fn hello_function(s: &Server) {
    s.env("python", "python", 0);
    s.function(
        "hello",
        "python",
        "hello.py",
        "def main():\n    return 'hi'\n",
        json!({"entrypoint": "main"}),
    );
}

/// The object's `Ready` condition (Null while it has none).
fn ready(mock: &KubeMock, plural: &str, name: &str) -> Value {
    mock.get(FISSION, plural, "default", name)
        .and_then(|o| {
            o["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        })
        .unwrap_or(Value::Null)
}

/// Creates a fission.io object and waits until the controller calls it Ready.
fn create_ready(mock: &KubeMock, plural: &str, object: Value) {
    let created = mock.create(FISSION, plural, object);
    let name = created["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    wait_ready(mock, plural, &name);
}

fn wait_ready(mock: &KubeMock, plural: &str, name: &str) {
    eventually(WAIT, &format!("{plural}/{name} Ready"), || {
        ready(mock, plural, name)["status"] == "True"
    });
}

fn object_path(plural: &str, name: &str) -> String {
    format!("/apis/fission.io/v1/namespaces/default/{plural}/{name}")
}

/// The writes Fusion sent to one custom resource (and its status), in order.
fn writes(mock: &KubeMock, plural: &str, name: &str) -> Vec<Seen> {
    mock.requests_to(&object_path(plural, name))
        .into_iter()
        .filter(|s| s.method != "GET")
        .collect()
}

fn status_writes(mock: &KubeMock, plural: &str, name: &str) -> Vec<Seen> {
    mock.requests_at(&format!("{}/status", object_path(plural, name)))
}

fn fusion_status(s: &Server, path: &str) -> u16 {
    s.call("GET", path, None).0
}

/// The finalizer added with a JSON patch, as kube-rs's finalizer helper does.
fn assert_adds_finalizer(seen: &Seen) {
    assert_eq!(seen.method, "PATCH", "{seen}");
    assert!(
        seen.content_type.starts_with("application/json-patch+json"),
        "{seen}"
    );
    let ops = seen.body.as_array().expect("a JSON patch");
    assert!(
        ops.iter().any(|op| op["op"] == "add"
            && op["path"] == "/metadata/finalizers"
            && op["value"] == json!(["fusion.dev/cleanup"])),
        "{}",
        seen.body
    );
}

fn assert_ready_patch(seen: &Seen, generation: i64) {
    assert_eq!(seen.method, "PATCH", "{seen}");
    assert!(seen.path.ends_with("/status"), "{seen}");
    let st = &seen.body["status"];
    assert_eq!(st["observedGeneration"], generation, "{}", seen.body);
    let c = &st["conditions"][0];
    assert_eq!(c["type"], "Ready", "{}", seen.body);
    assert_eq!(c["status"], "True", "{}", seen.body);
    assert_eq!(c["observedGeneration"], generation, "{}", seen.body);
}

#[test]
fn custom_resources_become_fusion_objects_and_deleting_them_removes_them() {
    let mock = KubeMock::start();
    let s = start(&mock, "300");
    // One after the other, so each one's requests are exactly these.
    create_ready(&mock, "environments", env_cr("python"));
    create_ready(
        &mock,
        "packages",
        package_cr(
            "hello-pkg",
            "python",
            "def main():\n    return 'hi from a custom resource'\n",
        ),
    );
    create_ready(
        &mock,
        "functions",
        function_cr("hello", "python", "hello-pkg"),
    );
    create_ready(&mock, "httptriggers", route_cr("hello", "hello", "/hello"));

    // Fusion has them, and they work.
    let f = s.ok("GET", "/v1/functions/hello", None);
    assert_eq!(f["entrypoint"], "main", "{f}");
    s.ok("GET", "/v1/routes/hello", None);
    let resp = s.get("/hello");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().unwrap(), "hi from a custom resource");

    // Each kind is listed, then watched from the list's version.
    let fns = mock.requests_at("/apis/fission.io/v1/functions");
    assert!(fns.len() >= 2, "{fns:?}");
    assert!(!fns[0].is_watch() && fns[0].status == 200, "{}", fns[0]);
    assert!(fns[1].is_watch(), "{}", fns[1]);
    assert!(fns[1].query.contains_key("resourceVersion"), "{}", fns[1]);
    // The finalizer first, then one status: Ready at generation 1; nothing else.
    let w = writes(&mock, "functions", "hello");
    assert_eq!(w.len(), 2, "{w:#?}");
    assert_adds_finalizer(&w[0]);
    assert_ready_patch(&w[1], 1);
    assert!(
        ready(&mock, "functions", "hello")["message"]
            .as_str()
            .unwrap()
            .contains("Function hello"),
        "{}",
        ready(&mock, "functions", "hello")
    );

    // Deleted: the finalizer deletes the Fusion object, then lets it go.
    mock.delete(FISSION, "httptriggers", "default", "hello");
    eventually(WAIT, "the trigger's custom resource gone", || {
        mock.get(FISSION, "httptriggers", "default", "hello")
            .is_none()
    });
    assert_eq!(fusion_status(&s, "/v1/routes/hello"), 404);
    let w = writes(&mock, "httptriggers", "hello");
    let last = w.last().unwrap();
    assert!(
        last.content_type.starts_with("application/json-patch+json"),
        "{last}"
    );
    assert!(
        last.body
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
        "{}",
        last.body
    );
    mock.delete(FISSION, "functions", "default", "hello");
    eventually(WAIT, "the function's custom resource gone", || {
        mock.get(FISSION, "functions", "default", "hello").is_none()
    });
    assert_eq!(fusion_status(&s, "/v1/functions/hello"), 404);
    // What the controller recorded of them went with them.
    let records = s.ok("GET", "/v1/deployments", None);
    let names: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Environment default/python"), "{names:?}");
    assert!(!names.contains(&"Function default/hello"), "{names:?}");
}

#[test]
fn an_invalid_custom_resource_names_its_field_and_waits_for_its_next_change() {
    let mock = KubeMock::start();
    let s = start(&mock, "300");
    let mut bad = env_spec();
    bad["version"] = json!(7);
    mock.create(
        FISSION,
        "environments",
        with_spec(meta("Environment", "bad"), bad),
    );
    eventually(WAIT, "bad says Invalid", || {
        ready(&mock, "environments", "bad")["reason"] == "Invalid"
    });
    let c = ready(&mock, "environments", "bad");
    assert_eq!(c["status"], "False", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.version: version 7"),
        "{c}"
    );
    assert_eq!(fusion_status(&s, "/v1/environments/bad"), 404);

    // A function whose package is not there yet waits, and says for what.
    mock.create(
        FISSION,
        "functions",
        function_cr("early", "python", "late-pkg"),
    );
    eventually(WAIT, "early says Pending", || {
        ready(&mock, "functions", "early")["reason"] == "Pending"
    });
    let c = ready(&mock, "functions", "early");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("Environment default/python")
            || c["message"]
                .as_str()
                .unwrap()
                .contains("Package default/late-pkg"),
        "{c}"
    );
    mock.create(FISSION, "environments", env_cr("python"));
    mock.create(
        FISSION,
        "packages",
        package_cr("late-pkg", "python", "def main():\n    return 'late'\n"),
    );
    wait_ready(&mock, "functions", "early");
    assert_eq!(fusion_status(&s, "/v1/functions/early"), 200);

    // Meanwhile the invalid one was not tried again: one status, no more.
    let w = writes(&mock, "environments", "bad");
    assert_eq!(w.len(), 2, "{w:#?}");
    assert_adds_finalizer(&w[0]);

    // Deleted while invalid: nothing to delete in Fusion, the finalizer goes.
    let mut never = env_spec();
    never["runtime"] = json!({});
    mock.create(
        FISSION,
        "environments",
        with_spec(meta("Environment", "never"), never),
    );
    eventually(WAIT, "never says Invalid", || {
        ready(&mock, "environments", "never")["reason"] == "Invalid"
    });
    assert!(
        ready(&mock, "environments", "never")["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.runtime: an Environment needs `spec.runtime.image`"),
        "{}",
        ready(&mock, "environments", "never")
    );
    mock.delete(FISSION, "environments", "default", "never");
    eventually(WAIT, "never gone", || {
        mock.get(FISSION, "environments", "default", "never")
            .is_none()
    });

    // Its next change is applied.
    mock.set_spec(FISSION, "environments", "default", "bad", env_spec());
    wait_ready(&mock, "environments", "bad");
    assert_eq!(ready(&mock, "environments", "bad")["observedGeneration"], 2);
    assert_eq!(fusion_status(&s, "/v1/environments/bad"), 200);
}

#[test]
fn a_watch_from_a_compacted_version_lists_again_and_applies_only_what_changed() {
    let mock = KubeMock::start();
    let s = start(&mock, "300");
    mock.create(FISSION, "environments", env_cr("one"));
    mock.create(FISSION, "environments", env_cr("two"));
    wait_ready(&mock, "environments", "one");
    wait_ready(&mock, "environments", "two");
    let two_before = s.ok("GET", "/v1/environments/two", None);
    let lists = |mock: &KubeMock| {
        mock.requests_at("/apis/fission.io/v1/environments")
            .into_iter()
            .filter(|r| !r.is_watch())
            .count()
    };
    assert_eq!(lists(&mock), 1);

    // A change no watch saw, then the watch's version is gone (410).
    let mut spec = env_spec();
    spec["resources"] = json!({"limits": {"memory": "256Mi"}});
    mock.set_spec_unseen(FISSION, "environments", "default", "one", spec);
    mock.compact_and_close_watches();
    eventually(WAIT, "one applied again at generation 2", || {
        ready(&mock, "environments", "one")["observedGeneration"] == 2
    });
    assert_eq!(s.ok("GET", "/v1/environments/one", None)["memory_mb"], 256);
    assert_eq!(lists(&mock), 2, "listed again after the 410");

    // The one that did not change was not written again, here or there.
    let w = writes(&mock, "environments", "two");
    assert_eq!(w.len(), 2, "{w:#?}");
    assert_eq!(s.ok("GET", "/v1/environments/two", None), two_before);
    assert_eq!(status_writes(&mock, "environments", "one").len(), 2);
}

#[test]
fn a_conflicting_status_update_is_tried_again() {
    let mock = KubeMock::start();
    mock.fail("PATCH", "/environments/python/status", 409, 1);
    let _s = start(&mock, "300");
    create_ready(&mock, "environments", env_cr("python"));
    let w = status_writes(&mock, "environments", "python");
    assert_eq!(w.len(), 2, "{w:#?}");
    assert_eq!(w[0].status, 409);
    assert_eq!(w[1].status, 200);
    assert_ready_patch(&w[1], 1);
}

#[test]
fn an_rbac_refusal_is_said_plainly_and_the_other_kinds_go_on() {
    let mock = KubeMock::start();
    mock.fail("GET", "/apis/fission.io/v1/functions", 403, usize::MAX);
    let s = start(&mock, "300");
    create_ready(&mock, "environments", env_cr("python"));
    let said = |s: &Server| -> Value {
        let v = s.ok("GET", "/v1/kubernetes/controller", None);
        v["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == "Function")
            .cloned()
            .unwrap()
    };
    eventually(WAIT, "the 403 said", || !said(&s)["error"].is_null());
    let error = said(&s)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("may not list functions.fission.io in all namespaces (403 Forbidden)")
            && error.contains("deploy/kubernetes/rbac.yaml"),
        "{error}"
    );
    // The role granted: it goes on by itself.
    mock.clear_faults();
    mock.create(
        FISSION,
        "packages",
        package_cr("pkg", "python", "def main():\n    return 'x'\n"),
    );
    create_ready(&mock, "functions", function_cr("fn", "python", "pkg"));
    assert_eq!(fusion_status(&s, "/v1/functions/fn"), 200);
    eventually(WAIT, "the error cleared", || said(&s)["error"].is_null());

    // A status it may not write: applied all the same, said, tried again.
    mock.fail("PATCH", "/environments/second/status", 403, 2);
    mock.create(FISSION, "environments", env_cr("second"));
    let env_said = |s: &Server| -> Value {
        let v = s.ok("GET", "/v1/kubernetes/controller", None);
        v["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == "Environment")
            .cloned()
            .unwrap()
    };
    let mut error = String::new();
    eventually(WAIT, "the status 403 said", || {
        error = env_said(&s)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !error.is_empty()
    });
    assert!(
        error.contains("may not update the status of environments.fission.io in namespace default (403 Forbidden)"),
        "{error}"
    );
    assert_eq!(fusion_status(&s, "/v1/environments/second"), 200);
    wait_ready(&mock, "environments", "second");
    let w = status_writes(&mock, "environments", "second");
    assert_eq!(
        w.iter().map(|r| r.status).collect::<Vec<_>>(),
        [403, 403, 200]
    );
}

#[test]
fn the_custom_resource_wins_over_the_api_and_spec_apply() {
    let mock = KubeMock::start();
    let s = start(&mock, "1");
    create_ready(&mock, "environments", env_cr("python"));
    let declared = s.ok("GET", "/v1/environments/python", None);
    assert!(declared.get("memory_mb").is_none(), "{declared}");

    // Changed through the API: changed back at the next resync.
    let mut changed = declared.clone();
    changed["memory_mb"] = json!(512);
    for k in ["generation", "status"] {
        changed.as_object_mut().unwrap().remove(k);
    }
    // (What the API answers: the next resync may come at any time.)
    let answer = s.ok("PUT", "/v1/environments/python", Some(changed));
    assert_eq!(answer["memory_mb"], 512, "{answer}");
    eventually(WAIT, "the API's change reverted", || {
        s.ok("GET", "/v1/environments/python", None)
            .get("memory_mb")
            .is_none()
    });

    // `spec apply` will not take it over, with or without a project.
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("env.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: python\nspec:\n  runtime:\n    image: fission/python-env\n  poolsize: 0\n  version: 3\n  resources:\n    limits:\n      memory: 128Mi\n",
    )
    .unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Environment python is owned by the custom resource Environment default/python in the cluster"),
        "{err}"
    );
    std::fs::write(
        specs.join("fission-deployment-config.yaml"),
        "apiVersion: fission.io/v1\nkind: DeploymentConfig\nname: p\nuid: 5f0c1a52-0000-4000-8000-000000000001\n",
    )
    .unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0);
    assert!(err.contains("is owned by the custom resource"), "{err}");
    // Forced, it holds until the next reconcile.
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply", "--allowconflicts"]);
    assert_eq!(code, 0, "{out}{err}");
    eventually(WAIT, "the forced change reverted", || {
        s.ok("GET", "/v1/environments/python", None)
            .get("memory_mb")
            .is_none()
    });

    // Nor delete it: not with destroy, not with --delete.
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("kept      Environment python (owned by the custom resource Environment default/python)"),
        "{out}"
    );
    assert_eq!(fusion_status(&s, "/v1/environments/python"), 200);
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply", "--allowconflicts"]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(
        specs.join("env.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: other\nspec:\n  runtime:\n    image: fission/python-env\n  poolsize: 0\n  version: 3\n",
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply", "--delete"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("kept      Environment python (owned by the custom resource Environment default/python)"),
        "{out}"
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted   Environment other"), "{out}");
    assert_eq!(fusion_status(&s, "/v1/environments/other"), 404);
    assert_eq!(fusion_status(&s, "/v1/environments/python"), 200);
}

#[test]
fn a_watch_trigger_calls_its_function_with_each_event_until_it_goes() {
    let mock = KubeMock::start();
    let s = start(&mock, "300");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let code = format!(
        "import json\nfrom flask import request\n\ndef main():\n    obj = json.loads(request.get_data())\n    with open({log:?}, 'a') as f:\n        f.write(json.dumps([request.headers.get('X-Kubernetes-Event-Type'), request.headers.get('X-Kubernetes-Object-Type'), obj['metadata']['name'], obj['kind']]) + '\\n')\n    return 'ok'\n"
    );
    s.env("python", "python", 0);
    s.function(
        "recorder",
        "python",
        "recorder.py",
        &code,
        json!({"entrypoint": "main"}),
    );
    let pod = |name: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    };
    let events = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    mock.create("v1", "pods", pod("a", "x"));
    mock.create("v1", "pods", pod("b", "y"));
    mock.create(
        FISSION,
        "kuberneteswatchtriggers",
        with_spec(
            meta("KubernetesWatchTrigger", "pods"),
            json!({"namespace": "default", "type": "pod", "labelselector": {"app": "x"},
                   "functionref": {"type": "name", "name": "recorder"}}),
        ),
    );
    wait_ready(&mock, "kuberneteswatchtriggers", "pods");
    eventually(WAIT, "a ADDED", || events().len() == 1);
    mock.create("v1", "pods", pod("c", "x"));
    eventually(WAIT, "c ADDED", || events().len() == 2);
    mock.set_spec(
        "v1",
        "pods",
        "default",
        "a",
        json!({"containers": [{"name": "c", "image": "busybox:2"}]}),
    );
    eventually(WAIT, "a MODIFIED", || events().len() == 3);
    mock.create("v1", "pods", pod("d", "y"));
    mock.delete("v1", "pods", "default", "c");
    eventually(WAIT, "c DELETED", || events().len() == 4);
    assert_eq!(
        events(),
        vec![
            json!(["ADDED", "Pod", "a", "Pod"]),
            json!(["ADDED", "Pod", "c", "Pod"]),
            json!(["MODIFIED", "Pod", "a", "Pod"]),
            json!(["DELETED", "Pod", "c", "Pod"]),
        ]
    );
    // Only what the selector names was asked for.
    let pods = mock.requests_at("/api/v1/namespaces/default/pods");
    assert!(!pods.is_empty());
    for r in &pods {
        assert_eq!(
            r.query.get("labelSelector").map(String::as_str),
            Some("app=x"),
            "{r}"
        );
    }

    // The trigger goes: so does its watch.
    assert_eq!(mock.open_watches("/api/v1/namespaces/default/pods"), 1);
    mock.delete(FISSION, "kuberneteswatchtriggers", "default", "pods");
    eventually(WAIT, "the trigger gone", || {
        mock.get(FISSION, "kuberneteswatchtriggers", "default", "pods")
            .is_none()
    });
    eventually(WAIT, "its watch closed", || {
        mock.open_watches("/api/v1/namespaces/default/pods") == 0
    });
}

#[test]
fn time_and_message_queue_triggers_and_workflows_are_applied_too() {
    let mock = KubeMock::start();
    let s = start(&mock, "300");
    hello_function(&s);
    let by_name = json!({"type": "name", "name": "hello"});
    mock.create(
        FISSION,
        "timetriggers",
        with_spec(
            meta("TimeTrigger", "nightly"),
            json!({"cron": "0 3 * * *", "functionref": by_name}),
        ),
    );
    mock.create(
        FISSION,
        "messagequeuetriggers",
        with_spec(
            meta("MessageQueueTrigger", "orders"),
            json!({"functionref": by_name, "messageQueueType": "nats-jetstream", "topic": "orders"}),
        ),
    );
    mock.create(
        FISSION,
        "workflows",
        with_spec(
            meta("Workflow", "order"),
            json!({"startAt": "greet", "states": {"greet": {"type": "Task", "function": {"name": "hello"}, "end": true}}}),
        ),
    );
    wait_ready(&mock, "timetriggers", "nightly");
    wait_ready(&mock, "messagequeuetriggers", "orders");
    wait_ready(&mock, "workflows", "order");
    assert_eq!(s.ok("GET", "/v1/timers/nightly", None)["cron"], "0 3 * * *");
    assert_eq!(
        s.ok("GET", "/v1/mqtriggers/orders", None)["topic"],
        "orders"
    );
    // A custom resource's namespace is its Fusion object's.
    let mut team = env_cr("python");
    team["metadata"]["namespace"] = json!("team");
    mock.create(FISSION, "environments", team);
    eventually(WAIT, "team/python Ready", || {
        mock.get(FISSION, "environments", "team", "python")
            .is_some_and(|o| o["status"]["conditions"][0]["status"] == "True")
    });
    assert_eq!(
        s.ok("GET", "/v1/environments/python?namespace=team", None)["namespace"],
        "team"
    );
    s.ok("GET", "/v1/workflows/order", None);
    // A workflow's change is applied as a new version of its source.
    mock.set_spec(
        FISSION,
        "workflows",
        "default",
        "order",
        json!({"startAt": "done", "states": {"done": {"type": "Succeed"}}}),
    );
    eventually(WAIT, "the workflow's new source", || {
        s.ok("GET", "/v1/workflows/order", None)["source"]
            .as_str()
            .is_some_and(|src| src.contains("Succeed"))
    });
}

#[test]
fn one_change_is_applied_once_and_its_own_status_event_sends_nothing() {
    let mock = KubeMock::start();
    let proxy = RecordingProxy::start();
    let s = start_behind(&mock, &proxy);
    // Its environment straight through the API, not the controller.
    s.env("python", "python", 0);
    create_ready(
        &mock,
        "packages",
        package_cr("p", "python", "def main():\n    return 'p'\n"),
    );
    // Another one after it: by the time it is Ready, the controller has had
    // p's own status write back from the same watch, before q's creation.
    create_ready(
        &mock,
        "packages",
        package_cr("q", "python", "def main():\n    return 'q'\n"),
    );
    let uid = |name: &str| {
        mock.get(FISSION, "packages", "default", name).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let fusion_side = |name: &str| {
        vec![
            "GET /v1/environments/python".to_string(),
            "POST /v1/archives".to_string(),
            // What it made before (nothing: the record is new).
            format!("GET /v1/deployments/k8s-{}", uid(name)),
            format!("PUT /v1/deployments/k8s-{}", uid(name)),
            format!("GET /v1/packages/{name}"),
            "POST /v1/packages".to_string(),
        ]
    };
    // Fusion's side: each package applied once, its code uploaded once.
    let mut want = fusion_side("p");
    want.extend(fusion_side("q"));
    let seen = proxy.requests();
    assert_eq!(lines(&seen), want, "{seen:#?}");
    let statuses: Vec<u16> = seen.iter().map(|r| r.status).collect();
    assert!(
        statuses
            .iter()
            .enumerate()
            .all(|(i, st)| if i % 6 == 2 || i % 6 == 4 {
                *st == 404
            } else {
                *st < 300
            }),
        "{statuses:?}"
    );
    // The cluster's side, everything about packages, in order: the list,
    // then the finalizer and one status for p; nothing for p after its status
    // came back; then q's finalizer and status. The watch (from the list's
    // version) goes out after the list, concurrently with p's reconcile, so
    // its place among p's writes is not fixed.
    let all: Vec<Seen> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/packages"))
        .collect();
    let watches: Vec<usize> = (0..all.len()).filter(|&i| all[i].is_watch()).collect();
    assert_eq!(watches.len(), 1, "{all:#?}");
    assert!(watches[0] > 0, "the watch came before the list: {all:#?}");
    let watch = &all[watches[0]];
    assert!(watch.query.contains_key("resourceVersion"), "{watch}");
    let kube_side: Vec<Seen> = all.iter().filter(|r| !r.is_watch()).cloned().collect();
    let p = object_path("packages", "p");
    let q = object_path("packages", "q");
    assert_eq!(
        lines(&kube_side),
        [
            "GET /apis/fission.io/v1/packages".to_string(),
            format!("PATCH {p}"),
            format!("PATCH {p}/status"),
            format!("PATCH {q}"),
            format!("PATCH {q}/status"),
        ],
        "{all:#?}"
    );
    assert_eq!(kube_side[0].status, 200);
    assert_adds_finalizer(&kube_side[1]);
    assert_ready_patch(&kube_side[2], 1);
    assert_adds_finalizer(&kube_side[3]);
    assert_ready_patch(&kube_side[4], 1);
    assert!(kube_side.iter().all(|r| r.status == 200), "{kube_side:#?}");

    // Its next change is applied once more: the package updated, its new
    // code uploaded.
    let code = base64::engine::general_purpose::STANDARD.encode("def main():\n    return 'p2'\n");
    mock.set_spec(
        FISSION,
        "packages",
        "default",
        "p",
        json!({"environment": {"name": "python", "namespace": "default"},
               "deployment": {"type": "literal", "literal": code}}),
    );
    eventually(WAIT, "p applied at generation 2", || {
        ready(&mock, "packages", "p")["observedGeneration"] == 2
    });
    // A barrier as above: q changed after p's second status.
    mock.set_spec(
        FISSION,
        "packages",
        "default",
        "q",
        package_cr("q", "python", "def main():\n    return 'q2'\n")["spec"].clone(),
    );
    eventually(WAIT, "q applied at generation 2", || {
        ready(&mock, "packages", "q")["observedGeneration"] == 2
    });
    let after: Vec<String> = lines(&proxy.requests())[12..].to_vec();
    let again = |name: &str| {
        vec![
            "GET /v1/environments/python".to_string(),
            "POST /v1/archives".to_string(),
            format!("GET /v1/deployments/k8s-{}", uid(name)),
            format!("PUT /v1/deployments/k8s-{}", uid(name)),
            format!("GET /v1/packages/{name}"),
            format!("PUT /v1/packages/{name}"),
        ]
    };
    let mut want = again("p");
    want.extend(again("q"));
    assert_eq!(after, want);
}

#[test]
fn a_failing_fusion_api_says_failed_and_is_tried_again_until_it_succeeds() {
    let mock = KubeMock::start();
    let proxy = RecordingProxy::start();
    let s = start_behind(&mock, &proxy);
    // A 5xx: Failed, then tried again.
    proxy.fail("POST", "/v1/environments", 500, 1);
    create_ready(&mock, "environments", env_cr("a"));
    let w = status_writes(&mock, "environments", "a");
    assert_eq!(w.len(), 2, "{w:#?}");
    let c = &w[0].body["status"]["conditions"][0];
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "Failed", "{c}");
    assert!(c["message"].as_str().unwrap().contains("500"), "{c}");
    assert_ready_patch(&w[1], 1);
    assert_eq!(fusion_status(&s, "/v1/environments/a"), 200);

    // A 409 (a concurrent apply holding the name) is as transient: not
    // parked as Invalid.
    proxy.fail("POST", "/v1/environments", 409, 2);
    create_ready(&mock, "environments", env_cr("b"));
    let w = status_writes(&mock, "environments", "b");
    assert_eq!(w.len(), 2, "{w:#?}");
    assert_eq!(w[0].body["status"]["conditions"][0]["reason"], "Failed");
    assert_ready_patch(&w[1], 1);
    let posts: Vec<u16> = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/environments")
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, [500, 201, 409, 409, 201]);
}

#[test]
fn deleting_while_fusions_api_fails_keeps_the_finalizer_until_it_succeeds() {
    let mock = KubeMock::start();
    let proxy = RecordingProxy::start();
    let s = start_behind(&mock, &proxy);
    create_ready(&mock, "environments", env_cr("gone"));
    proxy.fail("DELETE", "/v1/environments/gone", 503, usize::MAX);
    mock.delete(FISSION, "environments", "default", "gone");
    let failed_deletes = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "DELETE" && r.path == "/v1/environments/gone")
            .count()
    };
    eventually(WAIT, "two failed deletes", || failed_deletes() >= 2);
    // Still there, marked for deletion, with its finalizer; and in Fusion.
    let o = mock
        .get(FISSION, "environments", "default", "gone")
        .expect("kept while Fusion fails");
    assert_eq!(
        o["metadata"]["finalizers"],
        json!(["fusion.dev/cleanup"]),
        "{o}"
    );
    assert!(o["metadata"]["deletionTimestamp"].is_string(), "{o}");
    assert_eq!(fusion_status(&s, "/v1/environments/gone"), 200);
    // Fusion back: deleted there, then the finalizer goes.
    proxy.clear_faults();
    eventually(WAIT, "the custom resource gone", || {
        mock.get(FISSION, "environments", "default", "gone")
            .is_none()
    });
    assert_eq!(fusion_status(&s, "/v1/environments/gone"), 404);
}

#[test]
fn a_watch_trigger_in_the_function_pods_namespace_is_refused() {
    let mock = KubeMock::start();
    let s = start(&mock, "300");
    s.env("python", "python", 0);
    s.function(
        "recorder",
        "python",
        "recorder.py",
        "def main():\n    return 'ok'\n",
        json!({"entrypoint": "main"}),
    );
    let ns = "fusion-functions";
    let mut trigger = with_spec(
        meta("KubernetesWatchTrigger", "pods"),
        json!({"namespace": ns, "type": "pod",
               "functionref": {"type": "name", "name": "recorder"}}),
    );
    trigger["metadata"]["namespace"] = json!(ns);
    mock.create(FISSION, "kuberneteswatchtriggers", trigger);
    let condition = || {
        mock.get(FISSION, "kuberneteswatchtriggers", ns, "pods")
            .map(|o| o["status"]["conditions"][0].clone())
            .unwrap_or(Value::Null)
    };
    eventually(WAIT, "the trigger refused", || {
        condition()["reason"] == "Invalid"
    });
    let c = condition();
    assert_eq!(c["status"], "False", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("fusion-functions is where Fusion runs its function pods (--kube-namespace)"),
        "{c}"
    );
    assert!(
        mock.requests_to(&format!("/api/v1/namespaces/{ns}/pods"))
            .is_empty(),
        "no pod of Fusion's is watched"
    );
}

#[test]
fn a_resync_applies_again_without_uploading_the_same_code_again() {
    let mock = KubeMock::start();
    let proxy = RecordingProxy::start();
    let s = start_behind_resync(&mock, &proxy, "1");
    s.env("python", "python", 0);
    create_ready(
        &mock,
        "packages",
        package_cr("p", "python", "def main():\n    return 'p'\n"),
    );
    let count = |method: &str, prefix: &str| {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .count()
    };
    // Applied again at each resync (its record and package sent again)...
    eventually(WAIT, "two resyncs", || count("PUT", "/v1/packages/p") >= 2);
    // ...with the code uploaded once.
    assert_eq!(count("POST", "/v1/archives"), 1, "{:#?}", proxy.lines());
    // New code is uploaded.
    let code = base64::engine::general_purpose::STANDARD.encode("def main():\n    return 'p2'\n");
    mock.set_spec(
        FISSION,
        "packages",
        "default",
        "p",
        json!({"environment": {"name": "python", "namespace": "default"},
               "deployment": {"type": "literal", "literal": code}}),
    );
    eventually(WAIT, "p applied at generation 2", || {
        ready(&mock, "packages", "p")["observedGeneration"] == 2
    });
    assert_eq!(count("POST", "/v1/archives"), 2, "{:#?}", proxy.lines());
}

/// `fission fn create --name greet --env workflow --src greet.wf.yaml` on a
/// Fission Workflows cluster leaves these three custom resources; moved to
/// Fusion unchanged, the function is a workflow, called by its name.
#[test]
fn a_fission_workflows_function_becomes_a_workflow() {
    let mock = KubeMock::start();
    let s = start(&mock, "300");
    hello_function(&s);
    let workflow_env = with_spec(
        meta("Environment", "workflow"),
        json!({"version": 1, "runtime": {"image": "fission/workflow-env"}}),
    );
    create_ready(&mock, "environments", workflow_env);
    let said = ready(&mock, "environments", "workflow");
    assert!(
        said["message"].as_str().unwrap().starts_with("not applied"),
        "{said}"
    );
    assert_eq!(fusion_status(&s, "/v1/environments/workflow"), 404);

    let yaml = |output: &str| {
        format!("apiVersion: 1\noutput: {output}\ntasks:\n  call:\n    run: hello\n  done:\n    run: noop\n    inputs: bye\n    requires: [call]\n")
    };
    create_ready(
        &mock,
        "packages",
        package_cr("greet-pkg", "workflow", &yaml("call")),
    );
    assert_eq!(fusion_status(&s, "/v1/packages/greet-pkg"), 404);
    create_ready(
        &mock,
        "functions",
        function_cr("greet", "workflow", "greet-pkg"),
    );
    let said = ready(&mock, "functions", "greet");
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("applied to Fusion as Workflow greet"),
        "{said}"
    );
    assert_eq!(fusion_status(&s, "/v1/functions/greet"), 404);
    assert_eq!(s.invoke("greet", "text/plain", ""), (200, "hi".to_string()));
    // Its route names it as a function, as Fission Workflows' routes did.
    create_ready(&mock, "httptriggers", route_cr("greet", "greet", "/greet"));
    let resp = s.get("/greet");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().unwrap(), "hi");

    // Fission's `fn update --src` changes the package, then points the
    // function at its new version: the workflow's new version follows.
    let literal = base64::engine::general_purpose::STANDARD.encode(yaml("done"));
    mock.set_spec(
        FISSION,
        "packages",
        "default",
        "greet-pkg",
        json!({"environment": {"name": "workflow", "namespace": "default"},
               "deployment": {"type": "literal", "literal": literal}}),
    );
    let mut updated = function_cr("greet", "workflow", "greet-pkg")["spec"].clone();
    updated["package"]["packageref"]["resourceversion"] = json!("2");
    mock.set_spec(FISSION, "functions", "default", "greet", updated);
    eventually(WAIT, "the workflow's new version", || {
        s.invoke("greet", "text/plain", "") == (200, "bye".to_string())
    });

    // Fusion's workflows have no namespace: said, nothing applied.
    let mut elsewhere = function_cr("greet", "workflow", "greet-pkg");
    elsewhere["metadata"]["namespace"] = json!("team");
    elsewhere["spec"]["environment"]["namespace"] = json!("team");
    elsewhere["spec"]["package"]["packageref"]["namespace"] = json!("team");
    mock.create(FISSION, "functions", elsewhere);
    eventually(WAIT, "team/greet Invalid", || {
        mock.get(FISSION, "functions", "team", "greet")
            .is_some_and(|o| {
                let c = &o["status"]["conditions"][0];
                c["reason"] == "Invalid"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("namespace default"))
            })
    });
    // A package that is not one workflow file is named in the function's status.
    mock.create(
        FISSION,
        "packages",
        package_cr("zipped-pkg", "workflow", "PK\u{3}\u{4} not a workflow"),
    );
    mock.create(
        FISSION,
        "functions",
        function_cr("zipped", "workflow", "zipped-pkg"),
    );
    eventually(WAIT, "zipped Invalid", || {
        let c = ready(&mock, "functions", "zipped");
        c["reason"] == "Invalid"
            && c["message"]
                .as_str()
                .is_some_and(|m| m.contains("Package default/zipped-pkg") && m.contains("zip"))
    });
    assert_eq!(fusion_status(&s, "/v1/workflows/zipped"), 404);

    // Deleting the function (its route first) deletes its workflow.
    mock.delete(FISSION, "httptriggers", "default", "greet");
    eventually(WAIT, "the route's custom resource gone", || {
        mock.get(FISSION, "httptriggers", "default", "greet")
            .is_none()
    });
    mock.delete(FISSION, "functions", "default", "greet");
    eventually(WAIT, "the function's custom resource gone", || {
        mock.get(FISSION, "functions", "default", "greet").is_none()
    });
    assert_eq!(fusion_status(&s, "/v1/workflows/greet"), 404);
}

/// A namespace's `workflow` environment turned into Fission Workflows' one:
/// what its custom resources made before (the environment, a function of
/// it) goes, and the function is a workflow now.
#[test]
fn a_function_that_becomes_a_workflow_leaves_no_function_behind() {
    let mock = KubeMock::start();
    let s = start(&mock, "300");
    hello_function(&s);
    // First a runtime of its own named `workflow`, and a function of it.
    create_ready(&mock, "environments", env_cr("workflow"));
    create_ready(
        &mock,
        "packages",
        package_cr("greet-pkg", "workflow", "def main():\n    return 'fn'\n"),
    );
    create_ready(
        &mock,
        "functions",
        function_cr("greet", "workflow", "greet-pkg"),
    );
    s.ok("GET", "/v1/functions/greet", None);
    s.ok("GET", "/v1/environments/workflow", None);

    // Then Fission Workflows' environment, and the package a workflow file.
    mock.set_spec(
        FISSION,
        "environments",
        "default",
        "workflow",
        json!({"version": 1, "runtime": {"image": "fission/workflow-env"}}),
    );
    let literal = base64::engine::general_purpose::STANDARD
        .encode("apiVersion: 1\noutput: call\ntasks:\n  call:\n    run: hello\n");
    mock.set_spec(
        FISSION,
        "packages",
        "default",
        "greet-pkg",
        json!({"environment": {"name": "workflow", "namespace": "default"},
               "deployment": {"type": "literal", "literal": literal}}),
    );
    let mut spec = function_cr("greet", "workflow", "greet-pkg")["spec"].clone();
    spec["package"]["packageref"]["resourceversion"] = json!("2");
    mock.set_spec(FISSION, "functions", "default", "greet", spec);
    eventually(WAIT, "the function a workflow", || {
        s.invoke("greet", "text/plain", "") == (200, "hi".to_string())
    });
    assert_eq!(fusion_status(&s, "/v1/functions/greet"), 404);
    eventually(WAIT, "the runtime named workflow gone", || {
        fusion_status(&s, "/v1/environments/workflow") == 404
            && fusion_status(&s, "/v1/packages/greet-pkg") == 404
    });
}
