//! Named packages with a build step, seen from outside: the real server on the
//! container backend builds a python source whose requirements.txt installs a
//! wheel vendored in the source, and a nodejs source whose package.json needs
//! a tarball vendored in it (no network: pip `--no-index --find-links`, npm
//! `file:`); functions run what was built; a failed build answers
//! `package_build_failed` and `fusion pkg logs` shows pip's message; the same
//! source is not built twice.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::probe::Probe;
use common::{eventually, Server};
use serde_json::Value;
use sha2::Digest;

const GREETING: &str = "hello from a vendored wheel";

/// A python source: main.py answering `prefix + GREETING`, the vendored wheel,
/// and a requirements.txt asking for `requirement` from it.
fn python_source(dir: &Path, prefix: &str, requirement: &str) {
    std::fs::create_dir_all(dir).unwrap();
    common::vendored::wheel(
        &dir.join("wheels"),
        "hellodep",
        &format!("GREETING = {GREETING:?}\n"),
    );
    std::fs::write(
        dir.join("requirements.txt"),
        format!("--no-index\n--find-links ./wheels\n{requirement}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("main.py"),
        format!(
            "import hellodep\n\ndef main():\n    return {prefix:?} + hellodep.GREETING + '\\n'\n"
        ),
    )
    .unwrap();
}

/// An environment whose instances and builds have no network but loopback:
/// nothing can be downloaded.
fn offline_env(s: &Server, name: &str, runtime: &str) {
    s.ok(
        "POST",
        "/v1/environments",
        Some(
            serde_json::json!({"name": name, "runtime": runtime, "poolsize": 1, "network": "none"}),
        ),
    );
}

fn cli_ok(s: &Server, args: &[&str]) -> String {
    let (code, out, err) = s.cli(args);
    assert_eq!(code, 0, "fusion {}: {out}{err}", args.join(" "));
    out
}

fn package(s: &Server, name: &str) -> Value {
    s.ok("GET", &format!("/v1/packages/{name}"), None)
}

/// Waits until the package's build has ended; answers the package.
fn built(s: &Server, name: &str) -> Value {
    let mut last = Value::Null;
    eventually(
        Duration::from_secs(300),
        &format!("package {name} built"),
        || {
            last = package(s, name);
            !matches!(
                last["status"]["buildstatus"].as_str(),
                Some("pending" | "running")
            )
        },
    );
    last
}

fn call(s: &Server, function: &str) -> (u16, String) {
    let r = s.get(&format!("/fission-function/{function}"));
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn a_python_source_installs_its_vendored_wheel_once_and_runs_the_build() {
    let s = Server::start();
    offline_env(&s, "python", "python");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    python_source(&src, "", "hellodep==1.0");
    let src_arg = src.to_str().unwrap();

    let out = cli_ok(
        &s,
        &[
            "pkg", "create", "--name", "pydemo", "--env", "python", "--src", src_arg,
        ],
    );
    assert!(out.contains("pydemo"), "{out}");
    let p = built(&s, "pydemo");
    assert_eq!(p["status"]["buildstatus"], "succeeded", "{p}");
    let log = p["status"]["buildlog"].as_str().unwrap();
    assert!(log.contains("Successfully installed hellodep-1.0"), "{log}");
    assert!(p["status"].get("cached").is_none(), "{p}");

    cli_ok(
        &s,
        &[
            "fn",
            "create",
            "--name",
            "pyfn",
            "--env",
            "python",
            "--pkg",
            "pydemo",
            "--entrypoint",
            "main.main",
        ],
    );
    assert_eq!(call(&s, "pyfn"), (200, format!("{GREETING}\n")));

    // The same source again: not built a second time.
    cli_ok(
        &s,
        &[
            "pkg", "create", "--name", "pycopy", "--env", "python", "--src", src_arg,
        ],
    );
    let copy = built(&s, "pycopy");
    assert_eq!(copy["status"]["buildstatus"], "succeeded", "{copy}");
    assert_eq!(copy["status"]["cached"], true, "{copy}");
    assert_eq!(copy["status"]["built"], p["status"]["built"]);
    let logs = cli_ok(&s, &["pkg", "logs", "--name", "pycopy"]);
    assert!(
        logs.starts_with("cached: reused the earlier build"),
        "{logs}"
    );
    assert!(!logs.contains("pip"), "{logs}");
    // As JSON: an object a line, as `fn logs` prints them.
    let json = cli_ok(&s, &["pkg", "logs", "--name", "pycopy", "-o", "json"]);
    let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert!(
        first["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cached: reused the earlier build")),
        "{json}"
    );
    // A rebuild does build again.
    let out = cli_ok(&s, &["pkg", "rebuild", "--name", "pycopy"]);
    assert!(out.contains("pending"), "{out}");
    let rebuilt = built(&s, "pycopy");
    assert_eq!(rebuilt["status"]["buildstatus"], "succeeded", "{rebuilt}");
    assert!(rebuilt["status"].get("cached").is_none(), "{rebuilt}");
    assert!(
        rebuilt["status"]["buildlog"]
            .as_str()
            .unwrap()
            .contains("Successfully installed"),
        "{rebuilt}"
    );

    // Changed code reaches the function: its instances are replaced.
    python_source(&src, "v2: ", "hellodep==1.0");
    cli_ok(&s, &["pkg", "update", "--name", "pydemo", "--src", src_arg]);
    assert_eq!(built(&s, "pydemo")["status"]["buildstatus"], "succeeded");
    assert_eq!(call(&s, "pyfn"), (200, format!("v2: {GREETING}\n")));

    // A package in use cannot be deleted; an unused one can.
    let (code, _, err) = s.cli(&["pkg", "delete", "--name", "pydemo"]);
    assert_ne!(code, 0);
    assert!(err.contains("used by functions pyfn"), "{err}");
    let (status, body) = s.call("DELETE", "/v1/packages/pydemo", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    // Nor can its environment, and the refusal names all that holds it.
    let (status, body) = s.call("DELETE", "/v1/environments/python", None);
    assert_eq!(status, 409, "{body}");
    let m = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("functions pyfn and packages pycopy, pydemo"),
        "{m}"
    );
    cli_ok(&s, &["pkg", "delete", "--name", "pycopy"]);
    let list = cli_ok(&s, &["pkg", "list"]);
    assert!(
        list.contains("pydemo") && !list.contains("pycopy"),
        "{list}"
    );
}

#[test]
fn a_failed_build_answers_a_clear_error_until_the_source_is_fixed() {
    let s = Server::start();
    s.env("python", "python", 1);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    python_source(&src, "fixed: ", "nosuchdep==9.9");
    let src_arg = src.to_str().unwrap();
    cli_ok(
        &s,
        &[
            "pkg", "create", "--name", "broken", "--env", "python", "--src", src_arg,
        ],
    );
    cli_ok(
        &s,
        &[
            "fn",
            "create",
            "--name",
            "brokenfn",
            "--env",
            "python",
            "--pkg",
            "broken",
            "--entrypoint",
            "main.main",
        ],
    );
    // The call waits for the build, then says what failed.
    let (status, body) = call(&s, "brokenfn");
    assert_eq!(status, 424, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "package_build_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"broken\""), "{message}");
    assert!(
        message.contains("fusion pkg logs --name broken"),
        "{message}"
    );

    // A workflow's task gets the same answer, and does not retry it: the
    // build must be fixed first.
    s.workflow(
        "usesbroken",
        "apiVersion: 1\noutput: T\ntasks:\n  T:\n    run: brokenfn\n    retry:\n      maxAttempts: 4\n      backoff: {initial: 10ms, max: 50ms, multiplier: 2}\n",
    );
    let (status, body) = s.invoke("usesbroken", "text/plain", "");
    assert_eq!(status, 424, "{body}");
    assert!(body.contains("package_build_failed"), "{body}");
    let runs = s.ok("GET", "/v1/runs?workflow=usesbroken", None);
    let run = s.run(runs["runs"][0]["id"].as_str().unwrap());
    assert_eq!(run["tasks"][0]["attempts"], 1, "{run}");

    let logs = cli_ok(&s, &["pkg", "logs", "--name", "broken"]);
    assert!(
        logs.contains("No matching distribution found for nosuchdep==9.9"),
        "{logs}"
    );
    let info = cli_ok(&s, &["pkg", "info", "--name", "broken"]);
    assert!(info.contains("failed"), "{info}");
    assert!(info.contains("nosuchdep"), "{info}");
    // The name may come first, as for functions and environments.
    assert_eq!(cli_ok(&s, &["pkg", "info", "broken"]), info);

    python_source(&src, "fixed: ", "hellodep==1.0");
    cli_ok(&s, &["pkg", "update", "--name", "broken", "--src", src_arg]);
    let p = built(&s, "broken");
    assert_eq!(p["status"]["buildstatus"], "succeeded", "{p}");
    assert_eq!(call(&s, "brokenfn"), (200, format!("fixed: {GREETING}\n")));

    // A rebuild that fails takes nothing down: the function keeps running the
    // last good build, and `pkg info` says so.
    python_source(&src, "broken again: ", "nosuchdep==9.9");
    cli_ok(&s, &["pkg", "update", "--name", "broken", "--src", src_arg]);
    let p = built(&s, "broken");
    assert_eq!(p["status"]["buildstatus"], "failed", "{p}");
    assert_eq!(call(&s, "brokenfn"), (200, format!("fixed: {GREETING}\n")));
    let info = cli_ok(&s, &["pkg", "info", "--name", "broken"]);
    assert!(info.contains("keep running the last good build"), "{info}");
    // Builds are counted by outcome: two failed, one succeeded.
    let text = s.api("GET", "/metrics").send().unwrap().text().unwrap();
    assert!(
        text.lines()
            .any(|l| l == r#"fusion_package_builds_total{outcome="failed"} 2"#),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"fusion_package_builds_total{outcome="succeeded"} 1"#),
        "{text}"
    );
    // While it builds again, what it built last is what `pkg getdeploy` and
    // `fn get --code` give, and what runs: on the function's running
    // instance, and on a new one (a function made meanwhile has none), which
    // does not wait for the build.
    let gate = Probe::start();
    let held = format!(
        "echo halfway-there && {} && cp -r ${{SRC_PKG}} ${{DEPLOY_PKG}}",
        gate.curl("/gate/rebuild")
    );
    std::fs::write(
        src.join("main.py"),
        "def main():\n    return 'rebuilt\\n'\n",
    )
    .unwrap();
    cli_ok(
        &s,
        &[
            "pkg",
            "update",
            "--name",
            "broken",
            "--src",
            src_arg,
            "--buildcmd",
            &held,
        ],
    );
    eventually(Duration::from_secs(30), "the rebuild runs", || {
        package(&s, "broken")["status"]["buildstatus"] == "running"
    });
    // Its log shows what it wrote so far, while it runs.
    eventually(
        Duration::from_secs(30),
        "the log shows the build's output",
        || {
            let (code, out, _) = s.cli(&["pkg", "logs", "--name", "broken"]);
            code == 0 && out.contains("build of package broken") && out.contains("halfway-there")
        },
    );
    cli_ok(
        &s,
        &[
            "fn",
            "create",
            "--name",
            "coldfn",
            "--env",
            "python",
            "--pkg",
            "broken",
            "--entrypoint",
            "main.main",
            "--fntimeout",
            "20",
        ],
    );
    assert_eq!(call(&s, "coldfn"), (200, format!("fixed: {GREETING}\n")));
    assert_eq!(package(&s, "broken")["status"]["buildstatus"], "running");
    for path in [
        "/v1/packages/broken/deployment",
        "/v1/functions/brokenfn/code",
    ] {
        let r = s.api("GET", path).send().unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().unwrap();
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(
            body.windows(7).any(|w| w == b"main.py"),
            "{path}: not the last build"
        );
    }
    gate.open("rebuild");
    assert_eq!(built(&s, "broken")["status"]["buildstatus"], "succeeded");
    // Built, the new code is what both functions run.
    for f in ["brokenfn", "coldfn"] {
        eventually(Duration::from_secs(30), "the new build runs", || {
            call(&s, f) == (200, "rebuilt\n".to_string())
        });
    }
}

#[test]
fn a_nodejs_source_installs_its_vendored_tarball_and_a_call_waits_for_the_build() {
    let s = Server::start();
    offline_env(&s, "nodejs", "nodejs");
    let tmp = tempfile::tempdir().unwrap();
    // The dependency, packed as npm packs: a gzipped tar with `package/` at its root.
    let src = tmp.path().join("src");
    common::vendored::tarball(
        tmp.path(),
        &src.join("vendor"),
        "dep",
        "module.exports = { greet: () => 'hello from a vendored tarball' };\n",
    );
    std::fs::write(
        src.join("package.json"),
        r#"{"name": "nodedemo", "version": "1.0.0", "dependencies": {"dep": "file:vendor/dep-1.0.0.tgz"}}"#,
    )
    .unwrap();
    std::fs::write(
        src.join("index.js"),
        "const dep = require('dep');\nmodule.exports = async () => ({ status: 200, body: dep.greet() + '\\n' });\n",
    )
    .unwrap();

    let out = cli_ok(
        &s,
        &[
            "pkg",
            "create",
            "--name",
            "nodedemo",
            "--env",
            "nodejs",
            "--src",
            src.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["status"]["buildstatus"], "pending", "{created}");
    cli_ok(
        &s,
        &[
            "fn", "create", "--name", "nodefn", "--env", "nodejs", "--pkg", "nodedemo",
        ],
    );
    // Called at once: the call waits for the build.
    assert_eq!(
        call(&s, "nodefn"),
        (200, "hello from a vendored tarball\n".into())
    );
    let p = package(&s, "nodedemo");
    assert_eq!(p["status"]["buildstatus"], "succeeded", "{p}");
    let log = p["status"]["buildlog"].as_str().unwrap();
    assert!(log.contains("npm install"), "{log}");

    // With a lock file (written as npm writes it), `npm ci` installs exactly it.
    let tgz = std::fs::read(src.join("vendor/dep-1.0.0.tgz")).unwrap();
    let integrity = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&tgz))
    );
    let lock = serde_json::json!({
        "name": "nodedemo", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
        "packages": {
            "": {"name": "nodedemo", "version": "1.0.0", "dependencies": {"dep": "file:vendor/dep-1.0.0.tgz"}},
            "node_modules/dep": {"version": "1.0.0", "resolved": "file:vendor/dep-1.0.0.tgz", "integrity": integrity},
        },
    });
    std::fs::write(src.join("package-lock.json"), lock.to_string()).unwrap();
    std::fs::write(
        src.join("index.js"),
        "const dep = require('dep');\nmodule.exports = async () => ({ status: 200, body: 'v2: ' + dep.greet() + '\\n' });\n",
    )
    .unwrap();
    cli_ok(
        &s,
        &[
            "pkg",
            "update",
            "--name",
            "nodedemo",
            "--src",
            src.to_str().unwrap(),
        ],
    );
    let p = built(&s, "nodedemo");
    assert_eq!(p["status"]["buildstatus"], "succeeded", "{p}");
    let log = p["status"]["buildlog"].as_str().unwrap();
    assert!(log.contains("npm ci"), "{log}");
    assert_eq!(
        call(&s, "nodefn"),
        (200, "v2: hello from a vendored tarball\n".into())
    );
}

