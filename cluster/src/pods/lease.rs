//! The pool's Lease (coordination.k8s.io/v1, named after the pool, in the
//! functions' namespace): one server per pool. Two servers with the same
//! `--kube-pool` (a laptop's against a cluster where the StatefulSet runs)
//! would otherwise delete each other's pods. A server takes the lease at start
//! (refusing to start while another holder's lease is live, taking over an
//! expired one), renews it while it runs and releases it at shutdown.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use pool_manager::{Error, Result};

use super::cluster_error;

/// How long a lease lasts without renewal; renewed every third of it.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// This server's name as a lease holder: its pod's name in the cluster (so a
/// restarted StatefulSet pod takes its own lease back at once), else the host
/// and process.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{}", std::process::id())
}

/// The pool's lease as this server holds it.
pub struct PoolLease {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    duration: Duration,
    /// Set once another server was found holding the lease while this one ran.
    lost: std::sync::atomic::AtomicBool,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// When `lease` runs out (`None`: it has no holder or no renewal: free).
fn expiry(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    spec.holder_identity.as_ref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = spec.lease_duration_seconds.unwrap_or(0);
    renewed
        .checked_add(SignedDuration::from_secs(seconds.into()))
        .ok()
}

impl PoolLease {
    pub fn new(client: kube::Client, namespace: &str, pool: &str, identity: &str) -> PoolLease {
        PoolLease {
            api: Api::namespaced(client, namespace),
            name: pool.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            duration: LEASE_DURATION,
            lost: Default::default(),
        }
    }

    /// Whether another server took the lease while this one ran: this server
    /// must then leave alone the pool's pods it does not know (they may be the
    /// other server's).
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes the lease: creates it when there is none, takes it over when it
    /// is free, expired or already this server's; refuses (naming the holder)
    /// while another server's is live.
    pub async fn take(&self) -> Result<()> {
        let ns = &self.namespace;
        for _ in 0..3 {
            let found = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| cluster_error("get leases", ns, &e))?;
            let outcome = match found {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            namespace: Some(ns.clone()),
                            labels: Some(
                                [("app.kubernetes.io/managed-by".to_string(), "fusion".into())]
                                    .into(),
                            ),
                            ..ObjectMeta::default()
                        },
                        spec: Some(self.spec(None, 0)),
                    };
                    self.api
                        .create(&PostParams::default(), &lease)
                        .await
                        .map(|_| ())
                        .map_err(|e| (e, "create leases"))
                }
                Some(mut lease) => {
                    let spec = lease.spec.clone().unwrap_or_default();
                    let holder = spec.holder_identity.clone().unwrap_or_default();
                    let mine = holder == self.identity;
                    match expiry(&lease) {
                        Some(until) if !mine && until > Timestamp::now() => {
                            return Err(Error::Unavailable(format!(
                                "another Fusion server ({holder}) runs pool {} in namespace {ns}: its lease {ns}/{} is held until {until}; stop it, or give this server another --kube-pool",
                                self.name, self.name
                            )));
                        }
                        _ => {}
                    }
                    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
                    if !mine && !holder.is_empty() {
                        tracing::info!(
                            "taking over the expired lease {ns}/{} of {holder}",
                            self.name
                        );
                    }
                    let acquired = if mine { spec.acquire_time } else { None };
                    lease.spec = Some(self.spec(acquired, transitions));
                    // Replaced at the version read: a 409 means someone else
                    // wrote it meanwhile, and it is read again.
                    self.api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await
                        .map(|_| ())
                        .map_err(|e| (e, "update leases"))
                }
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err((kube::Error::Api(s), _)) if s.code == 409 => continue,
                Err((e, what)) => return Err(cluster_error(what, ns, &e)),
            }
        }
        Err(Error::Unavailable(format!(
            "cannot take the lease {ns}/{}: it changed under this server three times in a row",
            self.name
        )))
    }

    /// Renews the lease while this server holds it; says so (and returns
    /// false) when another server holds it now.
    pub async fn renew(&self) -> bool {
        let lease = match self.api.get_opt(&self.name).await {
            Ok(Some(lease)) => lease,
            // Deleted under this server: take it again. A failure (another
            // server created it first, a 5xx) is seen by the next renewal's
            // read, which says whose it is.
            Ok(None) => {
                if let Err(e) = self.take().await {
                    tracing::warn!("cannot take the pool's lease {} again: {e}", self.name);
                }
                return true;
            }
            Err(e) => {
                tracing::warn!("cannot renew the pool's lease {}: {e}", self.name);
                return true;
            }
        };
        let mut lease = lease;
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.is_none() {
            // Released by hand: no other server holds it; take it again.
            if let Err(e) = self.take().await {
                tracing::warn!("cannot take the pool's lease {} again: {e}", self.name);
            }
            return true;
        }
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            tracing::error!(
                "the pool's lease {}/{} is held by {} now: another Fusion server runs this pool",
                self.namespace,
                self.name,
                spec.holder_identity.unwrap_or_default()
            );
            self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
            return false;
        }
        spec.renew_time = Some(now());
        lease.spec = Some(spec);
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!("cannot renew the pool's lease {}: {e}", self.name);
        }
        true
    }

    /// Renews the lease every third of its duration until `stop` is set.
    pub fn keep(
        self: std::sync::Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let mut stop = stop;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.duration / 3) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if !self.renew().await {
                    return;
                }
            }
        })
    }

    /// Gives the lease up (no holder), if this server still holds it.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!("cannot release the pool's lease {}: {e}", self.name);
        }
    }
}
