//! Secrets, configmaps and per-function environment variables, seen from
//! outside: a function reads them at Fission's paths, the API never shows a
//! secret's value, nothing under the data directory holds it in the clear, a
//! change reaches the next call, and what cannot work is refused with a reason.

mod common;

use std::path::Path;

use common::Server;
use serde_json::{json, Value};

/// Answers what it can read: its secret, its configmap, its environment
/// variable, and whether `/secrets` holds anything else.
const READER: &str = r#"
import json, os

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return "error: %s" % e.strerror

def main():
    return json.dumps({
        "password": read("/secrets/default/s/password"),
        "greeting": read("/configs/default/c/greeting"),
        "to": os.environ.get("GREETING_TO"),
        "writable": os.access("/secrets/default/s/password", os.W_OK),
    })
"#;

/// A function with no secrets that tries to read another's.
const SNOOP: &str = r#"
import json, os

def main():
    try:
        found = os.listdir("/secrets")
    except OSError as e:
        found = "error: %s" % e.strerror
    try:
        with open("/secrets/default/s/password") as f:
            stolen = f.read()
    except OSError as e:
        stolen = "error: %s" % e.strerror
    return json.dumps({"listing": found, "stolen": stolen})
"#;

const SECRET_V1: &str = "correct-horse-4f1d9a";
const SECRET_V2: &str = "battery-staple-83c2e7";
const GREETING: &str = "hello-plain-5e0b31";

fn call_json(s: &Server, function: &str) -> Value {
    let resp = s.get(&format!("/fission-function/{function}"));
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    assert_eq!(status, 200, "{function}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{function}: {e}: {text}"))
}

