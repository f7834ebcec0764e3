//! Fusion on a real cluster, end to end, behind `FUSION_E2E_KUBECONFIG`: skipped
//! without it, and not yet run against a cluster (there is none on the
//! machines Fusion is built on; the mock-API tests in
//! `tests/kubernetes_controller.rs` and `cluster/src/pods/tests.rs` cover the
//! same paths by scenario).
//!
//! What it needs: a cluster with `deploy/kubernetes/` applied (deploy/README.md)
//! and the images pullable; the kubeconfig of a user who may write
//! `fission.io` objects in `default` and read pods in `fusion-functions`; and
//! Fusion's listeners reachable from here, e.g. through
//! `kubectl -n fusion port-forward svc/fusion 8888:8888 8889:8889`:
//! `FUSION_E2E_ROUTER` (default `http://127.0.0.1:8888`), `FUSION_E2E_API`
//! (default `http://127.0.0.1:8889`) and `FUSION_E2E_TOKEN` (the API token,
//! the Secret `fusion-token`).
//!
//! It applies an Environment, a Package, a Function and an HTTPTrigger as
//! custom resources, waits for each to be Ready, calls the route, deletes the
//! function's pod under it and calls again (a new pod answers), then deletes
//! the custom resources and waits until Fusion holds none of them and no pod
//! of the environment is left.
#![cfg(feature = "kubernetes")]

use std::time::{Duration, Instant};

use base64::Engine as _;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::json;

const NAMESPACE: &str = "default";
const FUNCTIONS: &str = "fusion-functions";

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Polls `check` until it answers `Some`, failing with `what` after `limit`.
async fn until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The custom resources of `kind` in the test's namespace.
fn api(client: &kube::Client, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("fission.io", "v1", kind);
    let resource = ApiResource::from_gvk(&gvk);
    Api::namespaced_with(client.clone(), NAMESPACE, &resource)
}

fn ready(object: &DynamicObject) -> bool {
    object.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[tokio::test]
async fn custom_resources_become_a_function_that_answers_through_the_router() {
    let Ok(kubeconfig) = std::env::var("FUSION_E2E_KUBECONFIG") else {
        eprintln!("skipped: FUSION_E2E_KUBECONFIG is not set");
        return;
    };
    let router = var("FUSION_E2E_ROUTER", "http://127.0.0.1:8888");
    let fusion_api = var("FUSION_E2E_API", "http://127.0.0.1:8889");
    let token = std::env::var("FUSION_E2E_TOKEN").expect("FUSION_E2E_TOKEN: the API token");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("a readable kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("a usable kubeconfig");
    let client = kube::Client::try_from(config).expect("a client");
    let http = reqwest::Client::new();

    let name = format!("e2e-{}", std::process::id());
    let code = format!("def main():\n    return 'hello from {name}'\n");
    let objects = [
        (
            "Environment",
            json!({"version": 2, "runtime": {"image": "fusion/python:0.1.0"}, "poolsize": 1}),
        ),
        (
            "Package",
            json!({
                "environment": {"name": name, "namespace": NAMESPACE},
                "deployment": {"type": "literal",
                    "literal": base64::engine::general_purpose::STANDARD.encode(&code)},
            }),
        ),
        (
            "Function",
            json!({
                "environment": {"name": name, "namespace": NAMESPACE},
                "package": {"functionName": "main",
                    "packageref": {"name": name, "namespace": NAMESPACE}},
            }),
        ),
        (
            "HTTPTrigger",
            json!({
                "relativeurl": format!("/{name}"), "methods": ["GET"],
                "functionref": {"type": "name", "name": name},
            }),
        ),
    ];
    let apply = PatchParams::apply("fusion-e2e").force();
    for (kind, spec) in &objects {
        let doc = json!({
            "apiVersion": "fission.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec,
        });
        api(&client, kind)
            .patch(&name, &apply, &Patch::Apply(&doc))
            .await
            .unwrap_or_else(|e| panic!("cannot apply the {kind}: {e}"));
    }
    for (kind, _) in &objects {
        let api = api(&client, kind);
        until(
            Duration::from_secs(300),
            &format!("{kind} Ready"),
            || async { api.get(&name).await.ok().filter(ready) },
        )
        .await;
    }

    let call = || async {
        let resp = http.get(format!("{router}/{name}")).send().await.ok()?;
        let status = resp.status();
        let text = resp.text().await.ok()?;
        (status.is_success() && text.contains(&format!("hello from {name}"))).then_some(())
    };
    until(Duration::from_secs(300), "the route to answer", call).await;

    // The function's pod goes under it: the pool replaces it.
    let pod_resource = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Pod"));
    let pods: Api<DynamicObject> = Api::namespaced_with(client.clone(), FUNCTIONS, &pod_resource);
    let selector = format!("fusion.dev/env={name},fusion.dev/state=specialized");
    let specialized = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("the function pods are readable");
    assert!(
        !specialized.items.is_empty(),
        "no specialized pod of {name}"
    );
    for pod in &specialized.items {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        pods.delete(&pod_name, &DeleteParams::default())
            .await
            .expect("the pod can be deleted");
    }
    until(Duration::from_secs(300), "the route to answer again", call).await;

    // Deleting the custom resources removes what they made.
    for (kind, _) in objects.iter().rev() {
        api(&client, kind)
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete the {kind}: {e}"));
    }
    until(Duration::from_secs(120), "the function to go", || async {
        let resp = http
            .get(format!("{fusion_api}/v1/functions/{name}"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        (resp.status() == reqwest::StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let env_pods = format!("fusion.dev/env={name}");
    until(
        Duration::from_secs(120),
        "the environment's pods to go",
        || async {
            let left = pods
                .list(&ListParams::default().labels(&env_pods))
                .await
                .ok()?;
            left.items
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
    )
    .await;
}
