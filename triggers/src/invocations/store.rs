//! Where asynchronous invocations are kept, in sled: each record by id (ids
//! are UUIDv7, so key order is the order they were accepted in), its request
//! body apart, an index by function, the pending set (queued or running,
//! resumed when the server starts) and the dead-letter list. Changes to the
//! sets go in one transaction with the record.

use bytes::Bytes;
use pool_manager::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use super::record::{Invocation, Status};

pub struct Store {
    db: sled::Db,
    records: Tree,
    bodies: Tree,
    by_function: Tree,
    pending: Tree,
    dead: Tree,
    /// `X-Fission-Dedup-Key`s: function key, NUL, dedup key -> the id of the
    /// invocation that key made (while its record is kept).
    dedup: Tree,
    /// How many invocations the pending set holds (kept with it).
    pending_count: AtomicUsize,
}

/// Which invocations a page lists.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The function's key (`name`, or `namespace/name`).
    pub function: Option<String>,
    pub namespace: Option<String>,
    /// Invocations in any of these statuses (every status when empty).
    pub statuses: Vec<Status>,
}

/// Index entries one page reads at most: a filter few invocations pass (one
/// function's failures among its million successes) ends a page early, with
/// a cursor, rather than reading every record for it.
pub const SCANNED_PER_PAGE: usize = 10_000;

