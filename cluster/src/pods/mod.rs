//! The `kubernetes` backend: instances as pods. Per environment, generic pods of
//! the environment's image (a bundled runtime's configured image, or its own),
//! each with a `fetcher` sidecar that pulls a function's package from Fusion's
//! API with a per-pod credential when the pool specializes it. One watch on the
//! pool's pods (kube-rs's `watcher`) tells when a pod is ready and when and why
//! it ended; nothing polls. Pods carry labels that find them again: after a
//! restart, generic pods of an unchanged environment are adopted and every
//! other pod of the pool is deleted, so none leaks; while it runs, the watch
//! deletes pool pods the server does not know (a create whose answer was lost,
//! a delete that kept failing). One server per pool: it holds the pool's Lease
//! (`lease.rs`). Each pod's credential is in a Secret the pod owns, mounted in
//! its fetcher only.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use pool_manager::backend::{
    Address, Backend, Exit, Handle, Isolation, LogSink, StartRequest, Usage,
};
use pool_manager::delivery::Credentials;
use pool_manager::{Environment, Error, PackageKind, Result};
use tokio::sync::watch;

pub mod lease;
pub mod spec;
mod watch_pods;

#[cfg(test)]
mod tests;

/// The images of the bundled runtimes on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeImages {
    pub python: String,
    pub nodejs: String,
    pub binary: String,
}

impl Default for RuntimeImages {
    fn default() -> Self {
        RuntimeImages {
            python: "fusion/python:0.1.0".into(),
            nodejs: "fusion/nodejs:0.1.0".into(),
            binary: "fusion/binary:0.1.0".into(),
        }
    }
}

/// How the backend makes pods.
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// Where function pods run (`fusion-functions`).
    pub namespace: String,
    /// This server's pool (the `fusion.dev/pool` label): its pods, and no others.
    pub pool: String,
    pub images: RuntimeImages,
    /// The `fusion` image the `fetcher` container runs.
    pub fetcher_image: String,
    /// Fusion's API as the fetcher reaches it (`http://fusion.fusion.svc:8889`).
    pub api_url: String,
    /// The runtime's port in the pod (Fission's 8888) and the fetcher's (8000).
    pub runtime_port: u16,
    pub fetcher_port: u16,
    /// The control plane's StatefulSet, when Fusion runs in the cluster in the
    /// functions' namespace (Kubernetes has no owners across namespaces).
    pub owner: Option<OwnerReference>,
    /// How long a pod may take to be ready (pulling its image included).
    pub start_timeout: Duration,
    /// How long the fetcher may take to fetch a package.
    pub fetch_timeout: Duration,
    /// Whether the watch backs off after errors (kube-rs's default backoff);
    /// tests that play a scenario turn it off.
    pub watch_backoff: bool,
    /// The first wait before a failed pod delete is tried again (doubling, up
    /// to `DELETE_ATTEMPTS` tries in all).
    pub delete_backoff: Duration,
    /// How long a pod of the pool that this server does not know may live
    /// before the watch deletes it (room for a create in flight).
    pub sweep_grace: Duration,
    /// This server as the holder of the pool's lease.
    pub identity: String,
}

/// How many times a pod delete is tried before its instance ends anyway (the
/// pod is then left to the watch's sweep of pods it does not know).
pub const DELETE_ATTEMPTS: u32 = 5;

impl PodConfig {
    pub fn new(namespace: impl Into<String>, api_url: impl Into<String>) -> PodConfig {
        PodConfig {
            namespace: namespace.into(),
            pool: "fusion".into(),
            images: RuntimeImages::default(),
            fetcher_image: "fusion/fusion:0.1.0".into(),
            api_url: api_url.into(),
            runtime_port: 8888,
            fetcher_port: 8000,
            owner: None,
            start_timeout: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(120),
            watch_backoff: true,
            delete_backoff: Duration::from_millis(250),
            sweep_grace: Duration::from_secs(30),
            identity: lease::identity(),
        }
    }
}

