//! Named packages and their builds. A package is stored (sled tree
//! `named_packages`, keyed `namespace/name`); one with a source is built by its
//! environment's builder on the server's backend, in the same isolation as
//! instances, one build at a time per package and at most `BUILD_SLOTS` at
//! once, each bounded by the server's build timeout. Builds are cached by the
//! hash of their inputs (tree `package_builds`): the same source is not built
//! twice. A finished build gives the functions of the package new instances;
//! a call to a function whose package has not built yet waits for it (bounded
//! by the function's timeout), and one whose package failed to build answers
//! `package_build_failed`, unless an earlier build succeeded: a rebuild, while
//! it runs and when it fails, leaves the functions running that last good
//! build.

mod model;
mod plan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

pub use model::{
    cache_key, check_buildcmd, default_namespace, key, BuildEvent, BuildStatus, Package,
    PackageStatus,
};

use crate::backend::build::{BuildExit, BuildRequest, Progress};
use crate::error::{Error, Result};
use crate::instance::lock;
use crate::pool::{Inner, PoolManager};
use crate::resources::{Environment, Function, NamedPackageRef, PackageRef};
use crate::store::Kind;

/// Builds that may run at once on this server.
const BUILD_SLOTS: usize = 2;

/// The stored packages, the build cache, and who is building what.
pub(crate) struct Builds {
    db: sled::Db,
    packages: sled::Tree,
    cache: sled::Tree,
    /// Package changes happen one at a time (users' and builders' alike).
    pub(crate) writes: tokio::sync::Mutex<()>,
    /// Bumped at every status change; calls waiting for a build watch it.
    changed: watch::Sender<u64>,
    /// The packages being built, and whether another build was asked for meanwhile.
    running: Mutex<BuildQueue>,
    slots: Arc<Semaphore>,
    /// The output of the builds running now, by package key.
    live: Mutex<HashMap<String, Progress>>,
}

/// Takes a build's output off `Builds::live` when the build ends (or is
/// dropped unfinished).
struct Live<'a>(&'a Builds, String);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        lock(&self.0.live).remove(&self.1);
    }
}

/// Numbers the builds of every pool manager in the process, so that no two
/// share a work directory (`builds/<pid>-<n>`), even two pool managers on
/// one data directory (a restart within one process, as tests do).
static NEXT_BUILD: AtomicU64 = AtomicU64::new(1);

/// Which packages have a builder at work, and what each was asked meanwhile:
/// one builder per package; requests during a build make one more build after it.
#[derive(Default)]
struct BuildQueue {
    slots: HashMap<String, Slot>,
}

#[derive(Default)]
struct Slot {
    again: bool,
    force: bool,
}

impl BuildQueue {
    /// Records a request; answers whether a builder must be started for it
    /// (none is at work on the package).
    fn request(&mut self, key: &str, force: bool) -> bool {
        match self.slots.get_mut(key) {
            Some(slot) => {
                slot.again = true;
                slot.force |= force;
                false
            }
            None => {
                self.slots.insert(
                    key.to_string(),
                    Slot {
                        again: false,
                        force,
                    },
                );
                true
            }
        }
    }

    /// The builder of `key` takes the next build: whether it skips the cache.
    fn take_force(&mut self, key: &str) -> bool {
        self.slots
            .get_mut(key)
            .map(|s| std::mem::take(&mut s.force))
            .unwrap_or(false)
    }

