//! `--spec` and `--dry` on the create commands, as Fission's CLI has them: what
//! the command would create is written into the project's spec folder (or
//! printed) instead of sent to a server, for `spec apply` to create later.
//!
//! A resource is written as Fission's `fission.io/v1` document when reading
//! that document back gives exactly the body the command would have sent;
//! else in Fusion's short form (`kind`, `name` and the body's own fields), so
//! nothing a flag said is lost or changed on the way. Either way the document
//! is read back before anything is written, and refused with the reader's
//! errors if `spec validate` would refuse it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::load::{self, Document};
use super::model::{Kind, Specs, DEFAULT_NAMESPACE};

/// Where documents go: a spec folder, or standard output (`--dry`).
pub struct Target {
    pub dir: PathBuf,
    pub dry: bool,
}

/// One document to write, with what it is called in messages.
pub struct Doc {
    pub label: String,
    pub value: Value,
}

/// The document for a resource of `kind` whose API body is `body` (without
/// its namespace, which is `namespace`).
pub fn resource(kind: Kind, namespace: &str, body: &Value) -> Result<Doc> {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("a {} needs a name", kind.name()))?
        .to_string();
    let mut wanted = body.clone();
    if namespace != DEFAULT_NAMESPACE {
        wanted["namespace"] = json!(namespace);
    }
    // Written out as Fission's CLI writes it (the server's default too).
    if kind == Kind::Environment && wanted.get("poolsize").is_none() {
        wanted["poolsize"] = json!(DEFAULT_POOLSIZE);
    }
    let label = label(kind, namespace, &name);
    // When neither form reads back, the Fission document's errors are the
    // ones to show: they name Fission's fields.
    let mut refused = None;
    if let Some(doc) = fission(kind, namespace, &name, body) {
        match read_back(&doc, namespace) {
            Ok(body) if body == wanted => return Ok(Doc { label, value: doc }),
            Ok(_) => {}
            Err(e) => refused = Some(e),
        }
    }
    let doc = short(kind, &wanted);
    if let Err(e) = read_back(&doc, namespace) {
        return Err(refused.unwrap_or(e));
    }
    Ok(Doc { label, value: doc })
}

/// An environment's pool when it names none, here as in Fission.
const DEFAULT_POOLSIZE: u64 = 3;

/// A reference to `name` in `namespace`, as Fission's CLI writes one: the
/// namespace only when it is not the default, so the document applies in
/// whichever namespace `spec apply --namespace` gives it.
fn reference(namespace: &str, name: &Value) -> Value {
    if namespace == DEFAULT_NAMESPACE {
        json!({ "name": name })
    } else {
        json!({ "name": name, "namespace": namespace })
    }
}

fn label(kind: Kind, namespace: &str, name: &str) -> String {
    format!("{} '{namespace}/{name}'", kind.name())
}

/// A Package of archives declared beside it (`source`, `deployment`).
pub fn package(
    namespace: &str,
    name: &str,
    env: &str,
    source: Option<&str>,
    deployment: Option<&str>,
    buildcmd: Option<&str>,
) -> Result<Doc> {
    let mut spec = json!({ "environment": reference(namespace, &json!(env)) });
    for (field, archive) in [("source", source), ("deployment", deployment)] {
        if let Some(a) = archive {
            spec[field] = json!({"type": "url", "url": format!("archive://{a}")});
        }
    }
    if let Some(cmd) = buildcmd {
        spec["buildcmd"] = json!(cmd);
    }
    let value = object("Package", namespace, name, spec);
    read_back(&value, namespace)?;
    Ok(Doc {
        label: label(Kind::Package, namespace, name),
        value,
    })
}

/// An ArchiveUploadSpec of `paths`, which must be below the project root (the
/// folder above the spec folder): a directory goes in by what it holds, a file
/// by its name, as the CLI packs them for a server.
pub fn archive(target: &Target, name: &str, paths: &[PathBuf]) -> Result<Doc> {
    require_folder(target)?;
    let root = super::archive::project_root(&target.dir);
    let canonical_root = root.canonicalize().unwrap_or_else(|_| root.clone());
    let mut include = Vec::new();
    for p in paths {
        if super::archive::is_glob(p) {
            include.push(glob_below(p, &root, &canonical_root, target)?);
            continue;
        }
        let real = p
            .canonicalize()
            .with_context(|| format!("cannot read {}", p.display()))?;
        let Ok(rel) = real.strip_prefix(&canonical_root) else {
            bail!(
                "{} is not below the project root {} (the folder above {}): a spec's archives hold files from below it",
                p.display(),
                root.display(),
                target.dir.display()
            );
        };
        let rel = rel.to_string_lossy().replace('\\', "/");
        if rel.is_empty() {
            bail!(
                "{} is the project root itself: give the folder of the code below it",
                p.display()
            );
        }
        include.push(if real.is_dir() {
            format!("{rel}/*")
        } else {
            rel
        });
    }
    Ok(Doc {
        label: format!("ArchiveUploadSpec '{name}'"),
        value: json!({"kind": "ArchiveUploadSpec", "name": name, "include": include}),
    })
}

