//! Asynchronous invocation of functions seen from outside: 202 with an id and
//! a Location that answers, retries with backoff (never of a 4xx), dead
//! letters listed and redriven, and no accepted invocation lost to a crash.

mod common;

use std::time::Duration;

use common::{eventually, Server};
use serde_json::{json, Value};

/// Calls function `name` on the router with `X-Async: true`; returns the 202's
/// body after checking its Location.
fn call_async(s: &Server, name: &str, body: &str) -> Value {
    call_async_with(s, name, body, &[])
}

/// As `call_async`, with headers of its own.
fn call_async_with(s: &Server, name: &str, body: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = s
        .http
        .post(s.router_url(&format!("/fission-function/{name}")))
        .header("X-Async", "true")
        .header("content-type", "text/plain");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.body(body.to_string()).send().unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let v: Value = r.json().unwrap();
    let id = v["id"].as_str().unwrap();
    assert_eq!(location, s.api_url(&format!("/v1/invocations/{id}")));
    assert_eq!(v["location"], location.as_str());
    assert_eq!(v["status"], "queued");
    v
}

fn invocation(s: &Server, id: &str) -> Value {
    s.ok("GET", &format!("/v1/invocations/{id}"), None)
}

/// Waits until the invocation has settled (no longer queued or running).
fn settled(s: &Server, id: &str) -> Value {
    let mut last = Value::Null;
    eventually(
        Duration::from_secs(90),
        &format!("invocation {id} settles"),
        || {
            last = invocation(s, id);
            !matches!(last["status"].as_str(), Some("queued" | "running"))
        },
    );
    last
}

