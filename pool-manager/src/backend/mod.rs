//! The seam between the pool manager and whatever runs instances. The pool, the
//! leases and the router speak only to `Backend` and `Handle`: start a generic
//! instance for an environment, reach it at an address, give it code, stop it,
//! learn when and why it ended, read its resource use. Nothing above this module
//! sees a process id or a container; a pod backend fits the same shape (starting
//! is asynchronous and may fail late, an address is not a pid, an instance may
//! vanish at any time).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::resources::{Environment, PackageRef, Runtime};

pub mod build;
pub mod connect;
pub mod container;
pub mod image;
pub mod process;

/// Where the router reaches an instance's runtime server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    /// A Unix socket only this instance's runtime listens on.
    Unix(PathBuf),
    /// A TCP port on the loopback of a network namespace only this instance has
    /// (an image's runtime, which listens where Fission's do).
    NetNs {
        ns: NetNs,
        port: u16,
    },
}

/// An instance's network namespace, held open: the namespace stays the same
/// even if the process it was found through exits and its pid is reused.
#[derive(Debug, Clone)]
pub struct NetNs {
    file: Arc<std::fs::File>,
    /// The process it was found through (for display).
    pid: u32,
    /// Identifies the namespace.
    inode: u64,
}

impl NetNs {
    /// The network namespace of process `pid`, if it is not the server's own
    /// (a router must never dial into its own namespace by mistake).
    pub fn of_pid(pid: u32) -> std::io::Result<NetNs> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        let inode = file.metadata()?.ino();
        let own = std::fs::metadata("/proc/self/ns/net")?.ino();
        if inode == own {
            return Err(std::io::Error::other(format!(
                "process {pid} is in the server's own network namespace"
            )));
        }
        Ok(NetNs {
            file: Arc::new(file),
            pid,
            inode,
        })
    }

    pub(crate) fn file(&self) -> &std::fs::File {
        &self.file
    }
}

impl PartialEq for NetNs {
    fn eq(&self, other: &NetNs) -> bool {
        self.inode == other.inode
    }
}
impl Eq for NetNs {}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::NetNs { ns, port } => write!(f, "netns:{}:127.0.0.1:{port}", ns.pid),
        }
    }
}

/// Why an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped because Fusion asked (idle, retired, deleted, timed out, shutdown).
    Stopped,
    /// Killed because it used more memory than its environment allows.
    OutOfMemory,
    /// The runtime exited by itself, with this status code, or by this signal.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The instance disappeared without an exit status (its pod or container was
    /// removed behind Fusion's back, or its backend lost track of it).
    Vanished(String),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Stopped => f.write_str("stopped"),
            Exit::OutOfMemory => f.write_str("was killed for using more memory than its limit"),
            Exit::Exited {
                code: Some(c),
                signal: _,
            } => write!(f, "exited with status {c}"),
            Exit::Exited {
                code: None,
                signal: Some(s),
            } => write!(f, "was killed by signal {s}"),
            Exit::Exited { .. } => f.write_str("exited"),
            Exit::Vanished(why) => write!(f, "vanished: {why}"),
        }
    }
}

impl Exit {
    /// The reason a metric counts this exit under.
    pub fn reason(&self) -> &'static str {
        match self {
            Exit::Stopped => "stopped",
            Exit::OutOfMemory => "out_of_memory",
            Exit::Exited { .. } => "exited",
            Exit::Vanished(_) => "vanished",
        }
    }

    /// Why an instance whose main process ended with `status` ended: `Stopped`
    /// when Fusion asked for it, else what the status says.
    pub(crate) fn of(
        stop_requested: bool,
        status: std::io::Result<std::process::ExitStatus>,
    ) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match status {
            _ if stop_requested => Exit::Stopped,
            Ok(s) => Exit::Exited {
                code: s.code(),
                signal: s.signal(),
            },
            Err(e) => Exit::Vanished(e.to_string()),
        }
    }
}

/// What an instance has used so far; `None` where the backend cannot tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Memory in use now (all processes of the instance where the backend can tell).
    pub memory_bytes: Option<u64>,
    /// CPU time used since the instance started.
    pub cpu_seconds: Option<f64>,
    /// How many of the instance's processes the kernel has killed for the
    /// instance's memory limit (a child the function survived counts too).
    pub oom_kills: Option<u64>,
}

