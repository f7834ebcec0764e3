//! The resources users declare: environments, functions and routes (HTTP
//! triggers), with their defaults and validation (secrets and configmaps are
//! `secrets.rs`'s). Pure data; the one I/O is
//! the check that an environment's image exists and reads as an OCI image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A bundled language runtime; an environment may instead name its own command.
/// Read through `FromStr`, so a misspelt runtime is named in the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Runtime {
    Python,
    Nodejs,
    Binary,
}

impl std::str::FromStr for Runtime {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "python" | "python3" => Ok(Runtime::Python),
            "nodejs" | "node" => Ok(Runtime::Nodejs),
            "binary" => Ok(Runtime::Binary),
            other => Err(Error::Invalid(format!(
                "unknown runtime {other:?}: expected python, nodejs or binary (or give a command)"
            ))),
        }
    }
}

impl TryFrom<String> for Runtime {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

fn default_poolsize() -> usize {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub name: String,
    /// Names are unique per namespace (`default` unless given).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// A bundled runtime. Exactly one of `runtime`, `command` and `image` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// Any command that speaks the runtime protocol on `$RUNTIME_PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// An OCI image on the server's disk (a layout directory or an oci-archive
    /// tar) whose runtime speaks the protocol on port 8888; container backend only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default = "default_poolsize")]
    pub poolsize: usize,
    /// Address-space limit of each instance, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU limit in millicores (a cgroup quota on the container backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// The network instances see (container backend): the host's, or none at all.
    #[serde(default, skip_serializing_if = "Network::is_host")]
    pub network: Network,
    /// The build command of its packages that give none (Fission's
    /// `spec.builder.command`); else the builder's own steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildcmd: Option<String>,
}

/// The network an environment's instances get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Network {
    /// The host's network: functions can call out (and reach the host's loopback).
    #[default]
    Host,
    /// A network namespace of its own with only loopback: no calls out.
    None,
}

impl Network {
    fn is_host(&self) -> bool {
        *self == Network::Host
    }
}

impl TryFrom<String> for Network {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl std::str::FromStr for Network {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            other => Err(Error::Invalid(format!(
                "unknown network {other:?}: expected host or none"
            ))),
        }
    }
}

impl Environment {
    /// Its key in the store and the pool (see [`qualified`]).
    pub fn key(&self) -> String {
        qualified(&self.namespace, &self.name)
    }

    pub fn validate(&self) -> Result<()> {
        validate_name("environment", &self.name)?;
        validate_name("namespace", &self.namespace)?;
        if let Some(cmd) = &self.buildcmd {
            crate::build::check_buildcmd(&format!("environment {:?}", self.name), cmd)?;
        }
        let given = [
            self.runtime.is_some(),
            self.command.is_some(),
            self.image.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(Error::Invalid(
                    "environment: a runtime (python, nodejs, binary), a command or an image is required"
                        .into(),
                ))
            }
            1 => {}
            _ => {
                return Err(Error::Invalid(
                    "environment: give one of a runtime, a command or an image, not more".into(),
                ))
            }
        }
        if let Some(cmd) = &self.command {
            if cmd.is_empty() || cmd[0].trim().is_empty() {
                return Err(Error::Invalid(
                    "environment: command must not be empty".into(),
                ));
            }
        }
        if let Some(image) = &self.image {
            if image.trim().is_empty() || image.len() > 1024 || image.contains('\0') {
                return Err(Error::Invalid(
                    "environment: image must be a path or an image reference".into(),
                ));
            }
        }
        if self.poolsize > 64 {
            return Err(Error::Invalid(format!(
                "environment: poolsize {} is above the limit of 64",
                self.poolsize
            )));
        }
        if let Some(mb) = self.memory_mb {
            if mb < MIN_MEMORY_MB {
                return Err(Error::Invalid(format!(
                    "environment: memory_mb {mb} is below the minimum of {MIN_MEMORY_MB}"
                )));
            }
            if mb > MAX_MEMORY_MB {
                return Err(Error::Invalid(format!(
                    "environment: memory_mb {mb} is above the maximum of {MAX_MEMORY_MB} (16 TiB; leave it out for no limit)"
                )));
            }
        }
        // The kernel takes no smaller quota (1 ms of each 100 ms period): a
        // smaller one was raised to it without a word.
        if let Some(millis) = self.cpu_millis {
            if millis < MIN_CPU_MILLIS {
                return Err(Error::Invalid(format!(
                    "environment: cpu_millis {millis} is below the minimum of {MIN_CPU_MILLIS} (leave it out for no limit)"
                )));
            }
            if millis > MAX_CPU_MILLIS {
                return Err(Error::Invalid(format!(
                    "environment: cpu_millis {millis} is above the maximum of {MAX_CPU_MILLIS} (1,024 CPUs; leave it out for no limit)"
                )));
            }
        }
        Ok(())
    }

    /// The smallest `memory_mb` that works as a limit on each process's address
    /// space (the process backend's kind of limit): V8 reserves far more than it
    /// uses, and python's threads need room to start under load.
    pub fn address_space_floor_mb(&self) -> u64 {
        match self.runtime {
            Some(Runtime::Nodejs) => 768,
            Some(Runtime::Python) => 128,
            _ => MIN_MEMORY_MB,
        }
    }
}

