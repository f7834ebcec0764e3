//! The workflow engine seen from outside: workflows stored and invoked through
//! the real server, the run history API, and crash recovery.

mod common;

use std::path::Path;
use std::time::Duration;

use common::probe::Probe;
use common::{eventually, Server};
use serde_json::{json, Value};

#[test]
fn every_example_answers_as_documented() {
    let s = Server::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflow-examples");
    let (code, out, err) = s.cli(&["spec", "apply", "-f", root.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    let (st, whale) = s.invoke("fortunewhale", "text/plain", "");
    assert_eq!(st, 200, "{whale}");
    assert!(
        whale.contains("##        .") && whale.contains('<'),
        "{whale}"
    );
    assert_eq!(
        s.invoke("echo", "text/plain", "hello there"),
        (200, "hello there".into())
    );
    assert_eq!(
        s.invoke("ifelse", "text/plain", "short"),
        (200, "SHORT!".into())
    );
    let (st, long) = s.invoke("ifelse", "text/plain", "a much longer input");
    assert_eq!(st, 200);
    assert!(long.contains("< a much longer input >"), "{long}");
    let (st, doubled) = s.invoke("doubler", "application/json", "[1, 2, 3]");
    assert_eq!(
        (st, serde_json::from_str::<Value>(&doubled).unwrap()),
        (200, json!([2, 4, 6]))
    );
    assert_eq!(
        s.invoke("reply", "text/plain", "hello"),
        (200, "Hello yourself!".into())
    );
    assert_eq!(
        s.invoke("reply", "text/plain", "what"),
        (200, "I do not understand.".into())
    );
    assert_eq!(s.invoke("whilecount", "text/plain", ""), (200, "5".into()));
    let (st, fib) = s.invoke("fibonacci", "text/plain", "");
    assert_eq!(
        (st, serde_json::from_str::<Value>(&fib).unwrap()),
        (200, json!([0, 1, 1, 2, 3, 5, 8, 13, 21, 34]))
    );
    let (st, joined) = s.invoke("fanout", "text/plain", "");
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&joined).unwrap(),
        json!({"a": "done", "b": "done", "c": "done"})
    );
    let (st, drawn) = s.invoke("callbyname", "text/plain", "nested call");
    assert_eq!(st, 200);
    assert!(drawn.contains("< nested call >"), "{drawn}");
    assert_eq!(s.invoke("scoped", "text/plain", ""), (200, "SCOPED".into()));
    let (st, failed) = s.invoke("failing", "text/plain", "");
    assert_eq!(st, 500);
    let err: Value = serde_json::from_str(&failed).unwrap();
    assert_eq!(err["error"]["task"], "Boom");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("fails on purpose"));
    // A route can target a workflow too; while it does, the workflow stays.
    let r = s.get("/whale");
    assert_eq!(r.status(), 200);
    let (st, body) = s.call("DELETE", "/v1/workflows/fortunewhale", None);
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("target of routes"),
        "{body}"
    );
    assert_eq!(s.get("/whale").status(), 200);
}

#[test]
fn the_fanout_sleeps_run_in_parallel_not_in_waves() {
    let s = Server::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflow-examples/workflows");
    s.workflow(
        "fanout",
        &std::fs::read_to_string(root.join("fanout.wf.yaml")).unwrap(),
    );
    let id = s.start_async("fanout", "");
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded");
    // Each sleep starts before any of them ends.
    let tasks = run["tasks"].as_array().unwrap();
    let sleeps: Vec<&Value> = tasks.iter().filter(|t| t["run"] == "sleep").collect();
    assert_eq!(sleeps.len(), 3);
    let last_start = sleeps
        .iter()
        .map(|t| t["started_at"].as_u64().unwrap())
        .max()
        .unwrap();
    let first_end = sleeps
        .iter()
        .map(|t| t["ended_at"].as_u64().unwrap())
        .min()
        .unwrap();
    assert!(last_start < first_end, "{run}");
}

