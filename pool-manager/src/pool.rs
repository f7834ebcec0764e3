//! The pool manager's instances: the warm pool of generic instances per
//! environment, specialization on demand, leases under each function's budget
//! (max scale, `concurrency`, instances x `requests_per_instance`), the
//! function's min scale of specialized instances kept warm, idle reaping, and
//! the retirement of instances whose function changed. The stored resources
//! themselves are `catalog.rs`'s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::sync::Notify;

use crate::backend::{Backend, Isolation, Staging, StartRequest, Usage};
use crate::catalog::not_found;
use crate::error::{Error, Result};
use crate::instance::{lock, Instance, Owner};
use crate::logs::Logs;
use crate::metrics::{
    ColdStartLabels, FunctionLabels, FunctionMetrics, InstanceLabels, PoolMetrics,
};
use crate::package::{PackageLimits, PackageStore};
use crate::resources::{Environment, Function};
use crate::store::{Kind, ResourceStore};

#[derive(Clone)]
pub struct PoolConfig {
    pub data_dir: PathBuf,
    /// What runs instances.
    pub backend: Arc<dyn Backend>,
    /// How long a runtime may take to load a function's code.
    pub specialize_timeout: Duration,
    /// How long a request waits for capacity before it gets 429.
    pub lease_wait: Duration,
    /// Largest request body the router passes on (413 past it).
    pub body_limit: u64,
    pub packages: PackageLimits,
    /// How often idle instances are looked for.
    pub reap_interval: Duration,
    /// How long one package build may take before it is stopped.
    pub build_timeout: Duration,
    /// How much disk one build's work directory may use, in MiB.
    pub build_disk_mb: u64,
    /// How often packages nothing uses are removed (`prune.rs`); None: only
    /// when asked.
    pub prune_interval: Option<Duration>,
}

/// Cheap to clone; all clones share one manager.
#[derive(Clone)]
pub struct PoolManager {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: PoolConfig,
    pub(crate) store: ResourceStore,
    pub(crate) packages: PackageStore,
    /// Secrets and configmaps (`secrets.rs`).
    pub(crate) data: crate::secrets::DataStore,
    pub(crate) logs: Arc<Logs>,
    /// Named packages and their builds.
    pub(crate) builds: crate::build::Builds,
    state: Mutex<State>,
    next_id: InstanceIds,
    /// Instances the backend is starting right now (shutdown waits for them).
    starting: AtomicUsize,
    pub(crate) closing: AtomicBool,
    /// Set with `closing`: starts still waiting for their runtime give up
    /// (`StartRequest::stopping`).
    stopping: tokio::sync::watch::Sender<bool>,
    /// Calls waiting for an instance (`lease_within` under way): what a
    /// graceful stop waits for beside the instances' requests in flight.
    leasing: AtomicUsize,
    /// Set when the server's stop begins: connections taken over by an
    /// upgrade (WebSockets) end then, rather than hold the stop's grace.
    pub(crate) tunnels_end: tokio::sync::watch::Sender<bool>,
    /// Signalled whenever an instance exits (shutdown waits on it).
    exits: Notify,
    /// Places in the functions' queues for capacity (`FnPool::queue`).
    tickets: AtomicU64,
    pub(crate) metrics: PoolMetrics,
    /// Held by the prune of unused packages at work (`prune.rs`).
    pub(crate) pruning: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    envs: HashMap<String, EnvPool>,
    fns: HashMap<String, FnPool>,
    all: HashMap<u64, Arc<Instance>>,
}

/// Instance numbers that go on across restarts, so that a function's log
/// never names two instances by one number: the numbers are reserved in
/// blocks, each block's end durable before a number of it is used.
struct InstanceIds {
    next: AtomicU64,
    /// The first number past the reserved block.
    reserved: Mutex<u64>,
    /// Held by whoever reserves the next block.
    reserving: Mutex<()>,
    db: sled::Db,
}

/// How many instance numbers one durable write reserves.
const ID_BLOCK: u64 = 1000;
const ID_KEY: &[u8] = b"pool/next_instance_id";

impl InstanceIds {
    fn open(db: &sled::Db) -> Result<InstanceIds> {
        let stored = db
            .get(ID_KEY)
            .map_err(|e| Error::Storage(e.to_string()))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        let ids = InstanceIds {
            next: AtomicU64::new(stored),
            reserved: Mutex::new(stored),
            reserving: Mutex::new(()),
            db: db.clone(),
        };
        ids.reserve(stored)?;
        Ok(ids)
    }

    /// Makes `from..from + ID_BLOCK` durable as taken (the next start begins
    /// past it).
    fn reserve(&self, from: u64) -> Result<()> {
        let end = from + ID_BLOCK;
        self.db
            .insert(ID_KEY, &end.to_be_bytes())
            .and_then(|_| self.db.flush())
            .map_err(|e| Error::Storage(format!("cannot reserve instance numbers: {e}")))?;
        *lock(&self.reserved) = end;
        Ok(())
    }

    fn next(&self) -> Result<u64> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        // Held while a block is reserved: no number is used before its block
        // is durable.
        let reserved = *lock(&self.reserved);
        if id >= reserved {
            let _one = lock(&self.reserving);
            if id >= *lock(&self.reserved) {
                self.reserve(id)?;
            }
        }
        Ok(id)
    }
}

struct EnvPool {
    env: Environment,
    /// The manifest digest of the local image it runs, as it was installed
    /// (an image rebuilt at the same path since is told by its digest).
    image_digest: Option<String>,
    generic: Vec<Arc<Instance>>,
    starting: usize,
    refilling: bool,
    /// When a refill may start again after failing three times in a row.
    refill_backoff: Backoff,
    /// Why its last instance failed to start, until one starts.
    start_failure: Option<StartFailure>,
}

/// How an environment's pool stands: what `fusion env get` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PoolHealth {
    /// Generic instances ready to be specialized.
    pub ready: usize,
    /// Instances being started for the pool.
    pub starting: usize,
    /// Why the last instance failed to start, if none has started since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_start_failure: Option<StartFailure>,
}

/// An instance that failed to start: when (RFC 3339) and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StartFailure {
    pub at: String,
    pub message: String,
}