/// What an environment's `image` stands for on this server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum ImageUse {
    /// An OCI image on this machine (a path given, or a reference found in the
    /// local image directory): the image itself runs.
    Local { path: String },
    /// One of Fission's environment images, not on this machine: the bundled
    /// runtime of the same language runs instead.
    Bundled { runtime: Runtime },
}

impl Environment {
    /// What this environment's instances run: for an `image`, the image when this
    /// machine has it (an absolute path, or a reference under
    /// `images_dir/refs/`), else the bundled runtime when the reference is one of
    /// Fission's environment or builder images; anything else is refused.
    pub fn image_use(&self, images_dir: &std::path::Path) -> Result<Option<ImageUse>> {
        self.image_use_on(images_dir, true)
    }

    /// As [`Environment::image_use`], on a backend that can run images or not:
    /// where it cannot, one of Fission's images runs as the bundled runtime even
    /// when it is on this machine.
    pub fn image_use_on(
        &self,
        images_dir: &std::path::Path,
        runs_images: bool,
    ) -> Result<Option<ImageUse>> {
        let Some(image) = &self.image else {
            return Ok(None);
        };
        if !runs_images && !image.starts_with('/') {
            if let Some(runtime) = fission_runtime(image) {
                return Ok(Some(ImageUse::Bundled { runtime }));
            }
        }
        let found = if image.starts_with('/') {
            Some(image.clone())
        } else {
            crate::backend::image::local_reference(images_dir, image)
                .map(|p| p.to_string_lossy().into_owned())
        };
        if let Some(path) = found {
            crate::backend::image::check(&path)
                .map_err(|e| Error::Invalid(format!("environment: {e}")))?;
            return Ok(Some(ImageUse::Local { path }));
        }
        match fission_runtime(image) {
            Some(runtime) => Ok(Some(ImageUse::Bundled { runtime })),
            None => Err(Error::Invalid(format!(
                "environment: image {image:?} is not on this machine, and Fusion runs its bundled runtimes only for Fission's python-env, node-env and binary-env images (and their builders); give an OCI layout or oci-archive path, or put the image under {}",
                images_dir.join("refs").display()
            ))),
        }
    }

    /// The environment as instances get it: an image reference replaced by the
    /// local image's path or by the bundled runtime it maps to.
    pub fn resolved(&self, images_dir: &std::path::Path) -> Result<Environment> {
        self.resolved_on(images_dir, true)
    }

    /// As [`Environment::resolved`], on a backend that can run images or not.
    pub fn resolved_on(
        &self,
        images_dir: &std::path::Path,
        runs_images: bool,
    ) -> Result<Environment> {
        let mut env = self.clone();
        match self.image_use_on(images_dir, runs_images)? {
            None => {}
            Some(ImageUse::Local { path }) => env.image = Some(path),
            Some(ImageUse::Bundled { runtime }) => {
                env.image = None;
                env.runtime = Some(runtime);
            }
        }
        Ok(env)
    }
}