#[test]
fn a_killed_server_resumes_its_runs_without_repeating_finished_tasks() {
    let mut s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    s.function(
        "step-one",
        "binary",
        "one.sh",
        &probe.recorder("one", false),
        json!({}),
    );
    s.function(
        "step-two",
        "binary",
        "two.sh",
        &probe.recorder("two", true),
        json!({}),
    );
    s.function(
        "step-three",
        "binary",
        "three.sh",
        &probe.recorder("three", false),
        json!({}),
    );
    s.workflow(
        "chain",
        "apiVersion: 1\noutput: Three\ntasks:\n  One:\n    run: step-one\n  Two:\n    run: step-two\n    requires: [One]\n  Three:\n    run: step-three\n    inputs: \"{ output('One') + output('Two') }\"\n    requires: [Two]\n",
    );
    let id = s.start_async("chain", "");
    eventually(Duration::from_secs(30), "step two is in flight", || {
        probe.lines("calls").iter().any(|l| l.starts_with("two "))
    });
    // What a running run is at, where it is listed.
    let listed = s.ok("GET", "/v1/runs?workflow=chain&status=running", None);
    assert_eq!(
        listed["runs"][0]["running_tasks"],
        json!(["Two"]),
        "{listed}"
    );
    let (code, out, err) = s.cli(&["run", "list", "--workflow", "chain"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().next().unwrap_or_default().contains("RUNNING"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with(id.as_str()))
        .unwrap_or_default();
    assert!(row.contains(" Two"), "{out}");
    s.kill();
    probe.open("two");
    s.launch();
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "three");

    let calls = probe.lines("calls");
    let count = |tag: &str| {
        calls
            .iter()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .count()
    };
    assert_eq!(count("one"), 1, "{calls:?}");
    assert_eq!(count("three"), 1, "{calls:?}");
    // The in-flight task was dispatched again, with the same idempotency key.
    let keys: Vec<&String> = calls.iter().filter(|l| l.starts_with("two ")).collect();
    assert_eq!(keys.len(), 2, "{calls:?}");
    assert_eq!(keys[0], keys[1]);
    assert!(keys[0].contains(&id), "the key names the run: {keys:?}");
    // And its history says so: taken up again, with task Two's call repeated.
    let events = s.ok("GET", &format!("/v1/runs/{id}/events"), None);
    let resumed: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "RunResumed")
        .collect();
    assert_eq!(resumed.len(), 1, "{events}");
    assert_eq!(resumed[0]["repeated"], json!(["Two"]), "{events}");
    // The task says it too: its one attempt was called twice.
    let two = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "Two")
        .unwrap();
    assert_eq!(
        (&two["attempts"], &two["repeated_after_restart"]),
        (&json!(1), &json!(1)),
        "{run}"
    );
    let (code, out, err) = s.cli(&["run", "get", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 (+1 after a restart)"), "{out}");
}

#[test]
fn run_history_lists_filters_pages_and_details_runs() {
    let s = Server::start();
    s.workflow(
        "ok",
        "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n    inputs: \"{ param() }\"\n",
    );
    s.workflow(
        "bad",
        "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: fail\n    inputs: nope\n",
    );
    for i in 0..5 {
        assert_eq!(s.invoke("ok", "text/plain", &format!("n{i}")).0, 200);
    }
    assert_eq!(s.invoke("bad", "text/plain", "").0, 500);

    let all = s.ok("GET", "/v1/runs", None);
    let runs = all["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    // Newest first.
    assert_eq!(runs[0]["workflow"], "bad");
    assert_eq!(runs[1]["input"]["default"], "n4");

    let failed = s.ok("GET", "/v1/runs?status=failed", None);
    assert_eq!(failed["runs"].as_array().unwrap().len(), 1);
    assert_eq!(failed["runs"][0]["workflow"], "bad");
    // In any case, and by Fission Workflows' names for the same statuses.
    for (asked, n) in [
        ("FAILED", 1),
        ("SUCCEEDED", 5),
        ("IN_PROGRESS", 0),
        ("ABORTED", 0),
    ] {
        let page = s.ok("GET", &format!("/v1/runs?status={asked}"), None);
        assert_eq!(page["runs"].as_array().unwrap().len(), n, "{asked}: {page}");
    }
    let oks = s.ok("GET", "/v1/runs?workflow=ok&status=succeeded", None);
    assert_eq!(oks["runs"].as_array().unwrap().len(), 5);

    // Pages of two, following the cursor, cover every run once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/runs?limit=2&cursor={c}"),
            None => "/v1/runs?limit=2".to_string(),
        };
        let page = s.ok("GET", &path, None);
        for r in page["runs"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    seen.dedup();
    assert_eq!(seen.len(), 6);

    let id = runs[1]["id"].as_str().unwrap();
    let detail = s.run(id);
    assert_eq!(detail["status"], "succeeded");
    assert_eq!(detail["output"], "n4");
    let task = &detail["tasks"][0];
    assert_eq!(task["id"], "A");
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["attempts"], 1);
    assert!(task["started_at"].as_u64().is_some() && task["ended_at"].as_u64().is_some());
    let events = s.ok("GET", &format!("/v1/runs/{id}/events"), None);
    let text = events.to_string();
    assert!(
        text.contains("RunStarted") && text.contains("RunSucceeded"),
        "{text}"
    );

    let (st, v) = s.call("GET", "/v1/runs?status=sideways", None);
    assert_eq!(st, 400, "{v}");
    for limit in [0, 1001] {
        let (st, v) = s.call("GET", &format!("/v1/runs?limit={limit}"), None);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("invalid_limit")),
            "{v}"
        );
    }
    let (st, _) = s.call("GET", "/v1/runs/no-such-run", None);
    assert_eq!(st, 404);

    // The CLI shows the same history, with when each run started, and takes
    // times as a user writes them.
    let (code, out, err) = s.cli(&["run", "list", "--workflow", "bad"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("failed") && out.contains("STARTED"), "{out}");
    let (code, out, err) = s.cli(&["run", "list", "--workflow", "bad", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("failed"), "{out}");
    let (code, out, err) = s.cli(&["run", "list", "--workflow", "bad", "--until", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("failed"), "{out}");
    let (code, _, err) = s.cli(&["run", "list", "--since", "yesterday"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a time"), "{err}");
}

#[test]
fn invalid_workflows_are_refused_with_line_and_column() {
    let s = Server::start();
    let post = |yaml: &str| {
        let r = s
            .api("POST", "/v1/workflows?name=broken")
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (st, v) = post("apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n    requires: [B]\n  B:\n    run: noop\n    requires: [A]\n");
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "cycle");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains('A') && msg.contains('B') && msg.contains("line"),
        "{msg}"
    );

    let (st, v) = post("apiVersion: 1\noutput: Missing\ntasks:\n  A:\n    run: noop\n");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("unknown_output")),
        "{v}"
    );
    let (st, v) = post("apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: no-such-function\n");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("unknown_function")),
        "{v}"
    );
    // Where, at the top as docs/error-codes.md says, and each problem in details.
    assert_eq!(
        (v["error"]["line"].as_u64(), v["error"]["column"].as_u64()),
        (Some(5), Some(10)),
        "{v}"
    );
    assert_eq!(v["error"]["details"][0]["code"], "unknown_function", "{v}");
    // A position is said once.
    let deep = format!(
        "output: A\ntasks:\n  A:\n    inputs: {}1{}\n",
        "[".repeat(70),
        "]".repeat(70)
    );
    let (st, v) = post(&deep);
    let msg = v["error"]["message"].as_str().unwrap();
    assert_eq!(st, 400, "{v}");
    assert_eq!(msg.matches("line 4").count(), 1, "{msg}");
    let (_, v) = post("output: A\ntasks:\n  A: {run: noop}\n  A: {run: fail}\n");
    let msg = v["error"]["message"].as_str().unwrap();
    assert_eq!(msg.matches("line").count(), 1, "{msg}");
    let (st, v) =
        post("apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n    inputs: \"{ 1 + }\"\n");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_expression")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 6"),
        "{v}"
    );
    // A misspelt key.
    let (st, v) = post("apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n  B:\n    run: noop\n    requirez: [A]\n");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("unknown_key")),
        "{v}"
    );
    assert_eq!(
        (
            &v["error"]["details"][0]["line"],
            &v["error"]["details"][0]["column"]
        ),
        (&json!(8), &json!(5)),
        "{v}"
    );
    let (st, v) = post("apiVersion: 1\noutput: A\ntasks:\n  A: [unclosed\n");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("yaml_syntax")),
        "{v}"
    );
    // Nothing was stored.
    assert_eq!(s.call("GET", "/v1/workflows/broken", None).0, 404);
    // Without ?name=, a document that does not parse says where, not that
    // its name is missing; one that parses without a name says so.
    let post_unnamed = |doc: &str| {
        let r = s
            .api("POST", "/v1/workflows")
            .header("content-type", "application/json")
            .body(doc.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (st, v) = post_unnamed(
        "{\"apiVersion\": \"fission.io/v1\", \"kind\": \"Workflow\",\n \"metadata\": {\"name\": \"j1\"},\n \"spec\": {\"startAt\": \"a\", \"states\": {\"a\": {\"type\": \"Succeed\"} \"b\": 1}}}\n",
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("yaml_syntax")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 3"),
        "{v}"
    );
    let (st, v) = post_unnamed("apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("missing_name")),
        "{v}"
    );
}

#[test]
fn cancel_stops_a_run_and_retry_resumes_from_the_failed_task() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    s.function(
        "first",
        "binary",
        "first.sh",
        &probe.recorder("first", false),
        json!({}),
    );
    let flaky = format!(
        "#!/bin/sh\n{} || {{ echo 'not yet' >&2; exit 3; }}\nprintf fixed\n",
        probe.curl("/flag/fixed")
    );
    s.function("flaky", "binary", "flaky.sh", &flaky, json!({}));
    s.workflow(
        "mend",
        "apiVersion: 1\noutput: B\ntasks:\n  A:\n    run: first\n  B:\n    run: flaky\n    requires: [A]\n",
    );
    let (st, body) = s.invoke("mend", "text/plain", "");
    assert_eq!(st, 500, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["task"], "B");
    let failed_id = err["error"]["run_id"].as_str().unwrap().to_string();
    // The run's record says it with the code its caller was answered.
    let failed = s.run(&failed_id);
    assert_eq!(
        (
            failed["error"]["code"].as_str(),
            failed["error"]["task"].as_str()
        ),
        (Some("run_failed"), Some("B")),
        "{failed}"
    );

    probe.set("fixed");
    let retried = s.ok(
        "POST",
        &format!("/v1/runs/{failed_id}/retry"),
        Some(json!({})),
    );
    let new_id = retried["id"].as_str().unwrap().to_string();
    // Its location is absolute, as an invocation's.
    assert_eq!(
        retried["location"],
        s.api_url(&format!("/v1/runs/{new_id}")).as_str(),
        "{retried}"
    );
    let run = s.wait_run(&new_id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "fixed");
    assert_eq!(
        probe.lines("calls").len(),
        1,
        "task A kept its output and did not run again"
    );

    s.workflow(
        "long",
        "apiVersion: 1\noutput: Nap\ntasks:\n  Nap:\n    run: sleep\n    inputs: 60s\n",
    );
    let id = s.start_async("long", "");
    let cancelled = s.ok("POST", &format!("/v1/runs/{id}/cancel"), Some(json!({})));
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(s.run(&id)["status"], "cancelled");

    // Why, when the canceller says it; a reason that is not text is refused.
    let id = s.start_async("long", "");
    let (st, v) = s.call(
        "POST",
        &format!("/v1/runs/{id}/cancel"),
        Some(json!({"reason": 7})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{v}"
    );
    let (rc, _, e) = s.cli(&["run", "cancel", &id, "--reason", "wrong order"]);
    assert_eq!(rc, 0, "{e}");
    let run = s.run(&id);
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(
        run["error"]["message"], "cancelled through the API: wrong order",
        "{run}"
    );
    assert_eq!(run["error"]["code"], "run_cancelled", "{run}");
    // So does the listing's summary.
    let listed = s.ok("GET", "/v1/runs?workflow=long&status=cancelled", None);
    let summary = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(summary["error"]["code"], "run_cancelled", "{summary}");

    // A finished run can be deleted (what it captured goes with it); a running
    // one must be cancelled first.
    let running = s.start_async("long", "");
    let (st, body) = s.call("DELETE", &format!("/v1/runs/{running}"), None);
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    // Fission Workflows' name for it finds it too.
    let aborted = s.ok("GET", "/v1/runs?workflow=long&status=ABORTED", None);
    assert!(
        aborted["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str()),
        "{aborted}"
    );
    let in_progress = s.ok("GET", "/v1/runs?workflow=long&status=in_progress", None);
    assert_eq!(
        in_progress["runs"][0]["id"],
        running.as_str(),
        "{in_progress}"
    );
    let (rc, _, e) = s.cli(&["run", "delete", &id]);
    assert_eq!(rc, 0, "{e}");
    assert_eq!(s.call("GET", &format!("/v1/runs/{id}"), None).0, 404);
    assert_eq!(s.call("GET", &format!("/v1/runs/{id}/events"), None).0, 404);
    let listed = s.ok("GET", "/v1/runs?workflow=long&status=cancelled", None);
    assert!(
        !listed["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str()),
        "{listed}"
    );
    let (st, _) = s.call("DELETE", &format!("/v1/runs/{id}"), None);
    assert_eq!(st, 404);
    s.ok(
        "POST",
        &format!("/v1/runs/{running}/cancel"),
        Some(json!({})),
    );
}

/// A call in flight when its run failed (beside the task that failed it)
/// may have been made: the retry sends its first attempt under the same
/// idempotency key, so that the function can tell it is the same call.
#[test]
fn a_retry_calls_what_was_in_flight_under_the_same_key() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 2);
    let side = format!(
        "#!/bin/sh\n{}\n{}\nprintf side\n",
        probe.curl("/log/side?$HTTP_X_FUSION_IDEMPOTENCY_KEY"),
        probe.curl("/gate/side")
    );
    s.function("side", "binary", "side.sh", &side, json!({}));
    // Fails once let go, so that Side's call is surely made before the run
    // fails.
    let bad = format!(
        "#!/bin/sh\n{}\n{} || exit 1\nprintf mended\n",
        probe.curl("/gate/bad"),
        probe.curl("/flag/mended")
    );
    s.function("bad", "binary", "bad.sh", &bad, json!({}));
    s.workflow(
        "beside",
        "apiVersion: 1\noutput: Join\ntasks:\n  Side:\n    run: side\n  Bad:\n    run: bad\n  Join:\n    run: noop\n    requires: [Side, Bad]\n",
    );
    let id = s.start_async("beside", "");
    eventually(Duration::from_secs(30), "Side's call is made", || {
        !probe.lines("side").is_empty()
    });
    probe.open("bad");
    let failed = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(failed["status"], "failed", "{failed}");
    probe.open("side");
    probe.set("mended");
    let retry = s.ok("POST", &format!("/v1/runs/{id}/retry"), Some(json!({})));
    let run = s.wait_run(retry["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    let keys = probe.lines("side");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1], "{keys:?}");
    assert!(!keys[0].is_empty());
}

#[test]
fn retries_back_off_on_5xx_but_never_retry_4xx() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    // Fails twice (the runtime answers 500 on a non-zero exit), then succeeds.
    let code = format!(
        "#!/bin/sh\n[ $({}) -ge 3 ] || exit 1\nprintf third-time\n",
        probe.curl("/count/shaky")
    );
    s.function("shaky", "binary", "shaky.sh", &code, json!({}));
    s.workflow(
        "patient",
        "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: shaky\n    retry:\n      maxAttempts: 3\n      backoff: {initial: 10ms, max: 50ms, multiplier: 2}\n",
    );
    let (st, body) = s.invoke("patient", "text/plain", "");
    assert_eq!((st, body.as_str()), (200, "third-time"));
    let runs = s.ok("GET", "/v1/runs?workflow=patient", None);
    let id = runs["runs"][0]["id"].as_str().unwrap();
    let run = s.run(id);
    assert_eq!(run["tasks"][0]["attempts"], 3, "{run}");
    // What the attempts tried again met, each with its time.
    let failed = run["tasks"][0]["failed_attempts"].as_array().unwrap();
    assert_eq!(
        failed
            .iter()
            .map(|a| (a["attempt"].as_u64(), a["http_status"].as_u64()))
            .collect::<Vec<_>>(),
        [(Some(1), Some(500)), (Some(2), Some(500))],
        "{run}"
    );
    assert!(
        failed
            .iter()
            .all(|a| a["started_at"].as_u64() <= a["ended_at"].as_u64()
                && a["error"].as_str().is_some_and(|e| e.contains("500"))),
        "{run}"
    );
    let (code, out, err) = s.cli(&["run", "get", id]);
    assert_eq!(code, 0, "{err}");
    // Every attempt, the last one too, with how it ended.
    let attempts: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.contains("OUTCOME"))
        .filter(|l| l.starts_with("T "))
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        attempts,
        [
            ["T", "1", "failed"],
            ["T", "2", "failed"],
            ["T", "3", "succeeded"]
        ],
        "{out}"
    );
    // The function's log says which task of which run each failure was:
    // its key, the same on every attempt of the task.
    let (code, log, err) = s.cli(&["fn", "logs", "shaky"]);
    assert_eq!(code, 0, "{err}");
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" answered 500 "))
        .collect();
    assert_eq!(failures.len(), 2, "{log}");
    for line in failures {
        assert!(
            line.ends_with(&format!("(X-Fusion-Idempotency-Key: {id}/T)")),
            "{log}"
        );
    }
    assert_eq!(run["tasks"][0]["max_attempts"], 3, "{run}");
    // The events' times read as times, a retry's due time too.
    let (code, out, err) = s.cli(&["run", "events", id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""due":"20"#), "{out}");

    s.env("python", "python", 1);
    s.function(
        "refuse",
        "python",
        "refuse.py",
        "def main():\n    return 'no such thing: ' + 'x' * 80 + ' (the cause)', 404\n",
        json!({}),
    );
    s.workflow(
        "strict",
        "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: refuse\n    retry:\n      maxAttempts: 5\n      backoff: {initial: 10ms, max: 50ms, multiplier: 2}\n",
    );
    let (st, body) = s.invoke("strict", "text/plain", "");
    assert_eq!(
        st, 404,
        "a 4xx from the failing function is passed on: {body}"
    );
    let runs = s.ok("GET", "/v1/runs?workflow=strict", None);
    let id = runs["runs"][0]["id"].as_str().unwrap();
    let run = s.run(id);
    assert_eq!(run["tasks"][0]["attempts"], 1, "{run}");
    // A table cuts a long error; `-o wide` shows it whole.
    let (code, out, err) = s.cli(&["run", "get", id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("...") && !out.contains("(the cause)"), "{out}");
    let (code, out, err) = s.cli(&["run", "get", id, "-o", "wide"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(the cause)"), "{out}");
}

#[test]
fn a_task_past_its_timeout_fails_the_run() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    s.function(
        "slowpoke",
        "binary",
        "slow.sh",
        "#!/bin/sh\nsleep 30\n",
        json!({}),
    );
    s.workflow(
        "impatient",
        "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: slowpoke\n    timeout: 500ms\n",
    );
    let (st, body) = s.invoke("impatient", "text/plain", "");
    assert_eq!(st, 504, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "run_timed_out", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("timed out after 500ms"), "{err}");
    let run_id = err["error"]["run_id"].as_str().unwrap();
    assert_eq!(s.run(run_id)["error"]["code"], "run_timed_out");

    // A task without a timeout of its own stops at the function's, which the
    // error names (not a zero).
    s.function(
        "slowpoke-capped",
        "binary",
        "slow.sh",
        "#!/bin/sh\nsleep 30\n",
        json!({"timeout_secs": 1}),
    );
    s.workflow(
        "capped",
        "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: slowpoke-capped\n",
    );
    let (st, body) = s.invoke("capped", "text/plain", "");
    assert_eq!(st, 504, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("timed out") && message.contains("within its timeout of 1 s"),
        "{err}"
    );
}

/// A task forwarding the caller's headers (Fission's pattern) with a body of
/// its own sends that body whole: the caller's `Content-Length`, of another
/// body, is not sent with it (it cut the body, or held the call to its
/// timeout).
#[test]
fn a_task_forwarding_the_callers_headers_sends_its_own_body_whole() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "measure",
        "python",
        "measure.py",
        "from flask import request\ndef main():\n    return str(len(request.get_data()))\n",
        json!({}),
    );
    s.workflow(
        "forward",
        "apiVersion: 1\noutput: M\ntasks:\n  M:\n    run: measure\n    inputs:\n      body: \"{ param() + ' and more than the caller sent' }\"\n      headers: \"{ param('headers') }\"\n",
    );
    let (status, body) = s.invoke("forward", "text/plain", "hi");
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "hi and more than the caller sent"
                .len()
                .to_string()
                .as_str()
        )
    );
}