/// Whether some process on the machine has `needle` in its command line.
fn process_running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
            .unwrap_or(false)
    })
}

#[test]
fn a_build_command_runs_isolated_and_is_stopped_at_the_time_limit() {
    let s = Server::start_with(&[("FUSION_BUILD_TIMEOUT_SECS", "3")]);
    s.env("binary", "binary", 0);
    let env = s.ok("GET", "/v1/environments/binary", None);
    let container = env["status"]["isolation"]["backend"] == "container";
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.sh"), "#!/bin/sh\necho built\n").unwrap();
    let data = s.data_dir().to_str().unwrap().to_string();
    // Fission's convention: SRC_PKG and DEPLOY_PKG, which the build makes as
    // Fission's build scripts do (`cp -r ${SRC_PKG} ${DEPLOY_PKG}`); what the
    // build sees is in its log.
    let probe = format!(
        "echo uid=$(id -u); if touch /usr/fusion-probe 2>/dev/null; then echo usr=writable; else echo usr=read-only; fi; \
         if [ -e {data}/token ]; then echo data=visible; else echo data=hidden; fi; \
         cp -r ${{SRC_PKG}} ${{DEPLOY_PKG}}"
    );
    let src_arg = src.to_str().unwrap();
    cli_ok(
        &s,
        &[
            "pkg",
            "create",
            "--name",
            "probe",
            "--env",
            "binary",
            "--src",
            src_arg,
            "--buildcmd",
            &probe,
        ],
    );
    let p = built(&s, "probe");
    assert_eq!(p["status"]["buildstatus"], "succeeded", "{p}");
    let log = p["status"]["buildlog"].as_str().unwrap();
    assert!(log.contains("the package's build command"), "{log}");
    if container {
        assert!(log.contains("uid=65534"), "{log}");
        assert!(log.contains("usr=read-only"), "{log}");
        assert!(log.contains("data=hidden"), "{log}");
    }
    cli_ok(
        &s,
        &[
            "fn",
            "create",
            "--name",
            "probefn",
            // No --env: as in Fission, the package's.
            "--pkg",
            "probe",
            "--entrypoint",
            "hello.sh",
        ],
    );
    assert_eq!(call(&s, "probefn"), (200, "built\n".into()));
    // A build that makes no deployment has failed, whatever its exit status.
    let src_arg = src.to_str().unwrap();
    cli_ok(
        &s,
        &[
            "pkg",
            "create",
            "empty",
            "--env",
            "binary",
            "--src",
            src_arg,
            "--buildcmd",
            "true",
        ],
    );
    let p = built(&s, "empty");
    assert_eq!(p["status"]["buildstatus"], "failed", "{p}");
    assert!(
        p["status"]["buildlog"]
            .as_str()
            .unwrap()
            .contains("the build made no deployment"),
        "{p}"
    );

    // Past the time limit the build and everything it started are killed.
    let sleeper = "sleep 4242.5";
    cli_ok(
        &s,
        &[
            "pkg",
            "create",
            "--name",
            "slow",
            "--env",
            "binary",
            "--src",
            src_arg,
            "--buildcmd",
            &format!("{sleeper} & {sleeper}"),
        ],
    );
    let p = built(&s, "slow");
    assert_eq!(p["status"]["buildstatus"], "failed", "{p}");
    let log = p["status"]["buildlog"].as_str().unwrap();
    assert!(log.contains("did not finish within 3s"), "{log}");
    eventually(
        Duration::from_secs(10),
        "the build's processes are gone",
        || !process_running(sleeper),
    );
}

