//! The `container` backend: each instance is an OCI container run by an OCI
//! runtime (`runc` or `crun`) in the foreground, one `runtime run --keep` child per
//! instance. The container has its own mount, pid, ipc and uts namespaces (and
//! network, for `network: none`), a read-only root made of the host's `/usr`
//! bound read-only plus a generated minimal `/etc`, the function's code
//! read-only at `/userfunc`, a private size-limited `/tmp`, its secrets and
//! configmaps at `/secrets` and `/configs` (each a small tmpfs of its own, so
//! their values never touch the disk and no other instance sees them), and runs
//! as an unprivileged user with no capabilities. cgroups bound memory (all processes
//! together), CPU and pids. The runtime listens on a Unix socket in the
//! instance's bundle, which no other instance can see.
//!
//! An environment may instead name an OCI image (see `image`): its unpacked root
//! is the container's read-only root, it runs the image's entrypoint with the
//! image's environment, and since Fission's images listen on TCP port 8888, each
//! such instance always has a network namespace of its own (only loopback) that
//! the router dials into: no instance can reach another's port.
//!
//! Lifecycle: the runtime watches its stdin (a pipe from the server through the
//! OCI runtime), so when the server dies, even by SIGKILL, the runtime exits and
//! the pid namespace takes every process of the container with it. Stopping is
//! `kill KILL`; after the exit the cgroup is read for an out-of-memory kill, then
//! the container is deleted. The next server start deletes containers a killed
//! server left behind (`cleanup_stale`).

use std::collections::HashSet;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use tokio::sync::{watch, Notify};

use super::build::{BuildOutput, BuildRequest};
use super::connect::InstanceConnector;
use super::image::{Image, ImageStore, RUNTIME_PORT};
use super::{
    Address, Backend, Exit, Handle, Isolation, LaunchConfig, NetNs, StagedFile, StartRequest, Usage,
};
use crate::error::{Error, Result};
use crate::resources::{Environment, Network};

mod build;
mod seccomp;

/// The unprivileged user and group instances run as (`nobody`).
const NOBODY: u32 = 65534;
/// Processes one instance may have at once: a fork bomb stops here.
pub const DEFAULT_PIDS_LIMIT: i64 = 256;
/// Open files one instance's processes may each have.
const OPEN_FILES: u64 = 4096;
/// Size of an instance's private `/tmp`, in MiB (it counts towards its memory).
pub const TMP_SIZE_MB: u64 = 64;
/// Size of each of an instance's `/secrets` and `/configs`, in MiB: room for the
/// most a function may list (16 of 1 MiB, each file taking at least a page).
/// Memory is used only as files are written.
pub const FILES_SIZE_MB: u64 = 40;
/// Files and directories each may hold (16 x 256 keys, and their directories).
const FILES_INODES: usize = 8192;
/// Where the fusion executable is in a container of the bundled runtimes
/// (the binary runtime, and every container's init).
const BUNDLED_INIT: &str = "/fusion/bin/fusion";
/// Where it is bound in an image's container, a directory no image is
/// likely to have (Fusion's own test image has a file at `/fusion`).
const IMAGE_INIT_DIR: &str = "/.fusion";
const IMAGE_INIT: &str = "/.fusion/fusion";
/// Where the runtime listens, inside the container and in the bundle.
const SOCKET_DIR: &str = "/run/fusion";
const SOCKET_NAME: &str = "runtime.sock";
/// Where runc keeps its containers' state (its default `--root` for root).
const RUNC_ROOT: &str = "/run/runc";

/// The name prefix of this server's containers: `fusion-` and a hash of its data
/// directory, so servers with different data directories leave each other alone.
pub fn prefix_for(data_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("fusion-{hex}-")
}

/// Why the container backend did not start.
#[derive(Debug)]
pub enum ProbeError {
    /// Containers cannot run on this host (no runtime, no root, no namespaces,
    /// a runtime that fails): the process backend may stand in.
    Unavailable(String),
    /// The data directory cannot hold what containers need (a full disk, a
    /// read-only filesystem): the server cannot run well on any backend.
    DataDir(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Unavailable(why) | ProbeError::DataDir(why) => f.write_str(why),
        }
    }
}

/// How the container backend is set up; `probe` checks it can run.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The OCI runtime executable (`runc`, `crun`, or a path).
    pub runtime: PathBuf,
    /// Under the data directory: the shared root, `/etc` and the bundles.
    pub dir: PathBuf,
    /// The runtimes as the host sees them (`python`, `node`, the `fusion` binary).
    pub launch: LaunchConfig,
    /// Distinguishes this server's containers from other servers' on the machine.
    pub prefix: String,
}

pub struct ContainerBackend {
    cfg: ContainerConfig,
    /// The runtimes as the container sees them.
    inside: LaunchConfig,
    /// Host directories bound read-only at the same path (interpreter prefixes).
    extra_binds: Vec<PathBuf>,
    cgroups: Cgroups,
    /// Unpacked OCI images, under the data directory's `images`.
    images: ImageStore,
}

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup hierarchy the OCI runtime uses, for usage and OOM reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cgroups {
    V1,
    V2,
}