/// A number selected and passed on is passed on exactly: an id past 2^53
/// (JavaScript's doubles would round it) comes out as it went in.
#[test]
fn a_large_integer_passes_through_a_workflow_unchanged() {
    let s = Server::start();
    s.workflow(
        "ids",
        "output: A\ntasks:\n  A:\n    run: noop\n    inputs: \"{ $.Invocation.Inputs.default }\"\n",
    );
    let (status, out) = s.invoke("ids", "application/json", r#"{"id": 9007199254740993}"#);
    assert_eq!(status, 200, "{out}");
    assert_eq!(out.trim(), r#"{"id":9007199254740993}"#);
}

/// A workflow behind a route with URL parameters gets them as a function
/// does, as `X-Fission-Params-<name>` headers of its input, decoded.
#[test]
fn a_routes_url_parameters_reach_its_workflow() {
    let s = Server::start();
    s.workflow(
        "params",
        "apiVersion: 1\noutput: X\ntasks:\n  X:\n    run: noop\n    inputs: \"{ $.Invocation.Inputs.headers }\"\n",
    );
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "params", "url": "/orders/{customer}/{id}", "methods": ["GET"], "workflow": "params"})),
    );
    let r = s.get("/orders/alice%20smith/42");
    assert_eq!(r.status(), 200);
    let headers: Value = r.json().unwrap();
    assert_eq!(
        headers["X-Fission-Params-Customer"], "alice smith",
        "{headers}"
    );
    assert_eq!(headers["X-Fission-Params-Id"], "42", "{headers}");
    // Values past ASCII, in the URL and in a header, arrive as sent.
    let r = s
        .http
        .get(s.router_url("/orders/zo%C3%AB/7"))
        .header(
            "X-Name",
            reqwest::header::HeaderValue::from_bytes("böb".as_bytes()).unwrap(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers: Value = r.json().unwrap();
    assert_eq!(headers["X-Fission-Params-Customer"], "zoë", "{headers}");
    assert_eq!(headers["X-Name"], "böb", "{headers}");

    // An OPTIONS request (a browser's preflight) says what the URL takes and
    // starts no run: the route takes GET only, the workflow's own URL any.
    let options = |url: &str| {
        let r = s
            .http
            .request(reqwest::Method::OPTIONS, s.router_url(url))
            .send()
            .unwrap();
        let allow = r.headers()["allow"].to_str().unwrap().to_string();
        (r.status().as_u16(), allow)
    };
    assert_eq!(options("/orders/x/1"), (405, "GET".to_string()));
    let (status, allow) = options("/fission-function/params");
    assert_eq!(status, 204);
    assert!(allow.contains("POST"), "{allow}");
    // Nor does a HEAD request (a link checker's), or a call whose X-Async is
    // a typo: neither may guess.
    let head = s
        .http
        .head(s.router_url("/fission-function/params"))
        .send()
        .unwrap();
    assert_eq!(head.status(), 405);
    let allow = head.headers()["allow"].to_str().unwrap();
    assert!(allow.contains("POST") && !allow.contains("HEAD"), "{allow}");
    let typo = s
        .http
        .post(s.router_url("/fission-function/params"))
        .header("X-Async", "ture")
        .send()
        .unwrap();
    assert_eq!(typo.status(), 400);
    let body: Value = typo.json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_header", "{body}");
    let runs = s.ok("GET", "/v1/runs?workflow=params", None);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{runs}");
}

#[test]
fn a_new_version_does_not_touch_runs_in_flight() {
    let s = Server::start();
    s.workflow(
        "ver",
        "apiVersion: 1\noutput: B\ntasks:\n  A:\n    run: sleep\n    inputs: 1s\n  B:\n    run: noop\n    inputs: first\n    requires: [A]\n",
    );
    // A run that calls it by name once the new version is in: it keeps the
    // version that was the latest when it started, and says which ran.
    s.workflow(
        "caller",
        "apiVersion: 1\noutput: B\ntasks:\n  A:\n    run: sleep\n    inputs: 1s\n  B:\n    run: ver\n    requires: [A]\n",
    );
    let id = s.start_async("ver", "");
    let nested = s.start_async("caller", "");
    let resp = s
        .api("PUT", "/v1/workflows/ver")
        .header("content-type", "application/yaml")
        .body("apiVersion: 1\noutput: B\ntasks:\n  B:\n    run: noop\n    inputs: second\n")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(
        (run["output"].as_str(), run["version"].as_u64()),
        (Some("first"), Some(1))
    );
    let run = s.wait_run(&nested, Duration::from_secs(30));
    assert_eq!(run["output"], "first", "{run}");
    let b = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "B")
        .unwrap();
    assert_eq!(b["workflow_version"], 1, "{run}");
    let (rc, out, e) = s.cli(&["run", "get", &nested]);
    assert_eq!(rc, 0, "{e}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("B ") && l.contains("ver v1")),
        "{out}"
    );
    assert_eq!(s.invoke("ver", "text/plain", ""), (200, "second".into()));
    // The same document again (an apply run twice, a PUT retried) stores no
    // version of its own, and says so.
    let again = s
        .api("PUT", "/v1/workflows/ver")
        .header("content-type", "application/yaml")
        .body("apiVersion: 1\noutput: B\ntasks:\n  B:\n    run: noop\n    inputs: second\n")
        .send()
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().unwrap();
    assert_eq!(
        (again["version"].as_u64(), again["unchanged"].as_bool()),
        (Some(2), Some(true)),
        "{again}"
    );
    let versions = s.ok("GET", "/v1/workflows/ver/versions", None);
    assert_eq!(versions.as_array().unwrap().len(), 2);
}

#[test]
fn the_cli_creates_invokes_and_routes_workflows() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hi.wf.yaml");
    std::fs::write(&file, "apiVersion: 1\noutput: Hi\ntasks:\n  Hi:\n    run: javascript\n    inputs:\n      expr: \"'hi ' + args.who\"\n      args:\n        who: \"{ param() }\"\n").unwrap();
    let run = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "fusion {args:?}: {err}");
        out
    };
    run(&[
        "wf",
        "create",
        "--name",
        "hi",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(run(&["wf", "list"]).contains("hi"));
    // `wf get` prints the stored document as it is (the version aside, on
    // stderr): edited and updated again, or updated unchanged.
    let (code, got, err) = s.cli(&["wf", "get", "hi"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(got, std::fs::read_to_string(&file).unwrap());
    assert!(err.contains("# hi version 1"), "{err}");
    let again = dir.path().join("again.yaml");
    std::fs::write(&again, &got).unwrap();
    let (code, _, err) = s.cli(&["wf", "update", "hi", "-f", again.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("workflow hi: unchanged"), "{err}");
    assert_eq!(s.ok("GET", "/v1/workflows/hi", None)["version"], 1);
    assert_eq!(
        run(&[
            "wf",
            "invoke",
            "--name",
            "hi",
            "-H",
            "Content-Type: text/plain",
            "-b",
            "ada"
        ])
        .trim(),
        "hi ada"
    );
    // With -o json: the run and its output, a text answer as a string.
    let answer: Value = serde_json::from_str(&run(&[
        "wf",
        "invoke",
        "hi",
        "-o",
        "json",
        "-H",
        "Content-Type: text/plain",
        "-b",
        "ada",
    ]))
    .unwrap();
    assert_eq!(answer["output"], "hi ada", "{answer}");
    let id = answer["id"].as_str().unwrap();
    assert_eq!(
        s.ok("GET", &format!("/v1/runs/{id}"), None)["status"],
        "succeeded"
    );
    // A null output is null (the API answers 204), bytes are `$bytes`.
    s.workflow(
        "passes",
        "output: A\ntasks:\n  A:\n    run: noop\n    inputs: \"{ param() }\"\n",
    );
    for (body, want) in [
        ("null", json!(null)),
        (r#"{"$bytes":"/wAB"}"#, json!({"$bytes": "/wAB"})),
    ] {
        let answer: Value =
            serde_json::from_str(&run(&["wf", "invoke", "passes", "-o", "json", "-b", body]))
                .unwrap();
        assert_eq!(answer["output"], want, "{body}: {answer}");
    }
    // Without -o json, bytes are printed as they are, with nothing added.
    let out = std::process::Command::new(common::BIN)
        .args(["wf", "invoke", "passes", "-b", r#"{"$bytes":"/wAB"}"#])
        .env("FUSION_URL", &s.api)
        .env("FUSION_TOKEN", &s.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, [0xff, 0x00, 0x01]);
    // Started in the background through the API, its Location is absolute,
    // as the router's and a function's are.
    let accepted = s
        .api("POST", "/v1/workflows/hi/invoke")
        .header("X-Async", "true")
        .body("zoe")
        .send()
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let location = accepted.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/v1/runs/", s.api)),
        "{location}"
    );
    let body: Value = accepted.json().unwrap();
    assert_eq!(body["location"], location);
    // A failed run's error names the run, to look at.
    s.workflow(
        "broken",
        "output: A\ntasks:\n  A:\n    run: fail\n    inputs: out of stock\n",
    );
    let (code, _, err) = s.cli(&["wf", "invoke", "broken"]);
    assert_ne!(code, 0);
    let id = err
        .split("`fusion run get ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(err.contains("out of stock"), "{err}");
    assert_eq!(
        s.ok("GET", &format!("/v1/runs/{id}"), None)["status"],
        "failed"
    );
    run(&[
        "route",
        "create",
        "--url",
        "/hi",
        "--workflow",
        "hi",
        "--method",
        "POST",
    ]);
    let r = s
        .http
        .post(s.router_url("/hi"))
        .header("content-type", "text/plain")
        .body("bob")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "hi bob");
    let (code, _, err) = s.cli(&[
        "wf",
        "create",
        "--name",
        "hi",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn the_http_builtin_calls_a_url_and_a_run_timeout_ends_a_slow_run() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "shout",
        "python",
        "shout.py",
        "from flask import request\ndef main():\n    return {'got': request.get_data(as_text=True).upper()}\n",
        json!({}),
    );
    // The http task goes out over the network, here to this server's own router.
    let wf = format!(
        "apiVersion: 1\noutput: Call\ntasks:\n  Call:\n    run: http\n    inputs:\n      url: {}/fission-function/shout\n      method: POST\n      body: \"{{ param() }}\"\n",
        s.router
    );
    s.workflow("caller", &wf);
    let (st, body) = s.invoke("caller", "text/plain", "quiet");
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"got": "QUIET"})
    );

    s.workflow(
        "bounded",
        "apiVersion: 1\noutput: Nap\ntimeout: 300ms\ntasks:\n  Nap:\n    run: sleep\n    inputs: 30s\n",
    );
    let (st, body) = s.invoke("bounded", "text/plain", "");
    assert_eq!(st, 504, "{body}");
    let id = s.ok("GET", "/v1/runs?workflow=bounded", None)["runs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = s.run(&id);
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run.to_string().contains("timed out") || run.to_string().contains("timeout"),
        "{run}"
    );
}

#[test]
fn run_history_filters_by_time() {
    let s = Server::start();
    s.workflow(
        "tick",
        "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n",
    );
    assert_eq!(s.invoke("tick", "text/plain", "").0, 204);
    let first = s.ok("GET", "/v1/runs", None)["runs"][0].clone();
    let t0 = first["created_at"].as_u64().unwrap();
    eventually(
        Duration::from_secs(5),
        "the clock moves past the first run",
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
                > t0 + 1
        },
    );
    assert_eq!(s.invoke("tick", "text/plain", "").0, 204);
    let all = s.ok("GET", "/v1/runs?workflow=tick", None);
    assert_eq!(all["runs"].as_array().unwrap().len(), 2);
    let since = s.ok("GET", &format!("/v1/runs?since={}", t0 + 1), None);
    assert_eq!(since["runs"].as_array().unwrap().len(), 1);
    assert_ne!(since["runs"][0]["id"], first["id"]);
    let until = s.ok("GET", &format!("/v1/runs?until={t0}"), None);
    assert_eq!(until["runs"].as_array().unwrap().len(), 1);
    assert_eq!(until["runs"][0]["id"], first["id"]);
}

#[test]
fn the_output_tasks_headers_come_back_in_canonical_form() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "tagged",
        "python",
        "tagged.py",
        "def main():\n    return 'tagged', 200, {'x-custom-tag': 'yes'}\n",
        json!({}),
    );
    s.workflow(
        "tagging",
        "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: tagged\n",
    );
    let r = s
        .http
        .post(s.router_url("/fission-function/tagging"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-custom-tag"], "yes");
    let id = r.headers()["x-fusion-run-id"].to_str().unwrap().to_string();
    assert_eq!(r.text().unwrap(), "tagged");
    let run = s.run(&id);
    let headers = &run["tasks"][0]["output_headers"];
    assert_eq!(headers["X-Custom-Tag"], "yes", "{run}");
    // A python str answers as Flask's does: text/html.
    assert!(
        headers["Content-Type"]
            .as_str()
            .unwrap()
            .starts_with("text/html"),
        "{run}"
    );
}

#[test]
fn nested_or_oversized_documents_are_refused_and_the_server_keeps_answering() {
    let s = Server::start();
    let send = |method: &str, path: &str, content_type: &str, body: String| {
        let r = s
            .api(method, path)
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let refused = |(st, v): (u16, Value), code: &str| {
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some(code)), "{v}");
        v["error"]["message"].as_str().unwrap_or("").to_string()
    };
    // 200 KB of flow nesting, in the shapes that cost libyaml seconds to minutes.
    let maps = format!("{}1{}", "{a: ".repeat(50_000), "}".repeat(50_000));
    let lines = format!("{}1{}", "{a:\n".repeat(40_000), "}\n".repeat(40_000));
    let one = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let siblings: String = (0..1000).map(|i| format!("k{i}: {one}\n")).collect();
    for doc in [&maps, &lines, &siblings] {
        let msg = refused(
            send(
                "POST",
                "/v1/workflows?name=deep",
                "application/yaml",
                doc.clone(),
            ),
            "document_too_deep",
        );
        assert!(msg.contains("line") && msg.contains("column"), "{msg}");
    }
    // Without ?name= the document is read for `name:`: the same refusal.
    refused(
        send("POST", "/v1/workflows", "application/yaml", maps.clone()),
        "document_too_deep",
    );
    s.workflow("shallow", "output: A\ntasks:\n  A:\n    run: noop\n");
    refused(
        send("PUT", "/v1/workflows/shallow", "application/yaml", lines),
        "document_too_deep",
    );
    // Tasks per workflow: 1,000 are accepted, 1,001 refused.
    let tasks = |n: usize| -> String {
        let body: String = (0..n).map(|i| format!("  t{i}: {{}}\n")).collect();
        format!("output: t0\ntasks:\n{body}")
    };
    s.workflow("thousand", &tasks(1000));
    let msg = refused(
        send(
            "POST",
            "/v1/workflows?name=toomany",
            "application/yaml",
            tasks(1001),
        ),
        "too_many_tasks",
    );
    assert!(msg.contains("1000") || msg.contains("1,000"), "{msg}");
    // Past 1 MiB a workflow is refused whatever it holds.
    let big = format!("output: A\ntasks:\n  A: {{}}\n#{}\n", "x".repeat(1 << 20));
    refused(
        send("POST", "/v1/workflows?name=big", "application/yaml", big),
        "document_too_large",
    );
    // JSON: a resource body and a workflow's invocation body.
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    refused(
        send(
            "POST",
            "/v1/environments",
            "application/json",
            deep_json.clone(),
        ),
        "document_too_deep",
    );
    refused(
        send(
            "POST",
            "/v1/workflows/shallow/invoke",
            "application/json",
            deep_json,
        ),
        "document_too_deep",
    );
    for name in ["deep", "toomany", "big"] {
        assert_eq!(s.call("GET", &format!("/v1/workflows/{name}"), None).0, 404);
    }
    // The server still answers, and a spec file is checked by the CLI too.
    assert_eq!(s.invoke("shallow", "text/plain", "hi").0, 204);
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("deep.yaml");
    std::fs::write(&spec, format!("kind: Route\nname: r\nurl: {maps}\n")).unwrap();
    let (code, _, err) = s.cli(&["spec", "apply", "-f", spec.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("deeper than"), "{err}");
}

/// What expressions see of tasks and the run, named as Fission Workflows
/// names it (`$.Tasks.A.Status == 'SUCCEEDED'`, `task().Requires`, times).
#[test]
fn expressions_see_fission_workflows_scope() {
    let s = Server::start();
    s.workflow(
        "scope",
        "output: B\ntasks:\n  A:\n    run: noop\n    inputs: 1\n  B:\n    run: noop\n    requires: [A]\n    inputs: \"{ [$.Tasks.A.Status, $.Tasks.A.Function, Object.keys(task().Requires).join(), $.Workflow.Status, $.Invocation.CreatedAt, $.Tasks.A.CreatedAt, $.Tasks.A.UpdatedAt] }\"\n",
    );
    let (status, body) = s.invoke("scope", "text/plain", "");
    assert_eq!(status, 200, "{body}");
    let got: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(
        got[..4],
        [
            json!("SUCCEEDED"),
            json!("noop"),
            json!("A"),
            json!("READY")
        ],
        "{body}"
    );
    // Times are nanoseconds since the epoch, as Fission Workflows' scope
    // had them: the run's start, then A's start and end, in order.
    let ns: Vec<u64> = got[4..].iter().map(|t| t.as_u64().expect(&body)).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(
        ns[0] <= ns[1] && ns[1] <= ns[2] && u128::from(ns[2]) <= now.as_nanos(),
        "{body}"
    );
    assert!(
        u128::from(ns[0]) > now.as_nanos() - 60_000_000_000,
        "{body}"
    );
}

/// Bodies that are not UTF-8 text go through a run as the bytes they are: the
/// input to a function, a function's answer to the caller.
#[test]
fn binary_bodies_go_through_runs_whole() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    s.function(
        "hexdump",
        "binary",
        "hex.sh",
        "#!/bin/sh\nod -An -tx1 | tr -d ' \\n'\n",
        json!({}),
    );
    s.function(
        "png",
        "binary",
        "png.sh",
        "#!/bin/sh\nprintf '\\211PNG\\377\\000\\001'\n",
        json!({}),
    );
    s.workflow(
        "hex",
        "output: Hex\ntasks:\n  Hex:\n    run: hexdump\n    inputs: \"{ param() }\"\n",
    );
    s.workflow(
        "echo",
        "output: Echo\ntasks:\n  Echo:\n    run: noop\n    inputs: \"{ param() }\"\n",
    );
    s.workflow("image", "output: P\ntasks:\n  P:\n    run: png\n");
    let sent: &[u8] = &[0xff, 0xfe, 0x00, 0x01, 0x89, b'P'];
    let post = |name: &str| {
        s.http
            .post(s.router_url(&format!("/fission-function/{name}")))
            .header("content-type", "application/octet-stream")
            .body(sent.to_vec())
            .send()
            .unwrap()
    };
    let r = post("hex");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "fffe00018950");
    // What `curl --data-binary @file` sends: a form by its type only.
    let r = s
        .http
        .post(s.router_url("/fission-function/hex"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![0xff, b'=', 0x01])
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "ff3d01");
    let r = post("echo");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().unwrap().as_ref(), sent);
    let r = post("image");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().unwrap().as_ref(),
        &[0x89, b'P', b'N', b'G', 0xff, 0x00, 0x01]
    );
}

