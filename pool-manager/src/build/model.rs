//! Named packages as users declare them (Fission's `Package`: an environment, an
//! optional source archive, an optional deployment archive, a build command) and
//! their build status, with the status's transitions and the build cache key.
//! Pure data and pure functions: no I/O, so every rule here is unit-tested.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
pub use crate::resources::default_namespace;
use crate::resources::{validate_name, Environment, PackageRef};

/// Where a package's build stands (Fission's `buildstatus` values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// Nothing to build: the package has only a deployment archive.
    #[default]
    None,
    /// A build is wanted and waits for its turn.
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BuildStatus::None => "none",
            BuildStatus::Pending => "pending",
            BuildStatus::Running => "running",
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
        })
    }
}

/// A package's status: what the server says about it, never what a user sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageStatus {
    pub buildstatus: BuildStatus,
    /// The output of the last build (its tail, when long), or why none ran.
    #[serde(default)]
    pub buildlog: String,
    /// When the status last changed (RFC 3339).
    #[serde(
        default,
        rename = "lastUpdateTimestamp",
        skip_serializing_if = "String::is_empty"
    )]
    pub last_update: String,
    /// The deployment the last successful build made from the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built: Option<PackageRef>,
    /// Whether that deployment was reused from an earlier build of the same
    /// source, environment and build command instead of built again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// A named package: Fission's `Package`, with Fusion's content-addressed archives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The environment (by name) whose builder builds the source and whose
    /// runtime runs the deployment.
    pub environment: String,
    /// Code to build (uploaded at `/v1/archives`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PackageRef>,
    /// Code ready to run, used as it is when there is no source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<PackageRef>,
    /// The build command, run in the source directory with `SRC_PKG` and
    /// `DEPLOY_PKG` set (default: the environment's builder, or `./build.sh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildcmd: Option<String>,
    /// Bumped by every update and rebuild; a build's result is kept only if the
    /// package is still at the generation the build started from.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub status: PackageStatus,
}

/// The most a build command may be, in bytes.
const MAX_BUILDCMD: usize = 4096;

/// A build command (of a package, or an environment's default), for `whose`.
pub fn check_buildcmd(whose: &str, cmd: &str) -> Result<()> {
    if cmd.trim().is_empty() || cmd.len() > MAX_BUILDCMD || cmd.contains('\0') {
        return Err(Error::Invalid(format!(
            "{whose}: buildcmd must be a non-empty command of at most {MAX_BUILDCMD} bytes"
        )));
    }
    Ok(())
}

impl Package {
    /// The store key: `namespace/name`.
    pub fn key(&self) -> String {
        key(&self.namespace, &self.name)
    }

