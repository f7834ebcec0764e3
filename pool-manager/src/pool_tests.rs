//! The pool's leasing, seen through a fake backend: instances are small HTTP
//! servers on Unix sockets in a temporary directory, so the lease logic
//! (reuse, the concurrency budget, retirement, failed starts, instances that
//! vanish, shutdown) is tested without starting runtimes or containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::backend::{Address, Backend, Exit, Handle, Isolation, StartRequest, Usage};
use crate::error::{Error, Result};
use crate::resources::{Environment, Function, FunctionPackage, Network, Runtime};
use crate::InstanceInfo;
use crate::{PoolConfig, PoolManager};

/// Starts fake instances: each answers `/v2/specialize` with 200 and any other
/// request with `instance <id>`.
struct FakeBackend {
    dir: PathBuf,
    /// Starts from now on fail, as a runtime that cannot start would.
    broken: AtomicBool,
    /// Generic instances may be left running at shutdown (as pods are).
    parks: Arc<AtomicBool>,
    started: AtomicUsize,
    /// Starts asked for, failed ones too.
    asked: AtomicUsize,
    /// Instances from now on never finish loading code (a module that hangs
    /// at import); counts the loads begun.
    hangs: Arc<AtomicBool>,
    loads: Arc<AtomicUsize>,
    /// Code given to instances from now on is held in staging (before the
    /// runtime is asked to load it) until `release` is notified.
    holds_staging: Arc<AtomicBool>,
    staging: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    handles: Mutex<HashMap<u64, Arc<FakeHandle>>>,
    /// Starts from now on wait for the server's stop (a runtime that never
    /// listens), then give up; counts those that did.
    starts_wait: AtomicBool,
    gave_up: AtomicUsize,
}

struct FakeHandle {
    address: Address,
    exit_tx: watch::Sender<Option<Exit>>,
    server: tokio::task::JoinHandle<()>,
    parks: Arc<AtomicBool>,
    /// Left running at shutdown for a next server.
    parked: AtomicBool,
    holds_staging: Arc<AtomicBool>,
    staging: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
}

impl FakeHandle {
    /// Ends the instance with `exit` (as its backend would report it).
    fn end(&self, exit: Exit) {
        self.server.abort();
        self.exit_tx.send_if_modified(|e| {
            let first = e.is_none();
            if first {
                *e = Some(exit.clone());
            }
            first
        });
    }
}

impl Handle for FakeHandle {
    fn address(&self) -> &Address {
        &self.address
    }
    fn stage(
        self: Arc<Self>,
        staging: crate::backend::Staging,
    ) -> BoxFuture<'static, Result<String>> {
        Box::pin(async move {
            if self.holds_staging.load(Ordering::SeqCst) {
                let released = self.release.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                self.staging.fetch_add(1, Ordering::SeqCst);
                released.await;
            }
            self.stage_code(&staging.path)
        })
    }
    fn stage_code(&self, package: &Path) -> Result<String> {
        Ok(package.to_string_lossy().into_owned())
    }
    fn stop(&self) {
        self.end(Exit::Stopped);
    }
    fn park(&self) -> bool {
        let parks = self.parks.load(Ordering::SeqCst);
        if parks {
            self.parked.store(true, Ordering::SeqCst);
            self.exit_tx.send_replace(Some(Exit::Stopped));
        }
        parks
    }
    fn exit(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
}

