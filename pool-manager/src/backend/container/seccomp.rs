//! The system calls an instance (or a build) may not make: a seccomp filter
//! that allows everything else, so the bundled runtimes, Fission's images and
//! whatever a function starts keep working, while the kernel's surfaces a
//! function has no use for are closed. Without it the whole kernel was
//! reachable: user namespaces (`unshare -U`, then root inside one), the keyring
//! (a channel between instances, which all run as `nobody`), bpf, perf,
//! io_uring.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// Refused with EPERM: what only a privileged process, a debugger or a
/// sandbox of its own would make.
const DENIED: &[&str] = &[
    // Namespaces, mounts and roots: a user namespace makes its maker root inside it.
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    // The kernel keyring, shared by every process of a user.
    "add_key",
    "keyctl",
    "request_key",
    // Kernel interfaces with a history of escalations.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    // Other processes' memory and descriptors.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    // The machine's own settings.
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_adjtime",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "vhangup",
    "nfsservctl",
    "get_kernel_syms",
    "query_module",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vm86",
    "vm86old",
    "fanotify_init",
];

/// Refused with ENOSYS, so that callers take their usual fallback: `clone3`
/// (its flags are in memory a filter cannot read; glibc then uses `clone`,
/// whose flags it can) and io_uring (libuv then uses its thread pool).
const ABSENT: &[&str] = &[
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// The `clone` flags that make namespaces.
const CLONE_NEW: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The filter: every architecture the machine runs binaries of is listed, so
/// that the 32-bit entry points are held to the same rules (and any other is
/// refused by the runtime).
pub(super) fn filter() -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let refuse = |list: &[&str], errno: u32| -> Result<LinuxSyscall, oci_spec::OciSpecError> {
        LinuxSyscallBuilder::default()
            .names(names(list))
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno)
            .build()
    };
    let mut syscalls = vec![refuse(DENIED, EPERM)?, refuse(ABSENT, ENOSYS)?];
    // `clone` with any namespace flag: one rule a flag (rules of one call are or'ed).
    for flag in CLONE_NEW {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(EPERM)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(flag)
                    .value_two(flag)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?])
                .build()?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}