/// Runs instances as pods. Cheap to share: the watch task holds a weak reference.
pub struct PodBackend {
    shared: Arc<Shared>,
}

struct Shared {
    api: Api<Pod>,
    /// The pods' credentials, one Secret per pod (same name, owned by it).
    secrets: Api<Secret>,
    cfg: PodConfig,
    credentials: Arc<Credentials>,
    /// Pods of this server, by name: starting, running, or adoptable.
    pods: Mutex<HashMap<String, Arc<PodState>>>,
    /// Generic ready pods an earlier server left, by environment digest, for
    /// `start` to adopt.
    adoptable: Mutex<HashMap<String, Vec<Arc<PodState>>>>,
    /// Set once cleanup has sorted what an earlier server left: from then on
    /// the watch deletes pool pods this server does not know.
    cleaned: AtomicBool,
    /// Set at shutdown: parked pods stay for the next server, nothing is swept.
    closing: AtomicBool,
    /// Unknown pods waiting out `sweep_grace` before the watch deletes them.
    sweeping: Mutex<HashSet<String>>,
    /// The pool's lease while this server holds it.
    lease: Mutex<Option<HeldLease>>,
}

/// The pool's lease, what stops renewing it, and the renewing task.
struct HeldLease {
    lease: Arc<lease::PoolLease>,
    stop: watch::Sender<bool>,
    renewing: tokio::task::JoinHandle<()>,
}

/// One pod as the backend tracks it; the watch updates it.
struct PodState {
    name: String,
    /// The pod's IP once it is ready.
    ready: watch::Sender<Option<IpAddr>>,
    exit: watch::Sender<Option<Exit>>,
    stop_requested: AtomicBool,
    /// Seen by the watch (so a relist that lacks it means it is gone).
    seen: AtomicBool,
    credential_digest: String,
}

impl PodState {
    fn new(name: &str, credential_digest: &str) -> Arc<PodState> {
        Arc::new(PodState {
            name: name.to_string(),
            ready: watch::channel(None).0,
            exit: watch::channel(None).0,
            stop_requested: AtomicBool::new(false),
            seen: AtomicBool::new(false),
            credential_digest: credential_digest.to_string(),
        })
    }

    /// Records why the pod ended (the first report wins).
    fn end(&self, exit: Exit) {
        self.exit.send_if_modified(|e| {
            let first = e.is_none();
            if first {
                *e = Some(exit.clone());
            }
            first
        });
    }