impl Backend for FakeBackend {
    fn isolation(&self) -> Isolation {
        Isolation {
            backend: "process",
            summary: "fake".into(),
        }
    }

    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Handle>>> {
        Box::pin(async move {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.broken.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("the fake runtime does not start".into()));
            }
            if self.starts_wait.load(Ordering::SeqCst) {
                let _ = req.stopping.clone().wait_for(|s| *s).await.is_ok();
                self.gave_up.fetch_add(1, Ordering::SeqCst);
                return Err(Error::ShuttingDown("the server stopped".into()));
            }
            self.started.fetch_add(1, Ordering::SeqCst);
            let path = self.dir.join(format!("{}.sock", req.id));
            let listener = tokio::net::UnixListener::bind(&path)
                .map_err(|e| Error::Internal(e.to_string()))?;
            let id = req.id;
            let (hangs, loads) = (self.hangs.clone(), self.loads.clone());
            let server = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (hangs, loads) = (hangs.clone(), loads.clone());
                    let service = service_fn(move |r: hyper::Request<hyper::body::Incoming>| {
                        let (hangs, loads) = (hangs.clone(), loads.clone());
                        async move {
                            let body = if r.uri().path() == "/v2/specialize" {
                                loads.fetch_add(1, Ordering::SeqCst);
                                if hangs.load(Ordering::SeqCst) {
                                    std::future::pending::<()>().await;
                                }
                                String::new()
                            } else {
                                format!("instance {id}")
                            };
                            let _ = r.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            });
            let handle = Arc::new(FakeHandle {
                address: Address::Unix(path),
                exit_tx: watch::channel(None).0,
                server,
                parks: self.parks.clone(),
                parked: AtomicBool::new(false),
                holds_staging: self.holds_staging.clone(),
                staging: self.staging.clone(),
                release: self.release.clone(),
            });
            self.handles.lock().unwrap().insert(id, handle.clone());
            Ok(handle as Arc<dyn Handle>)
        })
    }
}

/// Polls `check` until it answers something, for at most 10 s.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let polled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(v) = check() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    polled
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

struct Setup {
    pm: PoolManager,
    backend: Arc<FakeBackend>,
    _dir: tempfile::TempDir,
}

async fn setup(poolsize: usize, concurrency: usize) -> Setup {
    setup_scaled(poolsize, 0, concurrency).await
}

/// As `setup`, with the function's min scale.
async fn setup_scaled(poolsize: usize, min_scale: usize, concurrency: usize) -> Setup {
    setup_with(poolsize, min_scale, concurrency, 1).await
}