fn statuses(inv: &Value) -> Vec<u64> {
    inv["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap_or(0))
        .collect()
}

/// A policy that retries fast.
fn quick(attempts: u32) -> Value {
    json!({"invocation": {"retry": {"maxAttempts": attempts, "backoffBase": "10ms", "backoffCap": "50ms"}}})
}

#[test]
fn an_async_call_is_accepted_with_a_location_that_answers() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "shout",
        "python",
        "shout.py",
        "from flask import request\ndef main():\n    return request.get_data(as_text=True).upper() + ' ' + request.headers.get('Authorization', '')\n",
        json!({}),
    );
    let r = s
        .http
        .post(s.router_url("/fission-function/shout/sub?x=1"))
        .header("X-Async", "true")
        .header("Authorization", "Bearer s3cret")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The Location answers, on the API listener, with the token.
    let got = s.http.get(&location).bearer_auth(&s.token).send().unwrap();
    assert_eq!(got.status().as_u16(), 200);
    let done = settled(&s, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    // The function got the request as sent, but the stored credential is
    // redacted, so the replay carries no secret.
    assert_eq!(done["response"]["status"], 200);
    assert_eq!(done["response"]["body"], "HELLO [redacted]", "{done}");
    assert_eq!(done["request"]["path"], "/sub");
    assert_eq!(done["request"]["query"], "x=1");
    // What was sent can be read back (to triage a dead letter).
    assert_eq!(done["request"]["body"], "hello", "{done}");
    assert!(done["request"].get("body_truncated").is_none(), "{done}");
    let headers = done["request"]["headers"].as_array().unwrap();
    assert!(
        headers.contains(&json!(["authorization", "[redacted]"])),
        "{done}"
    );
    assert_eq!(statuses(&done), [200]);

    // `Prefer: respond-async` on the API's invoke endpoint (the API token
    // does not reach the function), and on a route.
    let r = s
        .api("POST", "/v1/functions/shout/invoke")
        .header("Prefer", "respond-async")
        .body("via api")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(settled(&s, &id)["response"]["body"], "VIA API ");
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "yell", "url": "/yell/{who}", "function": "shout"})),
    );
    let r = s
        .http
        .post(s.router_url("/yell/ada"))
        .header("X-Async", "true")
        .body("route")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = settled(&s, &id);
    assert_eq!(done["response"]["body"], "ROUTE ", "{done}");
    assert_eq!(done["request"]["params"], json!([["who", "ada"]]));

    // `fusion fn test --async`, then `fusion fn invocation get`.
    // It prints the invocation's id.
    let (code, out, err) = s.cli(&["fn", "test", "shout", "--async", "-X", "POST", "-b", "cli"]);
    assert_eq!(code, 0, "{err}");
    let cli_id = out.trim();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(settled(&s, cli_id)["response"]["body"], "CLI ");

    let (code, out, err) = s.cli(&["fn", "invocation", "get", cli_id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded") && out.contains("CLI"), "{out}");
    // Its row: one attempt, the answer's status (not the attempts' JSON).
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[2..5], ["succeeded", "1", "200"], "{out}");
    // The request as it came: its line and body.
    assert!(
        out.contains("\nrequest: POST / (3 bytes of body)\n"),
        "{out}"
    );
    assert!(out.contains("\n  cli\n"), "{out}");

    // The function's invocations, newest first; an unknown one is a 404.
    let list = s.ok("GET", "/v1/invocations?function=shout", None);
    let ids: Vec<&str> = list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{list}");
    assert_eq!(ids[1], id);
    // Paged: two, then the rest from the cursor.
    let first = s.ok("GET", "/v1/invocations?function=shout&limit=2", None);
    let cursor = first["next_cursor"].as_str().unwrap();
    assert_eq!(first["invocations"][1]["id"], id.as_str());
    let rest = s.ok(
        "GET",
        &format!("/v1/invocations?function=shout&limit=2&cursor={cursor}"),
        None,
    );
    assert_eq!(rest["invocations"].as_array().unwrap().len(), 2, "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null);
    // Several statuses at once, as the run history takes them.
    let both = s.ok(
        "GET",
        "/v1/invocations?function=shout&status=succeeded,failed,queued,running",
        None,
    );
    assert_eq!(both["invocations"].as_array().unwrap().len(), 4, "{both}");
    let (st, e) = s.call("DELETE", "/v1/deadletters?function=Bad_Name", None);
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("DNS-1123"),
        "{e}"
    );
    let (st, e) = s.call("GET", "/v1/invocations?status=lost", None);
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("invalid_status"))
    );
    // A malformed or out-of-range query parameter says which, in one code each.
    for (query, code) in [
        ("limit=abc", "invalid_query"),
        ("limit=0", "invalid_limit"),
        ("limit=5000", "invalid_limit"),
    ] {
        for list in ["/v1/invocations", "/v1/deadletters"] {
            let (st, e) = s.call("GET", &format!("{list}?{query}"), None);
            assert_eq!(
                (st, e["error"]["code"].as_str()),
                (400, Some(code)),
                "{list}?{query}: {e}"
            );
        }
    }
    let (st, e) = s.call("GET", "/v1/invocations?limit=abc", None);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("a query parameter is malformed: limit"),
        "{st} {e}"
    );
    let (st, e) = s.call("GET", "/v1/invocations/nope", None);
    assert_eq!((st, e["error"]["code"].as_str()), (404, Some("not_found")));
    // Calling a function that does not exist asynchronously is a 404 at once.
    let r = s
        .http
        .post(s.router_url("/fission-function/absent"))
        .header("X-Async", "true")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // With -o json, the server's answer as a line of JSON.
    let (code, out, err) = s.cli(&["fn", "test", "shout", "--async", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("}\n"), "{out:?}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert!(answer["id"].is_string(), "{answer}");
    settled(&s, answer["id"].as_str().unwrap());
}

#[test]
fn an_async_call_carries_its_callers_address_in_x_forwarded_for() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "whom",
        "python",
        "whom.py",
        "from flask import request\ndef main():\n    return request.headers.get('X-Forwarded-For') or 'none'\n",
        json!({}),
    );
    let id = call_async(&s, "whom", "")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = settled(&s, &id);
    assert_eq!(done["response"]["body"], "127.0.0.1", "{done}");
}

