//! Resource bookkeeping: environments, functions and packages as stored
//! resources, with their validation and the references between them. What a
//! change means for running instances is the pool's business (`pool.rs`); this
//! file only tells it.

use crate::error::{Error, Result};
use crate::pool::PoolManager;
use crate::resources::{Environment, Function, FunctionPackage, PackageRef};
use crate::store::Kind;

impl PoolManager {
    // ---- packages ----

    pub fn put_package(&self, filename: &str, bytes: &[u8]) -> Result<PackageRef> {
        self.inner.packages.put(filename, bytes)
    }

    // ---- environments ----

    pub fn environment(&self, name: &str) -> Result<Environment> {
        self.inner
            .store
            .get(Kind::Environment, name)?
            .ok_or_else(|| not_found(Kind::Environment, name))
    }
    /// Where a stored package is on this machine: its file, or its directory.
    pub fn package_path(
        &self,
        package: &crate::resources::PackageRef,
    ) -> Result<std::path::PathBuf> {
        self.inner.packages.path(package)
    }

    pub fn environments(&self) -> Result<Vec<Environment>> {
        self.inner.store.environments()
    }

    /// Where image references are looked up (`<data>/images/refs/...`).
    pub fn images_dir(&self) -> std::path::PathBuf {
        self.inner.cfg.data_dir.join("images")
    }

    /// Whether this server's backend runs OCI images (the process backend does not).
    pub(crate) fn runs_images(&self) -> bool {
        self.isolation().backend != "process"
    }

    /// What `env`'s image stands for here (see [`Environment::image_use`]).
    pub fn image_use(&self, env: &Environment) -> Result<Option<crate::resources::ImageUse>> {
        if self.inner.cfg.backend.pulls_images() {
            // The cluster's nodes pull the reference as it is.
            return Ok(None);
        }
        env.image_use_on(&self.images_dir(), self.runs_images())
    }

    /// Checks `env` and what its instances would run; returns the latter.
    fn admit_environment(&self, env: &Environment) -> Result<Environment> {
        env.validate()?;
        let effective = if self.inner.cfg.backend.pulls_images() {
            env.clone()
        } else {
            env.resolved_on(&self.images_dir(), self.runs_images())?
        };
        self.inner.cfg.backend.accepts(&effective)?;
        Ok(effective)
    }

    pub async fn create_environment(&self, env: Environment) -> Result<Environment> {
        let effective = self.admit_environment(&env)?;
        self.inner
            .store
            .create(Kind::Environment, &env.key(), &env)
            .await?;
        self.inner
            .logs
            .reopen(&crate::pool::generic_log_key(&env.key()));
        self.inner.install_environment(effective);
        Ok(env)
    }

    /// Replaces an environment; the same environment again changes nothing (its
    /// pool is not refilled), unless its image was rebuilt at the same path
    /// since: its instances are then replaced as for any change.
    pub async fn update_environment(&self, env: Environment) -> Result<Environment> {
        let effective = self.admit_environment(&env)?;
        if self.environment(&env.key())? == env && !self.inner.image_changed(&effective) {
            return Ok(env);
        }
        self.inner
            .store
            .put(Kind::Environment, &env.key(), &env)
            .await?;
        self.inner.install_environment(effective);
        Ok(env)
    }