/// As `setup_scaled`, with the requests an instance takes at once.
async fn setup_with(
    poolsize: usize,
    min_scale: usize,
    concurrency: usize,
    requests_per_instance: usize,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(FakeBackend {
        dir: dir.path().to_path_buf(),
        broken: AtomicBool::new(false),
        parks: Arc::default(),
        started: AtomicUsize::new(0),
        asked: AtomicUsize::new(0),
        hangs: Arc::default(),
        loads: Arc::default(),
        holds_staging: Arc::default(),
        staging: Arc::default(),
        release: Arc::default(),
        handles: Mutex::default(),
        starts_wait: AtomicBool::new(false),
        gave_up: AtomicUsize::new(0),
    });
    let db = sled::Config::new().temporary(true).open().unwrap();
    let pm = PoolManager::start(
        &db,
        PoolConfig {
            data_dir: dir.path().join("data"),
            backend: backend.clone(),
            specialize_timeout: Duration::from_secs(5),
            lease_wait: Duration::from_millis(200),
            body_limit: 1 << 20,
            packages: Default::default(),
            reap_interval: Duration::from_secs(3600),
            build_timeout: Duration::from_secs(60),
            build_disk_mb: 4096,
            prune_interval: None,
        },
    )
    .await
    .unwrap();
    pm.create_environment(Environment {
        name: "env".into(),
        namespace: "default".into(),
        runtime: Some(Runtime::Python),
        command: None,
        image: None,
        poolsize,
        memory_mb: None,
        cpu_millis: None,
        network: Network::Host,
        buildcmd: None,
    })
    .await
    .unwrap();
    let package = pm.put_package("f.py", b"def main(): pass\n").unwrap();
    pm.create_function(Function {
        name: "f".into(),
        namespace: "default".into(),
        env: "env".into(),
        package: package.into(),
        entrypoint: None,
        timeout_secs: 60,
        idle_timeout_secs: 60,
        executor_type: Default::default(),
        min_scale,
        concurrency,
        requests_per_instance,
        secrets: Vec::new(),
        configmaps: Vec::new(),
        env_vars: Default::default(),
        generation: 0,
        invocation: None,
    })
    .await
    .unwrap();
    Setup {
        pm,
        backend,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_released_instance_is_leased_again_and_past_the_budget_a_lease_gets_429() {
    let s = setup(0, 1).await;
    let first = s.pm.lease("f").await.unwrap();
    let id = first.instance.id;
    let busy =
        s.pm.lease("f")
            .await
            .err()
            .expect("the budget is one instance");
    assert_eq!(busy.code(), "too_many_requests");
    drop(first);
    let again = s.pm.lease("f").await.unwrap();
    assert_eq!(again.instance.id, id, "the specialized instance is reused");
    assert_eq!(s.backend.started.load(Ordering::SeqCst), 1);
}

/// At the function's max scale, requests that wait for capacity get it in
/// the order they came, each when the one before it is done: none is left to
/// time out while later ones are served.
// On a worker thread, as the router's requests are: a task woken there runs
// before those woken before it (tokio's LIFO slot), so the order is the
// queue's own, not the scheduler's.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn requests_waiting_at_max_scale_are_served_in_the_order_they_came() {
    let s = setup(0, 1).await;
    let first = s.pm.lease("f").await.unwrap();
    let (served_tx, mut served) = tokio::sync::mpsc::unbounded_channel();
    let mut done = Vec::new();
    for (n, who) in ["a", "b", "c"].into_iter().enumerate() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        done.push(done_tx);
        let (pm, served_tx) = (s.pm.clone(), served_tx.clone());
        tokio::spawn(async move {
            let lease = pm.lease_within("f", Some(Duration::from_secs(30))).await;
            let _ = served_tx.send((who, lease.is_ok()));
            // Held until the test lets it go.
            let _ = done_rx.await;
            drop(lease);
        });
        eventually(&format!("{who} in line"), || {
            (s.pm.queued("f") == n + 1).then_some(())
        })
        .await;
    }
    tokio::spawn(async move { drop(first) }).await.unwrap();
    for (who, done) in ["a", "b", "c"].into_iter().zip(done) {
        assert_eq!(served.recv().await, Some((who, true)));
        assert!(served.try_recv().is_err(), "only {who} is served");
        let _ = done.send(());
    }
    assert_eq!(s.pm.queued("f"), 0);
}

/// A request that joined an instance being specialized (it has room for
/// two) keeps its turn over one that came after it, queued at max scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_request_waiting_for_a_cold_start_keeps_its_turn_over_a_later_one() {
    let s = setup_with(0, 0, 1, 2).await;
    let (served_tx, mut served) = tokio::sync::mpsc::unbounded_channel();
    let mut held = Vec::new();
    for who in ["a", "b", "c"] {
        let (pm, served_tx) = (s.pm.clone(), served_tx.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        held.push(done_tx);
        tokio::spawn(async move {
            let lease = pm.lease_within("f", Some(Duration::from_secs(30))).await;
            let _ = served_tx.send((who, lease.is_ok()));
            let _ = done_rx.await;
            drop(lease);
        });
        if who == "c" {
            eventually("c in line", || (s.pm.queued("f") == 1).then_some(())).await;
        }
    }
    // a (the cold start) and b (its room) are served; c waits for a slot.
    let mut first: Vec<_> = vec![served.recv().await.unwrap(), served.recv().await.unwrap()];
    first.sort();
    assert_eq!(first, [("a", true), ("b", true)]);
    assert!(served.try_recv().is_err());
    drop(held.remove(0));
    assert_eq!(served.recv().await, Some(("c", true)));
}

