//! The resources users declare: environments, functions and routes (HTTP
//! triggers), with their defaults and validation. Pure data; the one I/O is
//! the check that an environment's image exists and reads as an OCI image.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A bundled language runtime; an environment may instead name its own command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

fn default_poolsize() -> usize {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub name: String,
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
}

/// The network an environment's instances get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    pub fn validate(&self) -> Result<()> {
        validate_name("environment", &self.name)?;
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
            crate::backend::image::check(image)
                .map_err(|e| Error::Invalid(format!("environment: {e}")))?;
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

/// The smallest memory limit an environment may ask for, in MiB.
pub const MIN_MEMORY_MB: u64 = 32;

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
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
    /// Most instances the function may have at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Concurrent requests one instance takes.
    #[serde(default = "default_rpp")]
    pub requests_per_instance: usize,
    /// Bumped by every update; instances of older generations are retired.
    #[serde(default)]
    pub generation: u64,
}

impl Function {
    pub fn validate(&self) -> Result<()> {
        validate_name("function", &self.name)?;
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
                "function: concurrency {} must be between 1 and 1000",
                self.concurrency
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
            }
        }
        Ok(())
    }
}

/// An HTTP trigger: which requests reach which function or workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// Methods it answers; empty means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// A URL template with `{params}`, matched exactly (`/users/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A path prefix: every path below it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
}

impl Route {
    pub fn validate(&self) -> Result<()> {
        validate_name("route", &self.name)?;
        match (&self.function, &self.workflow) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "route: target either a function or a workflow, not both".into(),
                ))
            }
            (None, None) => {
                return Err(Error::Invalid(
                    "route: a target function (--function) or workflow (--workflow) is required"
                        .into(),
                ))
            }
            _ => {}
        }
        match (&self.url, &self.prefix) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "route: give either url or prefix, not both".into(),
                ))
            }
            (None, None) => return Err(Error::Invalid("route: url or prefix is required".into())),
            (Some(u), None) | (None, Some(u)) => crate::routes::Template::parse(u)?,
        };
        if let Some(p) = &self.prefix {
            if p.contains('{') {
                return Err(Error::Invalid(
                    "route: a prefix cannot hold {params}".into(),
                ));
            }
        }
        for m in &self.methods {
            if !matches!(
                m.as_str(),
                "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS"
            ) {
                return Err(Error::Invalid(format!(
                    "route: unknown method {m:?}: use GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS"
                )));
            }
        }
        Ok(())
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
            runtime: Some(Runtime::Python),
            command: None,
            image: None,
            poolsize: 3,
            memory_mb: None,
            cpu_millis: None,
            network: Network::Host,
        };
        assert!(e.validate().is_ok());
        e.command = Some(vec!["x".into()]);
        assert!(e.validate().is_err());
        e.runtime = None;
        assert!(e.validate().is_ok());
        e.command = None;
        assert!(e.validate().is_err());
        e.image = Some("fission/python-env".into());
        let err = e.validate().unwrap_err().to_string();
        assert!(err.contains("registry pulls are not supported"), "{err}");
        e.command = Some(vec!["x".into()]);
        assert!(e.validate().unwrap_err().to_string().contains("not more"));
    }

    #[test]
    fn memory_limits_fit_the_runtime() {
        let mut e = Environment {
            name: "js".into(),
            runtime: Some(Runtime::Nodejs),
            command: None,
            image: None,
            poolsize: 1,
            memory_mb: Some(256),
            cpu_millis: None,
            network: Network::Host,
        };
        // A cgroup limit on the whole instance: any size from the minimum up.
        assert!(e.validate().is_ok());
        e.memory_mb = Some(MIN_MEMORY_MB - 1);
        assert!(e.validate().is_err());
        // An address-space limit per process needs room for what runtimes reserve.
        assert_eq!(e.address_space_floor_mb(), 768);
        e.runtime = Some(Runtime::Python);
        assert_eq!(e.address_space_floor_mb(), 128);
    }
}
