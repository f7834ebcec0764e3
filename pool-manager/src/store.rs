//! Persistence of resources in sled, one tree per kind, keyed by name with the
//! JSON resource as value: environments and functions here, the trigger layer's
//! resources through the same `Records`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::resources::{Environment, Function};

/// Opens a sled database, waiting up to `within` while only its lock stands
/// in the way: a server killed a moment ago holds it until it has fully
/// exited, and a database closed in this process holds it until sled's last
/// I/O thread lets go of the file (sled's own tests wait on it for that).
pub fn open_waiting(config: &sled::Config, within: std::time::Duration) -> sled::Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            Err(e) if is_locked(&e) && started.elapsed() < within => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Held (shared) by a write that changes several trees of the database at
/// once outside the workflow engine (whose own writes a backup follows through
/// its journal), and exclusively while a backup reads those trees: a backup
/// then holds such a change whole or not at all.
static WHOLE_WRITES: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Taken around a write of several trees at once (see `WHOLE_WRITES`), and
/// dropped before the next `.await`; cheap while no backup reads. While one
/// does, the writer waits without holding its thread (the lock prefers the
/// backup: no new write starts while it waits for those under way).
pub async fn whole_write() -> std::sync::RwLockReadGuard<'static, ()> {
    fn now() -> Option<std::sync::RwLockReadGuard<'static, ()>> {
        match WHOLE_WRITES.try_read() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
    loop {
        if let Some(g) = now() {
            return g;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Taken by a backup while it reads the trees outside the workflow engine:
/// writes of several trees at once wait meanwhile.
pub fn no_whole_writes() -> std::sync::RwLockWriteGuard<'static, ()> {
    WHOLE_WRITES.write().unwrap_or_else(|p| p.into_inner())
}

/// Whether opening a database failed because something holds its lock.
pub fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// One kind of resource in its own sled tree: keyed by name, the JSON resource
/// as value; every change flushed before it returns. Also what the trigger
/// layer keeps its resources in.
#[derive(Clone)]
pub struct Records {
    db: sled::Db,
    tree: sled::Tree,
    noun: &'static str,
}

impl Records {
    /// The records of tree `tree`, named `noun` in errors.
    pub fn open(db: &sled::Db, tree: &str, noun: &'static str) -> Result<Records> {
        Ok(Records {
            db: db.clone(),
            tree: db.open_tree(tree)?,
            noun,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.tree.get(name)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    pub fn list<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.tree.iter().values().map(|v| decode(&v?)).collect()
    }

    pub async fn put<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
        self.tree.insert(name, bytes)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Stores a new resource; refuses (atomically) when the name is taken.
    pub async fn create<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
        let swapped = self
            .tree
            .compare_and_swap(name, None as Option<&[u8]>, Some(bytes))?;
        if swapped.is_err() {
            return Err(Error::AlreadyExists {
                kind: self.noun,
                name: name.to_string(),
            });
        }
        self.db.flush_async().await?;
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<bool> {
        let existed = self.tree.remove(name)?.is_some();
        self.db.flush_async().await?;
        Ok(existed)
    }
}

/// Environments and functions.
#[derive(Clone)]
pub struct ResourceStore {
    envs: Records,
    functions: Records,
}

impl ResourceStore {
    pub fn open(db: &sled::Db) -> Result<ResourceStore> {
        Ok(ResourceStore {
            envs: Records::open(db, "environments", Kind::Environment.noun())?,
            functions: Records::open(db, "functions", Kind::Function.noun())?,
        })
    }

    fn records(&self, kind: Kind) -> &Records {
        match kind {
            Kind::Environment => &self.envs,
            Kind::Function => &self.functions,
        }
    }

    pub fn get<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> Result<Option<T>> {
        self.records(kind).get(name)
    }

    pub fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        self.records(kind).list()
    }

    pub async fn put<T: Serialize>(&self, kind: Kind, name: &str, value: &T) -> Result<()> {
        self.records(kind).put(name, value).await
    }

    /// Stores a new resource; refuses (atomically) when the name is taken.
    pub async fn create<T: Serialize>(&self, kind: Kind, name: &str, value: &T) -> Result<()> {
        self.records(kind).create(name, value).await
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<bool> {
        self.records(kind).delete(name).await
    }

    pub fn environments(&self) -> Result<Vec<Environment>> {
        self.list(Kind::Environment)
    }
    pub fn functions(&self) -> Result<Vec<Function>> {
        self.list(Kind::Function)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Environment,
    Function,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Environment => "environment",
            Kind::Function => "function",
        }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("corrupt record: {e}")))
}
