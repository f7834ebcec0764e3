//! Hostile functions: each test runs an attack from inside an ordinary function
//! and asserts what the user sees. On the container backend every attack is
//! denied; on the process backend (the fallback where containers cannot run) the
//! tests at the end document what it cannot stop.

mod common;

use std::time::Duration;

use common::{eventually, Server};
use serde_json::{json, Value};

/// A marker in the server's environment that no function may see.
const SECRET: (&str, &str) = ("FUSION_TEST_SECRET", "do-not-leak");

fn container_server() -> Server {
    Server::start_with(&[("FUSION_BACKEND", "container"), SECRET])
}

fn process_server() -> Server {
    Server::start_with(&[("FUSION_BACKEND", "process"), SECRET])
}

/// What a python function can see and touch of the machine it runs on. The
/// query names the server's data directory and another function's code file.
const SNOOP: &str = r#"import json, os
from flask import request
def readable(p):
    try:
        with open(p, 'rb') as f:
            f.read(1)
        return True
    except OSError:
        return False
def writable(p):
    try:
        with open(p, 'w') as f:
            f.write('pwned')
        return True
    except OSError:
        return False
def swap_socket():
    try:
        os.unlink('/run/fusion/runtime.sock')
        os.symlink('/run/docker.sock', '/run/fusion/runtime.sock')
        return True
    except OSError:
        return False
def main():
    # Writes only where they cannot harm the host running the tests.
    write = writable if request.args.get('write') == '1' else (lambda p: None)
    return json.dumps({
        "uid": os.getuid(),
        "shadow": readable('/etc/shadow'),
        "data_dir": os.path.exists(request.args['data']),
        "victim_code": readable(request.args['victim']),
        "overwrote_victim": write(request.args['victim']),
        "userfunc": sorted(os.listdir('/userfunc')) if os.path.isdir('/userfunc') else None,
        "write_userfunc": write('/userfunc/snoop.py'),
        "write_root": write('/pwned'),
        "write_tmp": write('/tmp/scratch'),
        "write_socket_dir": write('/run/fusion/filler'),
        "swapped_socket": swap_socket() if request.args.get('write') == '1' else None,
        "secret_env": [k for k in os.environ if k == 'FUSION_TEST_SECRET'],
    })
"#;

/// Runs `SNOOP` next to a victim function and answers its report; it tries to
/// write only when `write`.
fn snoop(s: &Server, write: bool) -> Value {
    s.env("python", "python", 1);
    s.function(
        "victim",
        "python",
        "victim.py",
        "def main():\n    return 'victim'\n",
        json!({}),
    );
    s.function("snoop", "python", "snoop.py", SNOOP, json!({}));
    let package = &s.ok("GET", "/v1/functions/victim", None)["package"];
    let victim = s
        .data_dir()
        .join("packages")
        .join(package["sha256"].as_str().unwrap())
        .join("victim.py");
    let url = format!(
        "/fission-function/snoop?data={}&victim={}&write={}",
        s.data_dir().display(),
        victim.display(),
        u8::from(write)
    );
    let r = s.get(&url);
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// Host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    processes_where(|cmdline| cmdline.contains(marker))
}

/// Live processes whose command line is exactly `command` (arguments
/// separated by spaces): the program itself, not a shell that names it.
fn processes_running(command: &str) -> Vec<u32> {
    processes_where(|cmdline| cmdline.trim_end() == command)
}

fn processes_where(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| matches(&String::from_utf8_lossy(&c).replace('\0', " ")))
        })
        .filter(|pid| common::alive(*pid))
        .collect()
}

/// Kills every process whose command line holds one of its markers when
/// dropped, so a test that fails midway leaves none of them running.
struct KillOnDrop(&'static [&'static str]);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in self.0.iter().flat_map(|m| processes_with(m)) {
            common::signal(pid, libc::SIGKILL);
        }
    }
}