/// The CLI pages a function's invocations as the API does: `-o json` prints
/// the page (with its `next_cursor`), a table says on stderr how to get the
/// next one, and `--cursor` gets it.
#[test]
fn the_cli_pages_invocations_as_the_api_does() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "ok",
        "python",
        "ok.py",
        "def main():\n    return 'ok'\n",
        json!({}),
    );
    let ids: Vec<String> = (0..3)
        .map(|i| {
            call_async(&s, "ok", &format!("{i}"))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in &ids {
        settled(&s, id);
    }
    let (code, out, err) = s.cli(&["fn", "invocations", "ok", "--limit", "2", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["invocations"].as_array().unwrap().len(), 2, "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (code, out, err) = s.cli(&["fn", "invocations", "ok", "--limit", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "a header and two rows: {out}");
    assert_eq!(
        err.trim(),
        format!("more: fusion fn invocations ok --limit 2 --cursor {cursor}")
    );
    let (code, out, err) = s.cli(&[
        "fn",
        "invocations",
        "ok",
        "--limit",
        "2",
        "--cursor",
        &cursor,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let last: Value = serde_json::from_str(&out).unwrap();
    let mut seen: Vec<String> = page["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .chain(last["invocations"].as_array().unwrap())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
    assert!(last["next_cursor"].is_null(), "{last}");
}

#[test]
fn a_flaky_function_succeeds_on_its_third_attempt() {
    let s = Server::start();
    s.env("python", "python", 1);
    // Fails twice per invocation (counted by its idempotency key), then answers.
    s.function(
        "flaky",
        "python",
        "flaky.py",
        "from flask import request\nseen = {}\ndef main():\n    key = request.headers.get('X-Fusion-Idempotency-Key', '')\n    seen[key] = seen.get(key, 0) + 1\n    if seen[key] < 3:\n        return 'not yet', 503\n    h = request.headers\n    return 'made it on attempt %s (Fission: %s of %s, depth %s)' % (h.get('X-Fusion-Attempt', '?'), h.get('X-Fission-Invocation-Attempt', '?'), h.get('X-Fission-Invocation-Id', '?'), h.get('X-Fission-Invocation-Depth', '?'))\n",
        {
            let mut extra = quick(3);
            extra["max_scale"] = json!(1);
            extra
        },
    );
    let id = call_async(&s, "flaky", "")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = settled(&s, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(statuses(&done), [503, 503, 200], "{done}");
    // Fission's delivery headers beside Fusion's (RFC-0024's names).
    assert_eq!(
        done["response"]["body"],
        format!("made it on attempt 3 (Fission: 3 of {id}, depth 0)")
    );
    let numbers: Vec<u64> = done["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
}

#[test]
fn a_client_error_is_not_retried() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "picky",
        "python",
        "picky.py",
        "def main():\n    return 'bad input', 422\n",
        quick(5),
    );
    let id = call_async(&s, "picky", "x")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = settled(&s, &id);
    // As in Fission: dead-lettered at once, with reason http_4xx.
    assert_eq!(done["status"], "dead", "{done}");
    assert_eq!(done["reason"], "http_4xx");
    assert_eq!(statuses(&done), [422]);
    assert_eq!(done["response"]["body"], "bad input");
    let dead = s.ok("GET", "/v1/deadletters", None);
    assert_eq!(dead["invocations"][0]["id"], id.as_str(), "{dead}");

    // Past its max age, an invocation is dead however many attempts are left.
    s.function(
        "down",
        "python",
        "down.py",
        "def main():\n    return 'down', 503\n",
        json!({"invocation": {"retry": {"maxAttempts": 100, "backoffBase": "50ms"}, "maxAge": "300ms"}}),
    );
    let id = call_async(&s, "down", "")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let expired = settled(&s, &id);
    assert_eq!(
        (expired["status"].as_str(), expired["reason"].as_str()),
        (Some("dead"), Some("expired")),
        "{expired}"
    );
    assert!(expired["attempts"].as_array().unwrap().len() < 100);
}

#[test]
fn a_dead_letter_is_listed_and_redriven_once_the_function_is_fixed() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "broken",
        "python",
        "broken.py",
        "def main():\n    return 'down', 500\n",
        quick(2),
    );
    let id = call_async(&s, "broken", "payload")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dead = settled(&s, &id);
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["reason"], "retries_exhausted");
    assert_eq!(statuses(&dead), [500, 500]);

    // Listed as a dead letter, by the API and the CLI.
    let listed = s.ok("GET", "/v1/invocations?status=dead", None);
    assert_eq!(listed["invocations"][0]["id"], id.as_str(), "{listed}");
    // In any case, as the run history's filter.
    let listed = s.ok("GET", "/v1/invocations?status=Failed,DEAD", None);
    assert_eq!(listed["invocations"][0]["id"], id.as_str(), "{listed}");
    let listed = s.ok("GET", "/v1/deadletters", None);
    assert_eq!(listed["invocations"][0]["id"], id.as_str(), "{listed}");
    let (code, out, err) = s.cli(&["fn", "dlq", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&id) && out.contains("retries_exhausted"),
        "{out}"
    );
    // By function.
    let (code, out, err) = s.cli(&["fn", "dlq", "list", "--function", "broken"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    let (code, out, err) = s.cli(&["fn", "dlq", "list", "--function", "other"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&id), "{out}");
    let (code, out, err) = s.cli(&["fn", "invocations", "broken"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("dead"), "{out}");
    // Only dead or failed invocations can be redriven.
    let (code, _, err) = s.cli(&["fn", "dlq", "redrive", "--id", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");

    // Fixed, then redriven: a new cycle of attempts, which succeeds.
    let mut f = s.ok("GET", "/v1/functions/broken", None);
    f["package"] = s.upload("broken.py", b"from flask import request\ndef main():\n    return 'fixed: ' + request.get_data(as_text=True)\n");
    s.ok("PUT", "/v1/functions/broken", Some(f));
    let (code, out, err) = s.cli(&["fn", "dlq", "redrive", "--id", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    let done = settled(&s, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["response"]["body"], "fixed: payload");
    assert_eq!(statuses(&done), [500, 500, 200]);
    assert_eq!(done["attempts"][2]["cycle"], 1);
    assert_eq!(done["attempts"][2]["number"], 1);
    let listed = s.ok("GET", "/v1/deadletters", None);
    assert_eq!(listed["invocations"], json!([]), "{listed}");
    // A succeeded invocation is not redriven.
    let (st, e) = s.call("POST", &format!("/v1/invocations/{id}/redrive"), None);
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("conflict")));
}

#[test]
fn queued_invocations_survive_a_crash() {
    let mut s = Server::start_with(&[("FUSION_ASYNC_CONCURRENCY", "1")]);
    s.env("python", "python", 1);
    s.function(
        "slow",
        "python",
        "slow.py",
        "import time\nfrom flask import request\ndef main():\n    time.sleep(float(request.headers.get('X-Sleep', '1')))\n    return 'done ' + request.get_data(as_text=True)\n",
        // One attempt only: an attempt a stop cuts short must not count.
        quick(1),
    );
    // The first takes 5 s, so that the kill below surely cuts it short
    // (on a busy machine, one of 1 s could end between the look and the kill).
    let ids: Vec<String> = (0..4)
        .map(|n| {
            let sleep: &[(&str, &str)] = if n == 0 { &[("X-Sleep", "5")] } else { &[] };
            call_async_with(&s, "slow", &n.to_string(), sleep)["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // One at a time: the first is running, the others wait their turn.
    eventually(Duration::from_secs(60), "the first attempt runs", || {
        invocation(&s, &ids[0])["status"] == "running"
    });
    assert_eq!(invocation(&s, &ids[3])["status"], "queued");
    s.kill();
    s.launch();
    for (n, id) in ids.iter().enumerate() {
        let done = settled(&s, id);
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["response"]["body"], format!("done {n}"));
    }
    // The attempt the crash cut short is recorded, and not counted.
    let first = invocation(&s, &ids[0]);
    let attempts = first["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["interrupted"], true, "{first}");
    assert_eq!(attempts.last().unwrap()["number"], 1, "{first}");
    let all = s.ok("GET", "/v1/invocations?function=slow", None);
    assert_eq!(all["invocations"].as_array().unwrap().len(), 4);

    // A graceful stop starts no new attempt, and the one it cuts short is
    // tried again at the next start.
    let r = s
        .http
        .post(s.router_url("/fission-function/slow"))
        .header("X-Async", "true")
        .header("X-Sleep", "30")
        .body("late")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(Duration::from_secs(60), "the long attempt runs", || {
        invocation(&s, &id)["status"] == "running"
    });
    s.stop();
    s.launch();
    let cut = invocation(&s, &id);
    assert_eq!(cut["attempts"][0]["interrupted"], true, "{cut}");
    assert_ne!(cut["status"], "dead", "{cut}");
    // The list counts what counts toward the limit: not the interrupted one.
    let listed = s.ok("GET", "/v1/invocations", None);
    let summary = listed["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.as_str())
        .unwrap()
        .clone();
    let (counted, total) = (
        summary["attempts"].as_u64().unwrap(),
        summary["attempts_total"].as_u64().unwrap(),
    );
    assert_eq!(
        total - counted,
        1,
        "the interrupted one is not counted: {summary}"
    );
    // The CLI counts as the list does, in its list and its get alike.
    let attempts_column = |out: &str| {
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let col = header.iter().position(|h| *h == "ATTEMPTS").unwrap();
        let row = lines
            .find(|l| l.starts_with(id.as_str()))
            .unwrap()
            .to_string();
        row.split_whitespace().nth(col).unwrap().to_string()
    };
    let (code, out, err) = s.cli(&["fn", "invocation", "get", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(attempts_column(&out), counted.to_string(), "{out}");
}

#[test]
fn a_fission_specs_invocation_policy_is_applied_and_a_bad_one_refused() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        tmp.path().join("hello.py"),
        "def main():\n    return 'hi'\n",
    )
    .unwrap();
    std::fs::write(
        specs.join("a.yaml"),
        "kind: ArchiveUploadSpec\nname: code\ninclude:\n  - hello.py\n---\napiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: py\nspec:\n  runtime:\n    image: fission/python-env\n  poolsize: 0\n  version: 3\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: p\nspec:\n  environment:\n    name: py\n  deployment:\n    type: url\n    url: archive://code\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: hello\nspec:\n  environment:\n    name: py\n  package:\n    functionName: main\n    packageref:\n      name: p\n  invocation:\n    retry:\n      maxAttempts: 2\n      backoffBase: 10ms\n    maxAge: 1h0m0s\n    onSuccess:\n      function:\n        type: name\n        name: other\n    onFailure:\n      topic:\n        messageQueueType: nats\n        topic: failures\n",
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains(
            "invocation.onFailure: Fusion does not publish results to message-queue topics yet"
        ),
        "{out}{err}"
    );
    let f = s.ok("GET", "/v1/functions/hello", None);
    assert_eq!(
        f["invocation"],
        json!({"retry": {"maxAttempts": 2, "backoffBase": "10ms"}, "maxAge": "1h0m0s",
               "onSuccess": {"function": {"type": "name", "name": "other"}}}),
        "{f}"
    );

    // The API refuses a policy that does not hold together, naming the field;
    // so does the CLI, in one line.
    let mut bad = f.clone();
    bad["invocation"] = json!({"retry": {"maxAttempts": 0}});
    let (st, e) = s.call("PUT", "/v1/functions/hello", Some(bad));
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxAttempts 0"),
        "{e}"
    );
    let (code, _, err) = s.cli(&["fn", "update", "hello", "--async-backoff-base", "soon"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("invocation.retry.backoffBase \"soon\""),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = s.cli(&["fn", "update", "hello", "--async-max-age", "2h"]);
    assert_eq!(code, 0, "{err}");
    let f = s.ok("GET", "/v1/functions/hello", None);
    assert_eq!(f["invocation"]["maxAge"], "2h");
    assert_eq!(f["invocation"]["retry"]["maxAttempts"], 2);
}

#[test]
fn results_go_to_the_destinations_with_their_envelope() {
    let s = Server::start();
    s.env("python", "python", 1);
    // The destination answers with what it was sent.
    s.function(
        "audit",
        "python",
        "audit.py",
        "from flask import request\ndef main():\n    return request.get_data(as_text=True), 200, {'content-type': 'application/json'}\n",
        json!({}),
    );
    let mut ok = json!({"invocation": {"onSuccess": {"function": {"name": "audit"}}}});
    ok["max_scale"] = json!(2);
    s.function(
        "work",
        "python",
        "work.py",
        "from flask import request\ndef main():\n    return {'done': request.get_json()['order']}\n",
        ok,
    );
    let mut failing = quick(2);
    failing["invocation"]["onFailure"] = json!({"function": {"name": "audit"}});
    s.function(
        "fail",
        "python",
        "fail.py",
        "def main():\n    return 'nope', 503\n",
        failing,
    );
    let r = s
        .http
        .post(s.router_url("/fission-function/work"))
        .header("X-Async", "true")
        .header("content-type", "application/json")
        .body(r#"{"order": 7}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = settled(&s, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    let dest = done["destination_invocation"]
        .as_str()
        .expect("a destination");
    let sent = settled(&s, dest);
    assert_eq!(sent["function"], "audit");
    let envelope: Value = serde_json::from_str(sent["response"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["requestContext"]["invocationId"], id.as_str());
    assert_eq!(envelope["requestContext"]["condition"], "Success");
    // Payloads ride in base64, as Fission's destinations decode them.
    let decoded = |v: &Value| {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap();
        String::from_utf8(bytes).unwrap()
    };
    let payload = |v: &Value| serde_json::from_str::<Value>(&decoded(v)).unwrap();
    assert_eq!(payload(&envelope["requestPayload"]), json!({"order": 7}));
    assert_eq!(envelope["responseContext"]["statusCode"], 200);
    assert_eq!(payload(&envelope["responsePayload"]), json!({"done": 7}));

    let id = call_async(&s, "fail", "x")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dead = settled(&s, &id);
    assert_eq!(dead["status"], "dead", "{dead}");
    let sent = settled(&s, dead["destination_invocation"].as_str().unwrap());
    let envelope: Value = serde_json::from_str(sent["response"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(envelope["requestContext"]["attempts"], 2);
    assert_eq!(decoded(&envelope["responsePayload"]), "nope");
    // A destination must be a function's: a topic is refused, saying why.
    let mut f = s.ok("GET", "/v1/functions/fail", None);
    f["invocation"]["onFailure"] = json!({"topic": {"messageQueueType": "nats", "topic": "t"}});
    let (st, e) = s.call("PUT", "/v1/functions/fail", Some(f));
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("onFailure.topic"),
        "{e}"
    );

    // A destination that names no function: the invocation succeeds, and the
    // table says why its destination was not called.
    let mut lost = json!({"invocation": {"onSuccess": {"function": {"name": "nobody"}}}});
    lost["max_scale"] = json!(1);
    s.function(
        "lost",
        "python",
        "lost.py",
        "def main():\n    return 'ok'\n",
        lost,
    );
    let id = call_async(&s, "lost", "x")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = settled(&s, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    let why = done["destination_error"].as_str().unwrap_or_default();
    assert!(why.contains(r#""nobody""#), "{done}");
    let (code, out, err) = s.cli(&["fn", "invocation", "get", &id]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("destination: ") && row.contains("nobody"),
        "{out}"
    );
    // The list says it too, in its rows and in the table.
    let (code, out, err) = s.cli(&["fn", "invocations", "lost"]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("destination: ") && row.contains("nobody"),
        "{out}"
    );
    // A dead letter whose alert did not go out says so after its own error.
    let mut alarm = json!({"invocation": {"onFailure": {"function": {"name": "nobody"}}}});
    alarm["max_scale"] = json!(1);
    s.function(
        "refused",
        "python",
        "refused.py",
        "def main():\n    return 'no', 400\n",
        alarm,
    );
    let id = call_async(&s, "refused", "x")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(settled(&s, &id)["status"], "dead");
    let (code, out, err) = s.cli(&["fn", "dlq", "list", "--function", "refused"]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("; destination: ") && row.contains("nobody"),
        "{out}"
    );
}

/// The headers Fusion adds to each attempt replace any the caller sent under
/// the same names: a function deduplicating on the key sees Fusion's.
#[test]
fn a_callers_own_idempotency_and_attempt_headers_are_replaced() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    s.function(
        "heads",
        "binary",
        "heads.sh",
        "#!/bin/sh\nprintf '%s|%s' \"$HTTP_X_FUSION_IDEMPOTENCY_KEY\" \"$HTTP_X_FUSION_ATTEMPT\"\n",
        json!({}),
    );
    let r = s
        .http
        .post(s.router_url("/fission-function/heads"))
        .header("X-Async", "true")
        .header("X-Fusion-Idempotency-Key", "chosen-by-caller")
        .header("X-Fusion-Attempt", "99")
        .body("")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = settled(&s, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["response"]["body"], format!("{id}|1"), "{done}");
}

/// Past `--async-queue-limit` queued or running calls, a new one is answered
/// 429 with a clear error (nothing stored); once the queue drains, calls are
/// accepted again.
#[test]
fn a_full_queue_answers_429_until_it_drains() {
    let s = Server::start_with(&[("FUSION_ASYNC_QUEUE_LIMIT", "1")]);
    let probe = common::probe::Probe::start();
    s.env("binary", "binary", 1);
    s.function(
        "held",
        "binary",
        "held.sh",
        &probe.recorder("held", true),
        json!({}),
    );
    let first = call_async(&s, "held", "one")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .http
        .post(s.router_url("/fission-function/held"))
        .header("X-Async", "true")
        .body("two")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("queue of asynchronous calls is full"),
        "{body}"
    );
    probe.open("held");
    assert_eq!(settled(&s, &first)["status"], "succeeded");
    let third = call_async(&s, "held", "three")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(settled(&s, &third)["status"], "succeeded");
    let listed = s.ok("GET", "/v1/invocations?function=held", None);
    assert_eq!(
        listed["invocations"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
}

/// A function deleted while calls to it wait in the queue: they become dead
/// letters that say why (and can be redriven once it is back), not 4xx
/// failures it never answered.
#[test]
fn calls_queued_for_a_deleted_function_become_dead_letters() {
    let s = Server::start();
    let probe = common::probe::Probe::start();
    s.env("binary", "binary", 1);
    s.function(
        "held",
        "binary",
        "held.sh",
        &probe.recorder("held", true),
        json!({"max_scale": 1, "requests_per_instance": 1}),
    );
    let first = call_async(&s, "held", "one")["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        Duration::from_secs(30),
        "the first call is in flight",
        || probe.lines("calls").iter().any(|l| l.starts_with("held ")),
    );
    let waiting = call_async(&s, "held", "two")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.call("DELETE", "/v1/functions/held", None).0, 204);
    probe.open("held");
    let dead = settled(&s, &waiting);
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["reason"], "function_deleted", "{dead}");
    assert!(
        dead["error"]
            .as_str()
            .unwrap_or_default()
            .contains("was deleted"),
        "{dead}"
    );
    let letters = s.ok("GET", "/v1/deadletters", None);
    assert!(letters.to_string().contains(&waiting), "{letters}");
    // A redrive while the function is still gone would die again at once.
    let (st, e) = s.call("POST", &format!("/v1/invocations/{waiting}/redrive"), None);
    assert_eq!(st, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("create it again, then redrive"),
        "{e}"
    );
    settled(&s, &first);
    // Fission's `dlq purge` discards them.
    let (code, out, err) = s.cli(&["fn", "dlq", "purge", "--function", "other"]);
    assert_eq!((code, out.trim()), (0, "purged 0 dead letter(s)"), "{err}");
    // Another namespace's purge leaves this one's dead letters.
    let other = s.ok("DELETE", "/v1/deadletters?namespace=elsewhere", None);
    assert_eq!(other["purged"], 0, "{other}");
    let (code, out, err) = s.cli(&["fn", "dlq", "purge"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("purged ") && !out.starts_with("purged 0"),
        "{out}"
    );
    let letters = s.ok("GET", "/v1/deadletters", None);
    assert_eq!(
        letters["invocations"].as_array().map(Vec::len),
        Some(0),
        "{letters}"
    );
    let (st, _) = s.call("GET", &format!("/v1/invocations/{waiting}"), None);
    assert_eq!(st, 404);
}

/// Fission's ways to ask for an asynchronous call work unchanged: its
/// `X-Fission-Invoke-Mode: async` header, and a trigger in async mode for
/// callers that cannot set a header (`--invocation-mode async`); the 202 names
/// the invocation in `X-Fission-Invocation-Id`. Destinations are set from the
/// CLI as Fission's are.
#[test]
fn fissions_async_header_and_async_triggers_queue_the_call() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "book",
        "python",
        "book.py",
        "from flask import request\ndef main():\n    return 'booked ' + request.get_data(as_text=True)\n",
        json!({}),
    );
    let r = s
        .http
        .post(s.router_url("/fission-function/book"))
        .header("X-Fission-Invoke-Mode", "async")
        .body("one")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.headers()["x-fission-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(settled(&s, &id)["response"]["body"], "booked one");

    let (code, _, err) = s.cli(&[
        "route",
        "create",
        "--name",
        "webhook",
        "--url",
        "/webhook",
        "--method",
        "POST",
        "--function",
        "book",
        "--invocation-mode",
        "async",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        s.ok("GET", "/v1/routes/webhook", None)["invocation_mode"],
        "async"
    );
    // A sender that sets nothing (and even one that asks to wait) is answered at once.
    let r = s
        .http
        .post(s.router_url("/webhook"))
        .header("X-Async", "false")
        .body("two")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.headers()["x-fission-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(settled(&s, &id)["response"]["body"], "booked two");
    let (st, body) = s.call(
        "POST",
        "/v1/routes",
        Some(json!({"name": "bad", "url": "/bad", "function": "book", "invocation_mode": "later"})),
    );
    assert_eq!(st, 400, "{body}");

    // A route in sync-only mode answers every call, whatever its headers ask: a
    // public caller cannot queue (store, retry) calls through it, and the
    // function gets the headers as sent, its own X-Async included.
    let (code, _, err) = s.cli(&[
        "route",
        "create",
        "--name",
        "form",
        "--url",
        "/form",
        "--method",
        "POST",
        "--function",
        "book",
        "--invocation-mode",
        "sync-only",
    ]);
    assert_eq!(code, 0, "{err}");
    for (header, value) in [
        ("X-Async", "true"),
        ("Prefer", "respond-async"),
        ("X-Async", "nope"),
    ] {
        let r = s
            .http
            .post(s.router_url("/form"))
            .header(header, value)
            .body("three")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{header}: {value}");
        assert_eq!(r.text().unwrap(), "booked three");
    }
    // And back to leaving it to the request (`sync`, as Fission's).
    let (code, _, err) = s.cli(&["route", "update", "form", "--invocation-mode", "sync"]);
    assert_eq!(code, 0, "{err}");
    let r = s
        .http
        .post(s.router_url("/form"))
        .header("X-Async", "true")
        .body("four")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);

    // Destinations from the CLI, as Fission's flags. One that names no
    // function is taken (it may be made next), and said.
    let (code, _, err) = s.cli(&["fn", "update", "book", "--async-on-success", "audit"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            r#"warning: the onSuccess destination "audit" is not a function in namespace default"#
        ),
        "{err}"
    );
    s.function(
        "audit",
        "python",
        "audit.py",
        "def main():\n    return 'ok'\n",
        json!({}),
    );
    let (code, _, err) = s.cli(&[
        "fn",
        "update",
        "book",
        "--async-on-success",
        "audit",
        "--async-on-failure",
        "audit",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    let f = s.ok("GET", "/v1/functions/book", None);
    assert_eq!(
        f["invocation"]["onSuccess"]["function"]["name"], "audit",
        "{f}"
    );
    assert_eq!(
        f["invocation"]["onFailure"]["function"]["name"], "audit",
        "{f}"
    );
    // An empty name removes a destination.
    let (code, _, err) = s.cli(&["fn", "update", "book", "--async-on-success", ""]);
    assert_eq!(code, 0, "{err}");
    let f = s.ok("GET", "/v1/functions/book", None);
    assert!(f["invocation"].get("onSuccess").is_none(), "{f}");
    assert_eq!(
        f["invocation"]["onFailure"]["function"]["name"], "audit",
        "{f}"
    );
}

/// Fission's enqueue collapse (RFC-0024): a call carrying the
/// `X-Fission-Dedup-Key` of an invocation the function holds is that one
/// (202 with its id), not stored or run again; another function's call with
/// the same key is its own.
#[test]
fn a_dedup_key_collapses_a_repeated_async_call() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "count",
        "python",
        "count.py",
        "def main():\n    return 'counted'\n",
        quick(3),
    );
    s.function(
        "other",
        "python",
        "other.py",
        "def main():\n    return 'o'\n",
        quick(3),
    );
    let key = [("X-Fission-Dedup-Key", "order-7")];
    let first = call_async_with(&s, "count", "first", &key);
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(settled(&s, &id)["status"], "succeeded");
    let r = s
        .http
        .post(s.router_url("/fission-function/count"))
        .header("X-Async", "true")
        .header("X-Fission-Dedup-Key", "order-7")
        .body("second")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.headers()["x-fission-invocation-id"], id.as_str());
    let again: Value = r.json().unwrap();
    assert_eq!(
        (again["id"].as_str(), again["status"].as_str()),
        (Some(id.as_str()), Some("succeeded")),
        "{again}"
    );
    let listed = s.ok("GET", "/v1/invocations?function=count", None);
    assert_eq!(
        listed["invocations"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let other = call_async_with(&s, "other", "x", &key);
    assert_ne!(other["id"].as_str(), Some(id.as_str()));
    // Without a key, each call is its own.
    let plain = call_async(&s, "count", "third");
    assert_ne!(plain["id"].as_str(), Some(id.as_str()));
}
