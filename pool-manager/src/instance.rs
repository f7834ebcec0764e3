//! One runtime process on this machine (the local backend): spawned with a free
//! loopback port, watched until it exits, its output kept as logs. The pool
//! manager decides what an instance does; this module only starts, specializes and
//! stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};
use crate::logs::Logs;
use crate::resources::{Environment, Runtime};

/// Which function (and which generation of it) a specialized instance serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub function: String,
    pub generation: u64,
}

pub struct Instance {
    pub id: u64,
    pub env: String,
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once for every request's URI.
    pub authority: http::uri::Authority,
    pub pid: u32,
    pub(crate) active: AtomicUsize,
    pub(crate) last_used: Mutex<Instant>,
    pub(crate) owner: Mutex<Option<Owner>>,
    /// No new leases; stopped once its last lease is released.
    pub(crate) retiring: AtomicBool,
    kill: Notify,
    exited: watch::Receiver<bool>,
}

impl Instance {
    pub fn owner(&self) -> Option<Owner> {
        lock(&self.owner).clone()
    }
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
    pub fn is_exited(&self) -> bool {
        *self.exited.borrow()
    }
    pub fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }
    pub(crate) fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }
    /// Asks the monitor to stop the process; returns at once.
    pub fn stop(&self) {
        self.retiring.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }
    /// Waits until the process has exited.
    pub async fn wait_exited(&self) {
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|e| *e).await;
    }
    fn log_key(&self) -> String {
        match self.owner() {
            Some(o) => o.function,
            None => format!("env-{}", self.env),
        }
    }
}

/// Where the bundled runtimes are and how to start them.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Directory holding `python/server.py` and `nodejs/server.js`.
    pub runtimes_dir: PathBuf,
    /// The `fusion` executable, which serves the binary runtime.
    pub fusion_exe: PathBuf,
    pub python: String,
    pub node: String,
    /// How long a new process may take to answer its health check.
    pub start_timeout: Duration,
}

fn command_for(env: &Environment, cfg: &LaunchConfig) -> Result<(String, Vec<String>)> {
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    Ok(match (&env.runtime, &env.command) {
        // -S skips site's .pth hooks (tens of ms at every start); the runtime adds
        // site-packages itself before it imports the function's code.
        (Some(Runtime::Python), _) => (
            cfg.python.clone(),
            vec!["-S".into(), path(cfg.runtimes_dir.join("python/server.py"))],
        ),
        (Some(Runtime::Nodejs), _) => (
            cfg.node.clone(),
            vec![path(cfg.runtimes_dir.join("nodejs/server.js"))],
        ),
        (Some(Runtime::Binary), _) => (
            path(cfg.fusion_exe.clone()),
            vec!["runtime".into(), "binary".into()],
        ),
        (None, Some(cmd)) if !cmd.is_empty() => (cmd[0].clone(), cmd[1..].to_vec()),
        _ => {
            return Err(Error::Invalid(format!(
                "environment {} has no runtime",
                env.name
            )))
        }
    })
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Internal(format!("no free port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?
        .port())
}

/// Starts one runtime process for `env` and returns once it answers its health check.
/// `on_exit` runs (once) when the process has exited, whatever the reason.
pub async fn spawn(
    id: u64,
    env: &Environment,
    cfg: &LaunchConfig,
    logs: Arc<Logs>,
    on_exit: impl FnOnce(Arc<Instance>) + Send + 'static,
) -> Result<Arc<Instance>> {
    let (program, args) = command_for(env, cfg)?;
    let port = free_port()?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .env("RUNTIME_PORT", port.to_string())
        .env("RUNTIME_HOST", "127.0.0.1")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("FUSION_INSTANCE_ID", id.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::sys::harden_child(&mut cmd, env.memory_mb);
    let mut child = cmd.spawn().map_err(|e| {
        Error::Unavailable(format!(
            "environment {}: cannot start {program:?}: {e}",
            env.name
        ))
    })?;
    let pid = child.id().unwrap_or(0);
    let (exited_tx, exited_rx) = watch::channel(false);
    let instance = Arc::new(Instance {
        id,
        env: env.name.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        authority: http::uri::Authority::try_from(format!("127.0.0.1:{port}"))
            .map_err(|e| Error::Internal(e.to_string()))?,
        pid,
        active: AtomicUsize::new(0),
        last_used: Mutex::new(Instant::now()),
        owner: Mutex::new(None),
        retiring: AtomicBool::new(false),
        kill: Notify::new(),
        exited: exited_rx,
    });

    for (stream, name) in [
        (child.stdout.take().map(boxed_reader), "stdout"),
        (child.stderr.take().map(boxed_reader), "stderr"),
    ] {
        let Some(stream) = stream else { continue };
        let inst = instance.clone();
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                logs.append(&inst.log_key(), inst.id, name, &line);
            }
        });
    }

    // The monitor owns the child and its stdin: the runtime watches stdin for EOF,
    // so if this process dies the pipe closes and the runtime exits by itself.
    let stdin = child.stdin.take();
    let monitor = instance.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s,
            _ = monitor.kill.notified() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        drop(stdin);
        monitor.retiring.store(true, Ordering::SeqCst);
        let _ = exited_tx.send(true);
        tracing::debug!(instance = monitor.id, status = ?status.ok(), "instance exited");
        on_exit(monitor);
    });

    if let Err(e) = wait_listening(&instance, cfg.start_timeout).await {
        instance.stop();
        let key = instance.log_key();
        logs.append(&key, id, "fusion", &e.to_string());
        return Err(Error::Unavailable(format!(
            "{e} (its output is in {})",
            logs.path(&key).display()
        )));
    }
    Ok(instance)
}

fn boxed_reader<R: tokio::io::AsyncRead + Send + Unpin + 'static>(
    r: R,
) -> Box<dyn tokio::io::AsyncRead + Send + Unpin> {
    Box::new(r)
}

/// Waits until the runtime accepts connections (it binds its port as its first
/// act), failing at once if the process exits first.
async fn wait_listening(instance: &Instance, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut delay = Duration::from_micros(500);
    loop {
        if instance.is_exited() {
            return Err(Error::Unavailable(format!(
                "environment {}: the runtime exited while starting",
                instance.env
            )));
        }
        if tokio::net::TcpStream::connect(instance.addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Unavailable(format!(
                "environment {}: the runtime did not listen within {:?}",
                instance.env, limit
            )));
        }
        let mut exited = instance.exited.clone();
        // Poll the port with a short, growing delay, but wake at once on exit.
        let _ = tokio::time::timeout(delay, exited.wait_for(|e| *e)).await;
        delay = (delay * 2).min(Duration::from_millis(4));
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