struct FnPool {
    function: Arc<Function>,
    instances: Vec<Arc<Instance>>,
    /// Instances being specialized for this function right now.
    pending: usize,
    /// Requests waiting for one of those to take them (see `lease`).
    waiting: usize,
    /// A task is specializing instances up to the function's min scale.
    warming: bool,
    /// When warming may start again after failing three times in a row.
    warm_backoff: Backoff,
    /// Woken when capacity may have freed up.
    changed: Arc<Notify>,
    /// Requests waiting for capacity at the function's max scale, by when
    /// they began to wait: freed capacity goes to the first of them (and no
    /// newcomer takes it past them), so they are served as a queue.
    queue: std::collections::BTreeSet<u64>,
    /// The function's request series (kept across its updates).
    metrics: Arc<FunctionMetrics>,
}

/// The right to send requests to one specialized instance. Released on drop, on
/// every path: success, error, timeout, or a client that went away.
pub struct Lease {
    pub instance: Arc<Instance>,
    pub function: Arc<Function>,
    /// Where the router counts the request.
    pub(crate) metrics: Arc<FunctionMetrics>,
    manager: Weak<Inner>,
}

/// What a lease does once it has looked at its function's pool.
enum Next {
    /// Specialize an instance: this generic one from the pool, or a new one.
    Start(Arc<Function>, Option<Arc<Instance>>),
    /// Wait for a specialization in flight to end (counted in `waiting`).
    AwaitSpecialization(tokio::sync::futures::OwnedNotified),
    /// At the function's concurrency: wait for capacity to free up.
    AwaitCapacity(Arc<Notify>),
}

/// A request counted in its function's `waiting` until it stops waiting
/// (woken, or dropped with a caller that went away).
struct Waiting<'a> {
    inner: Arc<Inner>,
    name: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(pool) = lock(&self.inner.state).fns.get_mut(self.name) {
            pool.waiting = pool.waiting.saturating_sub(1);
        }
    }
}

/// A request's place in its function's queue for capacity (`FnPool::queue`),
/// left when it is served, gives up or its caller goes away; the next in
/// line is then woken to look again.
struct InLine<'a> {
    inner: Arc<Inner>,
    name: &'a str,
    ticket: u64,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if let Some(pool) = lock(&self.inner.state).fns.get_mut(self.name) {
            if pool.queue.remove(&self.ticket) {
                pool.changed.notify_waiters();
            }
        }
    }
}

impl Lease {
    /// Counts a request of this lease whose caller went away before the
    /// function answered.
    pub(crate) fn abandoned(&self) {
        if let Some(inner) = self.manager.upgrade() {
            inner
                .metrics
                .abandoned
                .get_or_create(&FunctionLabels {
                    function: self.function.key(),
                })
                .inc();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.active.fetch_sub(1, Ordering::SeqCst);
        self.instance.touch();
        if let Some(inner) = self.manager.upgrade() {
            inner.released(&self.instance, &self.function.key_ref());
        }
    }
}

/// A snapshot of one instance, for the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceInfo {
    pub id: u64,
    /// `container` or `process`.
    pub backend: &'static str,
    /// The host process id of the runtime, where the backend has one (diagnosis only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub address: String,
    pub environment: String,
    pub function: Option<String>,
    pub state: &'static str,
    pub active_requests: usize,
    #[serde(flatten)]
    pub usage: Usage,
}

