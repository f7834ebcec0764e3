//! The `fusion server` under test: started as a child on free loopback ports in a
//! temporary data directory, and always stopped (SIGTERM, then a bounded wait,
//! then SIGKILL) and cleaned up when the guard is dropped, also on errors and
//! panics, so a benchmark run never leaves processes or files behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Server {
    child: Option<Child>,
    pub router: String,
    pub api: String,
    /// The API token, read from the data directory once the server listens.
    pub token: String,
    data: PathBuf,
    // Dropped after the child is stopped (Drop below runs first).
    _tmp: tempfile::TempDir,
}

impl Server {
    /// Starts the server with `envs` added to its environment (e.g.
    /// `FUSION_BACKEND`) and `extra` added to its arguments (e.g.
    /// `--store-cache-mb 64`), and waits for its listening line, after `prepare`
    /// has had the chance to fill its (not yet existing) data directory, e.g.
    /// with a copy of a seeded store.
    pub fn start_with(
        fusion: &Path,
        envs: &[(&str, &str)],
        extra: &[String],
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Server> {
        let tmp = tempfile::Builder::new()
            .prefix("fusion-bench-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let data = tmp.path().join("data");
        prepare(&data)?;
        let mut child = Command::new(fusion)
            .arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--router-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("FUSION_LOG", "warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", fusion.display()))?;

        // Keep draining both pipes for the server's whole life so it never blocks
        // on a full pipe; the first stdout line (the listening line) is handed over.
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match tx.take() {
                    Some(t) => {
                        let _ = t.send(line);
                    }
                    None => eprintln!("  [fusion stdout] {line}"),
                }
            }
        });
        let stderr = child.stderr.take().context("no stderr pipe")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  [fusion] {line}");
            }
        });

        let mut server = Server {
            child: Some(child),
            router: String::new(),
            api: String::new(),
            token: String::new(),
            data,
            _tmp: tmp,
        };
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let status = server
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                bail!(
                    "fusion server did not print its listening line within 30 s (exit status: {status:?}; see its output above)"
                );
            }
        };
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        match (field("router="), field("api=")) {
            (Some(r), Some(a)) => {
                server.router = r;
                server.api = a;
            }
            _ => bail!("unexpected first line from fusion server: {line:?}"),
        }
        let token_file = server.data.join("token");
        server.token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read the API token {}", token_file.display()))?
            .trim()
            .to_string();
        Ok(server)
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's data directory (the bundled runtimes are under `runtimes/`).
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// Stops the server: SIGTERM (graceful: it stops every instance), then SIGKILL
    /// if it has not exited within `grace`. Idempotent.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        // `kill` keeps this crate free of unsafe code (the workspace denies it).
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("fusion server did not stop within {grace:?} of SIGTERM; killed it")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(15)) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// CPU time (user + system, all threads) a process has used so far, in clock
/// ticks; `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux in practice).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Whether a process is still running (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// The OCI containers `runc list` shows whose bundle lies under `data_dir` (in
/// any state: a stopped one the server did not delete is left behind too), as
/// `<id> (<status>)`; empty when runc is not installed. The container backend
/// keeps every bundle under the server's data directory.
pub fn runc_leftovers(data_dir: &Path) -> Result<Vec<String>> {
    let canonical = data_dir.canonicalize().ok();
    let out = match Command::new("runc")
        .args(["list", "--format", "json"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("cannot run `runc list`"),
    };
    if !out.status.success() {
        bail!(
            "`runc list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // No containers at all prints `null`.
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("`runc list` did not answer JSON")?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["bundle"].as_str().map(Path::new).is_some_and(|b| {
                b.starts_with(data_dir) || canonical.as_ref().is_some_and(|c| b.starts_with(c))
            })
        })
        .map(|c| {
            format!(
                "{} ({})",
                c["id"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?")
            )
        })
        .collect())
}