    /// The builder of `key` finished a build: whether it builds again (else it
    /// is gone, and the next request starts a new one).
    fn finished(&mut self, key: &str) -> bool {
        match self.slots.get_mut(key) {
            Some(slot) if slot.again => {
                slot.again = false;
                true
            }
            _ => {
                self.slots.remove(key);
                false
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Package> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Storage(format!("corrupt package record: {e}")))
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Builds {
    pub(crate) fn open(db: &sled::Db) -> Result<Builds> {
        Ok(Builds {
            db: db.clone(),
            packages: db.open_tree("named_packages")?,
            cache: db.open_tree("package_builds")?,
            writes: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
            running: Mutex::default(),
            slots: Arc::new(Semaphore::new(BUILD_SLOTS)),
            live: Mutex::default(),
        })
    }

    fn get(&self, key: &str) -> Result<Option<Package>> {
        self.packages.get(key)?.map(|v| decode(&v)).transpose()
    }

    pub(crate) fn list(&self) -> Result<Vec<Package>> {
        self.packages.iter().values().map(|v| decode(&v?)).collect()
    }

    async fn put(&self, p: &Package) -> Result<()> {
        let bytes = serde_json::to_vec(p).map_err(|e| Error::Internal(e.to_string()))?;
        self.packages.insert(p.key(), bytes)?;
        self.db.flush_async().await?;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Drops the cache entries whose deployment is one of `removed`.
    pub(crate) fn forget_builds_of(&self, removed: &std::collections::HashSet<&str>) -> Result<()> {
        for entry in self.cache.iter() {
            let (key, value) = entry?;
            let gone = serde_json::from_slice::<PackageRef>(&value)
                .map_or(true, |built| removed.contains(built.sha256.as_str()));
            if gone {
                self.cache.remove(key)?;
            }
        }
        Ok(())
    }

    fn cached(&self, key: &str) -> Result<Option<PackageRef>> {
        match self.cache.get(key)? {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }
}

impl PoolManager {
    /// The packages of every namespace.
    pub fn packages(&self) -> Result<Vec<Package>> {
        self.inner.builds.list()
    }

    /// What the running build of a package has written so far (its first
    /// line says what it builds), while one runs.
    pub fn build_progress(&self, namespace: &str, name: &str) -> Option<String> {
        lock(&self.inner.builds.live)
            .get(&key(namespace, name))
            .map(Progress::text)
    }

    pub fn package(&self, namespace: &str, name: &str) -> Result<Package> {
        // A name no package can have is a mistake (400), as for every kind.
        crate::resources::validate_name("package", name)?;
        self.inner
            .builds
            .get(&key(namespace, name))?
            .ok_or_else(|| Error::NotFound {
                kind: "package",
                name: name.to_string(),
            })
    }

    fn check_package_refs(&self, p: &Package) -> Result<()> {
        p.validate()?;
        if self
            .inner
            .store
            .get::<Environment>(
                Kind::Environment,
                &crate::resources::qualified(&p.namespace, &p.environment),
            )?
            .is_none()
        {
            return Err(Error::Conflict(format!(
                "package {:?}: environment {:?} does not exist; create it first",
                p.name, p.environment
            )));
        }
        for r in [&p.source, &p.deployment].into_iter().flatten() {
            self.inner.packages.claim(r).map_err(|_| {
                Error::Conflict(format!(
                    "package {:?}: archive {} does not exist; upload it first (POST /v1/archives)",
                    p.name, r.sha256
                ))
            })?;
        }
        Ok(())
    }

    /// Stores a new package; one with a source is built in the background.
    pub async fn create_package(&self, mut p: Package) -> Result<Package> {
        self.check_package_refs(&p)?;
        let builds = &self.inner.builds;
        let _one = builds.writes.lock().await;
        if builds.get(&p.key())?.is_some() {
            return Err(Error::AlreadyExists {
                kind: "package",
                name: p.name.clone(),
            });
        }
        p.generation = 1;
        p.status =
            PackageStatus::default().apply(p.source.is_some(), BuildEvent::Requested, now())?;
        builds.put(&p).await?;
        if p.source.is_some() {
            self.inner.request_build(p.key(), false);
        }
        Ok(p)
    }

    /// Replaces a package. A change of what is built (source, build command,
    /// environment) builds again; functions of the package get new instances
    /// once its runnable code changes.
    pub async fn update_package(&self, p: Package) -> Result<Package> {
        self.update_package_moving(p, false).await
    }

    /// `update_package`; a package moved to another environment takes the
    /// functions that run it along when `move_functions` (else they refuse
    /// the move: they would run code built for another runtime).
    pub async fn update_package_moving(
        &self,
        mut p: Package,
        move_functions: bool,
    ) -> Result<Package> {
        self.check_package_refs(&p)?;
        let builds = &self.inner.builds;
        let one = builds.writes.lock().await;
        let old = builds.get(&p.key())?.ok_or_else(|| Error::NotFound {
            kind: "package",
            name: p.name.clone(),
        })?;
        let moved = old.environment != p.environment;
        let mut taken_along = Vec::new();
        if moved {
            let elsewhere: Vec<Function> = self
                .inner
                .store
                .functions()?
                .into_iter()
                .filter(|f| uses(f, &p.namespace, &p.name) && f.env != p.environment)
                .collect();
            if !elsewhere.is_empty() && !move_functions {
                let names: Vec<&str> = elsewhere.iter().map(|f| f.name.as_str()).collect();
                return Err(Error::Conflict(format!(
                    "package {:?}: functions {} use it in environment {:?}; move them with it (`fusion pkg update --name {} --env {} --force`)",
                    p.name,
                    names.join(", "),
                    old.environment,
                    p.name,
                    p.environment
                )));
            }
            taken_along = elsewhere;
        }
        let same_build = old.source == p.source && old.buildcmd == p.buildcmd && !moved;
        if same_build {
            p.generation = old.generation;
            p.status = old.status.clone();
        } else {
            p.generation = old.generation + 1;
            p.status = old
                .status
                .apply(p.source.is_some(), BuildEvent::Requested, now())?;
            // What was built for another runtime is no code to go on with
            // meanwhile: calls wait for the new environment's build.
            if moved {
                p.status.built = None;
            } else if old.source.is_none() && p.source.is_some() {
                // A deployment archive given a source to build: its functions
                // go on running the archive until a build succeeds, as after
                // any rebuild (one that fails takes nothing down).
                p.status.built = old.deployment.clone();
            }
        }
        builds.put(&p).await?;
        drop(one);
        if !same_build && p.source.is_some() {
            self.inner.request_build(p.key(), false);
        }
        // Its functions follow it, now that it is in their new environment.
        for mut f in taken_along {
            f.env = p.environment.clone();
            self.update_function(f).await?;
        }
        // New code, or none where there was some (a package moved to another
        // environment: its warm instances ran the other runtime's build).
        if (p.runnable().is_some() || moved) && p.runnable() != old.runnable() {
            self.inner.refresh_functions(&p.namespace, &p.name).await?;
        }
        Ok(p)
    }

    /// Builds the package's source again, without the cache.
    pub async fn rebuild_package(&self, namespace: &str, name: &str) -> Result<Package> {
        let builds = &self.inner.builds;
        let one = builds.writes.lock().await;
        let mut p = self.package(namespace, name)?;
        if p.source.is_none() {
            return Err(Error::Invalid(format!(
                "package {name:?} has no source to build: it runs its deployment archive as it is"
            )));
        }
        p.generation += 1;
        p.status = p.status.apply(true, BuildEvent::Requested, now())?;
        builds.put(&p).await?;
        drop(one);
        self.inner.request_build(p.key(), true);
        Ok(p)
    }

    /// Deletes a package no function uses.
    pub async fn delete_package(&self, namespace: &str, name: &str) -> Result<()> {
        let builds = &self.inner.builds;
        let _one = builds.writes.lock().await;
        self.package(namespace, name)?;
        let users: Vec<String> = self
            .inner
            .store
            .functions()?
            .into_iter()
            .filter(|f| uses(f, namespace, name))
            .map(|f| f.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "package {name:?} is used by functions {}; delete them or give them other code first",
                users.join(", ")
            )));
        }
        builds.packages.remove(key(namespace, name))?;
        builds.db.flush_async().await?;
        builds.changed.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// Files and directories one build's work directory may hold.
const BUILD_MAX_FILES: u64 = 500_000;

/// Free space below which a build is stopped, on the disk of the data
/// directory (where the store is: it must be able to write).
const DISK_FLOOR: u64 = 256 << 20;

/// Stops a build (through `stop`) once its work directory holds more than
/// `limit_mb` MiB or `BUILD_MAX_FILES` entries, the data directory's disk
/// has filled by more than `limit_mb` since it started (what `du` cannot
/// see: a file it deleted but keeps open), or that disk has less than
/// `DISK_FLOOR` free; looked at every second. A build is untrusted code: it
/// wrote 1.9 GB/s to the host's disk, with no bound but the disk's end.
async fn watch_disk(
    work: PathBuf,
    data_dir: PathBuf,
    limit_mb: u64,
    stop: tokio::sync::watch::Sender<Option<String>>,
) {
    let free_at_start = crate::sys::free_bytes(&data_dir).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (work, data_dir) = (work.clone(), data_dir.clone());
        let over = tokio::task::spawn_blocking(move || {
            disk_overuse(
                &work,
                &data_dir,
                &DiskLimits::builds(limit_mb),
                free_at_start,
            )
        })
        .await
        .ok()
        .flatten();
        if let Some(why) = over {
            let _ = stop.send(Some(why));
            return;
        }
    }
}

/// A build's `watch_disk`, stopped when dropped.
struct Watchdog(tokio::task::JoinHandle<()>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one build may take of the disk.
#[derive(Debug)]
struct DiskLimits {
    /// Of its work directory, and of the disk's growth while it runs.
    mb: u64,
    /// Files and directories in its work directory.
    files: u64,
    /// Free bytes the data directory's disk keeps.
    floor: u64,
}

impl DiskLimits {
    fn builds(mb: u64) -> DiskLimits {
        DiskLimits {
            mb,
            files: BUILD_MAX_FILES,
            floor: DISK_FLOOR,
        }
    }
}

/// Why the build must stop for its use of the disk, if it must.
fn disk_overuse(
    work: &Path,
    data_dir: &Path,
    limits: &DiskLimits,
    free_at_start: Option<u64>,
) -> Option<String> {
    let (mb, files) = (limits.mb, limits.files);
    let free = crate::sys::free_bytes(data_dir).ok();
    if free.is_some_and(|free| free < limits.floor) {
        return Some(format!(
            "the disk of the data directory has less than {} MiB free",
            limits.floor >> 20
        ));
    }
    if du(work, "-B1").is_some_and(|used| used > mb << 20) {
        return Some(format!(
            "it used more than {mb} MiB of disk (--build-disk-mb)"
        ));
    }
    if du(work, "--inodes").is_some_and(|n| n > files) {
        return Some(format!("it made more than {files} files and directories"));
    }
    if let (Some(start), Some(free)) = (free_at_start, free) {
        if start.saturating_sub(free) > mb << 20 {
            return Some(format!(
                "the disk of the data directory filled by more than {mb} MiB while it ran (--build-disk-mb)"
            ));
        }
    }
    None
}

/// `du -s -x` of `dir` (bytes allocated with `-B1`, entries with
/// `--inodes`): a tree of any depth, in a process of its own.
fn du(dir: &Path, unit: &str) -> Option<u64> {
    let out = std::process::Command::new("du")
        .args(["-s", "-x", unit])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    // It exits 1 when a file goes while it counts; its total still stands.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether function `f` runs the named package `namespace/name`.
fn uses(f: &Function, namespace: &str, name: &str) -> bool {
    f.package
        .named()
        .is_some_and(|r| r.namespace == namespace && r.name == name)
}

impl Inner {
    /// Builds packages a stopped server left pending or running.
    pub(crate) async fn recover_builds(self: &Arc<Self>) -> Result<()> {
        // The work directories of builds a killed server left.
        let _ = crate::sys::remove_tree(&self.cfg.data_dir.join("builds"));
        for mut p in self.builds.list()? {
            match p.status.buildstatus {
                BuildStatus::Running => {
                    p.status.buildstatus = BuildStatus::Pending;
                    p.status.buildlog = "waiting for a builder (the server restarted)".into();
                    self.builds.put(&p).await?;
                }
                BuildStatus::Pending => {}
                _ => continue,
            }
            self.request_build(p.key(), false);
        }
        Ok(())
    }

    /// Starts building the package at `key`, or, if it is being built, builds
    /// it again once that build ends (never two builds of one package at once).
    pub(crate) fn request_build(self: &Arc<Self>, key: String, force: bool) {
        if lock(&self.builds.running).request(&key, force) {
            tokio::spawn(self.clone().build_loop(key));
        }
    }

    async fn build_loop(self: Arc<Self>, key: String) {
        loop {
            let force = lock(&self.builds.running).take_force(&key);
            if let Err(e) = self.build_once(&key, force).await {
                tracing::warn!(package = %key, error = %e, "package build");
            }
            if !lock(&self.builds.running).finished(&key) {
                return;
            }
        }
    }

    /// Records `event` for the package at `key` if it is still at generation
    /// `generation` (else a newer request owns its status); answers whether it did.
    /// A build's end gives the package's functions new instances (new code, or
    /// none: their calls answer the failure, warm instances' too). That happens
    /// before the status is stored, so that whoever sees the status calls the
    /// new instances; a call that needs a new instance meanwhile waits for the
    /// status (`specialize` waits for this lock), so that no instance of the
    /// new generation runs the build before.
    async fn record(
        self: &Arc<Self>,
        key: &str,
        generation: u64,
        event: BuildEvent,
    ) -> Result<bool> {
        let _one = self.builds.writes.lock().await;
        let Some(mut p) = self.builds.get(key)? else {
            return Ok(false);
        };
        if p.generation != generation {
            return Ok(false);
        }
        let ends = !matches!(event, BuildEvent::Started | BuildEvent::Requested);
        let outcome = match &event {
            BuildEvent::Succeeded { .. } => Some("succeeded"),
            BuildEvent::Cached { .. } => Some("cached"),
            BuildEvent::Failed { .. } => Some("failed"),
            BuildEvent::Requested | BuildEvent::Started => None,
        };
        let ran = p.runnable().cloned();
        match p.status.apply(p.source.is_some(), event, now()) {
            Ok(status) => p.status = status,
            Err(e) => {
                tracing::debug!(package = %key, error = %e, "build event not applied");
                return Ok(false);
            }
        }
        if let Some(outcome) = outcome {
            self.metrics
                .builds
                .get_or_create(&crate::metrics::BuildLabels { outcome })
                .inc();
        }
        // Functions get new instances when their code changed (not when a
        // failed rebuild left them the last good build they run).
        if ends && (p.runnable() != ran.as_ref() || p.runnable().is_none()) {
            self.refresh_functions(&p.namespace, &p.name).await?;
        }
        self.builds.put(&p).await?;
        Ok(true)
    }

    async fn build_once(self: &Arc<Self>, key: &str, force: bool) -> Result<()> {
        let Some(p) = self.builds.get(key)? else {
            return Ok(());
        };
        let Some(source) = p.source.clone() else {
            return Ok(());
        };
        if p.status.buildstatus != BuildStatus::Pending {
            return Ok(());
        }
        let generation = p.generation;
        let env_key = crate::resources::qualified(&p.namespace, &p.environment);
        let Some(env) = self.store.get::<Environment>(Kind::Environment, &env_key)? else {
            let log = format!(
                "environment {:?} does not exist: create it, then `fusion pkg rebuild --name {}`\n",
                p.environment, p.name
            );
            self.record(key, generation, BuildEvent::Failed { log })
                .await?;
            return Ok(());
        };
        // What the environment runs: an image reference may stand for a bundled
        // runtime, whose builder then builds.
        let runs_images = self.cfg.backend.isolation().backend != "process";
        let env = env
            .resolved_on(&self.cfg.data_dir.join("images"), runs_images)
            .unwrap_or(env);
        // The command that builds it: its own, else its environment's.
        let buildcmd = p.buildcmd.as_deref().or(env.buildcmd.as_deref());
        let cache = cache_key(&source, &env, buildcmd);
        if !force {
            if let Some(built) = self.builds.cached(&cache)? {
                if self.packages.claim(&built).is_ok() {
                    let log = format!(
                        "cached: reused the earlier build of the same source, runtime and build command (cache key {cache}); `fusion pkg rebuild --name {}` builds it again\n",
                        p.name
                    );
                    self.record(key, generation, BuildEvent::Cached { built, log })
                        .await?;
                    return Ok(());
                }
            }
        }
        let _slot = self
            .builds
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        if !self.record(key, generation, BuildEvent::Started).await? {
            return Ok(());
        }
        let outcome = self.run_build(&p, &env, &source).await;
        if self.closing.load(Ordering::SeqCst) {
            // Stopped by the shutdown, not failed: left `running`, the next
            // start builds it again.
            return Ok(());
        }
        let event = match outcome {
            Ok((built, log)) => {
                let bytes =
                    serde_json::to_vec(&built).map_err(|e| Error::Internal(e.to_string()))?;
                self.builds.cache.insert(cache.as_bytes(), bytes)?;
                BuildEvent::Succeeded { built, log }
            }
            Err(log) => BuildEvent::Failed { log },
        };
        self.record(key, generation, event).await?;
        Ok(())
    }

    /// Runs one build in a fresh work directory; answers the stored deployment
    /// and the log, or the log of the failure.
    async fn run_build(
        &self,
        p: &Package,
        env: &Environment,
        source: &PackageRef,
    ) -> std::result::Result<(PackageRef, String), String> {
        let id = NEXT_BUILD.fetch_add(1, Ordering::SeqCst);
        let work = self
            .cfg
            .data_dir
            .join("builds")
            .join(format!("{}-{id}", std::process::id()));
        let result = self.run_build_in(&work, id, p, env, source).await;
        let _ = tokio::task::spawn_blocking(move || crate::sys::remove_tree(&work)).await;
        result
    }

    async fn run_build_in(
        &self,
        work: &Path,
        id: u64,
        p: &Package,
        env: &Environment,
        source: &PackageRef,
    ) -> std::result::Result<(PackageRef, String), String> {
        let (src, deploy, home) = (work.join("src"), work.join("deploy"), work.join("home"));
        let from = self
            .packages
            .path(source)
            .map_err(|e| format!("the source archive is gone: {e}\n"))?;
        {
            let (src, deploy, home) = (src.clone(), deploy.clone(), home.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                for d in [&src, &deploy, &home, &home.join("tmp")] {
                    std::fs::create_dir_all(d).map_err(|e| Error::Storage(e.to_string()))?;
                }
                crate::package::copy_tree(&from, &src)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot prepare the build: {e}\n"))?;
        }
        let plan = plan::plan(env, p.buildcmd.as_deref(), |f| src.join(f).is_file());
        let mut log = format!(
            "build of package {} (namespace {}) with environment {}: {}\n",
            p.name, p.namespace, env.name, plan.summary
        );
        let (stop_tx, stop) = tokio::sync::watch::channel(None);
        let progress = Progress::new(log.clone());
        lock(&self.builds.live).insert(p.key(), progress.clone());
        let _live = Live(&self.builds, p.key());
        let req = BuildRequest {
            id,
            env: env.clone(),
            src,
            deploy: deploy.clone(),
            home,
            script: plan.script,
            timeout: self.cfg.build_timeout,
            stop,
            progress,
        };
        // Ends with the build, also when the build is dropped unfinished.
        let watchdog = Watchdog(tokio::spawn(watch_disk(
            work.to_path_buf(),
            self.cfg.data_dir.clone(),
            self.cfg.build_disk_mb,
            stop_tx,
        )));
        let built = self.cfg.backend.build(req).await;
        drop(watchdog);
        let out = match built {
            Ok(out) => out,
            Err(e) => {
                log.push_str(&format!("the build could not run: {e}\n"));
                return Err(log);
            }
        };
        log.push_str(&out.log);
        if !log.ends_with('\n') {
            log.push('\n');
        }
        match out.exit {
            BuildExit::Succeeded => {}
            BuildExit::Failed(why) => {
                log.push_str(&format!("the build failed: it {why}\n"));
                return Err(log);
            }
            BuildExit::TimedOut(limit) => {
                log.push_str(&format!(
                    "the build did not finish within {limit:?} and was stopped with every process it started\n"
                ));
                return Err(log);
            }
            BuildExit::OutOfMemory => {
                log.push_str("the build was killed for using more memory than builds may\n");
                return Err(log);
            }
            BuildExit::Stopped(why) => {
                log.push_str(&format!(
                    "the build was stopped with every process it started: {why}\n"
                ));
                return Err(log);
            }
        }
        let made = deploy.join(crate::backend::build::DEPLOY_PKG_DIR);
        // Not followed: a link is refused by the store, with its reason.
        if std::fs::symlink_metadata(&made).is_err() {
            log.push_str(
                "the build made no deployment: nothing at $DEPLOY_PKG (a build script makes it, \
                 as Fission's do with `cp -r $SRC_PKG $DEPLOY_PKG`)\n",
            );
            return Err(log);
        }
        let packages = self.packages.clone();
        let stored = tokio::task::spawn_blocking(move || packages.put_dir(&made))
            .await
            .map_err(|e| e.to_string())?;
        match stored {
            Ok((built, links)) => {
                if links > 0 {
                    log.push_str(&format!(
                        "left out {links} symbolic links: a package holds files and directories\n"
                    ));
                }
                log.push_str(&format!(
                    "the build succeeded: deployment {}\n",
                    built.sha256
                ));
                Ok((built, log))
            }
            Err(e) => {
                log.push_str(&format!("the build's output cannot be stored: {e}\n"));
                Err(log)
            }
        }
    }

    /// Gives every function of the package a new generation, so that new calls
    /// go to instances of its new code.
    pub(crate) async fn refresh_functions(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
    ) -> Result<()> {
        for mut f in self.store.functions()? {
            if uses(&f, namespace, name) {
                f.generation += 1;
                self.store.put(Kind::Function, &f.key(), &f).await?;
                self.install_function(f);
            }
        }
        Ok(())
    }

    /// Waits until function `function`'s package `r` has code to run, at most
    /// `limit`; fails at once when its build failed.
    pub(crate) async fn wait_for_package(
        &self,
        function: &str,
        r: &NamedPackageRef,
        limit: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut changed = self.builds.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let p = self.named_package(function, r)?;
            if p.runnable().is_some() {
                return Ok(());
            }
            if p.status.buildstatus == BuildStatus::Failed {
                return Err(build_failed(function, &p));
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(Error::Timeout(format!(
                    "function {function:?}: its package {:?} is still building ({}) after {limit:?}; see `fusion pkg info --name {}`",
                    p.name, p.status.buildstatus, p.name
                )));
            }
        }
    }

    fn named_package(&self, function: &str, r: &NamedPackageRef) -> Result<Package> {
        self.builds
            .get(&key(&r.namespace, &r.name))?
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "function {function:?}: its package {:?} (namespace {}) does not exist",
                    r.name, r.namespace
                ))
            })
    }

    /// The code function `f` runs now.
    pub(crate) fn code_of(&self, f: &Function) -> Result<PackageRef> {
        match &f.package {
            crate::resources::FunctionPackage::Stored(p) => Ok(p.clone()),
            crate::resources::FunctionPackage::Named { packageref } => {
                let p = self.named_package(&f.name, packageref)?;
                match p.runnable() {
                    Some(code) => Ok(code.clone()),
                    None if p.status.buildstatus == BuildStatus::Failed => {
                        Err(build_failed(&f.name, &p))
                    }
                    None => Err(Error::Unavailable(format!(
                        "function {:?}: its package {:?} is not built yet ({})",
                        f.name, p.name, p.status.buildstatus
                    ))),
                }
            }
        }
    }

    /// Checks that a function's named package exists and is for its environment.
    pub(crate) fn check_named_package(&self, f: &Function, r: &NamedPackageRef) -> Result<()> {
        let p = self.builds.get(&key(&r.namespace, &r.name))?.ok_or_else(|| {
            Error::Conflict(format!(
                "function {:?}: package {:?} (namespace {}) does not exist; create it first (`fusion pkg create`)",
                f.name, r.name, r.namespace
            ))
        })?;
        if p.environment != f.env {
            return Err(Error::Conflict(format!(
                "function {:?} runs in environment {:?}, but package {:?} is built for environment {:?}",
                f.name, f.env, p.name, p.environment
            )));
        }
        Ok(())
    }
}

/// The error of a call to `function`, whose package `p` failed to build.
fn build_failed(function: &str, p: &Package) -> Error {
    let last = p
        .status
        .buildlog
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("the build failed"))
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    Error::BuildFailed(format!(
        "function {function:?} cannot run: the build of its package {:?} failed{last}; see `fusion pkg logs --name {}`",
        p.name, p.name
    ))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod queue_tests {
    use super::BuildQueue;

    #[test]
    fn one_builder_per_package_and_requests_meanwhile_make_one_more_build() {
        let mut q = BuildQueue::default();
        assert!(
            q.request("ns/a", false),
            "the first request starts a builder"
        );
        assert!(
            !q.request("ns/a", false),
            "not a second one for the same package"
        );
        assert!(q.request("ns/b", false), "another package has its own");
        assert!(!q.request("ns/a", true));
        assert!(!q.take_force("ns/b"));
        // a's builder finishes its build: the requests meanwhile are one more, forced.
        assert!(q.finished("ns/a"));
        assert!(q.take_force("ns/a"));
        assert!(
            !q.finished("ns/a"),
            "nothing was asked during the second build"
        );
        assert!(q.request("ns/a", false), "a builder is started again");
    }
}
