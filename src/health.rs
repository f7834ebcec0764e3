//! Whether the server should get traffic (`/readyz`), and the watch on its
//! store that stops the server when the store can no longer write.
//!
//! sled keeps the first I/O error it meets (a full disk, a failing device)
//! and refuses every write after it until the database is opened again: a
//! server that went on would answer reads and refuse every change, while it
//! looked healthy. So once a write is refused, the server says it is not
//! ready, stops (gracefully: the requests in flight finish, instances stop)
//! and exits non-zero, for whatever supervises it to start it again once the
//! cause is fixed. Nothing acknowledged is lost: it is on disk, and runs go on
//! at the next start.

use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the store is probed with a write.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Why the server is not ready, when it is not.
#[derive(Clone, Default)]
pub struct Readiness(Arc<RwLock<Option<NotReady>>>);

#[derive(Clone)]
pub struct NotReady {
    pub code: &'static str,
    pub message: String,
}

impl Readiness {
    /// Marks the server not ready; the first reason given stays (a store
    /// that failed says more than the shutdown it causes).
    pub fn set(&self, code: &'static str, message: String) {
        let mut r = self.0.write().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(NotReady { code, message });
        }
    }

    pub fn get(&self) -> Option<NotReady> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Resolves, with the reason, once the store refuses a write: a small write
/// of its own every `every`, which sled refuses once it holds an I/O error
/// (whatever write met it first).
pub async fn store_failed(db: sled::Db, every: Duration) -> String {
    let probe = match db.open_tree("health") {
        Ok(t) => t,
        Err(e) => return pool_manager::error::sled_error_text(&e),
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probe = probe.clone();
        let written = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            probe.insert(b"probe", &now.to_be_bytes()).map(|_| ())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return pool_manager::error::sled_error_text(&e),
            // The runtime is ending: so is the server.
            Err(_) => std::future::pending::<()>().await,
        }
    }
}
