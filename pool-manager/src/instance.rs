//! One instance as the pool sees it: its backend handle and address, the HTTP
//! client that reaches it, which function owns it, and its leases. The backend
//! decides how it runs; this module only records what the pool needs to lease it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::backend::connect::InstanceClient;
use crate::backend::{Exit, Handle};

/// Which function (and which generation of it) a specialized instance serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub function: String,
    pub generation: u64,
}

pub struct Instance {
    pub id: u64,
    pub env: String,
    pub(crate) handle: Arc<dyn Handle>,
    /// Reaches this instance and no other.
    pub(crate) client: InstanceClient,
    pub(crate) active: AtomicUsize,
    pub(crate) last_used: Mutex<Instant>,
    /// Shared with the instance's log sink, which files lines under the owner.
    pub(crate) owner: Arc<Mutex<Option<Owner>>>,
    /// No new leases; stopped once its last lease is released.
    pub(crate) retiring: AtomicBool,
    /// Its function's code is being staged or loaded (an owner, not yet ready).
    pub(crate) loading: AtomicBool,
    /// The package it was given (its sha256), kept from `prune` while it runs.
    pub(crate) code: Mutex<Option<String>>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Instance {
    pub(crate) fn new(
        id: u64,
        env: String,
        handle: Arc<dyn Handle>,
        owner: Arc<Mutex<Option<Owner>>>,
    ) -> Instance {
        Instance {
            id,
            env,
            client: InstanceClient::new(handle.address().clone()),
            exit: handle.exit(),
            handle,
            active: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            owner,
            retiring: AtomicBool::new(false),
            loading: AtomicBool::new(false),
            code: Mutex::new(None),
        }
    }
    pub fn owner(&self) -> Option<Owner> {
        lock(&self.owner).clone()
    }
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
    /// Why the instance ended, once it has.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }
    pub fn is_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
    /// Whether the instance may take new leases: not retiring and not ended. Its
    /// exit is read from the backend's report itself, not from the pool's lists,
    /// which learn of it a moment later.
    pub fn usable(&self) -> bool {
        !self.retiring.load(Ordering::SeqCst) && !self.is_exited()
    }
    pub fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }
    pub(crate) fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }
    /// Asks the backend to stop the instance; returns at once.
    pub fn stop(&self) {
        self.retiring.store(true, Ordering::SeqCst);
        self.handle.stop();
    }
    /// Waits until the instance has ended and answers why.
    pub async fn wait_exited(&self) -> Exit {
        let mut rx = self.exit.clone();
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().unwrap_or(Exit::Stopped),
            Err(_) => Exit::Vanished("its backend dropped it".into()),
        };
        exit
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