/// Deletes `function` and waits until no process with `marker` is left.
fn delete_and_wait_gone(s: &Server, function: &str, marker: &str) {
    s.ok("DELETE", &format!("/v1/functions/{function}"), None);
    eventually(Duration::from_secs(20), marker, || {
        processes_with(marker).is_empty()
    });
}

/// A function that starts a busy loop named `marker` and waits for it, called
/// past its 1 s timeout: 504, and the loop is gone.
fn spin_past_the_timeout(s: &Server, marker: &str) {
    s.env("binary", "binary", 1);
    let code = format!("#!/bin/sh\nsh -c 'while :; do :; done' {marker} &\nwait\n");
    s.function(
        "spin",
        "binary",
        "spin.sh",
        &code,
        json!({"timeout_secs": 1}),
    );
    assert_eq!(s.get("/fission-function/spin").status(), 504);
    eventually(Duration::from_secs(20), "the busy loop is gone", || {
        processes_with(marker).is_empty()
    });
}

#[test]
fn a_container_sees_only_its_own_code_and_none_of_the_hosts_secrets() {
    let s = container_server();
    let seen = snoop(&s, true);
    assert_eq!(seen["uid"], 65534, "runs as nobody: {seen}");
    assert_eq!(seen["shadow"], false, "{seen}");
    assert_eq!(seen["data_dir"], false, "{seen}");
    assert_eq!(seen["victim_code"], false, "{seen}");
    assert_eq!(seen["overwrote_victim"], false, "{seen}");
    assert_eq!(seen["userfunc"], json!(["snoop.py"]), "{seen}");
    assert_eq!(seen["write_userfunc"], false, "{seen}");
    assert_eq!(seen["write_root"], false, "{seen}");
    assert_eq!(seen["write_tmp"], true, "a private /tmp: {seen}");
    // The router dials the runtime's socket as root: it cannot be swapped for a
    // link to another socket of the host, and its directory is no scratch space.
    assert_eq!(seen["write_socket_dir"], false, "{seen}");
    assert_eq!(seen["swapped_socket"], false, "{seen}");
    assert_eq!(seen["secret_env"], json!([]), "{seen}");
    assert_eq!(s.get("/fission-function/victim").text().unwrap(), "victim");
}

/// What a container may not ask the kernel for: a user namespace (root
/// inside it), the keyring all instances share as `nobody`, io_uring; the
/// filter is in place (seccomp mode 2) and the function runs.
#[test]
fn a_container_cannot_make_namespaces_or_reach_the_keyring() {
    let s = container_server();
    s.env("binary", "binary", 1);
    let code = r#"#!/bin/sh
grep '^Seccomp:' /proc/self/status
if unshare -U true 2>/dev/null; then echo unshare=allowed; else echo unshare=denied; fi
python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
if os.uname().machine == "x86_64":
    # add_key("user", "fusion-probe", "v", 1, KEY_SPEC_USER_KEYRING)
    r = libc.syscall(248, b"user", b"fusion-probe", b"v", 1, -4)
    print("add_key=" + ("denied" if r == -1 and ctypes.get_errno() == 1 else "allowed"))
    # clone(CLONE_NEWUSER | SIGCHLD): the flag is refused, not only unshare.
    r = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    print("clone_newuser=" + ("denied" if r == -1 and ctypes.get_errno() == 1 else "allowed"))
    # io_uring_setup(1, NULL): absent, so libuv falls back to threads.
    r = libc.syscall(425, 1, None)
    print("io_uring=" + ("absent" if r == -1 and ctypes.get_errno() == 38 else "present"))
PY
"#;
    s.function("probe", "binary", "probe.sh", code, json!({}));
    let r = s.get("/fission-function/probe");
    assert_eq!(r.status(), 200);
    let out = r.text().unwrap();
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("unshare=denied"), "{out}");
    if std::env::consts::ARCH == "x86_64" {
        assert!(out.contains("add_key=denied"), "{out}");
        assert!(out.contains("clone_newuser=denied"), "{out}");
        assert!(out.contains("io_uring=absent"), "{out}");
    }
}