/// The bundled runtime standing in for one of Fission's environment images
/// (`fission/python-env`, `ghcr.io/fission/node-env:1.32`, the builders, with or
/// without registry and tag), if the reference names one.
pub fn fission_runtime(reference: &str) -> Option<Runtime> {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let mut parts: Vec<&str> = without_digest.split('/').collect();
    let last = parts.pop()?;
    let repo = last.split(':').next().unwrap_or(last);
    // The organisation must be Fission's, on any registry.
    if parts.last() != Some(&"fission") {
        return None;
    }
    // A registry is a first component with a dot or a port, or `localhost`.
    let registry = |c: &str| c.contains('.') || c.contains(':') || c == "localhost";
    if parts.len() > 2 || (parts.len() == 2 && !registry(parts[0])) {
        return None;
    }
    let family = |prefix: &str| {
        repo == prefix
            || repo
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('-'))
    };
    if family("python-env") || family("python-builder") {
        Some(Runtime::Python)
    } else if family("node-env") || family("node-builder") {
        Some(Runtime::Nodejs)
    } else if family("binary-env") || family("binary-builder") {
        Some(Runtime::Binary)
    } else {
        None
    }
}

/// The smallest memory limit an environment may ask for, in MiB.
pub const MIN_MEMORY_MB: u64 = 32;

/// The smallest CPU limit an environment may ask for, in millicores.
pub const MIN_CPU_MILLIS: u64 = 10;

/// The largest memory limit an environment may ask for, in MiB (16 TiB): a
/// larger one bounds nothing on any machine, and past 8 EiB the kernel's own
/// counter cannot hold it.
pub const MAX_MEMORY_MB: u64 = 16 << 20;

/// The largest CPU limit an environment may ask for, in millicores (1,024 CPUs).
pub const MAX_CPU_MILLIS: u64 = 1_024_000;

/// Where a function's code lives: a content-addressed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRef {
    pub sha256: String,
    pub kind: PackageKind,
    /// The file name of a single-file package (kept so runtimes see `hello.py`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A function's code: stored content-addressed, or a named package (Fission's
/// `package.packageref`), whose built deployment runs when it has a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum FunctionPackage {
    Stored(PackageRef),
    Named { packageref: NamedPackageRef },
}

/// Read by its shape, so that a mistake is reported against the shape meant
/// (an untagged enum would only say that no variant matched).
impl<'de> Deserialize<'de> for FunctionPackage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Named {
            packageref: NamedPackageRef,
        }
        let value = serde_json::Value::deserialize(d)?;
        if value.get("packageref").is_some() {
            serde_json::from_value::<Named>(value)
                .map(|n| FunctionPackage::Named {
                    packageref: n.packageref,
                })
                .map_err(|e| D::Error::custom(format!("package.packageref: {e}")))
        } else {
            serde_json::from_value::<PackageRef>(value)
                .map(FunctionPackage::Stored)
                .map_err(|e| {
                    D::Error::custom(format!(
                        "package: {e} (give an uploaded archive's {{sha256, kind, filename}}, or {{packageref: {{name}}}})"
                    ))
                })
        }
    }
}

/// A named package, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPackageRef {
    pub name: String,
    #[serde(default = "crate::build::default_namespace")]
    pub namespace: String,
}

impl FunctionPackage {
    /// The named package, for a function that uses one.
    pub fn named(&self) -> Option<&NamedPackageRef> {
        match self {
            FunctionPackage::Named { packageref } => Some(packageref),
            FunctionPackage::Stored(_) => None,
        }
    }
}

