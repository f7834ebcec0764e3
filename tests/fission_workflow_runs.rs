//! Fission's RFC-0022 `Workflow` format run end to end on the real server:
//! stored through the API (validated, with line and column), invoked like any
//! workflow, run durably with the engine's events and run history.

mod common;

use std::time::Duration;

use common::probe::Probe;
use common::{eventually, Server};
use serde_json::{json, Value};

/// Answers whether the order is small enough, and what the engine told it.
const VALIDATE: &str = r#"
from flask import request

def main():
    order = request.get_json()
    if "amount" not in order:
        return {"errorType": "Order.Invalid", "cause": "no amount"}, 400
    return {
        "ok": order["amount"] < 100,
        "run": request.headers.get("X-Fission-Workflow-Run"),
        "attempt": request.headers.get("X-Fission-Workflow-Attempt"),
    }
"#;

/// Charges the card: declines (a typed error) over 50, fails with a 503 at 42.
const CHARGE: &str = r#"
from flask import request

def main():
    amount = request.get_json()["order"]["amount"]
    if amount == 42:
        return "down for maintenance", 503
    if amount > 50:
        return {"errorType": "Card.Declined", "cause": "no funds"}, 402
    return {"charged": amount}
"#;

const ORDER: &str = "apiVersion: fission.io/v1
kind: Workflow
metadata:
  name: order
spec:
  startAt: validate
  states:
    validate:
      type: Task
      function: {name: validate-order}
      inputPath: $.order
      resultPath: $.valid
      next: route
    route:
      type: Choice
      choices:
        - variable: $.valid.ok
          booleanEquals: true
          next: charge
      default: reject
    charge:
      type: Task
      function: {name: charge-card}
      resultPath: $.charge
      next: done
      catch:
        - errorType: Card.Declined
          resultPath: $.declined
          next: done
    done:
      type: Succeed
    reject:
      type: Fail
";

/// Fails its first call with a 503, then answers the attempt it was told.
const FLAKY: &str = r#"
from flask import request

calls = []

def main():
    calls.append(1)
    if len(calls) == 1:
        return "try again", 503
    return {"attempt": request.headers.get("X-Fission-Workflow-Attempt"), "calls": len(calls)}
"#;

fn setup() -> Server {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function("validate-order", "python", "v.py", VALIDATE, json!({}));
    s.function("charge-card", "python", "c.py", CHARGE, json!({}));
    s
}

