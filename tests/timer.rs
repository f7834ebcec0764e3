//! Time triggers seen from outside: `@every 1s` triggers calling a recording
//! function and starting a workflow in real time, each firing in the history;
//! a SIGKILL and restart that fires no tick twice; bad input refused with the
//! field named; `kind: TimeTrigger` from a spec folder.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::probe::Probe;
use common::{eventually, Server};
use serde_json::{json, Value};

/// A binary function `name` that logs `<tag> <idempotency key>` to the probe.
fn recorder(s: &Server, probe: &Probe, name: &str, tag: &str) {
    s.function(
        name,
        "binary",
        &format!("{name}.sh"),
        &probe.recorder(tag, false),
        json!({}),
    );
}

fn history(s: &Server, name: &str) -> Vec<Value> {
    match s.ok("GET", &format!("/v1/timers/{name}/history"), None) {
        Value::Array(a) => a,
        other => panic!("history: {other}"),
    }
}

/// The timer keys the function saw (`timer/<trigger>/<tick ms>`).
fn keys(probe: &Probe, tag: &str) -> Vec<String> {
    probe
        .lines("calls")
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{tag} ")).map(str::to_string))
        .collect()
}

fn tick_ms(firing: &Value) -> i64 {
    let t = firing["tick"].as_str().expect("a tick");
    t.parse::<jiff::Timestamp>()
        .expect("RFC 3339")
        .as_millisecond()
}

#[test]
fn an_every_second_trigger_calls_its_function_once_per_tick_and_keeps_each_outcome() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    recorder(&s, &probe, "rec", "rec");
    let (code, out, err) = s.cli(&[
        "timer",
        "create",
        "--name",
        "tick",
        "--cron",
        "@every 1s",
        "--function",
        "rec",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("tick") && out.contains("@every 1s"), "{out}");

    eventually(Duration::from_secs(60), "three firings succeeded", || {
        history(&s, "tick")
            .iter()
            .filter(|f| f["outcome"] == "succeeded")
            .count()
            >= 3
    });
    let h = history(&s, "tick");
    let done: Vec<&Value> = h.iter().filter(|f| f["outcome"] == "succeeded").collect();
    for f in &done {
        assert_eq!(f["status"], 200, "{f}");
        assert!(f["duration_ms"].is_u64(), "{f}");
    }
    // Newest first, on whole seconds, each tick once (a server held up past a
    // tick would fire only the latest one due: ticks may be skipped, never repeated).
    let ticks: Vec<i64> = h.iter().map(tick_ms).collect();
    assert!(
        ticks
            .windows(2)
            .all(|w| w[0] > w[1] && (w[0] - w[1]) % 1000 == 0),
        "{ticks:?}"
    );
    // The function saw each of them once, keyed by trigger and tick.
    let seen = keys(&probe, "rec");
    for f in &done {
        let key = format!("timer/tick/{}", tick_ms(f));
        assert_eq!(
            seen.iter().filter(|k| **k == key).count(),
            1,
            "{key} in {seen:?}"
        );
    }

    let (code, out, _) = s.cli(&["timer", "history", "tick"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("TICK") && out.contains("succeeded"),
        "{out}"
    );
    // The firings are counted on /metrics, at least those seen ended above.
    let text = s.api("GET", "/metrics").send().unwrap().text().unwrap();
    let counted = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"fusion_timer_firings_total{trigger="tick",outcome="succeeded"} "#)
        })
        .and_then(|n| n.parse::<usize>().ok());
    assert!(counted.is_some_and(|n| n >= done.len()), "{text}");
    let (code, out, _) = s.cli(&["timer", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("NEXT") && out.contains("rec"), "{out}");
    let (status, body) = s.call("GET", "/v1/timers/tick/history?limit=0", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_limit")),
        "{body}"
    );

    // A function a trigger still calls cannot be deleted.
    let (status, body) = s.call("DELETE", "/v1/functions/rec", None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("time triggers (tick)"),
        "{body}"
    );
    let (code, _, err) = s.cli(&["timer", "delete", "tick"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.call("GET", "/v1/timers/tick/history", None).0, 404);
    assert_eq!(s.call("DELETE", "/v1/functions/rec", None).0, 204);
}

#[test]
fn a_trigger_on_a_workflow_starts_a_run_and_records_its_id() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    recorder(&s, &probe, "step", "step");
    s.workflow(
        "nightly",
        "apiVersion: 1\noutput: Step\ntasks:\n  Step:\n    run: step\n",
    );
    s.ok(
        "POST",
        "/v1/timers",
        Some(json!({"name": "wf", "cron": "* * * * * *", "workflow": "nightly"})),
    );
    let mut run = String::new();
    eventually(Duration::from_secs(60), "a firing started a run", || {
        if let Some(id) = history(&s, "wf")
            .iter()
            .find_map(|f| f["run_id"].as_str().map(str::to_string))
        {
            run = id;
            true
        } else {
            false
        }
    });
    let r = s.wait_run(&run, Duration::from_secs(60));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["output"], "step");
    // The CLI says a firing started a run, not how the run went.
    let (code, out, err) = s.cli(&["timer", "history", "wf"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("run started") && out.contains(&run), "{out}");
    assert!(out.contains("`fusion run get RUN`"), "{out}");
    // The workflow stays while a trigger starts it.
    let (st, body) = s.call("DELETE", "/v1/workflows/nightly", None);
    assert_eq!(st, 409, "{body}");
    s.ok("DELETE", "/v1/timers/wf", None);
    assert_eq!(s.call("DELETE", "/v1/workflows/nightly", None).0, 204);
}