impl PoolManager {
    /// Opens the resource store, loads every resource, and fills the pools.
    pub async fn start(db: &sled::Db, cfg: PoolConfig) -> Result<PoolManager> {
        let store = ResourceStore::open(db)?;
        let packages = PackageStore::open(cfg.data_dir.join("packages"), cfg.packages)?;
        let data = crate::secrets::DataStore::open(db, &cfg.data_dir)?;
        let logs = Arc::new(
            Logs::new(cfg.data_dir.join("logs")).map_err(|e| Error::Storage(e.to_string()))?,
        );
        let mut state = State::default();
        let images_dir = cfg.data_dir.join("images");
        let mut envs = Vec::new();
        for env in store.environments()? {
            // What instances run; an image that went missing since keeps its
            // reference, and instance starts say what is wrong.
            let runs_images = cfg.backend.isolation().backend != "process";
            let env = if cfg.backend.pulls_images() {
                env
            } else {
                env.resolved_on(&images_dir, runs_images).unwrap_or(env)
            };
            envs.push(env);
        }
        cfg.backend.cleanup_stale(&envs).await;
        for env in envs {
            state.envs.insert(
                env.key(),
                EnvPool {
                    image_digest: local_image_digest(&env, cfg.backend.pulls_images()),
                    env,
                    generic: Vec::new(),
                    starting: 0,
                    refilling: false,
                    refill_backoff: Backoff::default(),
                    start_failure: None,
                },
            );
        }
        for function in store.functions()? {
            state.fns.insert(function.key(), FnPool::new(function));
        }
        let reap_interval = cfg.reap_interval;
        let inner = Arc::new(Inner {
            cfg,
            store,
            packages,
            data,
            logs,
            builds: crate::build::Builds::open(db)?,
            state: Mutex::new(state),
            next_id: InstanceIds::open(db)?,
            starting: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            stopping: tokio::sync::watch::channel(false).0,
            leasing: AtomicUsize::new(0),
            tunnels_end: tokio::sync::watch::channel(false).0,
            exits: Notify::new(),
            tickets: AtomicU64::new(0),
            metrics: PoolMetrics::default(),
            pruning: tokio::sync::Mutex::new(()),
        });
        let (envs, fns): (Vec<String>, Vec<String>) = {
            let st = lock(&inner.state);
            (
                st.envs.keys().cloned().collect(),
                st.fns.keys().cloned().collect(),
            )
        };
        for env in envs {
            inner.refill(&env);
        }
        inner.recover_builds().await?;
        for function in fns {
            inner.keep_warm(&function);
        }
        if let Some(interval) = inner.cfg.prune_interval {
            crate::prune::every(Arc::downgrade(&inner), interval);
        }
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reap_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(inner) if !inner.closing.load(Ordering::SeqCst) => {
                        inner.reap_idle();
                        inner.fill_again();
                    }
                    _ => break,
                }
            }
        });
        Ok(PoolManager { inner })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.cfg
    }

    /// What the backend in use enforces (part of every environment's status).
    pub fn isolation(&self) -> Isolation {
        self.inner.cfg.backend.isolation()
    }

    pub fn logs(&self) -> &Arc<Logs> {
        &self.inner.logs
    }

    /// How environment `key`'s pool stands, or None for no such environment.
    pub fn pool_health(&self, key: &str) -> Option<PoolHealth> {
        let st = lock(&self.inner.state);
        st.envs.get(key).map(|p| PoolHealth {
            ready: p.generic.len(),
            starting: p.starting,
            last_start_failure: p.start_failure.clone(),
        })
    }

    pub fn instances(&self, function: Option<&str>) -> Vec<InstanceInfo> {
        let backend = self.isolation();
        // Usage is read from files: not under the lock every lease takes.
        let all: Vec<Arc<Instance>> = lock(&self.inner.state).all.values().cloned().collect();
        let mut out: Vec<InstanceInfo> = all
            .iter()
            .filter(|i| !i.is_exited())
            .filter(|i| match function {
                Some(f) => i.owner().is_some_and(|o| o.function == f),
                None => true,
            })
            .map(|i| InstanceInfo {
                id: i.id,
                backend: backend.backend,
                pid: i.handle.pid(),
                address: i.handle.address().to_string(),
                environment: i.env.clone(),
                function: i.owner().map(|o| o.function),
                state: if i.retiring.load(Ordering::SeqCst) {
                    "draining"
                } else if i.loading.load(Ordering::SeqCst) {
                    "specializing"
                } else if i.owner().is_some() {
                    "specialized"
                } else {
                    "generic"
                },
                active_requests: i.active(),
                usage: i.handle.usage(),
            })
            .collect();
        out.sort_by_key(|i| i.id);
        out
    }

    // ---- leases ----

    pub fn function_exists(&self, name: &str) -> bool {
        lock(&self.inner.state).fns.contains_key(name)
    }

    /// A lease on a specialized instance of `name`: reuse one with spare capacity,
    /// else wait for one being specialized that will have some, else specialize
    /// a generic one from the pool, else spawn one; past the function's
    /// concurrency, wait up to `lease_wait`, then fail with 429.
    ///
    /// A burst of first requests to a function whose instances take several
    /// requests at once (`requests_per_instance`) thus starts one instance per
    /// that many requests, not one per request: each specialization in flight
    /// takes its own request and `requests_per_instance - 1` waiting ones. A
    /// waiting request is woken when the specialization ends, either way.
    pub async fn lease(&self, name: &str) -> Result<Lease> {
        self.lease_within(name, Some(self.inner.cfg.lease_wait))
            .await
    }

    /// As `lease`, waiting up to `wait` (not `--lease-wait-ms`; `None`: the
    /// function's own timeout) for a free instance of a function at its max
    /// scale: a workflow's step waits as in a queue, where a router's caller
    /// is turned away.
    pub async fn lease_within(&self, name: &str, wait: Option<Duration>) -> Result<Lease> {
        let inner = &self.inner;
        /// Counts the call in `leasing` until it has its instance or gives up.
        struct Leasing<'a>(&'a AtomicUsize);
        impl Drop for Leasing<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        inner.leasing.fetch_add(1, Ordering::SeqCst);
        let _leasing = Leasing(&inner.leasing);
        let wait = wait.unwrap_or_else(|| {
            lock(&inner.state)
                .fns
                .get(name)
                .map_or(inner.cfg.lease_wait, |p| {
                    Duration::from_secs(p.function.timeout_secs)
                })
        });
        // A named package still building is waited for (within the function's
        // timeout) before any capacity is taken; a failed build fails the call.
        // Instances of the current generation already run the built code.
        let named = lock(&inner.state).fns.get(name).and_then(|p| {
            if p.instances.iter().any(|i| i.usable()) {
                return None;
            }
            let f = &p.function;
            let limit = Duration::from_secs(f.timeout_secs);
            f.package.named().map(|r| (r.clone(), limit))
        });
        if let Some((package, limit)) = named {
            inner.wait_for_package(name, &package, limit).await?;
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Its place in the queue once it has to wait for capacity.
        let mut in_line: Option<InLine> = None;
        loop {
            if inner.closing.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown("the server is shutting down".into()));
            }
            let ticket = in_line.as_ref().map(|l| l.ticket);
            let next = {
                let mut st = lock(&inner.state);
                let State { fns, envs, .. } = &mut *st;
                let pool = fns
                    .get_mut(name)
                    .ok_or_else(|| not_found(Kind::Function, name))?;
                let f = &pool.function;
                if let Some(t) = ticket {
                    // Kept in line across an update of the function.
                    pool.queue.insert(t);
                }
                let turn = pool.first_in_line(ticket);
                if let Some(i) = pool
                    .instances
                    .iter()
                    .find(|i| turn && i.usable() && i.active() < f.requests_per_instance)
                {
                    i.active.fetch_add(1, Ordering::SeqCst);
                    return Ok(Lease {
                        instance: i.clone(),
                        function: f.clone(),
                        metrics: pool.metrics.clone(),
                        manager: Arc::downgrade(inner),
                    });
                }
                let room = pool.pending * f.requests_per_instance.saturating_sub(1);
                let live = pool.instances.iter().filter(|i| i.usable()).count() + pool.pending;
                if turn && pool.waiting < room {
                    pool.waiting += 1;
                    // Its place is kept for when the instance has no room left
                    // for it, but not held in the queue meanwhile: those after
                    // it may start instances of their own.
                    match &in_line {
                        Some(l) => {
                            pool.queue.remove(&l.ticket);
                            pool.changed.notify_waiters();
                        }
                        None => {
                            in_line = Some(InLine {
                                inner: inner.clone(),
                                name,
                                ticket: inner.tickets.fetch_add(1, Ordering::Relaxed),
                            })
                        }
                    }
                    Next::AwaitSpecialization(pool.changed.clone().notified_owned())
                } else if turn && live < f.concurrency {
                    pool.pending += 1;
                    let generic = envs.get_mut(&f.env_key()).and_then(|p| p.generic.pop());
                    Next::Start(f.clone(), generic)
                } else {
                    if in_line.is_none() {
                        let ticket = inner.tickets.fetch_add(1, Ordering::Relaxed);
                        pool.queue.insert(ticket);
                        in_line = Some(InLine {
                            inner: inner.clone(),
                            name,
                            ticket,
                        });
                    }
                    Next::AwaitCapacity(pool.changed.clone())
                }
            };
            let ticket = in_line.as_ref().map(|l| l.ticket);
            let (function, generic) = match next {
                Next::Start(function, generic) => (function, generic),
                Next::AwaitSpecialization(specialized) => {
                    let waiting = Waiting {
                        inner: inner.clone(),
                        name,
                    };
                    specialized.await;
                    drop(waiting);
                    continue;
                }
                Next::AwaitCapacity(changed) => {
                    let notified = changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Capacity may have been freed between the check and enable().
                    if self.has_capacity(name, ticket) {
                        continue;
                    }
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(Error::Overloaded(format!(
                            "function {name:?} is at its max scale (--maxscale) and no instance freed up within {wait:?}"
                        )));
                    }
                    continue;
                }
            };
            // Out of the queue: the next in line may look again.
            drop(in_line.take());
            // On a task of its own: a caller that goes away (a client that hangs
            // up, a workflow task's timeout) must not abandon the instance
            // half-specialized or leave `pending` counted for ever; the lease it
            // would have had is released when the task ends.
            let task = tokio::spawn(Inner::cold_start(
                inner.clone(),
                name.to_string(),
                function,
                generic,
            ));
            return task
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("cold start failed: {e}"))));
        }
    }

    /// Requests of function `name` waiting in line for capacity.
    #[cfg(test)]
    pub(crate) fn queued(&self, name: &str) -> usize {
        lock(&self.inner.state)
            .fns
            .get(name)
            .map_or(0, |p| p.queue.len())
    }

    /// Whether the request of `ticket` may take capacity of function `name`
    /// now (its turn, and an instance or room for one).
    fn has_capacity(&self, name: &str, ticket: Option<u64>) -> bool {
        let st = lock(&self.inner.state);
        st.fns.get(name).is_none_or(|p| {
            if !p.first_in_line(ticket) {
                return false;
            }
            let f = &p.function;
            let live: Vec<_> = p.instances.iter().filter(|i| i.usable()).collect();
            live.iter().any(|i| i.active() < f.requests_per_instance)
                || live.len() + p.pending < f.concurrency
        })
    }

    /// Waits until no instance has a request in flight (or `limit` passes):
    /// at a graceful stop, the calls the listeners do not see (a workflow's
    /// steps, asynchronous attempts, message-queue deliveries) finish within
    /// the grace instead of being cut off and made again after the restart.
    /// Whether it got there.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let busy = || {
            lock(&self.inner.state)
                .all
                .values()
                .any(|i| i.active() > 0 && !i.is_exited())
                // A call waiting for a cold start; an instance starting for
                // the pool alone (a warm-up) is no call.
                || self.inner.leasing.load(Ordering::SeqCst) > 0
        };
        let waited = tokio::time::timeout(limit, async {
            // Leases end at many places; a short poll sees them all.
            while busy() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        waited.is_ok()
    }

    /// Whether the server is stopping its instances.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    /// Whether `function`'s min scale is being warmed, and asks for it again
    /// (as the reaper's tick does) (for tests).
    #[cfg(test)]
    pub(crate) fn warming(&self, function: &str) -> bool {
        lock(&self.inner.state)
            .fns
            .get(function)
            .is_some_and(|p| p.warming)
    }

    #[cfg(test)]
    pub(crate) fn warm_again(&self, function: &str) {
        self.inner.keep_warm(function);
    }

    /// Ends the connections taken over by an upgrade (WebSockets), now and
    /// from now on: the server is stopping, and they would hold its stop for
    /// the whole grace (their clients connect again once it is back).
    pub fn end_tunnels(&self) {
        self.inner.tunnels_end.send_replace(true);
    }

    /// Resolves once `end_tunnels` was called.
    pub(crate) fn tunnels_ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.tunnels_end.subscribe();
        async move {
            let _ = rx.wait_for(|ended| *ended).await;
        }
    }

    /// Stops every instance and waits (bounded) until they have exited.
    pub async fn shutdown(&self, limit: Duration) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        inner.stopping.send_replace(true);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = inner.exits.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let live: Vec<Arc<Instance>> = lock(&inner.state)
                .all
                .values()
                .filter(|i| !i.is_exited())
                .cloned()
                .collect();
            // Instances still starting are stopped as soon as they have started.
            let starting = inner.starting.load(Ordering::SeqCst);
            if live.is_empty() && starting == 0 {
                break;
            }
            for i in &live {
                // A generic instance the backend can leave for the next server
                // to adopt (a pod) is parked; everything else stops.
                if i.owner().is_some() || i.retiring.load(Ordering::SeqCst) || !i.handle.park() {
                    i.stop();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    left = live.len(),
                    starting,
                    "instances did not exit in time"
                );
                break;
            }
        }
        inner.cfg.backend.shutdown().await;
    }

    pub fn metrics(&self) -> &PoolMetrics {
        &self.inner.metrics
    }

    /// The requests function `key` has answered since the server started, and
    /// how many of them with a 5xx (0 and 0 for a function not called yet or
    /// not there): what a canary's failure rate is taken from.
    pub fn request_counts(&self, key: &str) -> (u64, u64) {
        self.series_of(key)
            .map_or((0, 0), |series| series.request_counts())
    }

    /// Function `key`'s request series, when it has a pool.
    pub(crate) fn series_of(&self, key: &str) -> Option<Arc<FunctionMetrics>> {
        let st = lock(&self.inner.state);
        st.fns.get(key).map(|pool| pool.metrics.clone())
    }

    /// Sets the instance gauges and the functions' waiting requests from the
    /// current pools (called before a scrape).
    pub fn refresh_instance_gauges(&self) {
        let waiting = &self.inner.metrics.waiting;
        waiting.clear();
        for (name, pool) in lock(&self.inner.state).fns.iter() {
            waiting
                .get_or_create(&FunctionLabels {
                    function: name.clone(),
                })
                .set(pool.queue.len() as i64);
        }
        let gauges = &self.inner.metrics.instances;
        gauges.clear();
        for i in self.instances(None) {
            gauges
                .get_or_create(&InstanceLabels {
                    environment: i.environment,
                    state: i.state,
                })
                .inc();
        }
    }
}

