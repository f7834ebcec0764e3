//! The one watch on the pool's pods (kube-rs's `watcher`, by the pool's label):
//! a pod that becomes ready resolves its start, one whose container terminated
//! or that failed, was evicted or deleted ends its instance with the reason.
//! A watch that restarts (its resource version too old: 410 Gone) lists the
//! pods again; a pod the watch had seen that the new list lacks went meanwhile.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use pool_manager::backend::Exit;

use super::spec::{self, PodView};
use super::{lock, Shared};

/// Starts the watch; it ends when the backend is dropped.
pub(super) fn spawn(shared: &Arc<Shared>) {
    let config = watcher::Config::default().labels(&spec::pool_selector(&shared.cfg.pool));
    let stream = watcher::watcher(shared.api.clone(), config).boxed();
    // After an error the watch lists again, backing off as kube-rs's
    // controllers do (800 ms growing to 30 s) so that a lasting error (403)
    // does not hammer the API server.
    let mut stream = if shared.cfg.watch_backoff {
        stream.default_backoff().boxed()
    } else {
        stream
    };
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        // The pods listed since the last `Init`.
        let mut listed: Option<HashSet<String>> = None;
        while let Some(event) = stream.next().await {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            match event {
                Ok(Event::Init) => listed = Some(HashSet::new()),
                Ok(Event::InitApply(pod)) => {
                    if let (Some(listed), Some(name)) = (&mut listed, &pod.metadata.name) {
                        listed.insert(name.clone());
                    }
                    observe(&shared, &pod);
                }
                Ok(Event::InitDone) => {
                    if let Some(listed) = listed.take() {
                        relisted(&shared, &listed);
                    }
                }
                Ok(Event::Apply(pod)) => observe(&shared, &pod),
                Ok(Event::Delete(pod)) => deleted(&shared, &pod),
                Err(e) => {
                    let forbidden = matches!(&e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.is_forbidden());
                    if forbidden {
                        tracing::error!(
                            namespace = %shared.cfg.namespace,
                            "Fusion's service account may not list and watch pods (403 Forbidden): grant it the Role in deploy/kubernetes/rbac.yaml"
                        );
                    } else {
                        tracing::debug!("the pod watch restarts: {e}");
                    }
                }
            }
        }
    });
}

/// A pod was added or changed.
fn observe(shared: &Arc<Shared>, pod: &Pod) {
    let Some(name) = &pod.metadata.name else {
        return;
    };
    let Some(state) = lock(&shared.pods).get(name).cloned() else {
        shared.sweep(pod);
        return;
    };
    state.seen.store(true, Ordering::SeqCst);
    match spec::view(pod) {
        PodView::Pending => {}
        PodView::Ready(ip) => {
            state.ready.send_if_modified(|r| {
                let changed = *r != Some(ip);
                *r = Some(ip);
                changed
            });
        }
        PodView::Ended(exit) => {
            let exit = if state.stop_requested.load(Ordering::SeqCst) {
                Exit::Stopped
            } else {
                exit
            };
            tracing::debug!(pod = %name, %exit, "pod ended");
            state.end(exit);
            // What is left of it goes (a failed pod stays until deleted).
            super::stop_pod(shared.clone(), state);
        }
    }
}

/// A pod was deleted.
fn deleted(shared: &Shared, pod: &Pod) {
    let Some(name) = &pod.metadata.name else {
        return;
    };
    shared.unsweep(name);
    let Some(state) = lock(&shared.pods).get(name).cloned() else {
        return;
    };
    gone(shared, &state);
}

fn gone(shared: &Shared, state: &super::PodState) {
    let exit = if state.stop_requested.load(Ordering::SeqCst) {
        Exit::Stopped
    } else {
        Exit::Vanished("its pod was deleted".into())
    };
    state.end(exit);
    shared.forget(state);
}

/// After a relist: pods the watch had seen that are no longer there went while
/// it was not watching.
fn relisted(shared: &Shared, listed: &HashSet<String>) {
    let missing: Vec<Arc<super::PodState>> = lock(&shared.pods)
        .values()
        .filter(|s| s.seen.load(Ordering::SeqCst) && !listed.contains(&s.name))
        .cloned()
        .collect();
    for state in missing {
        gone(shared, &state);
    }
}
