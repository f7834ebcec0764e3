//! The FaaS half, seen from outside: the real `fusion server`, driven over HTTP
//! and through the CLI.

mod common;

use std::io::Write;
use std::time::Duration;

use common::probe::Probe;
use common::{alive, eventually, Server};
use serde_json::{json, Value};

const PY_HELLO: &str = "def main():\n    return 'hello from python\\n'\n";
const NODE_HELLO: &str =
    "module.exports = async (context) => ({ status: 200, body: 'hello from node ' + context.request.method + '\\n' });\n";
const SH_ECHO: &str = "#!/bin/sh\nprintf 'method=%s body=' \"$REQUEST_METHOD\"\ncat\n";

#[test]
fn each_runtime_answers_through_the_router() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.env("nodejs", "nodejs", 1);
    s.env("binary", "binary", 1);
    s.function("hello-py", "python", "hello.py", PY_HELLO, json!({}));
    s.function("hello-js", "nodejs", "hello.js", NODE_HELLO, json!({}));
    s.function("echo-sh", "binary", "echo.sh", SH_ECHO, json!({}));

    assert_eq!(
        s.get("/fission-function/hello-py").text().unwrap(),
        "hello from python\n"
    );
    // A doubled slash changes nothing, as in a route's path.
    for doubled in [
        "//fission-function/hello-py",
        "/fission-function//hello-py",
        "/fission-function//default//hello-py",
    ] {
        let r = s.get(doubled);
        assert_eq!(r.status(), 200, "{doubled}");
        assert_eq!(r.text().unwrap(), "hello from python\n", "{doubled}");
    }
    // Typed as Fission's runtimes type them: a string body as Express sends
    // it, a program's text output as Go's net/http sniffs it.
    let r = s.get("/fission-function/hello-js");
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().unwrap(), "hello from node GET\n");
    let r = s
        .http
        .post(s.router_url("/fission-function/echo-sh"))
        .body("payload")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().unwrap(), "method=POST body=payload");
}

#[test]
fn a_function_sees_its_callers_address_in_x_forwarded_for() {
    let s = Server::start();
    s.env("python", "python", 1);
    let code = "from flask import request\ndef main():\n    return request.headers.get('X-Forwarded-For') or 'none'\n";
    s.function("whom", "python", "whom.py", code, json!({}));
    // The instance sees only the router's connection; the router says who called.
    assert_eq!(s.get("/fission-function/whom").text().unwrap(), "127.0.0.1");
    // After what proxies before it said, in one field.
    let r = s
        .http
        .get(s.router_url("/fission-function/whom"))
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-Forwarded-For", "198.51.100.2")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "203.0.113.7, 198.51.100.2, 127.0.0.1");
}

/// Fission's python image has Flask: its functions use all of it without a
/// requirements.txt. What the shim lacks comes from this machine's Flask
/// (`.ci/run` installs python3-flask).
#[test]
fn python_functions_that_need_more_of_flask_get_the_machines_flask() {
    let s = Server::start();
    s.env("python", "python", 1);
    let code = "from flask import render_template_string, request\n\ndef main():\n    return render_template_string('<b>{{ who }}</b>', who=request.args.get('who', 'nobody'))\n";
    s.function("page", "python", "page.py", code, json!({}));
    let r = s.get("/fission-function/page?who=ada");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().unwrap(), "<b>ada</b>");
    // A module of Flask the shim has not, too.
    let code =
        "from flask.views import MethodView\n\ndef main():\n    return MethodView.__name__\n";
    s.function("views", "python", "views.py", code, json!({}));
    assert_eq!(
        s.get("/fission-function/views").text().unwrap(),
        "MethodView"
    );
}

#[test]
fn python_functions_written_for_fission_read_the_request_through_flask() {
    let s = Server::start();
    s.env("python", "python", 1);
    let code = r#"
from flask import request

def main():
    data = request.get_json()
    return {
        "name": data["name"],
        "q": request.args.get("q"),
        "id": request.headers.get("X-Fission-Params-id"),
        "method": request.method,
    }, 201, {"X-Custom": "yes"}
"#;
    s.function("greet", "python", "greet.py", code, json!({}));
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "greet", "url": "/greet/{id}", "methods": ["POST"], "function": "greet"})),
    );
    let r = s
        .http
        .post(s.router_url("/greet/42?q=search"))
        .json(&json!({"name": "ada"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-custom"], "yes");
    let body: Value = r.json().unwrap();
    assert_eq!(
        body,
        json!({"name": "ada", "q": "search", "id": "42", "method": "POST"})
    );

    // The route answers only POST: another method gets a JSON 405 naming
    // it, as Fission's router answers; a path no route takes a JSON 404.
    let r = s.get("/greet/42");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let r = s.get("/nothing/here");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "route_not_found");
    // A route that differs only in its parameter's name would never be reached.
    let (st, body) = s.call(
        "POST",
        "/v1/routes",
        Some(json!({"name": "greet2", "url": "/greet/{name}", "methods": ["POST"], "function": "greet"})),
    );
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"greet\""),
        "{body}"
    );
    assert_eq!(s.get("/fission-function/missing").status(), 404);

    // A function a route targets is not deleted until the route is; every
    // kind of user is named in one answer.
    s.ok(
        "POST",
        "/v1/timers",
        Some(json!({"name": "nightly", "function": "greet", "cron": "@daily"})),
    );
    let (st, body) = s.call("DELETE", "/v1/functions/greet", None);
    assert_eq!(st, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the target of routes (greet) and time triggers (nightly)"),
        "{body}"
    );
    assert_eq!(s.call("DELETE", "/v1/routes/greet", None).0, 204);
    assert_eq!(s.call("DELETE", "/v1/timers/nightly", None).0, 204);
    assert_eq!(s.call("DELETE", "/v1/functions/greet", None).0, 204);
}

#[test]
fn prefix_routes_and_zip_archives_with_an_entrypoint() {
    let s = Server::start();
    s.env("python", "python", 0);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("app/handler.py", opts).unwrap();
    zip.write_all(b"from app.util import word\ndef main():\n    return word()\n")
        .unwrap();
    zip.start_file("app/__init__.py", opts).unwrap();
    zip.start_file("app/util.py", opts).unwrap();
    zip.write_all(b"def word():\n    return 'from the archive'\n")
        .unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    let package = s.upload("code.zip", &bytes);
    assert_eq!(package["kind"], "archive");
    s.ok(
        "POST",
        "/v1/functions",
        Some(json!({"name": "zipped", "env": "python", "package": package, "entrypoint": "app.handler.main"})),
    );
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "api", "prefix": "/api", "function": "zipped"})),
    );
    assert_eq!(
        s.get("/api/anything/below").text().unwrap(),
        "from the archive"
    );
}

/// A package's module named as one of the standard library's (`html.py`)
/// does not hide it from the runtime and its Flask, as in Fission's runtime
/// (which appends the package to the path); its other modules import as ever.
#[test]
fn a_packages_module_named_as_the_standard_librarys_does_not_hide_it() {
    let s = Server::start();
    s.env("python", "python", 0);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("main.py", opts).unwrap();
    zip.write_all(b"import html, helper\nfrom flask import abort\ndef main():\n    if html.escape('<') != '&lt;':\n        abort(500)\n    return helper.word()\n")
        .unwrap();
    zip.start_file("html.py", opts).unwrap();
    zip.write_all(b"raise ImportError('the package shadowed the standard library')\n")
        .unwrap();
    zip.start_file("helper.py", opts).unwrap();
    zip.write_all(b"def word():\n    return 'escaped'\n")
        .unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    let package = s.upload("code.zip", &bytes);
    s.ok(
        "POST",
        "/v1/functions",
        Some(json!({"name": "shadow", "env": "python", "package": package, "entrypoint": "main.main"})),
    );
    let r = s.get("/fission-function/shadow");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "escaped");
}

#[test]
fn past_concurrency_a_request_waits_then_gets_429() {
    let s = Server::start_with(&[("FUSION_LEASE_WAIT_MS", "300")]);
    s.env("binary", "binary", 1);
    // The function holds its instance until the test lets it go.
    let probe = Probe::start();
    let code = format!("#!/bin/sh\n{}\necho done\n", probe.curl("/gate/go"));
    s.function(
        "slow",
        "binary",
        "slow.sh",
        &code,
        json!({"concurrency": 1}),
    );
    let url = s.router_url("/fission-function/slow");
    let first = std::thread::spawn({
        let http = s.http.clone();
        let url = url.clone();
        move || http.get(url).send().unwrap().status().as_u16()
    });
    eventually(
        Duration::from_secs(20),
        "the first request holds the instance",
        || {
            s.instances("slow")
                .iter()
                .any(|i| i["active_requests"] == 1)
        },
    );
    let r = s.get("/fission-function/slow");
    assert_eq!(r.status(), 429);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    probe.open("go");
    assert_eq!(first.join().unwrap(), 200);
    // Capacity is back once the first request is done.
    assert_eq!(s.get("/fission-function/slow").status(), 200);
}

/// A caller that hangs up does not free the instance while the function is
/// still at work on its request: past the function's concurrency the next
/// caller is refused, not run beside it, until the function has answered.
#[test]
fn a_caller_that_hangs_up_keeps_its_instance_busy_until_the_function_answers() {
    let s = Server::start_with(&[("FUSION_LEASE_WAIT_MS", "300")]);
    s.env("binary", "binary", 1);
    let probe = Probe::start();
    let code = format!("#!/bin/sh\n{}\necho done\n", probe.curl("/gate/go"));
    s.function(
        "held",
        "binary",
        "held.sh",
        &code,
        json!({"concurrency": 1}),
    );
    let abandoned = || {
        let text = s.api("GET", "/metrics").send().unwrap().text().unwrap();
        text.lines()
            .any(|l| l == "fusion_function_requests_abandoned_total{function=\"held\"} 1")
    };
    let router = s.router_url("").trim_start_matches("http://").to_string();
    let mut caller = std::net::TcpStream::connect(&router).unwrap();
    caller
        .write_all(b"GET /fission-function/held HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the function has the request",
        || {
            s.instances("held")
                .iter()
                .any(|i| i["active_requests"] == 1)
        },
    );
    drop(caller);
    eventually(
        Duration::from_secs(20),
        "the server saw the caller go",
        abandoned,
    );
    // The function still holds its instance: one request at a time.
    assert_eq!(s.instances("held")[0]["active_requests"], 1);
    let r = s.get("/fission-function/held");
    assert_eq!(r.status(), 429, "{:?}", r.text());
    // Once it answers (to nobody), the instance takes the next request.
    probe.open("go");
    eventually(Duration::from_secs(20), "the instance is free", || {
        s.instances("held")
            .iter()
            .all(|i| i["active_requests"] == 0)
    });
    let r = s.get("/fission-function/held");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "done\n");
    // Every request is counted once: the one hung up on as 499 (nginx's
    // "client closed request"), the refused one, the answered one.
    let text = s.api("GET", "/metrics").send().unwrap().text().unwrap();
    for (code, n) in [(499, 1), (429, 1), (200, 1)] {
        let line =
            format!("fusion_function_requests_total{{function=\"held\",code=\"{code}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

#[test]
fn a_burst_of_first_requests_starts_one_instance_when_one_takes_them_all() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "hello",
        "python",
        "hello.py",
        "def main():\n    return 'hi'\n",
        json!({"requests_per_instance": 8, "max_scale": 8}),
    );
    let url = s.router_url("/fission-function/hello");
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (s.http.clone(), url.clone());
            std::thread::spawn(move || http.get(url).send().unwrap().text().unwrap())
        })
        .collect();
    for answer in burst {
        assert_eq!(answer.join().unwrap(), "hi");
    }
    let instances = s.instances("hello");
    assert_eq!(instances.len(), 1, "{instances:?}");
}

