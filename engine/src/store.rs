//! Durable storage of workflows (versioned) and runs (events, summaries and the
//! indexes that list runs newest-first by status and by workflow), in sled.
//! Writes are made durable by the store's journal (see `journal`), synced by
//! one flusher thread: one sync serves every writer waiting at the time
//! (group commit).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::journal::{Ask, Change, Changes, Journal};
use crate::keys::{self, event_key, from_time, index_key, run_key, status_prefix, workflow_prefix};
use crate::record::{pack, unpack};
use crate::spec::WorkflowSpec;
use crate::state::{Event, Millis, RunError, RunStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {}", pool_manager::error::sled_error_text(.0))]
    Sled(#[from] sled::Error),
    #[error("stored data is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored data is corrupt: {0}")]
    Packed(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("flush failed: {0}")]
    Flush(String),
    #[error("the store's journal: {0}")]
    Journal(#[from] std::io::Error),
    #[error("invalid cursor")]
    Cursor,
    /// Too much going on for what was asked (a backup); it may work later.
    #[error("{0}")]
    Busy(String),
    /// Given up, as its caller asked (a backup's `stop`).
    #[error("stopped")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, StoreError>;
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One stored version of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowVersion {
    pub name: String,
    pub version: u32,
    pub source: String,
    pub spec: WorkflowSpec,
    pub created_at: Millis,
}

/// What a listing shows of a run (the detail comes from its events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Never empty (stored without it: the run's key holds it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub status: RunStatus,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    pub input: Value,
    pub output: Option<Value>,
    /// The output task's response headers (what a synchronous caller gets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_headers: BTreeMap<String, String>,
    pub error: Option<RunError>,
    #[serde(default)]
    pub retry_of: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    /// Runs in any of these statuses (every status when empty).
    pub statuses: Vec<RunStatus>,
    /// Created at or after (ms).
    pub since: Option<Millis>,
    /// Created at or before (ms).
    pub until: Option<Millis>,
    pub limit: usize,
    pub cursor: Option<String>,
    /// Index entries read at most for one page (0: [`SCANNED_PER_PAGE`]).
    pub scan_limit: usize,
}

/// Index entries one page reads at most. A filter that few runs pass (one
/// workflow's failed runs among its million successes) would otherwise read
/// the whole index for one page: past this the page ends early, with fewer
/// runs than asked (even none) and a cursor to go on from.
pub const SCANNED_PER_PAGE: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    pub next_cursor: Option<String>,
}

/// Copies every key of `tree` (named `name`) as a backup's insert, unless
/// `stop` says to give up (asked every 4,096 keys).
fn copy_tree(
    tree: &sled::Tree,
    name: &[u8],
    w: &mut crate::backup::Writer<impl std::io::Write>,
    stop: &impl Fn() -> bool,
) -> Result<()> {
    for (n, kv) in tree.iter().enumerate() {
        let (k, v) = kv?;
        w.insert(name, &k, &v)?;
        if n % 4096 == 4095 && stop() {
            return Err(StoreError::Stopped);
        }
    }
    Ok(())
}

fn too_busy() -> StoreError {
    StoreError::Busy(
        "the workflow store took more writes while the backup read it than a backup keeps (512 MiB): try again when it is less busy"
            .into(),
    )
}

/// Ends a backup's copy of the journal's records, however the backup ends.
struct Untap<'a>(&'a Journal);

impl Untap<'_> {
    /// The copy, ended (the drop after it finds nothing more to end).
    fn take(self) -> Option<Vec<Vec<u8>>> {
        self.0.untap()
    }
}

impl Drop for Untap<'_> {
    fn drop(&mut self) {
        self.0.untap();
    }
}

/// Where workflows and runs are kept.
pub trait RunStore: Send + Sync + 'static {
    /// `create`: version 1, Conflict if the workflow exists; otherwise the next
    /// version, NotFound if it does not exist, or the latest version as it is
    /// when it has this `source` already. With whether it stored a version.
    fn put_workflow(
        &self,
        name: &str,
        source: &str,
        spec: &WorkflowSpec,
        create: bool,
        now: Millis,
    ) -> Result<(WorkflowVersion, bool)>;
    /// The latest version, or the given one.
    fn workflow(&self, name: &str, version: Option<u32>) -> Result<Option<WorkflowVersion>>;
    fn workflow_versions(&self, name: &str) -> Result<Vec<WorkflowVersion>>;
    /// The latest version of every workflow, by name.
    fn list_workflows(&self) -> Result<Vec<WorkflowVersion>>;
    fn delete_workflow(&self, name: &str) -> Result<bool>;
    fn workflow_exists(&self, name: &str) -> bool;

    /// Writes events `first_seq..` of a run (not yet durable: see `flush`), and
    /// keeps the run's summary and indexes up to date; returns the summary as
    /// the write left it, when the write changed it (as `run` would read it).
    fn append(&self, run_id: &str, first_seq: u64, events: &[Event]) -> Result<Option<RunSummary>>;
    fn events(&self, run_id: &str) -> Result<Vec<Event>>;
    fn run(&self, run_id: &str) -> Result<Option<RunSummary>>;
    fn list_runs(&self, filter: &RunFilter) -> Result<RunPage>;
    fn unfinished_runs(&self) -> Result<Vec<String>>;
    /// Deletes finished runs created before `cutoff`; returns how many.
    fn prune(&self, cutoff: Millis) -> Result<usize>;
    /// Deletes the finished runs of `workflow` past its history retention:
    /// those finished before `finished_before`, and all but the newest
    /// `keep` (by finish time); returns how many. Running runs are kept, and
    /// so are runs that finished at or after `settled_before` (their callers
    /// may still be reading them).
    fn prune_workflow(
        &self,
        workflow: &str,
        finished_before: Option<Millis>,
        keep: Option<usize>,
        settled_before: Millis,
    ) -> Result<usize>;
    /// Resolves once everything appended before the call is on disk.
    fn flush(&self) -> BoxFuture<Result<()>>;
}

/// How long a run may hold events that only start calls (its start, its
/// dispatches) before writing them: a run that ends sooner is written once,
/// with its end (see the driver). A crash before they are flushed repeats
/// those calls, with the same idempotency keys.
pub const LAZY_FLUSH_DELAY: Duration = Duration::from_millis(20);

/// The store's trees, numbered as its journal names them.
#[derive(Clone, Copy)]
enum T {
    Workflows,
    WfVersions,
    /// The runs' trees of versions before 2026-12, keyed by strings (see
    /// `migrate_string_keys`): moved to the trees below at open, named so
    /// that a journal they left still replays.
    StrRuns,
    StrRunEvents,
    /// The time index of versions before 2026-12: dropped at open.
    ByTime,
    StrByWorkflow,
    StrByStatus,
    Specs,
    /// The runs' trees, keyed as `keys` says.
    Runs,
    RunEvents,
    ByWorkflow,
    ByStatus,
}

/// sled's names for the trees, in `T`'s order.
const TREE_NAMES: [&str; 12] = [
    "wf_latest",
    "wf_versions",
    "runs",
    "run_events",
    "runs_by_time",
    "runs_by_workflow",
    "runs_by_status",
    "run_specs",
    "runs.2",
    "run_events.2",
    "runs_by_workflow.2",
    "runs_by_status.2",
];

/// A tree inside a sled transaction whose changes are also recorded for the
/// journal.
struct Recorded<'a> {
    tree: &'a sled::transaction::TransactionalTree,
    id: T,
    changes: &'a RefCell<Changes>,
}

type TxResult<R> =
    std::result::Result<R, sled::transaction::ConflictableTransactionError<StoreError>>;

impl Recorded<'_> {
    fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> TxResult<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.changes.borrow_mut().insert(self.id as u8, key, value);
        self.tree.insert(key, value)?;
        Ok(())
    }

    fn remove(&self, key: impl AsRef<[u8]>) -> TxResult<()> {
        self.changes
            .borrow_mut()
            .remove(self.id as u8, key.as_ref());
        self.tree.remove(key.as_ref())?;
        Ok(())
    }

    fn get(&self, key: impl AsRef<[u8]>) -> TxResult<Option<sled::IVec>> {
        Ok(self.tree.get(key.as_ref())?)
    }
}

/// Where `workflows` keeps a deleted workflow's last version number ('\0'
/// starts no name): one made again under the name goes on from it.
fn retired_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

fn rec<'a>(
    tree: &'a sled::transaction::TransactionalTree,
    id: T,
    changes: &'a RefCell<Changes>,
) -> Recorded<'a> {
    Recorded { tree, id, changes }
}