    pub fn validate(&self) -> Result<()> {
        validate_name("package", &self.name)?;
        validate_name("namespace", &self.namespace)?;
        validate_name("environment", &self.environment)?;
        if self.source.is_none() && self.deployment.is_none() {
            return Err(Error::Invalid(format!(
                "package {:?}: give a source archive (--src), a deployment archive (--deploy), or both",
                self.name
            )));
        }
        for r in [&self.source, &self.deployment].into_iter().flatten() {
            if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Invalid(format!(
                    "package {:?}: an archive must be a sha256 hex digest",
                    self.name
                )));
            }
            if let Some(f) = &r.filename {
                crate::package::validate_filename(f)?;
            }
        }
        if let Some(cmd) = &self.buildcmd {
            check_buildcmd(&format!("package {:?}", self.name), cmd)?;
            if self.source.is_none() {
                return Err(Error::Invalid(format!(
                    "package {:?}: a buildcmd needs a source archive to build",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// The code functions of this package run now, if there is any: the built
    /// deployment of a source package (while it builds again, or after a
    /// rebuild failed, the last one that built: a rebuild takes nothing down,
    /// as a function whose code is being updated goes on serving the old),
    /// else the deployment archive.
    pub fn runnable(&self) -> Option<&PackageRef> {
        if self.source.is_some() {
            self.status.built.as_ref()
        } else {
            self.deployment.as_ref()
        }
    }
}

pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What happens to a package's build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// The package was created or changed, or a rebuild was asked for.
    Requested,
    /// A builder took the pending build.
    Started,
    /// The build finished and made this deployment.
    Succeeded {
        built: PackageRef,
        log: String,
    },
    /// The same inputs were built before: their deployment is reused.
    Cached {
        built: PackageRef,
        log: String,
    },
    Failed {
        log: String,
    },
}

impl PackageStatus {
    /// The status after `event` for a package with (`has_source`) or without
    /// a source; refuses events that make no sense in the current state.
    pub fn apply(&self, has_source: bool, event: BuildEvent, now: String) -> Result<PackageStatus> {
        use BuildStatus::*;
        let refuse = |what: &str| {
            Err(Error::Conflict(format!(
                "a build cannot {what} while the package's build is {}",
                self.buildstatus
            )))
        };
        let mut next = self.clone();
        next.last_update = now;
        match event {
            BuildEvent::Requested if !has_source => {
                next.buildstatus = None;
                next.buildlog.clear();
                next.built = Option::None;
                next.cached = false;
            }
            BuildEvent::Requested => {
                next.buildstatus = Pending;
                next.buildlog = "waiting for a builder".into();
            }
            BuildEvent::Started => {
                if self.buildstatus != Pending {
                    return refuse("start");
                }
                next.buildstatus = Running;
                next.buildlog = "building".into();
            }
            BuildEvent::Succeeded { built, log } | BuildEvent::Cached { built, log }
                if !matches!(self.buildstatus, Pending | Running) =>
            {
                let _ = (built, log);
                return refuse("finish");
            }
            BuildEvent::Succeeded { built, log } => {
                if self.buildstatus != Running {
                    return refuse("succeed");
                }
                next.buildstatus = Succeeded;
                next.buildlog = log;
                next.built = Some(built);
                next.cached = false;
            }
            BuildEvent::Cached { built, log } => {
                next.buildstatus = Succeeded;
                next.buildlog = log;
                next.built = Some(built);
                next.cached = true;
            }
            BuildEvent::Failed { log } => {
                if !matches!(self.buildstatus, Pending | Running) {
                    return refuse("fail");
                }
                // The last good deployment stays: its functions keep running
                // it rather than stop (a rebuild that fails takes nothing down).
                next.buildstatus = Failed;
                next.buildlog = log;
                next.cached = false;
            }
        }
        Ok(next)
    }
}

/// The key builds are cached under: the same source, built by the same
/// environment's builder with the same command, gives the same deployment.
pub fn cache_key(source: &PackageRef, env: &Environment, buildcmd: Option<&str>) -> String {
    let mut h = Sha256::new();
    let mut field = |label: &str, value: &[u8]| {
        // Length-prefixed, so no two different inputs run together the same way.
        h.update(label.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("builder", BUILDER_VERSION.as_bytes());
    field("source", source.sha256.as_bytes());
    field(
        "filename",
        source.filename.as_deref().unwrap_or("").as_bytes(),
    );
    let runtime = env
        .runtime
        .map(|r| format!("{r:?}"))
        .or_else(|| env.command.as_ref().map(|c| c.join("\0")))
        .or_else(|| env.image.clone())
        .unwrap_or_default();
    field("runtime", runtime.as_bytes());
    field("buildcmd", buildcmd.unwrap_or("").as_bytes());
    crate::package::hex(&h.finalize())
}

/// Changes whenever what the builders do changes, so older cached builds are
/// not reused by a builder that would build differently.
const BUILDER_VERSION: &str = "1";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Network, PackageKind, Runtime};

    fn reference(c: char) -> PackageRef {
        PackageRef {
            sha256: c.to_string().repeat(64),
            kind: PackageKind::Archive,
            filename: None,
        }
    }

    fn env(runtime: Runtime) -> Environment {
        Environment {
            name: "py".into(),
            namespace: "default".into(),
            runtime: Some(runtime),
            command: None,
            image: None,
            poolsize: 1,
            memory_mb: None,
            cpu_millis: None,
            network: Network::Host,
            buildcmd: None,
        }
    }

    #[test]
    fn cache_key_changes_with_source_runtime_and_command_only() {
        let py = env(Runtime::Python);
        let base = cache_key(&reference('a'), &py, None);
        assert_eq!(base, cache_key(&reference('a'), &py, None));
        let mut renamed = py.clone();
        renamed.name = "other".into();
        renamed.poolsize = 9;
        assert_eq!(
            base,
            cache_key(&reference('a'), &renamed, None),
            "pool settings do not change what a build makes"
        );
        assert_ne!(base, cache_key(&reference('b'), &py, None));
        assert_ne!(
            base,
            cache_key(&reference('a'), &env(Runtime::Nodejs), None)
        );
        assert_ne!(base, cache_key(&reference('a'), &py, Some("make")));
        assert_ne!(
            cache_key(&reference('a'), &py, Some("")),
            cache_key(&reference('a'), &py, Some("\0")),
        );
        let mut file = reference('a');
        file.kind = PackageKind::File;
        file.filename = Some("x.py".into());
        assert_ne!(base, cache_key(&file, &py, None));
    }

    #[test]
    fn a_source_package_goes_pending_running_then_succeeded_or_failed() {
        let now = || "t".to_string();
        let s = PackageStatus::default();
        let s = s.apply(true, BuildEvent::Requested, now()).unwrap();
        assert_eq!(s.buildstatus, BuildStatus::Pending);
        // Finishing a build that never started is refused.
        assert!(s
            .apply(
                true,
                BuildEvent::Succeeded {
                    built: reference('a'),
                    log: String::new()
                },
                now()
            )
            .is_err());
        let s = s.apply(true, BuildEvent::Started, now()).unwrap();
        assert_eq!(s.buildstatus, BuildStatus::Running);
        assert!(s.apply(true, BuildEvent::Started, now()).is_err());
        let ok = s
            .apply(
                true,
                BuildEvent::Succeeded {
                    built: reference('a'),
                    log: "pip said".into(),
                },
                now(),
            )
            .unwrap();
        assert_eq!(ok.buildstatus, BuildStatus::Succeeded);
        assert_eq!(ok.built, Some(reference('a')));
        assert!(!ok.cached);
        // Done is done: only a new request starts over.
        assert!(ok
            .apply(true, BuildEvent::Failed { log: "x".into() }, now())
            .is_err());
        let failed = s
            .apply(
                true,
                BuildEvent::Failed {
                    log: "no such requirement".into(),
                },
                now(),
            )
            .unwrap();
        assert_eq!(failed.buildstatus, BuildStatus::Failed);
        assert_eq!(failed.built, None, "nothing ever built");
        assert_eq!(failed.buildlog, "no such requirement");
        // A rebuild that fails keeps the last good deployment.
        let rebuilt = ok
            .apply(true, BuildEvent::Requested, now())
            .and_then(|s| s.apply(true, BuildEvent::Started, now()))
            .and_then(|s| s.apply(true, BuildEvent::Failed { log: "x".into() }, now()))
            .unwrap();
        assert_eq!(rebuilt.buildstatus, BuildStatus::Failed);
        assert_eq!(rebuilt.built, Some(reference('a')));
        let again = failed.apply(true, BuildEvent::Requested, now()).unwrap();
        assert_eq!(again.buildstatus, BuildStatus::Pending);
    }

    #[test]
    fn a_cached_build_succeeds_from_pending_and_says_so() {
        let s = PackageStatus::default()
            .apply(true, BuildEvent::Requested, "t".into())
            .unwrap();
        let s = s
            .apply(
                true,
                BuildEvent::Cached {
                    built: reference('c'),
                    log: "reused".into(),
                },
                "t2".into(),
            )
            .unwrap();
        assert_eq!(s.buildstatus, BuildStatus::Succeeded);
        assert!(s.cached);
        assert_eq!(s.last_update, "t2");
    }

    #[test]
    fn a_package_without_source_has_nothing_to_build() {
        let s = PackageStatus::default()
            .apply(false, BuildEvent::Requested, "t".into())
            .unwrap();
        assert_eq!(s.buildstatus, BuildStatus::None);
        assert!(s.apply(false, BuildEvent::Started, "t".into()).is_err());
    }

    #[test]
    fn what_functions_run() {
        let mut p = Package {
            name: "p".into(),
            namespace: default_namespace(),
            environment: "py".into(),
            source: None,
            deployment: Some(reference('d')),
            buildcmd: None,
            generation: 1,
            status: PackageStatus::default(),
        };
        assert!(p.validate().is_ok());
        assert_eq!(p.runnable(), Some(&reference('d')));
        p.source = Some(reference('s'));
        p.status.buildstatus = BuildStatus::Running;
        assert_eq!(p.runnable(), None, "a source package runs only its build");
        p.status.buildstatus = BuildStatus::Succeeded;
        p.status.built = Some(reference('b'));
        assert_eq!(p.runnable(), Some(&reference('b')));
        for status in [
            BuildStatus::Pending,
            BuildStatus::Running,
            BuildStatus::Failed,
        ] {
            p.status.buildstatus = status;
            assert_eq!(p.runnable(), Some(&reference('b')), "the last good build");
        }
        p.source = None;
        p.deployment = None;
        assert!(p.validate().is_err());
        p.deployment = Some(reference('d'));
        p.buildcmd = Some("make".into());
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs a source"));
    }
}
