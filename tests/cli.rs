//! The CLI as a Fission user types it, against the real server: positional
//! names, `--minscale`/`--maxscale`, and errors that name the mistake.

mod common;

use std::time::Duration;

use common::{eventually, Server};
use serde_json::{json, Value};

const PY_HELLO: &str = "def main():\n    return \"hello\\n\"\n";

/// Writes `hello.py` into a temporary directory; returns the directory and path.
fn hello_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.py");
    std::fs::write(&path, PY_HELLO).unwrap();
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}

/// Fission's `--concurrency` and `--maxscale` may be given together: a
/// poolmgr function's most instances are its concurrency, a newdeploy
/// function's its max scale, as in Fission.
#[test]
fn fn_create_takes_concurrency_and_maxscale_together() {
    let s = Server::start();
    s.env("python", "python", 0);
    let (_dir, code) = hello_file();
    for (name, executor, want) in [("pool", "poolmgr", 5), ("deploy", "newdeploy", 2)] {
        let (rc, out, err) = s.cli(&[
            "fn",
            "create",
            name,
            "--env",
            "python",
            "--code",
            &code,
            "--executortype",
            executor,
            "--maxscale",
            "2",
            "--concurrency",
            "5",
        ]);
        assert_eq!(rc, 0, "{out}{err}");
        let f = s.ok("GET", &format!("/v1/functions/{name}"), None);
        assert_eq!(f["max_scale"], want, "{f}");
    }
}