/// Glob `p` (relative to the current folder, or absolute) as a glob relative
/// to the project root; refused when it matches nothing or anything outside.
fn glob_below(p: &Path, root: &Path, canonical_root: &Path, target: &Target) -> Result<String> {
    let cwd = std::env::current_dir()?;
    let cwd = cwd.canonicalize().unwrap_or(cwd);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    let outside = || {
        anyhow!(
            "{} reaches outside the project root {} (the folder above {}): a spec's archives hold files from below it",
            p.display(),
            root.display(),
            target.dir.display()
        )
    };
    let rel = abs.strip_prefix(canonical_root).map_err(|_| outside())?;
    if rel
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(outside());
    }
    for m in super::archive::glob_matches(&abs)? {
        let real = m.canonicalize().unwrap_or(m);
        if !real.starts_with(canonical_root) {
            return Err(outside());
        }
    }
    Ok(rel.to_string_lossy().replace('\\', "/"))
}

/// A `fission.io/v1` object.
fn object(kind: &str, namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "fission.io/v1",
        "kind": kind,
        "metadata": reference(namespace, &json!(name)),
        "spec": spec,
    })
}

/// Fission's document for `body`, as far as its fields go (whether it says
/// all the body says is checked by reading it back).
fn fission(kind: Kind, namespace: &str, name: &str, body: &Value) -> Option<Value> {
    let field = |k: &str| body.get(k).filter(|v| !v.is_null());
    let mut spec = json!({});
    match kind {
        Kind::Environment => {
            spec["runtime"] = json!({"image": field("image")?});
            // Fission honours a pool size with version 3 only; its CLI
            // writes version 1 otherwise.
            let poolsize = field("poolsize")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_POOLSIZE);
            spec["version"] = json!(if poolsize == DEFAULT_POOLSIZE { 1 } else { 3 });
            spec["poolsize"] = json!(poolsize);
            if let Some(m) = field("memory_mb").and_then(Value::as_u64) {
                spec["resources"]["limits"]["memory"] = json!(format!("{m}Mi"));
            }
            if let Some(c) = field("cpu_millis").and_then(Value::as_u64) {
                spec["resources"]["limits"]["cpu"] = json!(format!("{c}m"));
            }
            if let Some(cmd) = field("buildcmd") {
                spec["builder"] = json!({"command": cmd});
            }
        }
        Kind::Function => {
            spec["environment"] = reference(namespace, field("env")?);
            let package = field("package")?.get("packageref")?;
            spec["package"] = json!({ "packageref": reference(namespace, package.get("name")?) });
            if let Some(ep) = field("entrypoint") {
                spec["package"]["functionName"] = ep.clone();
            }
            for (from, to) in [
                ("timeout_secs", "functionTimeout"),
                ("idle_timeout_secs", "idletimeout"),
                ("requests_per_instance", "requestsPerPod"),
                ("secrets", "secrets"),
                ("configmaps", "configmaps"),
                ("invocation", "invocation"),
            ] {
                if let Some(v) = field(from) {
                    spec[to] = v.clone();
                }
            }
            let strategy = [
                ("executor_type", "ExecutorType"),
                ("min_scale", "MinScale"),
                ("max_scale", "MaxScale"),
            ];
            if strategy.iter().any(|(from, _)| field(from).is_some()) {
                let mut execution = json!({});
                for (from, to) in strategy {
                    if let Some(v) = field(from) {
                        execution[to] = v.clone();
                    }
                }
                spec["InvokeStrategy"] =
                    json!({"StrategyType": "execution", "ExecutionStrategy": execution});
            }
        }
        Kind::HttpTrigger => {
            // Fusion's own mode: Fission's HTTPTrigger has no such value.
            if field("invocation_mode").and_then(Value::as_str) == Some("sync-only") {
                return None;
            }
            spec["functionref"] = match field("function_weights") {
                Some(weights) => json!({"type": "function-weights", "functionweights": weights}),
                None => json!({"type": "name", "name": field("function")?}),
            };
            for (from, to) in [
                ("url", "relativeurl"),
                ("prefix", "prefix"),
                ("methods", "methods"),
                ("host", "host"),
                ("invocation_mode", "invocationMode"),
                ("keep_prefix", "keepPrefix"),
            ] {
                if let Some(v) = field(from) {
                    spec[to] = v.clone();
                }
            }
        }
        Kind::TimeTrigger => {
            spec["functionref"] = json!({"type": "name", "name": field("function")?});
            for k in ["cron", "method", "subpath"] {
                if let Some(v) = field(k) {
                    spec[k] = v.clone();
                }
            }
        }
        Kind::MessageQueueTrigger => {
            spec["functionref"] = json!({"type": "name", "name": field("function")?});
            for (k, v) in body.as_object()? {
                if !matches!(k.as_str(), "name" | "function") {
                    spec[k] = v.clone();
                }
            }
        }
        _ => return None,
    }
    Some(object(kind.name(), namespace, name, spec))
}

