//! The system calls Fusion makes itself, kept in one place: a parent-death
//! signal, so that an instance dies with the server even when the server is
//! killed with SIGKILL; an address-space limit for environments that declare one;
//! killing a process group; reading the open-file limit; asking whether the
//! server runs as root; allocating a file's blocks ahead (the engine's
//! journal); and lowering a thread's scheduling class (the engine's runaway
//! expression threads).
#![allow(unsafe_code)]

/// Removes the tree at `path` (absent is fine) that code Fusion does not
/// trust wrote, at any depth: `std::fs::remove_dir_all` recurses once per
/// level, so a build that nests 60,000 directories overflowed the stack of
/// the thread removing them and aborted the server. `rm -rf` (coreutils)
/// walks a tree of any depth, on one file system, in a process of its own;
/// where it cannot run or fails (an `rm` without `--one-file-system`),
/// `remove_dir_all`.
pub fn remove_tree(path: &std::path::Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let removed = std::process::Command::new("rm")
        .args(["-rf", "--one-file-system", "--"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output();
    match removed {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => std::fs::remove_dir_all(path).map_err(|e| {
            std::io::Error::other(format!(
                "rm -rf {}: {}; then: {e}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }),
        Err(_) => std::fs::remove_dir_all(path),
    }
}

/// Arranges for `cmd`'s process to get SIGKILL when the thread that spawned it
/// (a long-lived runtime worker) exits, and to have at most `memory_mb` MiB of
/// address space.
pub fn harden_child(cmd: &mut tokio::process::Command, memory_mb: Option<u64>) {
    let limit = memory_mb.map(|mb| mb.saturating_mul(1 << 20));
    // The soft open-file limit the server started with, for its children
    // (`raise_open_files_limit` raised the server's own), as Go's os/exec
    // does: a program may still use select(2), which breaks past 1024.
    let open_files = match NOFILE_BEFORE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        soft => Some(libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: NOFILE_MAX.load(std::sync::atomic::Ordering::Relaxed) as libc::rlim_t,
        }),
    };
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, setrlimit, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited"));
            }
            if let Some(bytes) = limit {
                let rl = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(rl) = &open_files {
                if libc::setrlimit(libc::RLIMIT_NOFILE, rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Sends SIGKILL to every process of the process group `pgid` (an instance of
/// the process backend and the children it did not move elsewhere).
pub fn kill_group(pgid: u32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a group.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), libc::SIGKILL);
    }
}

/// Sends SIGKILL to process `pid`.
pub fn kill_pid(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// The hard limit on open files of this process (an instance may not get more).
pub fn open_files_hard_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only to the rlimit it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    rl.rlim_max
}

/// The soft open-file limit before `raise_open_files_limit` raised it, and
/// the hard one (0: not raised).
static NOFILE_BEFORE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static NOFILE_MAX: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Raises this process's soft limit on open files to its hard limit (at most
/// 1,048,576, the kernel's usual `nr_open`), as servers that hold many
/// connections do: systemd starts services at a soft 1024 under a hard
/// 524,288, meant to be raised by those that need more. The soft limits
/// before and after. Children started through `harden_child` get the limit
/// back as it was.
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only to the rlimit it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = rl.rlim_cur;
    let wanted = rl.rlim_max.min(1 << 20);
    if before >= wanted {
        return Ok((before, before));
    }
    rl.rlim_cur = wanted;
    // SAFETY: setrlimit reads only the rlimit it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    NOFILE_MAX.store(rl.rlim_max, std::sync::atomic::Ordering::Relaxed);
    NOFILE_BEFORE.store(before.max(1), std::sync::atomic::Ordering::Relaxed);
    Ok((before, wanted))
}

/// Allocates `len` bytes of `file` from its start (reading as zeros) and sets
/// its size to at least `len`, as `fallocate(2)` with no flags: writes within
/// them then change neither the file's size nor its allocation.
pub fn preallocate(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: fallocate reads only its integer arguments; the descriptor is
    // open for as long as `file` is borrowed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes free (to an unprivileged user) on the filesystem that holds `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs is plain data, for which all zeros is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The calling thread's kernel id.
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Moves thread `tid` of this process to the idle scheduling class
/// (`SCHED_IDLE`): it then runs only when nothing else wants the CPU. No
/// privilege is needed to lower a thread's class; nothing here raises it back.
pub fn make_thread_idle(tid: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; a `tid`
    // that names no thread makes it fail with ESRCH.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the server runs as root (the container backend needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Connects to `addr` from inside the network namespace `ns` (an open
/// `/proc/<pid>/ns/net`), on the calling thread, which must be one that may
/// block. The thread enters the namespace only for the `connect` and is put back
/// in its own before returning: a socket keeps the namespace it was made in, and
/// pooled threads must never run other work in an instance's namespace.
pub fn connect_in_netns(
    ns: &std::fs::File,
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::AsRawFd;
    let own = std::fs::File::open("/proc/thread-self/ns/net")?;
    // SAFETY: setns takes two plain integers and changes only this thread's
    // network namespace; both descriptors stay open for the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout);
    // SAFETY: as above, with the thread's own namespace, opened before leaving it.
    if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // Going on would run unrelated work (DNS, other connections) in a
        // function's namespace; this cannot happen short of a kernel fault.
        eprintln!(
            "fatal: cannot return a thread to the server's network namespace: {}",
            std::io::Error::last_os_error()
        );
        std::process::abort();
    }
    stream
}

#[cfg(test)]
mod tests {
    use super::remove_tree;

    /// A tree nested far past what a recursive removal can walk goes, from a
    /// thread with a small stack.
    #[test]
    fn a_tree_of_any_depth_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("deep");
        std::fs::create_dir(&root).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let root_c = c(root.to_str().unwrap());
        let d = c("d");
        // SAFETY: plain calls on descriptors this test opens and closes.
        unsafe {
            let mut fd = libc::open(root_c.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
            assert!(fd >= 0);
            for _ in 0..10_000 {
                assert_eq!(libc::mkdirat(fd, d.as_ptr(), 0o755), 0);
                let next = libc::openat(fd, d.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
                assert!(next >= 0);
                libc::close(fd);
                fd = next;
            }
            libc::close(fd);
        }
        let gone = root.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || remove_tree(&gone).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(!root.exists());
        // Nothing there is nothing to do.
        remove_tree(&root).unwrap();
    }
}