#[tokio::test]
async fn an_update_retires_the_old_instance_once_its_lease_is_released() {
    let s = setup(0, 2).await;
    let old = s.pm.lease("f").await.unwrap();
    let old_instance = old.instance.clone();
    let mut f = s.pm.function("f").unwrap();
    f.timeout_secs = 30;
    s.pm.update_function(f).await.unwrap();
    let new = s.pm.lease("f").await.unwrap();
    assert_ne!(
        new.instance.id, old_instance.id,
        "new requests go to the new generation"
    );
    assert!(
        !old_instance.is_exited(),
        "the old request finishes on its instance"
    );
    drop(old);
    assert_eq!(old_instance.wait_exited().await, Exit::Stopped);
}

/// The code an instance loaded stays while the instance runs, though its
/// function now runs other code: a runtime may read it while it drains.
#[tokio::test]
async fn code_an_instance_still_runs_is_not_pruned() {
    let s = setup(0, 2).await;
    let old_code = s.pm.function("f").unwrap().package;
    let old = s.pm.lease("f").await.unwrap();
    let old_instance = old.instance.clone();
    let mut f = s.pm.function("f").unwrap();
    f.package =
        s.pm.put_package("f.py", b"def main(): return 2\n")
            .unwrap()
            .into();
    s.pm.update_function(f).await.unwrap();
    let packages = s.pm.config().data_dir.join("packages");
    let past = std::time::SystemTime::now() - Duration::from_secs(7200);
    for e in std::fs::read_dir(&packages).unwrap() {
        let dir = std::fs::File::open(e.unwrap().path()).unwrap();
        dir.set_modified(past).unwrap();
    }
    let FunctionPackage::Stored(old_code) = old_code else {
        panic!("a stored package")
    };
    let pruned = s.pm.prune_packages().await.unwrap();
    assert!(pruned.removed.is_empty(), "{pruned:?}");
    assert_eq!(pruned.kept, 2);
    drop(old);
    assert_eq!(old_instance.wait_exited().await, Exit::Stopped);
    let pruned = s.pm.prune_packages().await.unwrap();
    assert_eq!(pruned.removed, vec![old_code.sha256.clone()]);
    assert!(s.pm.package_path(&old_code).is_err());
    // The function runs on its own code.
    drop(s.pm.lease("f").await.unwrap());
}

/// An instance specialized from an environment as it was (its memory limit,
/// say) is retired by the environment's update: the next call gets one as
/// the environment is now, the call in flight finishes on the old one.
#[tokio::test]
async fn an_environment_update_retires_its_functions_instances() {
    let s = setup(0, 2).await;
    let old = s.pm.lease("f").await.unwrap();
    let old_instance = old.instance.clone();
    let mut env = s.pm.environment("env").unwrap();
    env.memory_mb = Some(300);
    s.pm.update_environment(env).await.unwrap();
    assert!(!old_instance.is_exited(), "the call in flight finishes");
    drop(old);
    let exit = tokio::time::timeout(Duration::from_secs(10), old_instance.wait_exited()).await;
    assert_eq!(exit, Ok(Exit::Stopped), "retired once its call ended");
    let new = s.pm.lease("f").await.unwrap();
    assert_ne!(new.instance.id, old_instance.id);
    // The same environment again changes nothing.
    let kept = new.instance.id;
    drop(new);
    let env = s.pm.environment("env").unwrap();
    s.pm.update_environment(env).await.unwrap();
    assert_eq!(s.pm.lease("f").await.unwrap().instance.id, kept);
}

#[tokio::test]
async fn a_failed_start_is_an_error_and_leaves_the_budget_whole() {
    let s = setup(0, 1).await;
    s.backend.broken.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let e = s.pm.lease("f").await.err().expect("no instance can start");
        assert_eq!(e.code(), "unavailable", "{e}");
    }
    s.backend.broken.store(false, Ordering::SeqCst);
    s.pm.lease("f")
        .await
        .expect("the budget was not used up by the failures");
}