    fn ended(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

/// Why a call to the cluster failed, in words that say what to do.
fn cluster_error(what: &str, namespace: &str, e: &kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.is_forbidden() => Error::Unavailable(format!(
            "Fusion's service account may not {what} in namespace {namespace} (403 Forbidden): grant it the Role in deploy/kubernetes/rbac.yaml ({})",
            s.message
        )),
        kube::Error::Api(s) if s.code == 404 && s.message.contains("namespace") => {
            Error::Unavailable(format!(
                "cannot {what}: namespace {namespace} does not exist (create it, or pass --kube-namespace): {}",
                s.message
            ))
        }
        other => Error::Unavailable(format!("cannot {what} in namespace {namespace}: {other}")),
    }
}

/// Five random lowercase letters and digits, for pod names.
fn suffix() -> String {
    let (token, _) = pool_manager::delivery::mint_credential().unwrap_or_default();
    token.chars().take(5).collect()
}

impl PodBackend {
    /// A backend on `client`, with the credentials the API's fetch endpoint
    /// checks. Starts the watch on the pool's pods (call within a runtime).
    pub fn new(client: kube::Client, cfg: PodConfig, credentials: Arc<Credentials>) -> PodBackend {
        let shared = Arc::new(Shared {
            secrets: Api::namespaced(client.clone(), &cfg.namespace),
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            credentials,
            pods: Mutex::default(),
            adoptable: Mutex::default(),
            cleaned: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            sweeping: Mutex::default(),
            lease: Mutex::default(),
        });
        watch_pods::spawn(&shared);
        PodBackend { shared }
    }
}

impl PodBackend {
    /// Takes the pool's lease (refusing to start while another server holds
    /// it), then a backend as `new` makes it; the lease is renewed while it
    /// runs and released at shutdown.
    pub async fn connect(
        client: kube::Client,
        cfg: PodConfig,
        credentials: Arc<Credentials>,
    ) -> Result<PodBackend> {
        let held = Arc::new(lease::PoolLease::new(
            client.clone(),
            &cfg.namespace,
            &cfg.pool,
            &cfg.identity,
        ));
        held.take().await?;
        let (stop, stopped) = watch::channel(false);
        let renewing = held.clone().keep(stopped);
        let backend = PodBackend::new(client, cfg, credentials);
        *lock(&backend.shared.lease) = Some(HeldLease {
            lease: held,
            stop,
            renewing,
        });
        Ok(backend)
    }
}

/// Whether trying again may succeed: not a refusal (a 4xx other than 409 and 429).
fn may_pass(e: &kube::Error) -> bool {
    !matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn forget(&self, state: &PodState) {
        lock(&self.pods).remove(&state.name);
        self.credentials.forget(&state.credential_digest);
    }

    /// Deletes the pod (gone already counts as done).
    async fn delete(&self, name: &str) -> std::result::Result<(), kube::Error> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the pod, trying again with a doubling wait after a failure that
    /// may pass (not a 4xx other than 409 and 429), `DELETE_ATTEMPTS` times.
    async fn delete_retrying(&self, name: &str) -> std::result::Result<(), kube::Error> {
        let mut wait = self.cfg.delete_backoff;
        let mut attempt = 1;
        loop {
            match self.delete(name).await {
                Ok(()) => return Ok(()),
                Err(e) if !may_pass(&e) => return Err(e),
                Err(e) if attempt >= DELETE_ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::debug!(pod = %name, attempt, "cannot delete pod, trying again in {wait:?}: {e}");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// A pod of the pool this server does not know (an earlier create whose
    /// answer was lost, a pod whose delete failed): once cleanup is done and
    /// after `sweep_grace`, deleted, unless it became known or went meanwhile.
    fn sweep(self: &Arc<Self>, pod: &Pod) {
        let Some(name) = pod.metadata.name.clone() else {
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            lock(&self.sweeping).remove(&name);
            return;
        }
        if !self.cleaned.load(Ordering::SeqCst) {
            return;
        }
        self.sweep_later(name);
    }

    /// Deletes pod `name` after `sweep_grace` unless it is known or gone by then.
    fn sweep_later(self: &Arc<Self>, name: String) {
        if self.lease_lost() {
            tracing::warn!(pod = %name, "not deleting a pod of the pool this server does not know: another server holds the pool's lease now");
            return;
        }
        if self.closing.load(Ordering::SeqCst) || !lock(&self.sweeping).insert(name.clone()) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(shared.cfg.sweep_grace).await;
            let still = lock(&shared.sweeping).remove(&name)
                && !lock(&shared.pods).contains_key(&name)
                && !shared.closing.load(Ordering::SeqCst)
                && !shared.lease_lost();
            if still {
                tracing::info!(pod = %name, "deleting a pod of the pool this server does not know");
                match shared.delete_retrying(&name).await {
                    Ok(()) => {}
                    Err(e) if may_pass(&e) => {
                        tracing::warn!(pod = %name, "cannot delete pod, trying again later: {e}");
                        shared.sweep_later(name);
                    }
                    Err(e) => tracing::warn!(
                        "{}",
                        cluster_error(&format!("delete pod {name}"), &shared.cfg.namespace, &e)
                    ),
                }
            }
        });
    }

    /// Whether another server took the pool's lease from this one.
    fn lease_lost(&self) -> bool {
        lock(&self.lease).as_ref().is_some_and(|h| h.lease.lost())
    }

    /// A pod of the pool went: no sweep of it is needed.
    fn unsweep(&self, name: &str) {
        lock(&self.sweeping).remove(name);
    }

    /// Creates a pod for `env`, under a new name when the first is taken.
    async fn create(self: &Arc<Self>, env: &Environment, image: &str) -> Result<Arc<PodState>> {
        let cfg = &self.cfg;
        let (credential, digest) = pool_manager::delivery::mint_credential()?;
        for _ in 0..3 {
            let name = spec::pod_name(&cfg.pool, &env.name, &suffix());
            let pod = spec::pod(&name, env, cfg, image, &digest);
            let state = PodState::new(&name, &digest);
            // Known before it exists, so no watch event about it is missed.
            lock(&self.pods).insert(name.clone(), state.clone());
            match self.api.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    // Its credential, in a Secret the pod owns: the fetcher
                    // starts once it exists.
                    let uid = created.metadata.uid.unwrap_or_default();
                    let secret = spec::credential_secret(&name, cfg, &uid, &credential);
                    if let Err(e) = self.secrets.create(&PostParams::default(), &secret).await {
                        stop_pod(self.clone(), state);
                        return Err(cluster_error("create secrets", &cfg.namespace, &e));
                    }
                    self.credentials.register(&digest, &name);
                    return Ok(state);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    lock(&self.pods).remove(&name);
                    tracing::debug!(pod = %name, "pod name taken; trying another");
                }
                Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => {
                    // Refused: there is no pod.
                    lock(&self.pods).remove(&name);
                    return Err(cluster_error(
                        "create pods",
                        &cfg.namespace,
                        &kube::Error::Api(s),
                    ));
                }
                Err(e) => {
                    // A timeout or a server error: the pod may exist all the
                    // same, so it is deleted by the name it was given.
                    tracing::warn!(pod = %name, "creating the pod failed; deleting it in case it was created: {e}");
                    stop_pod(self.clone(), state);
                    return Err(cluster_error("create pods", &cfg.namespace, &e));
                }
            }
        }
        Err(Error::Unavailable(format!(
            "cannot create a pod for environment {}: three names in a row were taken in namespace {}",
            env.name, cfg.namespace
        )))
    }

