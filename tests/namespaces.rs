//! Namespaces: the same names in two namespaces are two resources, each called
//! at its own path (`/fission-function/<name>` in `default`,
//! `/fission-function/<namespace>/<name>` elsewhere, as in Fission), listed,
//! changed and deleted apart, through the API and the CLI.

mod common;

use common::Server;
use serde_json::{json, Value};

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_same_names_in_two_namespaces_are_two_resources() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let code = |word: &str| {
        let path = tmp.path().join(format!("{word}.py"));
        std::fs::write(&path, format!("def main():\n    return '{word}'\n")).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (plain, shop) = (code("plain"), code("shop"));
    for (ns, file) in [("default", &plain), ("shop", &shop)] {
        let run = |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["--namespace", ns]);
            let (status, out, err) = s.cli(&all);
            assert_eq!(status, 0, "{args:?} in {ns}: {out}{err}");
        };
        run(&[
            "env",
            "create",
            "py",
            "--runtime",
            "python",
            "--poolsize",
            "0",
        ]);
        run(&["fn", "create", "hello", "--env", "py", "--code", file]);
        run(&[
            "route",
            "create",
            "--name",
            "hello",
            "--url",
            &format!("/{ns}/hello"),
            "--function",
            "hello",
        ]);
    }
    // Each is called at its own path, and through its own route.
    let r = s.get("/fission-function/hello");
    assert_eq!(
        (r.status().as_u16(), r.text().unwrap()),
        (200, "plain".into())
    );
    let r = s.get("/fission-function/shop/hello");
    assert_eq!(
        (r.status().as_u16(), r.text().unwrap()),
        (200, "shop".into())
    );
    let r = s.get("/shop/hello");
    assert_eq!(r.text().unwrap(), "shop");
    let (status, out, err) = s.cli(&["fn", "test", "hello", "--namespace", "shop"]);
    assert_eq!((status, out.as_str()), (0, "shop"), "{err}");
    // The URL paths are shared by every namespace: a route for another's
    // path is refused, naming the namespace the caller may not be looking at.
    let (status, _, err) = s.cli(&[
        "route",
        "create",
        "--name",
        "copy",
        "--url",
        "/shop/hello",
        "--function",
        "hello",
    ]);
    assert_ne!(status, 0);
    assert!(
        err.contains(r#"as route "hello" in namespace "shop" (/shop/hello)"#),
        "{err}"
    );

    // Listed and read per namespace.
    assert_eq!(
        names(&s.ok("GET", "/v1/functions?namespace=shop", None)),
        vec!["hello"]
    );
    let f = s.ok("GET", "/v1/functions/hello?namespace=shop", None);
    assert_eq!(f["namespace"], "shop", "{f}");
    assert_eq!(
        s.ok("GET", "/v1/functions/hello", None)["namespace"],
        "default"
    );
    let (status, v) = s.call("GET", "/v1/functions/hello?namespace=nowhere", None);
    assert_eq!(status, 404, "{v}");
    let (status, v) = s.call("GET", "/v1/functions?namespace=Not_A_Label", None);
    assert_eq!(status, 400, "{v}");
    // A body may not name another namespace than the query.
    let (status, v) = s.call(
        "POST",
        "/v1/environments?namespace=shop",
        Some(json!({"name": "other", "namespace": "default", "runtime": "python"})),
    );
    assert_eq!(status, 400, "{v}");

    // Deleting in one namespace leaves the other alone.
    // Each says what went, with its namespace; as JSON with `-o json`.
    let (status, out, err) = s.cli(&["route", "delete", "hello", "--namespace", "shop"]);
    assert_eq!(
        (status, out.trim()),
        (0, "route shop/hello deleted"),
        "{err}"
    );
    let (status, out, err) = s.cli(&["fn", "delete", "hello", "-n", "shop", "-o", "json"]);
    assert_eq!(status, 0, "{out}{err}");
    let said: serde_json::Value = serde_json::from_str(&out).expect("the output is JSON");
    assert_eq!(
        said,
        json!({"deleted": {"kind": "function", "namespace": "shop", "name": "hello"}})
    );
    let (status, out, err) = s.cli(&["env", "delete", "py", "--namespace", "shop"]);
    assert_eq!(
        (status, out.trim()),
        (0, "environment shop/py deleted"),
        "{err}"
    );
    let r = s.get("/fission-function/shop/hello");
    assert_eq!(r.status().as_u16(), 404);
    let r = s.get("/fission-function/hello");
    assert_eq!(r.text().unwrap(), "plain");
    assert_eq!(names(&s.ok("GET", "/v1/environments", None)), vec!["py"]);
}
