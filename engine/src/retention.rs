//! The retention sweeper: deletes finished runs past the server-wide retention
//! (`--run-retention-hours`) and past each RFC-0022 workflow's own
//! `historyRetention` (`maxAge`, `maxCount`), as Fission's sweeper does: per
//! workflow, its finished runs newest first, those older than `maxAge` or
//! past the first `maxCount` go. Running runs are never touched.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::driver::Engine;
use crate::sfn::spec::parse_go_duration;
use crate::store::{RunStore, SledStore};

/// How often the sweeper runs unless configured.
pub const DEFAULT_SWEEP: Duration = Duration::from_secs(60);

/// A run is kept at least this long after it finished, whatever its
/// workflow's policy (even `maxCount: 0`), so that the caller waiting for it
/// still reads its outcome.
const SETTLE: Duration = Duration::from_secs(5);

/// Starts the sweeper; it ends with the engine.
pub(crate) fn start(engine: &Arc<Engine>, every: Duration, global: Option<Duration>) {
    let weak: Weak<Engine> = Arc::downgrade(engine);
    tokio::spawn(async move {
        loop {
            let Some(e) = weak.upgrade() else { return };
            let now = e.now_ms();
            let cutoff = global.map(|keep| now.saturating_sub(keep.as_millis() as u64));
            // Sweeping walks many runs: keep it off the async workers.
            let store = e.store().clone();
            drop(e);
            match tokio::task::spawn_blocking(move || sweep(&store, now, cutoff)).await {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(deleted = n, "retention deleted finished runs")
                }
                Ok(Err(err)) => tracing::warn!(%err, "the retention sweep failed"),
                _ => {}
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// One sweep at `now`; returns how many runs were deleted.
fn sweep(store: &SledStore, now: u64, global_cutoff: Option<u64>) -> crate::store::Result<usize> {
    let mut n = 0;
    if let Some(cutoff) = global_cutoff {
        n += store.prune(cutoff)?;
    }
    for wf in store.list_workflows()? {
        let Some(policy) = wf
            .spec
            .state_machine
            .as_ref()
            .and_then(|m| m.history_retention.as_ref())
        else {
            continue;
        };
        let before = policy
            .max_age
            .as_deref()
            .and_then(parse_go_duration)
            .map(|age| now.saturating_sub(age.as_millis() as u64));
        let keep = policy.max_count.map(|c| c.max(0) as usize);
        if before.is_some() || keep.is_some() {
            let settled = now.saturating_sub(SETTLE.as_millis() as u64);
            n += store.prune_workflow(&wf.name, before, keep, settled)?;
        }
    }
    Ok(n)
}
