//! The API's guard and the listeners' limits, as a client (or an attacker) meets
//! them: the bearer token, the content-type check, JSON 431/414, the header
//! timeout, the connection cap, plain HTTP refused off loopback, and TLS.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, Server, BIN};
use serde_json::{json, Value};

/// The address part of a listener URL (`http://127.0.0.1:1234` -> `127.0.0.1:1234`).
fn addr(url: &str) -> &str {
    url.split("://").nth(1).unwrap()
}

/// Asserts a 401 with the JSON error and a `WWW-Authenticate: Bearer` challenge.
fn assert_unauthorized(r: reqwest::blocking::Response, what: &str) {
    assert_eq!(r.status(), 401, "{what}");
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "unauthorized", "{what}: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("token"));
}

#[test]
fn every_v1_call_and_metrics_need_the_token_and_health_stays_open() {
    let s = Server::start();
    let calls = [
        ("GET", "/v1/environments"),
        ("POST", "/v1/environments"),
        ("DELETE", "/v1/functions/hello"),
        ("GET", "/v1/workflows"),
        ("GET", "/v1/runs"),
        ("POST", "/v1/runs/abc/cancel"),
        ("GET", "/v1/instances"),
        ("GET", "/metrics"),
        ("GET", "/v1/no-such-endpoint"),
    ];
    let body = json!({"name": "evil", "command": ["sh", "-c", "touch /tmp/pwned"]});
    for (method, path) in calls {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let none = s.http.request(m.clone(), s.api_url(path)).json(&body);
        assert_unauthorized(none.send().unwrap(), &format!("{method} {path} without"));
        let wrong = s
            .http
            .request(m.clone(), s.api_url(path))
            .bearer_auth("0".repeat(64))
            .json(&body);
        assert_unauthorized(wrong.send().unwrap(), &format!("{method} {path} wrong"));
        let basic = s
            .http
            .request(m, s.api_url(path))
            .header("authorization", format!("Basic {}", s.token))
            .json(&body);
        assert_unauthorized(basic.send().unwrap(), &format!("{method} {path} basic"));
    }
    // Nothing was created by the refused POSTs.
    assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        let r = s.http.get(s.api_url(open)).send().unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    let r = s.api("GET", "/metrics").send().unwrap();
    assert_eq!(r.status(), 200);
    // The scheme is case-insensitive, as RFC 7235 has it.
    let r = s
        .http
        .get(s.api_url("/v1/environments"))
        .header("authorization", format!("bearer {}", s.token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The API sends no CORS headers, to a preflight or a call.
    let r = s
        .http
        .request(reqwest::Method::OPTIONS, s.api_url("/v1/environments"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert!(r
        .headers()
        .keys()
        .all(|k| !k.as_str().starts_with("access-control")));
}

#[test]
fn the_token_file_and_the_data_directory_are_private_and_the_same_after_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut s = Server::start();
    let path = s.data_dir().join("token");
    assert_eq!(mode(&path), 0o600);
    // Run records, code, settings and logs are the API's to give, behind the
    // token: no other local user reads them off the disk.
    assert_eq!(mode(s.data_dir()), 0o700);
    let first = s.token.clone();
    assert_eq!(first.len(), 64);
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
    s.stop();
    // A directory opened up (or made by an earlier version) is made private again.
    std::fs::set_permissions(s.data_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s.launch();
    assert_eq!(mode(s.data_dir()), 0o700);
    assert_eq!(s.token, first);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
}

#[test]
fn a_cross_site_style_text_plain_post_gets_415_and_creates_nothing() {
    let s = Server::start();
    // What a web page can send without a preflight, here even with the token.
    let body = r#"{"name": "evil", "command": ["sh", "-c", "exit 0"]}"#;
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = s.api("POST", "/v1/environments").body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), 415, "{ct:?}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.ends_with("send it with `Content-Type: application/json`"),
            "{v}"
        );
        // curl's -d labels a body as a form: said, for whoever typed it.
        assert_eq!(
            message.contains("curl labels"),
            ct == Some("application/x-www-form-urlencoded"),
            "{v}"
        );
    }
    assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
    // A call with no function named says how to name one.
    let r = s
        .http
        .get(s.router_url("/fission-function/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("no function named: call /fission-function/<name>"),
        "{v}"
    );
    // A workflow document as text/plain is refused too; as YAML it is stored.
    let yaml = "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n";
    let r = s
        .api("POST", "/v1/workflows?name=w")
        .header("content-type", "text/plain")
        .body(yaml)
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(s.ok("GET", "/v1/workflows", None), json!([]));
    s.workflow("w", yaml);
    // Charset parameters and case do not matter.
    let (st, _) = {
        let r = s
            .api("POST", "/v1/environments")
            .header("content-type", "Application/JSON; charset=utf-8")
            .body(r#"{"name": "python", "runtime": "python", "poolsize": 0}"#)
            .send()
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(st, 201);
}

/// A body with a content encoding is refused, not read as garbage or, worse,
/// as plain JSON that merely says it is compressed.
#[test]
fn a_body_with_a_content_encoding_gets_415_and_creates_nothing() {
    let s = Server::start();
    let r = s
        .api("POST", "/v1/environments")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(r#"{"name": "python", "runtime": "python", "poolsize": 0}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`Content-Encoding: gzip`"),
        "{v}"
    );
    assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
}

/// A JSON body that names a key twice is refused (a reader keeping the last
/// one would act on what the sender may not have meant), with its place.
#[test]
fn a_body_naming_a_key_twice_gets_400_and_creates_nothing() {
    let s = Server::start();
    let r = s
        .api("POST", "/v1/environments")
        .header("content-type", "application/json")
        .body("{\"name\": \"python\",\n \"name\": \"other\", \"runtime\": \"python\"}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("line 2") && message.contains("the key \"name\" is given twice"),
        "{v}"
    );
    assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
}

/// A query parameter an endpoint does not take is a 400 that names the ones
/// it does: a mistyped `namespace` must not act on the default namespace.
#[test]
fn an_unknown_query_parameter_gets_400_and_does_nothing() {
    let s = Server::start();
    s.env("python", "python", 0);
    s.function(
        "dup",
        "python",
        "hello.py",
        "def main():\n    return 'x'\n",
        json!({}),
    );
    let r = s
        .api("DELETE", "/v1/functions/dup?namepsace=other")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "invalid_query", "{v}");
    assert_eq!(
        v["error"]["message"],
        "unknown query parameter `namepsace`: expected one of `namespace`, `if_unused`",
        "{v}"
    );
    s.ok("GET", "/v1/functions/dup", None);
    // The documented one is taken, spelled in any way a URL may spell it.
    let r = s
        .api("GET", "/v1/functions/dup?%6Eamespace=default")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s.api("GET", "/v1/version?verbose=1").send().unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(
        v["error"]["message"],
        "unknown query parameter `verbose`: this endpoint takes no query parameters",
        "{v}"
    );
    // An invocation's query is its function's input: any is passed on.
    let r = s
        .api("GET", "/v1/functions/dup/invoke?anything=1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Sends `head` on a fresh connection and answers the status and JSON body.
fn raw_request(address: &str, head: &str) -> (u16, Value) {
    let mut c = TcpStream::connect(address).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn huge_headers_get_a_json_431_and_a_huge_uri_a_json_414_on_both_listeners() {
    let s = Server::start();
    for listener in [&s.api, &s.router] {
        let big = "a".repeat(100 * 1024);
        let (status, v) = raw_request(
            addr(listener),
            &format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(status, 431, "{listener}: {v}");
        assert_eq!(v["error"]["code"], "headers_too_large", "{v}");

        let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
        let (status, v) = raw_request(
            addr(listener),
            &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n"),
        );
        assert_eq!(status, 431, "{listener}: {v}");
        assert_eq!(v["error"]["code"], "headers_too_large", "{v}");

        let long = "a".repeat(20 * 1024);
        let (status, v) = raw_request(
            addr(listener),
            &format!("GET /healthz?q={long} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 414, "{listener}: {v}");
        assert_eq!(v["error"]["code"], "uri_too_long", "{v}");
    }
}

#[test]
fn a_method_an_endpoint_does_not_take_gets_a_json_405_naming_what_it_takes() {
    let s = Server::start();
    // The API's own endpoints, the engine's and the health check alike.
    for (method, path, allowed) in [
        ("GET", "/v1/runs/x/cancel", "POST"),
        ("DELETE", "/v1/runs", "GET"),
        ("PATCH", "/v1/functions", "GET"),
        ("PUT", "/healthz", "GET"),
    ] {
        let r = s
            .http
            .request(method.parse().unwrap(), format!("{}{path}", s.api))
            .bearer_auth(&s.token)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        let allow = r.headers()["allow"].to_str().unwrap().to_string();
        assert!(allow.contains(allowed), "{method} {path}: allow {allow}");
        let v: Value = r.json().unwrap();
        assert_eq!(
            v["error"]["code"], "method_not_allowed",
            "{method} {path}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(path), "{message}");
    }
}

#[test]
fn a_request_that_is_not_http_gets_a_json_400_on_both_listeners() {
    let s = Server::start();
    for listener in [&s.api, &s.router] {
        for head in [
            "GET /healthz HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n",
            "GET /healthz HTTP/7.0\r\nHost: x\r\n\r\n",
            "G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            // As curl sends `?q="x"`: the message says to percent-encode.
            "GET /healthz?q=\"x\" HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (status, v) = raw_request(addr(listener), head);
            assert_eq!(status, 400, "{listener} {head:?}: {v}");
            assert_eq!(v["error"]["code"], "malformed_request", "{head:?}: {v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains("percent-encoded"), "{message}");
        }
        // A bad request after a good one on the same connection: the good one is
        // answered (200 on the API, the router's 404 without routes), then the
        // JSON 400.
        let mut c = TcpStream::connect(addr(listener)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nbroken\r\n\r\n",
        )
        .unwrap();
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        let first = if listener == &s.api { "200" } else { "404" };
        assert!(
            text.starts_with(&format!("HTTP/1.1 {first} ")),
            "{listener}: {text}"
        );
        let (_, second) = text
            .split_once("HTTP/1.1 400 ")
            .unwrap_or_else(|| panic!("{listener}: no 400 in {text}"));
        let body = second.split_once("\r\n\r\n").unwrap().1;
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "malformed_request", "{v}");
    }
}

/// Reads until the server closes the connection; how long that took.
fn wait_closed(c: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("the server did not close the connection within {limit:?}: {e}"),
        }
    }
}

#[test]
fn a_slow_loris_connection_is_closed_after_the_header_timeout_while_others_are_answered() {
    let s = Server::start_with(&[("FUSION_HEADER_TIMEOUT_MS", "1000")]);
    let mut slow = TcpStream::connect(addr(&s.api)).unwrap();
    let opened = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Others are answered while it dawdles.
    for _ in 0..5 {
        assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
    }
    slow.write_all(b"X-Slow: 1\r\n").unwrap();
    wait_closed(&mut slow, Duration::from_secs(20));
    assert!(opened.elapsed() >= Duration::from_millis(900));

    // An idle keep-alive connection is closed after the same bound.
    let mut idle = TcpStream::connect(addr(&s.router)).unwrap();
    idle.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    let waited = wait_closed(&mut idle, Duration::from_secs(20));
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}

#[test]
fn past_the_connection_cap_new_connections_are_closed_and_the_other_listener_answers() {
    let s = Server::start_with(&[
        ("FUSION_MAX_CONNECTIONS", "8"),
        ("FUSION_HEADER_TIMEOUT_MS", "60000"),
    ]);
    // The router's connections fill its cap (each is served: it sent a request).
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(addr(&s.router)).unwrap();
        c.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(c.read(&mut buf).unwrap() > 0);
        held.push(c);
    }
    // The ninth is accepted and closed at once, without an answer.
    let mut extra = TcpStream::connect(addr(&s.router)).unwrap();
    let _ = extra.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = Vec::new();
    extra
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = extra.read_to_end(&mut text);
    assert!(text.is_empty(), "{:?}", String::from_utf8_lossy(&text));
    // The API listener has its own cap and answers.
    assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
    // Once some close, the router takes connections again.
    drop(held);
    eventually(Duration::from_secs(10), "the router answers again", || {
        s.http
            .get(s.router_url("/nothing"))
            .send()
            .is_ok_and(|r| r.status() == 404)
    });
}

/// Whether the server still holds `c` open (a read would block).
fn still_open(c: &mut TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let open = matches!(c.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    c.set_nonblocking(false).unwrap();
    open
}

#[test]
fn a_flood_of_idle_connections_to_the_router_leaves_the_api_and_instances_working() {
    // The default cap, from an open-file limit of 1024: (1024 - 256) / 4 = 192.
    const CAP: usize = 192;
    let s = Server::start_limited(Some(1024), &[("FUSION_HEADER_TIMEOUT_MS", "120000")]);
    let mut flood = Vec::new();
    for _ in 0..1500 {
        if let Ok(c) =
            TcpStream::connect_timeout(&addr(&s.router).parse().unwrap(), Duration::from_secs(2))
        {
            flood.push(c);
        }
    }
    assert!(flood.len() > 1100, "only {} connected", flood.len());
    // Past the cap, the server closes them at once; the rest it holds.
    eventually(
        Duration::from_secs(20),
        "the router holds at most its cap",
        || flood.iter_mut().map(still_open).filter(|o| *o).count() <= CAP,
    );
    // While the router is full, the API answers and a new instance starts (the
    // server has descriptors left for its pipes and sockets).
    s.env("python", "python", 1);
    eventually(Duration::from_secs(20), "the pool instance runs", || {
        s.instance_pids().len() == 1
    });
    s.function(
        "hello",
        "python",
        "hello.py",
        "def main():\n    return 'hi'\n",
        json!({}),
    );
    let r = s.api("GET", "/v1/functions/hello/invoke").send().unwrap();
    assert_eq!((r.status().as_u16(), r.text().unwrap()), (200, "hi".into()));
    let held = flood.iter_mut().map(still_open).filter(|o| *o).count();
    assert_eq!(held, CAP, "the router's cap was full all along");
    // Once the flood goes, the router answers again.
    drop(flood);
    eventually(Duration::from_secs(10), "the router answers again", || {
        s.http
            .get(s.router_url("/fission-function/hello"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
}

#[test]
fn plain_http_off_loopback_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args([
            "--router-listen",
            "0.0.0.0:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .env_remove("FUSION_ALLOW_INSECURE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("0.0.0.0:0") && err.contains("--tls-cert") && err.contains("--allow-insecure"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert!(!tmp.path().join("data").exists(), "nothing is created");

    // Allowed explicitly, it starts.
    let allowed = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(tmp.path().join("data2"))
        .args([
            "--router-listen",
            "0.0.0.0:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .env("FUSION_ALLOW_INSECURE", "true")
        .env("FUSION_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut allowed = KillOnDrop(allowed);
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(allowed.0.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(
        line.starts_with("fusion listening router=http://0.0.0.0:"),
        "{line}"
    );
    common::signal(allowed.0.id(), libc::SIGTERM);
    assert!(allowed.0.wait().unwrap().success());
}

/// A child killed on every path out of a test, a failed assertion included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.pem())
}

#[test]
fn tls_serves_both_listeners_end_to_end() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, pem) = self_signed(certs.path());
    let s = Server::start_with(&[
        ("FUSION_TLS_CERT", cert.to_str().unwrap()),
        ("FUSION_TLS_KEY", key.to_str().unwrap()),
    ]);
    assert!(s.api.starts_with("https://"), "{}", s.api);
    assert!(s.router.starts_with("https://"), "{}", s.router);
    let trusting = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = trusting.get(s.api_url("/healthz")).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = trusting
        .post(s.api_url("/v1/environments"))
        .bearer_auth(&s.token)
        .json(&json!({"name": "binary", "runtime": "binary", "poolsize": 0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = trusting
        .get(s.router_url("/fission-function/none"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "not_found");
    // A client that does not trust the certificate, or speaks plain HTTP, gets nothing.
    assert!(s.http.get(s.api_url("/healthz")).send().is_err());
    let plain = s.api_url("/healthz").replace("https://", "http://");
    assert!(s
        .http
        .get(plain)
        .send()
        .map_or(true, |r| !r.status().is_success()));
    // The CLI, told to trust the certificate.
    let out = Command::new(BIN)
        .args(["env", "list", "-o", "json"])
        .env("FUSION_URL", &s.api)
        .env("FUSION_TOKEN", &s.token)
        .env("FUSION_CA_CERT", &cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"binary\""), "{text}");
    // Without it, or by http://, the CLI says what to do in one line.
    for (url, ca, says) in [
        (s.api.clone(), None, "--cacert or FUSION_CA_CERT"),
        (
            s.api.replace("https://", "http://"),
            Some(&cert),
            "it answers TLS: use its https:// address",
        ),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(["env", "list"])
            .env("FUSION_URL", &url)
            .env("FUSION_TOKEN", &s.token)
            .env_remove("FUSION_CA_CERT");
        if let Some(ca) = ca {
            cmd.env("FUSION_CA_CERT", ca);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{url}: {err}");
    }
}

#[test]
fn the_cli_finds_the_token_in_the_data_dir_and_says_what_to_do_without_it() {
    let s = Server::start();
    s.env("python", "python", 0);
    let cli_with = |cwd: &std::path::Path,
                    data_dir: Option<&std::path::Path>,
                    token: Option<&str>,
                    token_file: Option<&std::path::Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["env", "list"])
            .current_dir(cwd)
            .env("FUSION_URL", &s.api)
            .env_remove("FUSION_TOKEN")
            .env_remove("FUSION_TOKEN_FILE")
            .env_remove("FUSION_DATA_DIR");
        if let Some(f) = token_file {
            cmd.env("FUSION_TOKEN_FILE", f);
        }
        if let Some(d) = data_dir {
            cmd.env("FUSION_DATA_DIR", d);
        }
        if let Some(t) = token {
            cmd.env("FUSION_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cli = |cwd: &std::path::Path, data_dir: Option<&std::path::Path>, token: Option<&str>| {
        cli_with(cwd, data_dir, token, None)
    };
    let elsewhere = tempfile::tempdir().unwrap();
    // From FUSION_DATA_DIR.
    let (code, out, err) = cli(elsewhere.path(), Some(s.data_dir()), None);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("python"), "{out}");
    // From the file FUSION_TOKEN_FILE names, as the server's --token-file.
    let file = s.data_dir().join("token");
    let (code, out, err) = cli_with(elsewhere.path(), None, None, Some(&file));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("python"), "{out}");
    // From ./.fusion, the default data dir, when run where the server runs.
    let here = tempfile::tempdir().unwrap();
    std::fs::create_dir(here.path().join(".fusion")).unwrap();
    std::fs::copy(
        s.data_dir().join("token"),
        here.path().join(".fusion/token"),
    )
    .unwrap();
    let (code, out, err) = cli(here.path(), None, None);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("python"), "{out}");
    // Neither: one clear line.
    let (code, _, err) = cli(elsewhere.path(), None, None);
    assert_eq!(code, Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("401")
            && err.contains("set FUSION_TOKEN, or FUSION_DATA_DIR to the server's data dir"),
        "{err}"
    );
    // A wrong one: one clear line too.
    let (code, _, err) = cli(elsewhere.path(), None, Some("not-the-token"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("refused the token") && err.contains("FUSION_TOKEN"),
        "{err}"
    );
}

#[test]
fn fn_test_through_the_api_does_not_hand_the_token_to_the_function() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    s.function(
        "whoami",
        "binary",
        "whoami.sh",
        "#!/bin/sh\nprintf 'auth=%s' \"$HTTP_AUTHORIZATION\"\n",
        json!({}),
    );
    let (code, out, err) = s.cli(&["fn", "test", "--name", "whoami"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "auth=");
    // A header meant for the function still reaches it.
    let (code, out, err) = s.cli(&[
        "fn",
        "test",
        "--name",
        "whoami",
        "-H",
        "Authorization: Basic dXNlcjpwdw==",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "auth=Basic dXNlcjpwdw==");
}

/// A function pod's fetcher pulls code with its own credential, not the admin
/// token: the path is open to it, and the endpoint itself refuses anything but
/// a pod's credential (this server runs no pods, so every credential is unknown).
#[test]
fn a_pod_package_fetch_needs_a_pod_credential_not_the_admin_token() {
    let s = Server::start();
    let path = format!("/v1/pod-packages/{}", "a".repeat(64));
    let plain = reqwest::blocking::Client::new();
    for (what, req) in [
        ("no credential", plain.get(s.api_url(&path))),
        (
            "the admin token",
            plain.get(s.api_url(&path)).bearer_auth(&s.token),
        ),
        ("a guess", plain.get(s.api_url(&path)).bearer_auth("guess")),
    ] {
        let r = req.send().unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], "unauthorized", "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("credential") && !message.contains("data dir"),
            "{what}: the admin guard answered, not the endpoint: {message}"
        );
    }
}

/// `--backend kubernetes` on a build without the feature is one clear line,
/// and with it, from outside a cluster, so is a missing `--fusion-api-url`.
#[test]
fn the_kubernetes_backend_says_what_it_needs_in_one_line() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["server", "--backend", "kubernetes", "--data-dir"])
        .arg(data.path())
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
        ])
        .env_remove("POD_NAMESPACE")
        .env_remove("FUSION_API_URL_FOR_PODS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    let expected = if cfg!(feature = "kubernetes") {
        "needs --fusion-api-url"
    } else {
        "build it with `cargo build --features kubernetes`"
    };
    assert!(error[0].contains(expected), "{stderr}");
}

/// A body that stops arriving is given up with a JSON 408, with the token
/// and without (a callback URL needs none), and the server answers others
/// meanwhile.
#[test]
fn a_request_body_that_stops_arriving_gets_a_json_408() {
    let s = Server::start_with(&[("FUSION_BODY_IDLE_TIMEOUT_MS", "500")]);
    for (path, auth) in [
        (
            "/v1/environments",
            format!("Authorization: Bearer {}\r\n", s.token),
        ),
        ("/v1/callbacks/bogus", String::new()),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"name\":"
        );
        let (status, body) = raw_request(addr(&s.api), &head);
        assert_eq!(status, 408, "{path}: {body}");
        assert_eq!(body["error"]["code"], "request_timeout", "{path}: {body}");
    }
    assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
}

/// Settings a server cannot run with are one clear line and a non-zero exit
/// before anything starts: both listeners on one address, a body limit of 0.
#[test]
fn settings_a_server_cannot_run_with_are_one_line() {
    let data = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            &[
                "--router-listen",
                "127.0.0.1:18499",
                "--api-listen",
                "127.0.0.1:18499",
            ][..],
            "the router and the API need an address each",
        ),
        (&["--body-limit", "0"][..], "--body-limit"),
    ] {
        let out = Command::new(BIN)
            .args(["server", "--backend", "process", "--data-dir"])
            .arg(data.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error.len(), 1, "{stderr}");
        assert!(error[0].contains(expected), "{stderr}");
    }
}

/// Every API body has one limit, 16 MiB: past it the answer is a JSON 413
/// naming it, below it the handler reads the body (a cancel's too).
#[test]
fn an_api_body_past_16_mib_gets_a_json_413_naming_the_limit_and_one_below_is_read() {
    let s = Server::start();
    let post = |path: &str, body: Vec<u8>| {
        let r = s
            .api("POST", path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let json = r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json");
        (status, json, r.text().unwrap())
    };
    // 3 MiB: past axum's default of 2 MB, well within the API's.
    let three =
        |fields: &str| format!(r#"{{{fields}"reason": "{}"}}"#, "x".repeat(3 << 20)).into_bytes();
    let (status, json, text) = post("/v1/runs/nosuch/cancel", three(""));
    assert_eq!((status, json), (404, true), "{text}");
    let (status, json, text) = post("/v1/environments", three(r#""name": "e", "#));
    assert_eq!((status, json), (400, true), "{text}");
    assert!(text.contains("reason"), "{text}");
    let big =
        |fields: &str| format!(r#"{{{fields}"reason": "{}"}}"#, "x".repeat(17 << 20)).into_bytes();
    for (path, fields) in [
        ("/v1/runs/nosuch/cancel", ""),
        ("/v1/environments", r#""name": "e", "#),
        ("/v1/timers", r#""name": "t", "#),
        ("/v1/declared/timetriggers", r#""name": "t", "#),
    ] {
        let (status, json, text) = post(path, big(fields));
        assert_eq!((status, json), (413, true), "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large", "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("larger than the limit of 16777216 bytes (16 MiB)"),
            "{path}: {v}"
        );
    }
}
