//! Fusion on Kubernetes: the `kubernetes` backend (instances as pods), Fission's
//! `fission.io/v1` resources as custom resources, and the connection to the
//! cluster. Built only with the `kubernetes` feature of the `fusion` binary: the
//! embedded shape never compiles it.

use anyhow::Context;

pub mod crd;
pub mod manifests;
pub mod pods;

/// A client for the cluster: in-cluster (the pod's service account) when Fusion
/// runs in a pod, else the kubeconfig (`KUBECONFIG` or `~/.kube/config`), with
/// `context` chosen when given.
pub async fn connect(context: Option<String>) -> anyhow::Result<kube::Client> {
    let config = match context {
        Some(context) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
            context: Some(context),
            ..Default::default()
        })
        .await
        .context("cannot read the kubeconfig")?,
        None => kube::Config::infer()
            .await
            .context("no cluster to talk to: not in a pod, and no kubeconfig")?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}
