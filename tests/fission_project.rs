//! A Fission project, as a Fission user has it, applied with one command on the
//! container backend and no network: Fission's `fission.io/v1` documents in
//! `specs/`, `ArchiveUploadSpec`s of source folders, a python source package
//! whose requirement comes from a wheel vendored in it, a nodejs source package
//! whose dependency is a tarball vendored in it, a secret and a configmap the
//! python function reads at Fission's paths, HTTP triggers. It is invoked,
//! changed and applied again, applied once more without change, and destroyed,
//! leaving nothing behind. Fission's own `spec_archive` test data applies too.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, Server};
use serde_json::Value;

fn container_server() -> Server {
    Server::start_with(&[("FUSION_BACKEND", "container")])
}

fn python_main(greeting: &str) -> String {
    format!(
        "import os, shopdep\n\n\
         def read(path):\n    with open(path) as f:\n        return f.read()\n\n\
         def main():\n    return '{greeting} %s %s %s %s' % (shopdep.WORD,\n        \
         read('/secrets/default/db/password'),\n        \
         read('/configs/default/settings/colour'), os.environ.get('MODE', '?'))\n"
    )
}

const SPECS: &str = r#"apiVersion: fission.io/v1
kind: Environment
metadata:
  name: python
  namespace: default
spec:
  builder:
    command: build
    image: fission/python-builder
  poolsize: 1
  runtime:
    image: fission/python-env
  version: 3
---
apiVersion: fission.io/v1
kind: Environment
metadata:
  name: nodejs
spec:
  builder:
    image: ghcr.io/fission/node-builder
  poolsize: 1
  runtime:
    image: ghcr.io/fission/node-env:latest
  version: 3