    pub async fn delete_environment(&self, name: &str) -> Result<()> {
        self.environment(name)?;
        let users: Vec<String> = self
            .inner
            .store
            .functions()?
            .into_iter()
            .filter(|f| f.env_key() == name)
            .map(|f| f.key())
            .collect();
        let packages: Vec<String> = self
            .packages()?
            .into_iter()
            .filter(|p| crate::resources::qualified(&p.namespace, &p.environment) == name)
            .map(|p| crate::resources::qualified(&p.namespace, &p.name))
            .collect();
        // Everything that holds it, said at once.
        let holders: Vec<String> = [("functions", &users), ("packages", &packages)]
            .into_iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(what, names)| format!("{what} {}", names.join(", ")))
            .collect();
        if !holders.is_empty() {
            return Err(Error::Conflict(format!(
                "environment {name:?} is used by {}; delete or move them first",
                holders.join(" and ")
            )));
        }
        self.inner.store.delete(Kind::Environment, name).await?;
        self.inner.remove_environment(name);
        // Its generic instances' log goes with it, as a function's does.
        self.inner.logs.remove(&crate::pool::generic_log_key(name));
        Ok(())
    }

    // ---- functions ----

    pub fn function(&self, name: &str) -> Result<Function> {
        self.inner
            .store
            .get(Kind::Function, name)?
            .ok_or_else(|| not_found(Kind::Function, name))
    }
    /// Where the code function `name` runs is: its own, or its package's
    /// build (or deployment); while the package builds again, the last one
    /// it built.
    pub fn function_code(&self, name: &str) -> Result<std::path::PathBuf> {
        let f = self.function(name)?;
        let code = self.inner.code_of(&f)?;
        self.inner.packages.path(&code)
    }

    pub fn functions(&self) -> Result<Vec<Function>> {
        self.inner.store.functions()
    }

    fn check_function_refs(&self, f: &Function) -> Result<()> {
        f.validate()?;
        if self
            .inner
            .store
            .get::<Environment>(Kind::Environment, &f.env_key())?
            .is_none()
        {
            return Err(Error::Conflict(format!(
                "function {:?}: environment {:?} does not exist; create it first",
                f.name, f.env
            )));
        }
        match &f.package {
            FunctionPackage::Stored(package) => {
                self.inner.packages.claim(package).map_err(|_| {
                    Error::Conflict(format!(
                        "function {:?}: package {} does not exist; upload the code first",
                        f.name, package.sha256
                    ))
                })?;
            }
            FunctionPackage::Named { packageref } => {
                self.inner.check_named_package(f, packageref)?;
            }
        }
        self.check_data_refs(f)
    }

    pub async fn create_function(&self, mut f: Function) -> Result<Function> {
        let _refs = self.inner.data.refs.lock().await;
        self.check_function_refs(&f)?;
        f.generation = 1;
        self.inner
            .store
            .create(Kind::Function, &f.key(), &f)
            .await?;
        self.inner.logs.reopen(&f.key());
        self.inner.install_function(f.clone());
        Ok(f)
    }

    /// Replaces a function. New requests go to instances of the new generation;
    /// in-flight ones finish on the old instances, which are then retired.
    pub async fn update_function(&self, mut f: Function) -> Result<Function> {
        let _refs = self.inner.data.refs.lock().await;
        self.check_function_refs(&f)?;
        let old = self.function(&f.key())?;
        // The same function again changes nothing: no new generation, no
        // instance retired (what `spec apply` sends when nothing changed).
        f.generation = old.generation;
        if f == old {
            return Ok(old);
        }
        f.generation = old.generation + 1;
        self.inner.store.put(Kind::Function, &f.key(), &f).await?;
        self.inner.install_function(f.clone());
        Ok(f)
    }

    /// Deletes a function. Whoever keeps triggers checks first that none
    /// still targets it.
    pub async fn delete_function(&self, name: &str) -> Result<()> {
        self.function(name)?;
        self.inner.store.delete(Kind::Function, name).await?;
        self.inner.remove_function(name);
        // A function made later under the name starts with a log of its own.
        self.inner.logs.remove(name);
        Ok(())
    }
}

pub(crate) fn not_found(kind: Kind, name: &str) -> Error {
    Error::NotFound {
        kind: kind.noun(),
        name: name.to_string(),
    }
}

/// Not found, for a resource that lives in a namespace.
pub(crate) fn not_found_in(kind: &'static str, namespace: &str, name: &str) -> Error {
    Error::NotFound {
        kind,
        name: format!("{namespace}/{name}"),
    }
}