/// A generic instance's output has a log of its own, which no function's
/// name can share (a function named `env-<environment>` once got it).
#[tokio::test]
async fn a_generic_instances_log_is_no_functions() {
    let s = setup(0, 1).await;
    let mut named_like_it = s.pm.function("f").unwrap();
    named_like_it.name = "env-env".into();
    s.pm.create_function(named_like_it).await.unwrap();
    s.backend.broken.store(true, Ordering::SeqCst);
    let e = s.pm.lease("f").await.err().expect("no instance can start");
    assert!(e.to_string().contains("logs/env.env.log"), "{e}");
    let generic = s.pm.logs().read("env.env").await;
    assert!(!generic.is_empty());
    assert!(s.pm.logs().read("env-env").await.is_empty());
    // It goes with its environment, as a function's log goes with it.
    for f in ["f", "env-env"] {
        s.pm.delete_function(f).await.unwrap();
    }
    s.pm.delete_environment("env").await.unwrap();
    assert!(s.pm.logs().read("env.env").await.is_empty());
    assert!(!s.pm.logs().path("env.env").exists());
}

/// Instances that fail to start three times in a row are asked for again
/// only after a pause (the reaper's tick or an instance's exit would ask at
/// once): a host out of file descriptors is not asked, and its refusal not
/// logged, several times a second.
#[tokio::test]
async fn starts_that_keep_failing_are_tried_again_after_a_pause() {
    let s = setup_scaled(0, 1, 1).await;
    let ids = eventually("one warm instance", || {
        let ids = warm(&s.pm);
        (ids.len() == 1).then_some(ids)
    })
    .await;
    s.backend.broken.store(true, Ordering::SeqCst);
    let asked = s.backend.asked.load(Ordering::SeqCst);
    let handle = s.backend.handles.lock().unwrap()[&ids[0]].clone();
    handle.end(Exit::Vanished("its pod was deleted".into()));
    // Three tries to replace it, then it gives up for now.
    eventually("three failed starts", || {
        (s.backend.asked.load(Ordering::SeqCst) == asked + 3).then_some(())
    })
    .await;
    eventually("the warming gives up", || {
        (!s.pm.warming("f")).then_some(())
    })
    .await;
    // Asked again at once (as the reaper's next tick does): nothing is tried.
    s.pm.warm_again("f");
    assert!(
        !s.pm.warming("f"),
        "asked again at once, it waits out its pause"
    );
    tokio::task::yield_now().await;
    assert_eq!(s.backend.asked.load(Ordering::SeqCst), asked + 3);
}

/// An environment's pool that gave up after failed starts fills again once
/// its pause is over, without a request: the cause fixed meanwhile (a full
/// disk, an interpreter being upgraded) leaves no environment without its
/// pool until the next cold start.
#[tokio::test]
async fn a_pool_that_gave_up_fills_again_after_its_pause() {
    let s = setup(1, 1).await;
    let generic = eventually("the pool to fill", || {
        s.pm.instances(None).first().map(|i| i.id)
    })
    .await;
    s.backend.broken.store(true, Ordering::SeqCst);
    let asked = s.backend.asked.load(Ordering::SeqCst);
    let handle = s.backend.handles.lock().unwrap()[&generic].clone();
    handle.end(Exit::Vanished("its pod was deleted".into()));
    eventually("three failed starts", || {
        (s.backend.asked.load(Ordering::SeqCst) == asked + 3).then_some(())
    })
    .await;
    eventually("the filling gives up", || {
        (!s.pm.inner.refilling("env")).then_some(())
    })
    .await;
    s.backend.broken.store(false, Ordering::SeqCst);
    // The reaper's tick within the pause tries nothing.
    s.pm.inner.fill_again();
    tokio::task::yield_now().await;
    assert_eq!(s.backend.asked.load(Ordering::SeqCst), asked + 3);
    // Its first tick after the pause fills the pool.
    s.pm.inner.pauses_over();
    s.pm.inner.fill_again();
    eventually("the pool to fill again", || {
        s.pm.instances(None).first().map(|i| i.id)
    })
    .await;
}