fn encode(inv: &Invocation) -> Result<Vec<u8>> {
    serde_json::to_vec(inv).map_err(|e| Error::Internal(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Invocation> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Storage(format!("corrupt invocation record: {e}")))
}

fn index_key(function: &str, id: &str) -> Vec<u8> {
    let mut k = function.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn storage(e: TransactionError<()>) -> Error {
    match e {
        TransactionError::Storage(e) => Error::from(e),
        TransactionError::Abort(()) => Error::Storage("transaction aborted".into()),
    }
}

impl Store {
    pub fn open(db: &sled::Db) -> Result<Store> {
        let pending = db.open_tree("invocations_pending")?;
        Ok(Store {
            db: db.clone(),
            records: db.open_tree("invocations")?,
            bodies: db.open_tree("invocation_bodies")?,
            by_function: db.open_tree("invocations_by_function")?,
            pending_count: AtomicUsize::new(pending.len()),
            pending,
            dead: db.open_tree("invocations_dead")?,
            dedup: db.open_tree("invocations_dedup")?,
        })
    }

    /// How many invocations are dead letters.
    pub fn dead_count(&self) -> usize {
        self.dead.len()
    }

    /// How many invocations are queued or running.
    pub fn pending_count(&self) -> usize {
        self.pending_count.load(Ordering::SeqCst)
    }

    /// Keeps the count in step with a change of one invocation's membership.
    fn counted(&self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => {
                self.pending_count.fetch_add(1, Ordering::SeqCst);
            }
            (true, false) => {
                self.pending_count.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }

    /// Stores a newly accepted invocation and its body, and flushes: once
    /// this returns, a crash does not lose it. When its dedup key is one a
    /// kept invocation of the same function made, nothing is stored: that
    /// invocation is answered instead.
    pub async fn insert(&self, inv: &Invocation, body: &[u8]) -> Result<Option<Invocation>> {
        let record = encode(inv)?;
        let id = inv.id.as_bytes();
        let index = index_key(&inv.function_key(), &inv.id);
        let dedup = inv.dedup_key().map(|k| index_key(&inv.function_key(), k));
        let first = {
            let _whole = pool_manager::store::whole_write().await;
            (
                &self.records,
                &self.bodies,
                &self.by_function,
                &self.pending,
                &self.dedup,
            )
                .transaction(|(r, b, f, p, d)| {
                    if let Some(key) = &dedup {
                        if let Some(first) = d.get(key.as_slice())? {
                            if let Some(kept) = r.get(&first)? {
                                return Ok(Some(kept));
                            }
                        }
                        d.insert(key.as_slice(), id)?;
                    }
                    r.insert(id, record.as_slice())?;
                    b.insert(id, body)?;
                    f.insert(index.as_slice(), &[][..])?;
                    let was = p.insert(id, &[][..])?.is_some();
                    self.counted(was, true);
                    Ok::<_, ConflictableTransactionError<()>>(None)
                })
                .map_err(storage)?
        };
        if let Some(kept) = first {
            return decode(&kept).map(Some);
        }
        self.db.flush_async().await?;
        Ok(None)
    }

    pub fn get(&self, id: &str) -> Result<Option<Invocation>> {
        self.records.get(id)?.map(|v| decode(&v)).transpose()
    }

    pub fn body(&self, id: &str) -> Result<Bytes> {
        Ok(self
            .bodies
            .get(id)?
            .map(|v| Bytes::copy_from_slice(&v))
            .unwrap_or_default())
    }

    /// Writes a record whose status keeps it pending (an attempt starting),
    /// without waiting for the disk: a crash then resumes it anyway.
    pub fn put(&self, inv: &Invocation) -> Result<()> {
        self.records.insert(inv.id.as_bytes(), encode(inv)?)?;
        Ok(())
    }

    /// Writes a record with the sets its status puts it in, and flushes.
    pub async fn save(&self, inv: &Invocation) -> Result<()> {
        let record = encode(inv)?;
        let id = inv.id.as_bytes();
        let status = inv.status;
        {
            let _whole = pool_manager::store::whole_write().await;
            (&self.records, &self.pending, &self.dead)
                .transaction(|(r, p, d)| {
                    r.insert(id, record.as_slice())?;
                    let was = if status.is_pending() {
                        p.insert(id, &[][..])?
                    } else {
                        p.remove(id)?
                    }
                    .is_some();
                    if status == Status::Dead {
                        d.insert(id, &[][..])?;
                    } else {
                        d.remove(id)?;
                    }
                    Ok::<bool, ConflictableTransactionError<()>>(was)
                })
                .map(|was| self.counted(was, status.is_pending()))
                .map_err(storage)?;
        }
        self.db.flush_async().await?;
        Ok(())
    }

    /// The ids of the invocations still to be tried, oldest first.
    pub fn pending(&self) -> Result<Vec<String>> {
        self.pending
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Up to `limit` invocations that pass `filter`, newest first, older than
    /// the one with id `before` when given; and the cursor of the next page.
    pub fn page(
        &self,
        filter: &Filter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Invocation>, Option<String>)> {
        self.page_reading(filter, before, limit, SCANNED_PER_PAGE)
    }

    /// [`Store::page`], reading at most `scan_limit` index entries: past
    /// them the page ends early (with fewer than `limit`, even none) and a
    /// cursor to go on from.
    fn page_reading(
        &self,
        filter: &Filter,
        before: Option<&str>,
        limit: usize,
        scan_limit: usize,
    ) -> Result<(Vec<Invocation>, Option<String>)> {
        // The ids to look at, newest first, from the smallest set that holds them.
        let only = |pick: fn(&Status) -> bool| {
            !filter.statuses.is_empty() && filter.statuses.iter().all(pick)
        };
        let ids: Box<dyn Iterator<Item = sled::Result<Vec<u8>>>> = match &filter.function {
            Some(f) => {
                let prefix = index_key(f, "");
                let end = match before {
                    Some(b) => index_key(f, b),
                    None => {
                        let mut e = prefix.clone();
                        e.push(0xff);
                        e
                    }
                };
                let skip = prefix.len();
                Box::new(
                    self.by_function
                        .range(prefix..end)
                        .rev()
                        .map(move |kv| kv.map(|(k, _)| k[skip..].to_vec())),
                )
            }
            None if only(|s| *s == Status::Dead) => Box::new(Self::newest(&self.dead, before)),
            None if only(|s| s.is_pending()) => Box::new(Self::newest(&self.pending, before)),
            None => Box::new(Self::newest(&self.records, before)),
        };
        let mut out = Vec::new();
        let mut unread = scan_limit;
        let mut last_read: Option<Vec<u8>> = None;
        for id in ids {
            let id = id?;
            if unread == 0 {
                // Read all a page may (a filter few pass): the next page
                // goes on after the last one read.
                let next = last_read.map(|l| String::from_utf8_lossy(&l).into_owned());
                return Ok((out, next));
            }
            unread -= 1;
            last_read = Some(id.clone());
            let Some(v) = self.records.get(&id)? else {
                continue;
            };
            let inv = decode(&v)?;
            if !(filter.statuses.is_empty() || filter.statuses.contains(&inv.status))
                || filter
                    .namespace
                    .as_deref()
                    .is_some_and(|ns| ns != inv.namespace)
            {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|i: &Invocation| i.id.clone());
                return Ok((out, next));
            }
            out.push(inv);
        }
        Ok((out, None))
    }

    fn newest(
        tree: &Tree,
        before: Option<&str>,
    ) -> impl Iterator<Item = sled::Result<Vec<u8>>> + use<> {
        let iter = match before {
            Some(b) => tree.range(..b.as_bytes().to_vec()),
            None => tree.iter(),
        };
        iter.rev().map(|kv| kv.map(|(k, _)| k.to_vec()))
    }

    /// Deletes a finished invocation: its record, body and indexes.
    async fn remove(&self, inv: &Invocation) -> Result<()> {
        let id = inv.id.as_bytes();
        let index = index_key(&inv.function_key(), &inv.id);
        let dedup = inv.dedup_key().map(|k| index_key(&inv.function_key(), k));
        let _whole = pool_manager::store::whole_write().await;
        (
            &self.records,
            &self.bodies,
            &self.by_function,
            &self.dead,
            &self.dedup,
        )
            .transaction(|(r, b, f, d, k)| {
                r.remove(id)?;
                b.remove(id)?;
                f.remove(index.as_slice())?;
                d.remove(id)?;
                // Its key, unless a later invocation took it over.
                if let Some(key) = &dedup {
                    if k.get(key.as_slice())?.is_some_and(|v| v.as_ref() == id) {
                        k.remove(key.as_slice())?;
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(storage)?;
        Ok(())
    }

    /// Deletes the dead letters of namespace `namespace` (of its function
    /// `function` alone when given); returns how many.
    pub async fn purge_dead(&self, namespace: &str, function: Option<&str>) -> Result<usize> {
        let mut removed = 0;
        for entry in self.dead.iter() {
            let (id, _) = entry?;
            let Some(v) = self.records.get(&id)? else {
                self.dead.remove(&id)?;
                continue;
            };
            let inv = decode(&v)?;
            if inv.namespace != namespace
                || function.is_some_and(|f| f != inv.function)
                || inv.status != Status::Dead
            {
                continue;
            }
            self.remove(&inv).await?;
            removed += 1;
        }
        if removed > 0 {
            self.db.flush_async().await?;
        }
        Ok(removed)
    }

    /// Removes invocations that succeeded or failed before `cutoff_ms`
    /// (dead ones stay: they are the dead-letter list); returns how many.
    pub async fn prune(&self, cutoff_ms: u64) -> Result<usize> {
        let mut removed = 0;
        for entry in self.records.iter() {
            let (_, v) = entry?;
            let inv = decode(&v)?;
            // Ids sort by creation: nothing past here finished before the cutoff.
            if inv.created_ms >= cutoff_ms {
                break;
            }
            let finished = matches!(inv.status, Status::Succeeded | Status::Failed);
            if !finished || inv.finished_ms.is_none_or(|f| f >= cutoff_ms) {
                continue;
            }
            self.remove(&inv).await?;
            removed += 1;
        }
        if removed > 0 {
            self.db.flush_async().await?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocations::record::StoredRequest;

    fn invocation(id: &str, function: &str, status: Status, finished: Option<u64>) -> Invocation {
        Invocation {
            id: id.into(),
            namespace: "default".into(),
            function: function.into(),
            status,
            created_ms: id.trim_start_matches('0').parse().unwrap_or(0),
            updated_ms: 0,
            finished_ms: finished,
            next_attempt_ms: None,
            cycle: 0,
            cycle_started_ms: 0,
            attempts: Vec::new(),
            request: StoredRequest {
                method: "POST".into(),
                path: "/".into(),
                query: None,
                headers: Vec::new(),
                params: Vec::new(),
                body_bytes: 0,
            },
            response: None,
            error: None,
            reason: None,
            destination_invocation: None,
            destination_error: None,
        }
    }

    /// A store on a database of its own (kept while the directory is).
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let db = pool_manager::store::open_waiting(
            &sled::Config::new().path(dir.path()),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let store = Store::open(&db).unwrap();
        (dir, store)
    }

    fn ids(page: &[Invocation]) -> Vec<&str> {
        page.iter().map(|i| i.id.as_str()).collect()
    }

    #[tokio::test]
    async fn pages_are_newest_first_by_function_and_status() {
        let (_dir, store) = store();
        for (id, f) in [("01", "a"), ("02", "b"), ("03", "a"), ("04", "a")] {
            store
                .insert(&invocation(id, f, Status::Queued, None), b"x")
                .await
                .unwrap();
        }
        assert_eq!(store.pending().unwrap(), ["01", "02", "03", "04"]);
        let by_a = Filter {
            function: Some("a".into()),
            ..Filter::default()
        };
        let (page, next) = store.page(&by_a, None, 2).unwrap();
        assert_eq!(
            (ids(&page), next.as_deref()),
            (vec!["04", "03"], Some("03"))
        );
        let (page, next) = store.page(&by_a, Some("03"), 2).unwrap();
        assert_eq!((ids(&page), next), (vec!["01"], None));

        let mut dead = store.get("02").unwrap().unwrap();
        dead.status = Status::Dead;
        store.save(&dead).await.unwrap();
        let deads = Filter {
            statuses: vec![Status::Dead],
            ..Filter::default()
        };
        assert_eq!(ids(&store.page(&deads, None, 10).unwrap().0), ["02"]);
        let either = Filter {
            statuses: vec![Status::Dead, Status::Queued],
            ..Filter::default()
        };
        assert_eq!(
            ids(&store.page(&either, None, 10).unwrap().0),
            ["04", "03", "02", "01"]
        );
        assert_eq!(store.pending().unwrap(), ["01", "03", "04"]);
        assert_eq!(&store.body("02").unwrap()[..], b"x");
    }

    #[tokio::test]
    async fn a_rare_filter_is_read_in_bounded_pages_that_miss_nothing() {
        let (_dir, store) = store();
        for i in 1..=12 {
            let status = match i {
                3 | 9 => Status::Succeeded,
                _ => Status::Queued,
            };
            let id = format!("{i:02}");
            store
                .insert(&invocation(&id, "a", status, None), b"x")
                .await
                .unwrap();
        }
        // Succeeded ones have no index of their own: every record is read.
        let succeeded = Filter {
            statuses: vec![Status::Succeeded],
            ..Filter::default()
        };
        let (page, next) = store.page(&succeeded, None, 10).unwrap();
        assert_eq!((ids(&page), next), (vec!["09", "03"], None));
        // Four a page: short pages, each with the cursor of the last read.
        let mut pages = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = store
                .page_reading(&succeeded, cursor.as_deref(), 10, 4)
                .unwrap();
            pages.push((
                ids(&page).iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                next.clone(),
            ));
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let want = |ids: &[&str], next: Option<&str>| {
            (
                ids.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                next.map(str::to_string),
            )
        };
        assert_eq!(
            pages,
            [
                want(&["09"], Some("09")),
                want(&[], Some("05")),
                want(&["03"], None),
            ]
        );
    }

    #[tokio::test]
    async fn pruning_keeps_dead_letters_and_recent_ones() {
        let (_dir, store) = store();
        store
            .insert(&invocation("01", "a", Status::Succeeded, Some(5)), b"")
            .await
            .unwrap();
        store
            .insert(&invocation("02", "a", Status::Dead, Some(5)), b"")
            .await
            .unwrap();
        store
            .insert(&invocation("03", "a", Status::Failed, Some(50)), b"")
            .await
            .unwrap();
        assert_eq!(store.prune(10).await.unwrap(), 1);
        assert!(store.get("01").unwrap().is_none());
        let all = store.page(&Filter::default(), None, 10).unwrap().0;
        assert_eq!(ids(&all), ["03", "02"]);
    }

    #[tokio::test]
    async fn purging_dead_letters_keeps_other_namespaces_and_functions() {
        let (_dir, store) = store();
        for (id, ns, f) in [
            ("01", "default", "a"),
            ("02", "ns1", "a"),
            ("03", "default", "b"),
            ("04", "ns1", "b"),
        ] {
            let mut inv = invocation(id, f, Status::Queued, None);
            inv.namespace = ns.into();
            store.insert(&inv, b"").await.unwrap();
            inv.status = Status::Dead;
            store.save(&inv).await.unwrap();
        }
        assert_eq!(store.purge_dead("ns1", Some("a")).await.unwrap(), 1);
        assert_eq!(store.purge_dead("default", None).await.unwrap(), 2);
        let left = store.page(&Filter::default(), None, 10).unwrap().0;
        assert_eq!(ids(&left), ["04"]);
    }
}