#[test]
fn a_killed_server_fires_no_tick_twice_after_its_restart() {
    let mut s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    recorder(&s, &probe, "rec", "rec");
    s.ok(
        "POST",
        "/v1/timers",
        Some(json!({"name": "tick", "cron": "@every 1s", "function": "rec"})),
    );
    eventually(Duration::from_secs(60), "two calls before the kill", || {
        keys(&probe, "rec").len() >= 2
    });
    s.kill();
    let before: HashSet<String> = keys(&probe, "rec").into_iter().collect();
    s.launch();
    eventually(
        Duration::from_secs(60),
        "three calls after the restart",
        || keys(&probe, "rec").len() >= before.len() + 3,
    );
    s.ok("DELETE", "/v1/timers/tick", None);

    // Every tick reached the function once, before the kill and after it.
    let all = keys(&probe, "rec");
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a tick was called twice: {all:?}");
}

/// A time trigger may be made before its function, as in Fission (scripts
/// and spec folders make triggers first): the CLI warns, each tick until the
/// function exists is a failed firing that says it is missing, and once it
/// exists the ticks call it.
#[test]
fn a_trigger_made_before_its_function_fails_its_ticks_until_the_function_exists() {
    let s = Server::start();
    let probe = Probe::start();
    s.env("binary", "binary", 1);
    let (code, out, err) = s.cli(&[
        "timer",
        "create",
        "--name",
        "early",
        "--cron",
        "@every 1s",
        "--function",
        "later",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(
            "warning: time trigger \"early\" calls function \"later\", which does not exist (yet)"
        ),
        "{err}"
    );
    eventually(Duration::from_secs(60), "a failed firing", || {
        !history(&s, "early").is_empty() && history(&s, "early")[0]["outcome"] == "failed"
    });
    let failed = &history(&s, "early")[0];
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("function \"later\" does not exist (yet)"),
        "{failed}"
    );
    recorder(&s, &probe, "later", "later");
    eventually(Duration::from_secs(60), "a call once it exists", || {
        !keys(&probe, "later").is_empty()
    });
    // Changed to call another that does not exist: warned of as at creation.
    let (code, out, err) = s.cli(&["timer", "update", "--name", "early", "--function", "gone"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(
            "warning: time trigger \"early\" calls function \"gone\", which does not exist (yet)"
        ),
        "{err}"
    );
    s.ok("DELETE", "/v1/timers/early", None);
}

#[test]
fn bad_input_is_refused_with_the_field_named() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    s.function("f", "binary", "f.sh", "#!/bin/sh\necho hi\n", json!({}));
    let bad = |body: Value| {
        let (status, v) = s.call("POST", "/v1/timers", Some(body));
        (
            status,
            v["error"]["code"].clone(),
            v["error"]["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let (status, code, msg) = bad(json!({"name": "t", "cron": "61 * * * *", "function": "f"}));
    assert_eq!((status, code), (400, json!("invalid")), "{msg}");
    assert!(
        msg.contains("field \"cron\"") && msg.contains("61 * * * *"),
        "{msg}"
    );
    let (status, _, msg) = bad(json!({"name": "t", "cron": "@every 5x", "function": "f"}));
    assert_eq!(status, 400);
    assert!(msg.contains("unknown unit"), "{msg}");
    let (status, _, msg) =
        bad(json!({"name": "t", "cron": "@daily", "timezone": "Mars/Base", "function": "f"}));
    assert_eq!(status, 400);
    assert!(
        msg.contains("field \"timezone\"") && msg.contains("Mars/Base"),
        "{msg}"
    );
    let (status, _, msg) = bad(json!({"name": "t", "cron": "@daily", "function": "f", "crn": "x"}));
    assert_eq!(status, 400);
    assert!(msg.contains("crn"), "{msg}");
    // The CLI: one line, a non-zero exit.
    let (code, out, err) = s.cli(&["timer", "create", "t", "--cron", "* * *", "--function", "f"]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("field \"cron\""), "{err}");
    // In another namespace, `f` is that namespace's, which does not exist
    // yet: taken, as in Fission (its ticks fail until it does).
    let (status, _, msg) =
        bad(json!({"name": "t", "namespace": "shop", "cron": "@daily", "function": "f"}));
    assert_eq!(status, 201, "{msg}");
    assert_eq!(s.call("DELETE", "/v1/timers/t?namespace=shop", None).0, 204);
    // A good one, with Europe/Paris, is stored with Fission's defaults.
    let (code, out, err) = s.cli(&[
        "timer",
        "create",
        "t",
        "--cron",
        "0 9 * * *",
        "--function",
        "f",
        "--timezone",
        "Europe/Paris",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let t = s.ok("GET", "/v1/timers/t", None);
    assert_eq!(
        (t["method"].clone(), t["subpath"].clone()),
        (json!("POST"), json!("/"))
    );
    let next = t["status"]["next"].as_str().unwrap();
    assert!(
        next.ends_with("T08:00:00Z") || next.ends_with("T07:00:00Z"),
        "09:00 in Paris: {next}"
    );
    // Fission's `showschedule`, read without the server.
    let (code, out, err) = s.cli(&[
        "tt",
        "showschedule",
        "--cron",
        "@every 1h30m",
        "--round",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches(" invocation: ").count(), 2, "{out}");
    let (code, out, err) = s.cli(&["timer", "update", "t", "--cron", "@every 1h30m"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.ok("GET", "/v1/timers/t", None)["cron"], "@every 1h30m");
    // An empty zone takes the zone away.
    assert_eq!(
        s.ok("GET", "/v1/timers/t", None)["timezone"],
        "Europe/Paris"
    );
    let (code, out, err) = s.cli(&["timer", "update", "t", "--timezone", ""]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(s.ok("GET", "/v1/timers/t", None).get("timezone").is_none());
}

#[test]
fn a_fission_time_trigger_applies_as_a_running_trigger() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("proj");
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(s.cli_in(&dir, &["spec", "init"]).0, 0);
    std::fs::write(dir.join("specs/job.sh"), "#!/bin/sh\necho done\n").unwrap();
    let spec = |cron: &str| {
        format!(
            "kind: Environment\nname: binary\nruntime: binary\npoolsize: 0\n---\n\
             kind: Function\nname: job\nenv: binary\ncode: job.sh\n---\n\
             apiVersion: fission.io/v1\nkind: TimeTrigger\nmetadata:\n  name: nightly\n\
             spec:\n  cron: \"{cron}\"\n  method: GET\n  subpath: /run\n  functionref:\n    type: name\n    name: job\n"
        )
    };
    std::fs::write(dir.join("specs/all.yaml"), spec("0 3 * * *")).unwrap();
    let (code, out, err) = s.cli_in(&dir, &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created   TimeTrigger nightly"), "{out}");
    let t = s.ok("GET", "/v1/timers/nightly", None);
    assert_eq!(
        (&t["cron"], &t["function"], &t["method"], &t["subpath"]),
        (
            &json!("0 3 * * *"),
            &json!("job"),
            &json!("GET"),
            &json!("/run")
        )
    );
    let (code, out, _) = s.cli_in(&dir, &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("everything up to date"), "{out}");
    std::fs::write(dir.join("specs/all.yaml"), spec("@every 10m")).unwrap();
    let (code, out, _) = s.cli_in(&dir, &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("updated   TimeTrigger nightly"), "{out}");
    assert_eq!(
        s.ok("GET", "/v1/timers/nightly", None)["cron"],
        "@every 10m"
    );
    // A bad cron is found offline, at its line.
    std::fs::write(dir.join("specs/all.yaml"), spec("0 3 * *")).unwrap();
    let (code, _, err) = s.cli_in(&dir, &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("all.yaml:") && err.contains("cron \"0 3 * *\" is not valid"),
        "{err}"
    );
    std::fs::write(dir.join("specs/all.yaml"), spec("@every 10m")).unwrap();
    let (code, out, err) = s.cli_in(&dir, &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.call("GET", "/v1/timers/nightly", None).0, 404);
}