/// The isolation a backend gives its instances, as the environment's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Isolation {
    /// `container` or `process`.
    pub backend: &'static str,
    /// One line on what is and is not enforced.
    pub summary: String,
}

/// Receives each line an instance writes: (`stdout` | `stderr` | `fusion`, line).
pub type LogSink = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// Everything a backend needs to start one generic instance.
pub struct StartRequest {
    /// Unique among the server's instances, for names and logs.
    pub id: u64,
    pub env: Environment,
    pub logs: LogSink,
    /// Turns true when the server stops: a start still waiting for its
    /// runtime gives up then and stops what it started (a runtime that never
    /// listens would hold the stop for its whole start timeout). A pod is
    /// left to start, for the next server to adopt.
    pub stopping: watch::Receiver<bool>,
}

/// A file a function's instance gets beside its code: one key of a secret or
/// configmap, at a path relative to the instance's root (`secrets/<ns>/<name>/<key>`).
/// `Debug` does not show the contents.
pub struct StagedFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
}

impl fmt::Debug for StagedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedFile")
            .field("path", &self.path)
            .field("bytes", &self.contents.len())
            .finish()
    }
}

/// Runs instances. One per server; chosen at start.
pub trait Backend: Send + Sync + 'static {
    /// What this backend enforces, for the environment's status.
    fn isolation(&self) -> Isolation;
    /// Whether instances can get secrets and configmaps as files at Fission's
    /// paths (`Handle::stage_files`); functions that list any are refused otherwise.
    fn delivers_files(&self) -> bool {
        false
    }
    /// Refuses, when it is created, an environment this backend cannot run.
    fn accepts(&self, _env: &Environment) -> Result<()> {
        Ok(())
    }
    /// Starts a generic instance for `req.env` and resolves once its runtime
    /// answers at its address, or fails with the reason (its output goes to the
    /// log sink). After that, the instance may still end at any time: its
    /// `Handle::exit` reports when and why.
    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Handle>>>;
    /// Runs one build of a package (see `build::BuildRequest`) in the same
    /// isolation instances get, and answers how it ended and its output.
    fn build(&self, _req: build::BuildRequest) -> BoxFuture<'_, Result<build::BuildOutput>> {
        Box::pin(async {
            Err(Error::Unavailable(
                "this server's backend cannot run package builds".into(),
            ))
        })
    }
    /// Whether environments' `image`s are references the backend's own nodes pull
    /// (a cluster): taken as they are, never looked up on this machine.
    fn pulls_images(&self) -> bool {
        false
    }
    /// Removes what an earlier server left behind (containers of a server that was
    /// killed). Called once before the first start, with the environments the
    /// pool is about to fill (as instances get them), so a backend whose
    /// instances can outlive a server (pods) keeps those it can adopt.
    fn cleanup_stale<'a>(&'a self, _envs: &'a [Environment]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// Removes whatever is left once the pool has stopped every instance it
    /// knows of (an instance still starting when the server stops, say).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What a function's instance is given at specialization.
#[derive(Debug)]
pub struct Staging {
    /// The package, by digest (what a backend that fetches it elsewhere names).
    pub package: PackageRef,
    /// The package on this machine: a file or an unpacked directory.
    pub path: PathBuf,
    /// Secrets' and configmaps' keys to give the instance as files.
    pub files: Vec<StagedFile>,
}

