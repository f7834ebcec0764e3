//! Package builds on the container backend: one `runc run` of `/bin/sh -c
//! script` with the same setup as an instance (the host's `/usr` and the
//! generated `/etc` read-only, a private `/tmp`, its own pid, mount, ipc and uts
//! namespaces, user nobody without capabilities, cgroup limits), except that
//! the source, the output and a home directory are bound read-write at
//! `/build/src`, `/build/deploy` and `/build/home` instead of the code at
//! `/userfunc`. On timeout the container is killed, and its pid namespace takes
//! every process of the build with it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use oci_spec::runtime::{LinuxPidsBuilder, MountBuilder};

use super::{delete_container, spawn_watcher, walk_dirs, ContainerBackend, NOBODY, SOCKET_DIR};
use crate::backend::build::{
    build_env, join_log, read_tail, BuildExit, BuildOutput, BuildRequest, BUILD_LOG_LIMIT,
    BUILD_MEMORY_MB, BUILD_PIDS_LIMIT,
};
use crate::error::{Error, Result};
use crate::resources::Environment;

/// Where the build's directories are inside its container.
const SRC: &str = "/build/src";
const DEPLOY: &str = "/build/deploy";
const HOME: &str = "/build/home";

/// The mount points of a build's directories in the shared read-only root.
pub(super) const MOUNT_POINTS: [&str; 3] = ["build/src", "build/deploy", "build/home"];

impl ContainerBackend {
    pub(super) async fn run_build(&self, req: BuildRequest) -> Result<BuildOutput> {
        let id = format!("{}build-{}", self.cfg.prefix, req.id);
        let bundle = self.bundles().join(&id);
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            Error::Unavailable(format!("cannot prepare the build's container: {what}: {e}"))
        };
        // The build runs as nobody: it owns its three directories, nothing else.
        let dirs = [req.src.clone(), req.deploy.clone(), req.home.clone()];
        tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| give_to_nobody(d)))
            .await
            .map_err(|e| unavailable("ownership", &e))?
            .map_err(|e| unavailable("ownership", &e))?;

        // The environment's network; a build's own limits, not the runtime's.
        let env = Environment {
            runtime: Some(crate::resources::Runtime::Binary),
            command: None,
            image: None,
            memory_mb: Some(req.env.memory_mb.unwrap_or(0).max(BUILD_MEMORY_MB)),
            ..req.env.clone()
        };
        let args = vec!["/bin/sh".to_string(), "-c".into(), req.script.clone()];
        let mut spec = self.spec(&env, &bundle, args, None)?;
        let oci = |e: oci_spec::OciSpecError| Error::Internal(format!("build spec: {e}"));
        let bind = |src: &Path, dst: &str| {
            MountBuilder::default()
                .destination(dst)
                .typ("bind")
                .source(src)
                .options(vec![
                    "rbind".into(),
                    "rw".into(),
                    "nosuid".into(),
                    "nodev".into(),
                ])
                .build()
                .map_err(oci)
        };
        let mut mounts: Vec<_> = spec
            .mounts()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                let d = m.destination();
                d != Path::new("/userfunc") && d != Path::new(SOCKET_DIR)
            })
            .collect();
        mounts.push(bind(&req.src, SRC)?);
        mounts.push(bind(&req.deploy, DEPLOY)?);
        mounts.push(bind(&req.home, HOME)?);
        spec.set_mounts(Some(mounts));
        if let Some(process) = spec.process_mut() {
            let env = build_env(
                SRC,
                DEPLOY,
                HOME,
                "/usr/local/bin:/usr/bin:/bin",
                &self.inside.python,
                &self.inside.node,
            );
            process.set_env(Some(
                env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            ));
            process.set_cwd(SRC.into());
        }
        if let Some(resources) = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.resources_mut().as_mut())
        {
            resources.set_pids(Some(
                LinuxPidsBuilder::default()
                    .limit(BUILD_PIDS_LIMIT)
                    .build()
                    .map_err(oci)?,
            ));
        }
        let written = std::fs::create_dir_all(&bundle)
            .and_then(|()| {
                std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| unavailable("bundle", &e))
            .and_then(|()| {
                spec.save(bundle.join("config.json"))
                    .map_err(|e| unavailable("bundle", &e))
            });
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&bundle);
            return Err(e);
        }

        // Killed with the server, even by SIGKILL.
        let watcher =
            spawn_watcher(&self.cfg.runtime, &id).map_err(|e| unavailable("watcher", &e))?;
        let mut cmd = tokio::process::Command::new(&self.cfg.runtime);
        cmd.args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        crate::sys::harden_child(&mut cmd, None);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(Error::Unavailable(format!(
                    "cannot start the OCI runtime {:?}: {e}",
                    self.cfg.runtime
                )));
            }
        };
        let progress = Some(req.progress.clone());
        let out = tokio::spawn(read_tail(child.stdout.take(), BUILD_LOG_LIMIT, progress));
        let err = tokio::spawn(read_tail(child.stderr.take(), BUILD_LOG_LIMIT, None));
        let status = super::super::build::until_cut(&req, child.wait()).await;
        let (status, cut) = match status {
            Ok(s) => (Some(s), None),
            Err(cut) => {
                let _ = tokio::process::Command::new(&self.cfg.runtime)
                    .args(["kill", &id, "KILL"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
                let _ = child.start_kill();
                let _ = child.wait().await;
                (None, Some(cut))
            }
        };
        let oom = self.cgroups.oom_kills(&id) > 0;
        drop(watcher);
        delete_container(&self.cfg.runtime, &id).await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&bundle)).await;
        let exit = match (status, cut) {
            (_, Some(super::super::build::Cut::Stopped(why))) => BuildExit::Stopped(why),
            (None, _) => BuildExit::TimedOut(req.timeout),
            // A build that succeeded did, whatever the kernel killed on the way.
            (Some(Ok(s)), _) if s.success() => BuildExit::Succeeded,
            (Some(_), _) if oom => BuildExit::OutOfMemory,
            (Some(Ok(s)), _) => {
                BuildExit::Failed(crate::backend::Exit::of(false, Ok(s)).to_string())
            }
            (Some(Err(e)), _) => BuildExit::Failed(e.to_string()),
        };
        let out = out.await.unwrap_or_default();
        let err = err.await.unwrap_or_default();
        Ok(BuildOutput {
            exit,
            log: join_log(out, err),
        })
    }
}

/// Makes `dir` and everything in it owned by nobody (links themselves, not
/// what they point to).
fn give_to_nobody(dir: &Path) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(NOBODY), Some(NOBODY))?;
    walk_dirs(dir, &mut |d| {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            std::os::unix::fs::lchown(e.path(), Some(NOBODY), Some(NOBODY))?;
        }
        Ok(())
    })
}
