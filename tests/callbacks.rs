//! Callback tasks seen from outside: a run waits on a `callback` task until
//! someone POSTs to its one-time URL (with no admin token), also across a
//! SIGKILL of the server; a second completion is refused; a `notify` function
//! is handed the URL.

mod common;

use std::time::Duration;

use common::probe::Probe;
use common::{eventually, Server};
use serde_json::{json, Value};

const WAITING: &str = "apiVersion: 1\noutput: Done\ntasks:\n  Approve:\n    run: callback\n    timeout: 10m\n  Done:\n    run: noop\n    inputs: \"{ output('Approve').by + ' approved' }\"\n    requires: [Approve]\n";

/// A POST to a callback URL from outside: no bearer token.
fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(s.api_url(path))
        .json(body)
        .send()
        .expect("API reachable");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn an_outside_post_completes_a_waiting_run_once() {
    let s = Server::start();
    s.workflow("approval", WAITING);
    let id = s.start_async("approval", "");
    let path = s.callback_path(&id, "Approve");
    assert!(path.starts_with("/v1/callbacks/"), "{path}");
    assert_eq!(s.run(&id)["status"], "running");
    // A body past the API's limit is refused as every other error is.
    let (status, body) = post(&s, &path, &json!({"big": "x".repeat(17 << 20)}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    // A wait that ends before the run tells a script so by its status
    // (124, as `timeout`), not as a failure (1).
    let (code, _, err) = s.cli(&["run", "wait", &id, "--timeout", "1"]);
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("still running after 1 s"), "{err}");

    let (status, body) = post(&s, "/v1/callbacks/not-a-token", &json!({"by": "eve"}));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    // A body nested deeper than any document may be is refused; the task
    // still waits.
    let mut deep = json!({"by": "eve"});
    for _ in 0..64 {
        deep = json!([deep]);
    }
    let (status, body) = post(&s, &path, &deep);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "document_too_deep", "{body}");
    assert_eq!(s.run(&id)["status"], "running");

    let (status, body) = post(&s, &path, &json!({"by": "ann"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task"], "Approve");
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "ann approved");

    let (status, body) = post(&s, &path, &json!({"by": "bob"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    assert_eq!(s.run(&id)["output"], "ann approved");
}

/// An empty POST (`curl -X POST URL`: a signal, no data) completes the task
/// with the output `null`, as the body `null` would; a task after it that
/// reads a field of that output fails, saying why, and one that does not
/// runs on.
#[test]
fn an_empty_post_completes_the_task_with_null() {
    let s = Server::start();
    let signal = "apiVersion: 1\noutput: Done\ntasks:\n  Go:\n    run: callback\n  Done:\n    run: noop\n    inputs: \"{ output('Go') === null ? 'no data' : 'data' }\"\n    requires: [Go]\n";
    s.workflow("signal", signal);
    let id = s.start_async("signal", "");
    let path = s.callback_path(&id, "Go");
    let resp = reqwest::blocking::Client::new()
        .post(s.api_url(&path))
        .send()
        .expect("API reachable");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["completed"], "succeeded", "{body}");
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "no data", "{run}");

    s.workflow("approval", WAITING);
    let id = s.start_async("approval", "");
    let path = s.callback_path(&id, "Approve");
    let resp = reqwest::blocking::Client::new()
        .post(s.api_url(&path))
        .body("  \n")
        .send()
        .expect("API reachable");
    assert_eq!(resp.status().as_u16(), 200);
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].to_string().contains("null"), "{run}");
}

#[test]
fn a_posted_error_fails_the_run() {
    let s = Server::start();
    s.workflow("approval", WAITING);
    let id = s.start_async("approval", "");
    let path = s.callback_path(&id, "Approve");
    // JSON labelled as a form (curl -d does so) is read as JSON: the token in
    // the URL is the credential, whatever the content type.
    let resp = reqwest::blocking::Client::new()
        .post(s.api_url(&path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"error": "rejected by ann"}"#)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["message"], "rejected by ann", "{run}");
}

#[test]
fn a_callback_survives_a_killed_server() {
    let mut s = Server::start();
    s.workflow("approval", WAITING);
    let id = s.start_async("approval", "");
    let path = s.callback_path(&id, "Approve");
    s.kill();
    s.launch();
    let (status, body) = post(&s, &path, &json!({"by": "ann"}));
    assert_eq!(status, 200, "{body}");
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "ann approved");
    // The completion was durable before it was answered: a second kill keeps it.
    s.kill();
    s.launch();
    let (status, body) = post(&s, &path, &json!({"by": "bob"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(s.run(&id)["output"], "ann approved");
}

#[test]
fn the_notify_function_gets_a_callback_url_that_completes_the_run() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    // Hands the URL and the body it was given to the "outside world" (the probe).
    s.function(
        "ask-approval",
        "binary",
        "ask.sh",
        &format!(
            "#!/bin/sh\n{}\n{}\nprintf asked\n",
            probe.curl("/log/urls?$HTTP_X_FUSION_CALLBACK_URL"),
            probe.curl("/log/bodies?$(cat)"),
        ),
        json!({}),
    );
    s.workflow(
        "approval",
        "apiVersion: 1\noutput: Approve\ntasks:\n  Approve:\n    run: callback\n    inputs:\n      notify: ask-approval\n      body: \"{ param() }\"\n",
    );
    let id = s.start_async("approval", "order-7");
    let mut url = String::new();
    // The function logs the URL, then the body, with two calls: wait for both.
    eventually(
        Duration::from_secs(60),
        "the URL and the body are handed out",
        || match probe.lines("urls").first() {
            Some(u) if !probe.lines("bodies").is_empty() => {
                url = u.clone();
                true
            }
            _ => false,
        },
    );
    assert_eq!(probe.lines("bodies"), ["order-7"]);
    let path = s.callback_path(&id, "Approve");
    assert_eq!(url, s.api_url(&path));
    assert_eq!(
        s.run(&id)["status"],
        "running",
        "the function's answer is not the output"
    );
    let resp = reqwest::blocking::Client::new()
        .post(&url)
        .json(&json!({"approved": true}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({"approved": true}));
    // The workflow uses the function it notifies: a delete that asks not to
    // break its users is refused, naming it.
    let (status, body) = s.call("DELETE", "/v1/functions/ask-approval?if_unused=true", None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("approval"),
        "{body}"
    );
}

/// An RFC-0022 Task with Fusion's `waitForCallback`: the function is handed the
/// URL, the state's result is the POSTed body; a POSTed typed error is caught.
#[test]
fn rfc0022_a_task_waits_for_its_callback() {
    let mut s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    s.function(
        "ask",
        "binary",
        "ask.sh",
        &format!(
            "#!/bin/sh\n{}\nprintf asked\n",
            probe.curl("/log/urls?$HTTP_X_FUSION_CALLBACK_URL")
        ),
        json!({}),
    );
    let doc = "startAt: approve\nstates:\n  approve:\n    type: Task\n    function: {name: ask}\n    waitForCallback: true\n    timeout: 10m\n    resultPath: $.approval\n    catch: [{errorType: Rejected, next: rejected, resultPath: $.why}]\n    end: true\n  rejected: {type: Succeed}\n";
    let r = s
        .api("POST", "/v1/workflows?name=approval")
        .header("content-type", "application/yaml")
        .body(doc)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
    let start = |s: &Server, order: u32| s.invoke_async("approval", &json!({"order": order}));
    // The URL handed out for run `id` (its token starts with the run id). A
    // notify function whose answer a kill cut off is called again after the
    // restart, so the log may hold a run's URL twice: find it by run.
    let url_of = |id: &str| {
        let mut url = String::new();
        let token = format!("/v1/callbacks/{id}.");
        eventually(
            Duration::from_secs(60),
            "the URL is handed out",
            || match probe.lines("urls").into_iter().find(|u| u.contains(&token)) {
                Some(u) => {
                    url = u;
                    true
                }
                None => false,
            },
        );
        url
    };
    let post = |url: &str, body: Value| {
        reqwest::blocking::Client::new()
            .post(url)
            .json(&body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };

    let id = start(&s, 7);
    let url = url_of(&id);
    // The wait survives a SIGKILL; the token keeps working (the relaunched test
    // server listens on another port, so the URL's path is reused).
    s.kill();
    s.launch();
    let path = &url[url.find("/v1/callbacks/").expect("a callback URL")..];
    let url = s.api_url(path);
    assert_eq!(post(&url, json!({"by": "ann"})), 200);
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["output"],
        json!({"order": 7, "approval": {"by": "ann"}})
    );
    assert_eq!(post(&url, json!({"by": "bob"})), 409);

    let id = start(&s, 8);
    let url = url_of(&id);
    let rejected = json!({"error": {"errorType": "Rejected", "cause": "too big"}});
    assert_eq!(post(&url, rejected), 200);
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["why"]["errorType"], "Rejected", "{run}");
    assert_eq!(run["output"]["why"]["cause"], "too big", "{run}");
}

/// Once the run has ended without its callback (here: cancelled), a POST says
/// so in plain words, and changes nothing.
#[test]
fn a_callback_of_a_cancelled_run_is_refused_with_the_reason() {
    let s = Server::start();
    s.workflow("approval", WAITING);
    let id = s.start_async("approval", "");
    let path = s.callback_path(&id, "Approve");
    let r = s
        .api("POST", &format!("/v1/runs/{id}/cancel"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, body) = post(&s, &path, &json!({"by": "ann"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cancelled"), "{message}");
    let run = s.run(&id);
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["output"], Value::Null, "{run}");
}

/// `fusion run complete` takes the callback as a URL, a path or a token, and
/// completes the task with --result, or fails it with --error.
#[test]
fn the_cli_completes_or_fails_a_waiting_task() {
    let s = Server::start();
    s.workflow("approval", WAITING);
    let id = s.start_async("approval", "");
    let url = s.api_url(&s.callback_path(&id, "Approve"));
    let (code, out, err) = s.cli(&["run", "complete", &url, "--result", r#"{"by": "ann"}"#]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Approve") && out.contains("succeeded"),
        "{out}"
    );
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["output"], "ann approved", "{run}");
    // Completed already: a one-line error and a non-zero exit.
    let (code, _, err) = s.cli(&["run", "complete", &url, "--result", "{}"]);
    assert_ne!(code, 0);
    assert!(err.contains("already been completed"), "{err}");

    let id = s.start_async("approval", "");
    let path = s.callback_path(&id, "Approve");
    let token = path.trim_start_matches("/v1/callbacks/");
    let (code, out, err) = s.cli(&["run", "complete", token, "--error", "rejected by ann"]);
    assert_eq!(code, 0, "{out}{err}");
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["message"], "rejected by ann", "{run}");

    let (code, _, err) = s.cli(&[
        "run",
        "complete",
        "https://x.example/v1/runs",
        "--result",
        "1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not a callback"), "{err}");
}

/// With a public URL (Fusion behind a proxy), the URL handed to the notify
/// function and the Location of a run started through the router use it.
#[test]
fn a_public_url_is_the_base_of_callback_urls_and_run_locations() {
    let public = "https://fusion.example.com/api";
    let s = Server::start_with(&[("FUSION_PUBLIC_URL", public)]);
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    s.function(
        "ask-approval",
        "binary",
        "ask.sh",
        &format!(
            "#!/bin/sh\n{}\nprintf asked\n",
            probe.curl("/log/urls?$HTTP_X_FUSION_CALLBACK_URL")
        ),
        json!({}),
    );
    s.workflow(
        "approval",
        "apiVersion: 1\noutput: Approve\ntasks:\n  Approve:\n    run: callback\n    inputs:\n      notify: ask-approval\n",
    );
    let r = reqwest::blocking::Client::new()
        .post(s.router_url("/fission-function/approval"))
        .header("X-Async", "true")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(location, format!("{public}/v1/runs/{id}"));
    let mut url = String::new();
    eventually(
        Duration::from_secs(60),
        "the URL is handed out",
        || match probe.lines("urls").first() {
            Some(u) => {
                url = u.clone();
                true
            }
            None => false,
        },
    );
    let path = s.callback_path(&id, "Approve");
    assert_eq!(url, format!("{public}{path}"));
}