/// One started instance, as its backend sees it.
pub trait Handle: Send + Sync + 'static {
    fn address(&self) -> &Address;
    /// Gives the instance its function's code and files and answers the path the
    /// runtime loads the code from (the `filepath` of `/v2/specialize`). The
    /// default stages both on this machine (`stage_code`, `stage_files`), off the
    /// async workers; a backend whose instances run elsewhere has them fetched.
    fn stage(self: Arc<Self>, staging: Staging) -> BoxFuture<'static, Result<String>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let path = self.stage_code(&staging.path)?;
                self.stage_files(&staging.files)?;
                Ok(path)
            })
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("staging the code failed: {e}"))))
        })
    }
    /// Makes the package at `package` (a file or an unpacked directory on this
    /// machine) readable by the instance and answers the path the runtime loads
    /// it from (the `filepath` of `/v2/specialize`).
    fn stage_code(&self, package: &Path) -> Result<String>;
    /// Puts `files` read-only at their paths under the instance's root (`/secrets`,
    /// `/configs`), readable by the instance's user and no other instance.
    fn stage_files(&self, files: &[StagedFile]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        // At a call: the server's set-up, not the caller's mistake (a
        // function made on the container backend, the server now on another).
        Err(Error::Unavailable(
            "the function reads secrets or configmaps, which this server's backend cannot give an instance: the server must run the container backend".into(),
        ))
    }
    /// Asks for the instance and every process in it to stop; returns at once.
    /// `exit` reports when it has.
    fn stop(&self);
    /// At shutdown, for a generic instance: leaves it running for the next server
    /// to adopt, where the backend can (a pod), and answers whether it did; `exit`
    /// then reports `Stopped` at once. The default keeps nothing.
    fn park(&self) -> bool {
        false
    }
    /// `None` while it runs; why it ended once it has.
    fn exit(&self) -> watch::Receiver<Option<Exit>>;
    fn usage(&self) -> Usage;
    /// The host process id of the instance's runtime, where there is one (shown in
    /// the API for diagnosis; the pool never uses it).
    fn pid(&self) -> Option<u32> {
        None
    }
}

/// How the bundled runtimes are started, for any backend that runs them on this
/// machine.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Directory holding `python/server.py` and `nodejs/server.js`.
    pub runtimes_dir: PathBuf,
    /// The `fusion` executable, which serves the binary runtime.
    pub fusion_exe: PathBuf,
    pub python: String,
    pub node: String,
    /// How long a new instance may take to answer, and to load code.
    pub start_timeout: Duration,
}

impl LaunchConfig {
    /// The program and arguments that start `env`'s runtime.
    pub fn command_for(&self, env: &Environment) -> Result<(String, Vec<String>)> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        Ok(match (&env.runtime, &env.command) {
            // -S skips site's .pth hooks (tens of ms at every start); the runtime
            // adds site-packages itself before it imports the function's code.
            (Some(Runtime::Python), _) => (
                self.python.clone(),
                vec![
                    "-S".into(),
                    path(self.runtimes_dir.join("python/server.py")),
                ],
            ),
            (Some(Runtime::Nodejs), _) => (
                self.node.clone(),
                vec![path(self.runtimes_dir.join("nodejs/server.js"))],
            ),
            (Some(Runtime::Binary), _) => (
                path(self.fusion_exe.clone()),
                vec!["runtime".into(), "binary".into()],
            ),
            (None, Some(cmd)) if !cmd.is_empty() => (cmd[0].clone(), cmd[1..].to_vec()),
            _ if env.image.is_some() => {
                return Err(Error::Unavailable(format!(
                    "environment {}: images run only on the container backend",
                    env.name
                )))
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "environment {} has no runtime",
                    env.name
                )))
            }
        })
    }
}

/// Waits until `ready` answers true, polling with a short growing delay, failing
/// at once if `exit` reports the instance ended, or after `limit`.
pub(crate) async fn wait_ready<F, Fut>(
    env: &str,
    mut exit: watch::Receiver<Option<Exit>>,
    mut stopping: watch::Receiver<bool>,
    limit: Duration,
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut delay = Duration::from_micros(500);
    loop {
        if let Some(exit) = exit.borrow().clone() {
            return Err(Error::Unavailable(format!(
                "environment {env}: the runtime {exit} while starting"
            )));
        }
        if ready().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unavailable(format!(
                "environment {env}: the runtime did not listen within {limit:?}"
            )));
        }
        if *stopping.borrow() {
            return Err(Error::ShuttingDown(format!(
                "environment {env}: the server stopped while the runtime was starting"
            )));
        }
        // Wake at once on exit, or when the server stops.
        let exited = async {
            let _ = exit.wait_for(Option::is_some).await.is_ok();
        };
        let stopped = async {
            // A sender gone (no server to stop) never says so.
            let gone = stopping.wait_for(|s| *s).await.is_err();
            if gone {
                std::future::pending::<()>().await
            }
        };
        let _ = tokio::time::timeout(delay, async {
            tokio::select! {
                () = exited => {}
                () = stopped => {}
            }
        })
        .await;
        delay = (delay * 2).min(Duration::from_millis(4));
    }
}
