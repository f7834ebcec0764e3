//! The engine store's commit journal: what makes its writes durable.
//!
//! Every write of the store goes to sled, which is not flushed for it, and
//! then, in the same order, to this journal as the changes it made (tree, key,
//! new value or removal). A group commit writes the journal's new records and
//! `fdatasync`s its file on one thread, for every writer waiting at the time.
//! sled itself is flushed at a checkpoint (each second while writes come in),
//! after which the journal's older segments are deleted. On open, segments a
//! crash left are replayed into sled in order and flushed: each change sets a
//! key to a value or removes it, so a change sled already has does no harm, and
//! applying the whole suffix again in order leaves every key as the last
//! change made it.
//!
//! Why not `sled::Db::flush` per group commit (what the store did before):
//! sled 0.34 writes each sealed buffer on its own I/O thread pool, and handing
//! work to that pool wakes every one of its idle threads; on a 2-core machine
//! that was 40% of the server's CPU under load. The journal's write and sync
//! stay on the one flusher thread.
//!
//! A record on disk: payload length (u32 LE), CRC-32 of the payload (u32 LE),
//! payload. A payload is a list of changes: tree (u8), key length (u32 LE),
//! key, then 0 for a removal or 1, value length (u32 LE) and value. A record
//! cut short or failing its checksum ends the replay: it can only be the tail
//! a crash interrupted, which no writer was told was durable. (Where whole
//! records follow it, the damage is not a torn tail: that is said, and the
//! segment is kept as `<segment>.journal.damaged`.)
//!
//! A segment's blocks are allocated when it is created (zeros, the file's size
//! set): a sync then writes inside the file's size and allocation, so its
//! `fdatasync` commits no new size or block (ext4 still marks the blocks it
//! writes as written; on this machine, 141-171 us p50 per sync of a 700-byte
//! record against 219-257 when appending, and a file written out in full
//! beforehand was no faster). A zero length, where no record was written yet,
//! ends a segment's records.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often sled is flushed (and the journal emptied) while writes come in.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// A segment this large is checkpointed at the next group commit.
const SEGMENT_LIMIT: u64 = 64 * 1024 * 1024;

/// Bytes allocated for a segment when it is created: what a second of group
/// commits writes at about 10,000 runs a second (more makes the file grow).
const SEGMENT_ALLOCATED: u64 = 16 * 1024 * 1024;

/// The changes one write made, encoded as a journal payload.
#[derive(Default)]
pub struct Changes(Vec<u8>);

impl Changes {
    pub fn insert(&mut self, tree: u8, key: &[u8], value: &[u8]) {
        self.key(tree, key);
        self.0.push(1);
        self.0
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.0.extend_from_slice(value);
    }

    pub fn remove(&mut self, tree: u8, key: &[u8]) {
        self.key(tree, key);
        self.0.push(0);
    }

    /// Forgets everything (a sled transaction that runs its closure again).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    fn key(&mut self, tree: u8, key: &[u8]) {
        self.0.push(tree);
        self.0.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.0.extend_from_slice(key);
    }
}

/// One change read back from the journal.
#[derive(Debug, PartialEq)]
pub enum Change<'a> {
    Insert(u8, &'a [u8], &'a [u8]),
    Remove(u8, &'a [u8]),
}

fn decode(mut p: &[u8]) -> Option<Vec<Change<'_>>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Some(head)
    }
    fn len(p: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize)
    }
    let mut out = Vec::new();
    while !p.is_empty() {
        let tree = take(&mut p, 1)?[0];
        let n = len(&mut p)?;
        let key = take(&mut p, n)?;
        match take(&mut p, 1)?[0] {
            0 => out.push(Change::Remove(tree, key)),
            1 => {
                let n = len(&mut p)?;
                out.push(Change::Insert(tree, key, take(&mut p, n)?));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The records of one segment's bytes, up to the first that is cut short or
/// corrupt; and whether the bytes ended cleanly.
pub(crate) fn records(mut bytes: &[u8]) -> (Vec<Vec<Change<'_>>>, bool) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 8 {
            return (out, false);
        }
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap_or_default()) as usize;
        if len == 0 {
            // The segment's allocated space past its last record.
            break;
        }
        let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(8..8 + len) else {
            return (out, false);
        };
        if crc32fast::hash(payload) != crc {
            return (out, false);
        }
        let Some(changes) = decode(payload) else {
            return (out, false);
        };
        out.push(changes);
        bytes = &bytes[8 + len..];
    }
    (out, true)
}

