//! `fusion runtime init -- PROGRAM ARGS...`: the first process of every
//! instance's container. It starts the runtime, passes it every signal it
//! gets, reaps every process that ends in the container and exits as the
//! runtime exits (the kernel then kills whatever else the container runs).
//!
//! The runtimes were that first process themselves, and none of them (nor
//! Fission's images) reaps children it did not start: each background
//! command a function left behind stayed a zombie, counted against the
//! container's pids limit, until about 250 of them stopped the function from
//! starting anything at all.
#![allow(unsafe_code)]

use std::ffi::OsString;

/// Runs `command` under this process, which never returns.
pub fn run(command: &[OsString]) -> ! {
    let Some((program, args)) = command.split_first() else {
        eprintln!("error: fusion runtime init needs a command to run");
        std::process::exit(2);
    };
    // Every signal waits for `sigwaitinfo` below. Done before the child
    // exists, so none comes between; the child clears the mask again.
    let all = signal_set();
    // SAFETY: pthread_sigmask reads the set it is given; this process has one thread.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    let mut command = std::process::Command::new(program);
    command.args(args);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (sigemptyset, pthread_sigmask).
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child.id() as libc::pid_t,
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", program.to_string_lossy());
            std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    loop {
        // SAFETY: sigwaitinfo reads the set and writes only the siginfo given.
        let signal = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(&all, &mut info)
        };
        match signal {
            libc::SIGCHLD => {
                if let Some(status) = reap(child) {
                    std::process::exit(status);
                }
            }
            // Interrupted (a stopped and continued init): wait again.
            s if s < 0 => {}
            s => {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(child, s);
                }
            }
        }
    }
}

/// Every signal this process can wait for.
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the set it is given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// Reaps every process that has ended; `child`'s exit status as a shell
/// reports it (128 + the signal that killed it) once it is among them.
fn reap(child: libc::pid_t) -> Option<i32> {
    let mut ended = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only the status it is given.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return ended;
        }
        if pid == child {
            ended = Some(if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            });
        }
    }
}
