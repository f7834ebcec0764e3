//! The build manager through a scripted backend whose builds wait at a gate
//! the test opens: one build at a time per package, the last request wins,
//! the cache, calls that wait for a build or answer its failure, and builds a
//! stopped server left behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;

use super::{BuildStatus, Package, PackageStatus};
use crate::backend::build::{BuildExit, BuildOutput, BuildRequest};
use crate::backend::{Backend, Handle, Isolation, StartRequest};
use crate::error::{Error, Result};
use crate::resources::{Environment, Function, FunctionPackage, NamedPackageRef, Network, Runtime};
use crate::{PoolConfig, PoolManager};

struct FakeBuilder {
    builds: AtomicUsize,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    /// Each build takes a permit before it ends.
    gate: Semaphore,
    /// Told when a build reaches the gate.
    at_gate: tokio::sync::Notify,
    fail: AtomicBool,
}

impl Default for FakeBuilder {
    fn default() -> Self {
        FakeBuilder {
            builds: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            at_gate: tokio::sync::Notify::new(),
            fail: AtomicBool::new(false),
        }
    }
}

impl Backend for FakeBuilder {
    fn isolation(&self) -> Isolation {
        Isolation {
            backend: "process",
            summary: "fake".into(),
        }
    }

    fn start(&self, _req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Handle>>> {
        Box::pin(async { Err(Error::Unavailable("no instances in this test".into())) })
    }

    fn build(&self, req: BuildRequest) -> BoxFuture<'_, Result<BuildOutput>> {
        Box::pin(async move {
            self.builds.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            self.at_gate.notify_one();
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Ok(BuildOutput {
                    exit: BuildExit::Failed("exited with status 1".into()),
                    log: "ERROR: No matching distribution found for nosuchdep==9.9\n".into(),
                });
            }
            // The deployment is the source, as a builder with nothing to do makes it.
            let made = req.deploy.join(crate::backend::build::DEPLOY_PKG_DIR);
            std::fs::create_dir_all(&made).map_err(|e| crate::Error::Internal(e.to_string()))?;
            crate::package::copy_tree(&req.src, &made)?;
            Ok(BuildOutput {
                exit: BuildExit::Succeeded,
                log: "built\n".into(),
            })
        })
    }
}