/// How many whole records follow the first record of `bytes` that is cut
/// short or corrupt: none after a crash's torn tail (zeros or nothing follow
/// it), some after damage in the middle of a segment (a failing disk, a
/// stray write), which are lost with it. Looked for within 4 MiB of the
/// damage.
pub(crate) fn records_past_a_break(bytes: &[u8]) -> usize {
    // Where the good records end.
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
        match bytes.get(at + 8..at + 8 + len) {
            Some(p) if len > 0 && crc32fast::hash(p) == crc && decode(p).is_some() => at += 8 + len,
            _ => break,
        }
    }
    let end = bytes.len().min(at + 4 * 1024 * 1024);
    for start in at + 1..end {
        // A cheap look at what would be a record's length first: garbage
        // (random lengths) is passed over without a checksum of megabytes.
        let plausible = bytes
            .get(start..start + 4)
            .map(|l| u32::from_le_bytes(l.try_into().unwrap_or_default()) as usize)
            .is_some_and(|len| len > 0 && len <= 1024 * 1024 && start + 8 + len <= bytes.len());
        if !plausible {
            continue;
        }
        let (found, _) = records(&bytes[start..]);
        if !found.is_empty() {
            return found.len();
        }
    }
    0
}

/// Where a segment's records end (its first zero length or its end).
#[cfg(test)]
pub(crate) fn end_of_records(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        if len == 0 {
            break;
        }
        at += 8 + len;
    }
    at.min(bytes.len())
}

struct Pending {
    /// Records not written to the file yet.
    buf: Vec<u8>,
    file: Arc<File>,
    segment: u64,
    /// Bytes in the current segment, written or not.
    len: u64,
    /// Why the last checkpoint failed: records it took may be neither in a
    /// segment nor durable in sled, so no sync says "durable" until a
    /// checkpoint succeeds.
    broken: Option<String>,
    /// A failure a test set (a full disk): every sync and checkpoint fails
    /// until the test mends it.
    #[cfg(test)]
    broken_by_test: Option<String>,
    /// Records known durable (a sync or a checkpoint made them so), as
    /// counted by `Journal::recorded`.
    durable: u64,
    /// While a backup copies the store: a copy of every record made since
    /// it started (see `Journal::tap`).
    tap: Option<Tap>,
}

/// The most a backup's copy of the records made while it runs may hold (in
/// memory): a store changed faster than the backup reads it would never be
/// done.
const TAP_LIMIT: usize = 512 << 20;

/// Records copied for a backup, framed as in a segment, in chunks of about
/// `TAP_CHUNK` bytes (each record whole in one): a chunk filled is never
/// copied again, so no write waits for a large reallocation.
#[derive(Default)]
struct Tap {
    chunks: Vec<Vec<u8>>,
    len: usize,
    /// Past `TAP_LIMIT`: the copy is given up (and its chunks freed).
    overflowed: bool,
}

const TAP_CHUNK: usize = 1 << 20;

impl Tap {
    fn push(&mut self, record: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.len + record.len() > TAP_LIMIT {
            *self = Tap {
                overflowed: true,
                ..Tap::default()
            };
            return;
        }
        match self.chunks.last_mut() {
            Some(c) if c.capacity() - c.len() >= record.len() => c.extend_from_slice(record),
            _ => {
                let mut c = Vec::with_capacity(TAP_CHUNK.max(record.len()));
                c.extend_from_slice(record);
                self.chunks.push(c);
            }
        }
        self.len += record.len();
    }
}

pub struct Journal {
    dir: PathBuf,
    pending: Mutex<Pending>,
    /// Records made so far (counted under the lock of `pending`, read
    /// without it).
    recorded: AtomicU64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.journal"))
}

/// Where a segment found damaged in its middle is kept (`segments` passes
/// over it).
fn damaged_path(segment: &Path) -> PathBuf {
    let mut p = segment.as_os_str().to_owned();
    p.push(".damaged");
    PathBuf::from(p)
}