#[test]
fn bad_package_requests_get_a_status_and_a_clear_message() {
    let s = Server::start();
    s.env("python", "python", 0);
    let code = s.upload("main.py", b"def main():\n    return 'deployed\\n'\n");
    let err = |method: &str, path: &str, body: Value| {
        let (status, v) = s.call(method, path, Some(body));
        (
            status,
            v["error"]["code"].as_str().unwrap_or_default().to_string(),
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let (st, c, m) = err(
        "POST",
        "/v1/packages",
        serde_json::json!({"name": "p", "environment": "nope", "deployment": code}),
    );
    assert_eq!((st, c.as_str()), (409, "conflict"), "{m}");
    assert!(m.contains("environment \"nope\" does not exist"), "{m}");
    let (st, c, m) = err(
        "POST",
        "/v1/packages",
        serde_json::json!({"name": "p", "environment": "python"}),
    );
    assert_eq!((st, c.as_str()), (400, "invalid"), "{m}");
    assert!(m.contains("--src") && m.contains("--deploy"), "{m}");
    let (st, c, _) = err(
        "POST",
        "/v1/packages",
        serde_json::json!({"name": "Bad_Name", "environment": "python", "deployment": code}),
    );
    assert_eq!((st, c.as_str()), (400, "invalid"));
    let (st, c, m) = err(
        "POST",
        "/v1/packages",
        serde_json::json!({"name": "p", "environment": "python", "deployment": code, "colour": 1}),
    );
    assert_eq!((st, c.as_str()), (400, "invalid"), "{m}");
    assert!(m.contains("colour"), "{m}");
    let missing = serde_json::json!({"sha256": "0".repeat(64), "kind": "archive"});
    let (st, c, m) = err(
        "POST",
        "/v1/packages",
        serde_json::json!({"name": "p", "environment": "python", "source": missing}),
    );
    assert_eq!((st, c.as_str()), (409, "conflict"), "{m}");
    assert!(m.contains("upload it first"), "{m}");

    // A package with only a deployment runs it as it is: nothing to build.
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain.py");
    std::fs::write(&plain, "def main():\n    return 'deployed\\n'\n").unwrap();
    let out = cli_ok(
        &s,
        &[
            "pkg",
            "create",
            "--name",
            "plain",
            "--env",
            "python",
            "--deploy",
            plain.to_str().unwrap(),
        ],
    );
    assert!(out.contains("none"), "{out}");
    let (st, c, m) = err("POST", "/v1/packages/plain/rebuild", Value::Null);
    assert_eq!((st, c.as_str()), (400, "invalid"), "{m}");
    assert!(m.contains("no source to build"), "{m}");
    cli_ok(
        &s,
        &[
            "fn",
            "create",
            "--name",
            "plainfn",
            "--env",
            "python",
            "--pkg",
            "plain",
            "--entrypoint",
            "plain.main",
        ],
    );
    assert_eq!(call(&s, "plainfn"), (200, "deployed\n".into()));

    // The CLI says what is wrong in one line.
    let (code, _, stderr) = s.cli(&["pkg", "info", "--name", "nope"]);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("package \"nope\" does not exist"),
        "{stderr}"
    );
    let (code, _, stderr) = s.cli(&[
        "fn", "create", "--name", "f", "--env", "python", "--pkg", "nope",
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("package \"nope\" (namespace default) does not exist"),
        "{stderr}"
    );
    let (code, _, stderr) = s.cli(&["pkg", "create", "--name", "x", "--env", "python"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--src"), "{stderr}");
}

#[test]
fn a_build_stopped_by_a_shutdown_is_built_again_at_the_next_start() {
    let mut s = Server::start();
    s.env("binary", "binary", 0);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("hello.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let sleeper = "sleep 4343.5";
    cli_ok(
        &s,
        &[
            "pkg",
            "create",
            "--name",
            "long",
            "--env",
            "binary",
            "--src",
            tmp.path().join("hello.sh").to_str().unwrap(),
            "--buildcmd",
            sleeper,
        ],
    );
    eventually(Duration::from_secs(30), "the build runs", || {
        package(&s, "long")["status"]["buildstatus"] == "running" && process_running(sleeper)
    });
    s.stop();
    eventually(
        Duration::from_secs(10),
        "the build ends with the server",
        || !process_running(sleeper),
    );
    s.launch();
    let p = package(&s, "long");
    let status = p["status"]["buildstatus"].as_str().unwrap();
    assert!(matches!(status, "pending" | "running"), "{p}");
    eventually(Duration::from_secs(30), "the build runs again", || {
        process_running(sleeper)
    });
}

/// `fn create --src` (Fission's spelling) makes a package for the function,
/// builds it, and the function runs what the build made.
#[test]
fn fn_create_with_a_source_makes_and_builds_its_package() {
    let s = Server::start();
    offline_env(&s, "python", "python");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    python_source(&src, "from source: ", "hellodep==1.0");
    let (code, _, err) = s.cli(&[
        "fn",
        "create",
        "srcfn",
        "--env",
        "python",
        "--src",
        src.to_str().unwrap(),
        "--entrypoint",
        "main.main",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("made for function srcfn"), "{err}");
    let f = s.ok("GET", "/v1/functions/srcfn", None);
    let pkg = f["package"]["packageref"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(pkg.starts_with("srcfn-"), "{f}");
    assert_eq!(built(&s, &pkg)["status"]["buildstatus"], "succeeded");
    assert_eq!(
        call(&s, "srcfn"),
        (200, format!("from source: {GREETING}\n"))
    );

    // What it was made from and what it runs, as Fission's getsrc, getdeploy
    // and `fn get` give them: directories as tar archives.
    let entries = |file: &Path| -> Vec<String> {
        let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(file).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let out = |name: &str| tmp.path().join(name);
    let file = |p: &Path| p.to_str().unwrap().to_string();
    cli_ok(
        &s,
        &["pkg", "getsrc", &pkg, "--dest", &file(&out("src.tar"))],
    );
    let source = entries(&out("src.tar"));
    assert!(source.iter().any(|n| n == "requirements.txt"), "{source:?}");
    assert!(
        !source.iter().any(|n| n.contains(".complete")),
        "the store's marker: {source:?}"
    );
    cli_ok(
        &s,
        &[
            "pkg",
            "getdeploy",
            &pkg,
            "--dest",
            &file(&out("deploy.tar")),
        ],
    );
    let deployed = entries(&out("deploy.tar"));
    assert!(deployed.iter().any(|n| n == "main.py"), "{deployed:?}");
    assert!(
        deployed.iter().any(|n| n.contains("hellodep")),
        "the build's output: {deployed:?}"
    );
    // Without `.tar`, a zip, as Fission's CLI gives it (`unzip` reads it).
    cli_ok(
        &s,
        &[
            "pkg",
            "getdeploy",
            &pkg,
            "--dest",
            &file(&out("deploy.zip")),
        ],
    );
    let zipped = zip::ZipArchive::new(std::fs::File::open(out("deploy.zip")).unwrap()).unwrap();
    let zipped: Vec<&str> = zipped.file_names().collect();
    for name in &deployed {
        let name = name.trim_start_matches("./");
        assert!(
            name.is_empty()
                || zipped.contains(&name)
                || zipped.contains(&format!("{}/", name.trim_end_matches('/')).as_str()),
            "{name}: {zipped:?}"
        );
    }
    cli_ok(
        &s,
        &[
            "fn",
            "get",
            "srcfn",
            "--code",
            "--dest",
            &file(&out("fn.tar")),
        ],
    );
    assert_eq!(entries(&out("fn.tar")), deployed);

    // A file is itself; a package without a source says so.
    let code = "def main():\n    return 'plain'\n";
    std::fs::write(out("plain.py"), code).unwrap();
    cli_ok(
        &s,
        &[
            "pkg",
            "create",
            "plain",
            "--env",
            "python",
            "--deploy",
            &file(&out("plain.py")),
        ],
    );
    assert_eq!(cli_ok(&s, &["pkg", "getdeploy", "plain"]), code);
    let (status, body) = s.call("GET", "/v1/packages/plain/source", None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no source"),
        "{body}"
    );
    cli_ok(
        &s,
        &[
            "fn",
            "create",
            "plain",
            "--env",
            "python",
            "--code",
            &file(&out("plain.py")),
        ],
    );
    assert_eq!(cli_ok(&s, &["fn", "get", "plain", "--code"]), code);
    assert_eq!(s.call("GET", "/v1/functions/nosuch/code", None).0, 404);
}

/// As Fission's `fn update`: new code goes into the package the function
/// runs, which other functions running it see too (so that takes --force).
#[test]
fn fn_update_with_new_code_updates_the_functions_package() {
    let s = Server::start();
    offline_env(&s, "python", "python");
    let tmp = tempfile::tempdir().unwrap();
    let file = |name: &str, says: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, format!("def main():\n    return '{says}'\n")).unwrap();
        p.to_str().unwrap().to_string()
    };
    let v1 = file("v1.py", "v1");
    cli_ok(
        &s,
        &[
            "pkg", "create", "shared", "--env", "python", "--deploy", &v1,
        ],
    );
    cli_ok(&s, &["fn", "create", "sa", "--pkg", "shared"]);
    cli_ok(&s, &["fn", "create", "sb", "--pkg", "shared"]);
    assert_eq!(call(&s, "sb"), (200, "v1".to_string()));

    let v2 = file("v2.py", "v2");
    let (code, _, err) = s.cli(&["fn", "update", "sa", "--code", &v2]);
    assert_ne!(code, 0);
    assert!(
        err.contains("also run by sb") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(call(&s, "sa"), (200, "v1".to_string()));
    cli_ok(&s, &["fn", "update", "sa", "--code", &v2, "--force"]);
    let sa = s.ok("GET", "/v1/functions/sa", None);
    assert_eq!(sa["package"]["packageref"]["name"], "shared", "{sa}");
    for f in ["sa", "sb"] {
        eventually(Duration::from_secs(30), &format!("{f} runs v2"), || {
            call(&s, f) == (200, "v2".to_string())
        });
    }

    // A function made with --src gets its new source built.
    let source = |dir: &str, says: &str| {
        let d = tmp.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("main.py"),
            format!("def main():\n    return '{says}'\n"),
        )
        .unwrap();
        d.to_str().unwrap().to_string()
    };
    let a = source("a", "source a");
    cli_ok(
        &s,
        &[
            "fn",
            "create",
            "solo",
            "--env",
            "python",
            "--src",
            &a,
            "--entrypoint",
            "main.main",
        ],
    );
    let pkg = s.ok("GET", "/v1/functions/solo", None)["package"]["packageref"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(built(&s, &pkg)["status"]["buildstatus"], "succeeded");
    assert_eq!(call(&s, "solo"), (200, "source a".to_string()));
    let b = source("b", "source b");
    cli_ok(&s, &["fn", "update", "solo", "--src", &b]);
    eventually(Duration::from_secs(60), "solo runs its new source", || {
        call(&s, "solo") == (200, "source b".to_string())
    });
    // Code given alone is what runs from then on, not the source's build.
    let c = source("c", "deployed c");
    cli_ok(&s, &["fn", "update", "solo", "--code", &c]);
    eventually(Duration::from_secs(60), "solo runs the code given", || {
        call(&s, "solo") == (200, "deployed c".to_string())
    });
    let (code, _, err) = s.cli(&[
        "fn",
        "update",
        "solo",
        "--pkg",
        "shared",
        "--buildcmd",
        "make",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("pkg update --buildcmd"), "{err}");
}

/// As Fission's builder command: an environment's build command builds the
/// packages that give none of their own.
/// A python environment whose build command makes a source's `main.py`
/// say BUILT where it said SOURCE, offline.
fn sed_builder_env(s: &Server) {
    s.ok(
        "POST",
        "/v1/environments",
        Some(serde_json::json!({"name": "python", "runtime": "python", "poolsize": 1,
            "network": "none",
            "buildcmd": "mkdir -p \"$DEPLOY_PKG\" && sed s/SOURCE/BUILT/ main.py > \"$DEPLOY_PKG/main.py\""})),
    );
}

#[test]
fn an_environments_build_command_builds_packages_without_one() {
    let s = Server::start();
    sed_builder_env(&s);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.py"), "def main():\n    return 'SOURCE'\n").unwrap();
    cli_ok(
        &s,
        &[
            "fn",
            "create",
            "envbuilt",
            "--env",
            "python",
            "--src",
            src.to_str().unwrap(),
            "--entrypoint",
            "main.main",
        ],
    );
    let f = s.ok("GET", "/v1/functions/envbuilt", None);
    let pkg = f["package"]["packageref"]["name"].as_str().unwrap();
    let p = built(&s, pkg);
    assert_eq!(p["status"]["buildstatus"], "succeeded", "{p}");
    assert_eq!(call(&s, "envbuilt"), (200, "BUILT".to_string()));
    // The CLI sets and removes it.
    cli_ok(&s, &["env", "update", "python", "--buildcmd", ""]);
    let env = s.ok("GET", "/v1/environments/python", None);
    assert!(env.get("buildcmd").is_none(), "{env}");
}

/// A package `name` of a one-script source built by `buildcmd` in a
/// `binary` environment: its build's status and log, once it has ended.
fn build_of(s: &Server, name: &str, buildcmd: &str) -> (String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.sh"), "#!/bin/sh\necho built\n").unwrap();
    let src = src.to_str().unwrap();
    cli_ok(
        s,
        &[
            "pkg",
            "create",
            "--name",
            name,
            "--env",
            "binary",
            "--src",
            src,
            "--buildcmd",
            buildcmd,
        ],
    );
    let p = built(s, name);
    let field = |f: &str| p["status"][f].as_str().unwrap_or_default().to_string();
    (field("buildstatus"), field("buildlog"))
}

/// A build is untrusted code: directories it nests without end are removed
/// with its work directory (a recursive removal overflowed the server's stack
/// and aborted it, at every start after), and an output nested past the limit
/// is refused.
#[test]
fn a_build_that_nests_directories_without_end_leaves_the_server_running() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let nest = |under: &str, levels: usize| {
        format!(
            "\"${{PYTHON:-python3}}\" -c 'import os\nat = os.environ[\"{under}\"]\nos.makedirs(at, exist_ok=True)\nos.chdir(at)\nfor _ in range({levels}): os.mkdir(\"d\"); os.chdir(\"d\")\n'"
        )
    };
    let build = format!(
        "{} && cp -r ${{SRC_PKG}} ${{DEPLOY_PKG}}",
        nest("HOME", 60_000)
    );
    let (status, log) = build_of(&s, "deep", &build);
    assert_eq!(status, "succeeded", "{log}");
    // Its work directory went with it, and the server answers.
    let builds = s.data_dir().join("builds");
    eventually(
        Duration::from_secs(30),
        "the build's work directory removed",
        || std::fs::read_dir(&builds).map_or(true, |mut d| d.next().is_none()),
    );
    assert_eq!(s.call("GET", "/v1/packages/deep", None).0, 200);

    let build = format!(
        "cp -r ${{SRC_PKG}} ${{DEPLOY_PKG}} && {}",
        nest("DEPLOY_PKG", 100)
    );
    let (status, log) = build_of(&s, "deeper", &build);
    assert_eq!(status, "failed", "{log}");
    assert!(
        log.contains("nests directories deeper than the limit of 64"),
        "{log}"
    );
}

/// A build that writes more than builds may (`--build-disk-mb`) is stopped
/// with every process it started, and fails saying so; the server goes on.
#[test]
fn a_build_past_its_disk_limit_is_stopped() {
    let s = Server::start_with(&[("FUSION_BUILD_DISK_MB", "20")]);
    s.env("binary", "binary", 0);
    // Without the limit this build succeeds, ten seconds on.
    let build = "dd if=/dev/zero of=$HOME/fill bs=1M count=64 2>/dev/null && sleep 10.0417 && cp -r ${SRC_PKG} ${DEPLOY_PKG}";
    let (status, log) = build_of(&s, "fill", build);
    assert_eq!(status, "failed", "{log}");
    assert!(
        log.contains("the build was stopped with every process it started: it used more than 20 MiB of disk (--build-disk-mb)"),
        "{log}"
    );
    eventually(
        Duration::from_secs(10),
        "the build's processes gone",
        || !process_running("sleep 10.0417"),
    );
    assert_eq!(s.call("GET", "/v1/packages/fill", None).0, 200);

    // A file it deleted but keeps writing is no file to count: the disk it
    // fills still is.
    let hidden = "exec 3>$HOME/f && rm $HOME/f && dd if=/dev/zero bs=1M count=64 >&3 2>/dev/null && sync && sleep 10.0418 && cp -r ${SRC_PKG} ${DEPLOY_PKG}";
    let (status, log) = build_of(&s, "hidden", hidden);
    assert_eq!(status, "failed", "{log}");
    assert!(
        log.contains("the disk of the data directory filled by more than 20 MiB while it ran"),
        "{log}"
    );
}

/// Sets the time of every stored package back two hours, past the grace in
/// which `prune` keeps what was stored or newly used.
fn age_packages(s: &Server) {
    let past = std::time::SystemTime::now() - Duration::from_secs(7200);
    for e in std::fs::read_dir(s.data_dir().join("packages")).unwrap() {
        let path = e.unwrap().path();
        std::fs::File::open(&path)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }
}

/// Code nothing uses any more goes from the data directory (and so from
/// backups): a deleted function's archive, a deleted package's source and
/// its build, which is then not reused from the build cache either. What a
/// function runs stays, and so does an upload no function names yet.
#[test]
fn code_nothing_uses_is_pruned_and_code_in_use_is_kept() {
    let s = Server::start();
    sed_builder_env(&s);
    let sha = |v: &Value| v["sha256"].as_str().unwrap().to_string();
    s.function(
        "kept",
        "python",
        "kept.py",
        "def main():\n    return 'kept'\n",
        Value::Null,
    );
    s.function(
        "gone",
        "python",
        "gone.py",
        "def main():\n    return 'gone'\n",
        Value::Null,
    );
    assert_eq!(call(&s, "gone"), (200, "gone".to_string()));
    let kept = sha(&s.ok("GET", "/v1/functions/kept", None)["package"]);
    let gone = sha(&s.ok("GET", "/v1/functions/gone", None)["package"]);

    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.py"), "def main():\n    return 'SOURCE'\n").unwrap();
    let create_pkg = || {
        cli_ok(
            &s,
            &[
                "pkg",
                "create",
                "--name",
                "built",
                "--env",
                "python",
                "--src",
                src.to_str().unwrap(),
            ],
        )
    };
    create_pkg();
    let p = built(&s, "built");
    assert_eq!(p["status"]["buildstatus"], "succeeded", "{p}");
    let (source, build) = (sha(&p["source"]), sha(&p["status"]["built"]));

    cli_ok(&s, &["fn", "delete", "gone"]);
    cli_ok(&s, &["pkg", "delete", "built"]);
    age_packages(&s);
    let fresh = sha(&s.upload("fresh.py", b"def main():\n    return 'fresh'\n"));

    // The deleted function's instance may still be stopping: what it loaded
    // is kept until it has.
    let mut removed = Vec::new();
    eventually(Duration::from_secs(30), "the unused code removed", || {
        let pruned = s.ok("POST", "/v1/archives/prune", None);
        for r in pruned["removed"].as_array().unwrap() {
            removed.push(r.as_str().unwrap().to_string());
        }
        [&gone, &source, &build].iter().all(|x| removed.contains(x))
    });
    assert!(
        !removed.contains(&kept) && !removed.contains(&fresh),
        "{removed:?}"
    );
    let packages = s.data_dir().join("packages");
    for x in [&gone, &source, &build] {
        assert!(!packages.join(x).exists(), "{x} is still stored");
    }
    assert!(packages.join(&kept).exists() && packages.join(&fresh).exists());
    assert_eq!(call(&s, "kept"), (200, "kept".to_string()));
    let metrics = s.api("GET", "/metrics").send().unwrap().text().unwrap();
    assert!(
        metrics.contains("fusion_packages_pruned_total 3"),
        "{metrics}"
    );

    // The same source again is built again: its earlier build is gone.
    create_pkg();
    let p = built(&s, "built");
    assert_eq!(p["status"]["buildstatus"], "succeeded", "{p}");
    assert!(p["status"].get("cached").is_none(), "{p}");
    assert!(packages.join(&build).exists(), "the build made again");

    let out = cli_ok(&s, &["pkg", "prune"]);
    assert!(out.starts_with("removed 0 archive(s)"), "{out}");
}

/// A body sent as `application/zip` that is no zip is refused as a damaged
/// one is (400, "not a valid zip archive"), not stored as a file named `user`;
/// the same bytes sent as `application/octet-stream` are one file.
#[test]
fn a_body_sent_as_a_zip_that_is_not_one_is_400() {
    let s = Server::start();
    let post = |path: &str, ct: &str, body: &[u8]| {
        let r = s
            .api("POST", path)
            .header("content-type", ct)
            .body(body.to_vec())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    for path in ["/v1/archives", "/v1/packages"] {
        for body in [&b"not a zip"[..], b"PK\x03\x04garbage"] {
            let (status, v) = post(path, "application/zip", body);
            assert_eq!(status, 400, "{path} {body:?}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("not a valid zip archive"),
                "{v}"
            );
        }
    }
    let (status, v) = post("/v1/archives", "application/octet-stream", b"not a zip");
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["kind"], "file", "{v}");
}