    /// A generic pod an earlier server left for `digest`, if one is still up.
    fn adopt(&self, digest: &str) -> Option<Arc<PodState>> {
        let mut adoptable = lock(&self.adoptable);
        let list = adoptable.get_mut(digest)?;
        while let Some(state) = list.pop() {
            if !state.ended() && state.ready.borrow().is_some() {
                return Some(state);
            }
        }
        None
    }
}

impl Backend for PodBackend {
    fn isolation(&self) -> Isolation {
        Isolation {
            backend: "kubernetes",
            summary: format!(
                "pods in namespace {}: each instance is a pod with its own network, filesystem, and memory and CPU requests and limits",
                self.shared.cfg.namespace
            ),
        }
    }

    fn pulls_images(&self) -> bool {
        true
    }

    /// The fetcher writes them into the pod's `/secrets` and `/configs`.
    fn delivers_files(&self) -> bool {
        true
    }

    fn accepts(&self, env: &Environment) -> Result<()> {
        if spec::image_of(env, &self.shared.cfg).is_none() {
            return Err(Error::Invalid(format!(
                "environment {}: the kubernetes backend runs images; give it an image (one whose runtime listens on port 8888, as Fission's do) or a bundled runtime (python, nodejs, binary), not a command",
                env.name
            )));
        }
        if env
            .image
            .as_deref()
            .is_some_and(|i| i.starts_with('/') || i.starts_with('.'))
        {
            return Err(Error::Invalid(format!(
                "environment {}: image {:?} is a path on this machine; the cluster's nodes pull images from a registry: push it to one and give its reference",
                env.name,
                env.image.as_deref().unwrap_or_default()
            )));
        }
        if env.network == pool_manager::Network::None {
            return Err(Error::Invalid(format!(
                "environment {}: network none is not enforced on the kubernetes backend yet (it needs a NetworkPolicy); leave network unset",
                env.name
            )));
        }
        Ok(())
    }

    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Handle>>> {
        Box::pin(async move {
            let shared = &self.shared;
            if shared.lease_lost() {
                return Err(Error::Unavailable(format!(
                    "another Fusion server holds the lease of pool {} now: this server starts no more pods; restart it with another --kube-pool",
                    shared.cfg.pool
                )));
            }
            let env = &req.env;
            let image = spec::image_of(env, &shared.cfg)
                .ok_or_else(|| Error::Invalid(format!("environment {} has no image", env.name)))?;
            let digest = spec::env_digest(env, &shared.cfg);
            let (state, adopted) = match shared.adopt(&digest) {
                Some(state) => {
                    (req.logs)("fusion", &format!("adopted pod {}", state.name));
                    (state, true)
                }
                None => {
                    let state = shared.create(env, &image).await?;
                    (req.logs)("fusion", &format!("created pod {}", state.name));
                    (state, false)
                }
            };
            let mut ready = state.ready.subscribe();
            let mut exit = state.exit.subscribe();
            let waited = tokio::time::timeout(shared.cfg.start_timeout, async {
                tokio::select! {
                    ip = ready.wait_for(Option::is_some) => Ok(ip.ok().and_then(|ip| *ip)),
                    e = exit.wait_for(Option::is_some) => Err(e.ok().and_then(|e| e.clone())),
                }
            })
            .await;
            let ip = match waited {
                Ok(Ok(Some(ip))) => ip,
                Ok(Err(exit)) => {
                    stop_pod(shared.clone(), state.clone());
                    let why = exit.map(|e| e.to_string()).unwrap_or_default();
                    return Err(Error::Unavailable(format!(
                        "environment {}: pod {} {why} while starting",
                        env.name, state.name
                    )));
                }
                _ => {
                    stop_pod(shared.clone(), state.clone());
                    return Err(Error::Unavailable(format!(
                        "environment {}: pod {} was not ready within {:?} (see `kubectl describe pod -n {} {}`)",
                        env.name, state.name, shared.cfg.start_timeout, shared.cfg.namespace, state.name
                    )));
                }
            };
            follow_logs(
                shared.clone(),
                state.name.clone(),
                req.logs.clone(),
                adopted,
            );
            let handle = PodHandle {
                shared: shared.clone(),
                state,
                address: Address::Tcp(SocketAddr::new(ip, shared.cfg.runtime_port)),
                fetcher: SocketAddr::new(ip, shared.cfg.fetcher_port),
            };
            Ok(Arc::new(handle) as Arc<dyn Handle>)
        })
    }