---
kind: ArchiveUploadSpec
name: py-src
include:
  - py/*
---
kind: ArchiveUploadSpec
name: js-src
include:
  - js/*
---
apiVersion: fission.io/v1
kind: Package
metadata:
  name: pyshop
  namespace: default
spec:
  environment:
    name: python
    namespace: default
  source:
    type: url
    url: archive://py-src
status:
  buildstatus: pending
---
apiVersion: fission.io/v1
kind: Package
metadata:
  name: jsshop
spec:
  environment:
    name: nodejs
  source:
    type: url
    url: archive://js-src
---
apiVersion: v1
kind: Secret
metadata:
  name: db
stringData:
  password: hunter2
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  colour: blue
---
apiVersion: fission.io/v1
kind: Function
metadata:
  name: pyfn
  namespace: default
spec:
  environment:
    name: python
    namespace: default
  package:
    functionName: main.main
    packageref:
      name: pyshop
      namespace: default
  secrets:
  - name: db
    namespace: default
  configmaps:
  - name: settings
    namespace: default
  InvokeStrategy:
    ExecutionStrategy:
      ExecutorType: poolmgr
      MinScale: 0
      MaxScale: 3
    StrategyType: execution
  functionTimeout: 120
---
apiVersion: fission.io/v1
kind: Function
metadata:
  name: jsfn
spec:
  environment:
    name: nodejs
  package:
    functionName: hello
    packageref:
      name: jsshop
  functionTimeout: 120
---
apiVersion: fission.io/v1
kind: HTTPTrigger
metadata:
  name: pyroute
spec:
  relativeurl: /shop/py
  methods: [GET]
  functionref:
    type: name
    name: pyfn
---
apiVersion: fission.io/v1
kind: HTTPTrigger
metadata:
  name: jsroute
spec:
  relativeurl: /shop/js
  functionref:
    type: name
    name: jsfn
"#;

/// Waits for `path` on the router to answer 200 (a call waits for its package's
/// build, within the function's timeout); answers its body.
fn answer(s: &Server, path: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let r = s.get(path);
        let (status, body) = (r.status().as_u16(), r.text().unwrap_or_default());
        if status == 200 {
            return body;
        }
        let packages = s.ok("GET", "/v1/packages", None);
        assert!(
            std::time::Instant::now() < deadline && status != 424 && status != 502,
            "GET {path}: {status} {body}\npackages: {packages:#}"
        );
    }
}

fn list(s: &Server, path: &str) -> Vec<Value> {
    match s.ok("GET", path, None) {
        Value::Array(items) => items,
        other => panic!("{other}"),
    }
}

#[test]
fn a_fission_project_applies_runs_changes_and_is_destroyed_with_one_command_each() {
    let s = container_server();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("shop");
    std::fs::create_dir_all(&project).unwrap();
    let cli = |args: &[&str]| -> String {
        let (code, out, err) = s.cli_in(&project, args);
        assert_eq!(code, 0, "fusion {}: {out}{err}", args.join(" "));
        out + &err
    };
    cli(&["spec", "init"]);
    std::fs::write(project.join("specs/shop.yaml"), SPECS).unwrap();
    // The python source: a requirement from a wheel vendored in it.
    let py = project.join("py");
    common::vendored::wheel(&py.join("wheels"), "shopdep", "WORD = 'wheel'\n");
    std::fs::write(
        py.join("requirements.txt"),
        "--no-index\n--find-links ./wheels\nshopdep==1.0\n",
    )
    .unwrap();
    std::fs::write(py.join("main.py"), python_main("hi")).unwrap();
    // The nodejs source: a dependency from a tarball vendored in it.
    let js = project.join("js");
    common::vendored::tarball(
        tmp.path(),
        &js.join("vendor"),
        "leftword",
        "module.exports = () => 'tarball';\n",
    );
    std::fs::write(
        js.join("package.json"),
        r#"{"name": "jsshop", "version": "1.0.0", "dependencies": {"leftword": "file:vendor/leftword-1.0.0.tgz"}}"#,
    )
    .unwrap();
    std::fs::write(
        js.join("hello.js"),
        "const left = require('leftword');\nmodule.exports = async () => ({ status: 200, body: 'js ' + left() });\n",
    )
    .unwrap();

    let out = cli(&["spec", "validate"]);
    assert!(out.contains("the specs are valid"), "{out}");
    // `-n` as on other commands (the namespace of documents that name none).
    let out = cli(&["spec", "validate", "-n", "default"]);
    assert!(out.contains("the specs are valid"), "{out}");
    // --wait: back once the builds have ended, each said.
    let out = cli(&["spec", "apply", "--wait"]);
    let pkg = s.ok("GET", "/v1/packages/pyshop", None);
    assert_eq!(pkg["status"]["buildstatus"], "succeeded", "{pkg}");
    for made in [
        "built     Package pyshop (succeeded)",
        "built     Package jsshop (succeeded)",
        "created   Environment python",
        "created   Package pyshop",
        "created   Secret db",
        "created   ConfigMap settings",
        "created   Function pyfn",
        "created   HTTPTrigger jsroute",
    ] {
        assert!(out.contains(made), "{made}: {out}");
    }
    // Fission's images are not on this machine: the bundled runtimes run, and
    // apply says so.
    assert!(
        out.contains("environment python: image fission/python-env is not on this machine; the bundled python runtime runs instead"),
        "{out}"
    );
    let env = s.ok("GET", "/v1/environments/python", None);
    assert_eq!(env["status"]["image"]["runtime"], "python", "{env}");

    assert_eq!(answer(&s, "/shop/py"), "hi wheel hunter2 blue ?");
    assert_eq!(answer(&s, "/shop/js"), "js tarball");
    let pkg = s.ok("GET", "/v1/packages/pyshop", None);
    assert_eq!(pkg["status"]["buildstatus"], "succeeded", "{pkg}");

    // A second apply changes nothing.
    let out = cli(&["spec", "apply"]);
    assert!(out.contains("everything up to date"), "{out}");

    // Changed code and configmap, applied again: the new ones answer.
    std::fs::write(py.join("main.py"), python_main("hello")).unwrap();
    std::fs::write(
        project.join("specs/shop.yaml"),
        SPECS.replace("colour: blue", "colour: green"),
    )
    .unwrap();
    let out = cli(&["spec", "apply"]);
    assert!(out.contains("updated   Package pyshop"), "{out}");
    assert!(out.contains("updated   ConfigMap settings"), "{out}");
    assert!(out.contains("unchanged Package jsshop"), "{out}");
    let mut now = String::new();
    eventually(
        Duration::from_secs(240),
        "the changed code and configmap answer",
        || {
            now = answer(&s, "/shop/py");
            now == "hello wheel hunter2 green ?"
        },
    );

    // Destroyed: nothing of the project is left.
    let out = cli(&["spec", "destroy"]);
    assert!(out.contains("deleted   Environment python"), "{out}");
    for path in [
        "/v1/environments",
        "/v1/functions",
        "/v1/routes",
        "/v1/packages",
        "/v1/secrets",
        "/v1/configmaps",
    ] {
        assert!(list(&s, path).is_empty(), "{path}: {:?}", list(&s, path));
    }
    eventually(Duration::from_secs(30), "every instance stopped", || {
        list(&s, "/v1/instances").is_empty()
    });
    let r = s.get("/shop/py");
    assert_eq!(r.status().as_u16(), 404);
    let out = cli(&["spec", "list"]);
    assert!(out.contains("nothing applied"), "{out}");
}

#[test]
fn fissions_spec_archive_data_applies_and_both_its_functions_answer() {
    let s = container_server();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("spec_archive");
    let specs = project.join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    // Fission's two files, unchanged.
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fission/spec_archive/specs");
    for f in ["env-node.yaml", "pkg-document-source-archive.yaml"] {
        std::fs::copy(fixtures.join(f), specs.join(f)).unwrap();
    }
    // The rest of Fission's folder, as `fission spec` writes it: the deploy
    // archive and its package, the two functions, the DeploymentConfig.
    std::fs::write(
        specs.join("pkg-document-deploy-archive.yaml"),
        "include:\n  - func/*\nkind: ArchiveUploadSpec\nname: functions-deploy-archive\n\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata:\n  creationTimestamp: null\n  name: deployarchive\n  namespace: default\nspec:\n  deployment:\n    checksum: {}\n    type: url\n    url: archive://functions-source-archive\n  environment:\n    name: dummyfoobarnode\n    namespace: default\n  source:\n    checksum: {}\nstatus:\n  buildstatus: none\n",
    )
    .unwrap();
    for (name, entry) in [("deployarchive", "deploy"), ("sourcearchive", "source")] {
        std::fs::write(
            specs.join(format!("function-{name}.yaml")),
            format!("apiVersion: fission.io/v1\nkind: Function\nmetadata:\n  creationTimestamp: null\n  name: {name}\n  namespace: default\nspec:\n  InvokeStrategy:\n    ExecutionStrategy:\n      ExecutorType: poolmgr\n      MaxScale: 0\n      MinScale: 0\n      SpecializationTimeout: 120\n      TargetCPUPercent: 0\n    StrategyType: execution\n  concurrency: 500\n  environment:\n    name: dummyfoobarnode\n    namespace: default\n  functionTimeout: 60\n  idletimeout: 120\n  package:\n    functionName: {entry}\n    packageref:\n      name: {name}\n      namespace: default\n  requestsPerPod: 1\n  resources: {{}}\n"),
        )
        .unwrap();
    }
    std::fs::write(
        specs.join("fission-deployment-config.yaml"),
        "apiVersion: fission.io/v1\nkind: DeploymentConfig\nname: test-spec-archive\nuid: 04b21526-8873-4dc2-b897-e87ed5347670\n",
    )
    .unwrap();
    // The sources, as Fission's test writes them.
    let func = project.join("func");
    std::fs::create_dir_all(&func).unwrap();
    let hello = "module.exports = async function(context) {\n    return { status: 200, body: \"hello, world!\\n\" };\n}\n";
    std::fs::write(func.join("deploy.js"), hello).unwrap();
    std::fs::write(func.join("source.js"), hello).unwrap();
    std::fs::write(
        func.join("package.json"),
        r#"{"name":"hello","version":"1.0.0","description":"hello function"}"#,
    )
    .unwrap();

    let (code, out, err) = s.cli_in(&project, &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        answer(&s, "/fission-function/deployarchive"),
        "hello, world!\n"
    );
    assert_eq!(
        answer(&s, "/fission-function/sourcearchive"),
        "hello, world!\n"
    );
    let pkg = s.ok("GET", "/v1/packages/sourcearchive", None);
    assert_eq!(pkg["status"]["buildstatus"], "succeeded", "{pkg}");
    let (code, out, err) = s.cli_in(&project, &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(list(&s, "/v1/functions").is_empty());
}