#[test]
fn a_request_past_the_function_timeout_gets_504() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    s.function(
        "sleepy",
        "binary",
        "sleepy.sh",
        "#!/bin/sh\nsleep 30\n",
        json!({"timeout_secs": 1}),
    );
    let r = s.get("/fission-function/sleepy");
    assert_eq!(r.status(), 504);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "function_timeout");
}

/// The function's timeout bounds the whole exchange, the answer's body
/// included: a function that sends its head and never ends its answer is cut
/// off at the timeout, its instance stopped, and the function answers again.
#[test]
fn an_answer_still_streaming_at_the_function_timeout_is_cut_off() {
    let s = Server::start();
    s.env("nodejs", "nodejs", 1);
    // `hang`: the head, then nothing; `stream`: writes without end; `flood`:
    // writes as fast as it can (for a caller that stops reading).
    let code = "module.exports = async (ctx) => {\n  const m = ctx.request.query.m;\n  if (m === 'ok') { return { status: 200, body: 'fine' }; }\n  const res = ctx.response;\n  res.writeHead(200, {'Content-Type': 'text/plain'});\n  res.write('started');\n  if (m === 'stream') { setInterval(() => res.write('.'), 5); }\n  if (m === 'flood') { const chunk = 'x'.repeat(65536); const more = () => { while (res.write(chunk)) {} res.once('drain', more); }; more(); }\n};\n";
    s.function(
        "hangs",
        "nodejs",
        "hangs.js",
        code,
        json!({"timeout_secs": 1, "max_scale": 1}),
    );
    let stops = |s: &Server| {
        s.api("GET", "/v1/functions/hangs/logs")
            .send()
            .unwrap()
            .text()
            .unwrap()
            .matches(
                "an answer passed the function's timeout of 1 s while streaming: stopping instance",
            )
            .count()
    };
    for (i, mode) in ["hang", "stream"].into_iter().enumerate() {
        let r = s.get(&format!("/fission-function/hangs?m={mode}"));
        assert_eq!(r.status(), 200);
        // The head came; the body ends in an error at the timeout, not never.
        assert!(r.text().is_err(), "{mode}: the answer should be cut short");
        assert_eq!(stops(&s), i + 1, "{mode}");
        // Its one instance's capacity is free again: the next call answers.
        let r = s.get("/fission-function/hangs?m=ok");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), "fine");
    }
    // A caller that stops reading (its connection open) does not hold the
    // instance past the timeout either.
    let address = s.router.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&address).unwrap();
    stalled
        .write_all(b"GET /fission-function/hangs?m=flood HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    eventually(Duration::from_secs(30), "the flood is cut off", || {
        stops(&s) == 3
    });
    let r = s.get("/fission-function/hangs?m=ok");
    assert_eq!(r.text().unwrap(), "fine");
    drop(stalled);
}

#[test]
fn a_killed_instance_fails_its_request_with_502_and_is_replaced() {
    let s = Server::start();
    s.env("python", "python", 1);
    let code = "import time\nfrom flask import request\ndef main():\n    if request.args.get('wait'):\n        time.sleep(30)\n    return 'alive'\n";
    s.function("fragile", "python", "fragile.py", code, json!({}));
    assert_eq!(s.get("/fission-function/fragile").text().unwrap(), "alive");
    let pid = s.instances("fragile")[0]["pid"].as_u64().unwrap() as u32;

    let pending = std::thread::spawn({
        let http = s.http.clone();
        let url = s.router_url("/fission-function/fragile?wait=1");
        move || {
            let r = http.get(url).send().unwrap();
            (r.status().as_u16(), r.json::<Value>().unwrap())
        }
    });
    eventually(
        Duration::from_secs(20),
        "the slow request is in flight",
        || {
            s.instances("fragile")
                .iter()
                .any(|i| i["active_requests"] == 1)
        },
    );
    common::signal(pid, libc::SIGKILL);
    let (status, body) = pending.join().unwrap();
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "instance_failed");
    eventually(
        Duration::from_secs(20),
        "the dead instance is removed",
        || s.instances("fragile").iter().all(|i| i["pid"] != pid),
    );
    assert_eq!(s.get("/fission-function/fragile").text().unwrap(), "alive");
}

#[test]
fn idle_instances_are_stopped_after_the_idle_timeout() {
    let s = Server::start();
    s.env("python", "python", 0);
    s.function(
        "brief",
        "python",
        "brief.py",
        PY_HELLO,
        json!({"idle_timeout_secs": 1}),
    );
    assert_eq!(s.get("/fission-function/brief").status(), 200);
    let pid = s.instances("brief")[0]["pid"].as_u64().unwrap() as u32;
    eventually(
        Duration::from_secs(20),
        "the idle instance is reaped",
        || s.instances("brief").is_empty() && !alive(pid),
    );
    // The next request specializes a new instance.
    assert_eq!(
        s.get("/fission-function/brief").text().unwrap(),
        "hello from python\n"
    );
}

#[test]
fn a_code_update_changes_the_answer_and_retires_old_instances() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "greeter",
        "python",
        "g.py",
        "def main():\n    return 'v1'\n",
        json!({}),
    );
    assert_eq!(s.get("/fission-function/greeter").text().unwrap(), "v1");
    let old_pid = s.instances("greeter")[0]["pid"].as_u64().unwrap() as u32;
    let (code, out, err) = {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.py");
        std::fs::write(&file, "def main():\n    return 'v2'\n").unwrap();
        s.cli(&[
            "fn",
            "update",
            "--name",
            "greeter",
            "--code",
            file.to_str().unwrap(),
        ])
    };
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.get("/fission-function/greeter").text().unwrap(), "v2");
    eventually(
        Duration::from_secs(20),
        "the old instance is retired",
        || !alive(old_pid),
    );
}

#[test]
fn resources_survive_a_restart() {
    let mut s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "keeper",
        "python",
        "k.py",
        PY_HELLO,
        json!({"concurrency": 3}),
    );
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "keep", "url": "/keep", "function": "keeper"})),
    );
    eventually(Duration::from_secs(20), "the pool is full", || {
        !s.instance_pids().is_empty()
    });
    let pids = s.instance_pids();
    s.stop();
    for pid in &pids {
        assert!(!alive(*pid), "instance {pid} outlived the server");
    }
    s.launch();
    let f = s.ok("GET", "/v1/functions/keeper", None);
    assert_eq!(f["max_scale"], 3, "concurrency is read as max_scale");
    assert_eq!(s.ok("GET", "/v1/routes", None).as_array().unwrap().len(), 1);
    assert_eq!(s.get("/keep").text().unwrap(), "hello from python\n");
}

#[test]
fn instances_die_with_a_killed_server() {
    let mut s = Server::start();
    s.env("python", "python", 2);
    s.env("nodejs", "nodejs", 1);
    s.function("hello-py", "python", "hello.py", PY_HELLO, json!({}));
    assert_eq!(s.get("/fission-function/hello-py").status(), 200);
    eventually(Duration::from_secs(20), "the pools are full", || {
        s.instance_pids().len() >= 4
    });
    let pids = s.instance_pids();
    s.kill();
    eventually(
        Duration::from_secs(10),
        "every instance exits with the server",
        || pids.iter().all(|p| !alive(*p)),
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let s = Server::start_with(&[("FUSION_BODY_LIMIT", "1000")]);
    let err = |status: u16, v: &Value, code: &str| {
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        status
    };
    let (st, v) = s.call(
        "POST",
        "/v1/environments",
        Some(json!({"name": "Bad_Name", "runtime": "python"})),
    );
    assert_eq!(err(st, &v, "invalid"), 400);
    let (st, v) = s.call(
        "POST",
        "/v1/environments",
        Some(json!({"name": "x", "runtime": "cobol"})),
    );
    assert_eq!(st, 400, "{v}");
    s.env("python", "python", 0);
    let (st, v) = s.call(
        "POST",
        "/v1/environments",
        Some(json!({"name": "python", "runtime": "python"})),
    );
    assert_eq!(err(st, &v, "already_exists"), 409);

    let package = s.upload("a.py", PY_HELLO.as_bytes());
    let (st, v) = s.call(
        "POST",
        "/v1/functions",
        Some(json!({"name": "f", "env": "nope", "package": package})),
    );
    assert_eq!(err(st, &v, "conflict"), 409);
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));

    let r = s
        .api("POST", "/v1/packages?filename=x.zip")
        .header("content-type", "application/zip")
        .body(b"PK\x03\x04not a zip".to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("zip"),
        "{v}"
    );

    let r = s
        .api("POST", "/v1/environments")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 1"),
        "{v}"
    );

    s.function("f", "python", "f.py", PY_HELLO, json!({}));
    let (st, v) = s.call("DELETE", "/v1/environments/python", None);
    assert_eq!(err(st, &v, "conflict"), 409);
    let (st, v) = s.call(
        "POST",
        "/v1/routes",
        Some(json!({"name": "r", "url": "no-slash", "function": "f"})),
    );
    assert_eq!(err(st, &v, "invalid"), 400);
    // A route may be made before its function, as in Fission; a call
    // meanwhile is a 404 that names what is missing.
    let (st, v) = s.call(
        "POST",
        "/v1/routes",
        Some(json!({"name": "r", "url": "/r", "function": "ghost"})),
    );
    assert_eq!(st, 201, "{v}");
    let r = s.http.get(s.router_url("/r")).send().unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(r#"route "r" calls function "ghost", which does not exist (yet)"#),
        "{v}"
    );
    // Deleting what does not exist is a 404, though a route names it.
    let (st, v) = s.call("DELETE", "/v1/functions/ghost", None);
    assert_eq!(err(st, &v, "not_found"), 404);
    assert_eq!(s.call("DELETE", "/v1/routes/r", None).0, 204);
    let (st, v) = s.call("GET", "/v1/functions/ghost", None);
    assert_eq!(err(st, &v, "not_found"), 404);

    let r = s
        .http
        .post(s.router_url("/fission-function/f"))
        .body(vec![b'x'; 5000])
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    // An upload past its limit says the limit.
    let r = s
        .api("POST", "/v1/archives?filename=big.bin")
        .header("content-type", "application/octet-stream")
        .body(vec![b'x'; 65 << 20])
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("(64 MiB)"),
        "{v}"
    );

    // The CLI says what is wrong in one line and exits non-zero.
    let (code, _, stderr) = s.cli(&["fn", "get", "--name", "ghost"]);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("ghost"), "{stderr}");
}