#[tokio::test]
async fn an_instance_that_vanishes_is_replaced_in_the_pool() {
    let s = setup(1, 1).await;
    let generic = eventually("the pool to fill", || {
        s.pm.instances(None).first().map(|i| i.id)
    })
    .await;
    let handle = s.backend.handles.lock().unwrap()[&generic].clone();
    handle.end(Exit::Vanished("its pod was deleted".into()));
    let replaced = eventually("a replacement", || {
        let ids: Vec<u64> = s.pm.instances(None).iter().map(|i| i.id).collect();
        (!ids.is_empty() && !ids.contains(&generic)).then_some(ids)
    })
    .await;
    assert_eq!(replaced.len(), 1, "{replaced:?}");
}

#[tokio::test]
async fn an_instance_that_has_ended_takes_no_lease_before_the_pool_has_tidied_it_away() {
    let s = setup(0, 2).await;
    let first = s.pm.lease("f").await.unwrap();
    let ended = first.instance.clone();
    drop(first);
    // Killed (for its memory, say) while idle. On this single-threaded runtime
    // the pool's own exit watcher has not run yet when the next lease is taken.
    s.backend.handles.lock().unwrap()[&ended.id].end(Exit::OutOfMemory);
    let next = s.pm.lease("f").await.unwrap();
    assert_ne!(next.instance.id, ended.id, "a dead instance was leased");
    assert!(!next.instance.is_exited());
}

#[tokio::test]
async fn shutdown_stops_every_instance() {
    let s = setup(2, 2).await;
    let lease = s.pm.lease("f").await.unwrap();
    let instance = lease.instance.clone();
    drop(lease);
    s.pm.shutdown(Duration::from_secs(5)).await;
    assert!(instance.is_exited());
    assert!(s.pm.instances(None).is_empty());
    let e = s.pm.lease("f").await.err().expect("closing");
    assert_eq!(e.code(), "shutting_down");
}

/// A graceful stop waits for calls, a cold start among them, not for an
/// instance starting for the pool alone; the stop ends the starts under way
/// (a runtime that never listens held it for the whole grace and more).
#[tokio::test]
async fn a_stop_waits_for_calls_not_warm_ups_and_ends_the_starts_under_way() {
    let s = setup(0, 1).await;
    s.backend.starts_wait.store(true, Ordering::SeqCst);
    let mut warm = s.pm.environment("env").unwrap();
    warm.name = "warm".into();
    warm.poolsize = 1;
    s.pm.create_environment(warm).await.unwrap();
    let asked = || s.backend.asked.load(Ordering::SeqCst);
    eventually("a warm-up under way", || (asked() >= 1).then_some(())).await;
    assert!(
        s.pm.wait_idle(Duration::from_millis(50)).await,
        "a warm-up is no call"
    );
    let call = tokio::spawn({
        let pm = s.pm.clone();
        async move { pm.lease("f").await.map(drop) }
    });
    eventually("a cold start under way", || (asked() >= 2).then_some(())).await;
    assert!(
        !s.pm.wait_idle(Duration::from_millis(50)).await,
        "a call waits for its instance"
    );
    s.pm.shutdown(Duration::from_secs(30)).await;
    assert_eq!(s.backend.gave_up.load(Ordering::SeqCst), 2);
    let e = call.await.unwrap().expect_err("no instance");
    assert_eq!(e.code(), "shutting_down", "{e}");
}

#[tokio::test]
async fn at_shutdown_generic_instances_a_backend_can_keep_are_parked_and_specialized_ones_stop() {
    let s = setup(2, 2).await;
    s.backend.parks.store(true, Ordering::SeqCst);
    let lease = s.pm.lease("f").await.unwrap();
    let specialized = lease.instance.id;
    drop(lease);
    let generic: Vec<u64> = eventually("a full pool", || {
        let ids: Vec<u64> =
            s.pm.instances(None)
                .iter()
                .filter(|i| i.state == "generic")
                .map(|i| i.id)
                .collect();
        (ids.len() == 2).then_some(ids)
    })
    .await;
    s.pm.shutdown(Duration::from_secs(5)).await;
    assert!(s.pm.instances(None).is_empty());
    let handles = s.backend.handles.lock().unwrap();
    let parked = |id: u64| handles[&id].parked.load(Ordering::SeqCst);
    for id in generic {
        assert!(parked(id), "generic instance {id} was stopped");
        assert!(
            !handles[&id].server.is_finished(),
            "generic instance {id} is down"
        );
    }
    assert!(!parked(specialized), "the specialized instance was parked");
}