struct Setup {
    pm: PoolManager,
    backend: Arc<FakeBuilder>,
    db: sled::Db,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(db: sled::Db, data: PathBuf, backend: Arc<FakeBuilder>) -> PoolManager {
    PoolManager::start(
        &db,
        PoolConfig {
            data_dir: data,
            backend,
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
    .unwrap()
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = sled::Config::new().temporary(true).open().unwrap();
    let backend = Arc::new(FakeBuilder::default());
    let pm = start(db.clone(), data.clone(), backend.clone()).await;
    pm.create_environment(Environment {
        name: "python".into(),
        namespace: "default".into(),
        runtime: Some(Runtime::Python),
        command: None,
        image: None,
        poolsize: 0,
        memory_mb: None,
        cpu_millis: None,
        network: Network::Host,
        buildcmd: None,
    })
    .await
    .unwrap();
    Setup {
        pm,
        backend,
        db,
        data,
        _dir: dir,
    }
}

fn source_package(s: &Setup, name: &str, code: &str) -> Package {
    let source = s.pm.put_package("main.py", code.as_bytes()).unwrap();
    Package {
        name: name.into(),
        namespace: "default".into(),
        environment: "python".into(),
        source: Some(source),
        deployment: None,
        buildcmd: None,
        generation: 0,
        status: PackageStatus::default(),
    }
}

fn function(name: &str, package: &str, timeout_secs: u64) -> Function {
    Function {
        name: name.into(),
        namespace: "default".into(),
        env: "python".into(),
        package: FunctionPackage::Named {
            packageref: NamedPackageRef {
                name: package.into(),
                namespace: "default".into(),
            },
        },
        entrypoint: None,
        timeout_secs,
        idle_timeout_secs: 60,
        executor_type: Default::default(),
        min_scale: 0,
        concurrency: 1,
        requests_per_instance: 1,
        secrets: Vec::new(),
        configmaps: Vec::new(),
        env_vars: Default::default(),
        generation: 0,
        invocation: None,
    }
}

/// Waits until package `name` has a status `done` accepts.
async fn status_of(pm: &PoolManager, name: &str, done: impl Fn(BuildStatus) -> bool) -> Package {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let p = pm.package("default", name).unwrap();
            if done(p.status.buildstatus) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("package {name} never reached the status waited for"))
}

/// Waits until a build of `backend` has reached its gate.
async fn until_building(backend: &FakeBuilder) {
    tokio::time::timeout(Duration::from_secs(10), backend.at_gate.notified())
        .await
        .expect("the build never reached its builder")
}

fn finished(s: BuildStatus) -> bool {
    matches!(s, BuildStatus::Succeeded | BuildStatus::Failed)
}

#[tokio::test]
async fn builds_of_one_package_run_one_at_a_time_and_the_last_request_wins() {
    let s = setup().await;
    s.pm.create_package(source_package(&s, "p", "v1"))
        .await
        .unwrap();
    status_of(&s.pm, "p", |b| b == BuildStatus::Running).await;
    // Two more requests while the first build runs: one more build, after it.
    s.pm.rebuild_package("default", "p").await.unwrap();
    let p = s.pm.rebuild_package("default", "p").await.unwrap();
    assert_eq!(p.status.buildstatus, BuildStatus::Pending);
    s.backend.gate.add_permits(10);
    let p = status_of(&s.pm, "p", finished).await;
    assert_eq!(p.status.buildstatus, BuildStatus::Succeeded);
    assert_eq!(p.generation, 3);
    assert_eq!(s.backend.builds.load(Ordering::SeqCst), 2);
    assert_eq!(s.backend.most_at_once.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_same_source_is_built_once() {
    let s = setup().await;
    s.backend.gate.add_permits(10);
    s.pm.create_package(source_package(&s, "a", "same"))
        .await
        .unwrap();
    let a = status_of(&s.pm, "a", finished).await;
    s.pm.create_package(source_package(&s, "b", "same"))
        .await
        .unwrap();
    let b = status_of(&s.pm, "b", finished).await;
    assert_eq!(s.backend.builds.load(Ordering::SeqCst), 1);
    assert!(b.status.cached && !a.status.cached);
    assert_eq!(a.status.built, b.status.built);
    assert!(
        b.status.buildlog.starts_with("cached:"),
        "{}",
        b.status.buildlog
    );
    // An update that changes nothing that is built does not build either.
    s.pm.update_package(b.clone()).await.unwrap();
    s.pm.rebuild_package("default", "b").await.unwrap();
    let b = status_of(&s.pm, "b", finished).await;
    assert!(!b.status.cached);
    assert_eq!(s.backend.builds.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_call_waits_for_the_build_and_answers_its_failure() {
    let s = setup().await;
    s.pm.create_package(source_package(&s, "deps", "x"))
        .await
        .unwrap();
    s.pm.create_function(function("f", "deps", 1))
        .await
        .unwrap();
    // Still building past the function's timeout: a timeout naming the package.
    let err = s.pm.lease("f").await.err().unwrap();
    assert_eq!(err.code(), "function_timeout", "{err}");
    assert!(
        err.to_string().contains("\"deps\" is still building"),
        "{err}"
    );
    s.backend.fail.store(true, Ordering::SeqCst);
    s.backend.gate.add_permits(10);
    let err = s.pm.lease("f").await.err().unwrap();
    assert_eq!(
        (err.code(), err.status().as_u16()),
        ("package_build_failed", 424)
    );
    let message = err.to_string();
    assert!(message.contains("package \"deps\" failed"), "{message}");
    assert!(
        message.contains("No matching distribution found"),
        "{message}"
    );
    assert!(message.contains("fusion pkg logs --name deps"), "{message}");
    let p = s.pm.package("default", "deps").unwrap();
    assert!(p
        .status
        .buildlog
        .contains("the build failed: it exited with status 1"));
}

/// A package of a deployment archive updated to a source whose build fails:
/// its functions go on running the archive, as after any failed rebuild.
#[tokio::test]
async fn an_archive_given_a_source_that_fails_to_build_keeps_running() {
    let s = setup().await;
    let archive = s.pm.put_package("main.py", b"archived").unwrap();
    let mut p = source_package(&s, "p", "unused");
    p.source = None;
    p.deployment = Some(archive.clone());
    s.pm.create_package(p.clone()).await.unwrap();
    s.pm.create_function(function("f", "p", 5)).await.unwrap();
    s.backend.fail.store(true, Ordering::SeqCst);
    s.backend.gate.add_permits(10);
    p.source = Some(s.pm.put_package("main.py", b"broken").unwrap());
    p.deployment = None;
    p.buildcmd = Some("./build.sh".into());
    s.pm.update_package(p).await.unwrap();
    let p = status_of(&s.pm, "p", finished).await;
    assert_eq!(p.status.buildstatus, BuildStatus::Failed);
    assert_eq!(p.runnable(), Some(&archive), "the archive it ran");
    // A call goes on to start an instance (none in this test), not a 424.
    let err = s.pm.lease("f").await.err().unwrap();
    assert_eq!(err.code(), "unavailable", "{err}");
}

/// A package moved to another environment with `move_functions` takes the
/// functions that run it along; without, they refuse the move.
#[tokio::test]
async fn a_package_moves_with_its_functions_when_asked() {
    let s = setup().await;
    s.backend.gate.add_permits(10);
    s.pm.create_package(source_package(&s, "deps", "x"))
        .await
        .unwrap();
    s.pm.create_function(function("f", "deps", 5))
        .await
        .unwrap();
    let mut env = s.pm.environment("python").unwrap();
    env.name = "python-new".into();
    s.pm.create_environment(env).await.unwrap();
    let mut moved = s.pm.package("default", "deps").unwrap();
    moved.environment = "python-new".into();
    let err = s.pm.update_package(moved.clone()).await.unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(s.pm.function("f").unwrap().env, "python");
    s.pm.update_package_moving(moved, true).await.unwrap();
    assert_eq!(s.pm.function("f").unwrap().env, "python-new");
    assert_eq!(
        s.pm.package("default", "deps").unwrap().environment,
        "python-new"
    );
}

#[tokio::test]
async fn references_between_functions_and_packages_are_checked() {
    let s = setup().await;
    s.backend.gate.add_permits(10);
    let err =
        s.pm.create_function(function("f", "nope", 5))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "conflict");
    assert!(err.to_string().contains("\"nope\""), "{err}");
    s.pm.create_package(source_package(&s, "deps", "x"))
        .await
        .unwrap();
    // Its build done, nothing writes under the test's directory when it goes.
    status_of(&s.pm, "deps", finished).await;
    let mut other_env = function("g", "deps", 5);
    other_env.env = "nodejs".into();
    assert_eq!(
        s.pm.create_function(other_env).await.unwrap_err().code(),
        "conflict"
    );
    s.pm.create_function(function("f", "deps", 5))
        .await
        .unwrap();
    // Its functions keep the package in their environment.
    let mut moved = s.pm.package("default", "deps").unwrap();
    moved.environment = "nodejs".into();
    s.pm.create_environment(Environment {
        name: "nodejs".into(),
        namespace: "default".into(),
        runtime: Some(Runtime::Nodejs),
        command: None,
        image: None,
        poolsize: 0,
        memory_mb: None,
        cpu_millis: None,
        network: Network::Host,
        buildcmd: None,
    })
    .await
    .unwrap();
    let err = s.pm.update_package(moved).await.unwrap_err();
    assert_eq!(err.code(), "conflict");
    assert!(err.to_string().contains("functions f use it"), "{err}");
    let err = s.pm.delete_package("default", "deps").await.unwrap_err();
    assert_eq!(err.code(), "conflict");
    assert!(err.to_string().contains("used by functions f"), "{err}");
    // Everything that holds the environment is named at once.
    let err = s.pm.delete_environment("python").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("used by functions f and packages deps;"),
        "{err}"
    );
    s.pm.delete_function("f").await.unwrap();
    let err = s.pm.delete_environment("python").await.unwrap_err();
    assert_eq!(err.code(), "conflict");
    assert!(err.to_string().contains("used by packages deps;"), "{err}");
    s.pm.delete_package("default", "deps").await.unwrap();
    s.pm.delete_environment("python").await.unwrap();
    assert_eq!(
        s.pm.package("default", "deps").unwrap_err().code(),
        "not_found"
    );
}

#[tokio::test]
async fn a_build_a_stopped_server_left_running_is_built_at_the_next_start() {
    let s = setup().await;
    s.pm.create_package(source_package(&s, "p", "x"))
        .await
        .unwrap();
    status_of(&s.pm, "p", |b| b == BuildStatus::Running).await;
    // Its work directory made (the builder is called after), the first build
    // waits at the gate until the test ends: nothing writes under the test's
    // directory while it is removed.
    until_building(&s.backend).await;
    // A second server on the same store, as after a crash of the first.
    let backend = Arc::new(FakeBuilder::default());
    backend.gate.add_permits(10);
    let again = start(s.db.clone(), s.data.clone(), backend.clone()).await;
    let p = status_of(&again, "p", finished).await;
    assert_eq!(p.status.buildstatus, BuildStatus::Succeeded);
    assert_eq!(backend.builds.load(Ordering::SeqCst), 1);
}

/// Each of the disk's limits stops a build with its own reason; within them
/// all, none does.
#[test]
fn each_disk_limit_stops_a_build_with_its_reason() {
    use super::{disk_overuse, DiskLimits};
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("big"), vec![1u8; 3 << 20]).unwrap();
    for i in 0..10 {
        std::fs::write(work.join(format!("f{i}")), b"x").unwrap();
    }
    let limits = |mb, files, floor| DiskLimits { mb, files, floor };
    let over = |l: DiskLimits, start| disk_overuse(&work, dir.path(), &l, start);
    assert_eq!(over(limits(64, 100, 0), None), None);
    assert_eq!(
        over(limits(1, 100, 0), None).as_deref(),
        Some("it used more than 1 MiB of disk (--build-disk-mb)")
    );
    assert_eq!(
        over(limits(64, 5, 0), None).as_deref(),
        Some("it made more than 5 files and directories")
    );
    assert!(over(limits(64, 100, u64::MAX), None)
        .unwrap()
        .starts_with("the disk of the data directory has less than"));
    // The disk had far more free at the start than now: filled while it ran.
    assert_eq!(
        over(limits(64, 100, 0), Some(u64::MAX)).as_deref(),
        Some("the disk of the data directory filled by more than 64 MiB while it ran (--build-disk-mb)")
    );
}