#[test]
fn the_cli_manages_resources_and_tests_functions() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.py");
    std::fs::write(&file, PY_HELLO).unwrap();
    let run = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "fusion {args:?}: {err}");
        out
    };
    run(&[
        "env",
        "create",
        "--name",
        "python",
        "--runtime",
        "python",
        "--poolsize",
        "1",
    ]);
    run(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        file.to_str().unwrap(),
        "--fntimeout",
        "30",
    ]);
    run(&[
        "route",
        "create",
        "--url",
        "/hello",
        "--method",
        "GET",
        "--function",
        "hello",
    ]);
    let list = run(&["fn", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("hello") && l.contains("python")),
        "{list}"
    );
    let json: Value =
        serde_json::from_str(&run(&["fn", "get", "--name", "hello", "-o", "json"])).unwrap();
    assert_eq!(json["timeout_secs"], 30);
    assert_eq!(
        run(&["fn", "test", "--name", "hello"]),
        "hello from python\n"
    );
    assert_eq!(s.get("/hello").text().unwrap(), "hello from python\n");
    let logs = run(&["fn", "logs", "--name", "hello"]);
    assert!(logs.contains("specialized"), "{logs}");
    // The last line only; as JSON, one object per line with its parts.
    let last = run(&["fn", "logs", "--name", "hello", "--tail", "1"]);
    assert_eq!(last.lines().count(), 1, "{last}");
    // Fission's `--detail` (`-d`): the same lines, each with its time and instance.
    assert_eq!(
        run(&["fn", "logs", "--name", "hello", "-d", "--tail", "1"]),
        last
    );
    assert_eq!(
        Some(last.as_str()),
        logs.lines().last().map(|l| format!("{l}\n")).as_deref()
    );
    // From a time (a run's start, to find what its call wrote): an hour back
    // is all of it; from the last line's own time, that line on.
    // (Lines written since the first read come after it.)
    let since_an_hour = run(&["fn", "logs", "--name", "hello", "--since", "1h"]);
    assert!(since_an_hour.starts_with(&logs), "{since_an_hour}");
    let stamp = last.split_whitespace().next().unwrap();
    let from_last = run(&["fn", "logs", "--name", "hello", "--since", stamp]);
    assert!(
        from_last.contains(&last)
            && from_last
                .lines()
                .all(|l| l.split_whitespace().next().unwrap_or_default() >= stamp),
        "{from_last}"
    );
    assert_eq!(
        run(&[
            "fn",
            "logs",
            "--name",
            "hello",
            "--since",
            "2999-01-01T00:00:00Z"
        ]),
        ""
    );
    let json = run(&["fn", "logs", "--name", "hello", "-o", "json"]);
    let entries: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), logs.lines().count(), "{json}");
    let specialized = entries
        .iter()
        .find(|e| e["message"].as_str().unwrap_or("").contains("specialized"))
        .unwrap_or_else(|| panic!("{json}"));
    assert!(specialized["instance"].is_u64(), "{specialized}");
    assert_eq!(specialized["stream"], "stderr", "{specialized}");
    assert!(
        specialized["at"].as_str().unwrap().ends_with('Z'),
        "{specialized}"
    );
    // Without --method a route takes GET only, as Fission's CLI makes it;
    // `--method ANY` takes every method.
    run(&["route", "create", "--url", "/plain", "--function", "hello"]);
    run(&[
        "route",
        "create",
        "--url",
        "/any",
        "--function",
        "hello",
        "--method",
        "ANY",
    ]);
    assert_eq!(s.get("/plain").status(), 200);
    let post = |path: &str| {
        s.http
            .post(s.router_url(path))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post("/plain"), 405);
    assert_eq!(post("/any"), 200);
    // A second route for the same URL, made without a name too, for another
    // method: the names made for them do not collide.
    run(&[
        "route",
        "create",
        "--url",
        "/plain",
        "--method",
        "POST",
        "--function",
        "hello",
    ]);
    assert_eq!(post("/plain"), 200);
    // Fission's Ingress flags: taken, and said to make no Ingress.
    let (code, _, err) = s.cli(&[
        "route",
        "create",
        "--url",
        "/ingress",
        "--function",
        "hello",
        "--createingress",
        "--ingressrule",
        "example.com=/ingress",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no Ingress is made"), "{err}");
    assert_eq!(s.get("/ingress").status(), 200);
    run(&["route", "delete", "--name", "hello"]);
    assert_eq!(s.get("/hello").status(), 404);
}

#[test]
fn spec_apply_is_idempotent() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.py"), PY_HELLO).unwrap();
    std::fs::write(
        dir.path().join("spec.yaml"),
        "kind: Environment\nname: python\nruntime: python\npoolsize: 1\n---\nkind: Function\nname: hello\nenv: python\ncode: hello.py\nconcurrency: 2\n---\nkind: Route\nname: hello\nurl: /hello\nfunction: hello\n",
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let (code, out, err) = s.cli(&["spec", "apply", "-f", path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("created").count(), 3, "{out}");
    let (code, out, err) = s.cli(&["spec", "apply", "-f", path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("unchanged").count(), 3, "{out}");
    assert_eq!(s.get("/hello").text().unwrap(), "hello from python\n");
    // A document with a syntax error names its line and column.
    std::fs::write(dir.path().join("broken.yaml"), "kind: Route\nname: [oops\n").unwrap();
    let (code, _, err) = s.cli(&["spec", "apply", "-f", path]);
    assert_ne!(code, 0);
    assert!(err.contains("broken.yaml:"), "{err}");
}

#[test]
fn fn_logs_follow_streams_new_output() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let s = Server::start();
    s.env("python", "python", 1);
    let code = "from flask import request\ndef main():\n    print('saw ' + request.args.get('tag', ''))\n    return 'ok'\n";
    s.function("chatty", "python", "chatty.py", code, json!({}));
    assert_eq!(
        s.get("/fission-function/chatty?tag=first").text().unwrap(),
        "ok"
    );

    let mut follower = Command::new(common::BIN)
        .args(["fn", "logs", "chatty", "-f"])
        .env("FUSION_URL", &s.api)
        .env("FUSION_TOKEN", &s.token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read in a thread so that a missing line fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |marker: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    };
    // The existing log comes first, then lines written after the follower started.
    let seen_first = wait_for("saw first");
    assert_eq!(
        s.get("/fission-function/chatty?tag=second").text().unwrap(),
        "ok"
    );
    let seen_second = seen_first && wait_for("saw second");
    // Deleting the function ends the follow, with a line that says why.
    let deleted = seen_second && {
        assert_eq!(s.call("DELETE", "/v1/functions/chatty", None).0, 204);
        wait_for("the function was deleted")
    };
    // The CLI then ends by itself: its output closes (bounded: a hang fails
    // the test), and it exits 0.
    let closed = deleted && {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(_) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break false,
            }
        }
    };
    if !closed {
        let _ = follower.kill();
    }
    let status = follower.wait().unwrap();
    assert!(seen_first && seen_second && deleted && closed);
    assert!(status.success(), "{status:?}");
}

/// What a python function logs at INFO and DEBUG reaches its log, as in
/// Fission's runtime (which sets the root logger to DEBUG): through the root
/// logger and through its app's logger.
#[test]
fn a_python_functions_info_and_debug_logging_reaches_its_log() {
    let s = Server::start();
    s.env("python", "python", 1);
    let code = "import logging\nfrom flask import current_app\ndef main():\n    logging.info('root-info-line')\n    logging.debug('root-debug-line')\n    logging.getLogger('mine').debug('named-debug-line')\n    current_app.logger.debug('app-debug-line')\n    return 'ok'\n";
    s.function("chatty", "python", "chatty.py", code, json!({}));
    assert_eq!(s.get("/fission-function/chatty").text().unwrap(), "ok");
    let log = || {
        s.api("GET", "/v1/functions/chatty/logs")
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let lines = [
        "root-info-line",
        "root-debug-line",
        "named-debug-line",
        "app-debug-line",
    ];
    eventually(Duration::from_secs(20), "the log has each line", || {
        let text = log();
        lines.iter().all(|l| text.contains(l))
    });
}

/// A function's output cannot grow the server: a line without end is cut at
/// 16 KiB (and says so); and a function made again under a deleted one's name
/// starts with a log of its own.
#[test]
fn long_output_lines_are_cut_and_a_deleted_functions_log_goes_with_it() {
    let s = Server::start();
    s.env("python", "python", 1);
    let code = "def main():\n    print('z' * 1000000, flush=True)\n    print('after', flush=True)\n    return 'ok'\n";
    s.function("loud", "python", "loud.py", code, json!({}));
    assert_eq!(s.get("/fission-function/loud").text().unwrap(), "ok");
    let log = || {
        s.api("GET", "/v1/functions/loud/logs")
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    eventually(Duration::from_secs(20), "the log has the output", || {
        log().contains("after")
    });
    let text = log();
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 17 * 1024, "a line of {longest} bytes");
    assert!(
        text.contains("983616 more bytes of this line dropped"),
        "{}",
        text.lines().find(|l| l.contains("zzz")).unwrap_or("")
    );

    let (status, v) = s.call("DELETE", "/v1/functions/loud", None);
    assert_eq!(status, 204, "{v}");
    let code = "def main():\n    print('fresh', flush=True)\n    return 'ok'\n";
    s.function("loud", "python", "loud.py", code, json!({}));
    assert_eq!(s.get("/fission-function/loud").text().unwrap(), "ok");
    eventually(
        Duration::from_secs(20),
        "the new log has its output",
        || log().contains("fresh"),
    );
    assert!(!log().contains("zzz"), "{}", log());
}

/// An exception in a function answers 500 without a word of it to the caller
/// (its message may hold a secret); the function's log has it.
#[test]
fn an_exception_stays_in_the_log_and_out_of_the_answer() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.env("nodejs", "nodejs", 1);
    for (name, env, file, code, logged) in [
        (
            "leaky-py",
            "python",
            "leaky.py",
            "def main():\n    raise ValueError('password=hunter2')\n",
            "ValueError: password=hunter2",
        ),
        (
            "leaky-js",
            "nodejs",
            "leaky.js",
            "module.exports = async () => { throw new Error('password=hunter2'); };\n",
            "Error: password=hunter2",
        ),
    ] {
        s.function(name, env, file, code, json!({}));
        let r = s.get(&format!("/fission-function/{name}"));
        assert_eq!(r.status(), 500, "{name}");
        let body = r.text().unwrap();
        assert!(
            !body.contains("hunter2") && !body.contains(logged),
            "{name}: {body}"
        );
        eventually(Duration::from_secs(20), "the log has the exception", || {
            s.api("GET", &format!("/v1/functions/{name}/logs"))
                .send()
                .unwrap()
                .text()
                .unwrap()
                .contains(logged)
        });
    }
}