#[test]
fn a_container_cannot_reach_other_instances_or_take_over_a_generic_one() {
    let s = container_server();
    s.env("python", "python", 2);
    let code = r#"import json, socket
from flask import request
def main():
    reached = []
    for address in json.loads(request.get_data()):
        try:
            if address.startswith('unix:'):
                c = socket.socket(socket.AF_UNIX)
                c.settimeout(2)
                c.connect(address[5:])
            else:
                host, port = address.rsplit(':', 1)
                c = socket.create_connection((host, int(port)), timeout=2)
            c.sendall(b'POST /v2/specialize HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}')
            reached.append(address)
        except OSError:
            pass
    return json.dumps(reached)
"#;
    s.function("probe", "python", "probe.py", code, json!({}));
    // Warm one instance for it, then aim at every instance of the server.
    assert_eq!(
        s.http
            .post(s.router_url("/fission-function/probe"))
            .body("[]")
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "[]"
    );
    eventually(Duration::from_secs(20), "the pool refills", || {
        s.ok("GET", "/v1/instances", None)
            .as_array()
            .is_some_and(|a| a.len() >= 3)
    });
    let addresses = instance_addresses(&s);
    let r = s
        .http
        .post(s.router_url("/fission-function/probe"))
        .body(serde_json::to_string(&addresses).unwrap())
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "[]", "reached other instances");
    let generic = s
        .ok("GET", "/v1/instances", None)
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "generic")
        .count();
    assert!(generic >= 1, "the generic instances stay generic");
}

#[test]
fn detached_processes_die_with_their_container() {
    let s = container_server();
    s.env("binary", "binary", 1);
    let code = "#!/bin/sh\nsetsid nohup sleep 987001 >/dev/null 2>&1 &\nprintf started\n";
    s.function("escape", "binary", "escape.sh", code, json!({}));
    assert_eq!(s.get("/fission-function/escape").text().unwrap(), "started");
    eventually(Duration::from_secs(10), "the detached process runs", || {
        !processes_with("sleep 987001").is_empty()
    });
    delete_and_wait_gone(&s, "escape", "sleep 987001");
}

#[test]
fn orphans_that_end_are_reaped_so_a_function_can_keep_starting_commands() {
    let s = container_server();
    s.env("binary", "binary", 1);
    // Each `(true &)` leaves an orphan that ends at once: a zombie of the
    // container's first process unless that process reaps it. 400 of them
    // outnumber the pids limit (256).
    let code = "#!/bin/sh\ni=0\nwhile [ $i -lt 400 ]; do\n  (true &) 2>/dev/null || { printf 'no fork after %s' $i; exit 0; }\n  i=$((i+1))\ndone\nprintf 'started %s' $i\n";
    s.function("orphans", "binary", "orphans.sh", code, json!({}));
    for _ in 0..2 {
        assert_eq!(
            s.get("/fission-function/orphans").text().unwrap(),
            "started 400"
        );
    }
}

#[test]
fn a_request_past_its_timeout_stops_every_process_of_its_container() {
    spin_past_the_timeout(&container_server(), "spin-987002");
}

#[test]
fn a_fork_bomb_stays_inside_its_pids_limit_and_other_functions_keep_answering() {
    let s = container_server();
    s.env("python", "python", 1);
    s.env("binary", "binary", 1);
    let bomb = "import os\ndef main():\n    n = 0\n    try:\n        while n < 5000:\n            if os.fork() == 0:\n                os.execv('/bin/sleep', ['sleep', '987003'])\n            n += 1\n    except OSError:\n        pass\n    return str(n)\n";
    s.function("bomb", "python", "bomb.py", bomb, json!({}));
    s.function(
        "bystander",
        "binary",
        "ok.sh",
        "#!/bin/sh\nprintf fine\n",
        json!({}),
    );
    let forked: usize = s
        .get("/fission-function/bomb")
        .text()
        .unwrap()
        .parse()
        .unwrap();
    assert!(forked > 0 && forked < 256, "forked {forked}");
    assert!(processes_with("sleep 987003").len() < 256);
    assert_eq!(s.get("/fission-function/bystander").text().unwrap(), "fine");
    delete_and_wait_gone(&s, "bomb", "sleep 987003");
}

