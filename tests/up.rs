//! `fusion up`, the quickstart, and graceful shutdown, as a user runs them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::probe::Probe;
use common::{alive, eventually, signal, Server, BIN};
use serde_json::{json, Value};

#[test]
fn up_applies_the_examples_and_prints_urls_that_answer() {
    let dir = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflow-examples");
    let (mut child, stdout) = spawn_up(dir.path(), &examples);
    let mut lines = BufReader::new(stdout).lines();
    let mut router = None;
    let mut tries = Vec::new();
    let mut workflow_hint = None;
    let mut url_export = None;
    let mut token_export = None;
    let mut api_curl = None;
    let mut cli_hint = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((_, rest)) = line.split_once("(export FUSION_URL=") {
            url_export = Some(format!("export FUSION_URL={}", rest.trim_end_matches(')')));
        }
        if line.trim().starts_with("export FUSION_TOKEN=") {
            token_export = Some(line.trim().to_string());
        }
        if line
            .trim()
            .starts_with("curl -H \"Authorization: Bearer $FUSION_TOKEN\"")
        {
            api_curl = Some(line.trim().to_string());
        }
        if line.trim().starts_with("fusion run list") {
            cli_hint = Some(line.trim().to_string());
        }
        if let Some(url) = line.trim().strip_prefix("router: ") {
            router = Some(url.to_string());
        }
        // Plain `curl URL` lines are the routes to try.
        if let Some(url) = line.trim().strip_prefix("curl http") {
            tries.push(format!("http{url}"));
        }
        if line.contains("/fission-function/") {
            workflow_hint = Some(line.clone());
        }
        if line.starts_with("Stop with") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let router = router.expect("up prints the router URL");
    assert!(
        tries.iter().any(|t| t.ends_with("/hello/world")),
        "{tries:?}"
    );
    let http = reqwest::blocking::Client::new();
    // Every URL it suggests answers.
    for url in &tries {
        let r = http.get(url).send().unwrap();
        assert_eq!(r.status(), 200, "{url}: {:?}", r.text());
    }
    // The workflow hint works as printed.
    let hint = workflow_hint.expect("up shows how to invoke a workflow");
    let url = hint.split_whitespace().last().unwrap();
    let r = http
        .post(url)
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{hint}");
    let hello = http
        .get(format!("{router}/hello/world"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(hello, "Hello, world, from python!\n");
    // The token lines, run as a user pastes them into a shell: the API call
    // with curl, and the CLI.
    let token_export = token_export.expect("up shows how to export the token");
    let api_curl = api_curl.expect("up shows a curl call of the API with the token");
    let out = Command::new("sh")
        .args(["-c", &format!("{token_export}\n{api_curl}")])
        .env_remove("FUSION_TOKEN")
        .output()
        .unwrap();
    let functions: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{api_curl}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    // The examples' functions, as the API lists them.
    let names: Vec<&str> = functions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(!names.is_empty(), "{functions}");
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let url_export = url_export.expect("up shows how to export FUSION_URL");
    let cli_hint = cli_hint.expect("up shows a CLI command");
    let out = Command::new("sh")
        .args(["-c", &format!("{url_export}\n{token_export}\n{cli_hint}")])
        .env("PATH", path)
        .env_remove("FUSION_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("STATUS"),
        "{cli_hint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    signal(child.0.id(), libc::SIGTERM);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Examples that cannot be applied (here, a document with a mistake): the
/// server runs, and what `up` prints says so beside the URLs, where it is
/// read, not only among the server's log lines.
#[test]
fn up_says_beside_its_urls_when_the_examples_were_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let examples = dir.path().join("examples");
    std::fs::create_dir(&examples).unwrap();
    std::fs::write(
        examples.join("env.yaml"),
        "kind: Environment\nname: e1\nruntime: pyton\n",
    )
    .unwrap();
    let (_child, stdout) = spawn_up(dir.path(), &examples);
    let mut said = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("Stop with") {
            break;
        }
        said.push(line);
    }
    let up = said.iter().position(|l| l == "Fusion is up.");
    let note = said.iter().position(|l| {
        l.contains("NOTE:") && l.contains("was not applied") && l.contains("1 error in")
    });
    assert!(
        matches!((up, note), (Some(u), Some(n)) if n > u),
        "{said:#?}"
    );
}

/// `fusion up` on free loopback ports with a data directory in `dir`,
/// applying `examples`; killed on every path out of the test (a failed
/// assertion included), and what it prints.
fn spawn_up(
    dir: &std::path::Path,
    examples: &std::path::Path,
) -> (KillOnDrop, std::process::ChildStdout) {
    let mut child = Command::new(BIN)
        .args(["up", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--router-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--examples",
        ])
        .arg(examples)
        .env("FUSION_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (KillOnDrop(child), stdout)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_stops_every_instance() {
    let mut s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    let code = format!("#!/bin/sh\n{}\nprintf finished\n", probe.curl("/gate/go"));
    s.function("slow", "binary", "slow.sh", &code, json!({}));
    let pending = std::thread::spawn({
        let http = s.http.clone();
        let url = s.router_url("/fission-function/slow");
        move || {
            let r = http.get(url).send().unwrap();
            (r.status().as_u16(), r.text().unwrap())
        }
    });
    eventually(Duration::from_secs(20), "the request is in flight", || {
        s.instances("slow")
            .iter()
            .any(|i| i["active_requests"] == 1)
    });
    let pids = s.instance_pids();
    let server = s.child.take().unwrap();
    signal(server.id(), libc::SIGTERM);
    // New connections are refused while the old request is still served.
    eventually(Duration::from_secs(10), "the listener closes", || {
        std::net::TcpStream::connect(s.router.trim_start_matches("http://")).is_err()
    });
    // And the ports stay the server's: an instance on the host's network
    // that listened there would get the next client's token.
    for url in [&s.router, &s.api] {
        let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        let squatter =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        squatter.set_reuse_address(true).unwrap();
        let e = squatter.bind(&addr.into()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{url}: {e}");
    }
    probe.open("go");
    assert_eq!(pending.join().unwrap(), (200, "finished".to_string()));
    let mut server = server;
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for pid in pids {
        assert!(!alive(pid), "instance {pid} outlived the server");
    }
}

/// A server with the shutdown grace given, and a call to a binary function
/// that sleeps `secs` in flight: (the server, the call's status and body).
fn slow_call_in_flight(
    grace_ms: &str,
    secs: u32,
) -> (Server, std::thread::JoinHandle<(u16, serde_json::Value)>) {
    let s = Server::start_with(&[("FUSION_SHUTDOWN_GRACE_MS", grace_ms)]);
    s.env("binary", "binary", 1);
    let code = format!("#!/bin/sh\nsleep {secs}\n");
    s.function("slow", "binary", "slow.sh", &code, json!({}));
    let pending = std::thread::spawn({
        let http = s.http.clone();
        let url = s.router_url("/fission-function/slow");
        move || {
            let r = http.get(url).send().unwrap();
            let status = r.status().as_u16();
            (status, r.json().unwrap_or(serde_json::Value::Null))
        }
    });
    eventually(Duration::from_secs(20), "the request is in flight", || {
        s.instances("slow")
            .iter()
            .any(|i| i["active_requests"] == 1)
    });
    (s, pending)
}

/// A call still running at the end of the shutdown grace is cut off with 503
/// `shutting_down`: the server's doing, not a failed instance's 502. SIGHUP
/// (the terminal that ran it closed) is such a graceful stop too, not the
/// default action that killed the server with its calls in flight.
#[test]
fn a_call_cut_off_at_the_end_of_the_grace_gets_503_shutting_down() {
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let (mut s, pending) = slow_call_in_flight("300", 30);
        let mut server = s.child.take().unwrap();
        signal(server.id(), sig);
        let (status, body) = pending.join().unwrap();
        assert_eq!(status, 503, "signal {sig}: {body}");
        assert_eq!(body["error"]["code"], "shutting_down", "{body}");
        assert!(server.wait().unwrap().success(), "signal {sig}");
    }
}

/// An OCI runtime named on purpose that cannot run fails the start: it is
/// not a reason to run functions unisolated.
#[test]
fn a_named_oci_runtime_that_cannot_run_is_an_error_not_a_fallback() {
    // One that is not there, and one that runs but is no OCI runtime (it
    // "succeeded" in running nothing, and every instance then failed).
    for (runtime, why) in [
        ("/nonexistent/runc", "cannot run"),
        ("/bin/true", "is it an OCI runtime"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut server = spawn_server(
            "auto",
            &dir.path().join("data"),
            &log,
            &[("FUSION_OCI_RUNTIME", runtime)],
        );
        assert!(!gives_up(&mut server).success(), "{runtime}");
        let err = std::fs::read_to_string(&log).unwrap();
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: --oci-runtime"), "{err}");
        assert!(last.contains(why), "{runtime}: {err}");
        assert!(!err.contains("falling back"), "{err}");
    }
}

/// Every connection closed at the cap is said, not only the first of a burst
/// (the rest used to wait for a refusal after the log interval).
#[test]
fn connections_closed_at_the_cap_are_all_said() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut server = spawn_server(
        "process",
        &dir.path().join("data"),
        &log,
        &[
            ("FUSION_MAX_CONNECTIONS", "1"),
            ("FUSION_HEADER_TIMEOUT_MS", "60000"),
        ],
    );
    let line = BufReader::new(server.0.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let router = listening_on(&line, "router=");
    let router = router.trim_start_matches("http://").to_string();
    let mut held = std::net::TcpStream::connect(&router).unwrap();
    held.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(held.read(&mut buf).unwrap() > 0);
    for _ in 0..3 {
        let mut extra = std::net::TcpStream::connect(&router).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut text = Vec::new();
        let _ = extra.read_to_end(&mut text);
        assert!(text.is_empty(), "{:?}", String::from_utf8_lossy(&text));
    }
    drop(held);
    eventually(Duration::from_secs(20), "the router answers again", || {
        reqwest::blocking::get(format!("http://{router}/nothing")).is_ok_and(|r| r.status() == 404)
    });
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("2 more connections were closed at the cap"),
        "{said}"
    );
}

/// A signal while the server starts (a service manager's stop, Ctrl-C right
/// after `fusion up`) stops it gracefully once it has started, rather than
/// the default action that killed it with what it had started.
#[test]
fn a_signal_while_the_server_starts_stops_it_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
    let mut server = spawn_server("auto", &data, &log, &[]);
    // Written early in the start, well before the listeners.
    eventually(Duration::from_secs(30), "the start is under way", || {
        data.join("token").exists()
    });
    signal(server.0.id(), libc::SIGTERM);
    let status = gives_up(&mut server);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}: {log}");
}

/// A signal while `fusion up` waits for a data directory another server
/// holds stops it there, at once and gracefully (nothing had started), and
/// it does not say that Fusion is up.
#[test]
fn a_signal_while_up_waits_for_its_data_directory_stops_it_without_saying_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_holder, _, _) = started_on(&dir.path().join("data"), &dir.path().join("holder.log"));
    let (mut up, stdout) = spawn_up(dir.path(), &dir.path().join("no-examples"));
    eventually(Duration::from_secs(30), "up catches SIGTERM", || {
        catches(up.0.id(), libc::SIGTERM)
    });
    signal(up.0.id(), libc::SIGTERM);
    let status = gives_up(&mut up);
    // Without the cut, it waited out the lock and failed with "in use by".
    assert!(status.success(), "{status:?}");
    let mut said = String::new();
    std::io::Read::read_to_string(&mut { stdout }, &mut said).unwrap();
    assert!(!said.contains("Fusion is up"), "{said}");
}

