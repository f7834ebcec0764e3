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
//!
//! sled can also hang after such an error (a flush that waits for ever once
//! the disk has room again), and a call that hangs in a request's handler
//! holds an async worker with it: the runtime's two workers can both be
//! held, and then nothing async runs, not even a signal's handling. So the
//! watch runs on threads of its own, counts a probe that does not come back
//! as a failure, and ends the process itself if the stop it begins hangs too.

use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often the store is probed with a write.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long a probe may take before the store counts as hung.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

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

/// The probe of the server's store: a small write of its own, made durable
/// (sled refuses it once it holds an I/O error, whatever write met it first;
/// the flush also waits on what every other write waits on).
pub fn store_probe(db: sled::Db) -> Result<impl FnMut() -> Result<(), String>, String> {
    let tree = db
        .open_tree("health")
        .map_err(|e| pool_manager::error::sled_error_text(&e))?;
    Ok(move || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        tree.insert(b"probe", &now.to_be_bytes())
            .and_then(|_| db.flush())
            .map(|_| ())
            .map_err(|e| pool_manager::error::sled_error_text(&e))
    })
}

/// Watches the store from two threads of its own: one runs `probe` every
/// `every`, the other resolves the answer, with the reason, once a probe is
/// refused or has not come back within `stuck_after`. Then, if the process
/// has not ended `end_after` later (its stop hangs on the store too),
/// `end` is called (the server's: exit 1).
pub fn watch_store(
    mut probe: impl FnMut() -> Result<(), String> + Send + 'static,
    every: Duration,
    stuck_after: Duration,
    end_after: Duration,
    end: impl FnOnce() + Send + 'static,
) -> tokio::sync::oneshot::Receiver<String> {
    struct Seen {
        last_ok: Instant,
        refused: Option<String>,
    }
    let seen = Arc::new((
        Mutex::new(Seen {
            last_ok: Instant::now(),
            refused: None,
        }),
        Condvar::new(),
    ));
    let prober = seen.clone();
    let spawned = std::thread::Builder::new()
        .name("fusion-store-probe".into())
        .spawn(move || loop {
            let result = probe();
            let (m, wake) = &*prober;
            let mut s = lock(m);
            match result {
                Ok(()) => s.last_ok = Instant::now(),
                Err(why) => {
                    s.refused = Some(why);
                    wake.notify_all();
                    return;
                }
            }
            drop(s);
            std::thread::sleep(every);
        });
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Err(e) = spawned {
        let _ = tx.send(format!("cannot start the store's probe: {e}"));
        return rx;
    }
    let _ = std::thread::Builder::new()
        .name("fusion-store-watch".into())
        .spawn(move || {
            let (m, wake) = &*seen;
            let mut s = lock(m);
            let why = loop {
                if let Some(why) = s.refused.take() {
                    break why;
                }
                let waited = s.last_ok.elapsed();
                if waited >= stuck_after {
                    break format!(
                        "a write to the store has not come back in {} s: the disk or the store hangs",
                        waited.as_secs()
                    );
                }
                s = wake
                    .wait_timeout(s, (stuck_after - waited).min(every))
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
            };
            drop(s);
            let _ = tx.send(why);
            std::thread::sleep(end_after);
            end();
        });
    rx
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A probe that never comes back (sled's flush hung) is a failure, said
    /// as one; and the process is ended if it is still there later.
    #[test]
    fn a_probe_that_hangs_fails_the_store_and_ends_the_process_later() {
        let (hung_tx, hung_rx) = mpsc::channel::<()>();
        let (ended_tx, ended_rx) = mpsc::channel();
        let failed = watch_store(
            move || {
                // Blocks until the test ends (its sender is dropped then).
                let _ = hung_rx.recv();
                Ok(())
            },
            Duration::from_millis(5),
            Duration::from_millis(50),
            Duration::from_millis(10),
            move || {
                let _ = ended_tx.send(());
            },
        );
        let why = failed.blocking_recv().unwrap();
        assert!(why.contains("has not come back"), "{why}");
        ended_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        drop(hung_tx);
    }

    /// A probe the store refuses fails it with the store's reason.
    #[test]
    fn a_refused_probe_fails_the_store_with_its_reason() {
        let mut n = 0;
        let failed = watch_store(
            move || {
                n += 1;
                if n < 3 {
                    Ok(())
                } else {
                    Err("No space left on device".into())
                }
            },
            Duration::from_millis(1),
            Duration::from_secs(60),
            Duration::from_secs(3600),
            || {},
        );
        assert_eq!(failed.blocking_recv().unwrap(), "No space left on device");
    }

    /// Probes that come back keep the store healthy.
    #[test]
    fn probes_that_come_back_fail_nothing() {
        let (probed_tx, probed_rx) = mpsc::channel();
        let mut failed = watch_store(
            move || {
                let _ = probed_tx.send(());
                Ok(())
            },
            Duration::from_millis(1),
            Duration::from_secs(60),
            Duration::from_secs(3600),
            || panic!("ended"),
        );
        for _ in 0..20 {
            probed_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        assert_eq!(
            failed.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        );
    }
}