/// Every file under `dir` (following no links) that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        let path = e.path();
        if kind.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if kind.is_file() {
            if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn a_function_reads_its_secret_configmap_and_env_var_and_no_one_else_does() {
    let s = Server::start_with(&[("FUSION_BACKEND", "container")]);
    s.env("python", "python", 1);

    let created = s.ok(
        "POST",
        "/v1/secrets",
        Some(json!({"name": "s", "data": {"password": SECRET_V1}})),
    );
    s.ok(
        "POST",
        "/v1/configmaps",
        Some(json!({"name": "c", "data": {"greeting": GREETING}})),
    );
    // The API shows the secret's keys and sizes, never its value: not when it
    // is created, not on get, not in a list.
    let shown = s.ok("GET", "/v1/secrets/s?namespace=default", None);
    let listed = s.ok("GET", "/v1/secrets", None);
    for v in [&created, &shown, &listed] {
        let text = v.to_string();
        assert!(!text.contains(SECRET_V1), "{text}");
        assert!(text.contains("password"), "{text}");
    }
    assert_eq!(shown["keys"], json!(["password"]));
    assert_eq!(shown["sizes"]["password"], SECRET_V1.len());
    assert_eq!(shown["namespace"], "default");
    // A configmap's values are plain and shown.
    let c = s.ok("GET", "/v1/configmaps/c", None);
    assert_eq!(c["data"]["greeting"], GREETING);

    s.function(
        "reader",
        "python",
        "reader.py",
        READER,
        json!({
            "secrets": [{"name": "s"}],
            "configmaps": [{"name": "c", "namespace": "default"}],
            "env_vars": {"GREETING_TO": "world"},
        }),
    );
    s.function("snoop", "python", "snoop.py", SNOOP, json!({}));

    let answer = call_json(&s, "reader");
    assert_eq!(answer["password"], SECRET_V1);
    assert_eq!(answer["greeting"], GREETING);
    assert_eq!(answer["to"], "world");
    assert_eq!(answer["writable"], false);

    // Another function, run while the reader's instance lives, sees no secrets.
    let snooped = call_json(&s, "snoop");
    assert_eq!(snooped["listing"], json!([]), "{snooped}");
    assert!(
        snooped["stolen"].as_str().unwrap().starts_with("error:"),
        "{snooped}"
    );

    // Nothing under the data directory holds the value in the clear (sled's
    // files, logs, bundles), and the key is the owner's alone.
    let leaks = files_holding(s.data_dir(), SECRET_V1.as_bytes());
    assert!(leaks.is_empty(), "the secret is in the clear in {leaks:?}");
    // The search does see the store: a configmap's value, kept plain, is found.
    assert!(!files_holding(s.data_dir(), GREETING.as_bytes()).is_empty());
    let key = s.data_dir().join("secrets.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // An update reaches the next call: the warm instance is retired.
    let before = s.instances("reader")[0]["id"].clone();
    s.ok(
        "PUT",
        "/v1/secrets/s",
        Some(json!({"name": "s", "data": {"password": SECRET_V2}})),
    );
    assert_eq!(call_json(&s, "reader")["password"], SECRET_V2);
    let now: Vec<Value> = s
        .instances("reader")
        .into_iter()
        .filter(|i| i["state"] == "specialized")
        .map(|i| i["id"].clone())
        .collect();
    assert!(!now.contains(&before), "{now:?} still has {before}");
    let fnv = s.ok("GET", "/v1/functions/reader", None);
    assert_eq!(fnv["generation"], 2, "{fnv}");

    // A secret in use cannot be deleted; the answer names who uses it.
    let (status, body) = s.call("DELETE", "/v1/secrets/s", None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reader"),
        "{body}"
    );
    let (status, _) = s.call("DELETE", "/v1/configmaps/c", None);
    assert_eq!(status, 409);

    // A function that names a secret that does not exist is refused.
    let package = s.upload("r.py", READER.as_bytes());
    let (status, body) = s.call(
        "POST",
        "/v1/functions",
        Some(json!({"name": "lost", "env": "python", "package": package,
                    "secrets": [{"name": "nope"}]})),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nope"),
        "{body}"
    );

    // Once no function lists them, they go.
    s.ok("DELETE", "/v1/functions/reader", None);
    s.ok("DELETE", "/v1/secrets/s", None);
    s.ok("DELETE", "/v1/configmaps/c", None);
    let (status, _) = s.call("GET", "/v1/secrets/s", None);
    assert_eq!(status, 404);
}

#[test]
fn bad_secrets_and_configmaps_are_refused_with_400() {
    let s = Server::start_with(&[("FUSION_BACKEND", "process")]);
    for kind in ["secrets", "configmaps"] {
        for key in ["..", ".", "a/b", "../etc", "with space", ""] {
            let (status, body) = s.call(
                "POST",
                &format!("/v1/{kind}"),
                Some(json!({"name": "x", "data": {key: "v"}})),
            );
            assert_eq!(status, 400, "{kind} key {key:?}: {body}");
            assert_eq!(body["error"]["code"], "invalid", "{body}");
        }
        let (status, body) = s.call(
            "POST",
            &format!("/v1/{kind}"),
            Some(json!({"name": "Bad_Name", "data": {}})),
        );
        assert_eq!(status, 400, "{body}");
        let (status, body) = s.call(
            "POST",
            &format!("/v1/{kind}?namespace=a"),
            Some(json!({"name": "x", "namespace": "b", "data": {}})),
        );
        assert_eq!(status, 400, "{body}");
        let (status, body) = s.call(
            "POST",
            &format!("/v1/{kind}"),
            Some(json!({"name": "x", "data": {"k": "x".repeat(1 << 20)}})),
        );
        assert_eq!(status, 413, "{body}");
        let many: serde_json::Map<String, Value> =
            (0..257).map(|i| (format!("k{i}"), json!("v"))).collect();
        let (status, body) = s.call(
            "POST",
            &format!("/v1/{kind}"),
            Some(json!({"name": "x", "data": many})),
        );
        assert_eq!(status, 400, "{body}");
        // A list is not read as the fields in order.
        let (status, body) = s.call(
            "POST",
            &format!("/v1/{kind}"),
            Some(json!(["listed", "default", {"k": "v"}])),
        );
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("send a JSON object"), "{body}");
        // Names are unique per namespace: the same name in another is another.
        s.ok("POST", &format!("/v1/{kind}"), Some(json!({"name": "x"})));
        s.ok(
            "POST",
            &format!("/v1/{kind}?namespace=team"),
            Some(json!({"name": "x"})),
        );
        let (status, _) = s.call("POST", &format!("/v1/{kind}"), Some(json!({"name": "x"})));
        assert_eq!(status, 409);
        let team = s.ok("GET", &format!("/v1/{kind}?namespace=team"), None);
        assert_eq!(team.as_array().unwrap().len(), 1);
        assert_eq!(team[0]["namespace"], "team");
    }
}

/// A configmap is sent back as it was read (its `keys` and `sizes`, which the
/// server keeps, are ignored); a field no view has is still refused. A
/// secret's read has no values: sent back as it is, it is refused rather
/// than taken as "no values".
#[test]
fn a_configmap_is_written_back_as_read_and_a_secrets_read_is_not_taken_as_empty() {
    let s = Server::start_with(&[("FUSION_BACKEND", "process")]);
    s.ok(
        "POST",
        "/v1/configmaps",
        Some(json!({"name": "cm1", "data": {"a": "1"}})),
    );
    let mut read = s.ok("GET", "/v1/configmaps/cm1", None);
    assert!(
        read.get("keys").is_some() && read.get("sizes").is_some(),
        "{read}"
    );
    read["data"]["b"] = json!("22");
    let after = s.ok("PUT", "/v1/configmaps/cm1", Some(read.clone()));
    assert_eq!(after["keys"], json!(["a", "b"]), "{after}");
    assert_eq!(after["sizes"]["b"], 2, "{after}");
    // Sent again unchanged: it says so (and `unchanged` sent back is ignored too).
    let again = s.ok("PUT", "/v1/configmaps/cm1", Some(after.clone()));
    assert_eq!(again["unchanged"], true, "{again}");
    let _ = s.ok("PUT", "/v1/configmaps/cm1", Some(again));
    read["colour"] = json!("blue");
    let (status, body) = s.call("PUT", "/v1/configmaps/cm1", Some(read));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );

    s.ok(
        "POST",
        "/v1/secrets",
        Some(json!({"name": "s1", "data": {"k": "v"}})),
    );
    let read = s.ok("GET", "/v1/secrets/s1", None);
    assert!(read.get("data").is_none(), "{read}");
    let (status, body) = s.call("PUT", "/v1/secrets/s1", Some(read.clone()));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`data`"),
        "{body}"
    );
    assert_eq!(s.ok("GET", "/v1/secrets/s1", None)["keys"], json!(["k"]));
    let mut edited = read;
    edited["data"] = json!({"k": "w", "l": "x"});
    let after = s.ok("PUT", "/v1/secrets/s1", Some(edited));
    assert_eq!(after["keys"], json!(["k", "l"]), "{after}");
}