#[test]
fn fn_create_with_minscale_has_that_many_specialized_instances_before_any_call() {
    let s = Server::start();
    s.env("python", "python", 1);
    let (_dir, code) = hello_file();
    let (rc, out, err) = s.cli(&[
        "fn",
        "create",
        "hello",
        "--env",
        "python",
        "--code",
        &code,
        "--executortype",
        "poolmgr",
        "--minscale",
        "2",
        "--maxscale",
        "3",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    let specialized = || {
        s.instances("hello")
            .iter()
            .filter(|i| i["state"] == "specialized")
            .count()
    };
    eventually(Duration::from_secs(60), "two specialized instances", || {
        specialized() == 2
    });
    let f = s.ok("GET", "/v1/functions/hello", None);
    assert_eq!(
        (&f["min_scale"], &f["max_scale"], &f["executor_type"]),
        (&json!(2), &json!(3), &json!("poolmgr"))
    );
    // Called by its positional name; a warm instance answers.
    let (rc, out, err) = s.cli(&["fn", "test", "hello"]);
    assert_eq!((rc, out.as_str()), (0, "hello\n"), "{err}");
    assert_eq!(specialized(), 2, "no instance was added for the call");
    // The instances with what they use, as a person reads it.
    let (rc, out, err) = s.cli(&["fn", "instances", "hello"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|h| h.contains("MEMORY_MIB") && h.contains("CPU_S")),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("specialized")).count(),
        2,
        "{out}"
    );
    // The environment's instances (Fission's `env pods`): those two, and the
    // generic ones of its pool.
    let (rc, out, err) = s.cli(&["env", "pods", "python", "-o", "json"]);
    assert_eq!(rc, 0, "{err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    let of = |state: &str| all.iter().filter(|i| i["state"] == state).count();
    assert_eq!(of("specialized"), 2, "{out}");
    assert!(all.iter().all(|i| i["environment"] == "python"), "{out}");
    let (rc, _, err) = s.cli(&["env", "pods", "nosuch"]);
    assert_ne!(rc, 0);
    assert!(err.contains("nosuch"), "{err}");
}

/// `--code` takes a directory as it takes a file: zipped, modules and all.
#[test]
fn fn_create_takes_a_directory_of_code() {
    let s = Server::start();
    s.env("python", "python", 0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        "from greeting import word\ndef main():\n    return word + '\\n'\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("greeting.py"), "word = 'from a folder'\n").unwrap();
    let (rc, out, err) = s.cli(&[
        "fn",
        "create",
        "folder",
        "--env",
        "python",
        "--code",
        dir.path().to_str().unwrap(),
        "--entrypoint",
        "app.main",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    let (rc, out, err) = s.cli(&["fn", "test", "folder"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out, "from a folder\n");

    // ES modules in a folder: `handler.main` finds `handler.mjs`, and an
    // `index.mjs` is the folder's main module, as a `.js` file would be.
    s.env("nodejs", "nodejs", 0);
    let esm = tempfile::tempdir().unwrap();
    std::fs::write(
        esm.path().join("handler.mjs"),
        "import { word } from './word.mjs';\nexport async function main() { return { body: word + '\\n' }; }\n",
    )
    .unwrap();
    std::fs::write(
        esm.path().join("word.mjs"),
        "export const word = 'from a module';\n",
    )
    .unwrap();
    std::fs::write(
        esm.path().join("index.mjs"),
        "export default async () => ({ body: 'the main module\\n' });\n",
    )
    .unwrap();
    let esm_dir = esm.path().to_str().unwrap();
    for (name, entry, said) in [
        ("esm", "handler.main", "from a module\n"),
        ("esm-main", "", "the main module\n"),
    ] {
        let (rc, out, err) = s.cli(&[
            "fn",
            "create",
            name,
            "--env",
            "nodejs",
            "--code",
            esm_dir,
            "--entrypoint",
            entry,
        ]);
        assert_eq!(rc, 0, "{out}{err}");
        let (rc, out, err) = s.cli(&["fn", "test", name]);
        assert_eq!((rc, out.as_str()), (0, said), "{name}: {err}");
    }
}

#[test]
fn errors_name_the_mistake() {
    let s = Server::start();
    s.env("python", "python", 0);
    let (dir, code) = hello_file();
    let one_line_error = |args: &[&str], wanted: &str| {
        let (rc, out, err) = s.cli(args);
        assert_ne!(rc, 0, "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
    };
    one_line_error(
        &["env", "create", "x", "--runtime", "pyton"],
        r#"error: unknown runtime "pyton": expected python, nodejs or binary"#,
    );
    one_line_error(
        &["fn", "test", "nope"],
        r#"error: function "nope" does not exist"#,
    );
    one_line_error(
        &["fn", "test", "--name", "nope"],
        r#"error: function "nope" does not exist"#,
    );
    one_line_error(&["fn", "get", "nope"], r#"function "nope" does not exist"#);
    one_line_error(
        &["fn", "get", "--server", "garbage", "nope"],
        r#"the API address "garbage" (--server or FUSION_URL) is not an http:// or https:// URL"#,
    );
    one_line_error(&["run", "get", "nope"], r#"run "nope" does not exist"#);
    // The router's address where the API's belongs.
    one_line_error(
        &["fn", "list", "--server", &s.router],
        "is Fusion's router, not its API",
    );
    let unnamed = dir.path().join("unnamed.wf.yaml");
    std::fs::write(&unnamed, "output: A\ntasks:\n  A:\n    run: noop\n").unwrap();
    one_line_error(
        &["wf", "create", "--file", unnamed.to_str().unwrap()],
        "give the workflow's name: `fusion wf create NAME --file",
    );
    one_line_error(
        &[
            "fn",
            "create",
            "hello",
            "--env",
            "python",
            "--code",
            &code,
            "--minscale",
            "4",
            "--maxscale",
            "3",
        ],
        "min scale 4 is above max scale 3",
    );
    // A function whose code does not load: Fusion's message, not its JSON body.
    let bad = dir.path().join("bad.py");
    std::fs::write(&bad, "def main(:\n").unwrap();
    let (rc, _, err) = s.cli(&[
        "fn",
        "create",
        "bad",
        "--env",
        "python",
        "--code",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    one_line_error(
        &["fn", "test", "bad"],
        r#"error: function "bad" cannot be loaded: the runtime refused the code"#,
    );
    // A header no request can carry: said, not taken for a failed connection.
    one_line_error(
        &["fn", "test", "bad", "--header", "X: a\nb"],
        "its value holds a character a header cannot",
    );
    // The API says the same, with the field at fault.
    let (status, v) = s.call(
        "POST",
        "/v1/environments",
        Some(json!({"name": "x", "runtime": "pyton"})),
    );
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["message"],
        Value::from(
            r#"invalid environment: field "runtime": unknown runtime "pyton": expected python, nodejs or binary (or give a command)"#
        )
    );
    let package = s.upload("hello.py", PY_HELLO.as_bytes());
    let (status, v) = s.call(
        "POST",
        "/v1/functions",
        Some(
            json!({"name": "f", "env": "python", "package": package, "executor_type": "newdepoly"}),
        ),
    );
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(r#"field "executor_type": unknown executor type "newdepoly""#),
        "{v}"
    );
    // Commands whose output is not data refuse `-o json` rather than
    // printing text under it.
    let wf = dir.path().join("w.wf.yaml");
    std::fs::write(&wf, "output: A\ntasks:\n  A:\n    run: noop\n").unwrap();
    let wf = wf.to_str().unwrap();
    one_line_error(
        &["wf", "validate", wf, "-o", "json"],
        "error: wf validate prints a report, not JSON",
    );
    s.cli(&["wf", "create", "w", "--file", wf]);
    one_line_error(
        &["wf", "graph", "w", "-o", "json"],
        "error: wf graph prints a Mermaid flowchart, not JSON",
    );
    one_line_error(
        &["fn", "test", "w", "-o", "json"],
        "error: fn test prints the function's answer as it gave it, not JSON",
    );
}

/// `fusion version` says the client's version and the server's, with the
/// backend the server runs; a server it cannot reach is an error after the
/// client's line.
#[test]
fn version_names_the_client_and_the_server() {
    let s = Server::start_with(&[("FUSION_BACKEND", "process")]);
    let (rc, out, err) = s.cli(&["version"]);
    assert_eq!(rc, 0, "{err}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        out,
        format!("client: fusion {version}\nserver: fusion {version} (process backend)\n")
    );
    let (rc, out, err) = s.cli(&["version", "-o", "json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["server"]["backend"], "process", "{v}");
    assert_eq!(v["client"]["version"], version, "{v}");
    let (rc, out, err) = s.cli(&["version", "--server", "http://127.0.0.1:9"]);
    assert_ne!(rc, 0);
    assert_eq!(out, format!("client: fusion {version}\n"));
    assert!(err.contains("cannot reach the Fusion API"), "{err}");
}

/// A reader that goes away before the output (`fusion run list | head -1`)
/// ends the CLI quietly with SIGPIPE's status, not with a panic.
#[test]
fn a_closed_output_pipe_ends_the_cli_quietly() {
    let s = Server::start();
    s.workflow("w", "output: A\ntasks:\n  A:\n    run: noop\n");
    assert_eq!(s.invoke("w", "text/plain", "x").0, 204);
    let mut child = std::process::Command::new(common::BIN)
        .args(["run", "list"])
        .env("FUSION_URL", &s.api)
        .env("FUSION_TOKEN", &s.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the CLI has its answer to print (a round trip away).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(err.is_empty(), "{err}");
}

/// `fusion runtime init`, a container's first process, exits as its command
/// exits (128 + the signal that killed it) and passes on the signals it gets.
#[test]
fn the_containers_init_exits_as_its_command_and_passes_it_signals() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let init = |args: &[&str]| {
        Command::new(common::BIN)
            .args(["runtime", "init", "--"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let code = |args: &[&str]| init(args).wait_with_output().unwrap().status.code();
    assert_eq!(code(&["sh", "-c", "exit 3"]), Some(3));
    assert_eq!(code(&["sh", "-c", "kill -TERM $$"]), Some(128 + 15));
    let missing = init(&["/no/such/program"]).wait_with_output().unwrap();
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/no/such/program"),
        "{missing:?}"
    );

    let mut child = init(&[
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo $$; while :; do sleep 0.1; done",
    ]);
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let command: u32 = ready.trim().parse().unwrap();
    common::signal(child.id(), libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut status = child.try_wait().unwrap();
    while status.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
        status = child.try_wait().unwrap();
    }
    // Not passed on: the command still runs, and init with it.
    common::signal(command, libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.and_then(|s| s.code()), Some(7), "{status:?}");
}

/// Fission's `environment create` flags are taken: `--builder` (the bundled
/// builder builds; another language's is said not to run) and `--version`
/// (1 and 2 keep a pool of 3, as in Fission).
#[test]
fn env_create_takes_fissions_builder_and_version() {
    let s = Server::start();
    let (code, _, err) = s.cli(&[
        "environment",
        "create",
        "--name",
        "python",
        "--image",
        "fission/python-env",
        "--builder",
        "fission/python-builder:latest",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("builder image"), "{err}");
    let (code, _, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "pyv2",
        "--image",
        "ghcr.io/fission/python-env:0.4.0rc",
        "--version",
        "2",
        "--poolsize",
        "1",
        "--builder",
        "fission/node-builder",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("honoured only with --version 3"), "{err}");
    assert!(
        err.contains("builder image fission/node-builder is not run"),
        "{err}"
    );
    assert_eq!(s.ok("GET", "/v1/environments/pyv2", None)["poolsize"], 3);
    let (code, _, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "v9",
        "--runtime",
        "python",
        "--version",
        "9",
    ]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Fission's spellings: `fn create --pkgname`, `fn test --timeout`, `route
/// list --function`.
#[test]
fn fissions_pkgname_test_timeout_and_route_list_by_function() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slow.sh");
    std::fs::write(
        &file,
        "#!/bin/sh\nsleep \"${QUERY_STRING#s=}\"\necho done\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    let file = file.to_str().unwrap();
    cli(&[
        "pkg", "create", "--name", "slowpkg", "--env", "binary", "--deploy", file,
    ]);
    cli(&[
        "fn",
        "create",
        "--name",
        "slow",
        "--env",
        "binary",
        "--pkgname",
        "slowpkg",
    ]);
    cli(&[
        "fn",
        "create",
        "--name",
        "other",
        "--env",
        "binary",
        "--pkgname",
        "slowpkg",
    ]);
    assert_eq!(
        cli(&[
            "fn",
            "test",
            "--name",
            "slow",
            "-q",
            "s=0",
            "--timeout",
            "30s"
        ]),
        "done\n"
    );
    let (code, _, err) = s.cli(&["fn", "test", "--name", "slow", "-q", "s=3", "-t", "1s"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no answer within the --timeout of 1s"),
        "{err}"
    );
    cli(&[
        "route",
        "create",
        "--name",
        "to-slow",
        "--url",
        "/slow",
        "--function",
        "slow",
    ]);
    cli(&[
        "route",
        "create",
        "--name",
        "to-other",
        "--url",
        "/other",
        "--function",
        "other",
    ]);
    let listed = cli(&["route", "list", "--function", "slow"]);
    assert!(listed.contains("to-slow"), "{listed}");
    assert!(!listed.contains("to-other"), "{listed}");
}

/// A Fission teardown script runs as it did there: `httptrigger delete
/// --function` takes every route to the function, `pkg list/delete --orphan`
/// find and remove the packages `fn delete` left, and every delete takes
/// `--ignorenotfound`, so the script runs again without failing.
#[test]
fn teardown_by_function_orphan_packages_and_ignorenotfound_as_in_fission() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hi.sh");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    let file = file.to_str().unwrap();
    let cli = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    for (pkg, f) in [("leftpkg", "leaving"), ("keptpkg", "staying")] {
        cli(&[
            "pkg", "create", "--name", pkg, "--env", "binary", "--deploy", file,
        ]);
        cli(&[
            "fn",
            "create",
            "--name",
            f,
            "--env",
            "binary",
            "--pkgname",
            pkg,
        ]);
    }
    for (route, url, f) in [
        ("one", "/one", "leaving"),
        ("two", "/two", "leaving"),
        ("three", "/three", "staying"),
    ] {
        cli(&[
            "route",
            "create",
            "--name",
            route,
            "--url",
            url,
            "--function",
            f,
        ]);
    }
    let out = cli(&["route", "delete", "--function", "leaving"]);
    assert_eq!(out, "route one deleted\nroute two deleted\n");
    let left = cli(&["route", "list", "-o", "json"]);
    let left: Value = serde_json::from_str(&left).unwrap();
    let names: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["three"], "{left}");

    cli(&["fn", "delete", "leaving"]);
    let orphans = cli(&["pkg", "list", "--orphan"]);
    assert!(orphans.contains("leftpkg"), "{orphans}");
    assert!(!orphans.contains("keptpkg"), "{orphans}");
    let deployed = cli(&["pkg", "list", "--status", "none"]);
    assert!(
        deployed.contains("leftpkg") && deployed.contains("keptpkg"),
        "{deployed}"
    );
    assert!(!cli(&["pkg", "list", "--status", "failed"]).contains("pkg"));
    let (code, _, err) = s.cli(&["pkg", "list", "--status", "broken"]);
    assert_ne!(code, 0);
    assert!(err.contains("'broken'"), "{err}");
    assert_eq!(
        cli(&["pkg", "delete", "--orphan"]),
        "package leftpkg deleted\n"
    );
    assert_eq!(s.call("GET", "/v1/packages/leftpkg", None).0, 404);
    assert_eq!(s.call("GET", "/v1/packages/keptpkg", None).0, 200);

    // The same teardown again: what is gone is no error with the flag, and
    // one without it.
    for verb in [
        &["fn", "delete", "leaving"][..],
        &["pkg", "delete", "leftpkg"],
        &["route", "delete", "one"],
        &["env", "delete", "nosuchenv"],
        &["timer", "delete", "nosuchtimer"],
        &["mqt", "delete", "nosuchmqt"],
        &["canary", "delete", "nosuchcanary"],
        &["wf", "delete", "nosuchworkflow"],
    ] {
        let (code, out, err) = s.cli(verb);
        assert_ne!(code, 0, "{verb:?}: {out}");
        assert!(
            err.contains("not found") || err.contains("does not exist"),
            "{verb:?}: {err}"
        );
        let with_flag: Vec<&str> = verb.iter().copied().chain(["--ignorenotfound"]).collect();
        let (code, out, err) = s.cli(&with_flag);
        assert_eq!((code, out.as_str()), (0, ""), "{with_flag:?}: {err}");
    }
    // What does exist is still deleted with the flag.
    cli(&["route", "delete", "three", "--ignorenotfound"]);
    assert_eq!(s.call("GET", "/v1/routes/three", None).0, 404);
}

/// `pkg create` without a name makes one from the code's, as Fission's CLI,
/// and says it.
#[test]
fn pkg_create_without_a_name_makes_one() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.sh");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    let (code, out, err) = s.cli(&[
        "pkg",
        "create",
        "--env",
        "binary",
        "--deploy",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // Said as Fission's CLI says it: `Package 'NAME' created`.
    let name = out
        .trim()
        .strip_prefix("Package '")
        .and_then(|rest| rest.strip_suffix("' created"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(
        name.starts_with("hello-sh-") && name.len() == "hello-sh-".len() + 4,
        "{out}"
    );
    let p = s.ok("GET", &format!("/v1/packages/{name}"), None);
    assert_eq!(p["environment"], "binary", "{p}");
}

/// As Fission's CLI: `fn create --url` also makes a route to the function
/// (GET unless told), and a URL may leave out its leading `/`.
#[test]
fn fn_create_with_a_url_makes_its_route() {
    let s = Server::start();
    s.env("python", "python", 0);
    let (_dir, code) = hello_file();
    let (rc, _, err) = s.cli(&[
        "fn", "create", "hello", "--env", "python", "--code", &code, "--url", "greet",
    ]);
    assert_eq!(rc, 0, "{err}");
    let route = s.ok("GET", "/v1/routes/greet", None);
    assert_eq!(route["url"], "/greet", "{route}");
    assert_eq!(route["function"], "hello", "{route}");
    assert_eq!(route["methods"], json!(["GET"]), "{route}");
    assert_eq!(s.get("/greet").status(), 200);
    // Another for the same URL and other methods gets a name of its own.
    let (rc, _, err) = s.cli(&[
        "fn", "create", "hello3", "--env", "python", "--code", &code, "--url", "/greet",
        "--method", "POST", "--method", "put",
    ]);
    assert_eq!(rc, 0, "{err}");
    let routes = s.ok("GET", "/v1/routes", None);
    let theirs = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["function"] == "hello3")
        .unwrap_or_else(|| panic!("{routes}"));
    assert!(
        theirs["name"].as_str().unwrap().starts_with("greet-"),
        "{theirs}"
    );
    // A route that cannot be made (the same requests as another's) says the
    // function was.
    let (rc, _, err) = s.cli(&[
        "fn", "create", "hello2", "--env", "python", "--code", &code, "--url", "/greet",
    ]);
    assert_ne!(rc, 0);
    assert!(
        err.contains("function \"hello2\" was created, its route was not"),
        "{err}"
    );
    s.ok("GET", "/v1/functions/hello2", None);
    // A URL no route can take is said before the function is made.
    let (rc, _, err) = s.cli(&[
        "fn", "create", "hello4", "--env", "python", "--code", &code, "--url", "/bad/{x",
    ]);
    assert_ne!(rc, 0);
    assert!(err.contains("--url \"/bad/{x\""), "{err}");
    assert_eq!(s.call("GET", "/v1/functions/hello4", None).0, 404);
}

/// A route's host: checked as a Host header could name it, and an empty
/// one (as `route update --host ''` sends) is any host, with the same
/// conflict check as every route.
#[test]
fn a_routes_host_is_checked_and_an_empty_one_is_any_host() {
    let s = Server::start();
    s.env("python", "python", 0);
    let (_dir, code) = hello_file();
    let (rc, _, err) = s.cli(&["fn", "create", "hello", "--env", "python", "--code", &code]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = s.cli(&[
        "route",
        "create",
        "--name",
        "bad",
        "--url",
        "/y",
        "--function",
        "hello",
        "--host",
        "bad host!",
    ]);
    assert_ne!(rc, 0);
    assert!(err.contains("host \"bad host!\" is not a host"), "{err}");
    let (rc, _, err) = s.cli(&[
        "route",
        "create",
        "--name",
        "only",
        "--url",
        "/only",
        "--function",
        "hello",
        "--host",
        "example.com",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(s.get("/only").status(), 404);
    let (rc, _, err) = s.cli(&["route", "update", "only", "--host", ""]);
    assert_eq!(rc, 0, "{err}");
    assert!(s.ok("GET", "/v1/routes/only", None).get("host").is_none());
    assert_eq!(s.get("/only").status(), 200);
    // Another route of any host for the same URL is a conflict.
    let (rc, _, err) = s.cli(&[
        "route",
        "create",
        "--name",
        "twin",
        "--url",
        "/only",
        "--function",
        "hello",
        "--host",
        "example.com",
    ]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = s.cli(&["route", "update", "twin", "--host", " "]);
    assert_ne!(rc, 0);
    assert!(err.contains("would answer the same requests"), "{err}");
}

/// Fission's `--all-namespaces` (`-A`): a list of every namespace's, with a
/// NAMESPACE column; without it, one namespace's as before.
#[test]
fn lists_of_every_namespace_with_all_namespaces() {
    let s = Server::start();
    s.env("bin", "binary", 0);
    let (rc, _, err) = s.cli(&["env", "create", "bin", "--runtime", "binary", "-n", "shop"]);
    assert_eq!(rc, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("hi.sh");
    std::fs::write(&code, "#!/bin/sh\necho hi\n").unwrap();
    let code = code.to_str().unwrap();
    for ns in ["default", "shop"] {
        let name = format!("hi-{ns}");
        let (rc, _, err) = s.cli(&[
            "fn",
            "create",
            &name,
            "--env",
            "bin",
            "--code",
            code,
            "-n",
            ns,
            "--url",
            &format!("/{ns}"),
        ]);
        assert_eq!(rc, 0, "{err}");
        let (rc, _, err) = s.cli(&[
            "pkg", "create", "--name", "pkg", "--env", "bin", "--deploy", code, "-n", ns,
        ]);
        assert_eq!(rc, 0, "{err}");
    }
    let lines = |args: &[&str]| -> Vec<String> {
        let (rc, out, err) = s.cli(args);
        assert_eq!(rc, 0, "{args:?}: {err}");
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let default_only = lines(&["fn", "list"]);
    assert_eq!(default_only.len(), 2, "{default_only:?}");
    assert!(
        default_only[1].starts_with("hi-default "),
        "{default_only:?}"
    );
    let every = lines(&["fn", "list", "-A"]);
    assert!(every[0].starts_with("NAMESPACE NAME "), "{every:?}");
    assert_eq!(every.len(), 3, "{every:?}");
    assert!(
        every.iter().any(|l| l.starts_with("default hi-default ")),
        "{every:?}"
    );
    assert!(
        every.iter().any(|l| l.starts_with("shop hi-shop ")),
        "{every:?}"
    );
    for list in [
        &["env", "list", "--all-namespaces"][..],
        &["route", "list", "-A"],
        &["pkg", "list", "-A"],
    ] {
        let out = lines(list);
        assert_eq!(out.len(), 3, "{list:?}: {out:?}");
        assert!(out.iter().any(|l| l.contains("shop")), "{list:?}: {out:?}");
    }
    // One namespace or all, not both.
    let (status, body) = s.call(
        "GET",
        "/v1/functions?namespace=shop&all_namespaces=true",
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid", "{body}");
}

/// Fission's spellings: `-n` for the namespace, `fn delete --ignorenotfound`.
#[test]
fn fissions_short_namespace_and_ignorenotfound() {
    let s = Server::start();
    let (rc, _, err) = s.cli(&["env", "create", "py", "--runtime", "python", "-n", "shop"]);
    assert_eq!(rc, 0, "{err}");
    s.ok("GET", "/v1/environments/py?namespace=shop", None);
    let (rc, _, _) = s.cli(&["fn", "delete", "nope"]);
    assert_ne!(rc, 0);
    let (rc, out, err) = s.cli(&["fn", "delete", "nope", "--ignorenotfound"]);
    assert_eq!((rc, out.as_str()), (0, ""), "{err}");
    // `--fns`, the older spelling Fission Workflows' deploy scripts use.
    let (rc, _, err) = s.cli(&[
        "env",
        "create",
        "js",
        "--runtime",
        "nodejs",
        "--fns",
        "shop",
    ]);
    assert_eq!(rc, 0, "{err}");
    s.ok("GET", "/v1/environments/js?namespace=shop", None);
    // A package named by Fusion is said as Fission's CLI says it, for the
    // scripts that take the name from that line.
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("hello.py");
    std::fs::write(&code, "def main():\n    return 'hi'\n").unwrap();
    let (rc, out, err) = s.cli(&[
        "pkg",
        "create",
        "--env",
        "py",
        "-n",
        "shop",
        "--deploy",
        code.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    let line = out.trim();
    assert!(
        line.starts_with("Package '") && line.ends_with("' created"),
        "{out}"
    );
    let name = line.split('\'').nth(1).unwrap();
    s.ok("GET", &format!("/v1/packages/{name}?namespace=shop"), None);
}

/// Writes an executable shell script for the binary environment.
fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

/// As Fission's `httptrigger delete --function F`: only the routes whose one
/// target is F go. A canary route that also sends requests to another
/// function is left, and said, so deleting the old function's routes after a
/// canary does not cut off the new one.
#[test]
fn route_delete_by_function_leaves_the_routes_it_shares() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        (out, err)
    };
    for f in ["a1", "a2"] {
        let code = script(&dir, &format!("{f}.sh"), &format!("echo {f}"));
        cli(&["fn", "create", f, "--env", "binary", "--code", &code]);
    }
    cli(&[
        "route",
        "create",
        "solo",
        "--url",
        "/solo",
        "--function",
        "a1",
    ]);
    cli(&[
        "route",
        "create",
        "split",
        "--url",
        "/split",
        "--function",
        "a1",
        "--weight",
        "50",
        "--function",
        "a2",
        "--weight",
        "50",
    ]);
    let (out, err) = cli(&["route", "delete", "--function", "a1"]);
    assert_eq!(out, "route solo deleted\n", "{err}");
    assert_eq!(
        err,
        "route split: its split also sends traffic to a2: left; change its weights (fusion route update split --function ...) or delete it by name\n"
    );
    assert_eq!(s.call("GET", "/v1/routes/solo", None).0, 404);
    let split = s.ok("GET", "/v1/routes/split", None);
    assert_eq!(split["function_weights"], json!({"a1": 50, "a2": 50}));
    let answer = s.get("/split");
    assert_eq!(answer.status(), 200);
    let body = answer.text().unwrap();
    assert!(body == "a1\n" || body == "a2\n", "{body}");
    // As JSON: one array of what was deleted, empty when nothing was.
    cli(&[
        "route",
        "create",
        "solo",
        "--url",
        "/solo",
        "--function",
        "a1",
    ]);
    let (out, _) = cli(&["route", "delete", "--function", "a1", "-o", "json"]);
    let deleted: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        deleted,
        json!([{"deleted": {"kind": "route", "namespace": "default", "name": "solo"}}])
    );
    let (out, _) = cli(&["route", "delete", "--function", "a1", "-o", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
}

/// Fission's usual teardown, `fn delete F; env delete E`: the package `fn
/// delete` leaves holds the environment, which is said with the remedy;
/// `env delete --force` deletes such packages first. Functions still hold it.
#[test]
fn env_delete_force_deletes_the_packages_left_for_it() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let code = script(&dir, "hi.sh", "echo hi");
    let cli = |args: &[&str]| {
        let (rc, out, err) = s.cli(args);
        assert_eq!(rc, 0, "{args:?}: {out}{err}");
        (out, err)
    };
    cli(&[
        "pkg", "create", "--name", "p1", "--env", "binary", "--deploy", &code,
    ]);
    cli(&["fn", "create", "f1", "--env", "binary", "--pkgname", "p1"]);
    // A function uses it: refused, with --force too.
    let (rc, _, err) = s.cli(&["env", "delete", "binary", "--force"]);
    assert_ne!(rc, 0);
    assert!(err.contains("used by functions f1"), "{err}");
    assert_eq!(s.call("GET", "/v1/packages/p1", None).0, 200);

    cli(&["fn", "delete", "f1"]);
    let (rc, _, err) = s.cli(&["env", "delete", "binary"]);
    assert_ne!(rc, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--force deletes the packages no function uses (p1) first")
            && err.contains("fusion pkg delete --orphan"),
        "{err}"
    );
    let (out, err) = cli(&["env", "delete", "binary", "-f"]);
    assert_eq!(out, "environment binary deleted\n");
    assert!(err.contains("package p1 deleted"), "{err}");
    assert_eq!(s.call("GET", "/v1/packages/p1", None).0, 404);
    assert_eq!(s.call("GET", "/v1/environments/binary", None).0, 404);
}

/// Fission's package flags: `--code` (one file run as it is), `--source`
/// (`--src`), the checksum flags (said not to be applied), `pkg update
/// --force` (needed when several functions run the package, as in Fission),
/// and `pkg delete --force` (taken; a package in use is still kept).
#[test]
fn fissions_package_flags() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let one = script(&dir, "one.sh", "echo one");
    let two = script(&dir, "two.sh", "echo two");
    let cli = |args: &[&str]| {
        let (rc, out, err) = s.cli(args);
        assert_eq!(rc, 0, "{args:?}: {out}{err}");
        (out, err)
    };
    let (_, err) = cli(&[
        "pkg",
        "create",
        "--name",
        "p",
        "--env",
        "binary",
        "--code",
        &one,
        "--insecure",
        "--deploychecksum",
        "abc",
    ]);
    assert!(
        err.contains("warning: --insecure, --deploychecksum not applied"),
        "{err}"
    );
    let p = s.ok("GET", "/v1/packages/p", None);
    assert!(
        p["deployment"].is_object() && p.get("source").is_none(),
        "{p}"
    );
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("build.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let (_, err) = cli(&[
        "pkg",
        "create",
        "--name",
        "built",
        "--env",
        "binary",
        "--source",
        src.path().to_str().unwrap(),
        "--srcchecksum",
        "abc",
    ]);
    assert!(err.contains("--srcchecksum not applied"), "{err}");
    assert!(s.ok("GET", "/v1/packages/built", None)["source"].is_object());

    cli(&["fn", "create", "f1", "--env", "binary", "--pkgname", "p"]);
    // One function: updated as before.
    cli(&["pkg", "update", "p", "--code", &two]);
    eventually(Duration::from_secs(30), "f1 runs the new code", || {
        s.cli(&["fn", "test", "f1"]).1 == "two\n"
    });
    cli(&["fn", "create", "f2", "--env", "binary", "--pkgname", "p"]);
    let (rc, _, err) = s.cli(&["pkg", "update", "p", "--code", &one]);
    assert_ne!(rc, 0);
    assert!(
        err.contains(
            "package \"p\" is run by functions f1, f2: --force updates it for all of them"
        ),
        "{err}"
    );
    cli(&["pkg", "update", "p", "--code", &one, "-f"]);
    eventually(Duration::from_secs(30), "f2 runs the new code", || {
        s.cli(&["fn", "test", "f2"]).1 == "one\n"
    });
    let (rc, _, err) = s.cli(&["pkg", "delete", "p", "--force"]);
    assert_ne!(rc, 0);
    assert!(
        err.contains("--force does not delete a package functions use here"),
        "{err}"
    );
    assert_eq!(s.call("GET", "/v1/packages/p", None).0, 200);
}

/// Fission's flags that mean nothing here are taken with a warning that says
/// what they were, as its other Kubernetes-only flags are, and those that
/// mean something do it: `fn logs --reverse`, `mqt list --mqtype`.
#[test]
fn fissions_other_flags_are_taken() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let code = script(&dir, "talk.sh", "echo first >&2\necho second >&2\necho ok");
    let cli = |args: &[&str]| {
        let (rc, out, err) = s.cli(args);
        assert_eq!(rc, 0, "{args:?}: {out}{err}");
        (out, err)
    };
    let (_, err) = cli(&[
        "env",
        "create",
        "binary",
        "--runtime",
        "binary",
        "--poolsize",
        "0",
        "--graceperiod",
        "10",
        "--keeparchive",
        "--imagepullsecret",
        "pull",
        "--externalnetwork",
        "--labels",
        "a=b",
        "--annotation",
        "x=y",
    ]);
    for flag in [
        "--graceperiod",
        "--keeparchive",
        "--imagepullsecret",
        "--externalnetwork",
        "--labels and --annotation",
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("warning: {flag} ("))
                    && l.ends_with(": not applied here")),
            "{flag}: {err}"
        );
    }
    let (_, err) = cli(&["env", "update", "binary", "--period", "5"]);
    assert!(err.contains("--graceperiod"), "{err}");
    let (_, err) = cli(&[
        "fn",
        "create",
        "talk",
        "--env",
        "binary",
        "--code",
        &code,
        "--labels",
        "a=b",
        "--annotation",
        "x=y",
        "--retainpods",
        "1",
        "--specializationtimeout",
        "60",
        "--targetcpu",
        "50",
    ]);
    assert!(err.contains("warning: --labels and --annotation were Kubernetes metadata of Fission's function: not applied here"), "{err}");
    assert!(err.contains("warning: --retainpods was how many pods Fission keeps after specializing: not applied here"), "{err}");
    assert!(err.contains("warning: --specializationtimeout was how long Fission waits for a newdeploy function's pod to be ready: not applied here"), "{err}");
    assert!(err.contains("warning: --targetcpu was the CPU use Fission's autoscaler keeps a newdeploy function's pods at: not applied here"), "{err}");
    assert!(!err.contains("limits"), "not resource limits: {err}");

    // `fn logs -r`: the newest line first.
    assert_eq!(cli(&["fn", "test", "talk"]).0, "ok\n");
    eventually(Duration::from_secs(30), "the call's log lines", || {
        s.cli(&["fn", "logs", "talk"]).1.contains("second")
    });
    let (reversed, _) = cli(&["fn", "logs", "talk", "-r", "--all-pods"]);
    let (logs, _) = cli(&["fn", "logs", "talk"]);
    let newest_first: Vec<&str> = reversed.lines().collect();
    let mut oldest_first: Vec<&str> = logs.lines().take(newest_first.len()).collect();
    oldest_first.reverse();
    assert_eq!(newest_first, oldest_first, "{reversed}\n---\n{logs}");
    let at = |text: &str, what: &str| text.find(what).unwrap_or_else(|| panic!("{text}"));
    assert!(
        at(&reversed, "second") < at(&reversed, "first"),
        "{reversed}"
    );
    let (_, err) = cli(&["fn", "logs", "talk", "--pod", "poolmgr-x"]);
    assert!(err.contains("warning: --pod poolmgr-x"), "{err}");
    let (rc, _, _) = s.cli(&["fn", "logs", "talk", "-r", "-f"]);
    assert_eq!(rc, 2, "--reverse is not for --follow");

    // `mqt list --mqtype`, and `--secret` said not to be used.
    let (_, err) = cli(&[
        "mqt",
        "create",
        "orders",
        "--function",
        "talk",
        "--topic",
        "orders.new",
        "--mqtype",
        "nats-jetstream",
        "--secret",
        "creds",
    ]);
    assert!(err.contains("warning: --secret is not applied"), "{err}");
    let (out, _) = cli(&["mqt", "list", "--mqtype", "nats-jetstream"]);
    assert!(out.contains("orders"), "{out}");
    let (out, _) = cli(&["mqt", "list", "--mqtype", "kafka", "-o", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));

    // Fission's global flags.
    cli(&["fn", "list", "-v", "2"]);
    let (_, err) = cli(&["fn", "list", "--verbosity", "0", "--kube-context", "kind-x"]);
    assert!(err.contains("--kube-context kind-x is not used"), "{err}");
}

/// Secrets and configmaps take `--ignorenotfound` and `-A` as every other
/// delete and list does.
#[test]
fn secrets_and_configmaps_take_ignorenotfound_and_all_namespaces() {
    let s = Server::start();
    for noun in ["secret", "configmap"] {
        for ns in ["default", "shop"] {
            let (rc, out, err) = s.cli(&[
                noun,
                "create",
                &format!("{noun}-{ns}"),
                "-n",
                ns,
                "--from-literal",
                "k=v",
            ]);
            assert_eq!(rc, 0, "{out}{err}");
        }
        let (rc, out, err) = s.cli(&[noun, "list"]);
        assert_eq!(rc, 0, "{err}");
        assert_eq!(out.lines().count(), 2, "{out}");
        let (rc, out, err) = s.cli(&[noun, "list", "-A", "-o", "json"]);
        assert_eq!(rc, 0, "{err}");
        let all: Value = serde_json::from_str(&out).unwrap();
        let mut names: Vec<&str> = all
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["name"].as_str())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [format!("{noun}-default"), format!("{noun}-shop")],
            "{out}"
        );
        let (rc, _, _) = s.cli(&[noun, "delete", "nope"]);
        assert_ne!(rc, 0);
        let (rc, out, err) = s.cli(&[noun, "delete", "nope", "--ignorenotfound"]);
        assert_eq!((rc, out.as_str()), (0, ""), "{err}");
        let (rc, out, err) = s.cli(&[noun, "delete", "nope", "--ignorenotfound", "-o", "json"]);
        assert_eq!(rc, 0, "{err}");
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"deleted": null})
        );
        let (rc, _, err) = s.cli(&[
            noun,
            "delete",
            &format!("{noun}-shop"),
            "-n",
            "shop",
            "--ignorenotfound",
        ]);
        assert_eq!(rc, 0, "{err}");
    }
    let (status, body) = s.call(
        "GET",
        "/v1/secrets?namespace=shop&all_namespaces=true",
        None,
    );
    assert_eq!(status, 400, "{body}");
}

/// `pkg delete --orphan --name P` deletes both, as Fission's; with `-o json`
/// a delete of every match is one array, and a delete that found nothing
/// (`--ignorenotfound`, no orphans) answers JSON all the same.
#[test]
fn pkg_delete_orphan_takes_a_name_and_deletes_of_nothing_answer_json() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let code = script(&dir, "hi.sh", "echo hi");
    let cli = |args: &[&str]| {
        let (rc, out, err) = s.cli(args);
        assert_eq!(rc, 0, "{args:?}: {out}{err}");
        out
    };
    for p in ["used", "orphan1", "orphan2", "kept"] {
        cli(&[
            "pkg", "create", "--name", p, "--env", "binary", "--deploy", &code,
        ]);
    }
    cli(&[
        "fn",
        "create",
        "user",
        "--env",
        "binary",
        "--pkgname",
        "used",
    ]);
    cli(&[
        "fn",
        "create",
        "keeper",
        "--env",
        "binary",
        "--pkgname",
        "kept",
    ]);
    cli(&["fn", "delete", "user"]);
    let out = cli(&[
        "pkg", "delete", "--orphan", "--name", "orphan1", "-o", "json",
    ]);
    let deleted: Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<&str> = deleted
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["deleted"]["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["orphan1", "orphan2", "used"], "{out}");
    assert_eq!(s.call("GET", "/v1/packages/kept", None).0, 200);
    // Nothing to delete: JSON all the same.
    let out = cli(&["pkg", "delete", "--orphan", "-o", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
    for args in [
        &["pkg", "delete", "gone", "--ignorenotfound", "-o", "json"][..],
        &["fn", "delete", "gone", "--ignorenotfound", "-o", "json"],
        &["route", "delete", "gone", "--ignorenotfound", "-o", "json"],
    ] {
        let out = cli(args);
        assert_eq!(
            serde_json::from_str::<Value>(&out)
                .unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}")),
            json!({"deleted": null}),
            "{args:?}"
        );
    }
}

/// A method given twice is stored once; `timer showschedule -o json` is
/// JSON; a URL given as code is said in one line.
#[test]
fn methods_once_schedules_as_json_and_urls_as_code_refused() {
    let s = Server::start();
    s.env("binary", "binary", 0);
    let dir = tempfile::tempdir().unwrap();
    let code = script(&dir, "hi.sh", "echo hi");
    let cli = |args: &[&str]| {
        let (rc, out, err) = s.cli(args);
        assert_eq!(rc, 0, "{args:?}: {out}{err}");
        out
    };
    cli(&["fn", "create", "keeper", "--env", "binary", "--code", &code]);
    cli(&[
        "route",
        "create",
        "twice",
        "--url",
        "/twice",
        "--function",
        "keeper",
        "--method",
        "GET",
        "--method",
        "get",
        "--method",
        "POST",
    ]);
    assert_eq!(
        s.ok("GET", "/v1/routes/twice", None)["methods"],
        json!(["GET", "POST"])
    );
    cli(&[
        "route", "update", "twice", "--method", "put", "--method", "PUT",
    ]);
    assert_eq!(
        s.ok("GET", "/v1/routes/twice", None)["methods"],
        json!(["PUT"])
    );

    let out = cli(&[
        "timer",
        "showschedule",
        "--cron",
        "@hourly",
        "--round",
        "2",
        "-o",
        "json",
    ]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert!(shown["current"].is_string(), "{out}");
    assert_eq!(shown["next"].as_array().map(Vec::len), Some(2), "{out}");

    for args in [
        &[
            "fn",
            "create",
            "web",
            "--env",
            "binary",
            "--code",
            "https://example.com/hi.sh",
        ][..],
        &[
            "pkg",
            "create",
            "--env",
            "binary",
            "--deploy",
            "http://example.com/hi.zip",
        ],
        &[
            "pkg",
            "create",
            "--env",
            "binary",
            "--src",
            "https://example.com/src.zip",
        ],
    ] {
        let (rc, _, err) = s.cli(args);
        assert_ne!(rc, 0, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("Fusion does not fetch code from URLs; download it first"),
            "{args:?}: {err}"
        );
    }
}