/// The manifest digest of the image on this machine that `env` (as resolved)
/// runs, if it runs one from a path here (not a cluster's pulled reference).
fn local_image_digest(env: &Environment, pulls_images: bool) -> Option<String> {
    if pulls_images {
        return None;
    }
    let path = env.image.as_deref().filter(|p| p.starts_with('/'))?;
    crate::backend::image::digest(path).ok()
}

/// No new leases for these instances; the idle ones stop now, the others when
/// their last lease is released.
fn retire(instances: &[Arc<Instance>]) {
    for i in instances {
        i.retiring.store(true, Ordering::SeqCst);
        if i.active() == 0 {
            i.stop();
        }
    }
}

impl Inner {
    /// Every instance the pool knows.
    pub(crate) fn all_instances(&self) -> Vec<Arc<Instance>> {
        lock(&self.state).all.values().cloned().collect()
    }
}

impl FnPool {
    /// Instances that take new leases (or will, once specialized).
    fn live(&self) -> usize {
        self.instances.iter().filter(|i| i.usable()).count()
    }

    /// Whether the function has fewer live instances than its min scale.
    fn below_min_scale(&self) -> bool {
        self.live() + self.pending < self.function.min_scale
    }

    fn new(function: Function) -> FnPool {
        FnPool {
            function: Arc::new(function),
            instances: Vec::new(),
            pending: 0,
            waiting: 0,
            warming: false,
            warm_backoff: Backoff::default(),
            changed: Arc::new(Notify::new()),
            queue: std::collections::BTreeSet::new(),
            metrics: Arc::default(),
        }
    }