/// A `?namespace=` or a name that is not a DNS-1123 label is 400 `invalid`
/// on a read and a delete, as on a create: never a 404 for a resource it
/// could not name (packages alike).
#[test]
fn an_invalid_namespace_or_name_is_400_on_reads_and_deletes() {
    let s = Server::start_with(&[("FUSION_BACKEND", "process")]);
    for kind in ["secrets", "configmaps"] {
        s.ok("POST", &format!("/v1/{kind}"), Some(json!({"name": "x"})));
        for (method, path) in [
            ("GET", format!("/v1/{kind}/x?namespace=Bad_NS")),
            ("DELETE", format!("/v1/{kind}/x?namespace=Bad_NS")),
            ("GET", format!("/v1/{kind}/Bad_Name")),
            ("DELETE", format!("/v1/{kind}/Bad_Name")),
            ("GET", "/v1/packages/Bad_Name".to_string()),
            ("DELETE", "/v1/packages/Bad_Name".to_string()),
        ] {
            let (status, body) = s.call(method, &path, None);
            assert_eq!(status, 400, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "invalid", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("not a DNS-1123 label"),
                "{body}"
            );
        }
        s.ok("GET", &format!("/v1/{kind}/x"), None);
    }
}

/// Makes a python environment, a secret `s` and asks for a function `reader`
/// that reads it; answers the API's status and body, and the code's package.
fn create_reader_of_secret(s: &Server) -> (u16, Value, Value) {
    s.env("python", "python", 0);
    s.ok(
        "POST",
        "/v1/secrets",
        Some(json!({"name": "s", "data": {"password": SECRET_V1}})),
    );
    let package = s.upload("r.py", READER.as_bytes());
    let (status, body) = s.call(
        "POST",
        "/v1/functions",
        Some(
            json!({"name": "reader", "env": "python", "package": package,
                    "secrets": [{"name": "s"}]}),
        ),
    );
    (status, body, package)
}

