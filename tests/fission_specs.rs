//! `fusion spec` with Fission's own documents: Fission's spec test data applied
//! unchanged, a project's lifecycle (init, validate, apply, apply again, --delete,
//! list, destroy), and every mistake reported with its file, line and column.

mod common;

use std::path::{Path, PathBuf};

use common::Server;
use serde_json::{json, Value};

/// A copy of a fixture project under `tests/fixtures/fission/`.
fn project(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fission")
        .join(name);
    let to = tmp.path().join(name);
    copy_dir(&from, &to);
    (tmp, to)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A project folder holding `hello.py` and `specs/all.yaml` (`docs`).
fn hello_project(docs: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(specs.join("hello.py"), "def main():\n    return 'hi'\n").unwrap();
    std::fs::write(specs.join("all.yaml"), docs).unwrap();
    tmp
}

fn names(s: &Server, path: &str) -> Vec<String> {
    match s.ok("GET", path, None) {
        Value::Array(items) => items
            .iter()
            .map(|i| i["name"].as_str().unwrap_or("").to_string())
            .collect(),
        other => panic!("{other}"),
    }
}

#[test]
fn fissions_spec_merge_data_applies_unchanged_and_a_second_apply_changes_nothing() {
    let s = Server::start();
    let (_tmp, dir) = project("spec_merge");

    // Offline: valid, with the Kubernetes-only fields named where they are.
    let (code, out, err) = s.cli_in(&dir, &["spec", "validate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 Environment"), "{out}");
    assert!(
        err.contains("env-nodend.yaml:21:5: `spec.runtime.podspec` is Kubernetes-only"),
        "{err}"
    );

    let (code, out, err) = s.cli_in(&dir, &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created   Environment nodend"), "{out}");
    assert!(out.contains("created   Environment nodep"), "{out}");
    let env = s.ok("GET", "/v1/environments/nodep", None);
    assert_eq!(env["image"], "ghcr.io/fission/node-env", "{env}");
    assert_eq!(env["status"]["image"]["source"], "bundled", "{env}");
    assert_eq!(env["status"]["image"]["runtime"], "nodejs", "{env}");
    // nodend is version 3 with poolsize 0; nodep is version 1, where Fission keeps 3.
    assert_eq!(s.ok("GET", "/v1/environments/nodend", None)["poolsize"], 0);
    assert_eq!(env["poolsize"], 3);

    let (code, out, err) = s.cli_in(&dir, &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("everything up to date"), "{out}");
    assert!(
        !out.contains("created") && !out.contains("updated"),
        "{out}"
    );

    let (code, out, err) = s.cli_in(&dir, &["spec", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("spec-merge"), "{out}");
    assert_eq!(out.matches("present").count(), 2, "{out}");

    let (code, out, err) = s.cli_in(&dir, &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted   Environment nodend"), "{out}");
    assert!(names(&s, "/v1/environments").is_empty());
    let (status, _) = s.call(
        "GET",
        "/v1/deployments/b1573a35-f3a2-45a8-a430-1f1a08d71177",
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn every_mistake_is_reported_with_its_place_and_nothing_is_applied() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("a.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: py\nspec:\n  runtime:\n    image: fission/python-env\n  poolsize: 1\n  version: 3\n  colour: blue\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: hello\nspec:\n  environment:\n    name: py\n  package:\n    packageref:\n      name: missing\n",
    )
    .unwrap();
    std::fs::write(
        specs.join("b.yaml"),
        "apiVersion: fission.io/v1\nkind: Gadget\nmetadata:\n  name: g\n---\napiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: Bad_Name\nspec:\n  functionref: {name: hello, type: name}\n  relativeurl: /dup/{x\n  methods: [GETT]\n",
    )
    .unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("a.yaml:10:3: unknown field `spec.colour` (ignored)"),
        "{err}"
    );
    assert!(
        // At the reference itself, `packageref.name`.
        err.contains("a.yaml:20:5: Function hello references Package default/missing"),
        "{err}"
    );
    assert!(err.contains("b.yaml:2:1: unknown kind \"Gadget\""), "{err}");
    // Every mistake of a document at once, each at its field.
    assert!(
        err.contains("b.yaml:9:3: name \"Bad_Name\" is not a DNS-1123 label"),
        "{err}"
    );
    assert!(
        err.contains("b.yaml:12:3: HTTPTrigger Bad_Name: ") && err.contains("/dup/{x"),
        "{err}"
    );
    assert!(
        err.contains("b.yaml:13:3: HTTPTrigger Bad_Name: route: unknown method \"GETT\""),
        "{err}"
    );
    assert!(err.contains("5 errors in specs"), "{err}");

    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0, "{err}");
    assert!(names(&s, "/v1/environments").is_empty());

    // A document that is not YAML at all: the place of the fault.
    std::fs::write(specs.join("b.yaml"), "kind: [Environment\n").unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(err.contains("b.yaml:2:1: invalid YAML"), "{err}");

    // A key given twice: where the second is.
    std::fs::write(
        specs.join("b.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: e\nspec:\n  version: 3\n  poolsize: 1\n  poolsize: 2\n",
    )
    .unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("b.yaml:8:3: invalid YAML: `spec.poolsize` is given twice (first at line 7)"),
        "{err}"
    );
}

fn env_doc(name: &str) -> String {
    format!(
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: {name}\nspec:\n  runtime:\n    image: fission/python-env\n  poolsize: 0\n  version: 3\n"
    )
}

/// An environment the folder needs and the server lacks is found before
/// anything is applied, not by the server half-way through the apply.
#[test]
fn an_environment_neither_in_the_specs_nor_on_the_server_stops_the_apply_first() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("f.yaml"),
        "apiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: p\nspec:\n  environment:\n    name: ghost\n  deployment:\n    type: literal\n    literal: aGk=\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: f\nspec:\n  environment:\n    name: ghost\n  package:\n    packageref:\n      name: p\n",
    )
    .unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing applied: 2 problems:\n"), "{err}");
    assert!(
        err.contains("Function f references Environment default/ghost, which is neither in the specs nor on the server"),
        "{err}"
    );
    assert!(names(&s, "/v1/packages").is_empty());
    s.env("ghost", "python", 0);
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// What an apply stopped before making it (the server refused it) is not
/// said to be kept or deleted later: it never existed.
#[test]
fn what_a_failed_apply_never_made_is_not_kept_or_deleted_later() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(s.cli_in(tmp.path(), &["spec", "init"]).0, 0);
    let bad = env_doc("bad").replace("fission/python-env", "fission/go-env-1.21");
    std::fs::write(
        tmp.path().join("specs/envs.yaml"),
        format!("{}---\n{bad}", env_doc("good")),
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("go-env"), "{err}");
    std::fs::write(tmp.path().join("specs/envs.yaml"), env_doc("good")).unwrap();
    for args in [&["spec", "apply"][..], &["spec", "apply", "--delete"]] {
        let (code, out, err) = s.cli_in(tmp.path(), args);
        assert_eq!(code, 0, "{out}{err}");
        assert!(!out.contains("Environment bad"), "{args:?}: {out}");
    }
    let (_, out, _) = s.cli_in(tmp.path(), &["spec", "list", "-o", "json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed["resources"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
}

/// What a project takes over with --allowconflicts is its own from then on,
/// as Fission rewrites the resource's `fission-uid`: the project it came from
/// no longer destroys it, and may not take it back without --allowconflicts.
#[test]
fn a_resource_taken_over_is_the_new_projects_alone() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let [one, two] = ["one", "two"].map(|p| tmp.path().join(p));
    for project in [&one, &two] {
        std::fs::create_dir_all(project).unwrap();
        assert_eq!(s.cli_in(project, &["spec", "init"]).0, 0);
        std::fs::write(project.join("specs/env.yaml"), env_doc("shared")).unwrap();
    }
    let (code, out, err) = s.cli_in(&one, &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli_in(&two, &["spec", "apply", "--allowconflicts"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("took over Environment shared from project"),
        "{out}"
    );
    let (code, out, err) = s.cli_in(&two, &["spec", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed["resources"],
        json!([{"kind": "Environment", "namespace": "default", "name": "shared", "state": "present"}]),
        "{listed}"
    );
    let (code, _, err) = s.cli_in(&two, &["spec", "apply", "-o", "json"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("spec apply prints a report, not JSON"),
        "{err}"
    );
    let (code, out, err) = s.cli_in(&one, &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(names(&s, "/v1/environments").contains(&"shared".to_string()));
    let (code, _, err) = s.cli_in(&one, &["spec", "apply"]);
    assert_ne!(code, 0);
    assert!(err.contains("was applied by another project"), "{err}");
    let (code, out, err) = s.cli_in(&two, &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!names(&s, "/v1/environments").contains(&"shared".to_string()));
}

#[test]
fn a_project_deletes_only_what_it_applied_and_never_takes_over_another_projects() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    let (code, out, err) = s.cli_in(&one, &["spec", "init"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("project one"), "{out}");
    let (code, _, err) = s.cli_in(&one, &["spec", "init"]);
    assert_ne!(code, 0);
    assert!(err.contains("already"), "{err}");

    std::fs::write(
        one.join("specs/envs.yaml"),
        format!("{}---\n{}", env_doc("first"), env_doc("second")),
    )
    .unwrap();
    std::fs::write(
        one.join("specs/timer.yaml"),
        "apiVersion: fission.io/v1\nkind: TimeTrigger\nmetadata:\n  name: nightly\nspec:\n  cron: \"0 3 * * *\"\n  functionref:\n    type: name\n    name: job\n",
    )
    .unwrap();
    // The timer names a function that is not in the specs: as in Fission, an error.
    let (code, _, err) = s.cli_in(&one, &["spec", "apply"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("TimeTrigger nightly references Function default/job"),
        "{err}"
    );
    std::fs::remove_file(one.join("specs/timer.yaml")).unwrap();

    // An environment created by hand is not taken over.
    s.env("second", "python", 0);
    let (code, _, err) = s.cli_in(&one, &["spec", "apply"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Environment second already exists and was not applied by this project; use --allowconflicts"),
        "{err}"
    );
    let (code, out, err) = s.cli_in(&one, &["spec", "apply", "--allowconflicts"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("updated   Environment second"), "{out}");

    // Another project may not take what this one applied.
    let two = tmp.path().join("two");
    std::fs::create_dir_all(&two).unwrap();
    assert_eq!(s.cli_in(&two, &["spec", "init"]).0, 0);
    std::fs::write(
        two.join("specs/envs.yaml"),
        format!("{}---\n{}", env_doc("third"), env_doc("first")),
    )
    .unwrap();
    let (code, _, err) = s.cli_in(&two, &["spec", "apply"]);
    assert_ne!(code, 0);
    assert!(err.contains("was applied by another project"), "{err}");
    // Refused before anything was made, as Fission checks conflicts first;
    // one problem, one line.
    assert!(err.starts_with("error: nothing applied: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!names(&s, "/v1/environments").contains(&"third".to_string()));
    std::fs::write(two.join("specs/envs.yaml"), env_doc("first")).unwrap();

    // Without `second` in the specs, --delete removes it; a plain apply does not.
    std::fs::write(one.join("specs/envs.yaml"), env_doc("first")).unwrap();
    let (code, out, err) = s.cli_in(&one, &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(names(&s, "/v1/environments").contains(&"second".to_string()));
    let (code, out, err) = s.cli_in(&one, &["spec", "apply", "--delete"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted   Environment second"), "{out}");
    assert_eq!(names(&s, "/v1/environments"), vec!["first".to_string()]);

    // Fusion's short form (no DeploymentConfig) owns nothing, and takes
    // nothing over either.
    let short = tmp.path().join("short");
    std::fs::create_dir_all(&short).unwrap();
    std::fs::write(
        short.join("fusion.yaml"),
        "kind: Environment\nname: first\nruntime: nodejs\npoolsize: 0\n",
    )
    .unwrap();
    let (code, _, err) = s.cli_in(&short, &["spec", "apply", "-f", "fusion.yaml"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("nothing applied")
            && err.contains("Environment first was applied by another project"),
        "{err}"
    );
    let first = s.ok("GET", "/v1/environments/first", None);
    assert_eq!(first["image"], "fission/python-env", "{first}");
    assert!(first.get("runtime").is_none(), "{first}");

    // A route on the server that the folder's would shadow, in any namespace
    // (they share the URL paths), is found before anything is applied, not
    // after the environment and function changed.
    s.env("mine", "python", 0);
    s.ok(
        "POST",
        "/v1/environments?namespace=shop",
        Some(json!({"name": "mine", "runtime": "python", "poolsize": 0})),
    );
    let code = s.upload("f.py", b"def main():\n    return 'f'\n");
    s.ok(
        "POST",
        "/v1/functions?namespace=shop",
        Some(json!({"name": "byhand", "env": "mine", "package": code})),
    );
    s.ok(
        "POST",
        "/v1/routes?namespace=shop",
        Some(json!({"name": "byhand", "url": "/clash", "function": "byhand"})),
    );
    std::fs::write(short.join("g.py"), "def main():\n    return 'g'\n").unwrap();
    std::fs::write(
        short.join("fusion.yaml"),
        "kind: Environment\nname: fresh\nruntime: python\npoolsize: 0\n---\nkind: Function\nname: g\nenv: fresh\ncode: g.py\n---\nkind: Route\nname: r\nurl: /clash\nfunction: g\n",
    )
    .unwrap();
    let (code, _, err) = s.cli_in(&short, &["spec", "apply", "-f", "fusion.yaml"]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing applied"), "{err}");
    assert!(
        err.contains(
            r#"would answer the same requests as route "byhand" in namespace "shop" on the server (/clash)"#
        ),
        "{err}"
    );
    assert!(!names(&s, "/v1/environments").contains(&"fresh".to_string()));
    assert_eq!(
        s.call("DELETE", "/v1/routes/byhand?namespace=shop", None).0,
        204
    );
    assert_eq!(
        s.call("DELETE", "/v1/functions/byhand?namespace=shop", None)
            .0,
        204
    );
    assert_eq!(
        s.call("DELETE", "/v1/environments/mine?namespace=shop", None)
            .0,
        204
    );

    // Destroy removes what the project applied, and nothing else.
    let (code, out, err) = s.cli_in(&one, &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(names(&s, "/v1/environments"), vec!["mine".to_string()]);
}

#[test]
fn triggers_are_stored_and_state_machine_workflows_applied_to_the_engine() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("all.yaml"),
        "apiVersion: fission.io/v1\nkind: MessageQueueTrigger\nmetadata:\n  name: orders\n  namespace: shop\nspec:\n  functionref:\n    type: name\n    name: handle\n  messageQueueType: nats-jetstream\n  topic: orders\n---\napiVersion: fission.io/v1\nkind: Workflow\nmetadata:\n  name: order\nspec:\n  startAt: validate\n  states:\n    validate: {type: Succeed}\n",
    )
    .unwrap();
    // `handle` is not in the specs: the trigger cannot be applied alone.
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "all.yaml:9:5: MessageQueueTrigger shop/orders references Function shop/handle"
        ),
        "{err}"
    );
    std::fs::write(
        specs.join("all.yaml"),
        "apiVersion: fission.io/v1\nkind: Workflow\nmetadata:\n  name: order\nspec:\n  startAt: validate\n  states:\n    validate: {type: Succeed}\n",
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created   Workflow order"), "{out}");
    // The workflow went to the engine, and runs.
    let wf = s.ok("GET", "/v1/workflows/order", None);
    assert!(
        wf["source"].as_str().unwrap().contains("startAt: validate"),
        "{wf}"
    );
    let (status, out) = s.invoke("order", "application/json", r#"{"id": 7}"#);
    assert_eq!((status, out.as_str()), (200, r#"{"id":7}"#));
    let (status, _) = s.call("GET", "/v1/declared/workflows/order", None);
    assert_eq!(status, 404);
    let (code, out, _) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("everything up to date"), "{out}");

    // A Fission trigger whose function is the folder's workflow (as Fission
    // Workflows' triggers named workflows) reaches the workflow.
    std::fs::write(
        specs.join("route.yaml"),
        "apiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: order-route\nspec:\n  relativeurl: /order\n  methods: [POST]\n  functionref:\n    type: name\n    name: order\n",
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        s.ok("GET", "/v1/routes/order-route", None)["workflow"],
        "order"
    );
    let answer = s
        .http
        .post(s.router_url("/order"))
        .header("content-type", "application/json")
        .body(r#"{"id": 8}"#)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(answer, r#"{"id":8}"#);
    let (code, out, _) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("everything up to date"), "{out}");
}

/// A Fission Workflows project's specs, as `fission fn create --spec --env
/// workflow --src W.wf.yaml` writes them: the function (with its package and
/// archive) is a workflow here, and Fission Workflows' environment is not
/// applied; a route to the function reaches the workflow.
#[test]
fn a_function_of_fission_workflows_env_in_specs_is_applied_as_a_workflow() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(s.cli_in(tmp.path(), &["spec", "init"]).0, 0);
    std::fs::write(
        tmp.path().join("echowhale.wf.yaml"),
        "apiVersion: 1\noutput: Echo\ntasks:\n  Echo:\n    run: noop\n    inputs: \"{ $.Invocation.Inputs.default }\"\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("specs/workflows.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: workflow\nspec:\n  runtime:\n    image: fission/workflow-env\n  version: 1\n---\nkind: ArchiveUploadSpec\nname: echowhale-wf-yaml\ninclude:\n  - echowhale.wf.yaml\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: echowhale-pkg\nspec:\n  environment:\n    name: workflow\n    namespace: default\n  deployment:\n    type: url\n    url: archive://echowhale-wf-yaml\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: echowhale\nspec:\n  environment:\n    name: workflow\n    namespace: default\n  package:\n    packageref:\n      name: echowhale-pkg\n      namespace: default\n  concurrency: 500\n---\napiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: echowhale-route\nspec:\n  relativeurl: /whale\n  methods: [POST]\n  functionref:\n    type: name\n    name: echowhale\n",
    )
    .unwrap();
    // Its workflow is checked offline, as the server will check it.
    let file = tmp.path().join("echowhale.wf.yaml");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, "output: Echo\ntasks:\n  Echo: [\n").unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Workflow echowhale: its workflow file, line 3"),
        "{err}"
    );
    // A missing workflow file is said once, as the archive's.
    std::fs::remove_file(&file).unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert_eq!(err.matches("nothing under").count(), 1, "{err}");
    assert!(err.contains("1 error in specs"), "{err}");
    std::fs::write(&file, &good).unwrap();
    // A package missing from the folder is what is wrong: the environment
    // left out is not said to be needed on the server.
    let specs = tmp.path().join("specs/workflows.yaml");
    let declared = std::fs::read_to_string(&specs).unwrap();
    let renamed = declared.replace(
        "packageref:\n      name: echowhale-pkg",
        "packageref:\n      name: other-pkg",
    );
    assert_ne!(renamed, declared);
    std::fs::write(&specs, renamed).unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "Function echowhale references Package default/other-pkg, which is not in the specs"
        ),
        "{err}"
    );
    assert!(!err.contains("must exist on the server"), "{err}");
    std::fs::write(&specs, declared).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("Fusion runs workflows itself"), "{err}");
    assert!(!err.contains("must exist on the server"), "{err}");
    // Fission's default concurrency means nothing for a workflow: not warned about.
    assert!(!err.contains("concurrency 500"), "{err}");
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created   Workflow echowhale"), "{out}");
    assert_eq!(s.call("GET", "/v1/environments/workflow", None).0, 404);
    assert_eq!(s.call("GET", "/v1/functions/echowhale", None).0, 404);
    assert_eq!(
        s.ok("GET", "/v1/routes/echowhale-route", None)["workflow"],
        "echowhale"
    );
    let answer = s
        .http
        .post(s.router_url("/whale"))
        .body("blub")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(answer, "blub");
    let (code, out, _) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("everything up to date"), "{out}");
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.call("GET", "/v1/workflows/echowhale", None).0, 404);
}

/// A package and its function moved to another environment in the specs
/// apply: the package takes its function along (the function's own move is
/// then no change), where the two refused each other before.
#[test]
fn a_package_and_its_function_move_to_another_environment_together() {
    let s = Server::start();
    let docs = |env: &str| {
        format!("kind: Environment\nname: py-old\nruntime: python\npoolsize: 0\n---\nkind: Environment\nname: py-new\nruntime: python\npoolsize: 0\n---\nkind: ArchiveUploadSpec\nname: src\ninclude: [specs/hello.py]\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata: {{name: pkg, namespace: default}}\nspec:\n  environment: {{name: {env}}}\n  deployment: {{type: url, url: archive://src}}\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata: {{name: moving, namespace: default}}\nspec:\n  environment: {{name: {env}}}\n  package: {{functionName: hello.main, packageref: {{name: pkg}}}}\n")
    };
    let tmp = hello_project(&docs("py-old"));
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(tmp.path().join("specs/all.yaml"), docs("py-new")).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.ok("GET", "/v1/functions/moving", None)["env"], "py-new");
    assert_eq!(
        s.ok("GET", "/v1/packages/pkg", None)["environment"],
        "py-new"
    );
    assert_eq!(s.get("/fission-function/moving").text().unwrap(), "hi");
    // The CLI moves a function with new code, its package along.
    let code_file = tmp.path().join("specs/hello.py");
    let code_arg = code_file.to_str().unwrap();
    let (code, out, err) = s.cli(&[
        "fn", "create", "--name", "cli", "--env", "py-old", "--code", code_arg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli(&[
        "fn", "update", "--name", "cli", "--env", "py-new", "--code", code_arg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.ok("GET", "/v1/functions/cli", None)["env"], "py-new");
    assert_eq!(s.get("/fission-function/cli").text().unwrap(), "hi");
}

/// `spec apply --wait` fails when a build fails, naming the command that
/// shows the end of its log.
#[test]
fn a_failed_build_under_wait_names_the_package_to_look_at() {
    let s = Server::start();
    let tmp = hello_project(
        "kind: Environment\nname: py\nruntime: python\npoolsize: 0\n---\nkind: ArchiveUploadSpec\nname: src\ninclude: [specs/hello.py]\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata: {name: broken, namespace: default}\nspec:\n  environment: {name: py}\n  source: {type: url, url: archive://src}\n  buildcmd: \"exit 3\"\n",
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply", "--wait"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("Package broken failed to build (`fusion pkg info --name broken` shows"),
        "{err}"
    );
}

/// A project's resource deleted by hand and made again by hand is no longer
/// the project's: `spec destroy` leaves it, and `spec apply` does not take
/// it over (as Fission's `fission-uid` annotation goes with the object).
#[test]
fn a_resource_made_again_by_hand_is_not_the_projects() {
    let s = Server::start();
    let tmp = hello_project(
        "kind: DeploymentConfig\nname: own\nuid: 0a0a0a0a-2222-3333-4444-555555555555\n---\nkind: Environment\nname: py\nruntime: python\npoolsize: 0\n---\nkind: Function\nname: f\nenv: py\ncode: hello.py\n",
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.call("DELETE", "/v1/functions/f", None).0, 204);
    s.env("other", "python", 0);
    s.function(
        "f",
        "other",
        "mine.py",
        "def main():\n    return 'mine'\n",
        json!({}),
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("not applied by this project"), "{err}");
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("Function f"), "{out}");
    assert_eq!(s.get("/fission-function/f").text().unwrap(), "mine");
    assert_eq!(s.call("GET", "/v1/environments/py", None).0, 404);
}

/// Fission Workflows' own `examples/workflows-env.yaml` names its environment
/// `workflows-env`: by its image it is the engine's, left out, and the
/// functions of it (or of `workflow`, as its deploy script makes them) are
/// workflows.
#[test]
fn fission_workflows_env_under_another_name_is_left_out_too() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("specs")).unwrap();
    std::fs::write(
        tmp.path().join("echo.wf.yaml"),
        "apiVersion: 1\noutput: Echo\ntasks:\n  Echo:\n    run: noop\n    inputs: \"{ $.Invocation.Inputs.default }\"\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("specs/workflows-env.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: workflows-env\n  namespace: default\nspec:\n  version: 2\n  runtime:\n    image: \"fission/workflow-env:0.5.0\"\n    container:\n      command: [\"/fission-workflows-bundle\"]\n  builder:\n    image: \"fission/workflow-build-env:0.5.0\"\n    command: \"defaultBuild\"\n  allowedFunctionsPerContainer: infinite\n",
    )
    .unwrap();
    let function = |name: &str, env: &str| {
        format!(
            "kind: ArchiveUploadSpec\nname: {name}-wf\ninclude:\n  - echo.wf.yaml\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: {name}-pkg\nspec:\n  environment:\n    name: {env}\n  deployment:\n    type: url\n    url: archive://{name}-wf\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: {name}\nspec:\n  environment:\n    name: {env}\n  package:\n    packageref:\n      name: {name}-pkg\n"
        )
    };
    std::fs::write(
        tmp.path().join("specs/functions.yaml"),
        format!(
            "{}---\n{}",
            function("byname", "workflows-env"),
            function("bydefault", "workflow")
        ),
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("Environment workflows-env is Fission Workflows'"),
        "{err}"
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.call("GET", "/v1/environments/workflows-env", None).0, 404);
    for name in ["byname", "bydefault"] {
        assert!(out.contains(&format!("created   Workflow {name}")), "{out}");
        assert_eq!(s.invoke(name, "text/plain", "blub"), (200, "blub".into()));
    }
}

/// Fission refuses a folder of its documents without a DeploymentConfig;
/// Fusion applies it as it applies the short form, and says that nothing
/// will be able to destroy what it makes.
#[test]
fn fission_documents_without_a_deployment_config_apply_with_a_warning() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("specs")).unwrap();
    std::fs::write(tmp.path().join("specs/envs.yaml"), env_doc("py")).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created   Environment py"), "{out}");
    assert!(
        err.contains("specs/envs.yaml:1:")
            && err.contains("without a DeploymentConfig")
            && err.contains("fusion spec init"),
        "{err}"
    );
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_ne!(code, 0);
    assert!(err.contains("no DeploymentConfig"), "{err}");
}

#[test]
fn namespaces_in_metadata_are_kept_and_names_are_unique_per_namespace() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(s.cli_in(tmp.path(), &["spec", "init"]).0, 0);
    let shop = env_doc("py").replace("  name: py\n", "  name: py\n  namespace: shop\n");
    std::fs::write(
        tmp.path().join("specs/envs.yaml"),
        format!("{}---\n{shop}", env_doc("py")),
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created   Environment py"), "{out}");
    assert!(out.contains("created   Environment shop/py"), "{out}");
    assert!(!err.contains("without a DeploymentConfig"), "{err}");
    assert_eq!(names(&s, "/v1/environments"), vec!["py".to_string()]);
    assert_eq!(
        names(&s, "/v1/environments?namespace=shop"),
        vec!["py".to_string()]
    );
    let (code, out, _) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("everything up to date"), "{out}");
    // --namespace gives a namespace to documents that name none.
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "validate", "--namespace", "Bad"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("namespace \"Bad\" is not a DNS-1123 label"),
        "{err}"
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(names(&s, "/v1/environments?namespace=shop").is_empty());
    assert!(names(&s, "/v1/environments").is_empty());
}

#[test]
fn a_field_taken_out_of_the_specs_goes_back_to_its_default_and_equal_spellings_change_nothing() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    let limited = env_doc("py").replace(
        "  version: 3\n",
        "  version: 3\n  resources:\n    limits:\n      memory: 256Mi\n",
    );
    // Fusion's short form too, with another spelling of the runtime's name.
    let short = "kind: Environment\nname: short\nruntime: python3\npoolsize: 0\n";
    std::fs::write(specs.join("a.yaml"), format!("{limited}---\n{short}")).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(s.ok("GET", "/v1/environments/py", None)["memory_mb"], 256);
    let (code, out, _) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("everything up to date"), "{out}");

    std::fs::write(
        specs.join("a.yaml"),
        format!("{}---\n{short}", env_doc("py")),
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("updated   Environment py"), "{out}");
    assert!(out.contains("unchanged Environment short"), "{out}");
    let env = s.ok("GET", "/v1/environments/py", None);
    assert!(env.get("memory_mb").is_none(), "{env}");
}

#[test]
fn archives_stay_below_the_project_root_and_a_uid_is_checked_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    let pkg = "---\napiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: p\nspec:\n  environment:\n    name: py\n  deployment:\n    type: url\n    url: archive://code\n";
    for glob in ["/etc/*", "../*"] {
        std::fs::write(
            specs.join("a.yaml"),
            format!("kind: ArchiveUploadSpec\nname: code\ninclude:\n  - \"{glob}\"\n{pkg}"),
        )
        .unwrap();
        let out = std::process::Command::new(common::BIN)
            .args(["spec", "validate"])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("must stay below the project root"),
            "{glob}: {err}"
        );
    }
    std::fs::write(
        specs.join("a.yaml"),
        "apiVersion: fission.io/v1\nkind: DeploymentConfig\nname: x\nuid: \"a?b\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["spec", "validate"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("a.yaml:4:1: deployment uid \"a?b\""), "{err}");
}

#[test]
fn an_rfc_0022_workflow_is_validated_offline_with_its_place_in_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    // A first document, so the workflow's lines are offset within the file.
    std::fs::write(
        specs.join("wf.yaml"),
        format!(
            "{}---\napiVersion: fission.io/v1\nkind: Workflow\nmetadata:\n  name: order\nspec:\n  startAt: validate\n  states:\n    validate:\n      type: Task\n      function:\n        name: check\n      next: nowhere\n",
            env_doc("py")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["spec", "validate"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // `next: nowhere` is line 22 of the file.
    assert!(err.contains("wf.yaml:22:"), "{err}");
    assert!(err.contains("nowhere"), "{err}");
    // Fixed, it is valid; its function, not in the folder, is a warning.
    std::fs::write(
        specs.join("wf.yaml"),
        "apiVersion: fission.io/v1\nkind: Workflow\nmetadata:\n  name: order\nspec:\n  startAt: validate\n  states:\n    validate:\n      type: Task\n      function:\n        name: check\n      end: true\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["spec", "validate"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("references Function default/check"), "{err}");
}

/// A project whose workflow runs another of its workflows is destroyed whole:
/// the one run by the other is deleted after it (before, the server would warn
/// that the other still runs it).
#[test]
fn destroy_deletes_a_workflow_after_the_workflow_that_runs_it() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("inner.wf.yaml"),
        "output: A\ntasks:\n  A:\n    run: noop\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("outer.wf.yaml"),
        "output: B\ntasks:\n  B:\n    run: inner\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("fusion.yaml"),
        "kind: DeploymentConfig\nname: chain\nuid: 6c0e3d5e-2b1f-4f4e-9a51-0d1f5e2c7a90\n---\nkind: Workflow\nname: inner\nfile: inner.wf.yaml\n---\nkind: Workflow\nname: outer\nfile: outer.wf.yaml\n",
    )
    .unwrap();
    let (code, out, err) = s.cli_in(dir, &["spec", "apply", "-f", "."]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli_in(dir, &["spec", "destroy", "-f", "."]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(out.contains("deleted   Workflow inner"), "{out}");
    assert!(names(&s, "/v1/workflows").is_empty());
}

/// What the server would refuse of a route or a document's apiVersion is
/// refused offline, before anything is applied; an apply the server stops
/// half-way says what it changed before its error; a resource no longer
/// declared is named as kept.
#[test]
fn spec_checks_routes_offline_and_apply_says_what_it_did() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(specs.join("hello.py"), "def main():\n    return 'hi'\n").unwrap();
    let base = "kind: DeploymentConfig\nname: checks\nuid: 3f0c7c9e-5d1a-4f5b-9d8e-2a6b7c8d9e0f\n---\nkind: Environment\nname: py\nruntime: python\npoolsize: 0\n---\nkind: Function\nname: hello\nenv: py\ncode: hello.py\n";
    let trigger = |name: &str, spec: &str| {
        format!("---\napiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: {name}\nspec:\n  functionref: {{type: name, name: hello}}\n{spec}")
    };
    let bad = [
        trigger("noslash", "  relativeurl: noslash\n"),
        trigger("typo", "  relativeurl: /typo\n  methods: [GETT]\n"),
        trigger("scalar", "  relativeurl: /scalar\n  methods: GET\n"),
        trigger("r1", "  relativeurl: /r/{id}\n  methods: [GET]\n"),
        trigger("r2", "  relativeurl: /r/{name}\n  methods: [GET, POST]\n"),
        "---\napiVersion: fission.io/v2\nkind: Environment\nmetadata:\n  name: later\nspec:\n  runtime:\n    image: fission/python-env\n".to_string(),
    ]
    .concat();
    std::fs::write(specs.join("all.yaml"), format!("{base}{bad}")).unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    for wanted in [
        "HTTPTrigger noslash: route url \"noslash\" must start with '/'",
        "HTTPTrigger typo: route: unknown method \"GETT\"",
        "`methods` must be a list",
        "HTTPTrigger r2 would answer the same requests as HTTPTrigger r1, defined at",
        "apiVersion \"fission.io/v2\": kind Environment is `apiVersion: fission.io/v1`",
    ] {
        assert!(err.contains(wanted), "{wanted}: {err}");
    }
    let (code, _, _) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0);
    assert!(names(&s, "/v1/environments").is_empty());

    // The server refuses the function (a workflow has its name) after the
    // environment is made: apply says so before its error.
    s.workflow("hello", "output: A\ntasks:\n  A:\n    run: noop\n");
    std::fs::write(specs.join("all.yaml"), base).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("created   Environment py"), "{out}");
    assert!(err.contains("hello"), "{err}");
    assert_eq!(s.call("DELETE", "/v1/workflows/hello", None).0, 204);
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");

    // Stopped part-way (the server has no such image): what is still
    // declared is not "no longer declared", and what was not reached is said.
    let broken = format!(
        "{}{}",
        base.replace("runtime: python\n", "image: fission/go-env-1.21\n"),
        trigger("after", "  relativeurl: /after\n")
    );
    std::fs::write(specs.join("all.yaml"), broken).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("go-env"), "{err}");
    assert!(!out.contains("no longer declared"), "{out}");
    assert!(out.contains("not applied HTTPTrigger after"), "{out}");

    // Without the function's document, a plain apply keeps it and says so.
    let env_only = base.split("---\nkind: Function").next().unwrap();
    std::fs::write(specs.join("all.yaml"), env_only).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "kept      Function hello (no longer declared; `spec apply --delete` deletes it)"
        ),
        "{out}"
    );
}

