//! Backups of a running server (`fusion backup`) restored into a new data
//! directory (`fusion restore`) that a second server then runs.

mod common;

use std::time::Duration;

use common::Server;
use serde_json::{json, Value};

const HELLO: &str = "def main():\n    return 'hello from before the backup'\n";

fn runs_of(s: &Server, workflow: &str) -> Vec<Value> {
    let v = s.ok(
        "GET",
        &format!("/v1/runs?workflow={workflow}&limit=500"),
        None,
    );
    v["runs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_backup_made_under_load_restores_functions_workflows_and_runs_and_unfinished_runs_go_on() {
    let mut a = Server::start();
    a.env("python", "python", 1);
    a.function("hello", "python", "hello.py", HELLO, json!({}));
    a.workflow(
        "greet",
        "apiVersion: 1\noutput: call\ntasks:\n  call:\n    run: hello\n",
    );
    a.workflow(
        "later",
        "apiVersion: 1\noutput: Approve\ntasks:\n  Approve:\n    run: callback\n",
    );
    for _ in 0..10 {
        let (status, body) = a.invoke("greet", "text/plain", "");
        assert_eq!(status, 200, "{body}");
    }
    let greeted: Vec<String> = runs_of(&a, "greet")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(greeted.len(), 10);
    // A run still in its task when the backup is made: it waits on a callback.
    let unfinished = a.invoke_async("later", &json!({}));
    let callback = a.callback_path(&unfinished, "Approve");

    // Runs keep coming while the backup is made.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (going, started) = std::sync::mpsc::channel();
    let load = {
        let (router, stop) = (a.router.clone(), stop.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = http
                    .post(format!("{router}/fission-function/greet"))
                    .send()
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let _ = going.send(());
            }
        })
    };
    started.recv().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fusion.backup");
    let file_arg = file.to_str().unwrap();
    let (code, out, err) = a.cli(&["backup", file_arg]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup written to"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds the token");
    assert_eq!(a.run(&unfinished)["status"], "running");

    // A backup never overwrites a file.
    let (code, _, err) = a.cli(&["backup", file_arg]);
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");

    let token = a.token.clone();
    a.stop();

    // Restored into a new directory, and run there.
    let mut b = Server::start();
    b.stop();
    std::fs::remove_dir_all(&b.data).unwrap();
    let data = b.data.to_str().unwrap().to_string();
    let (code, out, err) = b.cli(&["restore", file_arg, "--data-dir", &data]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("database records"), "{out}");
    // Not over a directory that holds anything.
    let (code, _, err) = b.cli(&["restore", file_arg, "--data-dir", &data]);
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");
    b.launch();
    assert_eq!(b.token, token, "the API token comes back with the data");

    // The unfinished run goes on, on the restored server, with its token.
    assert_eq!(b.run(&unfinished)["status"], "running");
    let r = reqwest::blocking::Client::new()
        .post(b.api_url(&callback))
        .json(&json!({"by": "the restored server"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let run = b.wait_run(&unfinished, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["by"], "the restored server");
    // Every run of the backup is there, whole.
    let restored = runs_of(&b, "greet");
    for id in &greeted {
        assert_eq!(b.run(id)["status"], "succeeded", "run {id}");
    }
    for r in &restored {
        let id = r["id"].as_str().unwrap();
        let run = b.wait_run(id, Duration::from_secs(30));
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["output"], "hello from before the backup");
    }
    assert!(restored.len() >= 10);
    // The function's code came with it.
    let (status, body) = b.invoke("greet", "text/plain", "");
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from before the backup")
    );
}

#[test]
fn a_backup_cut_short_restores_nothing() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("whole.backup");
    let (code, out, err) = s.cli(&["backup", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let target = dir.path().join("restored");
    let (code, out, err) = s.cli(&[
        "restore",
        cut.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("cut short") || err.contains("damaged"),
        "{err}"
    );
    assert!(!target.exists(), "a failed restore leaves no directory");
}
