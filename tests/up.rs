//! `fusion up`, the quickstart, and graceful shutdown, as a user runs them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::probe::Probe;
use common::{alive, eventually, signal, Server, BIN};
use serde_json::json;

#[test]
fn up_applies_the_examples_and_prints_urls_that_answer() {
    let dir = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflow-examples");
    let mut child = Command::new(BIN)
        .args(["up", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--router-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--examples",
        ])
        .arg(&examples)
        .env("FUSION_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Killed on every path out of this test, a failed assertion included.
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut router = None;
    let mut tries = Vec::new();
    let mut workflow_hint = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
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
    signal(child.0.id(), libc::SIGTERM);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
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
    probe.open("go");
    assert_eq!(pending.join().unwrap(), (200, "finished".to_string()));
    let mut server = server;
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for pid in pids {
        assert!(!alive(pid), "instance {pid} outlived the server");
    }
}