/// Fusion's short form: the body, with its kind.
fn short(kind: Kind, body: &Value) -> Value {
    let mut doc = body.clone();
    doc["kind"] = json!(kind.name());
    doc
}

/// The body `spec apply` reads from `doc`, or the reader's errors.
fn read_back(doc: &Value, namespace: &str) -> Result<Value> {
    let specs = Specs::read_object(&Document::object(doc.clone()), namespace);
    if !specs.errors.is_empty() {
        bail!("{}", specs.errors.join("; "));
    }
    let r = specs
        .resources
        .first()
        .ok_or_else(|| anyhow!("the document declares nothing"))?;
    Ok(r.body.clone())
}

/// YAML with the top level in the order people write it (`apiVersion`,
/// `kind`, `metadata` or `name` first); nested maps sorted.
fn yaml(doc: &Value) -> Result<String> {
    const FIRST: [&str; 6] = [
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "namespace",
        "spec",
    ];
    let Value::Object(map) = doc else {
        return Ok(serde_yaml::to_string(doc)?);
    };
    let mut out = serde_yaml::Mapping::new();
    let ordered = FIRST
        .iter()
        .filter_map(|k| map.get_key_value(*k))
        .chain(map.iter().filter(|(k, _)| !FIRST.contains(&k.as_str())));
    for (k, v) in ordered {
        out.insert(
            serde_yaml::Value::String(k.clone()),
            serde_yaml::to_value(v)?,
        );
    }
    Ok(serde_yaml::to_string(&out)?)
}