/// A map shaped like a task (`run`) or a workflow (`tasks`) that arrives as
/// data, from the caller or from a function's answer, is data: only what the
/// workflow's author wrote runs.
#[test]
fn a_task_sent_as_data_is_data_and_never_runs() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    s.function(
        "secret",
        "binary",
        "secret.sh",
        "#!/bin/sh\nprintf ran\n",
        json!({}),
    );
    s.env("python", "python", 1);
    s.function(
        "answers-a-task",
        "python",
        "task.py",
        "def main():\n    return {'run': 'secret'}\n",
        json!({}),
    );
    s.workflow(
        "passthru",
        "output: Echo\ntasks:\n  Echo:\n    run: noop\n    inputs: \"{ param() }\"\n",
    );
    for sent in [
        json!({"run": "secret"}),
        json!({"run": "http", "inputs": {"url": s.api_url("/v1/functions")}}),
        json!({"output": "t", "tasks": {"t": {"run": "secret"}}}),
    ] {
        let (status, body) = s.invoke("passthru", "application/json", &sent.to_string());
        assert_eq!(status, 200, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), sent);
    }
    // A function's answer passed on is data too.
    s.workflow(
        "relay",
        "output: Pass\ntasks:\n  Ask:\n    run: answers-a-task\n  Pass:\n    run: noop\n    inputs: \"{ output('Ask') }\"\n    requires: [Ask]\n",
    );
    let (status, body) = s.invoke("relay", "text/plain", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"run": "secret"})
    );
    // The branch an `if` holds runs; the other, made from the input, does not,
    // even when it equals the one written.
    s.workflow(
        "gate",
        "output: G\ntasks:\n  G:\n    run: if\n    inputs:\n      if: \"{ param().admin }\"\n      then:\n        run: secret\n      else: \"{ param().task }\"\n",
    );
    let (status, body) = s.invoke(
        "gate",
        "application/json",
        &json!({"admin": true, "task": {}}).to_string(),
    );
    assert_eq!((status, body.as_str()), (200, "ran"));
    let sent = json!({"admin": false, "task": {"run": "secret"}});
    let (status, body) = s.invoke("gate", "application/json", &sent.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), sent["task"]);
}

#[test]
fn runs_keep_credential_header_names_but_never_their_values() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    let echo = "#!/bin/sh\nprintf 'auth=%s cookie=%s proxy=%s other=%s' \"$HTTP_AUTHORIZATION\" \"$HTTP_COOKIE\" \"$HTTP_PROXY_AUTHORIZATION\" \"$HTTP_X_OTHER\"\n";
    s.function("echo-headers", "binary", "echo.sh", echo, json!({}));
    // Says whether it got the values sent, without echoing them.
    let check = "#!/bin/sh\n[ \"$HTTP_AUTHORIZATION\" = 'Bearer s3cret-token' ] && a=ok || a=\"$HTTP_AUTHORIZATION\"\n[ \"$HTTP_COOKIE\" = 'sid=s3cret-cookie' ] && c=ok || c=\"$HTTP_COOKIE\"\nprintf 'auth=%s cookie=%s other=%s' \"$a\" \"$c\" \"$HTTP_X_OTHER\"\n";
    s.function("check-headers", "binary", "check.sh", check, json!({}));
    s.workflow(
        "forward",
        "output: E\ntasks:\n  E:\n    run: check-headers\n    inputs:\n      headers: \"{ $.Invocation.Inputs.headers }\"\n",
    );
    let secrets = [
        ("Authorization", "Bearer s3cret-token"),
        ("Cookie", "sid=s3cret-cookie"),
        ("Proxy-Authorization", "Basic s3cret-proxy"),
        ("X-Other", "visible"),
    ];
    let send = |path: &str| {
        let mut req = s.http.post(s.router_url(path));
        for (k, v) in secrets {
            req = req.header(k, v);
        }
        req.send().unwrap()
    };
    // Routed straight to the function, the request is untouched (but for
    // Proxy-Authorization, which the router consumes as a hop-by-hop header).
    let direct = send("/fission-function/echo-headers").text().unwrap();
    assert_eq!(
        direct,
        "auth=Bearer s3cret-token cookie=sid=s3cret-cookie proxy= other=visible"
    );
    // Through a workflow, a task forwards them as the caller sent them (the
    // run holds them in memory only), while the run's record never has them.
    let r = send("/fission-function/forward");
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-fusion-run-id"].to_str().unwrap().to_string();
    assert_eq!(r.text().unwrap(), "auth=ok cookie=ok other=visible");
    let run = s.run(&id);
    let headers = &run["input"]["headers"];
    for name in ["Authorization", "Cookie", "Proxy-Authorization"] {
        assert_eq!(headers[name], "[redacted]", "{run}");
    }
    assert_eq!(headers["X-Other"], "visible", "{run}");
    let events = s.ok("GET", &format!("/v1/runs/{id}/events"), None);
    let listing = s.ok("GET", "/v1/runs?workflow=forward", None);
    for record in [run.to_string(), events.to_string(), listing.to_string()] {
        assert!(!record.contains("s3cret"), "{record}");
    }
}

#[test]
fn functions_and_workflows_share_one_name_space_of_dns_labels() {
    let s = Server::start();
    let noop = "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: noop\n";
    let create = |name: &str| {
        let r = s
            .api("POST", "/v1/workflows")
            .query(&[("name", name)])
            .header("content-type", "application/yaml")
            .body(noop)
            .send()
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    for bad in ["..", "a\0b", "Upper", &"x".repeat(1000)] {
        let (status, body) = create(bad);
        assert_eq!(status, 400, "{}: {body}", bad.len());
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
    assert_eq!(s.ok("GET", "/v1/workflows", None), json!([]));

    s.env("binary", "binary", 0);
    s.function(
        "taken",
        "binary",
        "t.sh",
        "#!/bin/sh\nprintf fn\n",
        json!({}),
    );
    let (status, body) = create("taken");
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("conflict")),
        "{body}"
    );
    // The function still answers at its name.
    assert_eq!(s.get("/fission-function/taken").text().unwrap(), "fn");

    s.workflow("flow", noop);
    let package = s.upload("f.sh", b"#!/bin/sh\nprintf fn\n");
    let (status, body) = s.call(
        "POST",
        "/v1/functions",
        Some(json!({"name": "flow", "env": "binary", "package": package})),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("conflict")),
        "{body}"
    );
}

#[test]
fn a_function_and_a_workflow_created_at_once_cannot_both_take_a_name() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let package = s.upload("f.sh", b"#!/bin/sh\nprintf fn\n");
    let noop = "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: noop\n";
    let names: Vec<String> = (0..20).map(|i| format!("both-{i}")).collect();
    std::thread::scope(|scope| {
        for name in &names {
            let (s, package) = (&s, &package);
            scope.spawn(move || {
                s.call(
                    "POST",
                    "/v1/functions",
                    Some(json!({"name": name, "env": "binary", "package": package})),
                )
            });
            scope.spawn(move || {
                s.api("POST", "/v1/workflows")
                    .query(&[("name", name)])
                    .header("content-type", "application/yaml")
                    .body(noop)
                    .send()
                    .unwrap()
            });
        }
    });
    let functions = s.ok("GET", "/v1/functions", None);
    let workflows = s.ok("GET", "/v1/workflows", None);
    for name in &names {
        let is_function = functions
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == name.as_str());
        let is_workflow = workflows
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == name.as_str());
        assert!(
            is_function != is_workflow,
            "{name}: function {is_function}, workflow {is_workflow}"
        );
    }
}