/// A function's log says when its instance ends and why: exited with a
/// status, or stopped by Fusion when a request passed the function's timeout.
#[test]
fn a_functions_log_says_how_its_instances_ended() {
    let s = Server::start();
    s.env("python", "python", 1);
    let code = "import os, time\nfrom flask import request\ndef main():\n    if request.args.get('exit'):\n        os._exit(3)\n    time.sleep(30)\n    return 'late'\n";
    s.function(
        "ends",
        "python",
        "ends.py",
        code,
        json!({"timeout_secs": 1}),
    );
    let log = || {
        s.api("GET", "/v1/functions/ends/logs")
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    assert_eq!(s.get("/fission-function/ends?exit=1").status(), 502);
    eventually(Duration::from_secs(20), "the exit is logged", || {
        log().contains("exited with status 3")
    });
    assert_eq!(s.get("/fission-function/ends").status(), 504);
    eventually(Duration::from_secs(20), "the stop is logged", || {
        let log = log();
        log.contains("passed the function's timeout of 1 s: stopping instance")
            && log.matches("fusion] instance").count() >= 2
    });
}

#[test]
fn metrics_count_requests_cold_starts_instances_and_runs() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function("counted", "python", "c.py", PY_HELLO, json!({}));
    eventually(
        Duration::from_secs(20),
        "the pool holds a generic instance",
        || !s.instance_pids().is_empty(),
    );
    for _ in 0..3 {
        assert_eq!(s.get("/fission-function/counted").status(), 200);
    }
    s.workflow(
        "noop",
        "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n",
    );
    assert_eq!(s.invoke("noop", "text/plain", "").0, 204);

    let text = s.api("GET", "/metrics").send().unwrap().text().unwrap();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(r#"fusion_function_requests_total{function="counted",code="200"} 3"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_cold_starts_total{function="counted",source="pool"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_function_request_seconds_count{function="counted"} 3"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_instances{environment="python",state="specialized"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_runs_started_total{workflow="noop"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_runs_finished_total{workflow="noop",status="succeeded"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_async_invocations{state="pending"} 0"#),
        "{text}"
    );
    assert!(has(r#"fusion_async_invocations{state="dead"} 0"#), "{text}");
    // The process's own figures, under the names every Prometheus client
    // uses, and the build.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(value("process_cpu_seconds_total") > 0.0, "{text}");
    assert!(value("process_resident_memory_bytes") > 1e6, "{text}");
    assert!(value("process_threads") >= 2.0, "{text}");
    let (open, max) = (value("process_open_fds"), value("process_max_fds"));
    assert!(open > 0.0 && open <= max, "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(started <= now && now - started < 600.0, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "fusion_build_info{{version=\"{}\",backend=\"",
            env!("CARGO_PKG_VERSION")
        )) && l.ends_with("} 1")),
        "{text}"
    );
    // Counters of what has not happened yet are there at 0, to alert on.
    assert!(
        has(r#"fusion_function_requests_abandoned_total{function="counted"} 0"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_function_websockets_open{function="counted"} 0"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_runs_resumed_total{workflow="noop"} 0"#),
        "{text}"
    );
    assert!(
        has(r#"fusion_instance_start_failures_total{environment="python"} 0"#),
        "{text}"
    );

    // Instances that end, and that cannot start, are counted by why.
    let broken = json!({"name": "broken", "command": ["/bin/sh", "-c", "exit 3"], "poolsize": 1});
    s.ok("POST", "/v1/environments", Some(broken));
    assert_eq!(s.call("DELETE", "/v1/functions/counted", None).0, 204);
    let metrics = || s.api("GET", "/metrics").send().unwrap().text().unwrap();
    eventually(
        Duration::from_secs(30),
        "the exit and the failure are counted",
        || {
            let text = metrics();
            let counted = |prefix: &str| {
                text.lines()
                    .any(|l| l.starts_with(prefix) && !l.ends_with(" 0"))
            };
            counted(r#"fusion_instance_exits_total{environment="python",reason="stopped"}"#)
                && counted(r#"fusion_instance_start_failures_total{environment="broken"}"#)
        },
    );
}

/// A python function that starts `kids` processes holding `mb` MiB each at the
/// same time, and answers their exit codes (-9: killed).
const FAMILY: &str = r#"import subprocess, sys
from flask import request
HOLD = "b = bytearray(%d << 20); print('ok', flush=True); sys.stdin.read()"
def main():
    mb, kids = int(request.args['mb']), int(request.args['kids'])
    procs = [subprocess.Popen([sys.executable, '-S', '-c', 'import sys; ' + HOLD % mb],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(kids)]
    for p in procs:
        p.stdout.readline()  # allocated, or killed
    for p in procs:
        p.stdin.close()
    return ' '.join(str(p.wait()) for p in procs)
"#;

#[test]
fn a_container_killed_for_memory_answers_out_of_memory_and_is_replaced() {
    let s = Server::start_with(&[("FUSION_BACKEND", "container")]);
    s.ok(
        "POST",
        "/v1/environments",
        Some(json!({"name": "small", "runtime": "python", "poolsize": 0, "memory_mb": 128})),
    );
    let code = "from flask import request\ndef main():\n    block = bytearray(int(request.args['mb']) << 20)\n    return 'got %d' % len(block)\n";
    s.function("greedy", "small", "greedy.py", code, json!({}));
    assert_eq!(
        s.get("/fission-function/greedy?mb=8").text().unwrap(),
        "got 8388608"
    );
    // A 502's error code.
    let code_of_502 = |path: &str| {
        let r = s.get(path);
        assert_eq!(r.status(), 502, "{path}");
        let body: Value = r.json().unwrap();
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        code_of_502("/fission-function/greedy?mb=512"),
        "out_of_memory"
    );
    // A new instance takes the next request.
    assert_eq!(
        s.get("/fission-function/greedy?mb=1").text().unwrap(),
        "got 1048576"
    );

    // The limit holds for all the instance's processes together: six children of
    // 40 MiB do not fit in 128 MiB, whichever of them the kernel kills.
    s.function("family", "small", "family.py", FAMILY, json!({}));
    let r = s.get("/fission-function/family?mb=40&kids=6");
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    match status {
        200 => assert!(
            text.split(' ').any(|c| c == "-9"),
            "no child was killed: {text}"
        ),
        502 => assert!(text.contains("out_of_memory"), "{text}"),
        other => panic!("{other}: {text}"),
    }

    // A child killed for memory that the function survives does not make
    // the instance's later crash a memory kill.
    let code = "import os, subprocess\nfrom flask import request\ndef main():\n    if request.args.get('crash'):\n        os._exit(3)\n    r = subprocess.run(['python3', '-c', 'x = bytearray(512 << 20)'])\n    return 'child %d' % r.returncode\n";
    s.function("crasher", "small", "crasher.py", code, json!({}));
    assert_eq!(
        s.get("/fission-function/crasher").text().unwrap(),
        "child -9"
    );
    // The instance's view counts the kill.
    let instances = s.ok("GET", "/v1/functions/crasher/instances", None);
    assert_eq!(instances[0]["oom_kills"], 1, "{instances}");
    assert_eq!(
        code_of_502("/fission-function/crasher?crash=1"),
        "instance_failed"
    );

    // The runtime itself killed for memory, with two hundred processes in its
    // container to tear down before its end is reported: still out_of_memory.
    let code = "#!/bin/sh\nfor i in $(seq 200); do sleep 1000 >/dev/null 2>&1 & done\necho 1000 > /proc/$PPID/oom_score_adj\npython3 -c 'x = bytearray(512 << 20)'\necho survived\n";
    s.ok(
        "POST",
        "/v1/environments",
        Some(json!({"name": "small-bin", "runtime": "binary", "poolsize": 0, "memory_mb": 128})),
    );
    s.function("crowd", "small-bin", "crowd.sh", code, json!({}));
    assert_eq!(code_of_502("/fission-function/crowd"), "out_of_memory");
}

#[test]
fn a_process_memory_limit_bounds_each_process() {
    let s = Server::start_with(&[("FUSION_BACKEND", "process")]);
    s.ok(
        "POST",
        "/v1/environments",
        Some(json!({"name": "small", "runtime": "python", "poolsize": 0, "memory_mb": 256})),
    );
    let code = "from flask import request\ndef main():\n    n = int(request.args.get('mb', '1'))\n    try:\n        block = bytearray(n * 1024 * 1024)\n    except MemoryError:\n        return 'refused', 507\n    return 'got %d' % len(block)\n";
    s.function("greedy", "small", "greedy.py", code, json!({}));
    assert_eq!(
        s.get("/fission-function/greedy?mb=8").text().unwrap(),
        "got 8388608"
    );
    let r = s.get("/fission-function/greedy?mb=1024");
    assert_eq!(r.status(), 507, "{:?}", r.text());
    // The instance survives its failed allocation.
    assert_eq!(
        s.get("/fission-function/greedy?mb=1").text().unwrap(),
        "got 1048576"
    );
}

#[test]
fn every_path_in_the_openapi_document_is_served() {
    let s = Server::start();
    let doc: Value = s
        .http
        .get(s.api_url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 20);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    for (path, item) in paths {
        for method in ["get", "post", "put", "delete"] {
            let Some(op) = item.get(method) else {
                continue;
            };
            let concrete = path
                .replace("{name}", "absent")
                .replace("{id}", "absent")
                .replace("{uid}", "absent")
                .replace("{kind}", "timetriggers");
            // What the document says about the token is what the server does.
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let anonymous = s.http.request(m, s.api_url(&concrete)).send().unwrap();
            let open = op["security"] == json!([]);
            assert_eq!(
                anonymous.status() == 401,
                !open,
                "{method} {path} without a token: {}",
                anonymous.status()
            );
            if path.ends_with("/invoke") {
                continue;
            }
            // The document names every query parameter an endpoint takes:
            // another is refused before the endpoint runs.
            // (Health and /metrics take any: scrapers may add their own.)
            let admin = path.starts_with("/v1/")
                && !path.starts_with("/v1/callbacks")
                && !path.starts_with("/v1/pod-packages");
            if admin {
                let r = s
                    .api(
                        &method.to_uppercase(),
                        &format!("{concrete}?surely_not_a_parameter=1"),
                    )
                    .send()
                    .unwrap();
                let status = r.status().as_u16();
                let text = r.text().unwrap_or_default();
                assert!(
                    status == 400 && text.contains("invalid_query"),
                    "{method} {path}?surely_not_a_parameter=1: {status} {text}"
                );
            }
            let r = s
                .api(&method.to_uppercase(), &concrete)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .unwrap();
            let status = r.status().as_u16();
            let text = r.text().unwrap_or_default();
            // The endpoint exists: whatever it answers, it is not the API's "no such endpoint".
            assert!(
                status != 405 && !text.contains("no API endpoint"),
                "{method} {path}: {status} {text}"
            );
        }
    }
}

/// Sends `head` and the first part of a body on `conn`, waits until `arrived`
/// says the request got that far, then ends the request early (`shut`:
/// half-close and read the answer; else drop the connection).
fn truncated_request<C: std::io::Read + std::io::Write>(
    mut conn: C,
    head: &str,
    part: &[u8],
    shut: impl FnOnce(&mut C) -> bool,
    arrived: impl Fn() -> bool,
) -> String {
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(part).unwrap();
    eventually(
        Duration::from_secs(20),
        "the partial request arrived",
        arrived,
    );
    let mut answer = String::new();
    if shut(&mut conn) {
        let _ = conn.read_to_string(&mut answer);
    }
    answer
}

#[test]
fn the_binary_runtime_never_runs_a_script_on_a_body_that_did_not_arrive_whole() {
    let s = Server::start();
    let probe = Probe::start();
    let script = format!(
        "#!/bin/sh\nbody=$(cat)\n{}\nprintf done\n",
        probe.curl("/log/ran?$body")
    );
    s.env("binary", "binary", 1);
    s.function("record", "binary", "record.sh", &script, json!({}));
    // Whole requests run the script.
    let resp = s.get("/fission-function/record");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(probe.lines("ran"), vec![String::new()]);

    let router = s.router_url("").trim_start_matches("http://").to_string();
    let path = "/fission-function/record";
    let length = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
    let chunked = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let busy = || {
        s.instances("record")
            .iter()
            .any(|i| i["active_requests"] == 1)
    };
    let idle = || {
        s.instances("record")
            .iter()
            .all(|i| i["active_requests"] == 0)
    };
    for shut in [true, false] {
        let half_close =
            |c: &mut std::net::TcpStream| shut && c.shutdown(std::net::Shutdown::Write).is_ok();
        let tcp = || std::net::TcpStream::connect(&router).unwrap();
        let answer = truncated_request(tcp(), &length, b"0123456789", half_close, busy);
        assert!(!shut || !answer.starts_with("HTTP/1.1 2"), "{answer}");
        eventually(Duration::from_secs(20), "the request ended", idle);
        truncated_request(tcp(), &chunked, b"5\r\nhello\r\n3\r\nab", half_close, busy);
        eventually(Duration::from_secs(20), "the request ended", idle);
    }
    // And straight to the instance, past the router: it answers 400 at the end
    // of the connection.
    let instance = s.instances("record")[0].clone();
    let direct = length.replace(path, "/");
    let answer = match instance["address"].as_str().unwrap() {
        a if a.starts_with("unix:") => truncated_request(
            std::os::unix::net::UnixStream::connect(&a[5..]).unwrap(),
            &direct,
            b"0123",
            |c| c.shutdown(std::net::Shutdown::Write).is_ok(),
            || true,
        ),
        a => truncated_request(
            std::net::TcpStream::connect(a).unwrap(),
            &direct,
            b"0123",
            |c| c.shutdown(std::net::Shutdown::Write).is_ok(),
            || true,
        ),
    };
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The function still answers whole requests, and only they ran the script.
    assert_eq!(s.get("/fission-function/record").status().as_u16(), 200);
    assert_eq!(probe.lines("ran"), vec![String::new(), String::new()]);
}

#[test]
fn a_small_node_memory_limit_works_in_containers_and_is_refused_on_the_process_backend() {
    let env = json!({"name": "small-js", "runtime": "nodejs", "poolsize": 0, "memory_mb": 256});
    let s = Server::start_with(&[("FUSION_BACKEND", "container")]);
    s.ok("POST", "/v1/environments", Some(env.clone()));
    let code = "module.exports = async () => ({status: 200, body: 'small'});\n";
    s.function("small", "small-js", "small.js", code, json!({}));
    assert_eq!(s.get("/fission-function/small").text().unwrap(), "small");

    // An address-space limit of 256 MiB is less than V8 reserves.
    let p = Server::start_with(&[("FUSION_BACKEND", "process")]);
    let (status, body) = p.call("POST", "/v1/environments", Some(env));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("768"),
        "{body}"
    );
}

/// Settings the process backend cannot enforce are named in the environment's
/// status and by the CLI, not silently taken; containers enforce them all.
#[test]
fn settings_the_process_backend_cannot_enforce_are_named() {
    // The same environment on each backend: what the CLI says, what the API shows.
    let create = |s: &Server| {
        let args = [
            "env",
            "create",
            "--name",
            "fenced",
            "--runtime",
            "python",
            "--network",
            "none",
            "--maxcpu",
            "100",
        ];
        let (code, _, err) = s.cli(&args);
        assert_eq!(code, 0, "{err}");
        let env = s.ok("GET", "/v1/environments/fenced", None);
        (err, env["status"]["not_enforced"].clone())
    };
    let (err, listed) = create(&Server::start_with(&[("FUSION_BACKEND", "process")]));
    assert!(
        err.contains(
            "warning: environment fenced: the process backend does not enforce network: none"
        ),
        "{err}"
    );
    assert!(err.contains("does not enforce cpu_millis"), "{err}");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    let s = Server::start_with(&[("FUSION_BACKEND", "container")]);
    let (err, listed) = create(&s);
    assert!(!err.contains("does not enforce"), "{err}");
    assert!(listed.is_null(), "{listed}");
    // `env get` shows the limits it was given, CPU too.
    let (code, out, err) = s.cli(&["env", "get", "fenced"]);
    assert_eq!(code, 0, "{err}");
    let (head, row) = out.split_once('\n').unwrap();
    let at = head.find("CPU_MILLIS").unwrap_or_else(|| panic!("{out}"));
    assert!(row.get(at..).is_some_and(|r| r.starts_with("100")), "{out}");
}

/// A container names the host's time zone as the host does: a link into the
/// zone files, where node's ICU reads the zone's name (with a copy of the file
/// it compares every zone file to find it, ~10 ms at a runtime's first log line).
#[test]
fn a_container_names_the_hosts_time_zone_by_its_link() {
    let s = Server::start_with(&[("FUSION_BACKEND", "container")]);
    s.env("python", "python", 0);
    let code = "import os\ndef main():\n    p = '/etc/localtime'\n    return os.readlink(p) if os.path.islink(p) else 'not a link'\n";
    s.function("zone", "python", "zone.py", code, json!({}));
    // The host's link may be absolute or relative (`../usr/share/zoneinfo/...`);
    // the container's names the same zone file absolutely.
    let host = std::fs::read_link("/etc/localtime").map(|l| l.display().to_string());
    let expected = match host.as_deref().ok().and_then(|l| l.split_once("zoneinfo/")) {
        Some((_, zone))
            if std::path::Path::new("/usr/share/zoneinfo")
                .join(zone)
                .is_file() =>
        {
            format!("/usr/share/zoneinfo/{zone}")
        }
        _ => "not a link".to_string(),
    };
    assert_eq!(s.get("/fission-function/zone").text().unwrap(), expected);
}

#[test]
fn a_client_that_hangs_up_during_a_cold_start_does_not_use_up_the_functions_capacity() {
    let s = Server::start_with(&[("FUSION_LEASE_WAIT_MS", "2000")]);
    s.env("python", "python", 0);
    s.function(
        "once",
        "python",
        "once.py",
        "def main():\n    return 'ok'\n",
        json!({"concurrency": 1}),
    );
    // The client gives up long before an instance can start and specialize (a
    // runtime takes more than 15 ms to start on either backend).
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(5))
        .build()
        .unwrap();
    assert!(quick
        .get(s.router_url("/fission-function/once"))
        .send()
        .is_err());
    let r = s.get("/fission-function/once");
    assert_eq!(r.status(), 200, "{:?}", r.text());
}

#[test]
fn a_client_that_sends_its_body_too_slowly_gets_504_and_the_instance_lives_on() {
    use std::io::Read;
    let s = Server::start();
    s.env("python", "python", 0);
    let code =
        "from flask import request\ndef main():\n    return 'got %d' % len(request.get_data())\n";
    s.function(
        "upload",
        "python",
        "upload.py",
        code,
        json!({"timeout_secs": 1}),
    );
    assert_eq!(s.get("/fission-function/upload").text().unwrap(), "got 0");
    let before = s.instances("upload")[0]["id"].clone();

    let router = s.router_url("").trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&router).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(
        b"POST /fission-function/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123",
    )
    .unwrap();
    // The rest of the body never comes; the answer does, at the timeout.
    let mut answer = vec![0u8; 4096];
    let n = conn.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
    drop(conn);
    // The instance only waited for the client: it is still the one serving.
    assert_eq!(s.get("/fission-function/upload").text().unwrap(), "got 0");
    assert_eq!(s.instances("upload")[0]["id"], before);
}

/// An environment says how its pool stands: instances ready, and why the last
/// one failed to start (an environment whose command cannot start would
/// otherwise only show in the server's log); the CLI warns of the failure.
#[test]
fn an_environment_shows_its_pool_and_why_an_instance_failed_to_start() {
    let s = Server::start();
    s.env("ok", "binary", 1);
    // The CLI splits a command as a shell would, and shows it so.
    let command = "/bin/sh -c 'echo no runtime here; exit 3'";
    let (code, _, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "broken",
        "--command",
        command,
        "--poolsize",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    let env = s.ok("GET", "/v1/environments/broken", None);
    assert_eq!(
        env["command"],
        json!(["/bin/sh", "-c", "echo no runtime here; exit 3"])
    );
    let (_, out, _) = s.cli(&["env", "list"]);
    assert!(out.contains(command), "{out}");
    let (code, _, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "unclosed",
        "--command",
        "sh -c 'exit",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unclosed quote"), "{err}");
    eventually(Duration::from_secs(30), "a ready instance of ok", || {
        s.ok("GET", "/v1/environments/ok", None)["status"]["pool"]["ready"] == 1
    });
    let ok = s.ok("GET", "/v1/environments/ok", None);
    assert!(
        ok["status"]["pool"].get("last_start_failure").is_none(),
        "{ok}"
    );
    eventually(Duration::from_secs(30), "broken's start failure", || {
        s.ok("GET", "/v1/environments/broken", None)["status"]["pool"]
            .get("last_start_failure")
            .is_some()
    });
    let env = s.ok("GET", "/v1/environments/broken", None);
    assert_eq!(env["status"]["pool"]["ready"], 0, "{env}");
    let failure = &env["status"]["pool"]["last_start_failure"];
    assert!(
        failure["at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{env}"
    );
    let (code, out, err) = s.cli(&["env", "get", "broken"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("READY"), "{out}");
    assert!(
        err.contains("warning: environment broken: an instance failed to start at"),
        "{err}"
    );
    let (_, _, err) = s.cli(&["env", "get", "ok"]);
    assert!(!err.contains("warning"), "{err}");
}

/// The binary runtime, as Fission's: CGI-like variables with REQUEST_URI and
/// CONTENT_LENGTH, and a failed run answers its exit, never its stderr (which
/// goes to the function's log).
#[test]
fn the_binary_runtime_gives_fissions_variables_and_keeps_stderr_in_the_log() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    let code = "#!/bin/sh\ncat >/dev/null\nif [ \"$QUERY_STRING\" = fail=1 ]; then echo 'token=hunter2' >&2; exit 2; fi\nprintf '%s|%s|%s|%s' \"$REQUEST_METHOD\" \"$REQUEST_URI\" \"$CONTENT_LENGTH\" \"$HTTP_PROXY\"\n";
    s.function("cgi", "binary", "cgi.sh", code, json!({}));
    // A caller's `Proxy` header is not the script's HTTP_PROXY (httpoxy).
    let r = s
        .http
        .post(s.router_url("/fission-function/cgi?x=1"))
        .header("Proxy", "http://127.0.0.1:9")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "POST|/?x=1|5|");
    let r = s.get("/fission-function/cgi?fail=1");
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().unwrap(),
        "failed to wait for subprocess: exit status 2"
    );
    eventually(Duration::from_secs(20), "stderr reaches the log", || {
        s.api("GET", "/v1/functions/cgi/logs")
            .send()
            .unwrap()
            .text()
            .unwrap()
            .contains("token=hunter2")
    });
    // Beside it, which call failed (its path without the query).
    let log = s
        .api("GET", "/v1/functions/cgi/logs")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let failed = log
        .lines()
        .find(|l| l.contains(" fusion] "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(failed.contains("GET / answered 500 after "), "{log}");
    assert!(!failed.contains("fail=1"), "{log}");
}

/// A 4xx fails a workflow's step or an asynchronous call (those carry an
/// idempotency key) and goes into the function's log as a 5xx does; a 4xx
/// answered to a caller who sees it (a 404 of a REST function) does not.
#[test]
fn a_4xx_that_fails_a_step_is_in_the_functions_log() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "declines",
        "python",
        "declines.py",
        "def main():\n    return 'declined', 402\n",
        json!({}),
    );
    let r = s.get("/fission-function/declines/plain");
    assert_eq!(r.status(), 402);
    let r = s
        .http
        .post(s.router_url("/fission-function/declines"))
        .header("X-Fusion-Idempotency-Key", "run-1/Charge")
        .send()
        .unwrap();
    assert_eq!(r.status(), 402);
    // Written before the answer: there at once.
    let log = s
        .api("GET", "/v1/functions/declines/logs")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" fusion] ")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("POST / answered 402 after ")
            && lines[0].contains("(X-Fusion-Idempotency-Key: run-1/Charge)"),
        "{log}"
    );
}

/// An answer that is not valid HTTP (a header name with a space) is a 502
/// `instance_failed`, and the function's log says why, where its developer
/// looks first.
#[test]
fn an_answer_that_is_not_http_is_a_502_the_functions_log_explains() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "badheader",
        "python",
        "badheader.py",
        "def main():\n    return 'body', 200, {'Bad Name': 'x'}\n",
        json!({}),
    );
    let r = s.get("/fission-function/badheader");
    assert_eq!(r.status(), 502);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "instance_failed", "{v}");
    // Written before the 502 is answered: there at once.
    let said = |log: &str| log.contains("the request failed with 502 instance_failed: ");
    let log = s
        .api("GET", "/v1/functions/badheader/logs")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(said(&log), "{log}");
}

