//! `fusion spec apply`: a YAML file, or a folder of them, declaring environments,
//! functions (with their code), routes and workflows. Applying is idempotent:
//! what exists unchanged is left alone, what differs is updated, the rest created.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::client::Client;

#[derive(Debug, Default)]
pub struct Summary {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Every YAML file under `path` (sorted), or `path` itself.
fn spec_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("{} does not exist", path.display());
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_spec_file(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Resource specs are `*.yaml`/`*.yml` files whose documents have a `kind`;
/// workflow files (`*.wf.yaml`) are referenced from them, not applied alone.
fn is_spec_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".wf.yaml")
        && !name.ends_with(".wf.yml")
}

struct Doc {
    kind: String,
    value: Value,
    file: PathBuf,
}

fn load_docs(files: &[PathBuf]) -> Result<Vec<Doc>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        engine::document::check_yaml(&text).map_err(|e| {
            let (line, column) = e.position();
            anyhow!("{}:{line}:{column}: {e}", file.display())
        })?;
        for de in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(de).map_err(|e| {
                let loc = e
                    .location()
                    .map(|l| format!(":{}:{}", l.line(), l.column()))
                    .unwrap_or_default();
                anyhow!("{}{loc}: {e}", file.display())
            })?;
            if value.is_null() {
                continue;
            }
            let value: Value =
                serde_json::to_value(value).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("{}: a document without `kind`", file.display()))?
                .to_string();
            docs.push(Doc {
                kind,
                value,
                file: file.clone(),
            });
        }
    }
    // Dependencies first: environments, functions, workflows, then routes.
    let rank = |k: &str| match k {
        "Environment" => 0,
        "Function" => 1,
        "Workflow" => 2,
        "Route" => 3,
        _ => 4,
    };
    docs.sort_by_key(|d| rank(&d.kind));
    Ok(docs)
}

pub async fn apply(client: &Client, path: &Path) -> Result<Summary> {
    let files = spec_files(path)?;
    if files.is_empty() {
        bail!("no resource YAML files under {}", path.display());
    }
    let docs = load_docs(&files)?;
    let mut summary = Summary::default();
    for doc in docs {
        let base = doc.file.parent().unwrap_or(Path::new("."));
        let mut value = doc.value;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| anyhow!("{}: a document must be a map", doc.file.display()))?;
        obj.remove("kind");
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{}: a {} without `name`", doc.file.display(), doc.kind))?
            .to_string();
        let label = format!("{} {name}", doc.kind.to_lowercase());
        let outcome = match doc.kind.as_str() {
            "Environment" => upsert(client, "/v1/environments", &name, value, &[]).await,
            "Function" => {
                let code = obj
                    .remove("code")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .ok_or_else(|| {
                        anyhow!("{}: function {name} needs `code`", doc.file.display())
                    })?;
                let package = client.upload(&base.join(code)).await?;
                obj.insert("package".into(), package);
                // `concurrency` is max scale's older name: compared under the new one.
                if let Some(n) = obj.remove("concurrency") {
                    obj.entry("max_scale").or_insert(n);
                }
                upsert(client, "/v1/functions", &name, value, &["generation"]).await
            }
            "Route" => upsert(client, "/v1/routes", &name, value, &[]).await,
            "Workflow" => apply_workflow(client, base, &name, obj).await,
            other => bail!(
                "{}: unknown kind {other:?} (Environment, Function, Route or Workflow)",
                doc.file.display()
            ),
        }
        .with_context(|| format!("{}: {label}", doc.file.display()))?;
        match outcome {
            Outcome::Created => summary.created.push(label),
            Outcome::Updated => summary.updated.push(label),
            Outcome::Unchanged => summary.unchanged.push(label),
        }
    }
    Ok(summary)
}

enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// Creates the resource, or updates it when the stored one differs in any field
/// the spec gives (defaults filled in by the server and `ignore`d fields aside).
async fn upsert(
    client: &Client,
    collection: &str,
    name: &str,
    value: Value,
    ignore: &[&str],
) -> Result<Outcome> {
    let path = format!("{collection}/{name}");
    match client.get_opt::<Value>(&path).await? {
        None => {
            client.post_json::<Value>(collection, &value).await?;
            Ok(Outcome::Created)
        }
        Some(existing) => {
            let differs = value.as_object().is_some_and(|o| {
                o.iter()
                    .any(|(k, v)| !ignore.contains(&k.as_str()) && existing.get(k) != Some(v))
            });
            if differs {
                client.put_json::<Value>(&path, &value).await?;
                Ok(Outcome::Updated)
            } else {
                Ok(Outcome::Unchanged)
            }
        }
    }
}

async fn apply_workflow(
    client: &Client,
    base: &Path,
    name: &str,
    obj: &serde_json::Map<String, Value>,
) -> Result<Outcome> {
    let file = obj
        .get("file")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("workflow {name} needs `file`"))?;
    let yaml = std::fs::read_to_string(base.join(file))
        .with_context(|| format!("cannot read workflow file {file}"))?;
    let existing: Option<Value> = client.get_opt(&format!("/v1/workflows/{name}")).await?;
    match existing {
        None => {
            let req = client
                .request(reqwest::Method::POST, "/v1/workflows")
                .query(&[("name", name)])
                .header("content-type", "application/yaml")
                .body(yaml);
            client.send(req).await?;
            Ok(Outcome::Created)
        }
        Some(current) => {
            if current.get("source").and_then(Value::as_str) == Some(yaml.as_str()) {
                return Ok(Outcome::Unchanged);
            }
            let req = client
                .request(reqwest::Method::PUT, &format!("/v1/workflows/{name}"))
                .header("content-type", "application/yaml")
                .body(yaml);
            client.send(req).await?;
            Ok(Outcome::Updated)
        }
    }
}

pub fn print_summary(s: &Summary) {
    for (verb, list) in [
        ("created", &s.created),
        ("updated", &s.updated),
        ("unchanged", &s.unchanged),
    ] {
        for item in list {
            println!("{verb:9} {item}");
        }
    }
}