#[test]
fn the_process_backend_refuses_secrets_and_passes_env_vars() {
    let s = Server::start_with(&[("FUSION_BACKEND", "process")]);
    let (status, body, package) = create_reader_of_secret(&s);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_by_backend", "{body}");

    // Environment variables need no files: every backend passes them.
    s.function(
        "greeter",
        "python",
        "g.py",
        "import os\ndef main():\n    return os.environ['GREETING_TO']\n",
        json!({"env_vars": {"GREETING_TO": "world"}}),
    );
    let resp = s.get("/fission-function/greeter");
    assert_eq!(resp.text().unwrap(), "world");
    // So do the other bundled runtimes.
    s.env("nodejs", "nodejs", 0);
    s.function(
        "node-greeter",
        "nodejs",
        "g.js",
        "module.exports = async () => ({ status: 200, body: process.env.GREETING_TO });\n",
        json!({"env_vars": {"GREETING_TO": "node"}}),
    );
    assert_eq!(
        s.get("/fission-function/node-greeter").text().unwrap(),
        "node"
    );
    s.env("binary", "binary", 0);
    s.function(
        "sh-greeter",
        "binary",
        "g.sh",
        "#!/bin/sh\nprintf '%s' \"$GREETING_TO\"\n",
        json!({"env_vars": {"GREETING_TO": "shell"}}),
    );
    assert_eq!(
        s.get("/fission-function/sh-greeter").text().unwrap(),
        "shell"
    );
    for bad in ["1X", "A-B", "RUNTIME_PORT", ""] {
        let (status, body) = s.call(
            "PUT",
            "/v1/functions/greeter",
            Some(
                json!({"name": "greeter", "env": "python", "package": package,
                        "env_vars": {bad: "v"}}),
            ),
        );
        assert_eq!(status, 400, "{bad:?}: {body}");
    }
}

/// A function made with a secret on the container backend, called once the
/// server runs the process backend: the server's set-up, a 503 with the
/// reason, not a 400 that blames the caller (and dead-letters async calls).
#[test]
fn a_function_with_secrets_on_a_server_now_without_containers_answers_503() {
    let mut s = Server::start();
    let (status, body, _) = create_reader_of_secret(&s);
    assert_eq!(status, 201, "{body}");
    s.stop();
    s.set_env("FUSION_BACKEND", "process");
    s.launch();
    let r = s.get("/fission-function/reader");
    assert_eq!(r.status(), 503);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("container backend"),
        "{body}"
    );
}

