//! Removing the code nothing uses any more. Packages are content-addressed
//! and shared, so none is removed when a function or a named package goes:
//! `prune_packages` marks what is still used (every function's own code, every
//! named package's source, deployment and last build, and what each running
//! instance loaded) and removes the rest, except what was stored or claimed
//! within `PRUNE_GRACE` (an upload whose function is about to be made, a
//! build whose result is about to be recorded). Build cache entries whose
//! deployment was removed go with it. The server runs it every
//! `PoolConfig::prune_interval`, and on demand (`POST /v1/archives/prune`).
//! Unpacked images go the same way: those no environment's pool was given
//! or would start from now, unpacked or started from longer ago than the grace.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::instance::lock;
use crate::package::Pruned;
use crate::pool::{Inner, PoolManager};
use crate::resources::FunctionPackage;

/// How long a package nothing uses is kept after it was last stored or
/// claimed: longer than any upload takes to be named by what it was uploaded for.
pub const PRUNE_GRACE: Duration = Duration::from_secs(3600);

impl PoolManager {
    /// Removes the packages nothing uses (see the module's documentation).
    pub async fn prune_packages(&self) -> Result<Pruned> {
        self.inner.prune_packages().await
    }
}

impl Inner {
    pub(crate) async fn prune_packages(&self) -> Result<Pruned> {
        // One at a time: the timer's and the API's.
        let _one = self.pruning.lock().await;
        let mut used = HashSet::new();
        for f in self.store.functions()? {
            if let FunctionPackage::Stored(r) = &f.package {
                used.insert(r.sha256.clone());
            }
        }
        for p in self.builds.list()? {
            for r in [&p.source, &p.deployment, &p.status.built]
                .into_iter()
                .flatten()
            {
                used.insert(r.sha256.clone());
            }
        }
        used.extend(self.instance_codes());
        let packages = self.packages.clone();
        let mut pruned = tokio::task::spawn_blocking(move || packages.prune(&used, PRUNE_GRACE))
            .await
            .map_err(|e| Error::Internal(format!("pruning packages failed: {e}")))??;
        // Unpacked images (up to 4 GiB each) no environment uses.
        let images = self.images_in_use();
        let dir = self.cfg.data_dir.join("images");
        (pruned.images_removed, pruned.image_bytes) = tokio::task::spawn_blocking(move || {
            crate::backend::image::prune(&dir, &images, PRUNE_GRACE)
        })
        .await
        .map_err(|e| Error::Internal(format!("pruning images failed: {e}")))?;
        if !pruned.images_removed.is_empty() {
            tracing::info!(
                "removed {} unpacked image(s) that no environment uses ({} MiB)",
                pruned.images_removed.len(),
                pruned.image_bytes.div_ceil(1 << 20)
            );
        }
        if !pruned.removed.is_empty() {
            let removed: HashSet<&str> = pruned.removed.iter().map(String::as_str).collect();
            self.builds.forget_builds_of(&removed)?;
            self.metrics
                .packages_pruned
                .inc_by(pruned.removed.len() as u64);
            self.metrics.package_bytes_pruned.inc_by(pruned.bytes);
            tracing::info!(
                "removed {} package(s) that no function or package uses ({} KiB)",
                pruned.removed.len(),
                pruned.bytes.div_ceil(1024)
            );
        }
        Ok(pruned)
    }

    /// The code every running instance loaded (a runtime of the process
    /// backend reads it in place, and may go on doing so while it drains).
    fn instance_codes(&self) -> Vec<String> {
        self.all_instances()
            .iter()
            .filter(|i| !i.is_exited())
            .filter_map(|i| lock(&i.code).clone())
            .collect()
    }
}

/// Prunes every `interval` while the pool manager lives.
pub(crate) fn every(inner: std::sync::Weak<Inner>, interval: Duration) {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + interval;
        let mut tick = tokio::time::interval_at(start, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            if inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if let Err(e) = inner.prune_packages().await {
                tracing::warn!("pruning unused packages failed: {e}");
            }
        }
    });
}