/// The journal's segments on disk, oldest first.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".journal"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// A new segment, its space allocated (see the module's notes), written from
/// its start by the flusher alone (through the file's own offset).
/// `must_allocate`: no room for its allocation is an error (a checkpoint's
/// next segment: it fails, and is tried again, before sled is flushed into
/// the little room left); else the segment grows as it is written (the one
/// an open starts with: a server with little room still starts).
fn create_segment(dir: &Path, n: u64, must_allocate: bool) -> std::io::Result<File> {
    let file = File::options()
        .create_new(true)
        .write(true)
        .open(segment_path(dir, n))?;
    match pool_manager::sys::preallocate(&file, SEGMENT_ALLOCATED) {
        // Its size and allocation are durable before the first sync.
        Ok(()) => file.sync_all()?,
        Err(e) if must_allocate && e.kind() != std::io::ErrorKind::Unsupported => {
            let _ = std::fs::remove_file(segment_path(dir, n));
            return Err(e);
        }
        // A file system without fallocate, or too little room to allocate
        // ahead: the segment grows as it is written.
        Err(e) => tracing::debug!(error = %e, "cannot allocate the journal's segment ahead"),
    }
    // The new name itself is durable before anything relies on it.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

impl Journal {
    /// Opens the journal in `dir` (created if missing): replays into the
    /// store's trees what segments a crash left (`apply` makes one change),
    /// makes that durable with a flush of `db`, and starts a new segment.
    pub fn open(
        dir: &Path,
        db: &sled::Db,
        mut apply: impl FnMut(&Change) -> sled::Result<()>,
    ) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let found = segments(dir)?;
        let mut replayed = 0usize;
        let mut damaged = Vec::new();
        for n in &found {
            let path = segment_path(dir, *n);
            let bytes = std::fs::read(&path)?;
            let (records, clean) = records(&bytes);
            for changes in &records {
                for c in changes {
                    apply(c).map_err(std::io::Error::other)?;
                }
            }
            replayed += records.len();
            if !clean {
                match records_past_a_break(&bytes) {
                    0 => tracing::warn!(
                        segment = %path.display(),
                        "a segment of the store's journal ends in a record cut short (a crash \
                         while it was written; no writer was told it was durable): replayed up to it"
                    ),
                    lost => {
                        let kept = damaged_path(&path);
                        tracing::error!(
                            segment = %path.display(),
                            kept = %kept.display(),
                            replayed = records.len(),
                            lost,
                            "a segment of the store's journal is damaged in its middle (a failing disk?): \
                             the records after the damage cannot be replayed, and writes acknowledged \
                             before the crash may be lost; the segment is kept as it was found, and \
                             the data directory can be restored from a backup if they matter"
                        );
                        damaged.push((path.clone(), kept));
                    }
                }
            }
        }
        if !found.is_empty() {
            db.flush().map_err(std::io::Error::other)?;
            tracing::info!(records = replayed, "replayed the store's journal");
            // A damaged segment stays, out of the replay's way, for whoever
            // looks into what was lost.
            for (path, kept) in &damaged {
                std::fs::rename(path, kept)?;
            }
            for n in &found {
                let path = segment_path(dir, *n);
                if !damaged.iter().any(|(d, _)| *d == path) {
                    std::fs::remove_file(path)?;
                }
            }
        }
        let segment = found.last().map_or(0, |n| n + 1);
        let file = create_segment(dir, segment, false)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                file: Arc::new(file),
                segment,
                len: 0,
                broken: None,
                #[cfg(test)]
                broken_by_test: None,
                durable: 0,
                tap: None,
            }),
            recorded: AtomicU64::new(0),
        })
    }

    /// Breaks the journal as a full disk does, until `mend_for_test`: every
    /// sync and checkpoint fails meanwhile (for tests).
    #[cfg(test)]
    pub fn break_for_test(&self, why: &str) {
        let mut p = self.hold().0;
        p.broken = Some(why.to_string());
        p.broken_by_test = Some(why.to_string());
    }

    /// Gives the disk that `break_for_test` filled room again: the next
    /// checkpoint succeeds (for tests).
    #[cfg(test)]
    pub fn mend_for_test(&self) {
        self.hold().0.broken_by_test = None;
    }

    /// Why nothing can be made durable now, if so: the last write, sync or
    /// checkpoint failed (a full disk, say) and no checkpoint has succeeded
    /// since.
    pub fn trouble(&self) -> Option<String> {
        self.hold().0.broken.clone()
    }

    /// Holds the journal: writes made to sled while it is held are recorded,
    /// with `Held::record`, in the order they were made.
    pub fn hold(&self) -> Held<'_> {
        Held(
            self.pending.lock().unwrap_or_else(|p| p.into_inner()),
            &self.recorded,
        )
    }

    /// Starts copying every record made from now on (a backup's reading of
    /// the trees, which sees some of the writes made meanwhile: replayed after
    /// what it read, in order, these leave each key as the last write made
    /// it). One backup at a time: a second start starts the copy afresh.
    pub fn tap(&self) {
        self.hold().0.tap = Some(Tap::default());
    }

    /// Whether the copy `tap` started holds more than it keeps (the backup
    /// can stop: it will fail).
    pub fn tap_overflowed(&self) -> bool {
        self.hold().0.tap.as_ref().is_some_and(|t| t.overflowed)
    }

    /// Ends the copy `tap` started and gives its records (framed as in a
    /// segment, in chunks each holding whole records), or `None` when there
    /// were more than it keeps.
    pub fn untap(&self) -> Option<Vec<Vec<u8>>> {
        self.hold()
            .0
            .tap
            .take()
            .filter(|t| !t.overflowed)
            .map(|t| t.chunks)
    }

    /// Writes the records so far to the segment and syncs it: everything
    /// recorded before the call is durable when it returns `Ok`. A failed
    /// write or sync may leave a record cut short in the middle of the
    /// segment (a replay stops there) or pages the kernel dropped, so it
    /// breaks the journal: no sync succeeds until a checkpoint has flushed
    /// sled and started a new segment.
    pub fn sync(&self) -> std::io::Result<()> {
        let (bytes, file, upto) = {
            let mut p = self.hold().0;
            if let Some(why) = &p.broken {
                return Err(std::io::Error::other(why.clone()));
            }
            let upto = self.recorded.load(Ordering::SeqCst);
            (std::mem::take(&mut p.buf), p.file.clone(), upto)
        };
        if bytes.is_empty() {
            return Ok(());
        }
        let r = (&*file).write_all(&bytes).and_then(|_| file.sync_data());
        let mut p = self.hold().0;
        match &r {
            Ok(()) => p.durable = p.durable.max(upto),
            Err(e) => p.broken = Some(format!("writing the journal failed: {e}")),
        }
        r
    }

    /// Records made so far: a waiter's record is durable once `durable`
    /// reaches what this said after it was made.
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::SeqCst)
    }

    /// Records known durable.
    fn durable(&self) -> u64 {
        self.hold().0.durable
    }

    /// Whether every record made so far is durable: a group commit would
    /// have nothing to do.
    pub fn all_durable(&self) -> bool {
        let p = self.hold().0;
        p.broken.is_none() && p.durable >= self.recorded.load(Ordering::SeqCst)
    }

    /// Starts a new segment, makes sled durable up to here and deletes the
    /// older segments. On an error the older segments stay, to be replayed,
    /// and syncs fail until a checkpoint succeeds.
    pub fn checkpoint(&self, db: &sled::Db) -> std::io::Result<()> {
        let r = self.try_checkpoint(db);
        self.hold().0.broken = r.as_ref().err().map(|e| format!("checkpoint failed: {e}"));
        r
    }

    fn try_checkpoint(&self, db: &sled::Db) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(why) = self.hold().0.broken_by_test.clone() {
            return Err(std::io::Error::other(why));
        }
        let next = self.hold().0.segment + 1;
        let file = Arc::new(create_segment(&self.dir, next, true)?);
        let upto = {
            let mut p = self.hold().0;
            p.segment = next;
            p.len = 0;
            p.file = file;
            // Records made before the switch and not written yet: the flush
            // of sled below makes them durable (each was made in sled before
            // it was recorded), and their writers hear so from their sync.
            // Were it to fail, they must not be replayed at the next open:
            // their writers hear it failed (the journal is broken until a
            // checkpoint succeeds), and a run start refused so is taken back
            // (`SledStore::take_back_start`), which sled may then refuse.
            p.buf.clear();
            self.recorded.load(Ordering::SeqCst)
        };
        db.flush().map_err(std::io::Error::other)?;
        {
            let mut p = self.hold().0;
            p.durable = p.durable.max(upto);
        }
        for n in segments(&self.dir)? {
            if n < next {
                std::fs::remove_file(segment_path(&self.dir, n))?;
            }
        }
        Ok(())
    }

    /// Whether a checkpoint has anything to do: records since the last one,
    /// or a failed one to try again.
    fn needs_checkpoint(&self) -> bool {
        let p = self.hold().0;
        p.len > 0 || p.broken.is_some()
    }

    fn segment_full(&self) -> bool {
        self.hold().0.len >= SEGMENT_LIMIT
    }
}

