//! What a backend needs to run one package build, and what it answers: the
//! script and the directories (source, output, a home for tool caches), the
//! time limit, and the build's exit and output. Shared by the backends: the
//! environment a build sees and how its output is kept (the tail, bounded).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::resources::Environment;

/// One build, run once: `/bin/sh -c script` in the source directory.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Unique among the server's builds, for names.
    pub id: u64,
    /// The environment whose builder this is (its network and limits).
    pub env: Environment,
    /// The source, a copy the build may change (`SRC_PKG`).
    pub src: PathBuf,
    /// The directory the deployment goes in: the build makes `DEPLOY_PKG`,
    /// its `DEPLOY_PKG_DIR` (not there at the start, as in Fission, whose
    /// build scripts end with `cp -r $SRC_PKG $DEPLOY_PKG`).
    pub deploy: PathBuf,
    /// `HOME` for the tools' caches, with `tmp` in it for `TMPDIR`.
    pub home: PathBuf,
    pub script: String,
    /// Past this the build and every process it started are killed.
    pub timeout: Duration,
    /// Set to why when the build must stop now (it used more disk than builds
    /// may): it is then killed as at its timeout, and ends `Stopped`.
    pub stop: tokio::sync::watch::Receiver<Option<String>>,
    /// Where the build's output goes as it is written, for its package's log
    /// to show while it runs.
    pub progress: Progress,
}

/// What a running build has written so far: its last `BUILD_LOG_LIMIT` bytes
/// after a first line that says what it builds.
#[derive(Debug, Clone)]
pub struct Progress(std::sync::Arc<std::sync::Mutex<(String, Vec<u8>)>>);

impl Progress {
    pub fn new(first: String) -> Progress {
        Progress(std::sync::Arc::new(std::sync::Mutex::new((
            first,
            Vec::new(),
        ))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (String, Vec<u8>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, bytes: &[u8]) {
        let mut held = self.lock();
        let out = &mut held.1;
        out.extend_from_slice(bytes);
        if out.len() > BUILD_LOG_LIMIT {
            let over = out.len() - BUILD_LOG_LIMIT;
            out.drain(..over);
        }
    }

    /// The first line and the output so far.
    pub fn text(&self) -> String {
        let held = self.lock();
        format!("{}{}", held.0, String::from_utf8_lossy(&held.1))
    }
}

/// How a build's wait for its script ended other than by the script's exit.
pub enum Cut {
    TimedOut,
    Stopped(String),
}

/// Waits for `exited` (the script's end) at most `req.timeout`, and only
/// until `req.stop` says to stop.
pub async fn until_cut<T>(
    req: &BuildRequest,
    exited: impl std::future::Future<Output = T>,
) -> std::result::Result<T, Cut> {
    let mut stop = req.stop.clone();
    let stopped = async move {
        loop {
            if let Some(why) = stop.borrow_and_update().clone() {
                return why;
            }
            if stop.changed().await.is_err() {
                // No one can ask any more: never.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        ended = tokio::time::timeout(req.timeout, exited) => ended.map_err(|_| Cut::TimedOut),
        why = stopped => Err(Cut::Stopped(why)),
    }
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildExit {
    Succeeded,
    /// The script failed: its exit status, or the signal that killed it.
    Failed(String),
    TimedOut(Duration),
    /// Killed for using more memory than builds may.
    OutOfMemory,
    /// Killed for the reason given (it used more disk than builds may).
    Stopped(String),
}

#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub exit: BuildExit,
    /// What the build wrote (stdout and stderr), its tail when long.
    pub log: String,
}

/// `DEPLOY_PKG` within a build's deploy directory: a path that does not exist
/// yet, for the build to make.
pub const DEPLOY_PKG_DIR: &str = "pkg";

/// The most output of one build that is kept (the end, where errors are).
pub const BUILD_LOG_LIMIT: usize = 64 * 1024;
/// Memory a build may use (all its processes), in MiB: package managers need
/// more than most runtimes are given.
pub const BUILD_MEMORY_MB: u64 = 1024;
/// Processes and threads one build may have at once.
pub const BUILD_PIDS_LIMIT: i64 = 512;

/// The environment variables of a build, with the paths as the build sees them
/// and the interpreter the environment's runtime uses (`$PYTHON`, `$NODE`), so
/// that what is installed fits the runtime that will load it.
pub fn build_env(
    src: &str,
    deploy: &str,
    home: &str,
    path: &str,
    python: &str,
    node: &str,
) -> Vec<(String, String)> {
    let v = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        v("PATH", path),
        v("HOME", home),
        // On disk: a container's /tmp is a small tmpfs that counts as memory.
        v("TMPDIR", &format!("{home}/tmp")),
        v("LANG", "C.UTF-8"),
        v("SRC_PKG", src),
        v("DEPLOY_PKG", &format!("{deploy}/{DEPLOY_PKG_DIR}")),
        v("PYTHON", python),
        v("NODE", node),
        v("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        v("PIP_NO_INPUT", "1"),
        v("PIP_CACHE_DIR", &format!("{home}/.cache/pip")),
        v("npm_config_cache", &format!("{home}/.npm")),
        v("npm_config_update_notifier", "false"),
        v("npm_config_fund", "false"),
        v("npm_config_audit", "false"),
    ]
}

/// Reads a stream to its end, keeping at most the last `limit` bytes (and
/// passing each on to `progress`, when given, as it comes).
pub async fn read_tail<R: AsyncRead + Unpin>(
    stream: Option<R>,
    limit: usize,
    progress: Option<Progress>,
) -> (Vec<u8>, bool) {
    let Some(mut stream) = stream else {
        return (Vec::new(), false);
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(p) = &progress {
                    p.push(&buf[..n]);
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > limit {
                    let over = kept.len() - limit;
                    kept.drain(..over);
                    cut = true;
                }
            }
        }
    }
    (kept, cut)
}

/// The log of a build from its two streams (the script sends stderr to
/// stdout; the second stream is the launcher's own, a container runtime's).
pub fn join_log(out: (Vec<u8>, bool), err: (Vec<u8>, bool)) -> String {
    let mut log = String::new();
    if out.1 {
        log.push_str("[... the start of the output is cut ...]\n");
    }
    log.push_str(&String::from_utf8_lossy(&out.0));
    if !err.0.is_empty() {
        if !log.is_empty() && !log.ends_with('\n') {
            log.push('\n');
        }
        log.push_str(&String::from_utf8_lossy(&err.0));
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_tail_of_a_long_output_is_kept() {
        let data: Vec<u8> = (0..100u8).collect();
        let (kept, cut) = read_tail(Some(&data[..]), 10, None).await;
        assert!(cut);
        assert_eq!(kept, (90..100u8).collect::<Vec<_>>());
        let (kept, cut) = read_tail(Some(&b"short"[..]), 10, None).await;
        assert!(!cut);
        assert_eq!(kept, b"short");
        let log = join_log((b"tail".to_vec(), true), (b"runc: oops".to_vec(), false));
        assert!(log.starts_with("[... the start"), "{log}");
        assert!(log.ends_with("tail\nrunc: oops"), "{log}");
    }
}