fn store(s: &Server, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = s
        .api(method, path)
        .header("content-type", "application/yaml")
        .body(body.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn invoke(s: &Server, name: &str, body: Value) -> (u16, Value) {
    let (status, text) = s.invoke(name, "application/json", &body.to_string());
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Binary functions that record their calls on `probe` (see
/// `Probe::recorder`): `(name, gated)` each, the name also its tag.
fn recorders(s: &Server, probe: &Probe, functions: &[(&str, bool)]) {
    s.env("binary", "binary", 1);
    for (tag, gated) in functions {
        s.function(
            tag,
            "binary",
            &format!("{tag}.sh"),
            &probe.recorder(tag, *gated),
            json!({}),
        );
    }
}

#[test]
fn rfc0022_workflows_are_stored_validated_and_run_task_choice_catch_succeed_and_fail() {
    let s = setup();
    // The whole document, named by its metadata.
    let (status, body) = store(&s, "POST", "/v1/workflows", ORDER);
    assert_eq!(status, 201, "{body}");

    // A small order: validated, charged, the results merged at their paths.
    let (status, out) = invoke(&s, "order", json!({"order": {"amount": 5}}));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["order"], json!({"amount": 5}));
    assert_eq!(out["valid"]["ok"], true);
    assert_eq!(out["valid"]["attempt"], "1");
    assert_eq!(out["charge"], json!({"charged": 5}));
    // The function saw the run's id; the run is in the history with its steps.
    let run_id = out["valid"]["run"].as_str().unwrap().to_string();
    let run = s.run(&run_id);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["workflow"], "order");
    // Every state entered is a step, the Choice with the state it chose.
    let steps: Vec<(&str, &str)> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("000001-validate", "succeeded"),
            ("000002-route", "succeeded"),
            ("000003-charge", "succeeded"),
            ("000004-done", "succeeded"),
        ]
    );
    assert_eq!(run["tasks"][1]["output"], json!({"next": "charge"}));
    let events = s.ok("GET", &format!("/v1/runs/{run_id}/events"), None);
    let text = events.to_string();
    for step in [
        "000001-validate",
        "000002-route",
        "000003-charge",
        "000004-done",
    ] {
        assert!(text.contains(step), "{step} missing from {text}");
    }

    // A typed error caught at its resultPath.
    let (status, out) = invoke(&s, "order", json!({"order": {"amount": 70}}));
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out["declined"],
        json!({"errorType": "Card.Declined", "cause": "no funds"})
    );
    assert!(out.get("charge").is_none(), "{out}");

    // Choice default to a Fail state, where the run fails.
    let (status, out) = invoke(&s, "order", json!({"order": {"amount": 500}}));
    assert_eq!(status, 500, "{out}");
    assert_eq!(out["error"]["task"], "000003-reject", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Fission.Failed"),
        "{out}"
    );

    // A 5xx not caught fails the run as Fission.FunctionError, at its step.
    let (status, out) = invoke(&s, "order", json!({"order": {"amount": 42}}));
    assert_eq!(status, 500, "{out}");
    assert_eq!(out["error"]["task"], "000003-charge", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Fission.FunctionError"),
        "{out}"
    );

    // A 4xx with a typed body, not caught: the run answers the function's 4xx.
    let (status, out) = invoke(&s, "order", json!({"order": {}}));
    assert_eq!(status, 400, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Order.Invalid: no amount"),
        "{out}"
    );

    // A result its resultPath cannot place (into a number the caller sent):
    // the run fails at that step, and its history shows the step failed,
    // not succeeded.
    let doc = "startAt: v\nstates:\n  v: {type: Task, function: {name: validate-order}, inputPath: $.order, resultPath: $.order.amount.valid, end: true}\n";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=misplaced", doc);
    assert_eq!(status, 201, "{body}");
    let (status, out) = invoke(&s, "misplaced", json!({"order": {"amount": 5}}));
    assert_eq!(status, 422, "{out}");
    let run = s.run(out["error"]["run_id"].as_str().unwrap());
    let step = &run["tasks"][0];
    assert_eq!(step["id"], "000001-v", "{run}");
    assert_eq!(step["status"], "failed", "{run}");
    assert!(
        step["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Fission.InvalidPath"),
        "{run}"
    );
}