/// An answer with more header fields than the router reads is a 502 that
/// says so (it was `instance_failed`, "message head is too large", for 1.8
/// KB of headers), and the instance, which is well, serves the next call.
#[test]
fn an_answer_with_too_many_headers_is_a_502_that_says_so() {
    let s = Server::start();
    s.env("python", "python", 1);
    s.function(
        "hdrs",
        "python",
        "hdrs.py",
        "from flask import request\ndef main():\n    n = int(request.args.get('n', '120'))\n    return 'ok', 200, [('X-H%d' % i, 'v') for i in range(n)]\n",
        json!({}),
    );
    assert_eq!(s.get("/fission-function/hdrs?n=90").status(), 200);
    let ids = || -> Vec<Value> {
        s.instances("hdrs")
            .iter()
            .map(|i| i["id"].clone())
            .collect()
    };
    let serving = ids();
    assert_eq!(serving.len(), 1, "{serving:?}");
    let r = s.get("/fission-function/hdrs?n=120");
    assert_eq!(r.status(), 502);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "response_head_too_large", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than 100 header fields"),
        "{v}"
    );
    let log = s
        .api("GET", "/v1/functions/hdrs/logs")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(log.contains("502 response_head_too_large"), "{log}");
    let r = s.get("/fission-function/hdrs?n=90");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-h89"], "v");
    assert_eq!(ids(), serving, "the instance is kept");
    // A workflow's task is not tried again for it: the answer would be the same.
    s.workflow(
        "hdrs-wf",
        "output: H\ntasks:\n  H:\n    run: hdrs\n    retry: {maxAttempts: 3, backoff: {initial: 10ms}}\n",
    );
    let id = s.invoke_async("hdrs-wf", &json!(null));
    let run = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["tasks"][0]["attempts"], 1, "{run}");
    assert!(
        run["tasks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("more than 100 header fields"),
        "{run}"
    );
}

