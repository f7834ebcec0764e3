//! The `process` backend: each instance is a child process of the server,
//! listening on a Unix socket in the server's instance directory (the bundled
//! runtimes) or on a free loopback port (an environment's own `command`, which
//! may know nothing of `RUNTIME_SOCKET`). It is the fallback where no OCI
//! runtime or namespaces are available, and it isolates nothing: the runtime
//! runs as the server's user with the server's filesystem and network. What it
//! does enforce: a parent-death signal and a stdin pipe so instances die with
//! the server, a process group so that stopping an instance stops its children
//! (not those that start a session of their own), and an address-space limit
//! per process from `memory_mb`. Every process it starts carries its server's
//! mark in its environment (`OWNER_VAR`), which its children inherit: what a
//! server killed with SIGKILL left running (children of its instances and
//! builds, which no parent-death signal reaches) is stopped by the next start
//! on the same data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{watch, Notify};

use super::build::{build_env, join_log, read_tail, BuildExit, BuildOutput, BuildRequest};
use super::connect::InstanceConnector;
use super::{Address, Backend, Exit, Handle, Isolation, LaunchConfig, StartRequest, Usage};
use crate::error::{Error, Result};
use crate::resources::Environment;

/// The variable that marks a process as started by this backend for one data
/// directory (its value: the instance socket directory's path).
const OWNER_VAR: &str = "FUSION_PROCESS_OWNER";

pub struct ProcessBackend {
    launch: LaunchConfig,
    /// This server's mark (`OWNER_VAR`'s value).
    owner: String,
    /// Where the bundled runtimes' sockets are made: readable by the server's
    /// user alone; `None` when it could not be made (instances then use TCP).
    sockets: Option<PathBuf>,
}

impl ProcessBackend {
    /// A backend whose instances' sockets live in `sockets` (made 0700, emptied
    /// of what an earlier server left). A loopback Unix socket costs the router
    /// and the instance less per request than loopback TCP, and no process of
    /// another user can reach it.
    pub fn new(launch: LaunchConfig, sockets: PathBuf) -> ProcessBackend {
        let owner = sockets.to_string_lossy().into_owned();
        let sockets = match prepare_socket_dir(&sockets) {
            Ok(()) => Some(sockets),
            Err(e) => {
                tracing::warn!(
                    "cannot prepare {}: {e}; instances listen on loopback TCP ports",
                    sockets.display()
                );
                None
            }
        };
        ProcessBackend {
            launch,
            owner,
            sockets,
        }
    }

    /// The socket an instance of `env` listens on, when it is one of the bundled
    /// runtimes and the path fits a socket address.
    fn socket_for(&self, env: &Environment, id: u64) -> Option<PathBuf> {
        let dir = self.sockets.as_ref()?;
        if env.runtime.is_none() || env.command.is_some() {
            return None;
        }
        let path = dir.join(format!("{id}.sock"));
        if path.as_os_str().len() >= SOCKET_PATH_MAX {
            tracing::warn!(
                "{} is too long for a socket address: the instance listens on a loopback port",
                path.display()
            );
            return None;
        }
        // Made again if something removed it since the start.
        if let Err(e) = private_dir(dir) {
            tracing::warn!(
                "cannot make {}: {e}; the instance listens on a loopback port",
                dir.display()
            );
            return None;
        }
        Some(path)
    }
}

/// The longest path a Unix socket address holds (`sun_path`, with its NUL).
const SOCKET_PATH_MAX: usize = 108;

/// `dir`, made if missing, readable by the server's user alone.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes the socket directory, private to the server's user, without the
/// sockets of instances that a killed server left behind, and checks that a
/// socket can be made there (not on every filesystem, nor past the length of a
/// socket address).
fn prepare_socket_dir(dir: &Path) -> std::io::Result<()> {
    private_dir(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sock") {
            std::fs::remove_file(&path)?;
        }
    }
    let probe = dir.join("probe.sock");
    drop(std::os::unix::net::UnixListener::bind(&probe)?);
    std::fs::remove_file(&probe)
}

struct ProcessHandle {
    address: Address,
    pid: Option<u32>,
    stop_requested: AtomicBool,
    kill: Notify,
    exit: watch::Receiver<Option<Exit>>,
}

impl Backend for ProcessBackend {
    fn isolation(&self) -> Isolation {
        Isolation {
            backend: "process",
            summary: "none: instances run as child processes with the server's user, files and network; only an address-space limit per process".into(),
        }
    }