#[test]
fn rfc0022_workflows_are_refused_with_line_and_column_and_updated_by_put() {
    let s = setup();
    let broken = ORDER.replace("next: route", "next: nowhere");
    let (status, body) = store(&s, "POST", "/v1/workflows", &broken);
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("nowhere"), "{body}");
    let line = ORDER
        .lines()
        .position(|l| l.contains("next: route"))
        .unwrap()
        + 1;
    assert!(
        body.to_string().contains(&format!("\"line\":{line}")),
        "want line {line}: {body}"
    );
    // Not stored.
    let (status, _) = s.call("GET", "/v1/workflows/order", None);
    assert_eq!(status, 404);

    // A bare spec in JSON, named by ?name=; then replaced by PUT.
    let spec = |path: &str| {
        json!({"startAt": "a", "states": {"a": {
            "type": "Task", "function": {"name": "validate-order"},
            "inputPath": path, "outputPath": "$.ok", "end": true,
        }}})
        .to_string()
    };
    let input = json!({"a": {"amount": 1}, "b": {"amount": 500}});
    let (status, body) = store(&s, "POST", "/v1/workflows?name=pick", &spec("$.a"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(invoke(&s, "pick", input.clone()), (200, json!(true)));
    let (status, body) = store(&s, "PUT", "/v1/workflows/pick", &spec("$.b"));
    assert_eq!(status, 200, "{body}");
    assert!(body.get("warnings").is_none(), "{body}");
    assert_eq!(invoke(&s, "pick", input), (200, json!(false)));

    // A Task whose function does not exist (yet) is stored, with a warning
    // at the function's name; the CLI prints it and succeeds.
    let doc = "apiVersion: fission.io/v1\nkind: Workflow\nmetadata: {name: early}\nspec:\n  startAt: a\n  states:\n    a:\n      type: Task\n      function: {name: nosuchfn}\n      end: true\n";
    let (status, body) = store(&s, "POST", "/v1/workflows", doc);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["warnings"].as_array().map(Vec::len), Some(1), "{body}");
    let w = &body["warnings"][0];
    assert_eq!(w["code"], "unknown_function", "{body}");
    assert_eq!(
        (w["line"].as_u64(), w["column"].as_u64()),
        (Some(9), Some(24)),
        "{body}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("later.yaml");
    std::fs::write(&file, doc.replace("name: early", "name: later")).unwrap();
    // Named by its metadata.name, which a name given beside it must not contradict.
    let (code, _, err) = s.cli(&["wf", "create", "other", "--file", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("\"other\" and its document \"later\""),
        "{err}"
    );
    let (code, _, err) = s.cli(&["wf", "create", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.call("GET", "/v1/workflows/later", None).0, 200);

    // Another namespace is not kept for the workflow, and says so where it
    // is written; its Tasks call that namespace's functions (RFC-0022: a
    // workflow and its functions share a namespace), which are looked up
    // there: `who` is in team-a alone.
    let elsewhere = doc
        .replace("name: early", "name: elsewhere, namespace: team-a")
        .replace("nosuchfn", "who");
    let (status, body) = store(&s, "POST", "/v1/workflows", &elsewhere);
    assert_eq!(status, 201, "{body}");
    let codes: Vec<&str> = body["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["namespace_ignored", "unknown_function"], "{body}");
    assert_eq!(body["warnings"][0]["line"], 3, "{body}");
    assert!(
        body["warnings"][1]["message"]
            .as_str()
            .unwrap()
            .contains("\"team-a/who\""),
        "{body}"
    );
    assert_eq!(body["name"], "elsewhere", "{body}");
    let ns = json!({"namespace": "team-a"});
    s.ok(
        "POST",
        "/v1/environments",
        Some(json!({"name": "python", "runtime": "python", "poolsize": 0, "namespace": "team-a"})),
    );
    s.function(
        "who",
        "python",
        "w.py",
        "def main():\n    return 'team-a'\n",
        ns.clone(),
    );
    s.function(
        "who",
        "python",
        "w.py",
        "def main():\n    return 'default'\n",
        json!({}),
    );
    let (status, body) = store(&s, "PUT", "/v1/workflows/elsewhere", &elsewhere);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warnings"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(invoke(&s, "elsewhere", json!({})), (200, json!("team-a")));
    assert!(
        err.contains("later.yaml:9:24: warning: function \"nosuchfn\" does not exist (yet) (unknown_function)"),
        "{err}"
    );
}

#[test]
fn rfc0022_runs_start_async_and_wait_durably() {
    let s = setup();
    let doc = "startAt: nap\nstates:\n  nap: {type: Wait, duration: 1s, next: check}\n  check: {type: Task, function: {name: validate-order}, end: true}\n";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=nap", doc);
    assert_eq!(status, 201, "{body}");
    let id = s.invoke_async("nap", &json!({"amount": 1}));
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    let events = s.ok("GET", &format!("/v1/runs/{id}/events"), None);
    let text = events.to_string();
    assert!(text.contains("TimerFired"), "{text}");
    assert!(text.contains("000002-check"), "{text}");
    let run = s.run(&id);
    assert_eq!(run["output"]["ok"], true, "{run}");
    assert_eq!(run["output"]["run"], id.as_str(), "{run}");
    // Its history shows each step as the state it is: a Wait, then the Task's function.
    let runs: Vec<&str> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["run"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(runs, ["Wait", "fission://default/validate-order"], "{run}");
    // RFC-0022's `workflow runs history --name RUN --step STATE --io`: that
    // step's events alone, its input and output whole.
    let (code, out, err) = s.cli(&[
        "workflow", "runs", "history", "--name", &id, "--step", "check", "--io",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("000002-check") && out.contains("StepSucceeded"),
        "{out}"
    );
    assert!(
        !out.contains("000001-") && !out.contains("RunStarted"),
        "{out}"
    );
    let (code, _, err) = s.cli(&[
        "workflow", "runs", "history", "--name", &id, "--step", "chek",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("has no step \"chek\""), "{err}");
    assert!(err.contains("check"), "{err}");

    // The CLI stores and invokes one as the README says.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("order.yaml");
    std::fs::write(&file, ORDER).unwrap();
    let (code, out, err) = s.cli(&["wf", "create", "order", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli(&[
        "wf",
        "invoke",
        "order",
        "--body",
        r#"{"order": {"amount": 5}}"#,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(r#""charged""#), "{out}");
}

/// `historyRetention`: a workflow keeps its newest `maxCount` finished runs,
/// and none finished longer ago than `maxAge`; a run still going is kept.
#[test]
fn rfc0022_history_retention_deletes_old_finished_runs() {
    let s = Server::start_with(&[("FUSION_RETENTION_SWEEP_SECS", "1")]);
    let ids = |s: &Server, wf: &str| -> Vec<String> {
        s.ok("GET", &format!("/v1/runs?workflow={wf}&limit=100"), None)["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let doc = "startAt: done\nhistoryRetention: {maxCount: 2}\nstates:\n  done: {type: Succeed}\n";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=counted", doc);
    assert_eq!(status, 201, "{body}");
    let mut started = Vec::new();
    for n in 0..4 {
        let r = s
            .api("POST", "/v1/workflows/counted/invoke")
            .json(&json!({ "n": n }))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        started.push(r.headers()["x-fusion-run-id"].to_str().unwrap().to_string());
    }
    eventually(Duration::from_secs(30), "two runs are left", || {
        ids(&s, "counted").len() == 2
    });
    // The newest two (listed newest first).
    assert_eq!(ids(&s, "counted"), [started[3].clone(), started[2].clone()]);

    let doc = "startAt: branch\nhistoryRetention: {maxAge: 1s}\nstates:\n  branch:\n    type: Choice\n    choices: [{variable: $.wait, booleanEquals: true, next: nap}]\n    default: done\n  nap: {type: Wait, duration: 1h, next: done}\n  done: {type: Succeed}\n";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=aged", doc);
    assert_eq!(status, 201, "{body}");
    let waiting = s.invoke_async("aged", &json!({"wait": true}));
    let r = s
        .api("POST", "/v1/workflows/aged/invoke")
        .json(&json!({"wait": false}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    eventually(
        Duration::from_secs(30),
        "the finished run is deleted",
        || ids(&s, "aged") == [waiting.clone()],
    );
    assert_eq!(s.run(&waiting)["status"], "running");
}

#[test]
fn rfc0022_retries_a_5xx_with_the_attempt_in_its_headers() {
    let s = setup();
    s.function("flaky", "python", "f.py", FLAKY, json!({}));
    let doc = "startAt: a\nstates:\n  a:\n    type: Task\n    function: {name: flaky}\n    retry: {maxAttempts: 3, backoffBase: 10ms, backoffCap: 10ms}\n    end: true\n";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=flaky-wf", doc);
    assert_eq!(status, 201, "{body}");
    let (status, out) = invoke(&s, "flaky-wf", json!({}));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out, json!({"attempt": "2", "calls": 2}));
}

#[test]
fn rfc0022_runs_resume_after_a_killed_server_without_repeating_finished_steps() {
    let mut s = Server::start();
    let probe = Probe::start();
    recorders(
        &s,
        &probe,
        &[("one", false), ("two", true), ("three", false)],
    );
    let doc = "startAt: one\nstates:\n  one: {type: Task, function: {name: one}, resultPath: $.one, next: two}\n  two: {type: Task, function: {name: two}, resultPath: $.two, next: three}\n  three: {type: Task, function: {name: three}, resultPath: $.three, end: true}\n";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=chain", doc);
    assert_eq!(status, 201, "{body}");
    let id = s.invoke_async("chain", &json!({"x": 1}));
    eventually(Duration::from_secs(30), "step two is in flight", || {
        probe.lines("calls").iter().any(|l| l.starts_with("two "))
    });
    s.kill();
    probe.open("two");
    s.launch();
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["output"],
        json!({"x": 1, "one": "one", "two": "two", "three": "three"})
    );
    let calls = probe.lines("calls");
    let count = |tag: &str| {
        calls
            .iter()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .count()
    };
    assert_eq!((count("one"), count("three")), (1, 1), "{calls:?}");
    // The step in flight was called again, with the same idempotency key.
    let keys: Vec<&String> = calls.iter().filter(|l| l.starts_with("two ")).collect();
    assert_eq!(keys.len(), 2, "{calls:?}");
    assert_eq!(keys[0], keys[1]);
    assert!(keys[0].ends_with(&format!("{id}/000002-two")), "{keys:?}");
}

#[test]
fn rfc0022_parallel_and_map_join_their_branches_in_order() {
    let s = setup();
    let doc = "startAt: fan
states:
  fan:
    type: Parallel
    resultPath: $.checks
    next: each
    branches:
      - startAt: v
        states:
          v: {type: Task, function: {name: validate-order}, inputPath: $.order, end: true}
      - startAt: w
        states:
          w: {type: Wait, duration: 10ms, end: true}
  each:
    type: Map
    itemsPath: $.orders
    maxConcurrency: 2
    resultPath: $.charged
    outputPath: $.charged
    end: true
    branches:
      - startAt: c
        states:
          c: {type: Task, function: {name: charge-card}, end: true}
";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=fan", doc);
    assert_eq!(status, 201, "{body}");
    let orders = |amounts: &[u32]| -> Value {
        amounts
            .iter()
            .map(|a| json!({"order": {"amount": a}}))
            .collect()
    };
    let (status, out) = invoke(
        &s,
        "fan",
        json!({"order": {"amount": 5}, "orders": orders(&[1, 2, 3])}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out, json!([{"charged": 1}, {"charged": 2}, {"charged": 3}]));
    let runs = s.ok("GET", "/v1/runs?workflow=fan", None);
    let id = runs["runs"][0]["id"].as_str().unwrap().to_string();
    let events = s
        .ok("GET", &format!("/v1/runs/{id}/events"), None)
        .to_string();
    for step in [
        "000001-fan/0000/000001-v",
        "000001-fan/0001/000001-w",
        "000002-each/0002/000001-c",
    ] {
        assert!(events.contains(step), "{step} missing: {events}");
    }

    // An item that fails fails the Map, naming the item.
    let (status, out) = invoke(
        &s,
        "fan",
        json!({"order": {"amount": 5}, "orders": orders(&[1, 42, 3])}),
    );
    assert_eq!(status, 500, "{out}");
    let message = out["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Fission.BranchFailed: branch 1: Fission.FunctionError"),
        "{out}"
    );
    assert_eq!(out["error"]["task"], "000002-each/0001/000001-c", "{out}");
    // Its history shows the Map failed (the Parallel before it succeeded).
    let id = out["error"]["run_id"].as_str().unwrap();
    let run = s.run(id);
    let step = |id: &str| {
        run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}: {run}"))
            .clone()
    };
    let each = step("000002-each");
    assert_eq!(each["run"], "Map", "{each}");
    assert_eq!(each["status"], "failed", "{each}");
    assert!(
        each["error"].as_str().unwrap().contains("branch 1"),
        "{each}"
    );
    let fan = step("000001-fan");
    assert_eq!(fan["status"], "succeeded", "{fan}");
    assert_eq!(fan["output"][0]["ok"], true, "the joined outputs: {fan}");

    // Items the caller did not send as an array: the caller's mistake.
    let (status, out) = invoke(&s, "fan", json!({"order": {"amount": 5}, "orders": 3}));
    assert_eq!(status, 422, "{out}");
    assert!(out["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Fission.InvalidPath"));
}

/// A Map killed with two items done and one in flight: after the restart the
/// finished items are not called again, the one in flight is (same key), and
/// the outputs join in item order.
#[test]
fn rfc0022_a_map_resumes_after_a_killed_server_without_rerunning_a_finished_item() {
    let mut s = Server::start();
    let probe = Probe::start();
    recorders(&s, &probe, &[("fast", false), ("slow", true)]);
    let doc = "startAt: m\nstates:\n  m:\n    type: Map\n    itemsPath: $.items\n    maxConcurrency: 3\n    end: true\n    branches:\n      - startAt: pick\n        states:\n          pick:\n            type: Choice\n            choices: [{variable: $.slow, booleanEquals: true, next: slow}]\n            default: fast\n          fast: {type: Task, function: {name: fast}, end: true}\n          slow: {type: Task, function: {name: slow}, end: true}\n";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=items", doc);
    assert_eq!(status, 201, "{body}");
    let input = json!({"items": [{"slow": false}, {"slow": true}, {"slow": false}]});
    let id = s.invoke_async("items", &input);
    let succeeded = |s: &Server| {
        s.ok("GET", &format!("/v1/runs/{id}/events"), None)["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["type"] == "TaskSucceeded"
                    && e["task"].as_str().is_some_and(|t| t.ends_with("-fast"))
            })
            .count()
    };
    eventually(
        Duration::from_secs(30),
        "items 0 and 2 done, item 1 in flight",
        || succeeded(&s) == 2 && probe.lines("calls").iter().any(|l| l.starts_with("slow ")),
    );
    s.kill();
    probe.open("slow");
    s.launch();
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!(["fast", "slow", "fast"]));
    let calls = probe.lines("calls");
    let keys = |tag: &str| -> Vec<String> {
        calls
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{tag} ")).map(str::to_string))
            .collect()
    };
    assert_eq!(keys("fast").len(), 2, "finished items ran once: {calls:?}");
    let slow = keys("slow");
    assert_eq!(slow.len(), 2, "{calls:?}");
    assert!(!slow[0].is_empty(), "{calls:?}");
    assert_eq!(
        slow[0], slow[1],
        "the item in flight is called again with its key"
    );
}

#[test]
fn rfc0022_a_parallel_resumes_after_a_killed_server_without_rerunning_a_finished_branch() {
    let mut s = Server::start();
    let probe = Probe::start();
    recorders(&s, &probe, &[("one", false), ("two", true)]);
    let doc = "startAt: p\nstates:\n  p:\n    type: Parallel\n    end: true\n    branches:\n      - startAt: a\n        states:\n          a: {type: Task, function: {name: one}, end: true}\n      - startAt: b\n        states:\n          b: {type: Task, function: {name: two}, end: true}\n";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=par", doc);
    assert_eq!(status, 201, "{body}");
    let id = s.invoke_async("par", &json!({}));
    eventually(
        Duration::from_secs(30),
        "branch 0 done, branch 1 in flight",
        || {
            let events = s
                .ok("GET", &format!("/v1/runs/{id}/events"), None)
                .to_string();
            let done =
                events.contains("TaskSucceeded") && events.contains("000001-p/0000/000001-a");
            done && probe.lines("calls").iter().any(|l| l.starts_with("two "))
        },
    );
    s.kill();
    probe.open("two");
    s.launch();
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!(["one", "two"]));
    let calls = probe.lines("calls");
    let count = |tag: &str| {
        calls
            .iter()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .count()
    };
    assert_eq!(count("one"), 1, "{calls:?}");
    assert_eq!(count("two"), 2, "{calls:?}");
}

/// A binary function that logs `<tag> called`, waits for the probe's gate
/// `<tag>`, logs `<tag> finished`, then answers `<tag>`, or fails (exit 1).
fn gated(probe: &Probe, tag: &str, fails: bool) -> String {
    format!(
        "#!/bin/sh\n{}\n{}\n{}\n{}\n",
        probe.curl(&format!("/log/calls?{tag}+called")),
        probe.curl(&format!("/gate/{tag}")),
        probe.curl(&format!("/log/calls?{tag}+finished")),
        if fails {
            "exit 1".to_string()
        } else {
            format!("printf '{tag}'")
        },
    )
}

#[test]
fn rfc0022_a_failed_branch_cancels_its_siblings_and_the_catch_leads_on() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    for (tag, fails) in [("slow", false), ("bad", true), ("after", false)] {
        s.function(
            tag,
            "binary",
            &format!("{tag}.sh"),
            &gated(&probe, tag, fails),
            json!({}),
        );
    }
    let doc = "startAt: p
states:
  p:
    type: Parallel
    next: unreachable
    catch: [{errorType: Fission.BranchFailed, resultPath: $.failed, next: after}]
    branches:
      - startAt: slow
        states:
          slow: {type: Task, function: {name: slow}, end: true}
      - startAt: bad
        states:
          bad: {type: Task, function: {name: bad}, end: true}
      - startAt: nap
        states:
          nap: {type: Wait, duration: 1h, end: true}
  after: {type: Task, function: {name: after}, resultPath: $.after, end: true}
  unreachable: {type: Fail}
";
    let (status, body) = store(&s, "POST", "/v1/workflows?name=fast", doc);
    assert_eq!(status, 201, "{body}");
    let id = s.invoke_async("fast", &json!({"x": 1}));
    let called = |tag: &str| probe.lines("calls").contains(&format!("{tag} called"));
    eventually(Duration::from_secs(60), "both branches called", || {
        called("slow") && called("bad")
    });
    probe.open("bad");
    // The run goes on at `after` while the slow branch still waits: its call
    // and the hour-long Wait are cancelled.
    eventually(Duration::from_secs(60), "the catch leads on", || {
        called("after")
    });
    let run = s.run(&id);
    assert_eq!(run["status"], "running", "{run}");
    let status = |run: &Value, task: &str| {
        run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == task)
            .map(|t| t["status"].clone())
    };
    for task in ["000001-p/0000/000001-slow", "000001-p/0002/000001-nap"] {
        assert_eq!(
            status(&run, task),
            Some(json!("cancelled")),
            "{task}: {run}"
        );
    }
    assert_eq!(
        status(&run, "000001-p/0001/000001-bad"),
        Some(json!("failed"))
    );

    // Whatever the slow function does now changes nothing.
    probe.open("slow");
    probe.open("after");
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["x"], 1, "{run}");
    assert_eq!(run["output"]["after"], "after", "{run}");
    assert_eq!(
        run["output"]["failed"]["errorType"], "Fission.BranchFailed",
        "{run}"
    );
    assert_eq!(
        status(&run, "000001-p/0000/000001-slow"),
        Some(json!("cancelled"))
    );
    let events = s.ok("GET", &format!("/v1/runs/{id}/events"), None)["events"].clone();
    let of_slow: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["task"] == "000001-p/0000/000001-slow")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(of_slow, ["TaskDispatched", "TaskCancelled"], "{events}");
}

/// Answers the body it got, as text, with its type.
const RAW_BODY: &str = r#"
from flask import request

def main():
    return {"ct": request.headers.get("Content-Type"), "raw": request.get_data(as_text=True)}
"#;

/// Answers JSON as text, without saying it is JSON (Flask's default type).
const UNTYPED_JSON: &str = r#"
def main():
    return '{"a": 1}'
"#;

const DOCUMENTS: &str = "apiVersion: fission.io/v1
kind: Workflow
metadata:
  name: documents
spec:
  startAt: each
  states:
    each:
      type: Map
      itemsPath: $.items
      resultPath: $.seen
      branches:
        - startAt: r
          states:
            r: {type: Task, function: {name: raw-body}, end: true}
      next: answer
    answer:
      type: Task
      function: {name: untyped-json}
      resultPath: $.r
      end: true
";

/// As Fission's own engine: a step sends its document as JSON whatever it is
/// (a string stays a JSON string, null is `null`), and reads an answer that is
/// JSON as JSON whatever its type says.
#[test]
fn rfc0022_steps_send_and_read_json_documents() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function("raw-body", "python", "r.py", RAW_BODY, json!({}));
    s.function("untyped-json", "python", "u.py", UNTYPED_JSON, json!({}));
    assert_eq!(store(&s, "POST", "/v1/workflows", DOCUMENTS).0, 201);
    let (status, out) = invoke(
        &s,
        "documents",
        json!({"items": ["A-1", "{\"x\":1}", "42", null, 7]}),
    );
    assert_eq!(status, 200, "{out}");
    let raw: Vec<&str> = out["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seen| {
            assert_eq!(seen["ct"], "application/json", "{out}");
            seen["raw"].as_str().unwrap()
        })
        .collect();
    assert_eq!(raw, [r#""A-1""#, r#""{\"x\":1}""#, r#""42""#, "null", "7"]);
    assert_eq!(out["r"], json!({"a": 1}), "{out}");
}