/// Scripts written for Fission's binary image run: it is Alpine, its shell is
/// busybox's, and Fission Workflows' own `dump.sh` starts with a `printf` that
/// dash and bash refuse as an option.
#[test]
fn the_binary_runtime_runs_shell_scripts_with_busybox_as_fissions_image_does() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    let code = "#!/bin/sh\nprintf \"----\\n\"\nprintf '%s\\n' \"$REQUEST_METHOD\"\n";
    s.function("dump", "binary", "dump.sh", code, json!({}));
    let r = s.get("/fission-function/dump");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "----\nGET\n");
    // The `#!` line's option still holds: `-e` stops at the first failure.
    s.function(
        "strict",
        "binary",
        "strict.sh",
        "#!/bin/sh -e\nfalse\necho went on\n",
        json!({}),
    );
    let r = s.get("/fission-function/strict");
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().unwrap(),
        "failed to wait for subprocess: exit status 1"
    );
}

/// What a function is sent through a route, as Fission's router sends it: a
/// url route's function gets `/`, a prefix route's what is below the prefix
/// (all of it with `keep_prefix`), and every call the URL as it came in
/// `X-Fission-Full-Url` (replacing a caller's), with the function's name and
/// namespace apart.
#[test]
fn routes_send_the_path_and_headers_fission_sends() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    let code = "#!/bin/sh\nprintf '%s|%s|%s|%s|%s' \"$REQUEST_PATH\" \"$HTTP_X_FISSION_FULL_URL\" \"$HTTP_X_FISSION_FUNCTION_NAME\" \"$HTTP_X_FISSION_FUNCTION_NAMESPACE\" \"$HTTP_X_FISSION_PARAMS_ID\"\n";
    s.function("where", "binary", "where.sh", code, json!({}));
    for route in [
        json!({"name": "user", "url": "/users/{id}", "function": "where"}),
        json!({"name": "api", "prefix": "/api", "function": "where"}),
        json!({"name": "kept", "prefix": "/kept", "keep_prefix": true, "function": "where"}),
        // gorilla/mux's catch-all, as Fission projects write it.
        json!({"name": "files", "url": "/files/{id:.*}", "function": "where"}),
    ] {
        s.ok("POST", "/v1/routes", Some(route));
    }
    let sent = |path: &str| {
        s.http
            .get(s.router_url(path))
            .header("X-Fission-Full-Url", "/forged")
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    assert_eq!(sent("/users/42?x=1"), "/|/users/42?x=1|where|default|42");
    assert_eq!(
        sent("/api/v1/things"),
        "/v1/things|/api/v1/things|where|default|"
    );
    assert_eq!(sent("/kept/a?b=c"), "/kept/a|/kept/a?b=c|where|default|");
    assert_eq!(
        sent("/files/a/b.txt"),
        "/|/files/a/b.txt|where|default|a/b.txt"
    );
    assert_eq!(
        sent("/fission-function/where/sub"),
        "/sub|/fission-function/where/sub|where|default|"
    );
    // The CLI's --keepprefix, as Fission's, and its undoing.
    let (code, _, err) = s.cli(&[
        "route",
        "create",
        "k2",
        "--prefix",
        "/k2",
        "--function",
        "where",
        "--keepprefix",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(sent("/k2/a").starts_with("/k2/a|"));
    let (code, _, err) = s.cli(&["route", "update", "k2", "--keepprefix=false"]);
    assert_eq!(code, 0, "{err}");
    assert!(sent("/k2/a").starts_with("/a|"));
    // keep_prefix means nothing to a url route: refused, not ignored.
    let (status, body) = s.call(
        "POST",
        "/v1/routes",
        Some(json!({"name": "odd", "url": "/odd", "keep_prefix": true, "function": "where"})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keep_prefix applies to a prefix route"),
        "{body}"
    );
}

/// Sends `head` to the router on a fresh connection, as written (no client
/// library normalizing the path), and answers the response's head.
fn raw_router_head(s: &Server, head: &str) -> String {
    use std::io::Read;
    let address = s.router.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(address).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// As Fission's router (gorilla/mux): a path with `.` or `..` segments is
/// redirected to the resolved path, so no route or function sees one that
/// climbs; `/` and `/router-healthz` answer 200 where no route takes them.
#[test]
fn dot_segments_are_redirected_and_the_routers_own_paths_answer() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    s.function(
        "where",
        "binary",
        "where.sh",
        "#!/bin/sh\nprintf '%s' \"$REQUEST_PATH\"\n",
        json!({}),
    );
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "api", "prefix": "/api", "function": "where"})),
    );
    let head = raw_router_head(
        &s,
        "GET /api/../admin/5?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("location: /admin/5?x=1"),
        "{head}"
    );
    // Another method keeps it across the redirect (308, not 301).
    let head = raw_router_head(
        &s,
        "POST /api/%2e%2e/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    assert!(head.to_ascii_lowercase().contains("location: /x"), "{head}");
    // A path without dot segments is routed as before.
    assert_eq!(s.get("/api/a/b").text().unwrap(), "/a/b");
    assert_eq!(s.get("/").status(), 200);
    assert_eq!(s.get("/router-healthz").status(), 200);
    assert_eq!(s.get("/nothing-here").status(), 404);
    // A route for `/` takes it.
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "home", "url": "/", "function": "where"})),
    );
    assert_eq!(s.get("/").text().unwrap(), "/");
}

/// Fission's nodejs functions answer through express's `res`: status, send,
/// json, sendStatus, set, redirect.
#[test]
fn a_nodejs_function_answers_through_express_methods() {
    let s = Server::start();
    s.env("nodejs", "nodejs", 1);
    let code = "module.exports = async (context) => {\n  const res = context.response;\n  switch (context.request.query.m) {\n    case 'json': return res.status(201).json({ ok: true });\n    case 'status': return res.sendStatus(404);\n    case 'set': return res.set('X-Kind', 'express').type('text').send('sent');\n    case 'redirect': return res.redirect(303, '/elsewhere');\n    case 'xml': return res.type('application/xml').send('<a/>');\n    case 'returned': return { status: 200, headers: { 'content-type': 'text/plain' }, body: 'plain' };\n    case 'nothing': return { status: 204, body: 'dropped' };\n    default: res.status(202).send('accepted');\n  }\n};\n";
    s.function("express", "nodejs", "express.js", code, json!({}));
    let r = s.get("/fission-function/express?m=json");
    assert_eq!(r.status(), 201);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.json::<Value>().unwrap(), json!({"ok": true}));
    let r = s.get("/fission-function/express?m=status");
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().unwrap(), "Not Found");
    let r = s.get("/fission-function/express?m=set");
    assert_eq!(r.headers()["x-kind"], "express");
    // Typed as Express types it: a text type says its charset.
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().unwrap(), "sent");
    let r = s.get("/fission-function/express?m=xml");
    assert_eq!(
        r.headers()["content-type"],
        "application/xml; charset=utf-8",
        "a string sent is utf-8, whatever its type"
    );
    let r = s.get("/fission-function/express?m=returned");
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().unwrap(), "plain");
    let r = s.get("/fission-function/express?m=nothing");
    assert_eq!(r.status(), 204);
    assert!(
        r.headers().get("content-type").is_none(),
        "{:?}",
        r.headers()
    );
    let r = s
        .http
        .get(s.router_url("/fission-function/express?m=redirect"))
        .send()
        .unwrap();
    // reqwest follows it: the function named where to.
    assert!(r.url().path().ends_with("/elsewhere"), "{}", r.url());
    let r = s.get("/fission-function/express");
    assert_eq!(r.status(), 202);
    assert_eq!(r.text().unwrap(), "accepted");
}

/// Express's request helpers Fission's nodejs functions use: `ip` (the
/// caller's, as the router saw it, whatever the caller put in
/// X-Forwarded-For), `is` and `accepts`.
#[test]
fn a_nodejs_function_reads_express_request_helpers() {
    let s = Server::start();
    s.env("nodejs", "nodejs", 1);
    let code = "module.exports = async (c) => ({ body: { ip: c.request.ip, json: c.request.is('json'), text: c.request.is('text/*', 'html'), accepts: c.request.accepts(['html', 'json']) } });\n";
    s.function("helpers", "nodejs", "helpers.js", code, json!({}));
    let r = s
        .http
        .post(s.router_url("/fission-function/helpers"))
        .header("content-type", "application/json; charset=utf-8")
        .header("accept", "text/html;q=0.5, application/json")
        .header("x-forwarded-for", "203.0.113.9")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"ip": "127.0.0.1", "json": "json", "text": false, "accepts": "json"})
    );
    // A pattern with a wildcard answers the type it matched, as type-is does.
    let r = s
        .http
        .post(s.router_url("/fission-function/helpers"))
        .header("content-type", "text/plain; charset=utf-8")
        .body("hi")
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["text"], "text/plain");
    // No body: `is` says null, as Express's; no Accept: the first type.
    let r = s.get("/fission-function/helpers");
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"ip": "127.0.0.1", "json": null, "text": null, "accepts": "html"})
    );
}

/// A query of raw UTF-8 bytes (as curl sends `?name=é`, where a browser
/// percent-encodes) reaches a nodejs function, whose HTTP parser refuses such
/// bytes: the router passes them on percent-encoded, read back as the text.
#[test]
fn a_raw_utf8_query_reaches_a_nodejs_function_as_its_text() {
    use std::io::{Read, Write};
    let s = Server::start();
    s.env("nodejs", "nodejs", 1);
    let code = "module.exports = async (c) => ({ body: { name: c.request.query.name } });\n";
    s.function("query", "nodejs", "query.js", code, json!({}));
    let router = s.router_url("").trim_start_matches("http://").to_string();
    let mut caller = std::net::TcpStream::connect(&router).unwrap();
    caller
        .write_all(
            "GET /fission-function/query?name=é HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .as_bytes(),
        )
        .unwrap();
    let mut answer = String::new();
    caller.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"name":"é"}"#), "{answer}");
}