impl Cgroups {
    fn detect() -> Cgroups {
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            Cgroups::V2
        } else {
            Cgroups::V1
        }
    }
    fn file(self, root: &Path, controller: &str, id: &str, name: &str) -> PathBuf {
        match self {
            Cgroups::V1 => root.join(controller).join("fusion").join(id).join(name),
            Cgroups::V2 => root.join("fusion").join(id).join(name),
        }
    }
    /// How many times the kernel killed a process of the container for memory.
    fn oom_kills(self, id: &str) -> u64 {
        self.oom_kills_under(Path::new(CGROUP_ROOT), id)
    }
    fn oom_kills_under(self, root: &Path, id: &str) -> u64 {
        self.read_oom_kills(root, id).unwrap_or(0)
    }
    fn read_oom_kills(self, root: &Path, id: &str) -> Option<u64> {
        let file = match self {
            Cgroups::V1 => self.file(root, "memory", id, "memory.oom_control"),
            Cgroups::V2 => self.file(root, "memory", id, "memory.events"),
        };
        read_keyed(&file, "oom_kill")
    }
    fn usage(self, id: &str) -> Usage {
        self.usage_under(Path::new(CGROUP_ROOT), id)
    }
    fn usage_under(self, root: &Path, id: &str) -> Usage {
        match self {
            Cgroups::V1 => Usage {
                memory_bytes: read_u64(&self.file(root, "memory", id, "memory.usage_in_bytes")),
                cpu_seconds: read_u64(&self.file(root, "cpuacct", id, "cpuacct.usage"))
                    .map(|ns| ns as f64 / 1e9),
                oom_kills: self.read_oom_kills(root, id),
            },
            Cgroups::V2 => Usage {
                memory_bytes: read_u64(&self.file(root, "memory", id, "memory.current")),
                cpu_seconds: read_keyed(&self.file(root, "cpu", id, "cpu.stat"), "usage_usec")
                    .map(|us| us as f64 / 1e6),
                oom_kills: self.read_oom_kills(root, id),
            },
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key N` in a cgroup file of such lines.
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Whether `copy` is a copy of `source` as `prepare_dirs` makes one (the
/// same size and modification time); a hard link to it is not.
fn same_file_contents_likely(source: &Path, copy: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(source), std::fs::metadata(copy)) {
        // The same file (a hard link an earlier version made) is not a copy:
        // it is replaced by one.
        (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => false,
        (Ok(a), Ok(b)) => {
            a.len() == b.len()
                && a.modified().ok().is_some()
                && a.modified().ok() == b.modified().ok()
        }
        _ => false,
    }
}

impl ContainerBackend {
    /// Prepares the shared root and `/etc`, removes this server's leftover
    /// containers, and runs one probe container; fails with the reason when
    /// containers cannot run here.
    /// The backend, once it has run a container; `Err(Unavailable)` where
    /// containers cannot run on this host, `Err(DataDir)` where the data
    /// directory cannot hold what they need (a full disk: not a reason to run
    /// functions unisolated).
    pub async fn probe(cfg: ContainerConfig) -> std::result::Result<ContainerBackend, ProbeError> {
        Self::probe_inner(cfg).await
    }

    async fn probe_inner(
        cfg: ContainerConfig,
    ) -> std::result::Result<ContainerBackend, ProbeError> {
        use ProbeError::Unavailable;
        if !crate::sys::is_root() {
            return Err(Unavailable(
                "the container backend needs root (rootless OCI runtimes are not supported yet)"
                    .into(),
            ));
        }
        if !Path::new("/proc/self/ns/pid").exists() {
            return Err(Unavailable("this kernel has no pid namespaces".into()));
        }
        let version = tokio::process::Command::new(&cfg.runtime)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| {
                Unavailable(format!("cannot run the OCI runtime {:?}: {e}", cfg.runtime))
            })?;
        if !version.status.success() {
            return Err(Unavailable(format!(
                "the OCI runtime {:?} does not run: {}",
                cfg.runtime,
                String::from_utf8_lossy(&version.stderr).trim()
            )));
        }
        let mut extra_binds = Vec::new();
        let inside = LaunchConfig {
            runtimes_dir: PathBuf::from("/fusion/runtimes"),
            fusion_exe: PathBuf::from(BUNDLED_INIT),
            python: inside_path(&cfg.launch.python, &mut extra_binds),
            node: inside_path(&cfg.launch.node, &mut extra_binds),
            start_timeout: cfg.launch.start_timeout,
        };
        // `dir` is `<data>/containers`; images live beside it in `<data>/images`.
        let images = ImageStore::new(cfg.dir.parent().unwrap_or(&cfg.dir).join("images"));
        let backend = ContainerBackend {
            cgroups: Cgroups::detect(),
            images,
            cfg,
            inside,
            extra_binds,
        };
        backend
            .prepare_dirs()
            .map_err(|e| ProbeError::DataDir(format!("cannot prepare the container root: {e}")))?;
        backend.cleanup(true).await;
        backend.run_probe().await.map_err(Unavailable)?;
        Ok(backend)
    }

    fn rootfs(&self) -> PathBuf {
        self.cfg.dir.join("rootfs")
    }
    fn etc(&self) -> PathBuf {
        self.cfg.dir.join("etc")
    }
    fn bundles(&self) -> PathBuf {
        self.cfg.dir.join("bundles")
    }
    fn fusion_bin_dir(&self) -> PathBuf {
        self.cfg.dir.join("bin")
    }

    /// The shared read-only root: empty mount points, the host's `/bin`-style
    /// links into `/usr`; and a minimal `/etc` with no secrets in it.
    fn prepare_dirs(&self) -> std::io::Result<()> {
        let root = self.rootfs();
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        for dir in [
            "usr",
            "etc",
            "proc",
            "dev",
            "tmp",
            "userfunc",
            "secrets",
            "configs",
            "fusion/runtimes",
            "fusion/bin",
            "run/fusion",
        ]
        .into_iter()
        .chain(build::MOUNT_POINTS)
        {
            std::fs::create_dir_all(root.join(dir))?;
        }
        // A tmpfs takes the mode of the directory it is mounted on.
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
        for dir in &self.extra_binds {
            std::fs::create_dir_all(root.join(dir.strip_prefix("/").unwrap_or(dir)))?;
        }
        for link in ["bin", "lib", "lib64", "sbin", "lib32", "libx32"] {
            let host = Path::new("/").join(link);
            match std::fs::read_link(&host) {
                Ok(target) => symlink(target, root.join(link))?,
                Err(_) if host.is_dir() => std::fs::create_dir_all(root.join(link))?,
                Err(_) => {}
            }
        }
        // Every directory on the way to a bind must be traversable by nobody.
        walk_dirs(&root, &mut |d| {
            if d != root.join("tmp") {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        })?;

        let etc = self.etc();
        if etc.exists() {
            std::fs::remove_dir_all(&etc)?;
        }
        std::fs::create_dir_all(etc.join("ssl/certs"))?;
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n",
        )?;
        std::fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
        std::fs::write(
            etc.join("nsswitch.conf"),
            "passwd: files\ngroup: files\nhosts: files dns\n",
        )?;
        for file in [
            "resolv.conf",
            "ld.so.cache",
            "localtime",
            "ssl/openssl.cnf",
            "ssl/certs/ca-certificates.crt",
        ] {
            // Copies, not links: the files may not exist, and must not change under a container.
            let _ = std::fs::copy(Path::new("/etc").join(file), etc.join(file));
        }
        // Except the time zone when the host's is a link into the zone files
        // (which instances see, under /usr): ICU (node) names the zone from
        // the link, and with a plain file compares every zone file to find it,
        // some 1,400 opens at a runtime's first log line.
        if let Some(zone) = std::fs::read_link("/etc/localtime")
            .ok()
            .and_then(|link| zone_file(&link))
        {
            let local = etc.join("localtime");
            let _ = std::fs::remove_file(&local);
            std::os::unix::fs::symlink(&zone, &local)?;
        }

        // The binary runtime is the fusion executable: a copy instances can
        // read. Never a hard link: one inode with the server's own binary,
        // whose owner and mode would follow the data directory's (a `chown
        // -R` of it would hand the binary root runs to the service's user).
        let bin = self.fusion_bin_dir();
        std::fs::create_dir_all(&bin)?;
        let exe = bin.join("fusion");
        let source = &self.cfg.launch.fusion_exe;
        if !same_file_contents_likely(source, &exe) {
            let _ = std::fs::remove_file(&exe);
            // With the source's time, so that the next start finds it the
            // same and keeps it (the binary is large); a copy cut short is
            // not left behind.
            if let Err(e) = std::fs::copy(source, &exe) {
                let _ = std::fs::remove_file(&exe);
                // A small disk: say what the copy needs.
                if e.kind() == std::io::ErrorKind::StorageFull {
                    let mib = std::fs::metadata(source)
                        .map_or(0, |m| m.len())
                        .div_ceil(1 << 20);
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{e}: the copy of the fusion executable instances run ({}) needs {mib} MiB", source.display()),
                    ));
                }
                return Err(e);
            }
            // Where the time cannot be set, the next start copies again.
            let _ = std::fs::metadata(source)
                .and_then(|m| m.modified())
                .and_then(|t| {
                    std::fs::File::options()
                        .write(true)
                        .open(&exe)?
                        .set_modified(t)
                });
        }
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir_all(self.bundles())?;
        Ok(())
    }

    /// Runs the fusion binary once in a container with this backend's setup.
    async fn run_probe(&self) -> std::result::Result<(), String> {
        let id = format!("{}probe", self.cfg.prefix);
        let bundle = self.bundles().join(&id);
        let _ = std::fs::remove_dir_all(&bundle);
        let probe_env = Environment {
            name: "probe".into(),
            namespace: "default".into(),
            runtime: Some(crate::resources::Runtime::Binary),
            command: None,
            image: None,
            poolsize: 0,
            memory_mb: Some(64),
            cpu_millis: None,
            network: Network::None,
            buildcmd: None,
        };
        let spec = self
            .spec(
                &probe_env,
                &bundle,
                vec![BUNDLED_INIT.into(), "--version".into()],
                None,
            )
            .map_err(|e| e.to_string())?;
        prepare_bundle(&bundle, &spec)
            .map_err(|e| format!("cannot write the probe bundle: {e}"))?;
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(&self.cfg.runtime)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await;
        let _ = std::fs::remove_dir_all(&bundle);
        match out {
            // `/bin/true` given as the runtime "succeeds" too, running nothing.
            Ok(Ok(o)) if o.status.success() && o.stdout.is_empty() => Err(format!(
                "{:?} ran the probe container but it printed nothing: is it an OCI runtime (runc, crun)?",
                self.cfg.runtime
            )),
            Ok(Ok(o)) if o.status.success() => Ok(()),
            Ok(Ok(o)) => {
                self.delete(&id).await;
                Err(format!(
                    "a probe container failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Ok(Err(e)) => Err(format!("cannot run the OCI runtime: {e}")),
            Err(_) => {
                self.delete(&id).await;
                Err("a probe container did not finish within 20 s".into())
            }
        }
    }

    /// Deletes every container of this server's (a killed server leaves stopped
    /// ones, and half-created ones that `list` does not show): at a start,
    /// what an earlier server left (`stale`); at a stop, this one's last.
    async fn cleanup(&self, stale: bool) {
        remove_containers(&self.cfg.runtime, &self.cfg.prefix, &self.cfg.dir, stale).await;
    }

    async fn delete(&self, id: &str) {
        delete_container(&self.cfg.runtime, id).await;
    }

    /// The container's configuration, generated with `oci-spec`: for a bundled
    /// runtime or a command, or for `image`.
    fn spec(
        &self,
        env: &Environment,
        bundle: &Path,
        args: Vec<String>,
        image: Option<&Image>,
    ) -> Result<Spec> {
        let oci = |e: oci_spec::OciSpecError| Error::Internal(format!("container spec: {e}"));
        let bind = |src: &Path, dst: &str, rw: bool| -> Result<Mount> {
            MountBuilder::default()
                .destination(dst)
                .typ("bind")
                .source(src)
                .options(vec![
                    "rbind".into(),
                    if rw { "rw" } else { "ro" }.into(),
                    "nosuid".into(),
                    "nodev".into(),
                ])
                .build()
                .map_err(oci)
        };
        let fs = |dst: &str, typ: &str, opts: &[&str]| -> Result<Mount> {
            MountBuilder::default()
                .destination(dst)
                .typ(typ)
                .source(typ)
                .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .build()
                .map_err(oci)
        };
        let tmp_size = format!("size={TMP_SIZE_MB}m");
        let mut mounts = vec![
            fs("/proc", "proc", &["nosuid", "noexec", "nodev"])?,
            fs(
                "/dev",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=64k"],
            )?,
            fs(
                "/dev/pts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            )?,
            fs(
                "/dev/shm",
                "tmpfs",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=16m"],
            )?,
            fs(
                "/tmp",
                "tmpfs",
                &["nosuid", "nodev", "mode=1777", &tmp_size],
            )?,
            bind(&bundle.join("code"), "/userfunc", false)?,
        ];
        // Filled at specialization through the instance's root (`stage_files`):
        // root's directories, readable by the instance's group only.
        let files_opts =
            format!("mode=0550,uid=0,gid={NOBODY},size={FILES_SIZE_MB}m,nr_inodes={FILES_INODES}");
        for dir in ["/secrets", "/configs"] {
            mounts.push(fs(
                dir,
                "tmpfs",
                &["nosuid", "nodev", "noexec", &files_opts],
            )?);
        }
        // An image brings its own system; the bundled runtimes use the host's.
        if image.is_some() {
            mounts.push(bind(&self.fusion_bin_dir(), IMAGE_INIT_DIR, false)?);
        } else {
            mounts.extend([
                bind(Path::new("/usr"), "/usr", false)?,
                bind(&self.etc(), "/etc", false)?,
                bind(&self.cfg.launch.runtimes_dir, "/fusion/runtimes", false)?,
                bind(&self.fusion_bin_dir(), "/fusion/bin", false)?,
                bind(&bundle.join("sock"), SOCKET_DIR, true)?,
            ]);
            for link in ["bin", "lib", "lib64", "sbin", "lib32", "libx32"] {
                let host = Path::new("/").join(link);
                if host.is_dir() && std::fs::read_link(&host).is_err() {
                    mounts.push(bind(&host, &format!("/{link}"), false)?);
                }
            }
            for dir in &self.extra_binds {
                mounts.push(bind(dir, &dir.to_string_lossy(), false)?);
            }
        }

        let mut namespaces = vec![
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
        ];
        // An image's or a command's runtime listens on a TCP port: only a
        // namespace of its own keeps that port from every other instance.
        if env.network == Network::None || listens_on_port(env) {
            namespaces.push(LinuxNamespaceType::Network);
        }
        let namespaces = namespaces
            .into_iter()
            .map(|t| LinuxNamespaceBuilder::default().typ(t).build().map_err(oci))
            .collect::<Result<Vec<_>>>()?;

        let mut resources = LinuxResourcesBuilder::default()
            .devices(vec![LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .map_err(oci)?])
            .pids(
                LinuxPidsBuilder::default()
                    .limit(DEFAULT_PIDS_LIMIT)
                    .build()
                    .map_err(oci)?,
            );
        if let Some(mb) = env.memory_mb {
            let bytes = i64::try_from(mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(bytes)
                    .swap(bytes)
                    .build()
                    .map_err(oci)?,
            );
        }
        if let Some(millis) = env.cpu_millis {
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .quota(
                        i64::try_from(millis.saturating_mul(100))
                            .unwrap_or(i64::MAX)
                            .max(1000),
                    )
                    .period(100_000u64)
                    .build()
                    .map_err(oci)?,
            );
        }

        let no_caps = LinuxCapabilitiesBuilder::default()
            .bounding(HashSet::new())
            .effective(HashSet::new())
            .permitted(HashSet::new())
            .inheritable(HashSet::new())
            .ambient(HashSet::new())
            .build()
            .map_err(oci)?;
        // Raising a hard limit past the server's own may be refused.
        let open_files = OPEN_FILES.min(crate::sys::open_files_hard_limit());
        let process = ProcessBuilder::default()
            .terminal(false)
            .user(
                UserBuilder::default()
                    .uid(NOBODY)
                    .gid(NOBODY)
                    .build()
                    .map_err(oci)?,
            )
            .args(args)
            .env(match image {
                Some(image) => image_env(image),
                None => {
                    let listen = if listens_on_port(env) {
                        format!("RUNTIME_PORT={RUNTIME_PORT}")
                    } else {
                        format!("RUNTIME_SOCKET={SOCKET_DIR}/{SOCKET_NAME}")
                    };
                    vec![
                        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
                        "HOME=/tmp".into(),
                        "LANG=C.UTF-8".into(),
                        listen,
                        "PYTHONUNBUFFERED=1".into(),
                        "PYTHONDONTWRITEBYTECODE=1".into(),
                    ]
                }
            })
            .cwd(image.map_or("/tmp", |i| i.cwd.as_str()))
            .capabilities(no_caps)
            .rlimits(vec![PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(open_files)
                .soft(open_files)
                .build()
                .map_err(oci)?])
            .no_new_privileges(true)
            .build()
            .map_err(oci)?;
        let id = bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let linux = LinuxBuilder::default()
            .cgroups_path(PathBuf::from(format!("/fusion/{id}")))
            .resources(resources.build().map_err(oci)?)
            .namespaces(namespaces)
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths())
            .seccomp(seccomp::filter().map_err(oci)?)
            .build()
            .map_err(oci)?;
        SpecBuilder::default()
            .version("1.0.2")
            .root(
                RootBuilder::default()
                    .path(image.map_or_else(|| self.rootfs(), |i| i.rootfs.clone()))
                    .readonly(true)
                    .build()
                    .map_err(oci)?,
            )
            .hostname("instance")
            .mounts(mounts)
            .process(process)
            .linux(linux)
            .build()
            .map_err(oci)
    }
}

/// Whether the environment's runtime listens on TCP `RUNTIME_PORT` in a network
/// namespace of its own (an image, or a command, which may know nothing of
/// `RUNTIME_SOCKET`) rather than on the bundle's Unix socket.
fn listens_on_port(env: &Environment) -> bool {
    env.image.is_some() || env.command.is_some()
}

/// An image instance's environment: Fusion's defaults, then the image's `Env`
/// (which wins), then the port the router dials (none of the server's own).
fn image_env(image: &Image) -> Vec<String> {
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/tmp".into(),
    ];
    let name = |kv: &str| kv.split('=').next().unwrap_or("").to_string();
    for kv in image
        .env
        .iter()
        .chain(std::iter::once(&format!("RUNTIME_PORT={RUNTIME_PORT}")))
    {
        let key = name(kv);
        env.retain(|e| name(e) != key);
        env.push(kv.clone());
    }
    env
}