#[test]
fn a_stored_workflow_survives_a_killed_server() {
    let mut s = Server::start();
    s.workflow(
        "kept",
        "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: noop\n",
    );
    // Killed right after the 201: what the API acknowledged is on disk.
    s.kill();
    s.launch();
    assert_eq!(s.ok("GET", "/v1/workflows/kept", None)["name"], "kept");
}

#[test]
fn run_get_shows_control_characters_of_the_data_escaped() {
    let s = Server::start();
    s.workflow(
        "echoed",
        "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: noop\n    inputs: \"{ param() }\"\n",
    );
    // A caller's carriage return and line-clearing escape would rewrite the
    // operator's terminal; a tab would break the columns.
    let (st, _) = s.invoke("echoed", "text/plain", "x\r\u{1b}[2Kforged\tz\u{202e}");
    assert_eq!(st, 200);
    let runs = s.ok("GET", "/v1/runs?workflow=echoed", None);
    let id = runs["runs"][0]["id"].as_str().unwrap().to_string();
    let (rc, out, e) = s.cli(&["run", "get", &id]);
    assert_eq!(rc, 0, "{e}");
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
    // A right-to-left override would reorder what follows it.
    assert!(out.contains(r"x\r\u{1b}[2Kforged\tz\u{202e}"), "{out}");
}

#[test]
fn the_run_commands_say_what_a_user_needs() {
    let s = Server::start();
    s.workflow(
        "boom",
        "apiVersion: 1\noutput: B\ntasks:\n  B:\n    run: fail\n    inputs: \"{ 'boom: ' + param() }\"\n",
    );
    // A failed run's error says what is known, and no `"status": null`.
    let (st, body) = s.invoke("boom", "text/plain", "x");
    assert_eq!(st, 500, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["task"], "B", "{body}");
    assert!(err["error"].get("status").is_none(), "{body}");
    let id = err["error"]["run_id"].as_str().unwrap().to_string();

    // `run get` lists tasks in the order they ran, not by name, with times.
    s.workflow(
        "order",
        "apiVersion: 1\noutput: Abe\ntasks:\n  Zed:\n    run: sleep\n    inputs: 20ms\n  Abe:\n    run: noop\n    requires: [Zed]\n",
    );
    let (st, _) = s.invoke("order", "text/plain", "");
    assert_eq!(st, 204);
    let ordered = s.ok("GET", "/v1/runs?workflow=order", None);
    let order_id = ordered["runs"][0]["id"].as_str().unwrap().to_string();
    let (rc, out, e) = s.cli(&["run", "get", &order_id]);
    assert_eq!(rc, 0, "{e}");
    let at = |task: &str| {
        out.lines()
            .position(|l| l.starts_with(task))
            .unwrap_or_else(|| panic!("{out}"))
    };
    assert!(at("Zed") < at("Abe"), "{out}");
    assert!(
        out.contains("STARTED") && out.contains("DURATION_MS"),
        "{out}"
    );

    // A task the failed run never reached is said as not run; it and a task
    // cut off beside the failure say why.
    s.workflow(
        "cut",
        "apiVersion: 1\noutput: C\ntasks:\n  B:\n    run: fail\n    inputs: no\n  C:\n    run: noop\n    requires: [B, S]\n  S:\n    run: sleep\n    inputs: 60s\n",
    );
    let (st, body) = s.invoke("cut", "text/plain", "");
    assert_eq!(st, 500, "{body}");
    let cut: Value = serde_json::from_str(&body).unwrap();
    let cut_id = cut["error"]["run_id"].as_str().unwrap().to_string();
    let (rc, out, e) = s.cli(&["run", "get", &cut_id]);
    assert_eq!(rc, 0, "{e}");
    let c = out
        .lines()
        .find(|l| l.starts_with("C "))
        .unwrap_or_default();
    assert!(c.contains("not run"), "{out}");
    assert!(c.contains("the run failed at task \"B\""), "{out}");
    let sleeper = out
        .lines()
        .find(|l| l.starts_with("S "))
        .unwrap_or_default();
    assert!(sleeper.contains("cancelled"), "{out}");
    assert!(sleeper.contains("the run failed at task \"B\""), "{out}");
    let run = s.run(&cut_id);
    let task = |id: &str| {
        run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{run}"))
    };
    for id in ["C", "S"] {
        assert_eq!(task(id)["status"], "cancelled", "{run}");
        assert_eq!(
            task(id)["cancel_reason"],
            "the run failed at task \"B\"",
            "{run}"
        );
    }
    assert_eq!(task("B")["cancel_reason"], Value::Null, "{run}");

    // `run get`: the run's input, output and error, and the failed task's error.
    let (rc, out, e) = s.cli(&["run", "get", &id]);
    assert_eq!(rc, 0, "{e}");
    let lines: Vec<&str> = out.lines().collect();
    for column in ["INPUT", "OUTPUT", "ERROR"] {
        assert!(lines[0].contains(column), "{out}");
    }
    assert!(
        lines[1].contains(" x ") && lines[1].contains("boom: x"),
        "{out}"
    );
    let task = lines
        .iter()
        .find(|l| l.starts_with("B "))
        .expect("task row");
    assert!(task.contains("failed") && task.contains("boom: x"), "{out}");

    // `run retry`: the new run's bare id (as `wf run`), its workflow and
    // version said aside.
    let (rc, out, e) = s.cli(&["run", "retry", &id]);
    assert_eq!(rc, 0, "{e}");
    let retry = out.trim();
    assert!(
        e.contains(&format!(
            "run {id} retried as {retry}: workflow boom version 1"
        )),
        "{e}"
    );
    let run = s.wait_run(retry, Duration::from_secs(30));
    assert_eq!(run["retry_of"], id.as_str(), "{run}");
    // And the failed run names its retry: the way on from it.
    assert_eq!(s.run(&id)["retried_by"], retry, "{}", s.run(&id));

    // `run list`: the hint to the next page keeps the filters.
    let (rc, out, e) = s.cli(&[
        "run",
        "list",
        "--workflow",
        "boom",
        "--status",
        "failed",
        "--limit",
        "1",
    ]);
    assert_eq!(rc, 0, "{e}");
    assert!(
        e.contains("more: fusion run list --workflow boom --status failed --limit 1 --cursor "),
        "{e}"
    );
    // Why it failed, in its row: triage without a `run get` per run.
    let header = out.lines().next().unwrap_or_default();
    assert!(header.ends_with("ERROR"), "{out}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.contains("boom: x")),
        "{out}"
    );
    // The failed run lists as retried, naming its failing task, and its
    // detail links the retry (the retry links it back).
    let (rc, out, e) = s.cli(&["run", "list", "--workflow", "boom"]);
    assert_eq!(rc, 0, "{e}");
    let row = out
        .lines()
        .find(|l| l.starts_with(id.as_str()))
        .unwrap_or_default();
    assert!(
        row.contains("failed (retried)") && row.contains("task \"B\""),
        "{out}"
    );
    let listed = s.ok("GET", "/v1/runs?workflow=boom&status=failed", None);
    let first = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(first["retried_by"], retry, "{listed}");
    let (rc, out, e) = s.cli(&["run", "get", &id]);
    assert_eq!(rc, 0, "{e}");
    assert!(out.contains(&format!("retried by: {retry}")), "{out}");
    let (rc, out, e) = s.cli(&["run", "get", retry]);
    assert_eq!(rc, 0, "{e}");
    assert!(out.contains(&format!("retry of: {id}")), "{out}");

    // `run events`: a table, one event a line.
    let (rc, out, e) = s.cli(&["run", "events", &id]);
    assert_eq!(rc, 0, "{e}");
    assert!(
        out.starts_with("AT") && out.lines().next().unwrap().contains("EVENT"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.contains("RunFailed")), "{out}");
    // Times as `run list` shows them (to the millisecond), not epoch numbers.
    let first = out.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("20") && first.split_whitespace().next().unwrap().ends_with('Z'),
        "{out}"
    );
    // A range that cannot hold a run is a mistake, not an empty page.
    let (rc, _, e) = s.cli(&["run", "list", "--since", "5m", "--until", "10m"]);
    assert_ne!(rc, 0);
    assert!(e.contains("is after until"), "{e}");

    // A second cancel: 409, in plain words.
    s.workflow(
        "nap",
        "apiVersion: 1\noutput: Nap\ntasks:\n  Nap:\n    run: sleep\n    inputs: 60s\n",
    );
    let nap = s.start_async("nap", "");
    let (st, again) = s.call("POST", &format!("/v1/runs/{nap}/retry"), Some(json!({})));
    assert_eq!(st, 409, "{again}");
    assert_eq!(
        again["error"]["message"],
        format!("run {nap:?} is still running; only failed or cancelled runs can be retried")
    );
    let (rc, out, e) = s.cli(&["run", "cancel", &nap]);
    assert_eq!(rc, 0, "{e}");
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(
        row.len() > 1 && row[1].ends_with('Z'),
        "the STARTED column: {out}"
    );
    let (st, again) = s.call("POST", &format!("/v1/runs/{nap}/cancel"), Some(json!({})));
    assert_eq!(st, 409, "{again}");
    assert_eq!(
        again["error"]["message"],
        format!("run {nap} is already cancelled: there is nothing left to cancel")
    );
    let (rc, _, e) = s.cli(&["run", "cancel", &nap]);
    assert_ne!(rc, 0);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("already cancelled"), "{e}");

    // An input the workflow cannot read is the caller's mistake: 422.
    s.workflow(
        "greet",
        "apiVersion: 1\noutput: G\ntasks:\n  G:\n    run: noop\n    inputs: \"{ 'hi ' + param().name.toUpperCase() }\"\n",
    );
    let (st, body) = s.invoke("greet", "application/json", r#"{"name": "ada"}"#);
    assert_eq!((st, body.as_str()), (200, "hi ADA"));
    let (st, body) = s.invoke("greet", "application/json", "{}");
    assert_eq!(st, 422, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "run_failed", "{body}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the input does not fit the workflow"),
        "{body}"
    );
}