/// The function's specialized instances that take leases, by id.
fn warm(pm: &PoolManager) -> Vec<u64> {
    pm.instances(Some("f"))
        .iter()
        .filter(|i: &&InstanceInfo| i.state == "specialized")
        .map(|i| i.id)
        .collect()
}

#[tokio::test]
async fn min_scale_instances_are_specialized_before_any_request_and_replaced_when_they_die() {
    let s = setup_scaled(1, 2, 5).await;
    let ids = eventually("two warm instances", || {
        let ids = warm(&s.pm);
        (ids.len() == 2).then_some(ids)
    })
    .await;
    // One of them dies: another is specialized in its place.
    let handle = s.backend.handles.lock().unwrap()[&ids[0]].clone();
    handle.end(Exit::Vanished("its pod was deleted".into()));
    let now = eventually("a replacement", || {
        let now = warm(&s.pm);
        (now.len() == 2 && !now.contains(&ids[0])).then_some(now)
    })
    .await;
    assert!(now.contains(&ids[1]), "{now:?}");
    // A request takes a warm instance: no instance is started for it.
    let started = s.backend.started.load(Ordering::SeqCst);
    let lease = s.pm.lease("f").await.unwrap();
    assert!(now.contains(&lease.instance.id));
    assert_eq!(s.backend.started.load(Ordering::SeqCst), started);
}

#[tokio::test]
async fn an_update_warms_its_min_scale_of_the_new_generation() {
    let s = setup_scaled(0, 1, 5).await;
    let old = eventually("one warm instance", || warm(&s.pm).first().copied()).await;
    let mut f = s.pm.function("f").unwrap();
    f.min_scale = 3;
    s.pm.update_function(f).await.unwrap();
    let new = eventually("three warm instances of the new generation", || {
        let ids = warm(&s.pm);
        (ids.len() == 3).then_some(ids)
    })
    .await;
    assert!(!new.contains(&old), "the old generation is retired");
}

/// Makes every instance of the function look idle for two minutes.
fn age(s: &Setup) {
    for i in s.pm.inner.all_instances() {
        let mut last_used = crate::instance::lock(&i.last_used);
        if let Some(earlier) = last_used.checked_sub(Duration::from_secs(120)) {
            *last_used = earlier;
        }
    }
}

#[tokio::test]
async fn the_idle_reaper_never_goes_below_min_scale() {
    let s = setup_scaled(0, 1, 3).await;
    eventually("one warm instance", || {
        (warm(&s.pm).len() == 1).then_some(())
    })
    .await;
    // Three requests at once: three instances.
    let leases = vec![
        s.pm.lease("f").await.unwrap(),
        s.pm.lease("f").await.unwrap(),
        s.pm.lease("f").await.unwrap(),
    ];
    drop(leases);
    assert_eq!(warm(&s.pm).len(), 3);
    age(&s);
    s.pm.inner.reap_idle();
    let left = eventually("the idle instances above the min scale to stop", || {
        let ids = warm(&s.pm);
        (ids.len() == 1).then_some(ids)
    })
    .await;
    // And no more: the reaper leaves the min scale alone.
    age(&s);
    s.pm.inner.reap_idle();
    assert_eq!(warm(&s.pm), left);
}