/// A body of a type Fission's parsers do not read (XML, multipart) is left in
/// the request stream for the function (`on('data')`, `pipe` into busboy),
/// with `request.body` `{}`, as in Fission; the types they read are parsed.
#[test]
fn a_nodejs_function_reads_a_body_its_parsers_leave_from_the_stream() {
    let s = Server::start();
    s.env("nodejs", "nodejs", 1);
    let code = "module.exports = (c, cb) => {\n  const parts = [];\n  c.request.on('data', (d) => parts.push(d));\n  c.request.on('end', () => cb(200, JSON.stringify({ got: Buffer.concat(parts).toString(), body: c.request.body }), { 'content-type': 'application/json' }));\n};\n";
    s.function("stream", "nodejs", "stream.js", code, json!({}));
    for ctype in ["application/xml", "multipart/form-data; boundary=x"] {
        let r = s
            .http
            .post(s.router_url("/fission-function/stream"))
            .header("content-type", ctype)
            .body("<a>1</a>")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{ctype}");
        assert_eq!(
            r.json::<Value>().unwrap(),
            json!({"got": "<a>1</a>", "body": {}}),
            "{ctype}"
        );
    }
    let code = "module.exports = async (c) => ({ body: { body: c.request.body } });\n";
    s.function("parsed", "nodejs", "parsed.js", code, json!({}));
    let r = s
        .http
        .post(s.router_url("/fission-function/parsed"))
        .header("content-type", "application/json")
        .body(r#"{"a": 1}"#)
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap(), json!({"body": {"a": 1}}));
}

/// Fission's `fn create` flags for its Kubernetes pods are taken with a
/// warning (a Fission script runs unchanged), and `fn test --subpath` takes a
/// path as typed, a query after its `?`.
#[test]
fn fissions_pod_flags_are_taken_with_a_warning_and_a_subpath_as_typed() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("where.sh");
    std::fs::write(
        &file,
        "#!/bin/sh\nprintf '%s %s' \"$REQUEST_PATH\" \"$QUERY_STRING\"\n",
    )
    .unwrap();
    let (code, _, err) = s.cli(&[
        "fn",
        "create",
        "--name",
        "where",
        "--env",
        "binary",
        "--code",
        file.to_str().unwrap(),
        "--mincpu",
        "100",
        "--maxmemory",
        "256",
        "--st",
        "120",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "warning: --mincpu, --maxmemory set the resources of Fission's Kubernetes pods"
        ),
        "{err}"
    );
    assert!(
        err.contains("warning: --specializationtimeout was how long Fission waits"),
        "{err}"
    );
    let (code, out, err) = s.cli(&["fn", "test", "where", "--subpath", "/a b/c"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "/a%20b/c");
    // A `?` starts the query, as in a URL.
    let (code, out, err) = s.cli(&[
        "fn",
        "test",
        "where",
        "--subpath",
        "/a/b?z=1&w=x y",
        "-q",
        "more=2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "/a/b z=1&w=x+y&more=2");
}

/// A route parameter whose name has `_` reaches a python function under either
/// spelling, as werkzeug reads headers from the WSGI environ
/// (`{user_id}` -> `X-Fission-Params-User-Id`).
#[test]
fn a_python_function_finds_a_parameter_header_with_an_underscore() {
    let s = Server::start();
    s.env("python", "python", 0);
    let code = "from flask import request\ndef main():\n    h = request.headers\n    return '%s|%s|%s' % (h.get('X-Fission-Params-User-Id'), h.get('X-Fission-Params-user_id'), 'X-Fission-Params-User-Id' in h)\n";
    s.function("who", "python", "who.py", code, json!({}));
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "users", "url": "/users/{user_id}", "function": "who"})),
    );
    assert_eq!(s.get("/users/7").text().unwrap(), "7|7|True");
}

/// A runtime of its own (an environment's `command`) that answers plain
/// requests with `plain` and a request to switch to WebSocket with a 101,
/// then sends back the bytes it reads in capitals (no WebSocket framing: the
/// router passes bytes).
const SHOUTING_RUNTIME: &str = r#"
import os, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply(b"")
    def do_GET(self):
        upgrade = self.headers.get("Upgrade")
        if upgrade != "websocket":
            # What reached it of another upgrade, if anything.
            return self.reply(b"plain" + (b" " + upgrade.encode() if upgrade else b""))
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        while True:
            data = self.connection.recv(4096)
            if not data:
                break
            self.connection.sendall(data.upper())
        self.close_connection = True
port = int(os.environ["RUNTIME_PORT"])
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// The shouting function (`SHOUTING_RUNTIME`) on `s`.
fn shouting_function(s: &Server) {
    s.ok(
        "POST",
        "/v1/environments",
        Some(json!({"name": "shouty", "command": ["python3", "-c", SHOUTING_RUNTIME], "poolsize": 1})),
    );
    s.function("shout", "shouty", "unused.txt", "unused", json!({}));
}

/// A connection to the shouting function switched to WebSocket through the
/// router, past the 101.
fn shout_tunnel(s: &Server) -> std::net::TcpStream {
    let (c, head) = upgraded(s, "shout", "");
    assert!(head.contains("upgrade: websocket"), "{head}");
    c
}

/// A WebSocket does not hold the server's stop for its grace: the stop ends
/// it at once (its client connects again once the server is back).
#[test]
fn a_websocket_ends_when_the_server_stops() {
    use std::io::Read;
    let mut s = Server::start_with(&[("FUSION_SHUTDOWN_GRACE_MS", "600000")]);
    shouting_function(&s);
    let mut c = shout_tunnel(&s);
    c.write_all(b"hi").unwrap();
    let mut back = [0u8; 2];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"HI");
    // Within 20 s of SIGTERM, not the ten minutes of grace.
    s.stop();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
}

/// A function may switch protocols (a WebSocket's `Upgrade`) through the
/// router: the 101 reaches the caller and the connection is then the
/// function's both ways, as Fission's router proxies WebSockets.
#[test]
fn a_function_can_switch_protocols_through_the_router() {
    use std::io::Read;
    let s = Server::start();
    shouting_function(&s);
    let plain = s
        .http
        .get(s.router_url("/fission-function/shout"))
        .send()
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.text().unwrap(), "plain");
    // Another upgrade (HTTP/2's `h2c`, offered by curl --http2) is not
    // passed on: the request is answered as HTTP/1.1.
    let h2c = s
        .http
        .get(s.router_url("/fission-function/shout"))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .send()
        .unwrap();
    assert_eq!(h2c.status(), 200);
    assert_eq!(
        h2c.text().unwrap(),
        "plain",
        "the function saw no Upgrade header"
    );
    let mut c = shout_tunnel(&s);
    let open = || {
        let text = s.api("GET", "/metrics").send().unwrap().text().unwrap();
        text.lines()
            .find(|l| l.starts_with("fusion_function_websockets_open{function=\"shout\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(open().as_deref(), Some("1"));
    for word in ["hello", "again"] {
        c.write_all(word.as_bytes()).unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, word.to_uppercase().as_bytes());
    }
    // The caller closes its side: the function's ends too.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    eventually(
        Duration::from_secs(10),
        "the tunnel is counted closed",
        || open().as_deref() == Some("0"),
    );
}

/// A masked client frame (RFC 6455 5.3) with `opcode` and `payload`.
fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A server frame (unmasked, short): its opcode and payload.
fn ws_server_frame(c: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    use std::io::Read;
    let mut head = [0u8; 2];
    c.read_exact(&mut head).unwrap();
    assert_eq!(head[1] & 0x80, 0, "a server frame is not masked");
    let mut payload = vec![0u8; (head[1] & 0x7f) as usize];
    c.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

/// A WebSocket connection to `function` through `s`'s router, past the 101
/// (the handshake of RFC 6455's example).
fn ws_connect(s: &Server, function: &str) -> std::net::TcpStream {
    // The handshake of RFC 6455's example.
    let key = "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (c, head) = upgraded(s, function, key);
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    c
}

/// A connection to `function` through `s`'s router that asked to switch to
/// WebSocket (with `headers` too), past its 101: the connection, and the
/// answer's head in lower case.
fn upgraded(s: &Server, function: &str, headers: &str) -> (std::net::TcpStream, String) {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(s.router.trim_start_matches("http://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!(
        "GET /fission-function/{function} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{headers}\r\n"
    );
    c.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut byte).unwrap();
        assert_eq!(n, 1, "{:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    (c, head)
}

/// A nodejs function serves WebSockets as in Fission's nodejs environment:
/// each connection calls it with (ws, clients), text arrives as a string,
/// and a close is answered, through the router.
#[test]
fn a_nodejs_function_serves_websockets_as_fissions_environment_does() {
    use std::io::Read;
    let s = Server::start();
    s.env("nodejs", "nodejs", 1);
    let code = "module.exports = async function (ws, clients) {\n  ws.on('message', (m) => {\n    for (const c of clients) if (c.readyState === 1) c.send(`${typeof m} ${m.toUpperCase()} to ${clients.size}`);\n  });\n};\n";
    // Connections share an instance (each holds one of its requests).
    s.function(
        "chat",
        "nodejs",
        "chat.js",
        code,
        json!({"requests_per_instance": 10, "concurrency": 1}),
    );
    let mut c = ws_connect(&s, "chat");
    c.write_all(&ws_client_frame(0x1, b"hello")).unwrap();
    assert_eq!(
        ws_server_frame(&mut c),
        (0x1, b"string HELLO to 1".to_vec())
    );
    // A ping is answered with its pong.
    c.write_all(&ws_client_frame(0x9, b"p")).unwrap();
    assert_eq!(ws_server_frame(&mut c), (0xa, b"p".to_vec()));
    // A close is answered with the same code, then the connection ends.
    c.write_all(&ws_client_frame(0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(
        ws_server_frame(&mut c),
        (0x8, 1000u16.to_be_bytes().to_vec())
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // A client gone without a close frame (a closed tab) leaves the
    // function's clients at once (well within the router's 10 s for a
    // connection half-closed).
    let gone = ws_connect(&s, "chat");
    let mut other = ws_connect(&s, "chat");
    gone.shutdown(std::net::Shutdown::Write).unwrap();
    eventually(Duration::from_secs(5), "the gone client is dropped", || {
        other.write_all(&ws_client_frame(0x1, b"hi")).unwrap();
        ws_server_frame(&mut other) == (0x1, b"string HI to 1".to_vec())
    });
    // A text message that is not UTF-8 is closed with 1007, and the
    // connection ends.
    other.write_all(&ws_client_frame(0x1, b"\xff\xfe")).unwrap();
    assert_eq!(
        ws_server_frame(&mut other),
        (
            0x8,
            1007u16
                .to_be_bytes()
                .iter()
                .copied()
                .chain(*b"a text message that is not UTF-8")
                .collect()
        )
    );
    let mut rest = Vec::new();
    other.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // The function still answers plain requests (not as a WebSocket).
    let plain = s
        .http
        .get(s.router_url("/fission-function/chat"))
        .send()
        .unwrap();
    assert_eq!(
        plain.status(),
        500,
        "a function for WebSockets fails a plain call"
    );
}

/// A canary route, as Fission's `function-weights`: each request goes to one
/// of its functions in proportion to their weights; moving the weights moves
/// the traffic, and a function a route still sends requests to stays.
#[test]
fn a_canary_route_shares_its_requests_between_functions_by_weight() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    for v in ["v1", "v2"] {
        s.function(
            v,
            "binary",
            "v.sh",
            &format!("#!/bin/sh\nprintf {v}\n"),
            json!({}),
        );
    }
    let cli_ok = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    let answers = |n: usize| -> std::collections::BTreeMap<String, usize> {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..n {
            let r = s.get("/canary");
            assert_eq!(r.status(), 200);
            *seen.entry(r.text().unwrap()).or_default() += 1;
        }
        seen
    };
    cli_ok(&[
        "route",
        "create",
        "canary",
        "--url",
        "/canary",
        "--function",
        "v1",
        "--weight",
        "100",
        "--function",
        "v2",
        "--weight",
        "0",
    ]);
    assert_eq!(answers(20), [("v1".to_string(), 20)].into());
    cli_ok(&[
        "route",
        "update",
        "canary",
        "--function",
        "v1",
        "--weight",
        "0",
        "--function",
        "v2",
        "--weight",
        "100",
    ]);
    assert_eq!(answers(20), [("v2".to_string(), 20)].into());
    cli_ok(&[
        "route",
        "update",
        "canary",
        "--function",
        "v1",
        "--weight",
        "50",
        "--function",
        "v2",
        "--weight",
        "50",
    ]);
    // Both take requests (200 all to one: 2 in 10^60).
    assert_eq!(answers(200).len(), 2);
    let listed = cli_ok(&["route", "list"]);
    assert!(listed.contains("v1:50,v2:50"), "{listed}");
    let route = s.ok("GET", "/v1/routes/canary", None);
    assert_eq!(
        route["function_weights"],
        json!({"v1": 50, "v2": 50}),
        "{route}"
    );
    assert!(route.get("function").is_none(), "{route}");

    // A function the route may send requests to cannot be deleted.
    let (st, body) = s.call("DELETE", "/v1/functions/v2", None);
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("routes (canary)"),
        "{body}"
    );

    // Weights that do not add up to 100, or a weight without its function.
    let (code, _, err) = s.cli(&[
        "route",
        "update",
        "canary",
        "--function",
        "v1",
        "--weight",
        "50",
        "--function",
        "v2",
        "--weight",
        "60",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("add up to 110; they must add up to 100"),
        "{err}"
    );
    let (code, _, err) = s.cli(&[
        "route",
        "update",
        "canary",
        "--function",
        "v1",
        "--function",
        "v2",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("2 functions and 0 weights"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Back to one function: the weights go.
    cli_ok(&["route", "update", "canary", "--function", "v1"]);
    let route = s.ok("GET", "/v1/routes/canary", None);
    assert_eq!(route["function"], "v1", "{route}");
    assert!(route.get("function_weights").is_none(), "{route}");
    assert_eq!(answers(5), [("v1".to_string(), 5)].into());
}

/// What a function writes reaches `fn logs` escaped: a carriage return and an
/// erase sequence cannot hide the line's instance and stream and show a
/// forged Fusion line, and no escape sequence reaches the terminal.
#[test]
fn fn_logs_shows_a_functions_control_characters_escaped() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    let code = "#!/bin/sh\nprintf '\\r\\033[2K2026-01-01T00:00:00.000Z [0 fusion] forged\\n' >&2\nprintf '\\033]52;c;ZWNobw==\\007clip\\tboard\\n' >&2\necho ok\n";
    s.function("forge", "binary", "forge.sh", code, json!({}));
    assert_eq!(s.get("/fission-function/forge").text().unwrap(), "ok\n");
    let mut log = String::new();
    eventually(Duration::from_secs(20), "the lines reach the log", || {
        let (code, out, err) = s.cli(&["fn", "logs", "forge"]);
        assert_eq!(code, 0, "{err}");
        log = out;
        log.contains("clip")
    });
    assert!(
        !log.contains('\r') && !log.contains('\u{1b}') && !log.contains('\u{7}'),
        "{log:?}"
    );
    let forged = log.lines().find(|l| l.contains("forged")).unwrap();
    assert!(
        forged.contains(" stderr] \\r\\u{1b}[2K2026-01-01"),
        "{forged:?}"
    );
    // A tab stays a tab.
    assert!(log.contains("clip\tboard"), "{log:?}");
}

/// The runtime's own endpoints are Fusion's to call: a caller's request for
/// `/specialize` or `/v2/specialize` below a function (in any spelling the
/// runtimes would still match) never reaches its instance; other paths do.
#[test]
fn a_caller_cannot_reach_an_instances_specialize_endpoint() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    s.function(
        "where",
        "binary",
        "where.sh",
        "#!/bin/sh\nprintf '%s' \"$REQUEST_PATH\"\n",
        json!({}),
    );
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "api", "prefix": "/api", "function": "where"})),
    );
    for path in [
        "/api/v2/specialize",
        "/api/specialize",
        "/api/V2//Specialize/",
        "/api/v2/%73pecialize",
        "/api/v2%2Fspecialize",
        "/api/x/%2e%2e/specialize",
        "/fission-function/where/v2/specialize",
    ] {
        let r = s.http.post(s.router_url(path)).body("{}").send().unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
    assert_eq!(s.get("/api/v2/other").text().unwrap(), "/v2/other");
    let r = s.get("/fission-function/where/v2/other");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "/v2/other");
    let log = s
        .api("GET", "/v1/functions/where/logs")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!log.contains("already specialized"), "{log}");
}