    fn accepts(&self, env: &Environment) -> Result<()> {
        if env.image.is_some() {
            return Err(Error::Invalid(format!(
                "environment {}: images run only on the container backend, and this server runs the process backend (see `fusion env get`: status.isolation)",
                env.name
            )));
        }
        let floor = env.address_space_floor_mb();
        match env.memory_mb {
            Some(mb) if mb < floor => Err(Error::Invalid(format!(
                "environment {}: memory_mb {mb} is below {floor}, the least this runtime needs on the process backend, where the limit is on each process's address space",
                env.name
            ))),
            _ => Ok(()),
        }
    }

    fn build(&self, req: BuildRequest) -> BoxFuture<'_, Result<BuildOutput>> {
        Box::pin(run_build(&self.launch, &self.owner, req))
    }

    fn cleanup_stale<'a>(&'a self, _envs: &'a [Environment]) -> BoxFuture<'a, ()> {
        Box::pin(stop_stale(Path::new(&self.owner)))
    }

    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Handle>>> {
        Box::pin(async move {
            let socket = self.socket_for(&req.env, req.id);
            let handle = spawn(&self.launch, &self.owner, &req, socket)?;
            let exit = handle.exit.clone();
            let address = handle.address.clone();
            let handle: Arc<dyn Handle> = handle;
            let stopping = req.stopping.clone();
            let limit = self.launch.start_timeout;
            let ready = super::wait_ready(&req.env.name, exit, stopping, limit, || {
                let address = address.clone();
                async move { InstanceConnector::dial(&address).await.is_ok() }
            })
            .await;
            if let Err(e) = ready {
                handle.stop();
                return Err(e);
            }
            Ok(handle)
        })
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Internal(format!("no free port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?
        .port())
}

fn spawn(
    launch: &LaunchConfig,
    owner: &str,
    req: &StartRequest,
    socket: Option<PathBuf>,
) -> Result<Arc<ProcessHandle>> {
    let env = &req.env;
    let (program, args) = launch.command_for(env)?;
    let mut cmd = tokio::process::Command::new(&program);
    // None of the server's environment (its settings, its credentials) is passed on.
    cmd.args(&args).env_clear();
    for keep in ["PATH", "HOME", "LANG", "TZ"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let address = match &socket {
        Some(path) => {
            cmd.env("RUNTIME_SOCKET", path);
            Address::Unix(path.clone())
        }
        None => {
            let port = free_port()?;
            cmd.env("RUNTIME_PORT", port.to_string())
                .env("RUNTIME_HOST", "127.0.0.1");
            Address::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
        }
    };
    cmd.env(OWNER_VAR, owner)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("FUSION_INSTANCE_ID", req.id.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::sys::harden_child(&mut cmd, env.memory_mb);
    // Its own process group, so that stopping it stops its children too.
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        Error::Unavailable(format!(
            "environment {}: cannot start {program:?}: {e}",
            env.name
        ))
    })?;
    let (exit_tx, exit_rx) = watch::channel(None);
    let handle = Arc::new(ProcessHandle {
        address,
        pid: child.id(),
        stop_requested: AtomicBool::new(false),
        kill: Notify::new(),
        exit: exit_rx,
    });
    forward_output(child.stdout.take(), "stdout", &req.logs);
    forward_output(child.stderr.take(), "stderr", &req.logs);

    // The monitor owns the child and its stdin: the runtime watches stdin for EOF,
    // so if the server dies the pipe closes and the runtime exits by itself.
    let stdin = child.stdin.take();
    let monitor = handle.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s,
            _ = monitor.kill.notified() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        // Whatever the runtime started and left in its group goes with it
        // (a process that made itself a session of its own escapes this).
        if let Some(pid) = monitor.pid {
            crate::sys::kill_group(pid);
        }
        drop(stdin);
        if let Some(path) = socket {
            let _ = std::fs::remove_file(path);
        }
        let exit = Exit::of(monitor.stop_requested.load(Ordering::SeqCst), status);
        let _ = exit_tx.send(Some(exit));
    });
    Ok(handle)
}

