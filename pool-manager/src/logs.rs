//! Instance output kept as the function's logs: each line an instance writes to
//! stdout or stderr is appended, with a timestamp and the instance id, to
//! `logs/<function>.log` (or `logs/env.<environment>.log` while it is generic),
//! and broadcast to anyone following that log. A log past `MAX_LOG_BYTES` is
//! moved to `<function>.log.1` (replacing the one before) and begun anew, so a
//! function keeps at most twice that; a deleted function's logs go with it.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// Size past which a log is rotated (see the module's doc).
pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

pub struct Logs {
    dir: PathBuf,
    followers: Mutex<HashMap<String, broadcast::Sender<String>>>,
    /// Held while a log is rotated, so that two writers do not both move it.
    rotating: Mutex<()>,
    /// Deleted functions' keys: what their last instances still print as they
    /// stop is not written (it would make the log again, for a function made
    /// later under the name). A function made again takes its key back.
    gone: Mutex<std::collections::HashSet<String>>,
    /// Why follows end at once, once `end_follows` was called.
    follows_ended: Mutex<Option<String>>,
}

impl Logs {
    pub fn new(dir: PathBuf) -> std::io::Result<Logs> {
        std::fs::create_dir_all(&dir)?;
        Ok(Logs {
            dir,
            followers: Mutex::new(HashMap::new()),
            rotating: Mutex::new(()),
            gone: Mutex::default(),
            follows_ended: Mutex::default(),
        })
    }

    pub fn path(&self, key: &str) -> PathBuf {
        // A function of another namespace has the key `namespace/name`: one file
        // per key, named without the slash (names hold no `@`).
        self.dir.join(format!("{}.log", key.replace('/', "@")))
    }

    /// Where a log goes when it is rotated.
    fn rotated(&self, key: &str) -> PathBuf {
        let mut p = self.path(key).into_os_string();
        p.push(".1");
        PathBuf::from(p)
    }

    pub fn append(&self, key: &str, instance: u64, stream: &str, line: &str) {
        if lock(&self.gone).contains(key) {
            return;
        }
        let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let entry = format!("{stamp} [{instance} {stream}] {line}\n");
        if let Err(e) = self.write(key, entry.as_bytes()) {
            tracing::warn!(error = %e, key, "cannot write function log");
        }
        if let Some(tx) = lock(&self.followers).get(key) {
            let _ = tx.send(entry);
        }
    }

    fn write(&self, key: &str, entry: &[u8]) -> std::io::Result<()> {
        let path = self.path(key);
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        };
        let mut file = open()?;
        if file.metadata()?.len() + entry.len() as u64 > MAX_LOG_BYTES {
            let _one = lock(&self.rotating);
            // Another writer may have rotated it meanwhile.
            if std::fs::metadata(&path).map_or(0, |m| m.len()) + entry.len() as u64 > MAX_LOG_BYTES
            {
                std::fs::rename(&path, self.rotated(key))?;
            }
            file = open()?;
        }
        file.write_all(entry)
    }

    /// What a log holds: its rotated part, then the current one.
    pub async fn read(&self, key: &str) -> Vec<u8> {
        let mut all = tokio::fs::read(self.rotated(key)).await.unwrap_or_default();
        all.extend(tokio::fs::read(self.path(key)).await.unwrap_or_default());
        all
    }

    /// A function (made again) under `key` writes its log.
    pub fn reopen(&self, key: &str) {
        lock(&self.gone).remove(key);
    }

    /// Deletes a log (a deleted function's); its followers get a last line
    /// that says so, and their streams end.
    pub fn remove(&self, key: &str) {
        lock(&self.gone).insert(key.to_string());
        if let Some(tx) = lock(&self.followers).remove(key) {
            let _ = tx.send(fusion_line("the function was deleted"));
        }
        for path in [self.path(key), self.rotated(key)] {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, path = %path.display(), "cannot delete a log");
                }
            }
        }
    }

    /// Ends every follower's stream with a last line that says why (the
    /// server is stopping: a follower would hold its stop for the whole
    /// grace).
    pub fn end_follows(&self, why: &str) {
        let line = fusion_line(why);
        // Under the followers' lock: no follow starts between the two.
        let mut followers = lock(&self.followers);
        *lock(&self.follows_ended) = Some(line.clone());
        for (_, tx) in followers.drain() {
            let _ = tx.send(line.clone());
        }
    }

    /// Subscribes to new lines of a log; subscribe before reading the file so no
    /// line falls between the two.
    pub fn follow(&self, key: &str) -> broadcast::Receiver<String> {
        let mut followers = lock(&self.followers);
        if let Some(line) = lock(&self.follows_ended).clone() {
            // The stop has begun: the follow ends after what is there, with
            // the line that says why.
            let (tx, rx) = broadcast::channel(1);
            let _ = tx.send(line);
            return rx;
        }
        followers
            .entry(key.to_string())
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }
}

/// A line of Fusion's own in a log, stamped now.
fn fusion_line(text: &str) -> String {
    let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    format!("{stamp} [0 fusion] {text}\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_size_is_rotated_once_and_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path().to_path_buf()).unwrap();
        let line = "x".repeat(1000);
        let per_entry = format!("2026-12-01T00:00:00.000Z [1 stdout] {line}\n").len() as u64;
        let n = (2 * MAX_LOG_BYTES / per_entry) as usize + 10;
        for _ in 0..n {
            logs.append("f", 1, "stdout", &line);
        }
        let current = std::fs::metadata(logs.path("f")).unwrap().len();
        let rotated = std::fs::metadata(logs.rotated("f")).unwrap().len();
        assert!(current <= MAX_LOG_BYTES && rotated <= MAX_LOG_BYTES);
        // The oldest lines went with the first rotation; what is kept reads in order.
        let all = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(logs.read("f"));
        assert_eq!(all.len() as u64, current + rotated);
        assert!(all.len() as u64 > MAX_LOG_BYTES);
        assert!(String::from_utf8(all)
            .unwrap()
            .lines()
            .all(|l| l.ends_with(&line)));
        logs.remove("f");
        assert!(!logs.path("f").exists() && !logs.rotated("f").exists());
        // A deleted function's last instance does not make its log again; a
        // function made again under the name does.
        logs.append("f", 1, "fusion", "instance 1 stopped");
        assert!(!logs.path("f").exists());
        logs.reopen("f");
        logs.append("f", 2, "stdout", "hello");
        assert!(logs.path("f").exists());
    }

    /// At the server's stop, every follower gets a last line that says why
    /// and its stream ends (it would hold the stop for its whole grace).
    #[test]
    fn followers_are_ended_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path().to_path_buf()).unwrap();
        let (mut f, mut g) = (logs.follow("f"), logs.follow("g"));
        logs.append("f", 1, "stdout", "hello");
        logs.end_follows("the server is stopping");
        assert!(f.try_recv().unwrap().ends_with("[1 stdout] hello\n"));
        // A follow that starts after the stop began ends at once too.
        let mut late = logs.follow("f");
        for rx in [&mut f, &mut g, &mut late] {
            assert!(rx
                .try_recv()
                .unwrap()
                .ends_with("[0 fusion] the server is stopping\n"));
            assert_eq!(
                rx.try_recv(),
                Err(broadcast::error::TryRecvError::Closed),
                "the stream ends"
            );
        }
    }
}
