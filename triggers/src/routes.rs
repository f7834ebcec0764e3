//! HTTP triggers as stored resources: create, update, delete and list routes
//! (kept in sled), and the live `RouteTable` the router matches against,
//! rebuilt on every change.

use std::sync::{Arc, RwLock};

use pool_manager::store::Records;
use pool_manager::{Error, Result};

use crate::invoke::Invoker;
use crate::route::Route;
use crate::table::RouteTable;

pub struct Routes {
    records: Records,
    table: RwLock<Arc<RouteTable>>,
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "route",
        name: name.to_string(),
    }
}

impl Routes {
    pub fn open(db: &sled::Db) -> Result<Routes> {
        let records = Records::open(db, "routes", "route")?;
        let table = RouteTable::new(records.list::<Route>()?);
        Ok(Routes {
            records,
            table: RwLock::new(Arc::new(table)),
        })
    }

    /// The routes as the router matches them now.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get(&self, key: &str) -> Result<Route> {
        self.records.get(key)?.ok_or_else(|| not_found(key))
    }

    pub fn list(&self) -> Result<Vec<Route>> {
        self.records.list()
    }

    pub async fn create(&self, mut route: Route, invoker: &Invoker) -> Result<Route> {
        route.normalize();
        invoker.retarget_to_workflow(&route.namespace, &mut route.function, &mut route.workflow);
        self.check(&route)?;
        self.records.create(&route.key(), &route).await?;
        self.reload()?;
        Ok(route)
    }

    pub async fn update(&self, mut route: Route, invoker: &Invoker) -> Result<Route> {
        route.normalize();
        invoker.retarget_to_workflow(&route.namespace, &mut route.function, &mut route.workflow);
        self.check(&route)?;
        if self.get(&route.key())? == route {
            return Ok(route);
        }
        self.records.put(&route.key(), &route).await?;
        self.reload()?;
        Ok(route)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        if !self.records.delete(key).await? {
            return Err(not_found(key));
        }
        self.reload()
    }

    /// The routes that target function `key` (alone, or by weight beside others).
    pub fn targeting_function(&self, key: &str) -> Result<Vec<Route>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.function_keys().iter().any(|f| f == key))
            .collect())
    }

    /// A route may name a function or workflow that does not exist yet, as
    /// Fission's HTTPTrigger may (its router resolves the target at each
    /// call): scripts and `spec apply` make triggers before or without their
    /// targets, and a call meanwhile is a 404 naming what is missing.
    fn check(&self, route: &Route) -> Result<()> {
        route.validate()?;
        let clash = self
            .list()?
            .into_iter()
            .find(|r| r.key() != route.key() && r.answers_as(route));
        if let Some(other) = clash {
            // Routes of every namespace share the URL space: the other may be
            // in a namespace the caller does not list.
            let place = if other.namespace == route.namespace {
                String::new()
            } else {
                format!(" in namespace {:?}", other.namespace)
            };
            let path = match (&other.url, &other.prefix) {
                (Some(url), _) => url.clone(),
                (None, Some(prefix)) => format!("{prefix}*"),
                (None, None) => String::new(),
            };
            return Err(Error::Conflict(format!(
                "route {:?} would answer the same requests as route {:?}{place} ({path}); routes of all namespaces share the URL paths: pick another path, method or host",
                route.name, other.name
            )));
        }
        Ok(())
    }

    fn reload(&self) -> Result<()> {
        let table = Arc::new(RouteTable::new(self.list()?));
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
        Ok(())
    }
}