/// A build as a child process in its own process group, with the same scrubbed
/// environment as instances; on timeout the whole group is killed.
async fn run_build(launch: &LaunchConfig, owner: &str, req: BuildRequest) -> Result<BuildOutput> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let host_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&req.script)
        .env_clear()
        .envs(build_env(
            &path(&req.src),
            &path(&req.deploy),
            &path(&req.home),
            &host_path,
            &launch.python,
            &launch.node,
        ))
        .env(OWNER_VAR, owner)
        .current_dir(&req.src)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::sys::harden_child(&mut cmd, None);
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Unavailable(format!("cannot start a build: {e}")))?;
    // Whatever the build started goes with it, on every outcome, also when the
    // build is dropped unfinished (the server stops).
    let group = KillGroupOnDrop(child.id());
    let out = tokio::spawn(read_tail(
        child.stdout.take(),
        super::build::BUILD_LOG_LIMIT,
        Some(req.progress.clone()),
    ));
    let err = tokio::spawn(read_tail(
        child.stderr.take(),
        super::build::BUILD_LOG_LIMIT,
        None,
    ));
    let status = super::build::until_cut(&req, child.wait()).await;
    drop(group);
    let exit = match status {
        Err(cut) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            match cut {
                super::build::Cut::TimedOut => BuildExit::TimedOut(req.timeout),
                super::build::Cut::Stopped(why) => BuildExit::Stopped(why),
            }
        }
        Ok(Ok(s)) if s.success() => BuildExit::Succeeded,
        Ok(Ok(s)) => BuildExit::Failed(super::Exit::of(false, Ok(s)).to_string()),
        Ok(Err(e)) => BuildExit::Failed(e.to_string()),
    };
    let out = out.await.unwrap_or_default();
    let err = err.await.unwrap_or_default();
    Ok(BuildOutput {
        exit,
        log: join_log(out, err),
    })
}

/// Stops the processes that instances and builds of a process backend with
/// its sockets in `sockets` left running when their server was killed. Each
/// start calls it, whichever backend the server now runs: one that comes
/// back on the container backend still stops what it left as processes.
pub async fn stop_stale(sockets: &Path) {
    let owner = sockets.to_string_lossy().into_owned();
    let stopped = tokio::task::spawn_blocking(move || stop_marked(&owner))
        .await
        .unwrap_or(0);
    if stopped > 0 {
        tracing::warn!(
            "stopped {stopped} process(es) that instances or builds of a server killed before on this data directory left running"
        );
    }
}

/// Sends SIGKILL to every process (but this one) whose environment carries
/// `OWNER_VAR=owner`; answers how many.
fn stop_marked(owner: &str) -> usize {
    let mark = format!("{OWNER_VAR}={owner}");
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut stopped = 0;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
            crate::sys::kill_pid(pid);
            stopped += 1;
        }
    }
    stopped
}

/// Kills the process group of this leader when dropped.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            crate::sys::kill_group(pid);
        }
    }
}

/// Longest line of an instance's output kept: the rest of a longer line is
/// dropped, and the line says so. Output without newlines would otherwise
/// be held whole in the server's memory.
pub(crate) const MAX_LOG_LINE: usize = 16 * 1024;

/// Sends each line of a child's output stream to the log sink, each at most
/// `MAX_LOG_LINE` bytes.
pub(crate) fn forward_output<R>(stream: Option<R>, name: &'static str, logs: &super::LogSink)
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    let Some(stream) = stream else { return };
    let logs = logs.clone();
    tokio::spawn(async move {
        let mut lines = BoundedLines::new(BufReader::new(stream));
        while let Some(line) = lines.next().await {
            logs(name, &line);
        }
    });
}

/// How long a line without its newline waits for the rest (see
/// `BoundedLines::next`).
const PARTIAL_LINE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The lines of a stream, each cut at `MAX_LOG_LINE` bytes.
struct BoundedLines<R> {
    reader: R,
    line: Vec<u8>,
    /// Bytes of the current line dropped past the limit.
    dropped: usize,
}

impl<R: tokio::io::AsyncBufRead + Unpin> BoundedLines<R> {
    fn new(reader: R) -> Self {
        BoundedLines {
            reader,
            line: Vec::new(),
            dropped: 0,
        }
    }

    /// The next line, without its end; `None` at the end of the stream. A
    /// line begun and not ended for `PARTIAL_LINE_WAIT` is a line already: a
    /// prompt or a progress report printed without a newline reaches the log
    /// while the instance runs, not when it ends.
    async fn next(&mut self) -> Option<String> {
        loop {
            let read = self.reader.fill_buf();
            let buf = if self.line.is_empty() && self.dropped == 0 {
                read.await
            } else {
                // fill_buf is cancel safe: a timeout loses no byte.
                match tokio::time::timeout(PARTIAL_LINE_WAIT, read).await {
                    Ok(read) => read,
                    Err(_) => return Some(self.take()),
                }
            };
            let buf = buf.unwrap_or_default();
            if buf.is_empty() {
                // The end of the stream: a last line without a newline.
                return (!self.line.is_empty() || self.dropped > 0).then(|| self.take());
            }
            let end = buf.iter().position(|b| *b == b'\n');
            let part = &buf[..end.unwrap_or(buf.len())];
            let room = MAX_LOG_LINE.saturating_sub(self.line.len()).min(part.len());
            self.line.extend_from_slice(&part[..room]);
            self.dropped += part.len() - room;
            let used = part.len() + usize::from(end.is_some());
            self.reader.consume(used);
            if end.is_some() {
                return Some(self.take());
            }
        }
    }

