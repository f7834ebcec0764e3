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

/// A declaration is in the namespace its body names, as every resource: the
/// query's when the body names none, refused when the two differ or the
/// namespace is not a DNS-1123 label (on a delete too).
#[test]
fn a_declaration_takes_its_namespace_as_every_resource() {
    let s = Server::start();
    let path = "/v1/declared/timetriggers";
    let (status, body) = s.call(
        "POST",
        path,
        Some(json!({"name": "bnd", "namespace": "ns1", "spec": {}})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["namespace"], "ns1", "{body}");
    s.ok("GET", &format!("{path}/bnd?namespace=ns1"), None);
    let (status, _) = s.call("GET", &format!("{path}/bnd"), None);
    assert_eq!(status, 404);
    assert_eq!(
        names(&s.ok("GET", &format!("{path}?namespace=ns1"), None)),
        ["bnd"]
    );
    // The query's namespace, for a body that names none.
    let (status, body) = s.call(
        "POST",
        &format!("{path}?namespace=ns3"),
        Some(json!({"name": "q", "spec": {}})),
    );
    assert_eq!((status, &body["namespace"]), (201, &json!("ns3")), "{body}");
    let (status, body) = s.call(
        "POST",
        &format!("{path}?namespace=ns1"),
        Some(json!({"name": "c", "namespace": "ns2", "spec": {}})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the namespace in the body (\"ns2\") differs"),
        "{body}"
    );
    let (status, body) = s.call(
        "PUT",
        &format!("{path}/bnd?namespace=ns1"),
        Some(json!({"name": "bnd", "namespace": "ns2", "spec": {}})),
    );
    assert_eq!(status, 400, "{body}");
    for bad in [
        (
            "POST",
            path.to_string(),
            Some(json!({"name": "b", "namespace": "Bad_NS", "spec": {}})),
        ),
        ("DELETE", format!("{path}/bnd?namespace=Bad_NS"), None),
        ("GET", format!("{path}/bnd?namespace=Bad_NS"), None),
    ] {
        let (status, body) = s.call(bad.0, &bad.1, bad.2);
        assert_eq!(status, 400, "{} {}: {body}", bad.0, bad.1);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not a DNS-1123 label"),
            "{body}"
        );
    }
    s.ok("DELETE", &format!("{path}/bnd?namespace=ns1"), None);
}

/// A package's and an invocation's namespace that is not a DNS-1123 label
/// is 400 `invalid`, as everywhere, not a 404.
#[test]
fn an_invalid_namespace_of_a_package_or_an_invocation_is_400() {
    let s = Server::start();
    for (method, path) in [
        ("GET", "/v1/packages/x?namespace=Bad_NS"),
        ("DELETE", "/v1/packages/x?namespace=Bad_NS"),
        ("GET", "/v1/packages/x/logs?namespace=Bad_NS"),
        ("GET", "/v1/packages/x/source?namespace=Bad_NS"),
        ("GET", "/v1/packages/x/deployment?namespace=Bad_NS"),
        ("POST", "/v1/packages/x/rebuild?namespace=Bad_NS"),
        ("GET", "/v1/functions/qf2/invoke?fusion-namespace=Bad_NS"),
    ] {
        let (status, body) = s.call(method, path, None);
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "invalid", "{body}");
    }
    let (status, _) = s.call("GET", "/v1/packages/x?namespace=ok", None);
    assert_eq!(status, 404);
}