/// Writes `docs` into `<dir>/<file>` (after a `---` when the file has
/// documents already), or prints them with `--dry`. The folder must be a spec
/// folder (`fusion spec init`), and must not declare any of them already.
pub fn save(target: &Target, file: &str, docs: &[Doc]) -> Result<()> {
    let mut text = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&yaml(&d.value)?);
    }
    if target.dry {
        print!("{text}");
        return Ok(());
    }
    require_folder(target)?;
    refuse_declared(&target.dir, docs)?;
    let path = target.dir.join(file);
    let had = std::fs::read_to_string(&path).unwrap_or_default();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let sep = match had.as_str() {
        "" => "",
        h if h.ends_with('\n') => "---\n",
        _ => "\n---\n",
    };
    f.write_all(format!("{sep}{text}").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    for d in docs {
        println!("Saving {} to '{}'", d.label, path.display());
    }
    // What `spec validate` will say of them (a reference to what is not in
    // the folder yet, as Fission's CLI warns of it), said now.
    let here = format!("{}:", path.display());
    let specs = folder(&target.dir)?;
    for w in specs.warnings.iter().chain(&specs.errors) {
        if w.starts_with(&here) {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

/// What the folder declares (a file the reader cannot take is `spec
/// validate`'s to report: it declares nothing here).
fn folder(dir: &Path) -> Result<Specs> {
    let mut existing = Vec::new();
    for file in load::spec_files(dir)? {
        if let Ok(d) = load::read_file(&file) {
            existing.extend(d);
        }
    }
    Ok(Specs::read(&existing, DEFAULT_NAMESPACE))
}

/// The body of a resource the folder declares, if it does.
pub fn declared(dir: &Path, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
    let key = (kind, namespace.to_string(), name.to_string());
    let specs = folder(dir).ok()?;
    let r = specs.resources.into_iter().find(|r| r.key() == key)?;
    Some(r.body)
}

/// Refuses a target folder that `fusion spec init` did not make (with
/// `--dry` nothing is written: any folder does).
fn require_folder(target: &Target) -> Result<()> {
    let config = target.dir.join("fission-deployment-config.yaml");
    if !target.dry && !config.is_file() {
        bail!(
            "{} is not a spec folder (it has no fission-deployment-config.yaml): run `fusion spec init` first",
            target.dir.display()
        );
    }
    Ok(())
}

/// Refuses documents the folder declares already (same kind, namespace and
/// name; an archive by its name), naming where.
fn refuse_declared(dir: &Path, docs: &[Doc]) -> Result<()> {
    let specs = folder(dir)?;
    for d in docs {
        let new = Specs::read_object(&Document::object(d.value.clone()), DEFAULT_NAMESPACE);
        for r in &new.resources {
            if let Some(old) = specs.resources.iter().find(|o| o.key() == r.key()) {
                bail!("{} is declared already, at {}", r.label(), old.at);
            }
        }
        for a in &new.archives {
            if let Some(old) = specs.archives.iter().find(|o| o.name == a.name) {
                bail!(
                    "ArchiveUploadSpec {:?} is declared already, at {}",
                    a.name,
                    old.at
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(kind: Kind, namespace: &str, body: Value) -> Value {
        resource(kind, namespace, &body).unwrap().value
    }

    #[test]
    fn a_body_fissions_fields_hold_is_written_as_fissions_document_else_in_short_form() {
        let function = json!({
            "name": "hello", "env": "py", "entrypoint": "main.handler",
            "package": {"packageref": {"name": "hello-1a2b", "namespace": "team-a"}},
            "timeout_secs": 30, "min_scale": 1, "max_scale": 4, "executor_type": "newdeploy",
            "secrets": [{"name": "db", "namespace": "team-a"}],
            "invocation": {"retry": {"maxAttempts": 5}},
        });
        let doc = written(Kind::Function, "team-a", function.clone());
        assert_eq!(doc["apiVersion"], "fission.io/v1", "{doc}");
        assert_eq!(doc["metadata"]["namespace"], "team-a");
        assert_eq!(doc["spec"]["functionTimeout"], 30);
        assert_eq!(
            doc["spec"]["InvokeStrategy"]["ExecutionStrategy"]["MaxScale"],
            4
        );
        assert_eq!(doc["spec"]["invocation"]["retry"]["maxAttempts"], 5);
        assert_eq!(read_back(&doc, "team-a").unwrap()["max_scale"], 4);

        // Fission's Function has no environment variables: all in Fusion's form.
        let mut with_vars = function;
        with_vars["env_vars"] = json!({"MODE": "test"});
        let doc = written(Kind::Function, "team-a", with_vars);
        assert_eq!(doc["kind"], "Function");
        assert_eq!(doc["env_vars"]["MODE"], "test");
        assert_eq!(doc["namespace"], "team-a");
        assert!(doc.get("apiVersion").is_none(), "{doc}");

        // A timer in a time zone, a route to a workflow: Fusion's fields.
        let timer =
            json!({"name": "t", "cron": "0 9 * * *", "function": "f", "timezone": "Europe/Paris"});
        assert_eq!(
            written(Kind::TimeTrigger, "default", timer)["timezone"],
            "Europe/Paris"
        );
        let route = json!({"name": "r", "url": "/r", "methods": ["GET"], "workflow": "w"});
        assert_eq!(
            written(Kind::HttpTrigger, "default", route)["workflow"],
            "w"
        );
        // A canary route is Fission's `function-weights`, and reads back as it was.
        let canary = json!({"name": "c", "url": "/c", "methods": ["GET"],
            "function_weights": {"v1": 90, "v2": 10}});
        let doc = written(Kind::HttpTrigger, "default", canary.clone());
        assert_eq!(
            doc["spec"]["functionref"],
            json!({"type": "function-weights", "functionweights": {"v1": 90, "v2": 10}})
        );
        assert_eq!(read_back(&doc, "default").unwrap(), canary);
    }

    #[test]
    fn what_the_reader_refuses_is_not_written() {
        let e = resource(
            Kind::Environment,
            "default",
            &json!({"name": "Py", "image": "x"}),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("metadata.name"), "{e}");
    }
}