/// A canary release, as Fission's canary-config: the route's requests move to
/// the new function a step each interval while its failures stay under the
/// threshold, until it takes them all; a new function that fails past the
/// threshold sends them all back to the old one.
#[test]
fn a_canary_moves_a_routes_requests_or_rolls_them_back() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    s.function("v1", "binary", "v.sh", "#!/bin/sh\nprintf v1\n", json!({}));
    s.function("v2", "binary", "v.sh", "#!/bin/sh\nprintf v2\n", json!({}));
    s.function("bad", "binary", "v.sh", "#!/bin/sh\nexit 1\n", json!({}));
    let cli_ok = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    for (route, new) in [("good", "v2"), ("worse", "bad")] {
        cli_ok(&[
            "route",
            "create",
            route,
            "--url",
            &format!("/{route}"),
            "--function",
            "v1",
            "--weight",
            "100",
            "--function",
            new,
            "--weight",
            "0",
        ]);
        cli_ok(&[
            "canary-config",
            "create",
            "--name",
            route,
            "--newfunction",
            new,
            "--oldfunction",
            "v1",
            "--httptrigger",
            route,
            "--increment-step",
            "50",
            "--increment-interval",
            "1s",
            "--failure-threshold",
            "10",
        ]);
    }
    let status = |name: &str| s.ok("GET", &format!("/v1/canaries/{name}"), None)["status"].clone();
    assert_eq!(status("good")["status"], "pending");
    // Calls keep coming while the canaries move: each window judges them.
    eventually(Duration::from_secs(60), "both canaries ended", || {
        for route in ["/good", "/worse"] {
            for _ in 0..5 {
                s.get(route);
            }
        }
        status("good")["status"] != "pending" && status("worse")["status"] != "pending"
    });
    let good = status("good");
    assert_eq!(good["status"], "succeeded", "{good}");
    assert_eq!(good["new_weight"], 100, "{good}");
    let route = s.ok("GET", "/v1/routes/good", None);
    assert_eq!(
        route["function_weights"],
        json!({"v1": 0, "v2": 100}),
        "{route}"
    );
    assert_eq!(s.get("/good").text().unwrap(), "v2");

    let worse = status("worse");
    assert_eq!(worse["status"], "failed", "{worse}");
    assert_eq!(worse["new_weight"], 0, "{worse}");
    assert!(
        worse["message"]
            .as_str()
            .unwrap()
            .contains("past the threshold of 10%: every request went back to \"v1\""),
        "{worse}"
    );
    let route = s.ok("GET", "/v1/routes/worse", None);
    assert_eq!(
        route["function_weights"],
        json!({"bad": 0, "v1": 100}),
        "{route}"
    );
    let listed = cli_ok(&["canary-config", "list"]);
    assert!(
        listed.contains("succeeded") && listed.contains("failed"),
        "{listed}"
    );

    // A canary needs a route that shares its requests between the two.
    let (code, _, err) = s.cli(&[
        "canary-config",
        "create",
        "--name",
        "lone",
        "--newfunction",
        "v2",
        "--oldfunction",
        "v1",
        "--httptrigger",
        "nowhere",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("route \"nowhere\" does not exist"), "{err}");
    let (st, body) = s.call(
        "POST",
        "/v1/canaries",
        Some(
            json!({"name": "zero", "trigger": "good", "new_function": "v2",
                    "old_function": "v1", "weight_increment": 0}),
        ),
    );
    assert_eq!(st, 400, "{body}");
    // Between two functions only: a third would be dropped from the route.
    cli_ok(&[
        "route",
        "create",
        "three",
        "--url",
        "/three",
        "--function",
        "v1",
        "--weight",
        "80",
        "--function",
        "v2",
        "--weight",
        "10",
        "--function",
        "bad",
        "--weight",
        "10",
    ]);
    let (code, _, err) = s.cli(&[
        "canary-config",
        "create",
        "--name",
        "three",
        "--newfunction",
        "v2",
        "--oldfunction",
        "v1",
        "--httptrigger",
        "three",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("also shares its requests with \"bad\""),
        "{err}"
    );

    // A canary whose route goes is aborted then, not at the end of its
    // window (an hour here), and moves no route made later under its name;
    // one whose route is given wholly to the new function too, said as such
    // (not as a share the new one lost).
    let ends: [(&str, &[&str], &str); 2] = [
        (
            "slow",
            &["route", "delete", "slow"],
            "route \"slow\" is gone",
        ),
        (
            "whole",
            &["route", "update", "whole", "--function", "v2"],
            "now sends every request to function \"v2\"",
        ),
    ];
    for (name, end, said) in ends {
        let url = format!("/{name}");
        cli_ok(&[
            "route",
            "create",
            name,
            "--url",
            &url,
            "--function",
            "v1",
            "--weight",
            "100",
            "--function",
            "v2",
            "--weight",
            "0",
        ]);
        cli_ok(&[
            "canary-config",
            "create",
            "--name",
            name,
            "--newfunction",
            "v2",
            "--oldfunction",
            "v1",
            "--httptrigger",
            name,
            "--increment-step",
            "10",
            "--increment-interval",
            "1h",
        ]);
        cli_ok(end);
        eventually(Duration::from_secs(20), "the canary is aborted", || {
            status(name)["status"] == "aborted"
        });
        let message = status(name)["message"].as_str().unwrap().to_string();
        assert!(message.contains(said), "{message}");
    }
}

/// A new function that never gets an instance (its code does not load) fails
/// every call it is given: the canary rolls back, as for one that answers
/// 5xx itself; and a second canary cannot move a route one is moving.
#[test]
fn a_canary_rolls_back_a_function_that_does_not_load() {
    let s = Server::start();
    s.env("binary", "binary", 1);
    s.env("python", "python", 1);
    s.function("v1", "binary", "v.sh", "#!/bin/sh\nprintf v1\n", json!({}));
    s.function("broken", "python", "broken.py", "def main(:\n", json!({}));
    s.ok(
        "POST",
        "/v1/routes",
        Some(json!({"name": "r", "url": "/r", "function_weights": {"v1": 100, "broken": 0}})),
    );
    let canary = |name: &str| {
        json!({"name": name, "trigger": "r", "new_function": "broken", "old_function": "v1",
               "weight_increment": 50, "weight_increment_duration": "1s"})
    };
    s.ok("POST", "/v1/canaries", Some(canary("first")));
    let (st, body) = s.call("POST", "/v1/canaries", Some(canary("second")));
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("canary \"first\" is moving route \"r\""),
        "{body}"
    );
    let status = || s.ok("GET", "/v1/canaries/first", None)["status"].clone();
    eventually(Duration::from_secs(60), "the canary ended", || {
        for _ in 0..5 {
            s.get("/r");
        }
        status()["status"] != "pending"
    });
    assert_eq!(status()["status"], "failed", "{}", status());
    let route = s.ok("GET", "/v1/routes/r", None);
    assert_eq!(
        route["function_weights"],
        json!({"broken": 0, "v1": 100}),
        "{route}"
    );
}