/// The journal, held while a write is made to sled and recorded.
pub struct Held<'a>(MutexGuard<'a, Pending>, &'a AtomicU64);

impl Held<'_> {
    pub fn record(&mut self, changes: &Changes) {
        if changes.0.is_empty() {
            return;
        }
        let p = &mut *self.0;
        p.buf
            .extend_from_slice(&(changes.0.len() as u32).to_le_bytes());
        p.buf
            .extend_from_slice(&crc32fast::hash(&changes.0).to_le_bytes());
        p.buf.extend_from_slice(&changes.0);
        if let Some(tap) = &mut p.tap {
            tap.push(&p.buf[p.buf.len() - 8 - changes.0.len()..]);
        }
        p.len += 8 + changes.0.len() as u64;
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

/// Someone waiting for the next group commit.
pub type Waiter = tokio::sync::oneshot::Sender<std::result::Result<(), String>>;

/// What the flusher is asked.
pub enum Ask {
    /// A group commit: answered once the records up to the count given
    /// (`Journal::recorded` when asked) are durable. A record an earlier
    /// commit made durable is answered so even if the journal broke since.
    Sync(Waiter, u64),
    /// A last group commit and checkpoint, then the flusher ends and leaves
    /// the journal's directory to whoever opens it next.
    Close(Waiter),
}

/// The flusher thread: one group commit for every waiter queued at the time,
/// and a checkpoint `every` so often while there were writes.
pub fn run_flusher(
    journal: Arc<Journal>,
    db: sled::Db,
    rx: std::sync::mpsc::Receiver<Ask>,
    flushes: prometheus_client::metrics::counter::Counter,
    every: Duration,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut last_checkpoint = Instant::now();
    let mut closing = None;
    while closing.is_none() {
        let wait = every.saturating_sub(last_checkpoint.elapsed());
        let mut batch = Vec::new();
        let mut take = |ask| match ask {
            Ask::Sync(w, upto) => batch.push((w, upto)),
            Ask::Close(w) => closing = Some(w),
        };
        match rx.recv_timeout(wait) {
            Ok(ask) => take(ask),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(ask) = rx.try_recv() {
            take(ask);
        }
        if !batch.is_empty() {
            let r = journal.sync().map_err(|e| e.to_string());
            flushes.inc();
            let durable = journal.durable();
            for (w, upto) in batch {
                let answer = match durable >= upto {
                    true => Ok(()),
                    false => Err(r
                        .clone()
                        .err()
                        .unwrap_or_else(|| "the journal did not make the write durable".into())),
                };
                let _ = w.send(answer);
            }
        }
        if last_checkpoint.elapsed() >= every || journal.segment_full() {
            if journal.needs_checkpoint() {
                if let Err(e) = journal.checkpoint(&db) {
                    tracing::error!(error = %e, "checkpoint of the store failed; its journal is kept");
                }
            }
            last_checkpoint = Instant::now();
        }
    }
    let r = journal.checkpoint(&db).map_err(|e| e.to_string());
    if let Err(e) = &r {
        tracing::error!(error = %e, "last checkpoint of the store failed; its journal is kept");
    }
    if let Some(w) = closing {
        let _ = w.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(f: impl FnOnce(&mut Changes)) -> Changes {
        let mut c = Changes::default();
        f(&mut c);
        c
    }

    #[test]
    fn changes_read_back_as_written() {
        let c = payload(|c| {
            c.insert(3, b"run\0\x01", b"{\"a\":1}");
            c.remove(6, b"running\0k");
            c.insert(0, b"", b"");
        });
        assert_eq!(
            decode(&c.0).unwrap(),
            vec![
                Change::Insert(3, b"run\0\x01", b"{\"a\":1}"),
                Change::Remove(6, b"running\0k"),
                Change::Insert(0, b"", b""),
            ]
        );
    }

    /// Whether a group commit has anything to do: records made since the
    /// last sync or checkpoint, or a journal that cannot write.
    #[test]
    fn all_durable_says_whether_records_wait_for_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(dir.path(), &db, |_| Ok(())).unwrap();
        assert!(j.all_durable());
        j.hold().record(&payload(|c| c.insert(1, b"k", b"v")));
        assert!(!j.all_durable());
        j.sync().unwrap();
        assert!(j.all_durable());
        j.hold().record(&payload(|c| c.insert(1, b"k", b"w")));
        assert!(!j.all_durable());
        j.checkpoint(&db).unwrap();
        assert!(j.all_durable());
        j.break_for_test("No space left on device (a test)");
        assert!(!j.all_durable());
    }

    #[test]
    fn a_record_cut_short_or_corrupt_ends_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(dir.path(), &db, |_| Ok(())).unwrap();
        for i in 0..3u8 {
            let mut h = j.hold();
            h.record(&payload(|c| c.insert(1, &[i], b"v")));
        }
        j.sync().unwrap();
        let path = segment_path(dir.path(), 0);
        let file = std::fs::read(&path).unwrap();
        // The segment's space was allocated ahead: zeros past the records end
        // them cleanly.
        assert!(file.len() as u64 >= SEGMENT_ALLOCATED, "{}", file.len());
        let (r, clean) = records(&file);
        assert_eq!((r.len(), clean), (3, true));
        let end = end_of_records(&file);
        let whole = &file[..end];
        let (r, clean) = records(whole);
        assert_eq!((r.len(), clean), (3, true));
        // Cut inside the last record, with or without zeros after the cut.
        let (r, clean) = records(&whole[..whole.len() - 1]);
        assert_eq!((r.len(), clean), (2, false));
        let mut cut = file.clone();
        cut[end - 1] = 0;
        let (r, clean) = records(&cut);
        assert_eq!((r.len(), clean), (2, false));
        // A flipped bit in the second record's payload.
        let mut bad = whole.to_vec();
        let second = whole.len() / 3 + 9;
        bad[second] ^= 1;
        let (r, clean) = records(&bad);
        assert_eq!((r.len(), clean), (1, false));
        // Damage in the middle is told from a torn tail by what follows it:
        // the third record here, nothing after a tail cut short.
        assert_eq!(records_past_a_break(&bad), 1);
        assert_eq!(records_past_a_break(&cut), 0);
        assert_eq!(records_past_a_break(&whole[..whole.len() - 1]), 0);
    }

    /// A segment damaged in its middle is replayed up to the damage and kept
    /// as it was found (beside the journal, not replayed again); one cut
    /// short by a crash is replayed and removed.
    #[test]
    fn a_segment_damaged_in_its_middle_is_kept_for_a_look() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(dir.path(), &db, |_| Ok(())).unwrap();
        for i in 0..3u8 {
            j.hold().record(&payload(|c| c.insert(1, &[i], b"v")));
        }
        j.sync().unwrap();
        drop(j);
        let path = segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = end_of_records(&bytes) / 3 + 9;
        bytes[second] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut replayed = 0;
        let j = Journal::open(dir.path(), &db, |_| {
            replayed += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(replayed, 1, "the records before the damage");
        assert_eq!(std::fs::read(damaged_path(&path)).unwrap(), bytes);
        assert!(!path.exists());
        // Not replayed again at the next open.
        drop(j);
        let mut again = 0;
        Journal::open(dir.path(), &db, |_| {
            again += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(again, 0);
        assert!(damaged_path(&path).exists());
    }
}