impl From<PackageRef> for FunctionPackage {
    fn from(p: PackageRef) -> Self {
        FunctionPackage::Stored(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    File,
    Archive,
}

fn default_timeout() -> u64 {
    60
}
fn default_idle_timeout() -> u64 {
    120
}
fn default_concurrency() -> usize {
    10
}
fn default_rpp() -> usize {
    1
}

/// How Fission runs a function's instances. Fusion has one executor, the pool
/// of generic instances specialized on demand (Fission's `poolmgr`); a
/// `newdeploy` function is accepted and runs on the pool too, with its min
/// scale kept warm and its max scale as the cap, which is what newdeploy's
/// deployment and autoscaler give in Fission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ExecutorType {
    #[default]
    Poolmgr,
    Newdeploy,
}

impl std::str::FromStr for ExecutorType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "poolmgr" => Ok(ExecutorType::Poolmgr),
            "newdeploy" => Ok(ExecutorType::Newdeploy),
            "container" => Err(Error::Invalid(
                "executor type \"container\" is not supported: use poolmgr (or newdeploy) with an environment that runs the image".into(),
            )),
            other => Err(Error::Invalid(format!(
                "unknown executor type {other:?}: expected poolmgr or newdeploy"
            ))),
        }
    }
}

impl TryFrom<String> for ExecutorType {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
    /// Names are unique per namespace (`default` unless given); the environment,
    /// a named package and the routes to it are in the same namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub env: String,
    /// `{"sha256", "kind", "filename"}` as `/v1/archives` answers, or
    /// `{"packageref": {"name", "namespace"}}` for a named package.
    pub package: FunctionPackage,
    /// Entrypoint inside the code (`main`, `hello.main`, ...); runtime default if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Seconds a request may take before the router answers 504.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Seconds an idle specialized instance is kept.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Fission's executor type; both run on the pool (see `ExecutorType`).
    #[serde(default)]
    pub executor_type: ExecutorType,
    /// Specialized instances kept warm: started when the function is created or
    /// updated, never reaped below this by the idle reaper, replaced when they die.
    #[serde(default)]
    pub min_scale: usize,
    /// The max scale: most instances the function may have at once. Written
    /// `max_scale`; `concurrency`, its older name, is read as the same field.
    #[serde(
        rename = "max_scale",
        alias = "concurrency",
        default = "default_concurrency"
    )]
    pub concurrency: usize,
    /// Concurrent requests one instance takes.
    #[serde(default = "default_rpp")]
    pub requests_per_instance: usize,
    /// Secrets the function reads at `/secrets/<namespace>/<name>/<key>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<ObjectRef>,
    /// ConfigMaps the function reads at `/configs/<namespace>/<name>/<key>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configmaps: Vec<ObjectRef>,
    /// Environment variables set in the runtime before the code loads (the
    /// bundled runtimes; `env` is the environment's name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Bumped by every update (and by a change of a secret or configmap it
    /// lists); instances of older generations are retired.
    #[serde(default)]
    pub generation: u64,
    /// How an asynchronous call of the function (`X-Async: true`) is retried,
    /// as Fission's `invocation` (RFC-0024); platform defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<InvocationConfig>,
}

/// Fission's `invocation` of a function (RFC-0024): the retry policy of its
/// asynchronous calls and how long one may wait to succeed. Durations are Go's
/// notation (`100ms`, `2s`, `6h`); the trigger layer validates them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InvocationConfig {
    #[serde(default)]
    pub retry: InvocationRetry,
    /// How long after it was accepted (or redriven) an invocation may still be
    /// tried; past it, it is dead-lettered (default 6h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Called (asynchronously, with the result envelope) once an invocation succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<InvocationDestination>,
    /// Called (asynchronously, with the result envelope) once an invocation
    /// failed for good: a 4xx, its attempts spent, or its max age past.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<InvocationDestination>,
}

/// Fission's `DestinationRef`: where an asynchronous invocation's result goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationDestination {
    /// A function of the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<DestinationFunction>,
    /// A message-queue topic (Fission's `TopicRef`): refused until Fusion
    /// publishes to message queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<serde_json::Value>,
}

/// Fission's `FunctionReference` as a destination names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFunction {
    /// `name` (Fission's only kind of reference here).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

