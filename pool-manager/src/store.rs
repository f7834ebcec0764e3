//! Persistence of environments, functions and routes in sled, one tree each,
//! keyed by name with the JSON resource as value.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::resources::{Environment, Function, Route};

#[derive(Clone)]
pub struct ResourceStore {
    db: sled::Db,
    envs: sled::Tree,
    functions: sled::Tree,
    routes: sled::Tree,
}

impl ResourceStore {
    pub fn open(db: &sled::Db) -> Result<ResourceStore> {
        Ok(ResourceStore {
            db: db.clone(),
            envs: db.open_tree("environments")?,
            functions: db.open_tree("functions")?,
            routes: db.open_tree("routes")?,
        })
    }

    pub fn tree(&self, kind: Kind) -> &sled::Tree {
        match kind {
            Kind::Environment => &self.envs,
            Kind::Function => &self.functions,
            Kind::Route => &self.routes,
        }
    }

    pub fn get<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> Result<Option<T>> {
        match self.tree(kind).get(name)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    pub fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        self.tree(kind)
            .iter()
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    pub async fn put<T: Serialize>(&self, kind: Kind, name: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
        self.tree(kind).insert(name, bytes)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Stores a new resource; refuses (atomically) when the name is taken.
    pub async fn create<T: Serialize>(&self, kind: Kind, name: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
        let swapped = self
            .tree(kind)
            .compare_and_swap(name, None as Option<&[u8]>, Some(bytes))?;
        if swapped.is_err() {
            return Err(Error::AlreadyExists {
                kind: kind.noun(),
                name: name.to_string(),
            });
        }
        self.db.flush_async().await?;
        Ok(())
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<bool> {
        let existed = self.tree(kind).remove(name)?.is_some();
        self.db.flush_async().await?;
        Ok(existed)
    }

    pub fn environments(&self) -> Result<Vec<Environment>> {
        self.list(Kind::Environment)
    }
    pub fn functions(&self) -> Result<Vec<Function>> {
        self.list(Kind::Function)
    }
    pub fn routes(&self) -> Result<Vec<Route>> {
        self.list(Kind::Route)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Environment,
    Function,
    Route,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Environment => "environment",
            Kind::Function => "function",
            Kind::Route => "route",
        }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("corrupt record: {e}")))
}