    /// Whether the request of `ticket` (`None`: one not waiting yet) may
    /// take capacity now: no one waits before it.
    fn first_in_line(&self, ticket: Option<u64>) -> bool {
        match (self.queue.first(), ticket) {
            (None, _) => true,
            (Some(first), Some(t)) => *first >= t,
            (Some(_), None) => false,
        }
    }
}

impl Inner {
    /// Specializes `generic` (or a new instance) for `function` and leases it,
    /// settling the function's `pending` count whatever the outcome.
    async fn cold_start(
        inner: Arc<Inner>,
        name: String,
        function: Arc<Function>,
        generic: Option<Arc<Instance>>,
    ) -> Result<Lease> {
        let source = if generic.is_some() { "pool" } else { "spawn" };
        let started = std::time::Instant::now();
        let result = inner.specialize(&function, generic).await;
        // Refill after, not before: on a small machine a starting runtime
        // would compete with the specialization the request waits for.
        inner.refill(&function.env_key());
        if result.is_ok() {
            let m = &inner.metrics;
            m.cold_starts
                .get_or_create(&ColdStartLabels {
                    function: function.key(),
                    source,
                })
                .inc();
            m.cold_start_seconds
                .get_or_create(&FunctionLabels {
                    function: function.key(),
                })
                .observe(started.elapsed().as_secs_f64());
        }
        let mut st = lock(&inner.state);
        let pool = st.fns.get_mut(&name);
        match (result, pool) {
            (Ok(instance), Some(pool)) => {
                pool.pending -= 1;
                instance.active.fetch_add(1, Ordering::SeqCst);
                let stale = pool.function.generation != function.generation;
                pool.instances.push(instance.clone());
                if stale {
                    instance.retiring.store(true, Ordering::SeqCst);
                }
                // Requests waiting for this specialization take its spare room.
                pool.changed.notify_waiters();
                Ok(Lease {
                    instance,
                    function,
                    metrics: pool.metrics.clone(),
                    manager: Arc::downgrade(&inner),
                })
            }
            (Ok(instance), None) => {
                instance.stop();
                Err(not_found(Kind::Function, &name))
            }
            (Err(e), pool) => {
                if let Some(pool) = pool {
                    pool.pending -= 1;
                    pool.changed.notify_waiters();
                }
                Err(e)
            }
        }
    }

    /// Stops the environment's generic instances and forgets its pool.
    pub(crate) fn remove_environment(&self, name: &str) {
        let generic = {
            let mut st = lock(&self.state);
            st.envs.remove(name).map(|p| p.generic).unwrap_or_default()
        };
        for i in generic {
            i.stop();
        }
    }

    /// Makes `f` the function's current generation: new requests go to instances
    /// of it; instances of an older one finish their requests and are retired.
    /// Its min scale of instances of the new generation is warmed up.
    pub(crate) fn install_function(self: &Arc<Self>, f: Function) {
        let name = f.key();
        {
            let mut st = lock(&self.state);
            let pool = st
                .fns
                .entry(f.key())
                .or_insert_with(|| FnPool::new(f.clone()));
            pool.function = Arc::new(f);
            retire(&pool.instances);
            pool.changed.notify_waiters();
        }
        self.keep_warm(&name);
    }

