//! End to end: a python package that vendors Flask (flask, werkzeug and their
//! dependencies copied into the zip from a python here that has them) is served
//! by that Flask, with what the bundled shim lacks (templates, blueprints,
//! error handlers, `Response` subclasses); the same code without Flask in the
//! package by the machine's Flask (the shim lacks what it imports); code no
//! Flask can load, with a clear error to its owner only.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use serde_json::{json, Value};

/// Uses what the shim does not have: `render_template_string`, and, served as
/// an app (entrypoint `main.app`), a blueprint, an error handler and a
/// `Response` subclass.
const MAIN_PY: &str = r#"
from flask import Blueprint, Flask, Response, render_template_string, request


def main():
    return render_template_string("<p>{{ who }}</p>", who=request.args.get("who", "world"))


class Csv(Response):
    default_mimetype = "text/csv"


api = Blueprint("api", __name__)


@api.route("/hello/<name>")
def hello(name):
    return Csv("name\n%s\n" % name)


app = Flask(__name__)
app.register_blueprint(api, url_prefix="/api")


@app.errorhandler(404)
def not_found(e):
    return {"error": "no page at " + request.path}, 404
"#;

/// What a package that vendors Flask carries.
const VENDORED: [&str; 7] = [
    "flask",
    "werkzeug",
    "jinja2",
    "markupsafe",
    "itsdangerous",
    "click",
    "blinker",
];

/// The directories of Flask and its dependencies in the first python here that
/// has Flask (Debian's first: the interpreter the instances run).
fn installed_flask() -> Option<(String, Vec<PathBuf>)> {
    let script = format!(
        "import importlib.util as u, os\nfor n in {VENDORED:?}:\n    s = u.find_spec(n)\n    \
         if s is not None and s.submodule_search_locations:\n        print(os.path.dirname(s.origin))\n"
    );
    for py in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(py)
            .args(["-c", "import flask"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            continue;
        }
        let out = Command::new(py).args(["-c", &script]).output().ok()?;
        let dirs = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect();
        return Some((py.to_string(), dirs));
    }
    None
}

fn add_tree(
    zip: &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>,
    dir: &Path,
    prefix: &str,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let inner = format!("{prefix}/{name}");
        if path.is_dir() {
            if name != "__pycache__" {
                add_tree(zip, &path, &inner)?;
            }
        } else {
            zip.start_file(inner, zip::write::SimpleFileOptions::default())?;
            zip.write_all(&std::fs::read(&path)?)?;
        }
    }
    Ok(())
}

fn package(vendored: &[PathBuf]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("main.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(MAIN_PY.as_bytes()).unwrap();
    for dir in vendored {
        let top = dir.file_name().unwrap().to_string_lossy().into_owned();
        add_tree(&mut zip, dir, &top).expect("copy an installed package into the zip");
    }
    zip.finish().unwrap().into_inner()
}

fn function(s: &Server, name: &str, package: &Value, entrypoint: &str) {
    s.ok(
        "POST",
        "/v1/functions",
        Some(json!({"name": name, "env": "python", "package": package, "entrypoint": entrypoint})),
    );
}

#[test]
fn a_package_that_vendors_flask_is_served_by_its_flask_and_one_without_by_the_machines() {
    let Some((python, vendored)) = installed_flask() else {
        eprintln!(
            "\n==== SKIPPED: no python3 with Flask here to vendor it from \
             (`apt-get install python3-flask`, as .ci/run does) ====\n"
        );
        return;
    };
    assert!(
        vendored.iter().any(|d| d.ends_with("flask"))
            && vendored.iter().any(|d| d.ends_with("werkzeug")),
        "{python} has flask but not where expected: {vendored:?}"
    );
    let s = Server::start();
    s.env("python", "python", 1);
    let with_flask = s.upload("site.zip", &package(&vendored));
    let without = s.upload("bare.zip", &package(&[]));
    function(&s, "page", &with_flask, "main.main");
    function(&s, "site", &with_flask, "main.app");
    function(&s, "page-bare", &without, "main.main");
    // An app that imports only what the shim has: the shim cannot serve an
    // app, so the machine's Flask does.
    let app_only = s.upload(
        "app.py",
        b"from flask import Flask\napp = Flask(__name__)\n@app.route('/hi')\ndef hi():\n    return 'hi from the app'\n",
    );
    function(&s, "app-only", &app_only, "app");
    let unloadable = s.upload(
        "bad.py",
        b"from flask import no_such_thing\ndef main():\n    return 'never'\n",
    );
    function(&s, "unloadable", &unloadable, "main");

    // A function: Flask renders the template and escapes the input.
    let r = s.get("/fission-function/page?who=%3Cb%3Eada%3C/b%3E");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().unwrap(), "<p>&lt;b&gt;ada&lt;/b&gt;</p>");

    // An app: its blueprint's route, its Response subclass, its error handler.
    let r = s.get("/fission-function/site/api/hello/ada");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(r.text().unwrap(), "name\nada\n");
    let r = s.get("/fission-function/site/nowhere");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().unwrap();
    assert_eq!(body, json!({"error": "no page at /nowhere"}));

    // The same code without Flask in the package: what it takes from Flask
    // the shim has not, so the machine's Flask serves it (as Fission's image
    // has Flask for every function).
    let r = s.get("/fission-function/page-bare?who=ada");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "<p>ada</p>");

    let r = s.get("/fission-function/app-only/hi");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "hi from the app");

    // Code no Flask can load: the owner's call (`fn test`, through the API)
    // says why; a caller of the router is told where to read it, not what
    // the runtime said (an exception's message may hold a secret).
    let r = s
        .api("GET", "/v1/functions/unloadable/invoke")
        .send()
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot be loaded")
            && message.contains("ImportError: cannot import name 'no_such_thing'"),
        "{body}"
    );
    let r = s.get("/fission-function/unloadable");
    assert_eq!(r.status(), 502);
    let body: Value = r.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot be loaded (its log says why: `fusion fn logs unloadable`)"),
        "{body}"
    );
    assert!(!message.contains("ImportError"), "{body}");
}