#[tokio::test]
async fn without_min_scale_the_idle_reaper_stops_every_idle_instance() {
    let s = setup_scaled(0, 0, 3).await;
    drop(s.pm.lease("f").await.unwrap());
    assert_eq!(warm(&s.pm).len(), 1);
    age(&s);
    s.pm.inner.reap_idle();
    eventually("the idle instance to stop", || {
        warm(&s.pm).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_first_requests_shares_one_cold_start_up_to_requests_per_instance() {
    for poolsize in [0, 1] {
        let s = setup_with(poolsize, 0, 10, 4).await;
        let leases = futures_util::future::join_all((0..4).map(|_| s.pm.lease("f"))).await;
        let ids: Vec<u64> = leases
            .iter()
            .map(|l| l.as_ref().unwrap().instance.id)
            .collect();
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "pool {poolsize}: {ids:?}"
        );
        let specialized =
            s.pm.instances(None)
                .into_iter()
                .filter(|i| i.function.is_some());
        assert_eq!(specialized.count(), 1, "pool {poolsize}");
        // A fifth while the four are held needs an instance of its own.
        let fifth = s.pm.lease("f").await.unwrap();
        assert_ne!(fifth.instance.id, ids[0]);
    }

    // One request per instance: a burst starts one instance per request.
    let s = setup_with(0, 0, 10, 1).await;
    let leases = futures_util::future::join_all((0..3).map(|_| s.pm.lease("f"))).await;
    let mut ids: Vec<u64> = leases
        .iter()
        .map(|l| l.as_ref().unwrap().instance.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
}

/// An instance given its code (staged, not yet loaded) is not listed as
/// specialized: a count of specialized instances taken then would drop once
/// the runtime starts loading.
#[tokio::test]
async fn an_instance_whose_code_is_being_staged_is_listed_as_specializing() {
    let s = setup(1, 1).await;
    eventually("a generic instance", || {
        (s.pm.pool_health("env")?.ready == 1).then_some(())
    })
    .await;
    s.backend.holds_staging.store(true, Ordering::SeqCst);
    let pm = s.pm.clone();
    let lease = tokio::spawn(async move { pm.lease("f").await.map(|l| l.instance.id) });
    eventually("the code is being staged", || {
        (s.backend.staging.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let listed = s.pm.instances(Some("f"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].state, "specializing");
    s.backend.release.notify_waiters();
    lease.await.unwrap().unwrap();
    assert_eq!(s.pm.instances(Some("f"))[0].state, "specialized");
}

/// A function deleted while an instance loads its code: the instance is
/// stopped at once (not at the end of the load limit) and the request that
/// waited for it learns the function is gone.
#[tokio::test]
async fn a_function_deleted_while_its_code_loads_stops_the_instance_loading_it() {
    let s = setup(0, 1).await;
    s.backend.hangs.store(true, Ordering::SeqCst);
    let pm = s.pm.clone();
    let lease = tokio::spawn(async move { pm.lease("f").await.map(|l| l.instance.id) });
    eventually("the code is loading", || {
        (s.backend.loads.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // Listed as what it is: not yet ready for requests.
    let listed = s.pm.instances(Some("f"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "specializing");
    s.pm.delete_function("f").await.unwrap();
    let err = lease.await.unwrap().unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
    let handles: Vec<_> = s
        .backend
        .handles
        .lock()
        .unwrap()
        .values()
        .cloned()
        .collect();
    assert_eq!(handles.len(), 1);
    assert!(
        handles[0].exit_tx.borrow().is_some(),
        "the instance was stopped"
    );
}

#[tokio::test]
async fn requests_waiting_for_a_cold_start_that_fails_get_its_error_not_a_hang() {
    let s = setup_with(0, 0, 10, 4).await;
    s.backend.broken.store(true, Ordering::SeqCst);
    let leases = futures_util::future::join_all((0..3).map(|_| s.pm.lease("f"))).await;
    for l in &leases {
        assert_eq!(
            l.as_ref().err().map(|e| e.code()),
            Some("unavailable"),
            "{:?}",
            l.as_ref().err()
        );
    }
    s.backend.broken.store(false, Ordering::SeqCst);
    assert!(s.pm.lease("f").await.is_ok(), "the budget is whole again");
}