#[test]
fn the_cli_creates_lists_and_deletes_secrets_and_configmaps() {
    let s = Server::start_with(&[("FUSION_BACKEND", "process")]);
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    std::fs::write(&cert, "CERT-BYTES-2b7e").unwrap();

    let (code, out, err) = s.cli(&[
        "secret",
        "create",
        "--name",
        "s",
        "--from-literal",
        &format!("password={SECRET_V1}"),
        "--from-file",
        cert.to_str().unwrap(),
        "--from-file",
        &format!("ca={}", cert.display()),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains(SECRET_V1) && !out.contains("CERT-BYTES"),
        "{out}"
    );
    let (code, out, err) = s.cli(&["secret", "get", "--name", "s", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["keys"], json!(["ca", "password", "tls.crt"]));
    assert!(!out.contains(SECRET_V1), "{out}");
    let (code, out, _) = s.cli(&["secret", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("password") && !out.contains(SECRET_V1),
        "{out}"
    );

    let (code, _, err) = s.cli(&[
        "secret",
        "update",
        "--name",
        "s",
        "--from-literal",
        "password=new",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = s.ok("GET", "/v1/secrets/s", None);
    assert_eq!(v["keys"], json!(["password"]));
    assert_eq!(v["sizes"]["password"], 3);

    let (code, _, err) = s.cli(&[
        "configmap",
        "create",
        "--name",
        "c",
        "--namespace",
        "team",
        "--from-literal",
        "greeting=hello",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = s.cli(&["configmap", "get", "--name", "c", "--namespace", "team"]);
    assert_eq!(code, 0);
    assert!(out.contains("greeting=hello"), "{out}");

    // Mistakes are one line and a non-zero exit.
    let (code, _, err) = s.cli(&[
        "secret",
        "create",
        "--name",
        "t",
        "--from-literal",
        "novalue",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let (code, _, err) = s.cli(&[
        "secret",
        "create",
        "--name",
        "t",
        "--from-literal",
        "../x=1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not a valid file name"), "{err}");
    let (code, _, err) = s.cli(&["configmap", "get", "--name", "c"]);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");

    // fn create takes them; this backend refuses secrets, and says why.
    let code_file = dir.path().join("g.py");
    std::fs::write(
        &code_file,
        "import os\ndef main():\n    return os.environ['GREETING_TO']\n",
    )
    .unwrap();
    s.env("python", "python", 0);
    let (code, _, err) = s.cli(&[
        "fn",
        "create",
        "--name",
        "g",
        "--env",
        "python",
        "--code",
        code_file.to_str().unwrap(),
        "--secret",
        "s",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("container backend"), "{err}");
    let (code, _, err) = s.cli(&[
        "fn",
        "create",
        "--name",
        "g",
        "--env",
        "python",
        "--code",
        code_file.to_str().unwrap(),
        "--env-var",
        "GREETING_TO=world",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.get("/fission-function/g").text().unwrap(), "world");
    let (code, _, err) = s.cli(&[
        "fn",
        "update",
        "--name",
        "g",
        "--env-var",
        "GREETING_TO=moon",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.get("/fission-function/g").text().unwrap(), "moon");
    // `KEY-` removes it (an empty value would set it to "").
    let (code, _, err) = s.cli(&["fn", "update", "--name", "g", "--env-var", "GREETING_TO-"]);
    assert_eq!(code, 0, "{err}");
    let f = s.ok("GET", "/v1/functions/g", None);
    assert!(f["env_vars"].get("GREETING_TO").is_none(), "{f}");

    let (code, out, err) = s.cli(&["secret", "delete", "--name", "s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted"), "{out}");
    let (code, _, _) = s.cli(&["configmap", "delete", "--name", "c", "--namespace", "team"]);
    assert_eq!(code, 0);
}

/// `-n` (and FUSION_NAMESPACE) pick the namespace of a secret or configmap,
/// as of every other command.
#[test]
fn secrets_and_configmaps_take_the_namespace_as_other_commands() {
    let s = Server::start();
    for kind in ["secret", "configmap"] {
        let (code, out, err) = s.cli(&[
            kind,
            "create",
            "nsx",
            "-n",
            "other",
            "--from-literal",
            "a=b",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, _) = s.cli(&[kind, "list", "-n", "other"]);
        assert_eq!(code, 0);
        assert!(out.contains("nsx"), "{out}");
        let (code, out, _) = s.cli(&[kind, "list"]);
        assert_eq!(code, 0);
        assert!(!out.contains("nsx"), "{out}");
        let (code, _, err) = s.cli(&[kind, "delete", "nsx", "-n", "other"]);
        assert_eq!(code, 0, "{err}");
    }
}

/// `fn update --secret ''` (and `--configmap ''`) takes the function's last
/// one away.
#[test]
fn a_functions_secrets_and_configmaps_can_be_emptied_from_the_cli() {
    let s = Server::start();
    s.env("python", "python", 0);
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("hello.py");
    std::fs::write(&code, "def main():\n    return 'hi'\n").unwrap();
    for kind in ["secret", "configmap"] {
        let (rc, _, err) = s.cli(&[kind, "create", "held", "--from-literal", "a=b"]);
        assert_eq!(rc, 0, "{err}");
    }
    let (rc, _, err) = s.cli(&[
        "fn",
        "create",
        "app",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "--secret",
        "held",
        "--configmap",
        "held",
    ]);
    assert_eq!(rc, 0, "{err}");
    let f = s.ok("GET", "/v1/functions/app", None);
    assert_eq!(f["secrets"][0]["name"], "held", "{f}");
    let (rc, _, err) = s.cli(&["fn", "update", "app", "--secret", "", "--configmap", ""]);
    assert_eq!(rc, 0, "{err}");
    let f = s.ok("GET", "/v1/functions/app", None);
    for field in ["secrets", "configmaps"] {
        assert!(f[field].as_array().is_none_or(Vec::is_empty), "{f}");
    }
    // No longer in use: they can go.
    for kind in ["secret", "configmap"] {
        let (rc, _, err) = s.cli(&[kind, "delete", "held"]);
        assert_eq!(rc, 0, "{err}");
    }
}
