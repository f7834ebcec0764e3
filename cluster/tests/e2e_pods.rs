//! The pod backend against a real cluster, behind `FUSION_E2E_KUBECONFIG` (the
//! kubeconfig of a cluster the test may create pods in; skipped without it,
//! and not yet run against one). `FUSION_E2E_NAMESPACE` (default
//! `fusion-functions`, which must exist) and `FUSION_E2E_PYTHON_IMAGE` (default
//! `fusion/python:0.1.0`, pullable by the cluster) choose where and what.
//! It starts a generic pod, sees it ready, stops it, and checks that none of the
//! test's pods is left.

use std::sync::Arc;
use std::time::Duration;

use cluster::pods::{PodBackend, PodConfig};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use pool_manager::backend::{Backend, Exit, StartRequest};
use pool_manager::delivery::Credentials;

#[tokio::test]
async fn a_generic_pod_starts_and_is_deleted_on_a_real_cluster() {
    let Ok(kubeconfig) = std::env::var("FUSION_E2E_KUBECONFIG") else {
        eprintln!("skipped: FUSION_E2E_KUBECONFIG is not set");
        return;
    };
    let namespace =
        std::env::var("FUSION_E2E_NAMESPACE").unwrap_or_else(|_| "fusion-functions".into());
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("a readable kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("a usable kubeconfig");
    let client = kube::Client::try_from(config).unwrap();
    let pool = format!("e2e-{}", std::process::id());
    let mut cfg = PodConfig::new(namespace.clone(), "http://127.0.0.1:9");
    cfg.pool = pool.clone();
    cfg.start_timeout = Duration::from_secs(180);
    if let Ok(image) = std::env::var("FUSION_E2E_PYTHON_IMAGE") {
        cfg.images.python = image;
    }
    let backend = PodBackend::new(client.clone(), cfg, Arc::new(Credentials::default()));
    let env: pool_manager::Environment = serde_json::from_value(serde_json::json!({
        "name": "e2e-python", "runtime": "python", "poolsize": 1, "memory_mb": 128,
    }))
    .unwrap();
    backend.cleanup_stale(std::slice::from_ref(&env)).await;
    let handle = backend
        .start(StartRequest {
            id: 1,
            env,
            logs: Arc::new(|_, line| eprintln!("{line}")),
            stopping: tokio::sync::watch::channel(false).1,
        })
        .await
        .expect("the pod became ready");
    eprintln!("ready at {}", handle.address());
    handle.stop();
    let mut exit = handle.exit();
    let ended = tokio::time::timeout(Duration::from_secs(60), exit.wait_for(Option::is_some))
        .await
        .expect("the pod was deleted in time")
        .unwrap()
        .clone();
    assert_eq!(ended, Some(Exit::Stopped));
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let left = pods
        .list(&ListParams::default().labels(&format!("fusion.dev/pool={pool}")))
        .await
        .unwrap();
    assert!(
        left.items
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some()),
        "pods left: {:?}",
        left.items
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
}
