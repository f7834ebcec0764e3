//! Instance output kept as the function's logs: each line an instance writes to
//! stdout or stderr is appended, with a timestamp and the instance id, to
//! `logs/<function>.log` (or `logs/env-<environment>.log` while it is generic),
//! and broadcast to anyone following that log.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::broadcast;

pub struct Logs {
    dir: PathBuf,
    followers: Mutex<HashMap<String, broadcast::Sender<String>>>,
}

impl Logs {
    pub fn new(dir: PathBuf) -> std::io::Result<Logs> {
        std::fs::create_dir_all(&dir)?;
        Ok(Logs {
            dir,
            followers: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self, key: &str) -> PathBuf {
        // A function of another namespace has the key `namespace/name`: one file
        // per key, named without the slash (names hold no `@`).
        self.dir.join(format!("{}.log", key.replace('/', "@")))
    }

    pub fn append(&self, key: &str, instance: u64, stream: &str, line: &str) {
        let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let entry = format!("{stamp} [{instance} {stream}] {line}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(key))
            .and_then(|mut f| f.write_all(entry.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(error = %e, key, "cannot write function log");
        }
        if let Some(tx) = lock(&self.followers).get(key) {
            let _ = tx.send(entry);
        }
    }

    /// Subscribes to new lines of a log; subscribe before reading the file so no
    /// line falls between the two.
    pub fn follow(&self, key: &str) -> broadcast::Receiver<String> {
        let mut followers = lock(&self.followers);
        followers
            .entry(key.to_string())
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