    /// Specializes instances of the function, one at a time in the background,
    /// until it has its min scale of live ones. At most one such task runs per
    /// function; it gives up after three failures in a row (the reaper's tick,
    /// an update or an instance's exit starts it again).
    fn keep_warm(self: &Arc<Self>, name: &str) {
        {
            let mut st = lock(&self.state);
            let Some(pool) = st.fns.get_mut(name) else {
                return;
            };
            if pool.warming
                || !pool.below_min_scale()
                || self.closing.load(Ordering::SeqCst)
                || pool.warm_backoff.waiting()
            {
                return;
            }
            pool.warming = true;
        }
        let inner = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let (function, generic) = {
                    let mut st = lock(&inner.state);
                    let State { fns, envs, .. } = &mut *st;
                    let Some(pool) = fns.get_mut(&name) else {
                        return;
                    };
                    if failures >= 3 {
                        pool.warm_backoff.failed();
                    }
                    if inner.closing.load(Ordering::SeqCst)
                        || !pool.below_min_scale()
                        || failures >= 3
                    {
                        pool.warming = false;
                        return;
                    }
                    pool.pending += 1;
                    let f = pool.function.clone();
                    let generic = envs.get_mut(&f.env_key()).and_then(|p| p.generic.pop());
                    (f, generic)
                };
                let result = inner.specialize(&function, generic).await;
                inner.refill(&function.env_key());
                let mut st = lock(&inner.state);
                match (result, st.fns.get_mut(&name)) {
                    (Ok(instance), Some(pool)) => {
                        pool.pending -= 1;
                        pool.instances.push(instance.clone());
                        if pool.function.generation != function.generation {
                            retire(&[instance]);
                        }
                        pool.changed.notify_waiters();
                        pool.warm_backoff = Backoff::default();
                        failures = 0;
                    }
                    (Ok(instance), None) => {
                        instance.stop();
                        return;
                    }
                    // Deleted meanwhile: nothing to keep warm.
                    (Err(_), None) => return,
                    (Err(e), Some(pool)) => {
                        pool.pending -= 1;
                        pool.changed.notify_waiters();
                        failures += 1;
                        tracing::warn!(function = %name, error = %e, "cannot keep the min scale warm");
                    }
                }
            }
        });
    }

    /// Forgets a deleted function; its instances finish their requests and stop.
    pub(crate) fn remove_function(&self, name: &str) {
        if let Some(pool) = lock(&self.state).fns.remove(name) {
            retire(&pool.instances);
            // Waiting requests find the function gone.
            pool.changed.notify_waiters();
        }
    }

    /// The unpacked images environments use: what each pool was installed
    /// with, and what its path holds now (new instances start from it).
    pub(crate) fn images_in_use(&self) -> std::collections::HashSet<String> {
        let envs: Vec<(Environment, Option<String>)> = lock(&self.state)
            .envs
            .values()
            .map(|p| (p.env.clone(), p.image_digest.clone()))
            .collect();
        let pulls = self.cfg.backend.pulls_images();
        envs.into_iter()
            .flat_map(|(env, installed)| [installed, local_image_digest(&env, pulls)])
            .flatten()
            .map(|d| crate::backend::image::unpacked_name(&d))
            .collect()
    }

    /// Whether the local image `env` names is another than the one its pool
    /// was installed with (rebuilt at the same path since).
    pub(crate) fn image_changed(&self, env: &Environment) -> bool {
        let now = local_image_digest(env, self.cfg.backend.pulls_images());
        lock(&self.state)
            .envs
            .get(&env.key())
            .is_some_and(|p| p.image_digest != now)
    }

    pub(crate) fn install_environment(self: &Arc<Self>, env: Environment) {
        let image_digest = local_image_digest(&env, self.cfg.backend.pulls_images());
        let old = {
            let mut st = lock(&self.state);
            let State { fns, envs, .. } = &mut *st;
            match envs.get_mut(&env.key()) {
                Some(pool) => {
                    pool.env = env.clone();
                    pool.image_digest = image_digest;
                    // Instances specialized from the environment as it was
                    // (its limits, image, command) finish their requests and
                    // are retired: the next call gets one as it is now.
                    for f in fns.values().filter(|f| f.function.env_key() == env.key()) {
                        retire(&f.instances);
                        f.changed.notify_waiters();
                    }
                    std::mem::take(&mut pool.generic)
                }
                None => {
                    st.envs.insert(
                        env.key(),
                        EnvPool {
                            env: env.clone(),
                            image_digest,
                            generic: Vec::new(),
                            starting: 0,
                            refilling: false,
                            refill_backoff: Backoff::default(),
                            start_failure: None,
                        },
                    );
                    Vec::new()
                }
            }
        };
        for i in old {
            i.stop();
        }
        self.refill(&env.key());
    }

    /// Tops the environment's pool up to its pool size, one instance at a time, in
    /// the background. At most one refiller runs per environment.
    fn refill(self: &Arc<Self>, env_name: &str) {
        {
            let mut st = lock(&self.state);
            let Some(pool) = st.envs.get_mut(env_name) else {
                return;
            };
            if pool.refilling
                || pool.generic.len() + pool.starting >= pool.env.poolsize
                || pool.refill_backoff.waiting()
            {
                return;
            }
            pool.refilling = true;
        }
        let inner = self.clone();
        let env_name = env_name.to_string();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let env = {
                    let mut st = lock(&inner.state);
                    let Some(pool) = st.envs.get_mut(&env_name) else {
                        return;
                    };
                    if inner.closing.load(Ordering::SeqCst)
                        || pool.generic.len() + pool.starting >= pool.env.poolsize
                    {
                        pool.refilling = false;
                        return;
                    }
                    pool.starting += 1;
                    pool.env.clone()
                };
                let result = inner.spawn_instance(&env).await;
                let mut st = lock(&inner.state);
                let pool = st.envs.get_mut(&env_name);
                match (result, pool) {
                    (Ok(i), Some(pool)) if pool.env == env => {
                        pool.starting -= 1;
                        pool.generic.push(i);
                        pool.refill_backoff = Backoff::default();
                        failures = 0;
                    }
                    (Ok(i), pool) => {
                        if let Some(pool) = pool {
                            pool.starting -= 1;
                        }
                        i.stop();
                    }
                    (Err(e), pool) => {
                        if let Some(pool) = pool {
                            pool.starting -= 1;
                        }
                        // Ended by the server's stop: nothing to say, nor to refill.
                        if matches!(e, Error::ShuttingDown(_)) {
                            if let Some(pool) = st.envs.get_mut(&env_name) {
                                pool.refilling = false;
                            }
                            return;
                        }
                        failures += 1;
                        tracing::warn!(env = %env_name, error = %e, "cannot refill pool");
                        if failures >= 3 {
                            if let Some(pool) = st.envs.get_mut(&env_name) {
                                pool.refilling = false;
                                pool.refill_backoff.failed();
                                tracing::warn!(
                                    env = %env_name,
                                    "the pool's instances failed to start three times in a row: tried again after a pause of {:?}",
                                    pool.refill_backoff.next
                                );
                            }
                            return;
                        }
                    }
                }
            }
        });
    }

    async fn spawn_instance(self: &Arc<Self>, env: &Environment) -> Result<Arc<Instance>> {
        let id = self.next_id.next()?;
        let owner: Arc<Mutex<Option<Owner>>> = Arc::default();
        let log_key = {
            let owner = owner.clone();
            let env = env.key();
            move || match &*lock(&owner) {
                Some(o) => o.function.clone(),
                None => generic_log_key(&env),
            }
        };
        let sink = {
            let logs = self.logs.clone();
            let log_key = log_key.clone();
            Arc::new(move |stream: &'static str, line: &str| {
                logs.append(&log_key(), id, stream, line)
            })
        };
        self.starting.fetch_add(1, Ordering::SeqCst);
        let started = self
            .cfg
            .backend
            .start(StartRequest {
                id,
                env: env.clone(),
                logs: sink,
                stopping: self.stopping.subscribe(),
            })
            .await;
        let started = started.map(|handle| {
            let instance = Arc::new(Instance::new(id, env.key(), handle, owner));
            let mut st = lock(&self.state);
            st.all.insert(id, instance.clone());
            if let Some(pool) = st.envs.get_mut(&env.key()) {
                pool.start_failure = None;
            }
            instance
        });
        // The environment's series exists from its first start, at 0, so an
        // alert on its increase sees the first failure.
        let failures = self
            .metrics
            .start_failures
            .get_or_create(&crate::metrics::EnvironmentLabels {
                environment: env.key(),
            })
            .clone();
        // A start the server's stop ended did not fail.
        let failed = match &started {
            Err(Error::ShuttingDown(_)) | Ok(_) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            failures.inc();
            if let Some(pool) = lock(&self.state).envs.get_mut(&env.key()) {
                pool.start_failure = Some(StartFailure {
                    at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                    message: e.to_string(),
                });
            }
        }
        self.starting.fetch_sub(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            if let Ok(instance) = &started {
                instance.stop();
            }
        }
        self.exits.notify_waiters();
        let instance = match started {
            Ok(instance) => instance,
            Err(e @ Error::ShuttingDown(_)) => return Err(e),
            Err(e) => {
                let key = log_key();
                self.logs.append(&key, id, "fusion", &e.to_string());
                // The file's name within the data directory only: the
                // answer may go to a caller of the router.
                return Err(Error::Unavailable(format!(
                    "{e} (its output is in logs/{} in the server's data directory)",
                    self.logs
                        .path(&key)
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                )));
            }
        };
        let weak = Arc::downgrade(self);
        let watched = instance.clone();
        tokio::spawn(async move {
            let exit = watched.wait_exited().await;
            tracing::debug!(instance = watched.id, %exit, "instance ended");
            if let Some(inner) = weak.upgrade() {
                inner
                    .metrics
                    .instance_exits
                    .get_or_create(&crate::metrics::ExitLabels {
                        environment: watched.env.clone(),
                        reason: exit.reason(),
                    })
                    .inc();
                // A function's log says when one of its instances ends, and how
                // (a crash, a signal, its memory limit, or Fusion stopping it).
                if let Some(owner) = watched.owner() {
                    let line = format!("instance {} {exit}", watched.id);
                    inner
                        .logs
                        .append(&owner.function, watched.id, "fusion", &line);
                }
                inner.exited(&watched);
            }
        });
        Ok(instance)
    }

    /// Loads `function` into `generic` (or a newly spawned instance).
    async fn specialize(
        self: &Arc<Self>,
        function: &Function,
        generic: Option<Arc<Instance>>,
    ) -> Result<Arc<Instance>> {
        let instance = match generic {
            Some(i) if !i.is_exited() => i,
            _ => {
                let env = lock(&self.state)
                    .envs
                    .get(&function.env_key())
                    .map(|p| p.env.clone())
                    .ok_or_else(|| not_found(Kind::Environment, &function.env_key()))?;
                self.spawn_instance(&env).await?
            }
        };
        // Listed as specializing from the moment it is the function's, through
        // staging its code, until the runtime has loaded it.
        instance.loading.store(true, Ordering::SeqCst);
        *lock(&instance.owner) = Some(Owner {
            function: function.key(),
            generation: function.generation,
        });
        // A named package's build end being recorded (its functions already
        // given new generations, its status not yet stored) is waited for:
        // no instance of the new generation is made with the build before.
        if function.package.named().is_some() {
            drop(self.builds.writes.lock().await);
        }
        let code = match self.code_of(function) {
            Ok(code) => code,
            Err(e) => {
                // The instance is still generic: back to the pool's business.
                instance.stop();
                return Err(e);
            }
        };
        *lock(&instance.code) = Some(code.sha256.clone());
        let path = match self.packages.path(&code) {
            Ok(path) => path,
            Err(e) => {
                instance.stop();
                return Err(e);
            }
        };
        let manager = PoolManager {
            inner: self.clone(),
        };
        let files = match manager.files_for(function) {
            Ok(files) => files,
            Err(e) => {
                instance.stop();
                return Err(e);
            }
        };
        let staged = instance
            .handle
            .clone()
            .stage(Staging {
                package: code.clone(),
                path,
                files,
            })
            .await;
        let path = match staged {
            Ok(p) => p,
            Err(e) => {
                instance.stop();
                return Err(e);
            }
        };
        let mut body = serde_json::json!({
            "filepath": path,
            "functionName": function.entrypoint.clone().unwrap_or_default(),
            "url": "",
            "FunctionMetadata": {"name": function.name, "namespace": function.namespace, "generation": function.generation},
            "envVersion": 2,
        });
        // Fusion's extension: the bundled runtimes set these before loading the
        // code; Fission's own images do not read it.
        if !function.env_vars.is_empty() {
            body["fusionEnvVars"] = serde_json::json!(function.env_vars);
        }
        let req = http::Request::post("http://instance/v2/specialize")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let loading = tokio::time::timeout(self.cfg.specialize_timeout, async {
            let resp = instance
                .client
                .request(req)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        });
        // A function deleted meanwhile wants no instance: one still loading
        // its code is stopped now, not at the end of the load limit.
        let outcome = tokio::select! {
            outcome = loading => outcome,
            () = self.deleted(function) => {
                instance.stop();
                return Err(not_found(Kind::Function, &function.key()));
            }
        };
        instance.loading.store(false, Ordering::SeqCst);
        let failure = match outcome {
            Ok(Ok((status, _))) if status.is_success() => {
                instance.touch();
                return Ok(instance);
            }
            Ok(Ok((status, body))) => format!(
                "the runtime refused the code ({status}): {}",
                String::from_utf8_lossy(&body).trim()
            ),
            Ok(Err(e)) => format!("the runtime failed while loading the code: {e}"),
            Err(_) => format!(
                "the runtime did not load the code within {:?}",
                self.cfg.specialize_timeout
            ),
        };
        instance.stop();
        self.logs
            .append(&function.key(), instance.id, "fusion", &failure);
        Err(Error::LoadFailed {
            public: format!(
                "function {:?} cannot be loaded (its log says why: `fusion fn logs {}`)",
                function.key(),
                function.name
            ),
            detail: format!("function {:?} cannot be loaded: {failure}", function.key()),
        })
    }

    /// Resolves once `function` is deleted (its pool gone, or another one
    /// made under its name).
    async fn deleted(&self, function: &Function) {
        let key = function.key();
        let Some(changed) = lock(&self.state).fns.get(&key).map(|p| p.changed.clone()) else {
            return;
        };
        loop {
            // Registered before the check, so no change comes between.
            let notified = changed.notified();
            let same = lock(&self.state)
                .fns
                .get(&key)
                .is_some_and(|p| Arc::ptr_eq(&p.changed, &changed));
            if !same {
                return;
            }
            notified.await;
        }
    }

    fn released(&self, instance: &Arc<Instance>, function: &str) {
        let st = lock(&self.state);
        let pool = st.fns.get(function);
        let current = pool.is_some_and(|p| {
            lock(&instance.owner)
                .as_ref()
                .is_some_and(|o| o.generation == p.function.generation)
        });
        if (!current || instance.retiring.load(Ordering::SeqCst)) && instance.active() == 0 {
            instance.stop();
        }
        if let Some(pool) = pool {
            pool.changed.notify_waiters();
        }
    }

    fn exited(self: &Arc<Self>, instance: &Arc<Instance>) {
        let owner = instance.owner();
        let env = {
            let mut st = lock(&self.state);
            st.all.remove(&instance.id);
            if let Some(pool) = st.envs.get_mut(&instance.env) {
                pool.generic.retain(|i| i.id != instance.id);
            }
            if let Some(owner) = instance.owner() {
                if let Some(pool) = st.fns.get_mut(&owner.function) {
                    pool.instances.retain(|i| i.id != instance.id);
                    pool.changed.notify_waiters();
                }
            }
            instance.env.clone()
        };
        self.exits.notify_waiters();
        if !self.closing.load(Ordering::SeqCst) {
            self.refill(&env);
            if let Some(owner) = owner {
                self.keep_warm(&owner.function);
            }
        }
    }

    /// Tries again the pools and min scales that gave up after failed starts
    /// (once their pause is over): a cause fixed meanwhile (a full disk, an
    /// interpreter being upgraded) leaves no environment without its pool
    /// until a request comes.
    pub(crate) fn fill_again(self: &Arc<Self>) {
        let (envs, fns): (Vec<String>, Vec<String>) = {
            let st = lock(&self.state);
            (
                st.envs.keys().cloned().collect(),
                st.fns.keys().cloned().collect(),
            )
        };
        for env in envs {
            self.refill(&env);
        }
        for function in fns {
            self.keep_warm(&function);
        }
    }

    /// Whether environment `env`'s pool is being filled (for tests).
    #[cfg(test)]
    pub(crate) fn refilling(&self, env: &str) -> bool {
        lock(&self.state).envs.get(env).is_some_and(|p| p.refilling)
    }

    /// Ends every pause after failed starts (for tests: as if it had passed).
    #[cfg(test)]
    pub(crate) fn pauses_over(&self) {
        let mut st = lock(&self.state);
        for pool in st.envs.values_mut() {
            pool.refill_backoff.until = None;
        }
        for pool in st.fns.values_mut() {
            pool.warm_backoff.until = None;
        }
    }

    /// Stops retired instances without leases, and instances idle past their
    /// function's idle timeout, longest idle first, as long as the function keeps
    /// its min scale of live instances.
    pub(crate) fn reap_idle(&self) {
        let st = lock(&self.state);
        for pool in st.fns.values() {
            let idle = Duration::from_secs(pool.function.idle_timeout_secs);
            let mut live = pool.live();
            let mut candidates: Vec<&Arc<Instance>> = Vec::new();
            for i in &pool.instances {
                if i.active() != 0 {
                    continue;
                }
                if i.retiring.load(Ordering::SeqCst) {
                    i.stop();
                } else if i.idle_for() >= idle {
                    candidates.push(i);
                }
            }
            candidates.sort_by_key(|i| std::cmp::Reverse(i.idle_for()));
            for i in candidates {
                if live <= pool.function.min_scale {
                    break;
                }
                tracing::debug!(instance = i.id, function = %pool.function.key(), "stopping idle instance");
                i.stop();
                live -= 1;
            }
        }
    }
}