fn from_tx(e: sled::transaction::TransactionError<StoreError>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

/// The sled implementation.
pub struct SledStore {
    workflows: sled::Tree,
    wf_versions: sled::Tree,
    runs: sled::Tree,
    run_events: sled::Tree,
    by_workflow: sled::Tree,
    by_status: sled::Tree,
    /// Workflow specs by content hash: a run's start names its spec instead
    /// of carrying a copy.
    specs: sled::Tree,
    /// Hashes known to be in `specs` (written once per spec).
    known_specs: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The latest version of each workflow read since it last changed: every
    /// run reads its workflow's.
    latest: std::sync::Mutex<LatestWorkflows>,
    journal: Arc<Journal>,
    /// The whole database (the other parts' trees too), for backups.
    db: sled::Db,
    flush_tx: std_mpsc::Sender<Ask>,
    /// The flusher thread, joined when the store is dropped (after its last
    /// checkpoint, so the next open of the same directory finds it done).
    flusher: Option<std::thread::JoinHandle<()>>,
    flushes: prometheus_client::metrics::counter::Counter,
}

/// Parsed latest versions of workflows, and how many times a workflow has
/// changed: a version read from sled is kept only if no change came between
/// the read and the keeping (else a reader could keep what a writer replaced).
#[derive(Default)]
struct LatestWorkflows {
    by_name: std::collections::HashMap<String, WorkflowVersion>,
    changes: u64,
}

fn scoped(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

/// Moves the runs that versions before 2026-12 stored under string keys
/// (`name\0` + 8-byte time + id for the indexes, `id\0` + sequence for
/// events) to the trees keyed as `keys` says, then drops the old trees.
/// Values move as they are (a summary that holds its id reads the same).
/// Written straight to sled and flushed before the old trees go: a crash
/// on the way leaves them, and the next open moves them again.
fn migrate_string_keys(db: &sled::Db, trees: &[sled::Tree]) -> Result<()> {
    let t = |id: T| &trees[id as usize];
    if [
        T::StrRuns,
        T::StrRunEvents,
        T::StrByWorkflow,
        T::StrByStatus,
    ]
    .iter()
    .all(|id| t(*id).is_empty())
    {
        return Ok(());
    }
    let started = std::time::Instant::now();
    tracing::info!(
        "moving the stored runs to compact keys (once, before the server starts: \
         about a minute per million runs)"
    );
    // What precedes the first NUL, and what follows it.
    let split = |k: &[u8]| -> Option<(String, Vec<u8>)> {
        let at = k.iter().position(|b| *b == 0)?;
        Some((
            String::from_utf8(k[..at].to_vec()).ok()?,
            k[at + 1..].to_vec(),
        ))
    };
    // An index entry's time and id (after its prefix).
    let entry = |rest: &[u8]| -> Option<(Millis, String)> {
        let (ts, id) = rest.split_first_chunk::<8>()?;
        Some((
            Millis::from_be_bytes(*ts),
            String::from_utf8(id.to_vec()).ok()?,
        ))
    };
    let mut runs = 0u64;
    for kv in t(T::StrRuns).iter() {
        let (k, v) = kv?;
        if let Ok(id) = std::str::from_utf8(&k) {
            t(T::Runs).insert(run_key(id), v)?;
            runs += 1;
            if runs.is_multiple_of(100_000) {
                tracing::info!(runs, "moving the stored runs to compact keys");
            }
        }
    }
    for kv in t(T::StrRunEvents).iter() {
        let (k, v) = kv?;
        if let Some((id, seq)) = split(&k) {
            if let Ok(seq) = <[u8; 8]>::try_from(seq.as_slice()) {
                t(T::RunEvents).insert(event_key(&id, u64::from_be_bytes(seq)), v)?;
            }
        }
    }
    for kv in t(T::StrByStatus).iter() {
        let (k, _) = kv?;
        let Some((status, rest)) = split(&k) else {
            continue;
        };
        if let (Some(status), Some((ts, id))) = (RunStatus::parse(&status), entry(&rest)) {
            t(T::ByStatus).insert(index_key(&status_prefix(status), ts, &id), &[])?;
        }
    }
    for kv in t(T::StrByWorkflow).iter() {
        let (k, _) = kv?;
        let Some((workflow, rest)) = split(&k) else {
            continue;
        };
        if let Some((ts, id)) = entry(&rest) {
            t(T::ByWorkflow).insert(index_key(&workflow_prefix(&workflow), ts, &id), &[])?;
        }
    }
    db.flush()?;
    tracing::info!(
        runs,
        secs = started.elapsed().as_secs(),
        "moved the stored runs to compact keys"
    );
    for id in [
        T::StrRuns,
        T::StrRunEvents,
        T::StrByWorkflow,
        T::StrByStatus,
    ] {
        db.drop_tree(TREE_NAMES[id as usize])?;
    }
    db.flush()?;
    Ok(())
}

impl SledStore {
    /// Deletes finished run `s` (`Engine::delete_run` checks it is finished),
    /// as retention does.
    pub(crate) fn delete_finished_run(&self, s: &RunSummary) -> Result<()> {
        self.delete_run(s)
    }

    /// Removes a run: its summary and its index entries at once (no crash
    /// leaves a run that lists but cannot be read), then its events.
    fn delete_run(&self, s: &RunSummary) -> Result<()> {
        use sled::Transactional;
        let id = &s.id;
        let trees = (&self.runs, &self.by_workflow, &self.by_status);
        let mut held = self.journal.hold();
        let changes = RefCell::new(Changes::default());
        trees
            .transaction(|(runs, by_workflow, by_status)| {
                changes.borrow_mut().clear();
                let c = &changes;
                rec(by_workflow, T::ByWorkflow, c).remove(index_key(
                    &workflow_prefix(&s.workflow),
                    s.created_at,
                    id,
                ))?;
                rec(by_status, T::ByStatus, c).remove(self.index_status(
                    s.status,
                    s.created_at,
                    id,
                ))?;
                rec(runs, T::Runs, c).remove(run_key(id))?;
                Ok(())
            })
            .map_err(from_tx)?;
        held.record(&changes.into_inner());
        drop(held);
        let keys: Vec<sled::IVec> = self
            .run_events
            .scan_prefix(run_key(id))
            .keys()
            .collect::<sled::Result<_>>()?;
        self.write(|c| {
            for k in keys {
                self.run_events.remove(&k)?;
                c.remove(T::RunEvents as u8, &k);
            }
            Ok(())
        })
    }

    /// Makes plain (not transactional) writes to sled, which `f` records in
    /// the journal as it makes them, in their order among all the store's
    /// writes.
    fn write<R>(&self, f: impl FnOnce(&mut Changes) -> Result<R>) -> Result<R> {
        let mut held = self.journal.hold();
        let mut changes = Changes::default();
        let r = f(&mut changes);
        held.record(&changes);
        r
    }

    /// Removes one key of `tree` (the store's tree `t`), recorded.
    fn remove_entry(&self, t: T, tree: &sled::Tree, key: &[u8]) -> Result<()> {
        self.write(|c| {
            tree.remove(key)?;
            c.remove(t as u8, key);
            Ok(())
        })
    }

    /// Makes every write so far durable, as `flush`, at no cost when they
    /// are already (no round trip to the flusher).
    pub async fn settle(&self) -> Result<()> {
        if self.journal.all_durable() {
            return Ok(());
        }
        self.flush().await
    }

    /// Why the store cannot make writes durable now, if so (see
    /// `Journal::trouble`); it can again once a checkpoint succeeds.
    pub fn trouble(&self) -> Option<String> {
        self.journal.trouble()
    }

    /// Takes back the start of run `id` that could not be made durable (its
    /// starter was told so): were it left in sled, the next checkpoint (once
    /// the disk has room again) would store it, and the next start of the
    /// server would run it, as well as the run its caller starts again.
    pub(crate) fn take_back_start(&self, id: &str) {
        let taken = self.run(id).and_then(|s| match s {
            Some(s) => self.delete_run(&s),
            None => Ok(()),
        });
        if let Err(e) = taken {
            tracing::error!(run = id, error = %e, "cannot take back a run start that was not stored");
        }
    }

    /// Makes every flush fail, as a full disk does, until
    /// `mend_journal_for_test` (for tests).
    #[cfg(test)]
    pub(crate) fn break_journal_for_test(&self) {
        self.journal
            .break_for_test("No space left on device (a test)");
    }

    /// Gives the store's disk room again: the next checkpoint succeeds and
    /// flushes work again after it (for tests).
    #[cfg(test)]
    pub(crate) fn mend_journal_for_test(&self) {
        self.journal.mend_for_test();
    }

    /// Opens the engine's trees, replays what the journal in `journal_dir`
    /// holds from before a crash, and starts the flusher thread.
    pub fn open(db: &sled::Db, journal_dir: &Path) -> Result<Arc<Self>> {
        Self::open_with(db, journal_dir, crate::journal::CHECKPOINT_EVERY)
    }

    /// `open`, checkpointing every `checkpoint_every` while writes come in.
    fn open_with(
        db: &sled::Db,
        journal_dir: &Path,
        checkpoint_every: Duration,
    ) -> Result<Arc<Self>> {
        let trees = TREE_NAMES
            .iter()
            .map(|name| db.open_tree(name))
            .collect::<sled::Result<Vec<_>>>()?;
        let journal = Journal::open(journal_dir, db, |change| {
            let tree = |id: u8| {
                trees.get(id as usize).ok_or_else(|| {
                    sled::Error::Unsupported(format!("the journal names an unknown tree {id}"))
                })
            };
            match change {
                Change::Insert(id, key, value) => tree(*id)?.insert(*key, *value).map(|_| ()),
                Change::Remove(id, key) => tree(*id)?.remove(*key).map(|_| ()),
            }
        })?;
        let journal = Arc::new(journal);
        // Unfiltered listings merge the status index now: the time index of
        // older versions goes (after the journal's replay, which may name it),
        // and the runs they keyed by strings move.
        db.drop_tree(TREE_NAMES[T::ByTime as usize])?;
        migrate_string_keys(db, &trees)?;
        let t = |id: T| trees[id as usize].clone();
        let (flush_tx, rx) = std_mpsc::channel::<Ask>();
        let flushes = prometheus_client::metrics::counter::Counter::default();
        let flusher = {
            let (journal, db, flushes) = (journal.clone(), db.clone(), flushes.clone());
            std::thread::Builder::new()
                .name("fusion-flusher".into())
                .spawn(move || {
                    crate::journal::run_flusher(journal, db, rx, flushes, checkpoint_every)
                })
                .map_err(|e| StoreError::Flush(format!("cannot start the flusher: {e}")))?
        };
        Ok(Arc::new(SledStore {
            workflows: t(T::Workflows),
            wf_versions: t(T::WfVersions),
            runs: t(T::Runs),
            run_events: t(T::RunEvents),
            by_workflow: t(T::ByWorkflow),
            by_status: t(T::ByStatus),
            specs: t(T::Specs),
            known_specs: Default::default(),
            latest: Default::default(),
            journal,
            db: db.clone(),
            flush_tx,
            flusher: Some(flusher),
            flushes,
        }))
    }

    /// The whole database this store's trees are in.
    pub fn database(&self) -> &sled::Db {
        &self.db
    }

    /// Writes the whole database (every tree, the other parts' too) to `out`
    /// as a backup's records (`crate::backup`), while the server goes on.
    /// - The other parts' trees (functions, triggers, invocations, ...) come
    ///   first, read while their writes of several trees at once wait
    ///   (`pool_manager::store::no_whole_writes`): each such write is in the
    ///   backup whole or not at all, and other changes key by key.
    /// - The engine's trees are read as they are, which sees some of the
    ///   writes made meanwhile and not others; the engine's writes made from
    ///   the start of that reading to its end follow, in order (a copy of
    ///   its journal's records), so a restore leaves every engine key as the
    ///   last write before the end made it: each run as it stood then.
    ///
    /// Blocking: run it on a thread of its own.
    /// `stop` is asked now and then whether to give up (the caller went
    /// away, the disk fills): it then ends with `StoreError::Stopped`.
    pub fn export(
        &self,
        out: impl std::io::Write,
        stop: impl Fn() -> bool,
    ) -> Result<crate::backup::Counts> {
        let mut w = crate::backup::Writer::new(out)?;
        let names = self.db.tree_names();
        let engine = |name: &[u8]| TREE_NAMES.iter().any(|t| t.as_bytes() == name);
        {
            let _whole = pool_manager::store::no_whole_writes();
            for name in names.iter().filter(|n| !engine(n)) {
                copy_tree(&self.db.open_tree(name)?, name, &mut w, &stop)?;
            }
        }
        self.journal.tap();
        let tapping = Untap(&self.journal);
        // A copy past its bound ends the backup now, not after the last tree.
        let give_up = || stop() || self.journal.tap_overflowed();
        for name in names.iter().filter(|n| engine(n)) {
            match copy_tree(&self.db.open_tree(name)?, name, &mut w, &give_up) {
                Err(StoreError::Stopped) if self.journal.tap_overflowed() => return Err(too_busy()),
                r => r?,
            }
        }
        let tapped = tapping.take().ok_or_else(too_busy)?;
        let mut during = 0;
        for chunk in &tapped {
            for changes in crate::journal::records(chunk).0 {
                for c in changes {
                    let name = |t: u8| TREE_NAMES.get(t as usize).copied().unwrap_or("?");
                    match c {
                        Change::Insert(t, k, v) => w.insert(name(t).as_bytes(), k, v)?,
                        Change::Remove(t, k) => w.remove(name(t).as_bytes(), k)?,
                    }
                    during += 1;
                }
            }
        }
        let (_, records) = w.finish()?;
        Ok(crate::backup::Counts { records, during })
    }

    /// Asks for a flush now without waiting for it: the next group commit.
    pub fn flush_soon(&self) {
        let (tx, _) = oneshot::channel();
        let _ = self.flush_tx.send(Ask::Sync(tx, self.journal.recorded()));
    }

    /// Makes everything written so far durable in sled, empties the journal
    /// and stops the flusher: later flushes fail, and the journal's directory
    /// is left to the next store opened on it.
    pub fn close(&self) -> BoxFuture<Result<()>> {
        self.ask(Ask::Close)
    }

    fn ask(&self, ask: impl FnOnce(crate::journal::Waiter) -> Ask) -> BoxFuture<Result<()>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.flush_tx.send(ask(tx));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Flush("flusher stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Flush("flusher stopped".into()))?
                .map_err(StoreError::Flush)
        })
    }

    /// How many flushes ran (to check grouping).
    pub fn flush_count(&self) -> u64 {
        self.flushes.get()
    }

    /// The flush counter, for the metrics.
    pub fn flushes(&self) -> prometheus_client::metrics::counter::Counter {
        self.flushes.clone()
    }

    fn index_status(&self, status: RunStatus, ts: Millis, id: &str) -> Vec<u8> {
        index_key(&status_prefix(status), ts, id)
    }

    /// Writes a run's encoded events and brings its summary and indexes up to
    /// date. Plain writes, not a sled transaction: sled 0.34 seals its write
    /// buffer at every transaction and hands it to its I/O threads, which cost
    /// more CPU than the rest of a run. What a transaction gave is kept
    /// otherwise:
    /// - after a crash, the journal replays the whole write or none of it (one
    ///   record). What sled alone may hold of a write the journal lacks (sled
    ///   writes out a full buffer when it fills) was never acknowledged, and
    ///   the order below leaves the engine's recovery what it repairs: events
    ///   first, so a run's end is never lost from a run that lists as running,
    ///   and `repair_finished` mends its summary and status index. Of a start
    ///   written in part (a run no caller was told of) what is left is events
    ///   or a summary that no index names, or a run continued at restart that
    ///   the per-workflow listing leaves out;
    /// - a reader meets a new run's summary before its index entries, and
    ///   listings through the status index take an entry only when its
    ///   status is the summary's, so a run lists once, never under a status
    ///   it does not have.
    ///
    /// The summary is folded over the batch in memory and written once, so a
    /// run written in one batch (start to end) costs one write per tree.
    fn write_run(
        &self,
        run_id: &str,
        encoded: Encoded,
        new_spec: Option<NewSpec>,
        events: &[Event],
    ) -> Result<Option<RunSummary>> {
        let changes_summary = events.iter().any(|e| {
            matches!(
                e,
                Event::RunStarted { .. }
                    | Event::RunSucceeded { .. }
                    | Event::RunFailed { .. }
                    | Event::RunCancelled { .. }
            )
        });
        let put = |c: &mut Changes, t: T, tree: &sled::Tree, k: &[u8], v: &[u8]| {
            c.insert(t as u8, k, v);
            tree.insert(k, v).map(|_| ())
        };
        let written = self.write(|c| {
            // A spec not stored yet goes in before the first event that names it.
            if let Some((hash, spec)) = &new_spec {
                put(c, T::Specs, &self.specs, hash.as_bytes(), spec)?;
            }
            if let Encoded::Apart(k, v) = &encoded {
                put(c, T::RunEvents, &self.run_events, k, v)?;
            }
            if !changes_summary {
                return Ok(None);
            }
            // The summary as stored before this batch, if any, and as it is after.
            let mut stored: Option<(RunSummary, Option<Box<RawValue>>)> = None;
            let mut summary: Option<RunSummary> = None;
            let mut by_workflow = None;
            for e in events {
                match e {
                    Event::RunStarted {
                        run_id,
                        workflow,
                        version,
                        input,
                        at,
                        retry_of,
                        ..
                    } => {
                        by_workflow = Some(index_key(&workflow_prefix(workflow), *at, run_id));
                        summary = Some(RunSummary {
                            id: run_id.clone(),
                            workflow: workflow.clone(),
                            version: *version,
                            status: RunStatus::Running,
                            created_at: *at,
                            finished_at: None,
                            input: input.clone(),
                            output: None,
                            output_headers: BTreeMap::new(),
                            error: None,
                            retry_of: retry_of.clone(),
                        });
                    }
                    Event::RunSucceeded { .. }
                    | Event::RunFailed { .. }
                    | Event::RunCancelled { .. } => {
                        let s = match summary.take() {
                            Some(s) => s,
                            None => {
                                let Some(old) = self.runs.get(run_key(run_id))? else {
                                    continue;
                                };
                                let (s, held) = read_stored(&unpacked(&old)?, run_id)?;
                                stored = Some((s.clone(), held));
                                s
                            }
                        };
                        summary = Some(finished_summary(s, e));
                    }
                    _ => {}
                }
            }
            let Some(mut summary) = summary else {
                return Ok(None);
            };
            summary.id = run_id.to_string();
            // A summary rewritten moves the events it held (what they leave to
            // it is about to change) apart, complete, as the run's first.
            if let Some((old, Some(held))) = &stored {
                let held = serde_json::to_vec(&held_events(old, held)?)?;
                put(
                    c,
                    T::RunEvents,
                    &self.run_events,
                    &event_key(run_id, 0),
                    &pack(held),
                )?;
            }
            let with = match &encoded {
                Encoded::InSummary(events) => Some(events.as_slice()),
                _ => None,
            };
            let bytes = pack(write_summary(&mut summary, with)?);
            let status = self.index_status(summary.status, summary.created_at, run_id);
            match &stored {
                // A new run: its summary, then the status index (what lists a
                // run as running is what recovery continues it from).
                None => {
                    put(c, T::Runs, &self.runs, &run_key(run_id), &bytes)?;
                    put(c, T::ByStatus, &self.by_status, &status, &[])?;
                }
                // A run's end: its new status entry, the summary, then the old
                // entry's removal. A listing takes an entry whose status is the
                // summary's, so the run lists once all the while.
                Some((old, _)) => {
                    let old = self.index_status(old.status, old.created_at, run_id);
                    put(c, T::ByStatus, &self.by_status, &status, &[])?;
                    put(c, T::Runs, &self.runs, &run_key(run_id), &bytes)?;
                    if old != status {
                        self.by_status.remove(&old)?;
                        c.remove(T::ByStatus as u8, &old);
                    }
                }
            }
            if let Some(key) = &by_workflow {
                put(c, T::ByWorkflow, &self.by_workflow, key, &[])?;
            }
            Ok(Some(summary))
        })?;
        if let (Some((hash, _)), Ok(mut known)) = (new_spec, self.known_specs.lock()) {
            known.insert(hash);
        }
        Ok(written)
    }

    /// Brings a run's summary and status index in line with the terminal event
    /// already among its stored events (used on start, after a crash that
    /// interrupted the write of a run's end: see `write_run`).
    pub fn repair_finished(&self, run_id: &str, terminal: &Event) -> Result<()> {
        match self.run(run_id)? {
            Some(s) if s.status == RunStatus::Running => self
                .write_run(run_id, Encoded::No, None, std::slice::from_ref(terminal))
                .map(|_| ()),
            // The summary was written, its status index entries not (both).
            Some(s) => self.write(|c| {
                let now = self.index_status(s.status, s.created_at, run_id);
                let was = self.index_status(RunStatus::Running, s.created_at, run_id);
                self.by_status.insert(&now, &[])?;
                c.insert(T::ByStatus as u8, &now, &[]);
                self.by_status.remove(&was)?;
                c.remove(T::ByStatus as u8, &was);
                Ok(())
            }),
            None => Ok(()),
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Ends the flusher, after a last checkpoint (unless `close` did).
        let _ = self.flush_tx.send(Ask::Close(oneshot::channel().0));
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// A run's summary after its terminal event.
fn finished_summary(mut s: RunSummary, e: &Event) -> RunSummary {
    if let Some(end) = crate::state::RunEnd::of(e) {
        end.write(
            &mut s.status,
            &mut s.finished_at,
            &mut s.output,
            &mut s.output_headers,
            &mut s.error,
        );
    }
    s
}

/// A spec to store with the run start that first names it: hash and JSON.
type NewSpec = (String, Vec<u8>);

/// What marks a stored run start (the only event that can name its spec).
const START_TAG: &[u8] = b"\"type\":\"RunStarted\"";

/// An invocation input as stored: an HTTP request's `body` is the same value
/// as its `default` (both are Fission Workflows' names for it), so it is
/// stored once and `body_is_default` says so.
fn lean_input(input: &Value) -> (Value, bool) {
    if let Value::Object(m) = input {
        if m.contains_key("method") && m.get("body").is_some() && m.get("body") == m.get("default")
        {
            let mut m = m.clone();
            m.remove("body");
            return (Value::Object(m), true);
        }
    }
    (input.clone(), false)
}

fn full_input(input: &mut Value) {
    if let Value::Object(m) = input {
        if let Some(d) = m.get("default").cloned() {
            m.insert("body".into(), d);
        }
    }
}

/// A run summary as stored: its input lean (see `lean_input`); `S` is
/// `RunSummary` to read, a reference to one to write.
#[derive(Serialize, Deserialize)]
struct StoredSummary<S> {
    #[serde(flatten)]
    summary: S,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    body_is_default: bool,
    /// The events of a run written whole (see `write_summary`), as written
    /// (read as a field, not buffered by `flatten`).
    #[serde(default, skip_serializing)]
    events: Option<Box<RawValue>>,
}

/// A summary as stored (without its id, which its key holds, and its input
/// lean while it is written, then as it was), with the events of a run
/// written whole (a JSON array) if any.
fn write_summary(s: &mut RunSummary, events: Option<&[u8]>) -> Result<Vec<u8>> {
    let (input, body_is_default) = lean_input(&s.input);
    let full = std::mem::replace(&mut s.input, input);
    let id = std::mem::take(&mut s.id);
    let bytes = serde_json::to_vec(&StoredSummary {
        summary: &*s,
        body_is_default,
        events: None,
    });
    s.input = full;
    s.id = id;
    let mut bytes = bytes?;
    if let Some(events) = events {
        // In place of the object's closing brace.
        bytes.pop();
        bytes.extend_from_slice(b",\"events\":");
        bytes.extend_from_slice(events);
        bytes.push(b'}');
    }
    Ok(bytes)
}

/// A run's end as its summary holds it when the run was written whole: all
/// of it is the summary's (output, headers, time).
const SUCCEEDED_IN_SUMMARY: &[u8] = b"{\"type\":\"RunSucceeded\"}";

fn is_end(e: &Event) -> bool {
    matches!(
        e,
        Event::RunSucceeded { .. } | Event::RunFailed { .. } | Event::RunCancelled { .. }
    )
}

/// How a batch of events is stored: apart (its key and value in
/// `run_events`), inside the run's summary (a run written whole), or not at
/// all (a repair of what is stored).
enum Encoded {
    No,
    Apart(Vec<u8>, Vec<u8>),
    InSummary(Vec<u8>),
}

/// The events a summary holds (a run written whole) with what they left to
/// the summary filled back in: each as stored apart (a start names its spec).
fn held_events(s: &RunSummary, held: &RawValue) -> Result<Vec<Value>> {
    let mut held: Vec<Value> = serde_json::from_str(held.get())?;
    for v in &mut held {
        let Value::Object(m) = v else { continue };
        let kind = m.get("type").and_then(Value::as_str).map(str::to_owned);
        let mut fill = |k: &str, v: Value| {
            m.entry(k).or_insert(v);
        };
        match kind.as_deref() {
            Some("RunStarted") => {
                fill("run_id", s.id.clone().into());
                fill("workflow", s.workflow.clone().into());
                fill("version", s.version.into());
                fill("input", s.input.clone());
                fill("at", s.created_at.into());
                if let Some(r) = &s.retry_of {
                    fill("retry_of", r.clone().into());
                }
            }
            Some("RunSucceeded") => {
                fill("output", s.output.clone().unwrap_or_default());
                fill("headers", serde_json::to_value(&s.output_headers)?);
                fill("at", s.finished_at.unwrap_or(s.created_at).into());
            }
            _ => {}
        }
    }
    Ok(held)
}

/// A stored run record's JSON (see `record`).
fn unpacked(stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    unpack(stored).map_err(StoreError::Packed)
}

/// The stored summary of run `id`.
fn read_summary(bytes: &[u8], id: &str) -> Result<RunSummary> {
    read_stored(bytes, id).map(|(s, _)| s)
}

/// The stored summary of run `id` and the events it holds (a run written
/// whole), as written.
fn read_stored(bytes: &[u8], id: &str) -> Result<(RunSummary, Option<Box<RawValue>>)> {
    let mut stored: StoredSummary<RunSummary> = serde_json::from_slice(bytes)?;
    if stored.body_is_default {
        full_input(&mut stored.summary.input);
    }
    // Versions before 2026-12 stored the id in the summary too.
    if stored.summary.id.is_empty() {
        stored.summary.id = id.to_string();
    }
    Ok((stored.summary, stored.events))
}

impl SledStore {
    /// A workflow's latest version, or the given one, as sled holds it.
    fn read_workflow(&self, name: &str, version: Option<u32>) -> Result<Option<WorkflowVersion>> {
        let version = match version {
            Some(v) => v,
            None => match self.workflows.get(name.as_bytes())? {
                Some(v) => u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4])),
                None => return Ok(None),
            },
        };
        let mut key = scoped(name);
        key.extend_from_slice(&version.to_be_bytes());
        match self.wf_versions.get(key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Drops what is kept of workflow `name` (it changed or went): readers
    /// then read sled, and keep nothing they read before this.
    fn forget_latest(&self, name: &str) {
        if let Ok(mut latest) = self.latest.lock() {
            latest.by_name.remove(name);
            latest.changes += 1;
        }
    }

    /// A run start as stored: its spec by content hash, and the spec itself
    /// when `specs` may not hold it yet (written in the same transaction), and
    /// its input lean.
    fn lean_start(&self, e: &Event) -> Result<(Value, Option<NewSpec>)> {
        let mut v = serde_json::to_value(e)?;
        let Value::Object(m) = &mut v else {
            return Ok((v, None));
        };
        let mut new_spec = None;
        if let Some(spec) = m.remove("spec") {
            let (hash, spec) = self.spec_ref(&spec)?;
            new_spec = spec;
            m.insert("spec_ref".into(), Value::String(hash));
        }
        if let Some(input) = m.get("input") {
            let (input, body_is_default) = lean_input(input);
            if body_is_default {
                m.insert("input".into(), input);
                m.insert("body_is_default".into(), Value::Bool(true));
            }
        }
        Ok((v, new_spec))
    }

    /// A spec's content hash, and the spec to store with it when `specs` may
    /// not hold it yet.
    fn spec_ref(&self, spec: &impl Serialize) -> Result<(String, Option<NewSpec>)> {
        let bytes = serde_json::to_vec(spec)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut hash = String::with_capacity(32);
        for b in &digest.as_ref()[..16] {
            let _ = std::fmt::Write::write_fmt(&mut hash, format_args!("{b:02x}"));
        }
        let known = self
            .known_specs
            .lock()
            .map(|k| k.contains(&hash))
            .unwrap_or(false);
        let new_spec = (!known).then(|| (hash.clone(), bytes));
        Ok((hash, new_spec))
    }

    /// The events a run written whole keeps in its summary's record, as they
    /// were: what the summary already says is filled back in (see `append`).
    fn events_in_summary(&self, run_id: &str) -> Result<Vec<Event>> {
        let Some(record) = self.runs.get(run_key(run_id))? else {
            return Ok(Vec::new());
        };
        let (s, held) = read_stored(&unpacked(&record)?, run_id)?;
        let Some(held) = held else {
            return Ok(Vec::new());
        };
        held_events(&s, &held)?
            .into_iter()
            .map(|v| Ok(serde_json::from_value(self.full_start(v)?)?))
            .collect()
    }

    /// A stored event back as it was (see `lean_start`).
    fn full_start(&self, mut v: Value) -> Result<Value> {
        let Value::Object(m) = &mut v else {
            return Ok(v);
        };
        if let Some(Value::String(hash)) = m.remove("spec_ref") {
            let spec = self
                .specs
                .get(hash.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("the spec {hash} of a stored run")))?;
            m.insert("spec".into(), serde_json::from_slice(&spec)?);
        }
        if m.remove("body_is_default") == Some(Value::Bool(true)) {
            if let Some(input) = m.get_mut("input") {
                full_input(input);
            }
        }
        Ok(v)
    }
}

/// One prefix of an index read newest first; `head` is its next key.
struct IndexScan {
    /// The prefix's length (what precedes time and id in a key).
    skip: usize,
    /// The status a run must have to list from this scan, if any.
    status: Option<RunStatus>,
    iter: std::iter::Rev<sled::Iter>,
    head: Option<sled::IVec>,
}

impl IndexScan {
    /// The head's time and id (empty once the scan is done).
    fn rest(&self) -> &[u8] {
        self.head
            .as_ref()
            .and_then(|k| k.get(self.skip..))
            .unwrap_or_default()
    }
}

fn parse_cursor(c: &str) -> Result<(Millis, String)> {
    let (ts, id) = c.split_once('-').ok_or(StoreError::Cursor)?;
    Ok((ts.parse().map_err(|_| StoreError::Cursor)?, id.to_string()))
}

impl RunStore for SledStore {
    fn put_workflow(
        &self,
        name: &str,
        source: &str,
        spec: &WorkflowSpec,
        create: bool,
        now: Millis,
    ) -> Result<(WorkflowVersion, bool)> {
        use sled::transaction::ConflictableTransactionError;
        use sled::Transactional;
        // One transaction: two writers of the same workflow never both take
        // the same version number, and a create never overwrites another's.
        let mut held = self.journal.hold();
        let changes = RefCell::new(Changes::default());
        let r = (&self.workflows, &self.wf_versions).transaction(|(workflows, versions)| {
            changes.borrow_mut().clear();
            let workflows = rec(workflows, T::Workflows, &changes);
            let versions = rec(versions, T::WfVersions, &changes);
            let abort = |e: StoreError| ConflictableTransactionError::Abort(e);
            let latest = workflows
                .get(name.as_bytes())?
                .map(|v| u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4])));
            let version = match (create, latest) {
                (true, Some(_)) => {
                    return Err(abort(StoreError::Conflict(format!("workflow {name:?}"))))
                }
                (false, None) => {
                    return Err(abort(StoreError::NotFound(format!("workflow {name:?}"))))
                }
                (_, Some(l)) => {
                    // The same document again (an apply run twice, a PUT
                    // retried): no version of its own. Unless it reads as
                    // another spec now (this version of the engine derives
                    // more from it, as an RFC-0022 document's namespace):
                    // then it is a version, so that it runs as it reads.
                    let mut key = scoped(name);
                    key.extend_from_slice(&l.to_be_bytes());
                    let same = versions
                        .get(key)?
                        .and_then(|v| serde_json::from_slice::<WorkflowVersion>(&v).ok())
                        .filter(|w| w.source == source && w.spec == *spec);
                    if let Some(w) = same {
                        return Ok((w, false));
                    }
                    l + 1
                }
                // Made again after a delete: its numbers go on from the deleted
                // one's, so that the old runs' versions name no new source.
                (true, None) => {
                    let retired = workflows.get(retired_key(name))?;
                    if retired.is_some() {
                        workflows.remove(retired_key(name))?;
                    }
                    retired.map_or(0, |v| {
                        u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]))
                    }) + 1
                }
            };
            let wv = WorkflowVersion {
                name: name.to_string(),
                version,
                source: source.to_string(),
                spec: spec.clone(),
                created_at: now,
            };
            let mut key = scoped(name);
            key.extend_from_slice(&version.to_be_bytes());
            let bytes = serde_json::to_vec(&wv).map_err(|e| abort(StoreError::Json(e)))?;
            versions.insert(key, bytes)?;
            workflows.insert(name.as_bytes(), version.to_be_bytes())?;
            Ok((wv, true))
        });
        if r.as_ref().is_ok_and(|(_, stored)| *stored) {
            held.record(&changes.into_inner());
            self.forget_latest(name);
        }
        r.map_err(from_tx)
    }

    fn workflow(&self, name: &str, version: Option<u32>) -> Result<Option<WorkflowVersion>> {
        if version.is_some() {
            return self.read_workflow(name, version);
        }
        let Ok(latest) = self.latest.lock() else {
            return self.read_workflow(name, None);
        };
        if let Some(w) = latest.by_name.get(name) {
            return Ok(Some(w.clone()));
        }
        let changes = latest.changes;
        drop(latest);
        let read = self.read_workflow(name, None)?;
        if let (Some(w), Ok(mut latest)) = (&read, self.latest.lock()) {
            if latest.changes == changes {
                latest.by_name.insert(name.to_string(), w.clone());
            }
        }
        Ok(read)
    }

    fn workflow_versions(&self, name: &str) -> Result<Vec<WorkflowVersion>> {
        self.wf_versions
            .scan_prefix(scoped(name))
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    fn list_workflows(&self) -> Result<Vec<WorkflowVersion>> {
        let mut out = Vec::new();
        for kv in self.workflows.iter() {
            let (k, _) = kv?;
            if k.starts_with(&[0]) {
                continue; // a deleted workflow's last version number
            }
            let name = String::from_utf8_lossy(&k).to_string();
            if let Some(w) = self.workflow(&name, None)? {
                out.push(w);
            }
        }
        Ok(out)
    }

    fn delete_workflow(&self, name: &str) -> Result<bool> {
        let deleted = self.write(|c| {
            let existed = self.workflows.remove(name.as_bytes())?;
            c.remove(T::Workflows as u8, name.as_bytes());
            if let Some(last) = &existed {
                let key = retired_key(name);
                self.workflows.insert(&key, last)?;
                c.insert(T::Workflows as u8, &key, last);
            }
            for kv in self.wf_versions.scan_prefix(scoped(name)) {
                let k = kv?.0;
                self.wf_versions.remove(&k)?;
                c.remove(T::WfVersions as u8, &k);
            }
            Ok(existed.is_some())
        });
        // After the removal, so that no reader keeps what it read before.
        self.forget_latest(name);
        deleted
    }

    fn workflow_exists(&self, name: &str) -> bool {
        // What is kept exists (a delete drops it once done).
        if self
            .latest
            .lock()
            .is_ok_and(|l| l.by_name.contains_key(name))
        {
            return true;
        }
        self.workflows
            .contains_key(name.as_bytes())
            .unwrap_or(false)
    }

    fn append(&self, run_id: &str, first_seq: u64, events: &[Event]) -> Result<Option<RunSummary>> {
        if events.is_empty() {
            return Ok(None);
        }
        // A run written whole (start to end in one batch) keeps its events in
        // its summary's record; other batches are one value each: one event as
        // an object (as older versions stored every event), several as an
        // array.
        let whole = first_seq == 0
            && matches!(events.first(), Some(Event::RunStarted { .. }))
            && events.iter().filter(|e| is_end(e)).count() == 1
            && events.last().is_some_and(is_end);
        let mut value = Vec::with_capacity(256 * events.len());
        let mut new_spec = None;
        if events.len() > 1 || whole {
            value.push(b'[');
        }
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                value.push(b',');
            }
            match e {
                Event::RunStarted {
                    spec,
                    preserved,
                    keys,
                    rules,
                    ..
                } if whole => {
                    let (spec_ref, spec) = self.spec_ref(spec)?;
                    new_spec = spec;
                    let mut m = serde_json::Map::new();
                    m.insert("type".into(), "RunStarted".into());
                    m.insert("spec_ref".into(), spec_ref.into());
                    if !preserved.is_empty() {
                        m.insert("preserved".into(), serde_json::to_value(preserved)?);
                    }
                    if let Some(keys) = keys {
                        m.insert("keys".into(), serde_json::to_value(keys)?);
                    }
                    if *rules > 0 {
                        m.insert("rules".into(), (*rules).into());
                    }
                    serde_json::to_writer(&mut value, &m)?;
                }
                Event::RunSucceeded { .. } if whole => {
                    value.extend_from_slice(SUCCEEDED_IN_SUMMARY)
                }
                Event::RunStarted { .. } => {
                    let (lean, spec) = self.lean_start(e)?;
                    serde_json::to_writer(&mut value, &lean)?;
                    new_spec = new_spec.or(spec);
                }
                _ => serde_json::to_writer(&mut value, e)?,
            }
        }
        if events.len() > 1 || whole {
            value.push(b']');
        }
        let encoded = if whole {
            Encoded::InSummary(value)
        } else {
            Encoded::Apart(event_key(run_id, first_seq), pack(value))
        };
        self.write_run(run_id, encoded, new_spec, events)
    }

    fn events(&self, run_id: &str) -> Result<Vec<Event>> {
        let mut out = self.events_in_summary(run_id)?;
        for kv in self.run_events.scan_prefix(run_key(run_id)) {
            let (_, v) = kv?;
            let v = unpacked(&v)?;
            if !v.windows(START_TAG.len()).any(|w| w == START_TAG) {
                if v.first() == Some(&b'[') {
                    out.extend(serde_json::from_slice::<Vec<Event>>(&v)?);
                } else {
                    out.push(serde_json::from_slice(&v)?);
                }
                continue;
            }
            let values = match serde_json::from_slice::<Value>(&v)? {
                Value::Array(a) => a,
                one => vec![one],
            };
            for value in values {
                out.push(serde_json::from_value(self.full_start(value)?)?);
            }
        }
        Ok(out)
    }

    fn run(&self, run_id: &str) -> Result<Option<RunSummary>> {
        match self.runs.get(run_key(run_id))? {
            Some(v) => Ok(Some(read_summary(&unpacked(&v)?, run_id)?)),
            None => Ok(None),
        }
    }

    fn list_runs(&self, f: &RunFilter) -> Result<RunPage> {
        // The index read, and under which prefixes (each with the status its
        // entries must have): a workflow's, one status's, or every status's
        // merged newest first (the unfiltered listing).
        let wanted = |s: RunStatus| f.statuses.is_empty() || f.statuses.contains(&s);
        let (tree, prefixes) = match &f.workflow {
            Some(w) => (&self.by_workflow, vec![(workflow_prefix(w).to_vec(), None)]),
            None => (
                &self.by_status,
                RunStatus::ALL
                    .iter()
                    .filter(|s| wanted(**s))
                    .map(|s| (status_prefix(*s).to_vec(), Some(*s)))
                    .collect(),
            ),
        };
        let cursor = f.cursor.as_deref().map(parse_cursor).transpose()?;
        let mut scans = Vec::with_capacity(prefixes.len());
        for (prefix, status) in prefixes {
            let lower = from_time(&prefix, f.since.unwrap_or(0));
            let mut upper = match f.until {
                Some(u) => from_time(&prefix, u.saturating_add(1)),
                // Past every entry's time and id.
                None => [&prefix[..], &[0xff; 8]].concat(),
            };
            if let Some((ts, id)) = &cursor {
                let k = index_key(&prefix, *ts, id);
                if k < upper {
                    upper = k;
                }
            }
            if lower < upper {
                let mut iter = tree.range(lower..upper).rev();
                let head = iter.next().transpose()?.map(|(k, _)| k);
                scans.push(IndexScan {
                    skip: prefix.len(),
                    status,
                    iter,
                    head,
                });
            }
        }
        let limit = f.limit.clamp(1, 1000);
        let mut unread = match f.scan_limit {
            0 => SCANNED_PER_PAGE,
            n => n,
        };
        let mut runs = Vec::new();
        let mut next_cursor = None;
        // The last entry read: where the next page goes on from when this
        // one has read all it may.
        let mut last_read: Option<(Millis, String)> = None;
        // The newest of the scans' next entries (by time, then id).
        while let Some(scan) = scans
            .iter_mut()
            .filter(|s| s.head.is_some())
            .max_by(|a, b| a.rest().cmp(b.rest()))
        {
            let entry = keys::entry(scan.rest());
            // (A run's entry under a status it left, beside the one under its
            // own, is read with it: the cursor would pass over the second.)
            if unread == 0 && entry != last_read {
                next_cursor = last_read.map(|(at, id)| format!("{at}-{id}"));
                break;
            }
            unread = unread.saturating_sub(1);
            let status = scan.status;
            scan.head = scan.iter.next().transpose()?.map(|(k, _)| k);
            if entry.is_some() {
                last_read.clone_from(&entry);
            }
            let Some((_, id)) = entry else { continue };
            let Some(s) = self.run(&id)? else { continue };
            if status.is_some_and(|st| st != s.status) || !wanted(s.status) {
                continue;
            }
            // A workflow's prefix is a hash that another's may share.
            if f.workflow.as_ref().is_some_and(|w| *w != s.workflow) {
                continue;
            }
            if runs.len() == limit {
                let last: &RunSummary = &runs[limit - 1];
                next_cursor = Some(format!("{}-{}", last.created_at, last.id));
                break;
            }
            runs.push(s);
        }
        Ok(RunPage { runs, next_cursor })
    }

    fn unfinished_runs(&self) -> Result<Vec<String>> {
        let prefix = status_prefix(RunStatus::Running);
        let mut ids = Vec::new();
        for kv in self.by_status.scan_prefix(prefix) {
            let (k, _) = kv?;
            if let Some((_, id)) = keys::entry(&k[prefix.len()..]) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn prune(&self, cutoff: Millis) -> Result<usize> {
        let mut n = 0;
        for status in RunStatus::ALL {
            if status == RunStatus::Running {
                continue;
            }
            let prefix = status_prefix(status);
            let upper = from_time(&prefix, cutoff);
            for kv in self.by_status.range(prefix.to_vec()..upper) {
                let (k, _) = kv?;
                let Some((_, id)) = keys::entry(&k[prefix.len()..]) else {
                    continue;
                };
                match self.run(&id)? {
                    Some(s) if s.status == status => {
                        self.delete_run(&s)?;
                        n += 1;
                    }
                    // A run between two statuses: pruned under its new one.
                    Some(_) => {}
                    // An index entry left without its run: dropped.
                    None => self.remove_entry(T::ByStatus, &self.by_status, &k)?,
                }
            }
        }
        Ok(n)
    }

    fn prune_workflow(
        &self,
        workflow: &str,
        finished_before: Option<Millis>,
        keep: Option<usize>,
        settled_before: Millis,
    ) -> Result<usize> {
        let mut finished = Vec::new();
        let prefix = workflow_prefix(workflow);
        for kv in self.by_workflow.scan_prefix(prefix) {
            let (k, _) = kv?;
            let Some((_, id)) = keys::entry(&k[prefix.len()..]) else {
                continue;
            };
            match self.run(&id)? {
                // A workflow's prefix is a hash that another's may share.
                Some(s) if s.workflow != workflow => {}
                Some(s) if s.status != RunStatus::Running => finished.push(s),
                Some(_) => {}
                // An index entry left without its run: drop it.
                None => self.remove_entry(T::ByWorkflow, &self.by_workflow, &k)?,
            }
        }
        let ended = |s: &RunSummary| s.finished_at.unwrap_or(s.created_at);
        // Newest first: retention keeps the head of the list.
        finished.sort_by_key(|s| std::cmp::Reverse(ended(s)));
        let mut n = 0;
        for (i, s) in finished.iter().enumerate() {
            let expired = finished_before.is_some_and(|t| ended(s) < t);
            let over = keep.is_some_and(|k| i >= k);
            if (expired || over) && ended(s) < settled_before {
                self.delete_run(s)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn flush(&self) -> BoxFuture<Result<()>> {
        // Every write made before this call, the caller's among them.
        let upto = self.journal.recorded();
        self.ask(move |w| Ask::Sync(w, upto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    pub(super) fn started(id: &str, wf: &str, at: Millis) -> Event {
        Event::RunStarted {
            run_id: id.into(),
            workflow: wf.into(),
            version: 1,
            spec: WorkflowSpec::default(),
            input: Value::Null,
            at,
            retry_of: None,
            preserved: BTreeMap::new(),
            keys: None,
            rules: 0,
        }
    }

    fn open() -> (tempfile::TempDir, Arc<SledStore>) {
        let dir = tempfile::tempdir().unwrap();
        let db = pool_manager::store::open_waiting(
            &sled::Config::new().path(dir.path().join("db")),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let s = SledStore::open(&db, &dir.path().join("journal")).unwrap();
        (dir, s)
    }

    /// A backup reads the trees while writes go on: a write to a key it
    /// has already read reaches the backup through the journal's copy.
    #[tokio::test]
    async fn a_backup_holds_the_writes_made_while_it_read() {
        let (_d, s) = open();
        let spec = WorkflowSpec::default();
        s.put_workflow("a", "first", &spec, true, 1).unwrap();
        s.put_workflow("gone", "x", &spec, true, 1).unwrap();
        /// Updates `a` once the backup has passed it, as it writes `gone`.
        struct Meanwhile<'a>(&'a SledStore, Vec<u8>, bool);
        impl std::io::Write for Meanwhile<'_> {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                if !self.2 && data == b"gone" {
                    self.2 = true;
                    let spec = WorkflowSpec::default();
                    self.0.put_workflow("a", "second", &spec, false, 2).unwrap();
                    self.0.put_workflow("b", "new", &spec, true, 2).unwrap();
                }
                self.1.extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Meanwhile(&s, Vec::new(), false);
        let counts = s.export(&mut out, || false).unwrap();
        assert!(out.2, "the backup read workflow `gone`");
        assert!(counts.during > 0);
        s.delete_workflow("gone").unwrap();
        // Restored: as the store stood when the backup ended.
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let records = crate::backup::restore(&db, &out.1[..]).unwrap();
        assert_eq!(records, counts.records);
        let r = SledStore::open(&db, &dir.path().join("journal")).unwrap();
        let latest = |name| {
            r.workflow(name, None)
                .unwrap()
                .map(|w| (w.version, w.source))
        };
        assert_eq!(latest("a"), Some((2, "second".into())));
        assert_eq!(latest("b"), Some((1, "new".into())));
        assert_eq!(latest("gone"), Some((1, "x".into())));
    }

    #[tokio::test]
    async fn concurrent_updates_each_get_their_own_version() {
        let (_d, s) = open();
        let spec = WorkflowSpec::default();
        s.put_workflow("w", "v1", &spec, true, 1).unwrap();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                let spec = spec.clone();
                std::thread::spawn(move || {
                    s.put_workflow("w", &format!("by {i}"), &spec, false, 2)
                        .unwrap()
                        .0
                        .version
                })
            })
            .collect();
        let mut versions: Vec<u32> = writers.into_iter().map(|t| t.join().unwrap()).collect();
        versions.sort();
        assert_eq!(versions, (2..=9).collect::<Vec<u32>>());
        assert_eq!(s.workflow_versions("w").unwrap().len(), 9);
    }

    /// Each run reads its workflow's latest version (kept in memory between
    /// changes): a read after an update, a delete or a new create is of
    /// what was written last.
    #[tokio::test]
    async fn the_latest_workflow_read_is_the_last_written() {
        let (_d, s) = open();
        let spec = WorkflowSpec::default();
        let latest = |s: &SledStore| {
            s.workflow("w", None)
                .unwrap()
                .map(|w| (w.version, w.source))
        };
        assert_eq!(latest(&s), None);
        s.put_workflow("w", "one", &spec, true, 1).unwrap();
        assert_eq!(latest(&s), Some((1, "one".into())));
        s.put_workflow("w", "two", &spec, false, 2).unwrap();
        assert_eq!(latest(&s), Some((2, "two".into())));
        assert!(s.delete_workflow("w").unwrap());
        assert_eq!(latest(&s), None);
        assert!(!s.workflow_exists("w"));
        s.put_workflow("w", "again", &spec, true, 3).unwrap();
        assert_eq!(latest(&s), Some((3, "again".into())));
        assert_eq!(s.list_workflows().unwrap()[0].source, "again");
    }

    /// The same document again stores no version, unless this engine reads
    /// it as another spec than the stored version's (a workflow stored by an
    /// engine that derived less from it): then it runs as it now reads.
    #[tokio::test]
    async fn the_same_document_read_as_another_spec_is_a_version() {
        let (_d, s) = open();
        let old = WorkflowSpec::default();
        let now = WorkflowSpec {
            output: "A".into(),
            ..WorkflowSpec::default()
        };
        s.put_workflow("w", "doc", &old, true, 1).unwrap();
        let (v, stored) = s.put_workflow("w", "doc", &old, false, 2).unwrap();
        assert_eq!((v.version, stored), (1, false));
        let (v, stored) = s.put_workflow("w", "doc", &now, false, 3).unwrap();
        assert_eq!((v.version, stored, v.spec), (2, true, now));
    }

    #[tokio::test]
    async fn workflow_versions() {
        let (_d, s) = open();
        let spec = WorkflowSpec::default();
        assert_eq!(
            s.put_workflow("a", "x", &spec, true, 1).unwrap().0.version,
            1
        );
        assert!(matches!(
            s.put_workflow("a", "x", &spec, true, 1),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.put_workflow("b", "x", &spec, false, 1),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            s.put_workflow("a", "y", &spec, false, 2).unwrap().0.version,
            2
        );
        assert_eq!(s.workflow("a", None).unwrap().unwrap().source, "y");
        assert_eq!(s.workflow("a", Some(1)).unwrap().unwrap().source, "x");
        // The latest version's document again: that version, nothing stored.
        let (same, stored) = s.put_workflow("a", "y", &spec, false, 3).unwrap();
        assert_eq!((same.version, same.created_at, stored), (2, 2, false));
        assert_eq!(s.workflow_versions("a").unwrap().len(), 2);
        assert_eq!(s.list_workflows().unwrap().len(), 1);
        assert!(s.delete_workflow("a").unwrap());
        assert!(!s.workflow_exists("a"));
        assert!(s.workflow("a", None).unwrap().is_none());
        assert!(s.list_workflows().unwrap().is_empty());
        // Made again, it goes on from the deleted one's versions (its old runs
        // name 1 and 2), and is listed once.
        let again = s.put_workflow("a", "z", &spec, true, 3).unwrap();
        assert_eq!(again.0.version, 3);
        assert_eq!(s.workflow_versions("a").unwrap().len(), 1);
        assert_eq!(s.list_workflows().unwrap().len(), 1);
        assert!(s.workflow("a", Some(1)).unwrap().is_none());
        assert_eq!(
            s.put_workflow("a", "w", &spec, false, 4).unwrap().0.version,
            4
        );
    }

    pub(super) fn succeeded(at: Millis) -> Event {
        Event::RunSucceeded {
            output: json!("done"),
            headers: BTreeMap::new(),
            at,
        }
    }

    fn listed(s: &SledStore, status: RunStatus) -> Vec<String> {
        let page = s
            .list_runs(&RunFilter {
                statuses: vec![status],
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        page.runs.into_iter().map(|r| r.id).collect()
    }

    #[tokio::test]
    async fn a_run_written_whole_or_event_by_event_reads_back_the_same() {
        let (_d, s) = open();
        let events = vec![started("whole", "w", 10), succeeded(20)];
        // Start to end in one append (a short run).
        let whole = s.append("whole", 0, &events).unwrap();
        // One event per append, as a long run (and every older version) writes.
        let started = s.append("parts", 0, &events[..1]).unwrap();
        assert_eq!(started.unwrap().status, RunStatus::Running);
        assert_eq!(listed(&s, RunStatus::Running), vec!["parts"]);
        let parts = s.append("parts", 1, &events[1..]).unwrap();
        for (id, written) in [("whole", whole), ("parts", parts)] {
            assert_eq!(s.events(id).unwrap(), events, "{id}");
            let summary = s.run(id).unwrap().unwrap();
            assert_eq!(
                written,
                Some(summary.clone()),
                "the summary append returns is the one read back"
            );
            assert_eq!(summary.status, RunStatus::Succeeded, "{id}");
            assert_eq!(summary.output, Some(json!("done")), "{id}");
            assert_eq!(summary.finished_at, Some(20), "{id}");
        }
        assert_eq!(listed(&s, RunStatus::Running), Vec::<String>::new());
        let mut done = listed(&s, RunStatus::Succeeded);
        done.sort();
        assert_eq!(done, vec!["parts", "whole"]);

        // A later end rewrites a whole run's summary: the events it held stay,
        // before the ones written apart.
        let cancelled = Event::RunCancelled {
            reason: "late".into(),
            at: 30,
        };
        s.append("whole", 2, std::slice::from_ref(&cancelled))
            .unwrap();
        let mut all = events.clone();
        all.push(cancelled);
        assert_eq!(s.events("whole").unwrap(), all);
        assert_eq!(
            s.run("whole").unwrap().unwrap().status,
            RunStatus::Cancelled
        );
        assert_eq!(listed(&s, RunStatus::Cancelled), vec!["whole"]);
    }

    #[tokio::test]
    async fn a_run_start_names_its_spec_and_stores_a_request_body_once() {
        let (_d, s) = open();
        let spec: WorkflowSpec =
            serde_json::from_value(json!({"output": "A", "tasks": {"A": {"run": "noop"}}}))
                .unwrap();
        let input = json!({"body": {"k": "v"}, "default": {"k": "v"}, "headers": {}, "query": {}, "method": "POST"});
        // "a" is written whole (one append, start to end), "b" in two.
        for (id, whole) in [("a", true), ("b", false)] {
            let start = Event::RunStarted {
                run_id: id.into(),
                workflow: "w".into(),
                version: 1,
                spec: spec.clone(),
                input: input.clone(),
                at: 1,
                retry_of: None,
                preserved: BTreeMap::new(),
                // A retry's inherited keys come back whole either way.
                keys: Some(Box::new(BTreeMap::from([(
                    "T".to_string(),
                    "r0/T/1".to_string(),
                )]))),
                rules: crate::state::RULES,
            };
            let events = vec![start, succeeded(2)];
            if whole {
                s.append(id, 0, &events).unwrap();
            } else {
                s.append(id, 0, &events[..1]).unwrap();
                s.append(id, 1, &events[1..]).unwrap();
            }
            assert_eq!(s.events(id).unwrap(), events);
            assert_eq!(s.run(id).unwrap().unwrap().input, input);
            let records: Vec<String> = s
                .run_events
                .scan_prefix(run_key(id))
                .values()
                .chain(s.runs.get(run_key(id)).transpose())
                .map(|v| String::from_utf8_lossy(&unpacked(&v.unwrap()).unwrap()).into_owned())
                .collect();
            let all = records.join("\n");
            assert!(!all.contains("noop"), "the spec is not copied: {all}");
            // A run written whole is one record, holding the input and the
            // output once; in parts, the start and the summary hold each their
            // copy of the input.
            assert_eq!(records.len(), if whole { 1 } else { 3 }, "{all}");
            assert_eq!(
                all.matches("\"k\"").count(),
                if whole { 1 } else { 2 },
                "{all}"
            );
            assert_eq!(
                all.matches("done").count(),
                if whole { 1 } else { 2 },
                "{all}"
            );
        }
        assert_eq!(s.specs.len(), 1, "one copy of the spec");
    }

    /// What a reader sees of the store: workflows, runs with their events,
    /// and the listings by status.
    fn view(s: &SledStore) -> Value {
        let runs = s
            .list_runs(&RunFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let events: Vec<_> = runs
            .runs
            .iter()
            .map(|r| serde_json::to_value(s.events(&r.id).unwrap()).unwrap())
            .collect();
        json!({
            "workflows": serde_json::to_value(s.list_workflows().unwrap()).unwrap(),
            "runs": serde_json::to_value(&runs).unwrap(),
            "events": events,
            "running": listed(s, RunStatus::Running),
            "succeeded": listed(s, RunStatus::Succeeded),
        })
    }

    /// Writes a workflow, a finished run, a running one and a deleted
    /// workflow, and waits for the group commit.
    async fn write_some(s: &SledStore) {
        let spec = WorkflowSpec::default();
        s.put_workflow("w", "src", &spec, true, 1).unwrap();
        s.put_workflow("w", "src2", &spec, false, 2).unwrap();
        s.put_workflow("gone", "src", &spec, true, 3).unwrap();
        assert!(s.delete_workflow("gone").unwrap());
        s.append("done", 0, &[started("done", "w", 10)]).unwrap();
        s.append("done", 1, &[succeeded(11)]).unwrap();
        s.append("open", 0, &[started("open", "w", 12)]).unwrap();
        s.flush().await.unwrap();
    }

    #[tokio::test]
    async fn what_a_flush_acknowledged_survives_a_crash_before_sled_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, copy) = (dir.path().join("journal"), dir.path().join("copy"));
        // sled in memory, never flushed before the "crash": only the journal
        // holds the writes (no checkpoint in this test's time).
        let lost = sled::Config::new().temporary(true).open().unwrap();
        let s = SledStore::open_with(&lost, &journal, Duration::from_secs(3600)).unwrap();
        write_some(&s).await;
        let before = view(&s);
        assert_eq!(before["succeeded"], json!(["done"]), "{before}");
        // The crash: what is on disk now is all that is left.
        std::fs::create_dir(&copy).unwrap();
        for entry in std::fs::read_dir(&journal).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
        // A write cut short by the crash, never acknowledged.
        let mut segments: Vec<_> = std::fs::read_dir(&copy)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segments.sort();
        let last = segments.last().unwrap();
        let end = crate::journal::end_of_records(&std::fs::read(last).unwrap());
        let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[200, 0, 0, 0, 1, 2, 3], end as u64).unwrap();
        drop(f);

        let fresh = sled::Config::new().temporary(true).open().unwrap();
        let restored = SledStore::open(&fresh, &copy).unwrap();
        assert_eq!(view(&restored), before);
        assert_eq!(
            restored.run("open").unwrap().unwrap().status,
            RunStatus::Running
        );
        assert_eq!(
            restored.unfinished_runs().unwrap(),
            vec!["open".to_string()]
        );
        // Replayed and flushed into sled: the journal starts empty again.
        let left: Vec<_> = std::fs::read_dir(&copy).unwrap().collect();
        assert_eq!(left.len(), 1, "one new, empty segment");
        let bytes = std::fs::read(left[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(crate::journal::records(&bytes), (Vec::new(), true));

        // Replaying over a sled that already holds the writes changes nothing.
        drop(restored);
        for entry in std::fs::read_dir(&journal).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
        let again = SledStore::open(&fresh, &copy).unwrap();
        assert_eq!(view(&again), before);
    }

    #[tokio::test]
    async fn a_checkpoint_leaves_the_writes_in_sled_and_the_journal_empty() {
        let dir = tempfile::tempdir().unwrap();
        let db = pool_manager::store::open_waiting(
            &sled::Config::new().path(dir.path().join("db")),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let journal = dir.path().join("journal");
        let s = SledStore::open_with(&db, &journal, Duration::from_secs(3600)).unwrap();
        write_some(&s).await;
        let before = view(&s);
        s.journal.checkpoint(&db).unwrap();
        let segments: Vec<_> = std::fs::read_dir(&journal)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(segments.len(), 1);
        let records = || {
            let bytes = std::fs::read(segments[0].path()).unwrap();
            crate::journal::records(&bytes).0.len()
        };
        assert_eq!(records(), 0);
        // Writes after the checkpoint go to the new segment and reopen the same.
        s.append("open", 1, &[succeeded(20)]).unwrap();
        s.flush().await.unwrap();
        assert_eq!(records(), 1);
        let after = view(&s);
        assert_ne!(after, before);
        drop(s);
        let reopened = SledStore::open(&db, &journal).unwrap();
        assert_eq!(view(&reopened), after);
        assert_eq!(
            reopened.run("open").unwrap().unwrap().status,
            RunStatus::Succeeded
        );
    }

    #[tokio::test]
    async fn an_end_written_in_part_is_repaired_at_start() {
        let (_d, s) = open();
        let events = vec![started("r", "w", 10), succeeded(20)];
        s.append("r", 0, &events).unwrap();
        // A crash left the end's summary, but the status index as it was.
        let key = |st: RunStatus| s.index_status(st, 10, "r");
        s.by_status.remove(key(RunStatus::Succeeded)).unwrap();
        s.by_status.insert(key(RunStatus::Running), &[]).unwrap();
        assert_eq!(s.unfinished_runs().unwrap(), vec!["r".to_string()]);
        assert_eq!(listed(&s, RunStatus::Succeeded), Vec::<String>::new());
        s.repair_finished("r", &events[1]).unwrap();
        assert!(s.unfinished_runs().unwrap().is_empty());
        assert_eq!(listed(&s, RunStatus::Succeeded), vec!["r"]);
        assert_eq!(s.run("r").unwrap().unwrap().status, RunStatus::Succeeded);
    }

    #[tokio::test]
    async fn a_rare_filter_is_read_in_bounded_pages_that_miss_and_repeat_nothing() {
        let (_d, s) = open();
        // 40 runs, four to a millisecond, of two workflows; four of `w`'s
        // succeeded, the rest still run.
        let ended = [3, 4, 18, 38];
        for i in 0..40u64 {
            let id = format!("r{i:02}");
            let wf = if i % 5 == 1 { "x" } else { "w" };
            s.append(&id, 0, &[started(&id, wf, 1000 + i / 4)]).unwrap();
            if ended.contains(&i) {
                s.append(&id, 1, &[succeeded(2000)]).unwrap();
            }
        }
        let filter = |cursor: Option<String>, scan_limit| RunFilter {
            workflow: Some("w".into()),
            statuses: vec![RunStatus::Succeeded],
            limit: 2,
            cursor,
            scan_limit,
            ..Default::default()
        };
        // Unbounded enough: a full page.
        let page = s.list_runs(&filter(None, 0)).unwrap();
        let ids: Vec<_> = page.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r38", "r18"]);
        // Five entries read a page: short pages, each with a cursor, that
        // together list every match once, newest first.
        let (mut all, mut cursor, mut pages, mut short) = (Vec::new(), None, 0, 0);
        loop {
            let page = s.list_runs(&filter(cursor, 5)).unwrap();
            pages += 1;
            if page.runs.len() < 2 && page.next_cursor.is_some() {
                short += 1;
            }
            all.extend(page.runs.into_iter().map(|r| r.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
            assert!(pages < 40, "the cursor does not move on");
        }
        assert_eq!(all, ["r38", "r18", "r04", "r03"]);
        // `w` has 32 entries: at five a page, seven pages; five of them
        // hold less than the limit but go on (the sixth is r04 and r03).
        assert_eq!(pages, 7);
        assert_eq!(short, 5);
    }

    #[tokio::test]
    async fn a_page_that_ends_early_does_not_cut_between_a_runs_two_entries() {
        let (_d, s) = open();
        for i in 0..4u64 {
            let id = format!("a{i}");
            s.append(&id, 0, &[started(&id, "w", 1000 + i)]).unwrap();
        }
        // a2 runs, but an entry under `succeeded` is left beside its own
        // (as between two writes of a status): read first, it lists nothing.
        let stale = s.index_status(RunStatus::Succeeded, 1002, "a2");
        s.by_status.insert(&stale, &[]).unwrap();
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = s
                .list_runs(&RunFilter {
                    statuses: vec![RunStatus::Running, RunStatus::Succeeded],
                    limit: 10,
                    cursor,
                    scan_limit: 2,
                    ..Default::default()
                })
                .unwrap();
            all.extend(page.runs.into_iter().map(|r| r.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(all, ["a3", "a2", "a1", "a0"]);
    }

    #[tokio::test]
    async fn list_runs_with_filters_and_cursor() {
        let (_d, s) = open();
        for i in 0..10u64 {
            let id = format!("run{i:02}");
            let wf = if i % 2 == 0 { "even" } else { "odd" };
            s.append(&id, 0, &[started(&id, wf, 1000 + i)]).unwrap();
            if i % 3 == 0 {
                let end = Event::RunSucceeded {
                    output: Value::Null,
                    headers: BTreeMap::new(),
                    at: 2000,
                };
                s.append(&id, 1, &[end]).unwrap();
            } else if i == 7 {
                let end = Event::RunCancelled {
                    reason: "stopped".into(),
                    at: 2000,
                };
                s.append(&id, 1, &[end]).unwrap();
            }
        }
        s.flush().await.unwrap();
        // An entry left under a status the run no longer has (as between two
        // writes of its end) lists nothing.
        let stale = s.index_status(RunStatus::Running, 1009, "run09");
        s.by_status.insert(&stale, &[]).unwrap();
        let page = s
            .list_runs(&RunFilter {
                limit: 4,
                ..Default::default()
            })
            .unwrap();
        let ids: Vec<_> = page.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec!["run09", "run08", "run07", "run06"]);
        let page2 = s
            .list_runs(&RunFilter {
                limit: 4,
                cursor: page.next_cursor.clone(),
                ..Default::default()
            })
            .unwrap();
        let ids: Vec<_> = page2.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec!["run05", "run04", "run03", "run02"]);
        let page3 = s
            .list_runs(&RunFilter {
                limit: 4,
                cursor: page2.next_cursor.clone(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page3.runs.len(), 2);
        assert!(page3.next_cursor.is_none());
        s.by_status.remove(&stale).unwrap();

        let even = s
            .list_runs(&RunFilter {
                workflow: Some("even".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(even.runs.len(), 5);
        let done = s
            .list_runs(&RunFilter {
                statuses: vec![RunStatus::Succeeded],
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let ids: Vec<_> = done.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec!["run09", "run06", "run03", "run00"]);
        let both = s
            .list_runs(&RunFilter {
                workflow: Some("even".into()),
                statuses: vec![RunStatus::Running],
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let ids: Vec<_> = both.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec!["run08", "run04", "run02"]);
        // Several statuses, merged newest first; with a workflow too.
        let ended = |workflow: Option<&str>| {
            let page = s
                .list_runs(&RunFilter {
                    workflow: workflow.map(str::to_string),
                    statuses: vec![RunStatus::Succeeded, RunStatus::Cancelled],
                    limit: 100,
                    ..Default::default()
                })
                .unwrap();
            page.runs.into_iter().map(|r| r.id).collect::<Vec<_>>()
        };
        assert_eq!(ended(None), ["run09", "run07", "run06", "run03", "run00"]);
        assert_eq!(ended(Some("odd")), ["run09", "run07", "run03"]);
        let window = s
            .list_runs(&RunFilter {
                since: Some(1002),
                until: Some(1004),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(window.runs.len(), 3);
        assert_eq!(s.unfinished_runs().unwrap().len(), 5);
        assert_eq!(s.events("run03").unwrap().len(), 2);

        assert_eq!(s.prune(1005).unwrap(), 2); // run00 and run03 finished before 1005
        assert!(s.run("run00").unwrap().is_none());
        assert!(s.events("run00").unwrap().is_empty());
        assert_eq!(
            s.list_runs(&RunFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .runs
            .len(),
            8
        );
    }

    /// A workflow's history retention: newest first by finish time, the ones
    /// past `keep` or finished before the cutoff go; running runs and other
    /// workflows' runs stay.
    #[tokio::test]
    async fn a_workflows_retention_keeps_its_newest_finished_runs() {
        let (_d, s) = open();
        // Created in order, finished in reverse order: finish time decides.
        for (i, finished) in [
            (0u64, Some(5000u64)),
            (1, Some(4000)),
            (2, Some(3000)),
            (3, None),
        ] {
            let id = format!("r{i}");
            s.append(&id, 0, &[started(&id, "kept", 1000 + i)]).unwrap();
            if let Some(at) = finished {
                let end = Event::RunSucceeded {
                    output: Value::Null,
                    headers: BTreeMap::new(),
                    at,
                };
                s.append(&id, 1, &[end]).unwrap();
            }
        }
        s.append("other", 0, &[started("other", "other", 1)])
            .unwrap();
        let end = Event::RunSucceeded {
            output: Value::Null,
            headers: BTreeMap::new(),
            at: 2,
        };
        s.append("other", 1, &[end]).unwrap();
        s.flush().await.unwrap();
        let left = |s: &SledStore| -> Vec<String> {
            let mut ids: Vec<String> = s
                .list_runs(&RunFilter {
                    limit: 100,
                    ..Default::default()
                })
                .unwrap()
                .runs
                .into_iter()
                .map(|r| r.id)
                .collect();
            ids.sort();
            ids
        };

        // Runs that finished at or after the settle time are kept whatever the policy.
        assert_eq!(s.prune_workflow("kept", None, Some(0), 3000).unwrap(), 0);
        assert_eq!(
            s.prune_workflow("kept", None, Some(2), u64::MAX).unwrap(),
            1
        );
        assert_eq!(left(&s), ["other", "r0", "r1", "r3"]);
        assert!(s.events("r2").unwrap().is_empty());
        assert_eq!(
            s.prune_workflow("kept", Some(4500), None, u64::MAX)
                .unwrap(),
            1
        );
        assert_eq!(left(&s), ["other", "r0", "r3"]);
        assert_eq!(
            s.prune_workflow("kept", None, Some(0), u64::MAX).unwrap(),
            1
        );
        assert_eq!(left(&s), ["other", "r3"], "a running run is never deleted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushes_are_grouped() {
        let (_d, s) = open();
        for i in 0..50 {
            let id = format!("r{i}");
            s.append(&id, 0, &[started(&id, "w", i)]).unwrap();
        }
        let before = s.flush_count();
        // Fifty callers ask while the journal is busy (held, as a write in
        // progress holds it): one sync the flusher may have begun, and one for
        // everyone else. Timing cannot change that count, as it could when the
        // callers raced the flusher.
        let waiting: Vec<_> = {
            let _busy = s.journal.hold();
            (0..50).map(|_| s.flush()).collect()
        };
        for w in waiting {
            w.await.unwrap();
        }
        let flushes = s.flush_count() - before;
        assert!(flushes <= 2, "{flushes} flushes for 50 callers");
    }

    /// A write an earlier group commit made durable is answered durable,
    /// even once the journal broke (a full disk) since: its writer must not
    /// take back what a restart would bring back. A write made after the
    /// break is not.
    #[tokio::test]
    async fn a_write_made_durable_before_the_journal_broke_is_answered_so() {
        let (_d, s) = open();
        s.append("r1", 0, &[started("r1", "w", 1)]).unwrap();
        let upto = s.journal.recorded();
        s.journal.sync().unwrap();
        s.break_journal_for_test();
        let (tx, rx) = oneshot::channel();
        s.flush_tx.send(Ask::Sync(tx, upto)).unwrap();
        assert_eq!(rx.await.unwrap(), Ok(()));
        s.append("r2", 0, &[started("r2", "w", 2)]).unwrap();
        assert!(s.flush().await.is_err());
        s.mend_journal_for_test();
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use serde_json::json;

    /// A one-task run as the first packed format stored it (see `record`),
    /// its id inside its summary, and the spec its start names.
    const OLD_ID: &str = "01a22f70-465a-7478-b199-76347e7544af";
    const OLD_AT: Millis = 1796092216922;
    const OLD_SPEC: &str = "c1604f8c10cd78f28177ca2131b3f66d";

    /// The ids a listing's first page names.
    fn listed(s: &SledStore, filter: RunFilter) -> Vec<String> {
        let page = s
            .list_runs(&RunFilter {
                limit: 10,
                ..filter
            })
            .unwrap();
        page.runs.into_iter().map(|r| r.id).collect()
    }

    /// A key as versions before 2026-12 wrote it: `name\0`, time, id.
    fn string_key(name: &str, ts: Millis, id: &str) -> Vec<u8> {
        [name.as_bytes(), &[0], &ts.to_be_bytes(), id.as_bytes()].concat()
    }

    #[tokio::test]
    async fn runs_stored_under_string_keys_read_back_after_an_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let db = pool_manager::store::open_waiting(
            &sled::Config::new().path(dir.path().join("db")),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let tree = |t: T| db.open_tree(TREE_NAMES[t as usize]).unwrap();
        // A finished run written whole, and a running one event by event.
        let old_summary: &[u8] = include_bytes!("../tests/data/packed-summary-v1.bin");
        let spec = json!({"output": "t0", "tasks": {"t0": {"run": "noop"}}});
        tree(T::Specs)
            .insert(OLD_SPEC, serde_json::to_vec(&spec).unwrap())
            .unwrap();
        tree(T::StrRuns).insert(OLD_ID, old_summary).unwrap();
        tree(T::StrByStatus)
            .insert(string_key("succeeded", OLD_AT, OLD_ID), &[])
            .unwrap();
        tree(T::StrByWorkflow)
            .insert(string_key("fp", OLD_AT, OLD_ID), &[])
            .unwrap();
        let open_id = "01a22f70-4e00-7000-8000-000000000001";
        let start = Event::RunStarted {
            run_id: open_id.into(),
            workflow: "fp".into(),
            version: 1,
            spec: serde_json::from_value(spec).unwrap(),
            input: json!({"n": 1}),
            at: OLD_AT + 5,
            retry_of: None,
            preserved: Default::default(),
            keys: None,
            rules: 0,
        };
        let summary = json!({"id": open_id, "workflow": "fp", "version": 1,
            "status": "running", "created_at": OLD_AT + 5, "finished_at": null,
            "input": {"n": 1}, "output": null, "error": null, "retry_of": null});
        tree(T::StrRuns)
            .insert(open_id, serde_json::to_vec(&summary).unwrap())
            .unwrap();
        tree(T::StrRunEvents)
            .insert(
                [open_id.as_bytes(), &[0], &0u64.to_be_bytes()].concat(),
                serde_json::to_vec(&start).unwrap(),
            )
            .unwrap();
        tree(T::StrByStatus)
            .insert(string_key("running", OLD_AT + 5, open_id), &[])
            .unwrap();
        tree(T::StrByWorkflow)
            .insert(string_key("fp", OLD_AT + 5, open_id), &[])
            .unwrap();

        let s = SledStore::open(&db, &dir.path().join("journal")).unwrap();
        let old = s.run(OLD_ID).unwrap().unwrap();
        assert_eq!(
            (
                old.id.as_str(),
                old.workflow.as_str(),
                old.status,
                old.created_at
            ),
            (OLD_ID, "fp", RunStatus::Succeeded, OLD_AT)
        );
        assert_eq!(old.input["default"], "hello");
        let kinds: Vec<String> = s
            .events(OLD_ID)
            .unwrap()
            .iter()
            .map(|e| serde_json::to_value(e).unwrap()["type"].to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "\"RunStarted\"",
                "\"TaskDispatched\"",
                "\"TaskSucceeded\"",
                "\"RunSucceeded\""
            ]
        );
        assert_eq!(s.events(open_id).unwrap(), vec![start]);
        assert_eq!(s.unfinished_runs().unwrap(), vec![open_id.to_string()]);
        let ids = listed(
            &s,
            RunFilter {
                workflow: Some("fp".into()),
                ..Default::default()
            },
        );
        assert_eq!(ids, [open_id, OLD_ID]);
        // The old trees are gone; the running run goes on in the new ones.
        let names: Vec<sled::IVec> = db.tree_names();
        assert!(!names.iter().any(|n| n.as_ref() == b"runs"), "{names:?}");
        let end = Event::RunSucceeded {
            output: json!(2),
            headers: Default::default(),
            at: OLD_AT + 9,
        };
        s.append(open_id, 1, &[end]).unwrap();
        let ids = listed(
            &s,
            RunFilter {
                statuses: vec![RunStatus::Succeeded],
                ..Default::default()
            },
        );
        assert_eq!(ids, [open_id, OLD_ID]);
        assert!(s.unfinished_runs().unwrap().is_empty());
    }

    /// Two workflows whose names' hashes begin alike share an index prefix:
    /// listing or pruning one never touches the other's runs.
    #[tokio::test]
    async fn a_workflow_lists_and_prunes_only_its_own_runs_under_a_shared_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = pool_manager::store::open_waiting(
            &sled::Config::new().path(dir.path().join("db")),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let s = SledStore::open(&db, &dir.path().join("journal")).unwrap();
        let run = |id: &str, wf: &str| {
            let events = [
                super::tests::started(id, wf, 10),
                super::tests::succeeded(11),
            ];
            s.append(id, 0, &events).unwrap();
        };
        run("mine", "a");
        run("theirs", "b");
        // As a collision of the hashes would file it.
        s.by_workflow
            .insert(index_key(&workflow_prefix("a"), 10, "theirs"), &[])
            .unwrap();
        let ids = listed(
            &s,
            RunFilter {
                workflow: Some("a".into()),
                ..Default::default()
            },
        );
        assert_eq!(ids, ["mine"]);
        assert_eq!(
            s.prune_workflow("a", None, Some(0), Millis::MAX).unwrap(),
            1
        );
        assert!(s.run("mine").unwrap().is_none());
        assert!(s.run("theirs").unwrap().is_some());
    }
}