// ---- the process backend: what it cannot stop ----

#[test]
fn the_process_backend_says_it_isolates_nothing_and_cannot_hide_the_host() {
    let s = process_server();
    let seen = snoop(&s, false);
    let env = s.ok("GET", "/v1/environments/python", None);
    assert_eq!(env["status"]["isolation"]["backend"], "process", "{env}");
    // The function runs as the server's user and sees what the server sees.
    assert_eq!(seen["data_dir"], true, "{seen}");
    assert_eq!(seen["victim_code"], true, "{seen}");
    assert_eq!(
        seen["secret_env"],
        json!([]),
        "the environment is not passed on: {seen}"
    );
}

#[test]
fn the_process_backend_stops_an_instances_children_but_not_a_new_session() {
    let s = process_server();
    spin_past_the_timeout(&s, "spin-987004");

    let code = "#!/bin/sh\nsetsid nohup sleep 987005 >/dev/null 2>&1 &\nprintf started\n";
    s.function("escape", "binary", "escape.sh", code, json!({}));
    assert_eq!(s.get("/fission-function/escape").text().unwrap(), "started");
    s.ok("DELETE", "/v1/functions/escape", None);
    eventually(Duration::from_secs(10), "the instance is gone", || {
        let all = s.ok("GET", "/v1/instances", None);
        all.as_array()
            .is_some_and(|a| a.iter().all(|i| i["function"] != "escape"))
    });
    // What the process backend cannot stop: a process in a session of its own.
    let escaped = processes_with("sleep 987005");
    assert!(!escaped.is_empty());
    for pid in escaped {
        common::signal(pid, libc::SIGKILL);
    }
}