const HALF: &str = "kind: DeploymentConfig\nname: half\nuid: 7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n---\nkind: Environment\nname: py\nruntime: python\npoolsize: 0\n---\nkind: Function\nname: hello\nenv: py\ncode: hello.py\n---\nkind: Route\nname: hello\nurl: /hello\nfunction: hello\n";

/// A destroy that something outside the project would stop (a route made by
/// hand that calls the project's function) is refused before it deletes
/// anything, naming what stops it: the project stays whole, its own route
/// still answers, and once the hand-made route is gone destroy finishes.
#[test]
fn a_destroy_that_a_hand_made_route_would_stop_deletes_nothing() {
    let s = Server::start();
    let tmp = hello_project(HALF);
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli(&[
        "route",
        "create",
        "--name",
        "byhand",
        "--url",
        "/byhand",
        "--function",
        "hello",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("deleted"), "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("nothing destroyed: Function hello is still used by HTTPTrigger byhand; delete or change that first"),
        "{err}"
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("present").count(), 3, "{out}");
    assert_eq!(names(&s, "/v1/routes").len(), 2);
    let (code, out, err) = s.cli(&["route", "delete", "byhand"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted   HTTPTrigger hello"), "{out}");
    assert!(names(&s, "/v1/environments").is_empty());
    assert!(names(&s, "/v1/functions").is_empty());
}

/// So is one that another's workflow (which runs the function) would stop;
/// a destroy that finds its users only half-way (made between the check and
/// the deletes) still records what is left, and a later destroy finishes.
#[test]
fn a_destroy_that_a_workflow_would_stop_deletes_nothing() {
    let s = Server::start();
    let tmp = hello_project(HALF);
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    // A workflow of someone else's runs the function: it cannot go.
    s.workflow("user", "output: A\ntasks:\n  A:\n    run: hello\n");
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("deleted"), "{out}");
    assert!(
        err.contains("Function hello is still used by Workflow user"),
        "{err}"
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("missing"), "{out}");
    assert_eq!(out.matches("present").count(), 3, "{out}");
    assert_eq!(s.call("DELETE", "/v1/workflows/user", None).0, 204);
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(names(&s, "/v1/environments").is_empty());
}

/// The server's check names every resource of a set that something outside
/// it uses, with those users, and deletes nothing.
#[test]
fn the_deletion_check_names_the_users_outside_the_set() {
    let s = Server::start();
    s.env("py", "python", 0);
    s.function(
        "f",
        "py",
        "f.py",
        "def main():\n    return 'hi'\n",
        serde_json::json!({}),
    );
    let route = serde_json::json!({"name": "r", "url": "/r", "function": "f"});
    assert_eq!(s.call("POST", "/v1/routes", Some(route)).0, 201);
    let check = |set: Value| {
        s.ok(
            "POST",
            "/v1/deletions/check",
            Some(serde_json::json!({"resources": set})),
        )
    };
    let f = serde_json::json!({"kind": "Function", "name": "f"});
    let r = serde_json::json!({"kind": "HTTPTrigger", "name": "r"});
    let env = serde_json::json!({"kind": "Environment", "name": "py"});
    assert_eq!(
        check(serde_json::json!([f, env])),
        serde_json::json!({"blocked": [{"kind": "Function", "namespace": "default", "name": "f",
            "used_by": [{"kind": "HTTPTrigger", "namespace": "default", "name": "r"}]}]})
    );
    assert_eq!(
        check(serde_json::json!([r, f, env])),
        serde_json::json!({"blocked": []})
    );
    assert_eq!(
        check(serde_json::json!([env]))["blocked"][0]["used_by"],
        serde_json::json!([{"kind": "Function", "namespace": "default", "name": "f"}])
    );
    let (status, body) = s.call(
        "POST",
        "/v1/deletions/check",
        Some(serde_json::json!({"resource": []})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let (status, body) = s.call(
        "POST",
        "/v1/deletions/check",
        Some(serde_json::json!([[{"kind": "Function", "name": "f"}]])),
    );
    assert_eq!(status, 400, "{body}");
    // A kind misspelt is refused, not answered "nothing uses it".
    let (status, body) = s.call(
        "POST",
        "/v1/deletions/check",
        Some(serde_json::json!({"resources": [{"kind": "function", "name": "f"}]})),
    );
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unknown kind \"function\""), "{body}");
    assert_eq!(names(&s, "/v1/routes"), vec!["r".to_string()]);
}

/// A proxy in front of the API that passes every request on. The first
/// `POST /v1/environments` is made on the server, and then (`lose_answer`) its
/// answer is lost (the CLI gets a 502, as through a connection that broke), or
/// else answered and every request after it held: the CLI hangs right after
/// making the environment, as a Ctrl-C or a lost connection could leave it.
struct HoldAfterEnvironment {
    url: String,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HoldAfterEnvironment {
    fn start(api: String, lose_answer: bool) -> HoldAfterEnvironment {
        use std::sync::atomic::Ordering;
        let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let flag = held.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let http = reqwest::Client::new();
                let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                    let (flag, http, api) = (flag.clone(), http.clone(), api.clone());
                    async move {
                        if flag.load(Ordering::SeqCst) && !lose_answer {
                            std::future::pending::<()>().await;
                        }
                        let (mut parts, body) = req.into_parts();
                        // Framing and address are the hop's own.
                        for h in ["host", "content-length", "transfer-encoding"] {
                            parts.headers.remove(h);
                        }
                        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                        let target = format!("{api}{}", parts.uri);
                        let answer = http
                            .request(parts.method.clone(), target)
                            .headers(parts.headers)
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        let status = answer.status();
                        let mut headers = answer.headers().clone();
                        for h in ["content-length", "transfer-encoding"] {
                            headers.remove(h);
                        }
                        let bytes = answer.bytes().await.unwrap();
                        if parts.method == axum::http::Method::POST
                            && parts.uri.path() == "/v1/environments"
                            && !flag.swap(true, Ordering::SeqCst)
                            && lose_answer
                        {
                            let mut lost = axum::response::Response::new(axum::body::Body::from(
                                r#"{"error":{"code":"bad_gateway","message":"lost"}}"#,
                            ));
                            *lost.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
                            return lost;
                        }
                        let mut out = axum::response::Response::new(axum::body::Body::from(bytes));
                        *out.status_mut() = status;
                        *out.headers_mut() = headers;
                        out
                    }
                });
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
        });
        HoldAfterEnvironment {
            url,
            held,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl HoldAfterEnvironment {
    /// `fusion spec apply` in `dir`, through the proxy.
    fn apply(&self, s: &Server, dir: &std::path::Path) -> std::process::Command {
        let mut cli = std::process::Command::new(common::BIN);
        cli.args(["spec", "apply"])
            .current_dir(dir)
            .env("FUSION_URL", &self.url)
            .env("FUSION_TOKEN", &s.token);
        cli
    }
}

impl Drop for HoldAfterEnvironment {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_apply_cut_short_after_making_something_leaves_it_the_projects() {
    let s = Server::start();
    let tmp = hello_project(
        "kind: DeploymentConfig\nname: cut\nuid: 0b6a4c1e-2d3f-4a5b-9c8d-7e6f5a4b3c2d\n---\nkind: Environment\nname: py\nruntime: python\npoolsize: 0\n---\nkind: Function\nname: hello\nenv: py\ncode: hello.py\n",
    );
    let proxy = HoldAfterEnvironment::start(s.api_url(""), false);
    let mut cli = proxy
        .apply(&s, tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::eventually(
        std::time::Duration::from_secs(30),
        "the environment made through the proxy",
        || proxy.held.load(std::sync::atomic::Ordering::SeqCst),
    );
    cli.kill().unwrap();
    cli.wait().unwrap();
    assert_eq!(names(&s, "/v1/environments"), ["py"]);
    assert!(names(&s, "/v1/functions").is_empty());
    drop(proxy);

    // The next apply finishes the job: the environment is the project's.
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("unchanged Environment py"), "{out}");
    assert!(out.contains("created   Function hello"), "{out}");
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(names(&s, "/v1/environments").is_empty());

    // Made, but its answer lost: the apply stops at the error, and what it
    // made stays the project's.
    let proxy = HoldAfterEnvironment::start(s.api_url(""), true);
    let out = proxy.apply(&s, tmp.path()).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(names(&s, "/v1/environments"), ["py"]);
    drop(proxy);
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("unchanged Environment py"), "{out}");
}

/// A Fission HTTPTrigger's `invocationMode: async` is kept, not warned away.
#[test]
fn an_http_triggers_invocation_mode_is_kept() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(specs.join("hello.py"), "def main():\n    return 'hi'\n").unwrap();
    std::fs::write(
        specs.join("all.yaml"),
        "kind: Environment\nname: py\nruntime: python\npoolsize: 0\n---\nkind: Function\nname: hello\nenv: py\ncode: hello.py\n---\napiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: webhook\nspec:\n  relativeurl: /webhook\n  methods: [POST]\n  functionref: {type: name, name: hello}\n  invocationMode: async\n",
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("invocationMode"), "{err}");
    assert_eq!(
        s.ok("GET", "/v1/routes/webhook", None)["invocation_mode"],
        "async"
    );
}

/// `--spec` on the create commands, as in Fission's CLI: nothing is created,
/// the documents go into `specs/` (Fission's when they say all the flags said,
/// else Fusion's short form), and `spec apply` then creates what the commands
/// would have.
#[test]
fn create_commands_with_spec_write_documents_that_apply_creates() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("hello.py"),
        "def main():\n    return 'hello from a spec'\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(dir.join("app/user.py"), "def main():\n    return 'app'\n").unwrap();

    // A folder that `spec init` did not make is refused.
    let (code, _, err) = s.cli_in(
        dir,
        &["env", "create", "py", "--runtime", "python", "--spec"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("run `fusion spec init` first"), "{err}");
    let (code, out, err) = s.cli_in(dir, &["spec", "init", "--name", "made"]);
    assert_eq!(code, 0, "{out}{err}");

    for args in [
        &[
            "env",
            "create",
            "py",
            "--runtime",
            "python",
            "--poolsize",
            "1",
            "--spec",
        ][..],
        &[
            "env",
            "create",
            "fpy",
            "--image",
            "fission/python-env",
            "--maxmemory",
            "128",
            "--spec",
        ],
        &[
            "fn", "create", "hello", "--env", "py", "--code", "hello.py", "--spec",
        ],
        &[
            "pkg", "create", "app", "--env", "fpy", "--deploy", "app/*", "--spec",
        ],
        &[
            "fn",
            "create",
            "user",
            "--pkg",
            "app",
            "--entrypoint",
            "user.main",
            "--spec",
        ],
        &[
            "route",
            "create",
            "--url",
            "/hi",
            "--function",
            "hello",
            "--spec",
        ],
        &[
            "route",
            "create",
            "all",
            "--url",
            "/all",
            "--method",
            "ANY",
            "--function",
            "user",
            "--spec",
        ],
        &[
            "timer",
            "create",
            "nightly",
            "--cron",
            "@daily",
            "--function",
            "hello",
            "--spec",
        ],
    ] {
        let (code, out, err) = s.cli_in(dir, args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains("Saving "), "{args:?}: {out}");
    }
    assert_eq!(
        s.call("GET", "/v1/functions/hello", None).0,
        404,
        "nothing is created"
    );

    let read = |f: &str| std::fs::read_to_string(dir.join("specs").join(f)).unwrap();
    // Fission's documents where Fission has the fields...
    let function = read("function-hello.yaml");
    for part in [
        "kind: ArchiveUploadSpec",
        "- hello.py",
        "kind: Package",
        "url: archive://hello-py-",
        "apiVersion: fission.io/v1\nkind: Function",
    ] {
        assert!(function.contains(part), "{part} missing:\n{function}");
    }
    assert!(read("env-fpy.yaml").contains("memory: 128Mi"));
    assert!(read("route-hi.yaml").contains("relativeurl: /hi"));
    assert!(
        read("package-app.yaml").contains("- app/*"),
        "the glob as given"
    );
    assert!(
        !function.contains("namespace:"),
        "applies in any namespace:\n{function}"
    );
    // ...Fusion's short form where it has not (a bundled runtime; every method).
    assert!(
        read("env-py.yaml").starts_with("kind: Environment\nname: py\n"),
        "{}",
        read("env-py.yaml")
    );
    assert!(
        read("route-all.yaml").contains("methods: []"),
        "{}",
        read("route-all.yaml")
    );

    // Declared twice: refused, naming where, and the file is unchanged.
    let (code, _, err) = s.cli_in(
        dir,
        &[
            "fn", "create", "hello", "--env", "py", "--code", "hello.py", "--spec",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("Function hello is declared already, at specs/function-hello.yaml:"),
        "{err}"
    );
    assert_eq!(read("function-hello.yaml"), function);
    // A package must be declared before a function uses it, as in Fission.
    let (code, _, err) = s.cli_in(dir, &["fn", "create", "u2", "--pkg", "nosuch", "--spec"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("package \"nosuch\" is not declared in specs"),
        "{err}"
    );
    // What the server would refuse is refused before it is written.
    let (code, _, err) = s.cli_in(
        dir,
        &[
            "fn",
            "create",
            "z",
            "--env",
            "py",
            "--code",
            "hello.py",
            "--fntimeout",
            "0",
            "--spec",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("timeout 0 s must be between 1 and 86400"),
        "{err}"
    );
    assert!(!dir.join("specs/function-z.yaml").exists());
    // --dry prints and writes nothing, with --spec too (as Fission's CLI).
    for extra in [&["--dry"][..], &["--dry", "--spec"]] {
        let mut args = vec!["route", "create", "--url", "/dry", "--function", "hello"];
        args.extend(extra);
        let (code, out, err) = s.cli_in(dir, &args);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("kind: HTTPTrigger") && out.contains("relativeurl: /dry"),
            "{out}"
        );
        let written = std::fs::read_dir(dir.join("specs")).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("route-dry")
        });
        assert!(!written);
    }

    let (code, out, err) = s.cli_in(dir, &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    let answer = |path: &str, method: &str| {
        let r = reqwest::blocking::Client::new()
            .request(method.parse().unwrap(), s.router_url(path))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(answer("/hi", "GET"), (200, "hello from a spec".to_string()));
    assert_eq!(answer("/all", "DELETE"), (200, "app".to_string()));
    let env = s.ok("GET", "/v1/environments/py", None);
    assert_eq!(
        (env["runtime"].as_str(), env["poolsize"].as_u64()),
        (Some("python"), Some(1))
    );
    assert_eq!(s.ok("GET", "/v1/environments/fpy", None)["memory_mb"], 128);
    assert_eq!(s.ok("GET", "/v1/timers/nightly", None)["cron"], "@daily");
    // A glob packs what it matches without --spec too.
    let (code, out, err) = s.cli_in(
        dir,
        &[
            "fn",
            "create",
            "globbed",
            "--env",
            "py",
            "--deploy",
            "app/*",
            "--entrypoint",
            "user.main",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        answer("/fission-function/globbed", "GET"),
        (200, "app".to_string())
    );
    // Applied again: nothing changes.
    let (code, out, err) = s.cli_in(dir, &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("everything up to date"), "{out}");
}

/// Field names in another case, as older Fission CLIs wrote some
/// (`TerminationGracePeriod`): Fission reads them (Go's JSON decoding
/// matches names in any case), and so does Fusion, with their places.
#[test]
fn fields_in_another_case_are_read_as_fission_reads_them() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("specs")).unwrap();
    std::fs::write(
        tmp.path().join("specs/env.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: py\nspec:\n  Version: 3\n  TerminationGracePeriod: 5\n  runtime:\n    Image: fission/python-env\n  PoolSize: 2\n  bogus: 1\n",
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("TerminationGracePeriod"), "{err}");
    assert!(!err.contains("PoolSize"), "{err}");
    // An unknown field is still said, at its place.
    assert!(
        err.contains("env.yaml:11:3") && err.contains("spec.bogus"),
        "{err}"
    );
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    let env = s.ok("GET", "/v1/environments/py", None);
    assert_eq!(env["poolsize"], 2, "{env}");
    assert_eq!(env["image"], "fission/python-env", "{env}");
}

/// In Fusion's short form, what the server would refuse is said at the field
/// it names (the form's fields are the server's), not at the document's top.
#[test]
fn a_short_form_error_is_said_at_its_field() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("specs")).unwrap();
    std::fs::write(
        tmp.path().join("specs/env.yaml"),
        "kind: Environment\nname: e1\nruntime: python\npoolsiz: 2\n---\nkind: Environment\nname: e2\nruntime: python\nmemory_mb: 1\n---\nkind: Environment\nname: e3\nruntime: python\npoolsize: many\n",
    )
    .unwrap();
    // A field misspelt is found by its name, not by another the error lists
    // (`env`, `function`), and the short form's `code` is among those listed.
    std::fs::write(
        tmp.path().join("specs/hello.py"),
        "def main():\n    return 'hi'\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("specs/fn.yaml"),
        "kind: Function\nname: f\nenv: e1\ncode: hello.py\nmax_scal: 3\n---\nkind: Route\nname: r\nurl: /r\nmetods: [GET]\nfunction: f\n",
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("env.yaml:4:1: Environment e1: unknown field `poolsiz`"),
        "{err}"
    );
    assert!(
        err.contains("env.yaml:9:1: Environment e2: environment: memory_mb 1 is below"),
        "{err}"
    );
    assert!(
        err.contains(r#"env.yaml:14:1: Environment e3: poolsize: invalid type: string "many""#),
        "{err}"
    );
    assert!(
        err.contains(
            "fn.yaml:5:1: Function f: unknown field `max_scal`, expected one of `code`, `name`"
        ),
        "{err}"
    );
    assert!(
        err.contains("fn.yaml:10:1: HTTPTrigger r: unknown field `metods`"),
        "{err}"
    );
}

/// Fission's canary routes (`functionref.type: function-weights`) apply as
/// they are, and weights that do not add up to 100 are refused offline at
/// their place.
#[test]
fn a_canary_http_trigger_applies_with_its_function_weights() {
    let s = Server::start();
    let route = |weights: &str| {
        format!("---\napiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: canary\nspec:\n  relativeurl: /canary\n  methods: [GET]\n  functionref:\n    type: function-weights\n    functionweights:\n{weights}")
    };
    let base = "kind: DeploymentConfig\nname: canary\nuid: 5e2d8c41-7a3b-4c6d-9e8f-1a2b3c4d5e6f\n---\nkind: Environment\nname: py\nruntime: python\npoolsize: 0\n---\nkind: Function\nname: v1\nenv: py\ncode: hello.py\n---\nkind: Function\nname: v2\nenv: py\ncode: hello.py\n";
    let tmp = hello_project(&format!("{base}{}", route("      v1: 90\n      v2: 20\n")));
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "specs/all.yaml:29:5: the function weights add up to 110; they must add up to 100"
        ),
        "{err}"
    );
    std::fs::write(
        tmp.path().join("specs/all.yaml"),
        format!("{base}{}", route("      v1: 90\n      v2: 10\n")),
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    let applied = s.ok("GET", "/v1/routes/canary", None);
    assert_eq!(
        applied["function_weights"],
        json!({"v1": 90, "v2": 10}),
        "{applied}"
    );
    assert_eq!(s.get("/canary").text().unwrap(), "hi");
    let (code, out, _) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("everything up to date"), "{out}");

    // Fission's CanaryConfig moves that route's weights; applied again, the
    // folder changes nothing: the canary does not start over, and the route
    // keeps the weights the canary gave it.
    let config = "---\napiVersion: fission.io/v1\nkind: CanaryConfig\nmetadata:\n  name: canary\nspec:\n  trigger: release\n  newfunction: v2\n  oldfunction: v1\n  weightincrement: 5\n  duration: 1s\n  failurethreshold: 20\n  failureType: status-code\n";
    // Its route must share its requests between the two: validate says so
    // before apply would stop half-way.
    let plain = "---\napiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: release\nspec:\n  relativeurl: /release\n  methods: [GET]\n  functionref:\n    type: name\n    name: v1\n";
    std::fs::write(
        tmp.path().join("specs/all.yaml"),
        format!(
            "{base}{}{plain}{config}",
            route("      v1: 90\n      v2: 10\n")
        ),
    )
    .unwrap();
    let (code, _, err) = s.cli_in(tmp.path(), &["spec", "validate"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("CanaryConfig canary: HTTPTrigger release does not share its requests between \"v1\" and \"v2\""),
        "{err}"
    );
    std::fs::write(
        tmp.path().join("specs/all.yaml"),
        format!(
            "{base}{}{}{config}",
            route("      v1: 90\n      v2: 10\n"),
            route("      v1: 100\n      v2: 0\n")
                .replace("name: canary", "name: release")
                .replace("/canary", "/release")
        ),
    )
    .unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created   CanaryConfig canary"), "{out}");
    let canary = s.ok("GET", "/v1/canaries/canary", None);
    assert_eq!(canary["weight_increment_duration"], "1s", "{canary}");
    assert_eq!(canary["failure_threshold"], 20, "{canary}");
    // Its first step needs no calls; the next would (none come).
    common::eventually(
        std::time::Duration::from_secs(30),
        "the canary's first step",
        || s.ok("GET", "/v1/canaries/canary", None)["status"]["new_weight"] == 5,
    );
    let (code, out, _) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("everything up to date"), "{out}");
    let moved = s.ok("GET", "/v1/routes/release", None);
    assert_eq!(
        moved["function_weights"],
        json!({"v1": 95, "v2": 5}),
        "{moved}"
    );
}