/// A task's output and input are bounded by `--body-limit`, as a function's
/// request is: past it the task fails at once, saying whose limit, and is
/// not tried again (the same would be refused again).
#[test]
fn a_task_output_or_input_past_the_body_limit_fails_without_retries() {
    let s = Server::start_with(&[("FUSION_BODY_LIMIT", "1000")]);
    s.env("binary", "binary", 1);
    s.function(
        "big",
        "binary",
        "big.sh",
        "#!/bin/sh\nhead -c 2000 /dev/zero | tr '\\0' x\n",
        json!({}),
    );
    s.workflow(
        "bulky",
        "apiVersion: 1\noutput: Big\ntasks:\n  Big:\n    run: big\n    retry: {maxAttempts: 3}\n",
    );
    // A run of `workflow` fails on its first attempt: its task's error.
    let failed_at_once = |workflow: &str| -> String {
        let id = s.start_async(workflow, "");
        let run = s.wait_run(&id, Duration::from_secs(30));
        assert_eq!(run["status"], "failed", "{run}");
        let task = &run["tasks"][0];
        assert_eq!(task["attempts"], 1, "{run}");
        task["error"].as_str().unwrap_or_default().to_string()
    };
    let error = failed_at_once("bulky");
    assert!(
        error.contains("larger than 1000 bytes, the most a task's output may be"),
        "{error}"
    );
    // An input past it: Fusion's limit, not an instance's failure.
    s.function("echo", "binary", "echo.sh", "#!/bin/sh\ncat\n", json!({}));
    s.workflow(
        "stuffed",
        "apiVersion: 1\noutput: Echo\ntasks:\n  Echo:\n    run: echo\n    inputs: \"{ 'y'.repeat(3000) }\"\n    retry: {maxAttempts: 3}\n",
    );
    let error = failed_at_once("stuffed");
    assert!(error.contains("the task's input is too large"), "{error}");
    assert!(!error.contains("instance failed"), "{error}");
    // A caller's body past it starts no run: 413, as a function's caller gets.
    let before = s.ok("GET", "/v1/runs?workflow=stuffed", None)["runs"]
        .as_array()
        .map_or(0, Vec::len);
    let resp = s
        .http
        .post(s.router_url("/fission-function/stuffed"))
        .header("content-type", "text/plain")
        .body("z".repeat(2000))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    let after = s.ok("GET", "/v1/runs?workflow=stuffed", None)["runs"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(before, after);
}

/// A step whose function is at its max scale waits for a free instance, as a
/// queue would, past the lease wait that turns a router's caller away (429).
#[test]
fn a_step_waits_for_a_function_at_its_max_scale() {
    let s = Server::start_with(&[("FUSION_LEASE_WAIT_MS", "300")]);
    s.env("binary", "binary", 1);
    let probe = Probe::start();
    let code = format!("#!/bin/sh\n{}\nprintf done\n", probe.curl("/gate/go"));
    s.function(
        "single",
        "binary",
        "single.sh",
        &code,
        json!({"max_scale": 1}),
    );
    s.workflow(
        "one-at-a-time",
        "apiVersion: 1\noutput: Call\ntasks:\n  Call:\n    run: single\n",
    );
    let first = s.start_async("one-at-a-time", "");
    eventually(
        Duration::from_secs(20),
        "the first call holds the instance",
        || {
            s.instances("single")
                .iter()
                .any(|i| i["active_requests"] == 1)
        },
    );
    let second = s.start_async("one-at-a-time", "");
    // Waiting well past the lease wait, still running.
    eventually(
        Duration::from_secs(20),
        "the second step waits a while",
        || {
            let run = s.run(&second);
            let started = run["tasks"][0]["started_at"].as_u64();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            started.is_some_and(|t| now.saturating_sub(t) > 1000)
        },
    );
    assert_eq!(s.run(&second)["status"], "running");
    probe.open("go");
    for id in [first, second] {
        let run = s.wait_run(&id, Duration::from_secs(30));
        assert_eq!(
            (run["status"].as_str(), &run["output"]),
            (Some("succeeded"), &json!("done")),
            "{run}"
        );
    }
}

/// Fission Workflows deployed a workflow as a function of its `workflow`
/// environment, and triggers named it as a function: the same commands store
/// it as a workflow here, and triggers that name it reach it.
#[test]
fn a_workflow_deployed_as_a_function_of_the_workflow_env_is_a_workflow() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("echowhale.wf.yaml");
    let echo = |what: &str| {
        format!(
            "apiVersion: 1\noutput: Echo\ntasks:\n  Echo:\n    run: noop\n    inputs: \"{{ '{what}' + $.Invocation.Inputs.default }}\"\n"
        )
    };
    std::fs::write(&file, echo("")).unwrap();
    let src = file.to_str().unwrap();
    // The environment of Fission Workflows' install is not needed.
    let (code, _, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "workflow",
        "--image",
        "fission/workflow-env",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no environment is needed"), "{err}");
    assert_eq!(s.call("GET", "/v1/environments/workflow", None).0, 404);

    let (code, _, err) = s.cli(&[
        "fn",
        "create",
        "--name",
        "echowhale",
        "--env",
        "workflow",
        "--src",
        src,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("as workflow \"echowhale\""), "{err}");
    assert_eq!(s.ok("GET", "/v1/workflows/echowhale", None)["version"], 1);
    let (code, out, err) = s.cli(&["fn", "test", "--name", "echowhale", "--body", "hi"]);
    assert_eq!((code, out.trim()), (0, "hi"), "{err}");
    // Made in a namespace (Fission Workflows' `-n`, or its older `--fns`):
    // workflows have none, said so, and called as they are.
    let (code, _, err) = s.cli(&[
        "fn", "create", "--name", "nswhale", "--env", "workflow", "--src", src, "--fns", "other",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("workflows have no namespace (-n other is not kept)"),
        "{err}"
    );
    let (code, out, err) = s.cli(&[
        "fn", "test", "--name", "nswhale", "-n", "other", "--body", "yo",
    ]);
    assert_eq!((code, out.trim()), (0, "yo"), "{err}");
    assert!(err.contains("nswhale is a workflow"), "{err}");
    // Said as what it is where a function is asked for.
    for verb in ["get", "logs", "instances"] {
        let (code, _, err) = s.cli(&["fn", verb, "--name", "echowhale"]);
        assert_ne!(code, 0, "{verb}");
        assert!(
            err.contains("is a workflow, not a function"),
            "{verb}: {err}"
        );
    }
    let (code, _, err) = s.cli(&[
        "fn",
        "update",
        "--name",
        "echowhale",
        "--env",
        "python",
        "--src",
        src,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot move to environment"), "{err}");

    // A route, a timer and a queue trigger that name it as a function.
    let route = s.ok(
        "POST",
        "/v1/routes",
        Some(
            json!({"name": "whale", "function": "echowhale", "url": "/whale", "methods": ["POST"]}),
        ),
    );
    assert_eq!(
        (route["workflow"].as_str(), route.get("function")),
        (Some("echowhale"), None),
        "{route}"
    );
    let answer = s
        .http
        .post(s.router_url("/whale"))
        .body("by route")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(answer, "by route");
    let timer = s.ok(
        "POST",
        "/v1/timers",
        Some(json!({"name": "nightly", "function": "echowhale", "cron": "@daily"})),
    );
    assert_eq!(timer["workflow"], "echowhale", "{timer}");
    // A name that is neither yet is taken (Fission's triggers resolve their
    // function at each call): a 404 naming it until a workflow (or function)
    // of that name exists, then that is called.
    let (st, body) = s.call(
        "POST",
        "/v1/routes",
        Some(json!({"name": "nobody", "function": "nobody", "url": "/nobody"})),
    );
    assert_eq!(st, 201, "{body}");
    let r = s.http.post(s.router_url("/nobody")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(r#"function "nobody", which does not exist"#),
        "{body}"
    );
    s.workflow(
        "nobody",
        "output: A\ntasks:\n  A:\n    run: noop\n    inputs: called\n",
    );
    let r = s.http.post(s.router_url("/nobody")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "called");
    assert_eq!(s.call("DELETE", "/v1/routes/nobody", None).0, 204);
    assert_eq!(s.call("DELETE", "/v1/workflows/nobody", None).0, 204);
    // Deleting one that does not exist is a 404, though a timer names it.
    let (st, body) = s.call(
        "POST",
        "/v1/timers",
        Some(json!({"name": "ghostly", "workflow": "ghostflow", "cron": "@daily"})),
    );
    assert_eq!(st, 201, "{body}");
    let (st, body) = s.call("DELETE", "/v1/workflows/ghostflow", None);
    assert_eq!(
        (st, &body["error"]["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    assert_eq!(s.call("DELETE", "/v1/timers/ghostly", None).0, 204);

    // Updated and deleted as Fission Workflows' CLI does it.
    std::fs::write(&file, echo("again: ")).unwrap();
    let (code, _, err) = s.cli(&["fn", "update", "--name", "echowhale", "--src", src]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = s.cli(&["fn", "test", "--name", "echowhale", "--body", "hi"]);
    assert_eq!((code, out.trim()), (0, "again: hi"), "{err}");
    s.ok("DELETE", "/v1/routes/whale", None);
    s.ok("DELETE", "/v1/timers/nightly", None);
    let (code, out, err) = s.cli(&["fn", "delete", "--name", "echowhale"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("workflow echowhale deleted"), "{out}");
    assert_eq!(s.call("GET", "/v1/workflows/echowhale", None).0, 404);
}

#[test]
fn fissions_workflow_run_and_runs_commands_start_and_inspect_runs() {
    let s = Server::start();
    s.workflow(
        "greet",
        "apiVersion: 1\noutput: Hello\ntasks:\n  Hello:\n    run: javascript\n    inputs:\n      expr: \"'hello ' + args.who\"\n      args:\n        who: \"{ param().who }\"\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.json");
    std::fs::write(&input, r#"{"who": "file"}"#).unwrap();
    let mut ids = Vec::new();
    for given in [
        r#"{"who": "inline"}"#.to_string(),
        format!("@{}", input.display()),
    ] {
        let (code, out, err) = s.cli(&["wf", "run", "greet", "--input", &given]);
        assert_eq!(code, 0, "{out}{err}");
        // The bare id, for `ID=$(fusion wf run greet)`.
        let id = out.strip_suffix('\n').unwrap_or_else(|| panic!("{out}"));
        assert!(!id.contains(' '), "{out}");
        assert!(err.contains("run started"), "{err}");
        ids.push(id.to_string());
    }
    // `run wait` blocks until the run ends and exits by how it ended.
    let (code, out, err) = s.cli(&["run", "wait", &ids[0]]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded"), "{out}");
    s.workflow(
        "refuses",
        "output: A\ntasks:\n  A:\n    run: fail\n    inputs: nope\n",
    );
    let refused = s.start_async("refuses", "");
    let (code, _, err) = s.cli(&["run", "wait", &refused]);
    assert_ne!(code, 0);
    assert!(err.contains("failed: nope"), "{err}");
    for query in ["wait=301", "wiat=3"] {
        let (status, body) = s.call("GET", &format!("/v1/runs/{refused}?{query}"), None);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{query}: {body}"
        );
    }
    for (id, who) in ids.iter().zip(["inline", "file"]) {
        let run = s.wait_run(id, Duration::from_secs(30));
        assert_eq!(run["output"], json!(format!("hello {who}")), "{run}");
        // A run named as Fission's `workflow runs` commands name it.
        let (code, out, err) = s.cli(&["wf", "runs", "describe", "--name", id]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("succeeded"), "{out}");
        // Drawn as Fission's `runs graph` draws it, coloured by what it did.
        let (code, out, err) = s.cli(&["wf", "runs", "graph", "--name", id]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with("flowchart TD\n")
                && out.contains("[[\"Hello<br/>javascript<br/>(output)\"]]:::succeeded"),
            "{out}"
        );
        // `--io`: each step's inputs and outputs whole.
        let (code, out, err) = s.cli(&["wf", "runs", "history", "--name", id, "--io"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("\"hello {who}\"")), "{out}");
        let (code, out, err) = s.cli(&["wf", "runs", "history", id]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("RunStarted") && out.contains("RunSucceeded"),
            "{out}"
        );
        // Fission's names, where Fusion's events mean the same thing.
        assert!(
            out.contains("StepScheduled") && out.contains("StepSucceeded"),
            "{out}"
        );
        assert!(!out.contains("TaskDispatched"), "{out}");
    }
    let (code, out, err) = s.cli(&["wf", "runs", "list", "--workflow", "greet"]);
    assert_eq!(code, 0, "{err}");
    assert!(ids.iter().all(|id| out.contains(id.as_str())), "{out}");
    // Paged as `run list` is, with the same flags.
    let (code, out, err) = s.cli(&["wf", "runs", "list", "--workflow", "greet", "--limit", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        err.contains("more: fusion run list --workflow greet --limit 1 --cursor "),
        "{err}"
    );
    // Input that is not JSON is refused before anything starts.
    let (code, _, err) = s.cli(&["wf", "run", "greet", "--input", "{who"]);
    assert_ne!(code, 0);
    assert!(err.contains("--input must be JSON"), "{err}");
}

/// A shell function that logs `start <key>` to the probe's log `log`, waits
/// for the probe's gate `gate`, logs `end <key>`, then answers its body in
/// capitals.
fn spanning(probe: &Probe, log: &str, gate: &str) -> String {
    let key = "$HTTP_X_FUSION_IDEMPOTENCY_KEY";
    format!(
        "#!/bin/sh\n{}\n{}\n{}\ntr a-z A-Z\n",
        probe.curl(&format!("/log/{log}?start+{key}")),
        probe.curl(&format!("/gate/{gate}")),
        probe.curl(&format!("/log/{log}?end+{key}")),
    )
}

/// From a log of `start`/`end` lines: the most calls in flight at once, and
/// how many calls started. A call logs its end before it answers, and the
/// engine starts the next task only once an answer came back, so the log
/// shows at least as much overlap as there was.
fn most_at_once(lines: &[String]) -> (usize, usize) {
    let (mut now, mut most, mut started) = (0usize, 0usize, 0usize);
    for l in lines {
        if l.starts_with("start ") {
            now += 1;
            started += 1;
            most = most.max(now);
        } else if l.starts_with("end ") {
            now = now.saturating_sub(1);
        }
    }
    (most, started)
}

/// The run's tasks of function `run` that are running now.
fn running(s: &Server, id: &str, run: &str) -> usize {
    s.run(id)["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["run"] == run && t["status"] == "running")
        .count()
}

/// Stores a workflow that must be refused; returns the error.
fn refused(s: &Server, yaml: &str) -> Value {
    let r = s
        .api("POST", "/v1/workflows?name=refused")
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    r.json::<Value>().unwrap()["error"].clone()
}

#[test]
fn a_task_that_fails_for_good_runs_its_fallback_and_the_run_goes_on() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    // Fails (the runtime answers 500 on a non-zero exit); the fallback
    // answers what it was given: the failure.
    s.function(
        "down",
        "binary",
        "down.sh",
        "#!/bin/sh\ncat >/dev/null\nexit 1\n",
        json!({}),
    );
    s.function(
        "refund",
        "binary",
        "refund.sh",
        "#!/bin/sh\nprintf 'refunded after '\ncat\n",
        json!({}),
    );
    let yaml = "apiVersion: 1\noutput: Report\ntasks:\n  Charge:\n    run: down\n    retry: {maxAttempts: 2, backoff: {initial: 10ms}}\n    onFailure: Refund\n  Refund:\n    run: refund\n  Report:\n    run: noop\n    inputs: \"{ output('Charge') + ' | ' + task('Charge').Status }\"\n    requires: [Charge]\n";
    s.workflow("charge", yaml);
    let id = s.start_async("charge", "");
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    let out = run["output"].as_str().unwrap();
    assert!(out.starts_with("refunded after {"), "{out}");
    assert!(out.ends_with("} | FAILED"), "{out}");
    let failure: Value =
        serde_json::from_str(&out["refunded after ".len()..out.len() - " | FAILED".len()]).unwrap();
    assert_eq!(failure["task"], "Charge", "{failure}");
    assert_eq!(failure["status"], 500, "{failure}");
    assert!(
        failure["message"].as_str().unwrap().contains("500"),
        "{failure}"
    );
    // The history shows the failed task, with its attempts, and the fallback.
    let task = |name: &str| {
        run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(task("Charge")["status"], "failed", "{run}");
    assert_eq!(task("Charge")["attempts"], 2, "{run}");
    assert_eq!(task("Refund")["status"], "succeeded", "{run}");

    // A fallback that fails too fails the run, naming it.
    s.workflow(
        "doomed",
        &yaml.replace("    run: refund\n", "    run: down\n"),
    );
    let (st, body) = s.invoke("doomed", "text/plain", "");
    assert_eq!(st, 500, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["task"], "Refund", "{err}");

    // A fallback nothing can reach is refused, where it is.
    let e = refused(&s, "apiVersion: 1\noutput: Refund\ntasks:\n  Charge:\n    run: down\n    onFailure: Refund\n  Refund:\n    run: refund\n");
    assert_eq!(e["code"], "invalid_on_failure", "{e}");
    assert!(e["message"].as_str().unwrap().contains("line 2"), "{e}");
    let e = refused(
        &s,
        "apiVersion: 1\noutput: Charge\ntasks:\n  Charge:\n    run: down\n    onFailure: Refnud\n",
    );
    assert_eq!(e["code"], "unknown_on_failure", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("line 6, column 16"),
        "{e}"
    );
}

#[test]
fn concurrency_bounds_the_calls_in_flight_of_a_workflow_and_of_an_inline_one() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    // Room for every call at once: only the workflow limits them.
    let roomy = json!({"max_scale": 8, "requests_per_instance": 16});
    s.function(
        "hold",
        "binary",
        "hold.sh",
        &spanning(&probe, "top", "top"),
        roomy.clone(),
    );
    s.function(
        "hold-inline",
        "binary",
        "hold.sh",
        &spanning(&probe, "inline", "inline"),
        roomy,
    );

    let mut yaml = String::from("apiVersion: 1\noutput: Join\nconcurrency: 2\ntasks:\n");
    for i in 0..5 {
        yaml.push_str(&format!("  T{i}:\n    run: hold\n    inputs: t{i}\n"));
    }
    yaml.push_str("  Join:\n    run: noop\n    inputs: \"{ [output('T0'), output('T1'), output('T2'), output('T3'), output('T4')].join() }\"\n    requires: [T0, T1, T2, T3, T4]\n");
    s.workflow("bounded", &yaml);
    let id = s.start_async("bounded", "");
    eventually(Duration::from_secs(30), "two calls started", || {
        probe.lines("top").len() >= 2
    });
    assert_eq!(running(&s, &id, "hold"), 2, "{}", s.run(&id));
    probe.open("top");
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "T0,T1,T2,T3,T4");
    assert_eq!(
        most_at_once(&probe.lines("top")),
        (2, 5),
        "{:?}",
        probe.lines("top")
    );

    // A task whose output is a workflow (here an `if` branch): six parallel
    // tasks, three at a time.
    let mut yaml = String::from("apiVersion: 1\noutput: Pick\ntasks:\n  Pick:\n    run: if\n    concurrency: 3\n    inputs:\n      if: true\n      then:\n        output: Last\n        tasks:\n");
    for i in 0..6 {
        yaml.push_str(&format!(
            "          T{i}: {{run: hold-inline, inputs: i{i}}}\n"
        ));
    }
    yaml.push_str("          Last: {run: noop, inputs: \"{ output('T5') }\", requires: [T0, T1, T2, T3, T4, T5]}\n");
    s.workflow("inline", &yaml);
    let id = s.start_async("inline", "");
    eventually(Duration::from_secs(30), "three calls started", || {
        probe.lines("inline").len() >= 3
    });
    assert_eq!(running(&s, &id, "hold-inline"), 3, "{}", s.run(&id));
    probe.open("inline");
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "I5");
    assert_eq!(
        most_at_once(&probe.lines("inline")),
        (3, 6),
        "{:?}",
        probe.lines("inline")
    );

    // Where nothing runs at once, `concurrency` is refused, not ignored.
    let e = refused(&s, "apiVersion: 1\noutput: R\ntasks:\n  R:\n    run: repeat\n    concurrency: 4\n    inputs: {times: 3, do: {run: hold}}\n");
    assert_eq!(e["code"], "invalid_concurrency", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("one after another"),
        "{e}"
    );
}

#[test]
fn foreach_runs_a_whole_workflow_per_item_at_most_concurrency_at_once() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    let roomy = json!({"max_scale": 8, "requests_per_instance": 16});
    s.function(
        "shout",
        "binary",
        "shout.sh",
        &spanning(&probe, "items", "items"),
        roomy,
    );
    let yaml = "apiVersion: 1\noutput: Each\ntasks:\n  Each:\n    run: foreach\n    concurrency: 2\n    inputs:\n      foreach: \"{ param().split(' ') }\"\n      do:\n        output: Mark\n        tasks:\n          Shout:\n            run: shout\n            inputs: \"{ param() }\"\n          Mark:\n            run: noop\n            inputs: \"{ output('Shout') + param('_index') }\"\n            requires: [Shout]\n";
    s.workflow("each", yaml);
    let id = s.start_async("each", "a b c d e");
    eventually(Duration::from_secs(30), "two items started", || {
        probe.lines("items").len() >= 2
    });
    assert_eq!(running(&s, &id, "shout"), 2, "{}", s.run(&id));
    probe.open("items");
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!(["A0", "B1", "C2", "D3", "E4"]));
    assert_eq!(
        most_at_once(&probe.lines("items")),
        (2, 5),
        "{:?}",
        probe.lines("items")
    );

    // A failing item fails the foreach (and the run); later items never start.
    s.function(
        "picky",
        "binary",
        "picky.sh",
        &format!(
            "#!/bin/sh\nbody=$(cat)\n{}\n[ \"$body\" != bad ] || {} || exit 1\nprintf ok\n",
            probe.curl("/log/picky?$body"),
            probe.curl("/flag/mended"),
        ),
        json!({}),
    );
    s.workflow(
        "picky-each",
        "apiVersion: 1\noutput: Each\ntasks:\n  Each:\n    run: foreach\n    inputs:\n      foreach: [fine, bad, never]\n      sequential: true\n      do:\n        output: Check\n        tasks:\n          Check: {run: picky, inputs: \"{ param() }\"}\n",
    );
    let (st, body) = s.invoke("picky-each", "text/plain", "");
    assert_eq!(st, 500, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["task"], "Each", "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("do_1"),
        "{err}"
    );
    assert_eq!(probe.lines("picky"), ["fine", "bad"]);
    // Retried once mended: the item that succeeded keeps its result and is
    // not called again; the failed one and those after it run.
    probe.set("mended");
    let failed = err["error"]["run_id"].as_str().unwrap();
    let retry = s.ok("POST", &format!("/v1/runs/{failed}/retry"), Some(json!({})));
    let run = s.wait_run(retry["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(probe.lines("picky"), ["fine", "bad", "bad", "never"]);

    // The inner workflow is checked like a document, positions in the outer one.
    let e = refused(&s, "apiVersion: 1\noutput: Each\ntasks:\n  Each:\n    run: foreach\n    inputs:\n      foreach: [1]\n      do:\n        output: Check\n        tasks:\n          Check:\n            run: nosuch\n");
    assert_eq!(e["code"], "unknown_function", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("line 12, column 18"),
        "{e}"
    );
}

/// A function or a workflow that stored workflows run is deleted as in
/// Fission Workflows (a project's cleanup deletes functions before the
/// workflows that run them), with a warning naming those workflows, whose runs
/// then fail there; a Fission `Workflow`'s Task functions count too. What
/// runs in flight are still to call is not deleted from under them.
#[test]
fn deleting_what_stored_workflows_run_warns_of_them() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    s.function("echo", "binary", "echo.sh", "#!/bin/sh\ncat\n", json!({}));
    s.workflow(
        "inner",
        "output: A\ntasks:\n  A:\n    run: echo\n    inputs: \"{ param() }\"\n",
    );
    s.workflow(
        "outer",
        "output: B\ntasks:\n  B:\n    run: foreach\n    inputs:\n      foreach: [1]\n      do: {run: inner}\n",
    );
    let machine = "apiVersion: fission.io/v1\nkind: Workflow\nmetadata:\n  name: machine\nspec:\n  startAt: Call\n  states:\n    Call:\n      type: Task\n      function: {name: echo}\n      end: true\n";
    s.workflow("machine", machine);
    let warned = |path: &str, users: &[&str]| {
        let (st, body) = s.call("DELETE", path, None);
        assert_eq!(st, 200, "{body}");
        let w = &body["warnings"][0];
        assert_eq!(w["code"], "run_by_workflows", "{body}");
        let message = w["message"].as_str().unwrap_or_default();
        assert!(message.contains("still run by workflows"), "{body}");
        for u in users {
            assert!(message.contains(u), "{u}: {body}");
        }
    };
    assert_eq!(s.invoke("outer", "text/plain", "hi").0, 200);
    // Asked to (`?if_unused=true`, what `spec destroy` asks), the delete is
    // refused as it is for a trigger, naming them; a flag not understood
    // refuses too.
    for (path, users) in [
        (
            "/v1/functions/echo?if_unused=true",
            &["inner", "machine"][..],
        ),
        ("/v1/workflows/inner?if_unused=true", &["outer"][..]),
    ] {
        let (st, body) = s.call("DELETE", path, None);
        assert_eq!(st, 409, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(users.iter().all(|u| message.contains(u)), "{path}: {body}");
    }
    for path in [
        "/v1/functions/echo?if_unused=maybe",
        "/v1/workflows/inner?if_unused=maybe",
    ] {
        let (st, body) = s.call("DELETE", path, None);
        assert_eq!(st, 400, "{path}: {body}");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    // Run inside outer, inner has no runs of its own: its history says where
    // they are.
    let listed = s.ok("GET", "/v1/runs?workflow=inner", None);
    assert_eq!(listed["runs"], json!([]), "{listed}");
    assert_eq!(listed["also_runs_inside"], json!(["outer"]), "{listed}");
    let (code, _, err) = s.cli(&["run", "list", "--workflow", "inner"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: inner also runs as a task of workflow outer: those runs hold its tasks (fusion run list --workflow outer)"),
        "{err}"
    );
    assert!(s
        .ok("GET", "/v1/runs?workflow=outer", None)
        .get("also_runs_inside")
        .is_none());
    // Workflows that run each other do not keep each other: either goes.
    s.workflow("ping", "output: A\ntasks:\n  A:\n    run: noop\n");
    s.workflow("pong", "output: A\ntasks:\n  A:\n    run: ping\n");
    let updated = s
        .api("PUT", "/v1/workflows/ping")
        .header("content-type", "application/yaml")
        .body("output: A\ntasks:\n  A:\n    run: pong\n")
        .send()
        .unwrap();
    assert_eq!(updated.status(), 200);
    // Run, they fail at the depth limit, said in a few words (not once a level).
    let (status, text) = s.invoke("ping", "text/plain", "");
    assert_eq!(status, 500, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("levels deep, past the limit of 32"),
        "{message}"
    );
    assert!(message.len() < 1024, "{} bytes: {message}", message.len());
    for name in ["ping", "pong"] {
        let (st, body) = s.call("DELETE", &format!("/v1/workflows/{name}"), None);
        assert_eq!(st, 204, "{name}: {body}");
    }
    // What a workflow runs goes, said; the workflow's runs then fail there.
    warned("/v1/workflows/inner", &["outer"]);
    let (status, text) = s.invoke("outer", "text/plain", "hi");
    assert!(status >= 400 && text.contains("inner"), "{status} {text}");
    assert_eq!(s.call("DELETE", "/v1/workflows/outer", None).0, 204);
    // The CLI (Fission's `fn delete`) says it on stderr, and succeeds.
    let (code, out, err) = s.cli(&["fn", "delete", "--name", "echo"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: function \"echo\" is still run by workflows (machine)"),
        "{err}"
    );
    assert_eq!(s.call("DELETE", "/v1/workflows/machine", None).0, 204);
    s.function("echo", "binary", "echo.sh", "#!/bin/sh\ncat\n", json!({}));

    // Nor from under a run in flight whose version still calls it, once the
    // workflow changed so that its latest no longer does.
    s.workflow(
        "later",
        "output: Call\ntasks:\n  Wait:\n    run: callback\n  Call:\n    run: echo\n    requires: [Wait]\n",
    );
    let id = s.start_async("later", "");
    eventually(Duration::from_secs(30), "the run waits", || {
        s.run(&id)["tasks"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["status"] == "running"))
    });
    let changed = s
        .api("PUT", "/v1/workflows/later")
        .header("content-type", "application/yaml")
        .body("output: Done\ntasks:\n  Done:\n    run: noop\n")
        .send()
        .unwrap();
    assert_eq!(changed.status(), 200);
    let (st, body) = s.call("DELETE", "/v1/functions/echo", None);
    assert_eq!(st, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("run by runs in flight") && message.contains(&id),
        "{body}"
    );
    // Nor once the workflow itself is deleted: the run still has its own.
    assert_eq!(s.call("DELETE", "/v1/workflows/later", None).0, 204);
    let (st, body) = s.call("DELETE", "/v1/functions/echo", None);
    assert_eq!(st, 409, "{body}");
    // Its graph is drawn from the version it runs, the workflow gone.
    let (code, out, err) = s.cli(&["wf", "runs", "graph", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Call<br/>echo"), "{out}");
    s.ok("POST", &format!("/v1/runs/{id}/cancel"), Some(json!({})));
    assert_eq!(s.call("DELETE", "/v1/functions/echo", None).0, 204);
}

/// Fission Workflows' http function reference: a task whose `run` is a URL
/// calls it as it would a function, with the task's inputs.
#[test]
fn a_task_may_run_a_url_as_a_function() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    s.function(
        "upper",
        "binary",
        "upper.sh",
        "#!/bin/sh\ntr a-z A-Z\n",
        json!({}),
    );
    let url = s.router_url("/fission-function/upper");
    s.workflow(
        "remote",
        &format!("output: A\ntasks:\n  A:\n    run: \"{url}\"\n    inputs: \"{{ param() }}\"\n"),
    );
    assert_eq!(
        s.invoke("remote", "text/plain", "hi there"),
        (200, "HI THERE".to_string())
    );
    // Nothing there: the task fails with the URL's answer.
    let missing = s.router_url("/fission-function/nothing-here");
    s.workflow(
        "gone",
        &format!("output: A\ntasks:\n  A:\n    run: \"{missing}\"\n"),
    );
    let (st, body) = s.invoke("gone", "text/plain", "");
    assert_eq!(st, 404, "{body}");
}

/// `wf validate` checks files offline, as Fission Workflows' `validate`:
/// every problem with its file, line and column, exit 1 when any file is
/// invalid. `--dry-run` asks the server, which looks names up and stores
/// nothing.
#[test]
fn workflows_are_checked_without_being_stored() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let good = write(
        "good.wf.yaml",
        "output: Greet\ntasks:\n  Greet:\n    run: hello\n    inputs:\n      name: x\n",
    );
    let bad = write(
        "bad.wf.yaml",
        "output: Ship\ntasks:\n  Charge:\n    run: noop\n  Ship:\n    run: noop\n    requires: [Chrage]\n",
    );
    let machine = write(
        "order.yaml",
        "apiVersion: fission.io/v1\nkind: Workflow\nmetadata: {name: order}\nspec:\n  startAt: a\n  states:\n    a:\n      type: Task\n      function: {name: f}\n      catch: [{errorType: States.ALL, next: a}]\n      end: true\n",
    );
    // No server: nothing is asked of one.
    let offline = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .env("FUSION_URL", "http://127.0.0.1:9")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = offline(&["wf", "validate", &good]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("{good}: valid"));
    // As Fission's `workflow validate -f`.
    let (code, out, err) = offline(&["wf", "validate", "-f", &good]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), format!("{good}: valid").as_str()),
        "{err}"
    );
    // A function is not sent an input outside `default`: a warning.
    assert!(
        err.contains(&format!(
            "{good}:6:7: warning: task \"Greet\": input \"name\""
        )),
        "{err}"
    );
    let (code, out, err) = offline(&["wf", "validate", &good, &bad, &machine]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out.trim(), format!("{good}: valid"));
    assert!(
        err.contains(&format!(
            "{bad}:7:16: task \"Ship\" requires \"Chrage\", which is not a task (did you mean \"Charge\"?) (unknown_requires)"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{machine}:10:")), "{err}");
    assert!(err.contains("Fission.All"), "{err}");
    assert!(
        err.trim_end()
            .ends_with("error: 2 of 3 workflow files are invalid"),
        "{err}"
    );
    // `-` is the standard input.
    let piped = std::process::Command::new(common::BIN)
        .args(["wf", "validate", "-"])
        .env("FUSION_URL", "http://127.0.0.1:9")
        .stdin(std::fs::File::open(&bad).unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(piped.status.code(), Some(1), "{err}");
    assert!(
        err.contains("<stdin>:7:16: task \"Ship\" requires"),
        "{err}"
    );

    // --dry-run: the server's checks, names looked up, nothing stored.
    let s = Server::start();
    let (code, _, err) = s.cli(&["wf", "create", "greet", "-f", &good, "--dry-run"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("runs \"hello\", which is neither a built-in, a function nor a workflow"),
        "{err}"
    );
    s.env("binary", "binary", 1);
    s.function(
        "hello",
        "binary",
        "hello.sh",
        "#!/bin/sh\necho hi\n",
        json!({}),
    );
    let (code, out, err) = s.cli(&["wf", "create", "greet", "-f", &good, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "workflow greet: valid; not stored (it would be version 1)"
    );
    assert!(err.contains("(unsent_input)"), "{err}");
    assert_eq!(s.call("GET", "/v1/workflows/greet", None).0, 404);
    let (code, _, err) = s.cli(&["wf", "create", "charge", "-f", &bad, "--dry-run"]);
    assert_eq!(code, 1);
    assert!(err.contains("Chrage"), "{err}");
    // The server's errors about a file are said as `validate` says them,
    // FILE:LINE:COLUMN, for `create` and Fission's `fn create --env workflow`.
    assert!(
        err.contains(&format!("{bad}:7:16: task \"Ship\" requires")),
        "{err}"
    );
    let (code, _, err) = s.cli(&[
        "fn", "create", "--name", "charge", "--env", "workflow", "--code", &bad,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{bad}:7:16: task \"Ship\" requires")),
        "{err}"
    );
    // An update's dry run: the next version, the stored one unchanged.
    s.workflow("greet", "output: A\ntasks:\n  A:\n    run: noop\n");
    let (code, out, err) = s.cli(&["wf", "update", "greet", "-f", &good, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("it would be version 2"), "{out}");
    let stored = s.ok("GET", "/v1/workflows/greet", None);
    assert_eq!(stored["version"], 1, "{stored}");
    // A dry create of a name taken is the conflict a create would be.
    let (status, body) = s.call(
        "POST",
        "/v1/workflows?name=greet&dry_run=true",
        Some(json!({"output": "A", "tasks": {"A": {"run": "noop"}}})),
    );
    assert_eq!(status, 409, "{body}");
}

/// A graceful stop lets a workflow's call in flight finish within the grace,
/// so the run does not make it again after the restart; a synchronous caller
/// whose run outlives the grace is told 503 `shutting_down` with the run's
/// id, not that the run failed.
#[test]
fn a_graceful_stop_finishes_calls_in_flight_and_tells_waiting_callers_the_truth() {
    let mut s = Server::start_with(&[("FUSION_SHUTDOWN_GRACE_MS", "3000")]);
    s.env("binary", "binary", 1);
    let probe = Probe::start();
    s.function(
        "gated",
        "binary",
        "gated.sh",
        &probe.recorder("gated", true),
        json!({}),
    );
    s.workflow("slow", "output: A\ntasks:\n  A:\n    run: gated\n");
    s.workflow(
        "nap",
        "output: A\ntasks:\n  A:\n    run: sleep\n    inputs: 60s\n",
    );
    let id = s.start_async("slow", "");
    eventually(Duration::from_secs(20), "the call is in flight", || {
        probe.lines("calls").len() == 1
    });
    common::signal(s.pid(), libc::SIGTERM);
    // The stop has begun once the router takes no new connection; only then
    // may the call in flight finish (no request of a listener holds the stop).
    let router = s.router.trim_start_matches("http://").to_string();
    eventually(Duration::from_secs(20), "the router closes", || {
        std::net::TcpStream::connect(&router).is_err()
    });
    probe.open("gated");
    s.wait_stopped();
    s.launch();
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(probe.lines("calls").len(), 1, "the call was not made again");

    // A caller waiting for a run that outlives the grace.
    let caller = nap_caller(&s);
    s.stop();
    let (status, body) = caller.join().unwrap().expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    let nap = body["error"]["run_id"].as_str().unwrap().to_string();
    s.launch();
    assert_eq!(s.run(&nap)["status"], "running", "the nap goes on");
}

/// A graceful stop lets an `http` task's call in flight (no instance serves
/// it) finish within the grace and keeps its outcome: the run finishes after
/// the restart without making the call again.
#[test]
fn a_graceful_stop_keeps_the_outcome_of_an_http_task_in_flight() {
    let mut s = Server::start_with(&[("FUSION_SHUTDOWN_GRACE_MS", "20000")]);
    let probe = Probe::start();
    s.workflow(
        "hook",
        &format!(
            "output: A\ntasks:\n  A:\n    run: http\n    inputs:\n      url: {}/gate/hook\n",
            probe.base
        ),
    );
    let id = s.start_async("hook", "");
    eventually(Duration::from_secs(20), "the call is in flight", || {
        probe.arrivals("hook") == 1
    });
    common::signal(s.pid(), libc::SIGTERM);
    let router = s.router.trim_start_matches("http://").to_string();
    eventually(Duration::from_secs(20), "the router closes", || {
        std::net::TcpStream::connect(&router).is_err()
    });
    probe.open("hook");
    s.wait_stopped();
    s.launch();
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(probe.arrivals("hook"), 1, "the call was made again");
}

/// A caller waiting for a run that cannot move on within the grace (asleep
/// for an hour) is answered 503 `shutting_down` as the stop begins, not when
/// a ten-minute grace ends; the stop does not wait for it.
#[test]
fn a_caller_of_a_run_asleep_past_the_grace_is_answered_as_the_stop_begins() {
    let mut s = Server::start_with(&[("FUSION_SHUTDOWN_GRACE_MS", "600000")]);
    s.workflow(
        "nap",
        "output: A\ntasks:\n  A:\n    run: sleep\n    inputs: 1h\n",
    );
    // The caller gives up after a minute, far less than the grace: one held
    // for all of it fails here.
    let caller = nap_caller(&s);
    common::signal(s.pid(), libc::SIGTERM);
    let (status, body) = caller.join().unwrap().expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    s.wait_stopped();
    let nap = body["error"]["run_id"].as_str().unwrap().to_string();
    s.launch();
    assert_eq!(s.run(&nap)["status"], "running", "the nap goes on");
}

/// A synchronous call of the workflow `nap` in a thread of its own, returned
/// once its run is running: the answer's status and body, or why none came
/// within a minute.
fn nap_caller(s: &Server) -> std::thread::JoinHandle<Result<(u16, Value), String>> {
    let url = s.router_url("/fission-function/nap");
    let caller = std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let r = http.post(url).send().map_err(|e| e.to_string())?;
        Ok((
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        ))
    });
    eventually(Duration::from_secs(20), "the nap run is running", || {
        s.ok("GET", "/v1/runs?workflow=nap", None)["runs"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    });
    caller
}

/// `run wait` rides out a restart of the server it was talking to: the run
/// goes on after it, and so does the wait.
#[test]
fn run_wait_rides_out_a_restart() {
    let mut s = Server::start();
    s.workflow(
        "nap",
        "output: A\ntasks:\n  A:\n    run: sleep\n    inputs: 3s\n",
    );
    let id = s.start_async("nap", "");
    std::thread::scope(|scope| {
        let (api, token) = (s.api.clone(), s.token.clone());
        let id = id.clone();
        let mut child = std::process::Command::new(common::BIN)
            .args(["run", "wait", &id, "--timeout", "120"])
            .env("FUSION_URL", &api)
            .env("FUSION_TOKEN", &token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It says when it waits: only then is the server stopped under it.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
        assert!(first.contains("is running; waiting"), "{first}");
        let waiter = scope.spawn(move || {
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
            (child.wait_with_output().unwrap(), rest)
        });
        s.kill();
        s.relaunch_in_place();
        let (out, err) = waiter.join().unwrap();
        assert!(out.status.success(), "{err}");
        assert!(err.contains("waiting for it (a restart?)"), "{err}");
    });
    assert_eq!(s.run(&id)["status"], "succeeded");
    // This server counts the run as resumed (the killed one counted its
    // start), and as finished.
    let metrics = s.api("GET", "/metrics").send().unwrap().text().unwrap();
    for line in [
        r#"fusion_runs_resumed_total{workflow="nap"} 1"#,
        r#"fusion_runs_finished_total{workflow="nap",status="succeeded"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    assert!(
        !metrics.contains(r#"fusion_runs_started_total{workflow="nap"}"#),
        "{metrics}"
    );
}