/// A pause before work that failed three times in a row is tried again:
/// 1 s, doubling to 1 min (a host out of file descriptors would otherwise
/// be asked for instances, and log its refusal, several times a second).
#[derive(Default)]
struct Backoff {
    until: Option<std::time::Instant>,
    next: Duration,
}

impl Backoff {
    fn waiting(&self) -> bool {
        self.until.is_some_and(|t| std::time::Instant::now() < t)
    }

    fn failed(&mut self) {
        self.next = (self.next * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        self.until = Some(std::time::Instant::now() + self.next);
    }
}

/// The log of an environment's generic instances (their output before any
/// function has them): a key no function's can be (a '.' is in no name), so
/// a function named `env-python` does not share it.
pub(crate) fn generic_log_key(env_key: &str) -> String {
    format!("env.{env_key}")
}

#[cfg(test)]
mod instance_id_tests {
    use super::*;

    #[test]
    fn instance_numbers_go_on_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<u64> = {
            let db = crate::store::open_waiting(
                &sled::Config::new().path(dir.path()),
                std::time::Duration::from_secs(10),
            )
            .unwrap();
            let ids = InstanceIds::open(&db).unwrap();
            (0..3).map(|_| ids.next().unwrap()).collect()
        };
        assert_eq!(first, [1, 2, 3]);
        // A restart (even after a crash: the block was durable before use)
        // starts past every number the last run could have used.
        let db = crate::store::open_waiting(
            &sled::Config::new().path(dir.path()),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let ids = InstanceIds::open(&db).unwrap();
        let again = ids.next().unwrap();
        assert_eq!(again, 1 + ID_BLOCK);
        // Past a block, the next block is reserved.
        let last = (0..ID_BLOCK).map(|_| ids.next().unwrap()).last().unwrap();
        assert_eq!(last, 1 + 2 * ID_BLOCK);
        drop(ids);
        drop(db);
        let db = crate::store::open_waiting(
            &sled::Config::new().path(dir.path()),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            InstanceIds::open(&db).unwrap().next().unwrap(),
            1 + 3 * ID_BLOCK
        );
    }
}