/// Where a host executable is inside the container: under `/usr` as it is;
/// elsewhere (a pyenv interpreter, say) its prefix is bound at the same path.
fn inside_path(exe: &str, binds: &mut Vec<PathBuf>) -> String {
    let path = Path::new(exe);
    if !path.is_absolute() || path.starts_with("/usr") {
        return exe.to_string();
    }
    let prefix = match path.parent().and_then(Path::parent) {
        Some(p) if p != Path::new("/") => p.to_path_buf(),
        _ => return exe.to_string(),
    };
    if !binds.contains(&prefix) {
        binds.push(prefix);
    }
    exe.to_string()
}

fn walk_dirs(dir: &Path, f: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    f(dir)?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            walk_dirs(&e.path(), f)?;
        }
    }
    Ok(())
}

/// Writes `config.json` and the instance's own directories: `code` (bound
/// read-only at `/userfunc`) and `sock` (the runtime's, bound at `/run/fusion`).
fn prepare_bundle(bundle: &Path, spec: &Spec) -> std::io::Result<()> {
    std::fs::create_dir_all(bundle.join("code"))?;
    std::fs::set_permissions(bundle.join("code"), std::fs::Permissions::from_mode(0o755))?;
    let sock = bundle.join("sock");
    std::fs::create_dir_all(&sock)?;
    std::os::unix::fs::chown(&sock, Some(NOBODY), Some(NOBODY))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o700))?;
    spec.save(bundle.join("config.json"))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Deletes every container whose id starts with `prefix` (a killed server
/// leaves stopped ones, and half-created ones that `list` does not show) and
/// the bundles under `dir`: at a start (`stale`), what an earlier server left,
/// whichever backend it ran (a server that restarts on the process backend
/// still removes the containers it left); at a stop, this one's last.
pub async fn remove_containers(runtime: &Path, prefix: &str, dir: &Path, stale: bool) {
    let list = tokio::process::Command::new(runtime)
        .args(["list", "-q"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await;
    let mut ids: Vec<String> = list
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(RUNC_ROOT) {
        ids.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    ids.sort();
    ids.dedup();
    ids.retain(|id| id.starts_with(prefix));
    for id in &ids {
        delete_container(runtime, id).await;
    }
    if !ids.is_empty() && stale {
        // As the process backend says what a killed server left running.
        tracing::info!(
            containers = ids.len(),
            "deleted the containers a previous server left (it was killed, or its host stopped)"
        );
    } else if !ids.is_empty() {
        tracing::debug!(
            containers = ids.len(),
            "deleted the containers still there at the stop"
        );
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("bundles")) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Deletes a container and whatever a half-finished create left of it.
async fn delete_container(runtime: &Path, id: &str) {
    let _ = tokio::process::Command::new(runtime)
        .args(["delete", "-f", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    // runc killed while creating a container leaves a state directory without
    // state.json, which `runc delete` cannot load, and empty cgroups.
    if runtime.file_name().is_some_and(|n| n == "runc") {
        let state = Path::new(RUNC_ROOT).join(id);
        if state.is_dir() && !state.join("state.json").exists() {
            let _ = std::fs::remove_dir_all(&state);
        }
    }
    if let Ok(controllers) = std::fs::read_dir(CGROUP_ROOT) {
        for c in controllers.flatten() {
            let _ = std::fs::remove_dir(c.path().join("fusion").join(id));
        }
    }
    let _ = std::fs::remove_dir(Path::new(CGROUP_ROOT).join("fusion").join(id));
}

/// What an instance's monitor and its handle share.
struct Control {
    id: String,
    cgroups: Cgroups,
    stop_requested: AtomicBool,
    kill: Notify,
}

impl Control {
    fn stop(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }
}

struct ContainerHandle {
    control: Arc<Control>,
    address: Address,
    /// The bundle's `code` directory, bound at `/userfunc`.
    code: PathBuf,
    pid: Option<u32>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Backend for ContainerBackend {
    fn delivers_files(&self) -> bool {
        true
    }

    fn isolation(&self) -> Isolation {
        Isolation {
            backend: "container",
            summary: format!(
                "OCI containers ({}): own mount, pid, ipc and uts namespaces, read-only root, code read-only at /userfunc, private {TMP_SIZE_MB} MiB /tmp, user nobody without capabilities; the environment's memory and cpu limits (none unless set) and {DEFAULT_PIDS_LIMIT} pids per instance; reached only through its own Unix socket (an image's instance: port {RUNTIME_PORT} in its own network namespace)",
                self.cfg.runtime.display()
            ),
        }
    }

    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Handle>>> {
        Box::pin(async move {
            let id = format!("{}{}", self.cfg.prefix, req.id);
            let bundle = self.bundles().join(&id);
            let image = match &req.env.image {
                Some(path) => Some(self.images.prepare(path).await.map_err(|e| {
                    Error::Unavailable(format!("environment {}: {e}", req.env.name))
                })?),
                None => None,
            };
            // Under Fusion's init, which reaps what the runtime does not: the
            // orphans of a function's background commands.
            let (init, command) = match &image {
                Some(image) => (IMAGE_INIT, image.args.clone()),
                None => {
                    let (program, args) = self.inside.command_for(&req.env)?;
                    (BUNDLED_INIT, std::iter::once(program).chain(args).collect())
                }
            };
            let args = [init, "runtime", "init", "--"]
                .into_iter()
                .map(String::from)
                .chain(command)
                .collect();
            let spec = self.spec(&req.env, &bundle, args, image.as_ref())?;
            prepare_bundle(&bundle, &spec).map_err(|e| {
                Error::Unavailable(format!("cannot write the container bundle: {e}"))
            })?;
            // Started first, so that no container runs without it: whatever the
            // code in the container does to its stdin (a function can close it),
            // the watcher, outside, kills the container when the server dies.
            let watcher = spawn_watcher(&self.cfg.runtime, &id).map_err(|e| {
                Error::Unavailable(format!("cannot start the instance's watcher: {e}"))
            })?;
            let mut cmd = tokio::process::Command::new(&self.cfg.runtime);
            cmd.args(["run", "--keep", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            // The OCI runtime dies with the server; the container follows when
            // its stdin closes.
            crate::sys::harden_child(&mut cmd, None);
            let mut child = cmd.spawn().map_err(|e| {
                Error::Unavailable(format!(
                    "cannot start the OCI runtime {:?}: {e}",
                    self.cfg.runtime
                ))
            })?;
            super::process::forward_output(child.stdout.take(), "stdout", &req.logs);
            super::process::forward_output(child.stderr.take(), "stderr", &req.logs);
            let on_port = listens_on_port(&req.env);
            let (exit_tx, exit_rx) = watch::channel(None);
            let control = Arc::new(Control {
                id: id.clone(),
                cgroups: self.cgroups,
                stop_requested: AtomicBool::new(false),
                kill: Notify::new(),
            });

            // The monitor owns the OCI runtime's child process and the stdin pipe.
            let monitor = control.clone();
            let runtime = self.cfg.runtime.clone();
            let stdin = child.stdin.take();
            let monitor_bundle = bundle.clone();
            tokio::spawn(async move {
                let status = tokio::select! {
                    s = child.wait() => s,
                    _ = monitor.kill.notified() => {
                        let killed = tokio::process::Command::new(&runtime)
                            .args(["kill", &monitor.id, "KILL"])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .await;
                        if !killed.is_ok_and(|s| s.success()) {
                            // Not created yet, or already gone: stop the OCI runtime itself.
                            let _ = child.start_kill();
                        }
                        child.wait().await
                    }
                };
                drop(stdin);
                drop(watcher);
                // Read before the delete, which removes the cgroup; reported
                // before it too, so that a request waiting to learn why its
                // instance died is not kept waiting by the clean-up.
                let oom = monitor.cgroups.oom_kills(&monitor.id) > 0;
                let stopped = monitor.stop_requested.load(Ordering::SeqCst);
                // Killed (SIGKILL, or 137 from the init or the runtime it ran)
                // in a cgroup where the kernel has killed for memory: memory.
                // Any other end is the runtime's own, even after a process of
                // the instance was killed for memory and the function carried on.
                let exit = match Exit::of(stopped, status) {
                    Exit::Exited {
                        code: Some(137), ..
                    }
                    | Exit::Exited {
                        signal: Some(libc::SIGKILL),
                        ..
                    }
                    | Exit::Vanished(_)
                        if oom =>
                    {
                        Exit::OutOfMemory
                    }
                    exit => exit,
                };
                let _ = exit_tx.send(Some(exit));
                delete_container(&runtime, &monitor.id).await;
                let _ =
                    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&monitor_bundle))
                        .await;
            });

            // A bundled runtime listens on the bundle's socket; an image's or a
            // command's on its port, reached through the container's network
            // namespace once the OCI runtime has created it.
            let socket = Address::Unix(bundle.join("sock").join(SOCKET_NAME));
            let netns: std::sync::OnceLock<NetNs> = std::sync::OnceLock::new();
            let ready = super::wait_ready(
                &req.env.name,
                exit_rx.clone(),
                req.stopping.clone(),
                self.cfg.launch.start_timeout,
                || {
                    let (socket, netns, id) = (&socket, &netns, &id);
                    async move {
                        let address = if on_port {
                            if netns.get().is_none() {
                                let found = container_pid(&self.cfg.runtime, id)
                                    .await
                                    .and_then(|pid| NetNs::of_pid(pid).ok());
                                if let Some(ns) = found {
                                    let _ = netns.set(ns);
                                }
                            }
                            match netns.get() {
                                Some(ns) => Address::NetNs {
                                    ns: ns.clone(),
                                    port: RUNTIME_PORT,
                                },
                                None => return false,
                            }
                        } else {
                            socket.clone()
                        };
                        InstanceConnector::dial(&address).await.is_ok()
                    }
                },
            )
            .await;
            if let Err(e) = ready.and_then(|()| seal_socket_dir(&bundle, on_port)) {
                control.stop();
                return Err(e);
            }
            let address = match netns.into_inner() {
                Some(ns) => Address::NetNs {
                    ns,
                    port: RUNTIME_PORT,
                },
                None => socket,
            };
            let handle = ContainerHandle {
                control,
                address,
                code: bundle.join("code"),
                pid: container_pid(&self.cfg.runtime, &id).await,
                exit: exit_rx,
            };
            Ok(Arc::new(handle) as Arc<dyn Handle>)
        })
    }

    fn build(&self, req: BuildRequest) -> BoxFuture<'_, Result<BuildOutput>> {
        Box::pin(self.run_build(req))
    }

    fn cleanup_stale<'a>(&'a self, _envs: &'a [Environment]) -> BoxFuture<'a, ()> {
        Box::pin(self.cleanup(true))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.cleanup(false))
    }
}

/// Takes the bundle's socket directory (`/run/fusion` inside) back from the
/// instance's user once its runtime listens, before any function code runs: the
/// router dials the socket as root, so code that could swap it for a link would
/// reach any socket of the host, and a writable directory there would be disk
/// space without a limit. A bundled runtime's socket must be a socket.
fn seal_socket_dir(bundle: &Path, on_port: bool) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let dir = bundle.join("sock");
    let sealed = std::os::unix::fs::chown(&dir, Some(0), Some(0))
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)));
    if let Err(e) = sealed {
        return Err(Error::Unavailable(format!(
            "cannot seal the instance's socket directory: {e}"
        )));
    }
    let socket = std::fs::symlink_metadata(dir.join(SOCKET_NAME));
    if !on_port && !socket.is_ok_and(|m| m.file_type().is_socket()) {
        return Err(Error::Unavailable(
            "the runtime's socket is not a socket".into(),
        ));
    }
    Ok(())
}

/// A host process that kills a container when the server dies, even by
/// SIGKILL: the bundled runtimes exit when their stdin closes, but an image's
/// runtime need not, and a function can close its runtime's stdin. It waits for EOF on a pipe only the server holds, then asks
/// the OCI runtime to kill the container (whose pid namespace takes every
/// process with it). Its own process group keeps a terminal's ^C off it; it is
/// killed when the instance ends.
fn spawn_watcher(runtime: &Path, id: &str) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new("/bin/sh")
        .args(["-c", r#"read -r line; exec "$0" kill "$1" KILL"#])
        .arg(runtime)
        .arg(id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

/// The host pid of the container's first process: from runc's state file, or
/// else by asking the OCI runtime (`state`, which every OCI runtime answers).
async fn container_pid(runtime: &Path, id: &str) -> Option<u32> {
    if let Some(pid) = init_pid(runtime, id) {
        return Some(pid);
    }
    if runtime.file_name().is_some_and(|n| n == "runc") {
        return None;
    }
    let out = tokio::process::Command::new(runtime)
        .args(["state", id])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    state
        .get("pid")?
        .as_u64()
        .filter(|p| *p > 0)
        .map(|p| p as u32)
}

/// The host pid of the container's first process, from runc's state file
/// (other OCI runtimes keep theirs elsewhere).
fn init_pid(runtime: &Path, id: &str) -> Option<u32> {
    let name = runtime.file_name()?.to_string_lossy();
    if name != "runc" {
        return None;
    }
    let state = std::fs::read(Path::new(RUNC_ROOT).join(id).join("state.json")).ok()?;
    let state: serde_json::Value = serde_json::from_slice(&state).ok()?;
    state.get("init_process_pid")?.as_u64().map(|p| p as u32)
}

impl Handle for ContainerHandle {
    fn address(&self) -> &Address {
        &self.address
    }

    fn stage_code(&self, package: &Path) -> Result<String> {
        // The bundle's code directory is bound at /userfunc: files added to it are
        // seen inside at once (a directory put in its place would not be).
        let code = &self.code;
        let staged = if package.is_dir() {
            link_tree(package, code).map(|_| "/userfunc".to_string())
        } else {
            let name = package
                .file_name()
                .ok_or_else(|| Error::Internal(format!("package path {package:?} has no name")))?;
            link_or_copy(package, &code.join(name))
                .map(|_| format!("/userfunc/{}", name.to_string_lossy()))
        };
        staged.map_err(|e| Error::Storage(format!("cannot give the code to the instance: {e}")))
    }

    fn stage_files(&self, files: &[StagedFile]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        // The tmpfs at /secrets and /configs lives in the container's mount
        // namespace: reached through its first process's root. No code of the
        // function has run yet (it loads after this), so nothing in there was
        // written by anyone but root.
        let pid = self.pid.ok_or_else(|| {
            Error::Unavailable("cannot find the instance's process to give it its secrets".into())
        })?;
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        stage_files_under(&root, files).map_err(|e| {
            Error::Unavailable(format!(
                "cannot give the secrets and configmaps to the instance: {e}"
            ))
        })
    }

    fn stop(&self) {
        self.control.stop();
    }

    fn exit(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    fn usage(&self) -> Usage {
        if self.exit.borrow().is_some() {
            return Usage::default();
        }
        self.control.cgroups.usage(&self.control.id)
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }
}

/// Writes each file at its path under `root` (`secrets/<ns>/<name>/<key>`):
/// directories root's, group `nobody`, 0550; files 0440 likewise: readable by
/// the instance's user, writable by none of its processes. Never follows a link,
/// never replaces a file.
fn stage_files_under(root: &Path, files: &[StagedFile]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for file in files {
        let mut parts = file.path.components();
        let top = match parts.next() {
            Some(std::path::Component::Normal(top)) if top == "secrets" || top == "configs" => top,
            _ => {
                return Err(std::io::Error::other(format!(
                    "{} is not under secrets/ or configs/",
                    file.path.display()
                )))
            }
        };
        let mut dir = root.join(top);
        let rest: Vec<_> = parts.collect();
        let Some((name, dirs)) = rest.split_last() else {
            return Err(std::io::Error::other("a staged file needs a name"));
        };
        for part in dirs.iter().chain(std::iter::once(name)) {
            if !matches!(part, std::path::Component::Normal(_)) {
                return Err(std::io::Error::other(format!(
                    "{} is not a plain relative path",
                    file.path.display()
                )));
            }
        }
        for part in dirs {
            dir.push(part);
            match std::fs::DirBuilder::new().mode(0o550).create(&dir) {
                Ok(()) => std::os::unix::fs::chown(&dir, Some(0), Some(NOBODY))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !std::fs::symlink_metadata(&dir)?.is_dir() {
                        return Err(std::io::Error::other(format!(
                            "{} is not a directory",
                            dir.display()
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let path = dir.join(name);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o440)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        std::os::unix::fs::fchown(&out, Some(0), Some(NOBODY))?;
        out.write_all(&file.contents)?;
    }
    Ok(())
}

/// Hard-links (or copies, across file systems) one file.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)?;
    }
    Ok(())
}

/// Recreates the directory tree `from` inside `to` with hard links.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        let kind = e.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
            link_tree(&e.path(), &target)?;
        } else if kind.is_file() {
            link_or_copy(&e.path(), &target)?;
        }
    }
    Ok(())
}

/// The zone file `/etc/localtime`'s link `target` names, as an absolute path
/// under `/usr/share/zoneinfo` (some systems link it relatively, as
/// `../usr/share/zoneinfo/...`), if it is one and exists.
fn zone_file(target: &Path) -> Option<PathBuf> {
    let mut zone = PathBuf::from("/etc");
    for part in target.components() {
        match part {
            std::path::Component::RootDir => zone = PathBuf::from("/"),
            std::path::Component::ParentDir => {
                zone.pop();
            }
            std::path::Component::Normal(p) => zone.push(p),
            _ => {}
        }
    }
    (zone.starts_with("/usr/share/zoneinfo") && zone.is_file()).then_some(zone)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's binary is copied for instances, never linked: a hard
    /// link an earlier version left is taken for no copy (and replaced).
    #[test]
    fn a_hard_link_to_the_binary_is_not_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (source, link, copy) = (
            dir.path().join("s"),
            dir.path().join("l"),
            dir.path().join("c"),
        );
        std::fs::write(&source, b"binary").unwrap();
        std::fs::hard_link(&source, &link).unwrap();
        assert!(!same_file_contents_likely(&source, &link));
        std::fs::copy(&source, &copy).unwrap();
        let t = std::fs::metadata(&source).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert!(same_file_contents_likely(&source, &copy));
    }

    /// The files as the kernel writes them, under a cgroup root of either version.
    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn oom_kills_and_usage_read_from_cgroup_v1_and_v2_files() {
        let v1 = tempfile::tempdir().unwrap();
        write(
            v1.path(),
            "memory/fusion/c1/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(
            v1.path(),
            "memory/fusion/c1/memory.usage_in_bytes",
            "67108864\n",
        );
        write(v1.path(), "cpuacct/fusion/c1/cpuacct.usage", "1500000000\n");
        assert_eq!(Cgroups::V1.oom_kills_under(v1.path(), "c1"), 2);
        let usage = Cgroups::V1.usage_under(v1.path(), "c1");
        assert_eq!(usage.memory_bytes, Some(64 << 20));
        assert_eq!(usage.cpu_seconds, Some(1.5));
        assert_eq!(usage.oom_kills, Some(2));

        let v2 = tempfile::tempdir().unwrap();
        // `oom` counts memory.max events, `oom_kill` the kills: only the latter counts.
        write(
            v2.path(),
            "fusion/c1/memory.events",
            "low 0\nhigh 0\nmax 9\noom 3\noom_kill 1\noom_group_kill 0\n",
        );
        write(v2.path(), "fusion/c1/memory.current", "1048576\n");
        write(
            v2.path(),
            "fusion/c1/cpu.stat",
            "usage_usec 250000\nuser_usec 200000\nsystem_usec 50000\n",
        );
        assert_eq!(Cgroups::V2.oom_kills_under(v2.path(), "c1"), 1);
        let usage = Cgroups::V2.usage_under(v2.path(), "c1");
        assert_eq!(usage.memory_bytes, Some(1 << 20));
        assert_eq!(usage.cpu_seconds, Some(0.25));
        assert_eq!(usage.oom_kills, Some(1));

        // A container whose cgroup is gone has no kills and no usage to report.
        assert_eq!(Cgroups::V2.oom_kills_under(v2.path(), "gone"), 0);
        assert_eq!(Cgroups::V1.usage_under(v1.path(), "gone"), Usage::default());
    }

    #[test]
    fn the_time_zone_link_is_followed_whether_absolute_or_relative() {
        let utc = Path::new("/usr/share/zoneinfo/Etc/UTC");
        if !utc.is_file() {
            return; // no zone files on this machine: nothing to link to
        }
        for target in [
            "/usr/share/zoneinfo/Etc/UTC",
            "../usr/share/zoneinfo/Etc/UTC",
            "../usr/share/zoneinfo/./Etc/UTC",
        ] {
            assert_eq!(
                zone_file(Path::new(target)).as_deref(),
                Some(utc),
                "{target}"
            );
        }
        for target in [
            "/etc/hosts",
            "../etc/passwd",
            "/usr/share/zoneinfo/No/Such_Zone",
            "../../usr/share/zoneinfo",
            "zoneinfo/Etc/UTC",
        ] {
            assert_eq!(zone_file(Path::new(target)), None, "{target}");
        }
    }
}