/// A second SIGTERM (an impatient Ctrl-C) stops the server at once rather
/// than after the rest of the grace; the call cut off gets 503.
#[test]
fn a_second_signal_stops_without_the_rest_of_the_grace() {
    let (mut s, pending) = slow_call_in_flight("600000", 600);
    let mut server = KillOnDrop(s.child.take().unwrap());
    signal(server.0.id(), libc::SIGTERM);
    eventually(Duration::from_secs(10), "the listener closes", || {
        std::net::TcpStream::connect(s.router.trim_start_matches("http://")).is_err()
    });
    signal(server.0.id(), libc::SIGTERM);
    // Well within the ten minutes of grace the first signal gave.
    eventually(Duration::from_secs(60), "the server stops", || {
        server.0.try_wait().unwrap().is_some()
    });
    let (status, body) = pending.join().unwrap();
    assert_eq!(status, 503, "{body}");
}

/// A NATS URL that is none is refused at start, in a line, not taken and
/// found out at the first message-queue trigger.
#[test]
fn a_server_refuses_a_nats_url_that_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["server", "--nats-url", "foo://", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"foo://\" is not a NATS URL (nats://host:port or tls://host:port)"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing made");
}

/// A second server on a data directory in use fails at once with the reason
/// (after waiting a moment, as for a server killed an instant before), and
/// a server killed outright is started again on its data at once.
#[test]
fn a_data_directory_serves_one_server_at_a_time() {
    let mut s = Server::start();
    let out = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(&s.data)
        .args([
            "--router-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Which process holds it, from /proc/locks.
    let holder = format!("is in use by process {} (", s.pid());
    assert!(err.contains(&holder), "{err}");
    assert!(!err.contains("Os {"), "{err}");
    s.kill();
    s.launch();
    s.ok("GET", "/v1/environments", None);
}

/// The server's log to a file or a pipe is plain text (no colour codes), and
/// with FUSION_LOG_FORMAT=json one JSON object a line.
#[test]
fn the_log_to_a_file_is_plain_text_or_json_lines() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let data = dir.path().join("data");
        let env = [("FUSION_LOG", "info"), ("FUSION_LOG_FORMAT", format)];
        let mut child = spawn_server("process", &data, &log, &env);
        let stdout = child.0.stdout.take().unwrap();
        // The listening line comes after the start's log lines; with JSON
        // logs it is JSON too.
        let first = BufReader::new(stdout).lines().next().unwrap().unwrap();
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&first).unwrap();
            assert_eq!(v["message"], "fusion listening", "{first}");
            assert!(
                v["api"].as_str().unwrap().starts_with("http://127.0.0.1:"),
                "{first}"
            );
        } else {
            assert!(
                first.starts_with("fusion listening router=http://"),
                "{first}"
            );
        }
        signal(child.0.id(), libc::SIGTERM);
        assert!(child.0.wait().unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("fusion is listening"), "{text}");
        assert!(!text.contains('\u{1b}'), "{format}: {text:?}");
        if format == "json" {
            for line in text.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert!(v["level"].is_string(), "{line}");
            }
        }
    }
}