    fn cleanup_stale<'a>(&'a self, envs: &'a [Environment]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.shared.cleanup(envs).await {
                tracing::warn!("cannot tidy the pods an earlier server left: {e}");
            }
            self.shared.cleaned.store(true, Ordering::SeqCst);
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.closing.store(true, Ordering::SeqCst);
            // Pods still starting when the server stopped. Parked ones stay, and
            // so do generic pods of an earlier server not adopted this time.
            let adoptable: std::collections::HashSet<String> = lock(&self.shared.adoptable)
                .values()
                .flatten()
                .map(|s| s.name.clone())
                .collect();
            let left: Vec<Arc<PodState>> = lock(&self.shared.pods)
                .values()
                .filter(|s| !s.ended() && !adoptable.contains(&s.name))
                .cloned()
                .collect();
            for state in left {
                if let Err(e) = self.shared.delete(&state.name).await {
                    tracing::warn!(pod = %state.name, "cannot delete pod: {e}");
                }
            }
            let held = lock(&self.shared.lease).take();
            if let Some(held) = held {
                held.stop.send_replace(true);
                // A renewal in flight finishes before the release reads the lease.
                let _ = held.renewing.await;
                held.lease.release().await;
            }
        })
    }
}

impl Shared {
    /// Lists the pool's pods: keeps generic ready pods of a current environment
    /// (up to its pool size) for `start` to adopt, deletes all the others.
    async fn cleanup(self: &Arc<Self>, envs: &[Environment]) -> Result<()> {
        let cfg = &self.cfg;
        let params = ListParams::default().labels(&spec::pool_selector(&cfg.pool));
        // The watch's first report comes before cleanup is done and is not
        // swept: the list must succeed, or an earlier server's pods would stay.
        let mut wait = cfg.delete_backoff;
        let mut attempt = 1;
        let list = loop {
            match self.api.list(&params).await {
                Ok(list) => break list,
                Err(e) if attempt >= DELETE_ATTEMPTS => {
                    return Err(cluster_error("list pods", &cfg.namespace, &e));
                }
                Err(e) => {
                    tracing::debug!(
                        attempt,
                        "cannot list the pool's pods, trying again in {wait:?}: {e}"
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        };
        let mut wanted: HashMap<String, usize> = HashMap::new();
        for env in envs {
            *wanted.entry(spec::env_digest(env, cfg)).or_default() += env.poolsize;
        }
        for pod in list.items {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let label = |k: &str| {
                pod.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            };
            let credential = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(spec::ANNOTATION_CREDENTIAL))
                .cloned();
            let digest = label(spec::LABEL_ENV_DIGEST);
            let keep = match (spec::view(&pod), credential) {
                (spec::PodView::Ready(ip), Some(credential))
                    if label(spec::LABEL_STATE) == spec::GENERIC =>
                {
                    match wanted.get_mut(&digest) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            Some((ip, credential))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            match keep {
                Some((ip, credential)) => {
                    tracing::info!(pod = %name, "adopting a generic pod an earlier server left");
                    let state = PodState::new(&name, &credential);
                    state.ready.send_replace(Some(ip));
                    state.seen.store(true, Ordering::SeqCst);
                    self.credentials.register(&credential, &name);
                    lock(&self.pods).insert(name.clone(), state.clone());
                    lock(&self.adoptable).entry(digest).or_default().push(state);
                }
                None => {
                    tracing::info!(pod = %name, "deleting a pod an earlier server left");
                    // One that cannot be deleted now does not keep the others:
                    // the sweep tries it again later.
                    if let Err(e) = self.delete_retrying(&name).await {
                        tracing::warn!(
                            "{}",
                            cluster_error(&format!("delete pod {name}"), &cfg.namespace, &e)
                        );
                        self.sweep_later(name);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sends what the pod's runtime writes (its container log) to the instance's
/// log sink, until the pod goes; an adopted pod's from now on, not again.
fn follow_logs(shared: Arc<Shared>, name: String, sink: LogSink, from_now: bool) {
    use futures_util::{AsyncBufReadExt, StreamExt};
    tokio::spawn(async move {
        let params = LogParams {
            container: Some("runtime".into()),
            follow: true,
            tail_lines: from_now.then_some(0),
            ..LogParams::default()
        };
        let stream = match shared.api.log_stream(&name, &params).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(pod = %name, "cannot follow the pod's log: {e}");
                return;
            }
        };
        drop(shared);
        let mut lines = std::pin::pin!(stream.lines());
        while let Some(Ok(line)) = lines.next().await {
            sink("stdout", &line);
        }
    });
}

/// Deletes the pod Fusion no longer wants; its instance has then `Stopped`.
fn stop_pod(shared: Arc<Shared>, state: Arc<PodState>) {
    if state.stop_requested.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        if let Err(e) = shared.delete_retrying(&state.name).await {
            // The instance ends all the same (the pool does not keep a zombie);
            // the pod, now unknown, is left to the watch's sweep.
            tracing::warn!(
                pod = %state.name,
                "cannot delete pod ({DELETE_ATTEMPTS} tries); it is tried again later: {e}"
            );
            state.end(Exit::Stopped);
            shared.forget(&state);
            shared.sweep_later(state.name.clone());
            return;
        }
        state.end(Exit::Stopped);
        shared.forget(&state);
    });
}

/// A started pod, as the pool sees it.
struct PodHandle {
    shared: Arc<Shared>,
    state: Arc<PodState>,
    address: Address,
    fetcher: SocketAddr,
}

impl PodHandle {
    /// Marks the pod specialized (never adopted by a later server), then has its
    /// fetcher pull the package (and the function's secrets and configmaps) with
    /// the pod's credential, allowed exactly this package for as long as the
    /// fetch takes.
    async fn fetch(
        &self,
        package: &pool_manager::PackageRef,
        files: Vec<pool_manager::backend::StagedFile>,
    ) -> Result<String> {
        let shared = &self.shared;
        let cfg = &shared.cfg;
        let patch = serde_json::json!({
            "metadata": {"labels": {spec::LABEL_STATE: spec::SPECIALIZED}}
        });
        shared
            .api
            .patch(
                &self.state.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| cluster_error("patch pods", &cfg.namespace, &e))?;
        let body = serde_json::json!({
            "package": package.sha256,
            "kind": match package.kind { PackageKind::File => "file", _ => "archive" },
            "filename": package.filename,
            "files": !files.is_empty(),
        });
        let digest = &self.state.credential_digest;
        shared.credentials.allow(digest, package, files);
        let outcome =
            tokio::time::timeout(cfg.fetch_timeout, call_fetcher(self.fetcher, body)).await;
        shared.credentials.revoke(digest);
        let failed = |why: String| {
            Error::Upstream(format!(
                "the fetcher of pod {} could not fetch package {}: {why}",
                self.state.name, package.sha256
            ))
        };
        match outcome {
            Err(_) => Err(failed(format!("no answer within {:?}", cfg.fetch_timeout))),
            Ok(Err(why)) => Err(failed(why)),
            Ok(Ok(path)) => Ok(path),
        }
    }
}

/// `POST /fetch` to a fetcher; its answer's `filepath`.
async fn call_fetcher(
    addr: SocketAddr,
    body: serde_json::Value,
) -> std::result::Result<String, String> {
    use http_body_util::BodyExt;
    let client = pool_manager::backend::connect::InstanceClient::new(Address::Tcp(addr));
    let req = http::Request::post("http://fetcher/fetch")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))?;
    answer["filepath"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "its answer has no filepath".to_string())
}

impl Handle for PodHandle {
    fn address(&self) -> &Address {
        &self.address
    }

    fn stage(
        self: Arc<Self>,
        staging: pool_manager::backend::Staging,
    ) -> BoxFuture<'static, Result<String>> {
        Box::pin(async move { self.fetch(&staging.package, staging.files).await })
    }

    fn stage_code(&self, _package: &Path) -> Result<String> {
        Err(Error::Internal(
            "a pod's code is fetched by its fetcher, not staged on this machine".into(),
        ))
    }

    fn stop(&self) {
        stop_pod(self.shared.clone(), self.state.clone());
    }

    fn park(&self) -> bool {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.state.end(Exit::Stopped);
        lock(&self.shared.pods).remove(&self.state.name);
        true
    }

    fn exit(&self) -> watch::Receiver<Option<Exit>> {
        self.state.exit.subscribe()
    }

    fn usage(&self) -> Usage {
        Usage::default()
    }
}

/// The owner function pods get when Fusion runs in the cluster: the StatefulSet
/// that owns Fusion's own pod (named by the downward API's `POD_NAME` and
/// `POD_NAMESPACE`), if it is in `functions_namespace` (Kubernetes treats an
/// owner in another namespace as absent and would delete the pods). `None`
/// from outside the cluster.
pub async fn find_owner(
    client: &kube::Client,
    functions_namespace: &str,
) -> Option<OwnerReference> {
    let name = std::env::var("POD_NAME").ok()?;
    let namespace = std::env::var("POD_NAMESPACE").ok()?;
    if namespace != functions_namespace {
        tracing::info!(
            "function pods run in namespace {functions_namespace}, Fusion in {namespace}: they carry Fusion's labels, not an owner reference (owners cannot cross namespaces)"
        );
        return None;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let me = pods.get(&name).await.ok()?;
    let owner = me
        .metadata
        .owner_references?
        .into_iter()
        .find(|o| o.kind == "StatefulSet")?;
    Some(OwnerReference {
        api_version: owner.api_version,
        kind: owner.kind,
        name: owner.name,
        uid: owner.uid,
        controller: Some(false),
        block_owner_deletion: Some(false),
    })
}