/// A server killed with SIGKILL leaves nothing of the process backend running
/// for long: what its instances and builds started (their runtimes and build
/// shells die with it; their children did not) is stopped at the next start
/// on the same data directory, a session of its own or not.
#[test]
fn the_next_start_stops_what_a_killed_servers_processes_left() {
    let _cleanup = KillOnDrop(&["sleep 987006", "sleep 987007", "sleep 987008"]);
    let mut s = process_server();
    s.env("binary", "binary", 1);
    let code = "#!/bin/sh\nsleep 987006 >/dev/null 2>&1 &\nsetsid sleep 987008 >/dev/null 2>&1 &\nprintf started\n";
    s.function("leaver", "binary", "leaver.sh", code, json!({}));
    assert_eq!(s.get("/fission-function/leaver").text().unwrap(), "started");
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("main.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let (code, out, err) = s.cli(&[
        "pkg",
        "create",
        "--name",
        "slowbuild",
        "--env",
        "binary",
        "--src",
        src.path().to_str().unwrap(),
        "--buildcmd",
        "sleep 987007; cp -r . \"$DEPLOY_PKG\"",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // The sleep itself, not the build's shell that names it: killed before
    // it forks, the shell would leave no sleep behind.
    eventually(Duration::from_secs(30), "the build runs", || {
        !processes_running("sleep 987007").is_empty()
    });
    s.kill();
    let left: Vec<u32> = ["sleep 987006", "sleep 987007", "sleep 987008"]
        .iter()
        .flat_map(|m| processes_running(m))
        .collect();
    assert_eq!(left.len(), 3, "they outlive the killed server: {left:?}");
    s.launch();
    eventually(Duration::from_secs(20), "what it left is stopped", || {
        left.iter().all(|pid| !common::alive(*pid))
    });
}

/// A server killed on one backend and started again on the other still
/// removes what the first left: the containers of the container backend,
/// the processes of the process backend.
#[test]
fn a_start_on_either_backend_removes_what_a_killed_server_left_on_the_other() {
    let _cleanup = KillOnDrop(&["sleep 987009"]);
    let mut s = container_server();
    s.env("binary", "binary", 1);
    let code = "#!/bin/sh\nprintf started\n";
    s.function("stayer", "binary", "stayer.sh", code, json!({}));
    assert_eq!(s.get("/fission-function/stayer").text().unwrap(), "started");
    s.kill();
    let left = common::containers_of(&s.data);
    assert!(!left.is_empty(), "the killed server left its containers");
    s.set_env("FUSION_BACKEND", "process");
    s.launch();
    // Removed before the server answers.
    let env = s.ok("GET", "/v1/environments/binary", None);
    assert_eq!(env["status"]["isolation"]["backend"], "process", "{env}");
    assert_eq!(common::containers_of(&s.data), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(s.data.join("containers/bundles"))
            .unwrap()
            .count(),
        0
    );

    let code = "#!/bin/sh\nsetsid sleep 987009 >/dev/null 2>&1 &\nprintf started\n";
    s.function("leaver", "binary", "leaver.sh", code, json!({}));
    assert_eq!(s.get("/fission-function/leaver").text().unwrap(), "started");
    s.kill();
    let left = processes_running("sleep 987009");
    assert_eq!(left.len(), 1, "it outlives the killed server: {left:?}");
    s.set_env("FUSION_BACKEND", "container");
    s.launch();
    eventually(Duration::from_secs(20), "what it left is stopped", || {
        left.iter().all(|pid| !common::alive(*pid))
    });
}

/// A build that makes its output a link to a directory of the host: the
/// server (root) would have read, stripped, chowned and stored that directory
/// as the package. The build fails, says why, and the directory is as it was.
#[test]
fn a_build_whose_output_links_to_a_host_directory_fails_and_leaves_it_alone() {
    let s = container_server();
    s.env("binary", "binary", 1);
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir(host.path().join("sub")).unwrap();
    std::fs::write(host.path().join("sub/secret.txt"), "host only").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", host.path().join("sub/link")).unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("main.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let buildcmd = format!("ln -s {} \"$DEPLOY_PKG\"", host.path().display());
    let (code, out, err) = s.cli(&[
        "pkg",
        "create",
        "--name",
        "escape",
        "--env",
        "binary",
        "--src",
        src.path().to_str().unwrap(),
        "--buildcmd",
        &buildcmd,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let mut p = Value::Null;
    eventually(Duration::from_secs(60), "the build ends", || {
        p = s.ok("GET", "/v1/packages/escape", None);
        !matches!(
            p["status"]["buildstatus"].as_str(),
            Some("pending" | "running")
        )
    });
    assert_eq!(p["status"]["buildstatus"], "failed", "{p}");
    let (code, log, err) = s.cli(&["pkg", "logs", "--name", "escape"]);
    assert_eq!(code, 0, "{err}");
    assert!(log.contains("not a directory but a link"), "{log}");
    let mut left: Vec<String> = walk(host.path());
    left.sort();
    assert_eq!(left, ["sub", "sub/link", "sub/secret.txt"], "{left:?}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("sub/secret.txt")).unwrap(),
        "host only"
    );
}

/// Every path under `dir`, relative to it, links not followed.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            out.push(
                path.strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if e.file_type().unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    out
}

/// The socket files in the process backend's instance directory, as addresses
/// (`unix:` and the path the server names them by: its data directory made
/// absolute).
fn socket_addresses(s: &Server) -> Vec<String> {
    let dir = s.data.canonicalize().unwrap().join("instances");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| format!("unix:{}", e.unwrap().path().display()))
        .collect();
    names.sort();
    names
}

/// The permission bits of `path`.
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The addresses `/v1/instances` reports.
fn instance_addresses(s: &Server) -> Vec<String> {
    let mut all: Vec<String> = s
        .ok("GET", "/v1/instances", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    all
}

#[test]
fn the_process_backend_reaches_bundled_runtimes_by_sockets_only_the_servers_user_can_open() {
    let mut s = process_server();
    s.env("python", "python", 1);
    s.function(
        "hello",
        "python",
        "hello.py",
        "def main():\n    return 'hi'\n",
        json!({}),
    );
    assert_eq!(s.get("/fission-function/hello").text().unwrap(), "hi");
    let dir = s.data.join("instances");
    assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
    eventually(Duration::from_secs(20), "the pool refills", || {
        instance_addresses(&s).len() == 2
    });
    // Every instance (the specialized one and the generic one) listens on a
    // socket of its own there, and nothing else is there.
    assert_eq!(instance_addresses(&s), socket_addresses(&s));

    // An environment's own command may know nothing of RUNTIME_SOCKET: it gets
    // a loopback port, as Fission's runtimes expect.
    s.ok(
        "POST",
        "/v1/environments",
        Some(json!({"name": "own", "command": [common::BIN, "runtime", "binary"], "poolsize": 1})),
    );
    eventually(
        Duration::from_secs(20),
        "the command's instance is up",
        || {
            instance_addresses(&s)
                .iter()
                .any(|a| a.starts_with("127.0.0.1:"))
        },
    );

    // Sockets left by a killed server are gone when the next one starts (its
    // pools: one generic python instance, one of the command's).
    s.kill();
    s.launch();
    eventually(Duration::from_secs(20), "the pools refill", || {
        instance_addresses(&s).len() == 2
    });
    let unix: Vec<String> = instance_addresses(&s)
        .into_iter()
        .filter(|a| a.starts_with("unix:"))
        .collect();
    assert_eq!(unix, socket_addresses(&s));

    // A directory removed under the server is made again, as private, for the
    // next instance.
    std::fs::remove_dir_all(&dir).unwrap();
    s.env("python-b", "python", 1);
    eventually(Duration::from_secs(20), "the new pool fills", || {
        instance_addresses(&s).len() == 3
    });
    assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
    assert_eq!(socket_addresses(&s).len(), 1);
}

#[test]
fn no_container_outlives_a_server_stopped_while_its_pool_fills() {
    let mut s = container_server();
    // A runtime that takes 2 s to listen: its containers are still starting
    // when the server is told to stop.
    s.ok(
        "POST",
        "/v1/environments",
        Some(json!({
            "name": "slow",
            "command": ["/bin/sh", "-c", "sleep 2; exec /fusion/bin/fusion runtime binary"],
            "poolsize": 2
        })),
    );
    eventually(Duration::from_secs(20), "containers are starting", || {
        !common::containers_of(s.data_dir()).is_empty()
    });
    s.stop();
    let left = common::containers_of(s.data_dir());
    assert!(left.is_empty(), "containers left: {left:?}");
}

#[test]
fn network_none_keeps_a_function_off_the_hosts_network() {
    let s = container_server();
    let code = r#"import socket
from flask import request
def main():
    try:
        socket.create_connection(('127.0.0.1', int(request.args['port'])), timeout=2).close()
        return 'reached'
    except OSError:
        return 'unreachable'
"#;
    // The API listener stands for any service on the host's loopback.
    let port = s.api.rsplit(':').next().unwrap().to_string();
    for (network, expected) in [("host", "reached"), ("none", "unreachable")] {
        let env = format!("net-{network}");
        s.ok(
            "POST",
            "/v1/environments",
            Some(json!({"name": env, "runtime": "python", "poolsize": 0, "network": network})),
        );
        s.function(&format!("dial-{network}"), &env, "dial.py", code, json!({}));
        let r = s.get(&format!("/fission-function/dial-{network}?port={port}"));
        assert_eq!(r.text().unwrap(), expected, "network {network}");
    }
}

#[test]
fn a_container_whose_function_closed_its_stdin_still_dies_with_a_killed_server() {
    let mut s = container_server();
    s.env("python", "python", 0);
    let code = "import os\ndef main():\n    os.close(0)\n    return 'deaf'\n";
    s.function("deaf", "python", "deaf.py", code, json!({}));
    assert_eq!(s.get("/fission-function/deaf").text().unwrap(), "deaf");
    let pid = s.instances("deaf")[0]["pid"].as_u64().unwrap() as u32;
    s.kill();
    eventually(Duration::from_secs(20), "the container is gone", || {
        !common::alive(pid)
    });
}