/// Started under a service manager's soft limit on open files (1024 under
/// a higher hard limit, as systemd does), the server raises it to the hard
/// one, and its connection caps are reckoned from that.
#[test]
fn the_server_raises_its_open_files_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    // prlimit (util-linux) sets the limits and becomes the server.
    let mut cmd = Command::new("prlimit");
    cmd.args([
        "--nofile=512:2048",
        BIN,
        "server",
        "--backend",
        "process",
        "--data-dir",
    ])
    .arg(dir.path().join("data"))
    .args([
        "--router-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ])
    .env("FUSION_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).unwrap());
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let line = BufReader::new(stdout).lines().next().unwrap().unwrap();
    let (router, api) = (listening_on(&line, "router="), listening_on(&line, "api="));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["2048", "2048"],
        "{open_files}"
    );
    // A function's process gets the limit the server started with, as Go's
    // os/exec gives its children (a program may still use select(2)).
    let token = std::fs::read_to_string(dir.path().join("data/token")).unwrap();
    let http = reqwest::blocking::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{api}{path}"))
            .bearer_auth(token.trim())
    };
    let r = call(reqwest::Method::POST, "/v1/environments")
        .json(&json!({"name": "sh", "runtime": "binary", "poolsize": 0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let package: Value = call(reqwest::Method::POST, "/v1/archives")
        .query(&[("filename", "limit.sh")])
        .header("content-type", "application/octet-stream")
        .body("#!/bin/sh\nulimit -n\n")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = call(reqwest::Method::POST, "/v1/functions")
        .json(&json!({"name": "limit", "env": "sh", "package": package}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .get(format!("{router}/fission-function/limit"))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap().trim(), "512");
    signal(child.0.id(), libc::SIGTERM);
    assert!(child.0.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("raised the soft limit on open files"),
        "{text}"
    );
    // (2048 - 256) / 4 per listener, not the 64 of a soft 512.
    assert!(text.contains("max_connections=448"), "{text}");
}

/// A listen address may name the host (`localhost:PORT`); a log format or
/// filter the server does not know is refused in one line, not ignored; and
/// boolean settings read as people write them (`FUSION_ACCESS_LOG=yes`).
#[test]
fn server_settings_are_read_as_written_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    // Killed on every way out of the test, a failed assertion's too.
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["server", "--backend", "process", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--router-listen",
                "localhost:0",
                "--api-listen",
                "localhost:0",
            ])
            .env("FUSION_ACCESS_LOG", "yes")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let first = BufReader::new(child.0.stdout.take().unwrap())
        .lines()
        .next();
    let line = first.unwrap().unwrap();
    signal(child.0.id(), libc::SIGTERM);
    assert!(child.0.wait().unwrap().success());
    assert!(line.contains("api=http://127.0.0.1:"), "{line}");
    for (key, value, says) in [
        (
            "FUSION_LOG_FORMAT",
            "xml",
            "FUSION_LOG_FORMAT=\"xml\" is not a log format",
        ),
        ("FUSION_LOG", "info,[", "is not a log filter"),
    ] {
        let out = Command::new(BIN)
            .args(["server", "--backend", "process", "--data-dir"])
            .arg(dir.path().join("other"))
            .args([
                "--router-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .env(key, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{err}");
    }
}

/// With `--access-log`, each request to the router is a line of the log once
/// answered: method, path without its query, status, the answer's bytes.
#[test]
fn the_access_log_has_a_line_per_routed_request_without_its_query() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let data = dir.path().join("data");
    let env = [
        ("FUSION_ACCESS_LOG", "true"),
        ("FUSION_LOG", "warn,fusion::access=info"),
        ("FUSION_LOG_FORMAT", "json"),
    ];
    let mut child = spawn_server("process", &data, &log, &env);
    let stdout = child.0.stdout.take().unwrap();
    let line = BufReader::new(stdout).lines().next().unwrap().unwrap();
    let router = listening_on(&line, "router=");
    let http = reqwest::blocking::Client::new();
    let missing = http
        .get(format!("{router}/nowhere/x?token=hush"))
        .send()
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing_len = missing.bytes().unwrap().len();
    assert_eq!(
        http.head(format!("{router}/router-healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // A caller that gives up before the answer: 499, as nginx logs it.
    let api = listening_on(&line, "api=");
    let token = std::fs::read_to_string(data.join("token")).unwrap();
    let stored = http
        .post(format!("{api}/v1/workflows?name=nap"))
        .bearer_auth(token.trim())
        .header("content-type", "application/yaml")
        .body("output: A\ntasks:\n  A:\n    run: sleep\n    inputs: 30s\n")
        .send()
        .unwrap();
    assert_eq!(stored.status(), 201);
    let gave_up = http
        .get(format!("{router}/fission-function/nap"))
        .timeout(Duration::from_millis(300))
        .send();
    assert!(gave_up.is_err());
    eventually(Duration::from_secs(10), "the gone caller's line", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/fission-function/nap"))
    });
    signal(child.0.id(), libc::SIGTERM);
    assert!(child.0.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("hush"), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &serde_json::Value| v["target"] == "fusion::access")
        .collect();
    let fields: Vec<_> = lines
        .iter()
        .map(|v| {
            let f = &v["fields"];
            (
                f["method"].as_str().unwrap_or_default().to_string(),
                f["path"].as_str().unwrap_or_default().to_string(),
                f["status"].as_u64(),
                f["bytes"].as_u64(),
                f["complete"].as_bool(),
                f["client"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let l = |s: &str| s.to_string();
    assert_eq!(
        fields,
        vec![
            (
                l("GET"),
                l("/nowhere/x"),
                Some(404),
                Some(missing_len as u64),
                Some(true),
                l("127.0.0.1")
            ),
            (
                l("HEAD"),
                l("/router-healthz"),
                Some(200),
                Some(0),
                Some(true),
                l("127.0.0.1")
            ),
            (
                l("GET"),
                l("/fission-function/nap"),
                Some(499),
                Some(0),
                Some(false),
                l("127.0.0.1")
            ),
        ],
        "{text}"
    );
    assert!(
        lines.iter().all(|v| v["fields"]["ms"].as_f64().is_some()),
        "{text}"
    );
}

/// The URL after `key` (`router=`, `api=`) in the server's listening line
/// (JSON with FUSION_LOG_FORMAT=json: the field of that name).
fn listening_on(line: &str, key: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let field = key.trim_end_matches('=');
        return v[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {line:?}"))
            .to_string();
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_string()
}

/// Whether process `pid` has a handler for `sig` (its `SigCgt` mask).
fn catches(pid: u32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// Waits (bounded) until a server that cannot start has exited: its status.
fn gives_up(server: &mut KillOnDrop) -> std::process::ExitStatus {
    let mut status = None;
    eventually(Duration::from_secs(60), "the server gives up", || {
        status = server.0.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

/// Starts `fusion server` on the `backend` and `data` given, on loopback ports
/// of its own, its log (stderr) to `log`, with `env` beside `FUSION_LOG=warn`;
/// stopped when the guard goes. Its stdout (the listening line) is piped.
fn spawn_server(
    backend: &str,
    data: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> KillOnDrop {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--backend", backend, "--data-dir"])
        .arg(data)
        .args([
            "--router-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .env("FUSION_LOG", "warn")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    KillOnDrop(cmd.spawn().unwrap())
}

/// A process-backend server on `data`, logging to `log`, once it listens:
/// it, its API's URL and its token.
fn started_on(data: &std::path::Path, log: &std::path::Path) -> (KillOnDrop, String, String) {
    let mut child = spawn_server("process", data, log, &[]);
    let line = BufReader::new(child.0.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let api = listening_on(&line, "api=");
    let token = std::fs::read_to_string(data.join("token")).unwrap();
    (child, api, token.trim().to_string())
}

/// Unmounts a test's own filesystem, whatever the test's outcome.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A temporary directory holding `small`, a filesystem of its own of `size`
/// to fill (a tmpfs: mounting needs root, as CI runs), unmounted when the
/// guard goes (declared after the directory, it goes first).
fn small_disk(size: &str) -> (tempfile::TempDir, std::path::PathBuf, Unmount) {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "this test mounts a tmpfs: run it as root"
    );
    let unmount = Unmount(small.clone());
    (dir, small, unmount)
}

/// A store that can no longer write (its disk full) stops the server with the
/// reason and a non-zero exit, rather than leaving it up and refusing every
/// change; once there is room again it starts on its data with nothing
/// acknowledged lost.
#[test]
fn a_store_that_cannot_write_stops_the_server_with_the_reason() {
    let (dir, small, _unmount) = small_disk("40m");
    let data = small.join("data");
    let log = dir.path().join("server.log");
    let start = || started_on(&data, &log);
    let http = reqwest::blocking::Client::new();
    let create = |api: &str, token: &str, name: &str| {
        http.post(format!("{api}/v1/environments"))
            .bearer_auth(token)
            .json(&json!({"name": name, "runtime": "python", "poolsize": 0}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let (mut server, api, token) = start();
    assert_eq!(create(&api, &token, "kept"), 201);
    // Fill the disk, then change things until a change is refused.
    let filler = small.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
    }
    let mut refused = None;
    for i in 0..200 {
        let status = create(&api, &token, &format!("e{i}"));
        if status != 201 {
            refused = Some(status);
            break;
        }
    }
    assert_eq!(refused, Some(500), "a change on a full disk is refused");
    // The server stops by itself, saying why.
    let mut status = None;
    eventually(Duration::from_secs(60), "the server stops", || {
        status = server.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the store refuses writes"),
        "{text}"
    );
    drop(server);
    // Room again: it starts on its data, with what it acknowledged.
    std::fs::remove_file(&filler).unwrap();
    let (_server, api, token) = start();
    let envs: serde_json::Value = http
        .get(format!("{api}/v1/environments"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        envs.as_array().unwrap().iter().any(|e| e["name"] == "kept"),
        "{envs}"
    );
}

/// A workflow run refused for a full disk is never run, not even after a
/// restart (a client that starts it again gets one run, not two), and
/// `/readyz` says the store is failing as soon as the first start is refused.
#[test]
fn a_run_refused_for_a_full_disk_never_runs() {
    let (dir, small, _unmount) = small_disk("40m");
    let data = small.join("data");
    let log = dir.path().join("server.log");
    let http = reqwest::blocking::Client::new();
    let start_server = || started_on(&data, &log);
    let (mut server, api, token) = start_server();
    let created = http
        .post(format!("{api}/v1/workflows"))
        .bearer_auth(&token)
        .header("content-type", "application/yaml")
        .body("name: w\noutput: A\ntasks:\n  A:\n    run: noop\n")
        .send()
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().unwrap());
    let filler = small.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
    }
    // Starts are taken until the store's next checkpoint finds no room.
    let mut accepted = 0;
    let mut refused = None;
    eventually(Duration::from_secs(30), "a start is refused", || {
        let r = http
            .post(format!("{api}/v1/workflows/w/invoke"))
            .bearer_auth(&token)
            .header("x-async", "true")
            .json(&json!({}))
            .send()
            .unwrap();
        match r.status().as_u16() {
            202 => accepted += 1,
            status => refused = Some((status, r.text().unwrap())),
        }
        refused.is_some()
    });
    let (status, body) = refused.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("storage_error"), "{body}");
    // Not ready: the journal cannot be written (`store_failing`), or, once
    // the probe found sled refusing writes too, the server is stopping
    // (`store_failed`; its listeners may be closed already).
    if let Ok(r) = http.get(format!("{api}/readyz")).send() {
        let (status, body) = (r.status().as_u16(), r.text().unwrap());
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"store_fail"), "{body}");
    }
    // Room again, and a restart (the server may have stopped by itself).
    std::fs::remove_file(&filler).unwrap();
    signal(server.0.id(), 15);
    server.0.wait().unwrap();
    drop(server);
    let (_server, api, token) = start_server();
    let mut runs = Vec::new();
    eventually(Duration::from_secs(30), "the accepted runs end", || {
        let page: serde_json::Value = http
            .get(format!("{api}/v1/runs?workflow=w"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        runs = page["runs"].as_array().unwrap().clone();
        runs.iter().all(|r| r["status"] == "succeeded")
    });
    assert_eq!(runs.len(), accepted, "{runs:?}");
}

/// A data directory without room for what containers need fails the start
/// with the reason: it is not a host that cannot run containers, and functions
/// must not fall back to running unisolated for it. No copy cut short is left.
#[test]
fn a_full_disk_at_the_start_is_an_error_not_a_fallback_to_processes() {
    let (dir, small, _unmount) = small_disk("8m");
    let data = small.join("data");
    // The fusion binary (far over 8 MiB) is what containers run the binary
    // runtime from: on another filesystem it is copied into the data directory.
    let runc = Command::new("sh")
        .args(["-c", "command -v runc || command -v crun"])
        .output();
    assert!(
        runc.is_ok_and(|o| o.status.success()),
        "this test needs an OCI runtime (runc) on PATH, as .ci/run installs"
    );
    let log = dir.path().join("server.log");
    // A server that fell back would run on: it is stopped when the test ends.
    let mut server = spawn_server("auto", &data, &log, &[]);
    assert!(!gives_up(&mut server).success());
    let err = std::fs::read_to_string(&log).unwrap();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: data directory") && last.contains("No space left on device"),
        "{err}"
    );
    // With what the copy needs.
    assert!(
        last.contains("the copy of the fusion executable") && last.contains(" MiB"),
        "{last}"
    );
    assert!(!err.contains("falling back"), "{err}");
    // Said first: the filesystem has little room for what the server keeps.
    assert!(err.contains("little room left"), "{err}");
    assert!(!data.join("containers/bin/fusion").exists());
}

/// A server whose stdout and stderr nobody reads any more (`| head -1`, a
/// log shipper that went away) goes on serving, and stops gracefully.
#[test]
fn a_server_whose_output_pipes_close_goes_on_serving() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (router, api) = (free(), free());
    let mut child = Command::new(BIN)
        .args(["server", "--backend", "process", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--router-listen", &router.to_string()])
        .args(["--api-listen", &api.to_string()])
        // Every request logged: lines to write once the pipe is gone.
        .args(["--access-log"])
        .env("FUSION_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both readers gone before the server writes a line.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let mut server = KillOnDrop(child);
    let healthz = format!("http://{api}/healthz");
    let http = reqwest::blocking::Client::new();
    eventually(Duration::from_secs(60), "the server answers", || {
        http.get(&healthz).send().is_ok_and(|r| r.status() == 200)
    });
    for _ in 0..20 {
        let _ = http.get(format!("http://{router}/nothing/here")).send();
    }
    assert!(alive(server.0.id()), "the server died");
    assert_eq!(http.get(&healthz).send().unwrap().status(), 200);
    signal(server.0.id(), libc::SIGTERM);
    let mut status = None;
    eventually(Duration::from_secs(30), "the server stops", || {
        status = server.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{status:?}");
}