/// Fission's `invocation.retry`: attempts and exponential backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InvocationRetry {
    /// Attempts in all, the first included (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The delay before the first retry, doubled for each next one (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base: Option<String>,
    /// The longest delay between attempts (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_cap: Option<String>,
    /// `false` turns off the random shortening of each delay (default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// `default`, for serde's `default` of a resource's `namespace`.
pub fn default_namespace() -> String {
    crate::secrets::DEFAULT_NAMESPACE.to_string()
}

/// A function's reference to a secret or configmap, as Fission writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

impl Function {
    /// Its key in the store and the pool, and its `/fission-function/` path
    /// (see [`qualified`]).
    pub fn key(&self) -> String {
        qualified(&self.namespace, &self.name)
    }

    /// Its key, borrowed when it is in `default` (its name): for the request
    /// path, which should not allocate.
    pub fn key_ref(&self) -> std::borrow::Cow<'_, str> {
        if self.namespace == crate::secrets::DEFAULT_NAMESPACE {
            std::borrow::Cow::Borrowed(&self.name)
        } else {
            std::borrow::Cow::Owned(self.key())
        }
    }

    /// The key of its environment, which is in the same namespace.
    pub fn env_key(&self) -> String {
        qualified(&self.namespace, &self.env)
    }

    pub fn validate(&self) -> Result<()> {
        validate_name("function", &self.name)?;
        validate_name("namespace", &self.namespace)?;
        validate_name("environment", &self.env)?;
        if self.timeout_secs == 0 || self.timeout_secs > 24 * 3600 {
            return Err(Error::Invalid(format!(
                "function: timeout {} s must be between 1 and 86400",
                self.timeout_secs
            )));
        }
        if self.idle_timeout_secs == 0 {
            return Err(Error::Invalid(
                "function: idle timeout must be at least 1 s".into(),
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1000 {
            return Err(Error::Invalid(format!(
                "function: max scale (concurrency) {} must be between 1 and 1000",
                self.concurrency
            )));
        }
        if self.min_scale > self.concurrency {
            return Err(Error::Invalid(format!(
                "function: min scale {} is above max scale {}: the function may not have that many instances",
                self.min_scale, self.concurrency
            )));
        }
        if self.requests_per_instance == 0 || self.requests_per_instance > 10_000 {
            return Err(Error::Invalid(format!(
                "function: requests per instance {} must be between 1 and 10000",
                self.requests_per_instance
            )));
        }
        match &self.package {
            FunctionPackage::Stored(package) => {
                if package.sha256.len() != 64
                    || !package.sha256.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(Error::Invalid(
                        "function: package must be a sha256 hex digest".into(),
                    ));
                }
                if let Some(f) = &package.filename {
                    crate::package::validate_filename(f)?;
                }
            }
            FunctionPackage::Named { packageref } => {
                validate_name("package", &packageref.name)?;
                validate_name("namespace", &packageref.namespace)?;
                if packageref.namespace != self.namespace {
                    return Err(Error::Invalid(format!(
                        "function {:?}: package {}/{} is outside the function's namespace {:?}",
                        self.name, packageref.namespace, packageref.name, self.namespace
                    )));
                }
            }
        }
        crate::secrets::validate_function_fields(self)
    }
}

/// The key of a namespaced resource: its name in the `default` namespace,
/// `namespace/name` in any other (names hold no `/`, so keys never collide). A
/// function's key is also its path under `/fission-function/`, as in Fission.
pub fn qualified(namespace: &str, name: &str) -> String {
    if namespace == crate::secrets::DEFAULT_NAMESPACE {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Names are DNS-1123 labels: lowercase alphanumerics and '-', at most 63, starting
/// and ending with an alphanumeric.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{kind} name {name:?} is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_package_is_an_archive_or_a_named_package() {
        let stored: FunctionPackage = serde_json::from_str(&format!(
            r#"{{"sha256": "{}", "kind": "archive"}}"#,
            "a".repeat(64)
        ))
        .unwrap();
        assert!(stored.named().is_none());
        let named: FunctionPackage =
            serde_json::from_str(r#"{"packageref": {"name": "deps"}}"#).unwrap();
        let r = named.named().unwrap();
        assert_eq!((r.name.as_str(), r.namespace.as_str()), ("deps", "default"));
        // Each shape round-trips as itself.
        for p in [stored, named] {
            let back: FunctionPackage =
                serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
            assert_eq!(back, p);
        }
        let err = serde_json::from_str::<FunctionPackage>(r#"{"packageref": {"nam": "x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("package.packageref") && err.contains("nam"),
            "{err}"
        );
        let err = serde_json::from_str::<FunctionPackage>(r#"{"sha": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("packageref"), "{err}");
    }

    #[test]
    fn names() {
        assert!(validate_name("f", "hello-2").is_ok());
        for bad in ["", "Hello", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_name("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_needs_exactly_one_of_runtime_command_and_image() {
        let mut e = Environment {
            name: "py".into(),
            namespace: "default".into(),
            runtime: Some(Runtime::Python),
            command: None,
            image: None,
            poolsize: 3,
            memory_mb: None,
            cpu_millis: None,
            network: Network::Host,
            buildcmd: None,
        };
        assert!(e.validate().is_ok());
        e.command = Some(vec!["x".into()]);
        assert!(e.validate().is_err());
        e.runtime = None;
        assert!(e.validate().is_ok());
        e.command = None;
        assert!(e.validate().is_err());
        e.image = Some("fission/python-env".into());
        assert!(e.validate().is_ok());
        e.command = Some(vec!["x".into()]);
        assert!(e.validate().unwrap_err().to_string().contains("not more"));
    }

    #[test]
    fn fission_images_map_to_bundled_runtimes() {
        for (image, runtime) in [
            ("fission/python-env", Some(Runtime::Python)),
            ("fission/python-env:latest", Some(Runtime::Python)),
            (
                "ghcr.io/fission/python-env-3.10:1.34.0",
                Some(Runtime::Python),
            ),
            ("docker.io/fission/python-builder", Some(Runtime::Python)),
            ("ghcr.io/fission/node-env", Some(Runtime::Nodejs)),
            ("fission/node-builder-22:v1", Some(Runtime::Nodejs)),
            ("fission/binary-env@sha256:abcd", Some(Runtime::Binary)),
            ("localhost:5000/fission/python-env", Some(Runtime::Python)),
            ("localhost/fission/node-env:1", Some(Runtime::Nodejs)),
            ("fission/go-env", None),
            ("fission/python-envy", None),
            ("acme/python-env", None),
            ("python-env", None),
            ("evil.example/x/fission/python-env", None),
        ] {
            assert_eq!(fission_runtime(image), runtime, "{image}");
        }
    }

    #[test]
    fn an_image_reference_runs_the_local_image_or_the_bundled_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Environment {
            name: "py".into(),
            namespace: "default".into(),
            runtime: None,
            command: None,
            image: Some("ghcr.io/fission/python-env:1.2".into()),
            poolsize: 1,
            memory_mb: None,
            cpu_millis: None,
            network: Network::Host,
            buildcmd: None,
        };
        assert_eq!(
            e.image_use(dir.path()).unwrap(),
            Some(ImageUse::Bundled {
                runtime: Runtime::Python
            })
        );
        let resolved = e.resolved(dir.path()).unwrap();
        assert_eq!(
            (resolved.runtime, resolved.image),
            (Some(Runtime::Python), None)
        );
        e.image = Some("acme/thing".into());
        let err = e.image_use(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not on this machine"), "{err}");
        // Present locally but not an image: refused, not silently replaced.
        let refs = dir.path().join("refs/ghcr.io/fission/python-env/1.2");
        std::fs::create_dir_all(&refs).unwrap();
        e.image = Some("ghcr.io/fission/python-env:1.2".into());
        let err = e.image_use(dir.path()).unwrap_err().to_string();
        assert!(err.contains("index.json"), "{err}");
        // A backend that runs no images (process) runs Fission's image as the
        // bundled runtime, whatever this machine holds.
        assert_eq!(
            e.image_use_on(dir.path(), false).unwrap(),
            Some(ImageUse::Bundled {
                runtime: Runtime::Python
            })
        );
    }

    #[test]
    fn memory_limits_fit_the_runtime() {
        let mut e = Environment {
            name: "js".into(),
            namespace: "default".into(),
            runtime: Some(Runtime::Nodejs),
            command: None,
            image: None,
            poolsize: 1,
            memory_mb: Some(256),
            cpu_millis: None,
            network: Network::Host,
            buildcmd: None,
        };
        // A cgroup limit on the whole instance: any size from the minimum up.
        assert!(e.validate().is_ok());
        e.memory_mb = Some(MIN_MEMORY_MB - 1);
        assert!(e.validate().is_err());
        e.memory_mb = None;
        e.cpu_millis = Some(0);
        let err = e.validate().unwrap_err().to_string();
        assert!(err.contains("cpu_millis 0 is below the minimum"), "{err}");
        e.cpu_millis = Some(MIN_CPU_MILLIS);
        assert!(e.validate().is_ok());
        // A limit too large to mean anything is refused, not wrapped into a
        // negative (refused by the kernel) or tiny (a CPU quota of 1%) one.
        e.cpu_millis = Some(u64::MAX);
        let err = e.validate().unwrap_err().to_string();
        assert!(err.contains("is above the maximum of 1024000"), "{err}");
        e.cpu_millis = Some(MAX_CPU_MILLIS);
        assert!(e.validate().is_ok());
        e.cpu_millis = None;
        e.memory_mb = Some(u64::MAX);
        let err = e.validate().unwrap_err().to_string();
        assert!(
            err.contains("memory_mb 18446744073709551615 is above the maximum"),
            "{err}"
        );
        e.memory_mb = Some(MAX_MEMORY_MB);
        assert!(e.validate().is_ok());
        e.memory_mb = None;
        // An address-space limit per process needs room for what runtimes reserve.
        assert_eq!(e.address_space_floor_mb(), 768);
        e.runtime = Some(Runtime::Python);
        assert_eq!(e.address_space_floor_mb(), 128);
    }

    #[test]
    fn a_misspelt_runtime_network_or_executor_type_is_named_in_the_error() {
        let e = serde_json::from_str::<Environment>(r#"{"name": "x", "runtime": "pyton"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(r#"unknown runtime "pyton": expected python"#),
            "{e}"
        );
        let e = serde_json::from_str::<Environment>(
            r#"{"name": "x", "runtime": "python", "network": "nil"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(r#"unknown network "nil""#), "{e}");
        let e = "newdepoly".parse::<ExecutorType>().unwrap_err().to_string();
        assert_eq!(
            e,
            r#"unknown executor type "newdepoly": expected poolmgr or newdeploy"#
        );
    }

    fn function(extra: serde_json::Value) -> Result<Function> {
        let mut f = serde_json::json!({
            "name": "f", "env": "py",
            "package": {"sha256": "a".repeat(64), "kind": "file"},
        });
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        let f: Function = serde_json::from_value(f).map_err(|e| Error::Invalid(e.to_string()))?;
        f.validate()?;
        Ok(f)
    }

    #[test]
    fn max_scale_is_concurrency_by_its_new_name_and_min_scale_stays_below_it() {
        let f = function(serde_json::json!({"concurrency": 4})).unwrap();
        assert_eq!(f.concurrency, 4);
        let f = function(serde_json::json!({"max_scale": 5, "min_scale": 2})).unwrap();
        assert_eq!((f.min_scale, f.concurrency), (2, 5));
        let shown = serde_json::to_value(&f).unwrap();
        assert_eq!(shown["max_scale"], 5);
        assert_eq!(shown["min_scale"], 2);
        assert_eq!(shown["executor_type"], "poolmgr");
        let e = function(serde_json::json!({"max_scale": 2, "min_scale": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("min scale 3 is above max scale 2"), "{e}");
        let f = function(serde_json::json!({"executor_type": "newdeploy"})).unwrap();
        assert_eq!(f.executor_type, ExecutorType::Newdeploy);
    }
}