    fn take(&mut self) -> String {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!(
                " [... {} more bytes of this line dropped: lines are kept up to {MAX_LOG_LINE} bytes]",
                self.dropped
            ));
        }
        self.line.clear();
        self.dropped = 0;
        text
    }
}

impl Handle for ProcessHandle {
    fn address(&self) -> &Address {
        &self.address
    }

    fn stage_code(&self, package: &Path) -> Result<String> {
        // The runtime shares the server's filesystem: it reads the package in place.
        Ok(package.to_string_lossy().into_owned())
    }

    fn stop(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }

    fn exit(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    fn usage(&self) -> Usage {
        match self.pid {
            Some(pid) if self.exit.borrow().is_none() => proc_usage(pid),
            _ => Usage::default(),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }
}

/// Resident memory and CPU time of one process, from /proc.
fn proc_usage(pid: u32) -> Usage {
    let memory_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / USER_HZ)
        });
    Usage {
        memory_bytes,
        cpu_seconds,
        // A process's limit is its address space: an allocation fails, no kill.
        oom_kills: None,
    }
}

/// Clock ticks per second in /proc's CPU times: 100 on every Linux architecture
/// Fusion runs on.
const USER_HZ: f64 = 100.0;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn output_lines_are_cut_at_the_limit_and_say_how_much_went() {
        let long = "y".repeat(MAX_LOG_LINE + 5000);
        let input = format!("short\r\n{long}\nnext\nno newline at the end");
        let mut lines = BoundedLines::new(BufReader::with_capacity(1000, input.as_bytes()));
        assert_eq!(lines.next().await.as_deref(), Some("short"));
        let cut = lines.next().await.unwrap();
        assert!(cut.starts_with(&"y".repeat(MAX_LOG_LINE)), "{}", cut.len());
        assert!(
            cut.ends_with(
                "[... 5000 more bytes of this line dropped: lines are kept up to 16384 bytes]"
            ),
            "{}",
            &cut[MAX_LOG_LINE..]
        );
        assert_eq!(lines.next().await.as_deref(), Some("next"));
        assert_eq!(lines.next().await.as_deref(), Some("no newline at the end"));
        assert_eq!(lines.next().await, None);
    }

    #[tokio::test]
    async fn a_line_without_its_newline_is_logged_while_the_stream_stays_open() {
        use tokio::io::AsyncWriteExt;
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut lines = BoundedLines::new(BufReader::new(reader));
        writer.write_all(b"progress: 50%").await.unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next());
        assert_eq!(next.await.unwrap().as_deref(), Some("progress: 50%"));
        writer.write_all(b" done\nlast").await.unwrap();
        drop(writer);
        assert_eq!(lines.next().await.as_deref(), Some(" done"));
        assert_eq!(lines.next().await.as_deref(), Some("last"));
        assert_eq!(lines.next().await, None);
    }

    /// A runtime that never listens held a server's stop for its whole start
    /// timeout: the start gives up when the server stops, and the runtime's
    /// process goes with it.
    #[tokio::test]
    async fn a_start_gives_up_when_the_server_stops_and_its_runtime_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let launch = LaunchConfig {
            runtimes_dir: tmp.path().into(),
            fusion_exe: "/bin/false".into(),
            python: "python3".into(),
            node: "node".into(),
            start_timeout: std::time::Duration::from_secs(600),
        };
        let backend = Arc::new(ProcessBackend::new(launch, tmp.path().join("s")));
        let pid_file = tmp.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 600", pid_file.display());
        let env: Environment = serde_json::from_value(serde_json::json!({
            "name": "silent",
            "command": ["sh", "-c", script],
        }))
        .unwrap();
        let (stop, stopping) = watch::channel(false);
        let start = tokio::spawn({
            let backend = backend.clone();
            async move {
                let logs: super::super::LogSink = Arc::new(|_, _| {});
                let req = StartRequest {
                    id: 1,
                    env,
                    logs,
                    stopping,
                };
                backend.start(req).await.map(drop)
            }
        });
        let pid = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                {
                    return pid;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the runtime started");
        stop.send_replace(true);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), start).await;
        let result = ended.expect("the start gave up").unwrap();
        assert!(matches!(result, Err(Error::ShuttingDown(_))), "{result:?}");
        // Gone, not left running (reaped by its monitor: no zombie either).
        let gone = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        gone.await.expect("the runtime's process ended");
    }

    #[test]
    fn the_socket_dir_is_private_and_emptied_of_old_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("instances");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let old = dir.join("7.sock");
        drop(std::os::unix::net::UnixListener::bind(&old).unwrap());
        prepare_socket_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_dir_too_deep_for_a_socket_address_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d".repeat(120));
        assert!(prepare_socket_dir(&dir).is_err());
    }
}
