//! `fusion secret` and `fusion configmap`: create from literals and files, list,
//! get, update (replace the keys and values), delete. A secret's values go to
//! the server and are never printed back: `get` and `list` show its keys.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::print;
use super::{ClientOpts, Output};

#[derive(Subcommand)]
pub(super) enum DataVerb {
    /// Create one from literals and files.
    Create {
        #[command(flatten)]
        id: DataId,
        #[command(flatten)]
        sources: DataSources,
    },
    /// Show one: its keys and their sizes (a configmap's values too; a secret's never).
    Get {
        #[command(flatten)]
        id: DataId,
    },
    /// List those of a namespace.
    List {
        /// The namespace to list.
        #[arg(long, short = 'n', env = "FUSION_NAMESPACE", default_value = "default")]
        namespace: String,
        #[command(flatten)]
        scope: super::AllNamespaces,
    },
    /// Replace every key and value with those given (functions that use it get
    /// new instances on their next call).
    Update {
        #[command(flatten)]
        id: DataId,
        #[command(flatten)]
        sources: DataSources,
    },
    /// Delete one no function uses.
    Delete {
        #[command(flatten)]
        id: DataId,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
    },
}

#[derive(Args)]
pub(super) struct DataId {
    /// Its name, a DNS-1123 label (or give it as --name NAME).
    #[arg(value_name = "NAME", required_unless_present = "name")]
    positional: Option<String>,
    /// Its name (as the positional NAME).
    #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
    name: Option<String>,
    /// Its namespace.
    #[arg(long, short = 'n', env = "FUSION_NAMESPACE", default_value = "default")]
    namespace: String,
}

impl DataId {
    fn name(&self) -> String {
        self.positional
            .clone()
            .or_else(|| self.name.clone())
            .unwrap_or_default()
    }
}

#[derive(Args)]
pub(super) struct DataSources {
    /// A key and its value, as KEY=VALUE (repeatable).
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    literals: Vec<String>,
    /// A file whose contents (UTF-8 text) become a value, under the file's name
    /// as key, or under KEY when given as KEY=PATH (repeatable).
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    files: Vec<String>,
}

/// Which of the two a command is about.
#[derive(Clone, Copy)]
pub(super) struct Kind {
    path: &'static str,
    noun: &'static str,
    secret: bool,
}

pub(super) const SECRETS: Kind = Kind {
    path: "/v1/secrets",
    noun: "secret",
    secret: true,
};
pub(super) const CONFIGMAPS: Kind = Kind {
    path: "/v1/configmaps",
    noun: "configmap",
    secret: false,
};

impl DataSources {
    /// The keys and values, read from the literals and files.
    fn data(&self) -> Result<BTreeMap<String, String>> {
        let mut data = BTreeMap::new();
        let mut add = |key: String, value: String| {
            if data.insert(key.clone(), value).is_some() {
                bail!("key {key:?} is given twice");
            }
            Ok(())
        };
        for lit in &self.literals {
            let (k, v) = lit
                .split_once('=')
                .ok_or_else(|| anyhow!("--from-literal {lit:?}: expected KEY=VALUE"))?;
            add(k.to_string(), v.to_string())?;
        }
        for spec in &self.files {
            let (key, path) = match spec.split_once('=') {
                Some((k, p)) => (k.to_string(), std::path::PathBuf::from(p)),
                None => {
                    let path = std::path::PathBuf::from(spec);
                    let name = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| {
                            anyhow!(
                                "--from-file {spec:?}: the path has no file name; give KEY=PATH"
                            )
                        })?
                        .to_string();
                    (name, path)
                }
            };
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow!("--from-file: cannot read {}: {e}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                anyhow!(
                    "--from-file: {} is not UTF-8 text (binary values are not supported)",
                    path.display()
                )
            })?;
            add(key, text)?;
        }
        Ok(data)
    }
}

fn item(kind: Kind, id: &DataId) -> String {
    format!(
        "{}/{}?namespace={}",
        kind.path,
        urlencode(&id.name()),
        urlencode(&id.namespace)
    )
}

/// Percent-encodes everything but unreserved characters (names are DNS labels;
/// a mistyped one still reaches the server whole, to be refused there).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prints secrets or configmaps: JSON as the API gave it, or a table with
/// their keys (and a configmap's values).
fn show(kind: Kind, opts: &ClientOpts, value: &Value) {
    if opts.output == Output::Json {
        print(opts, value, &[]);
        return;
    }
    let row = |v: &Value| -> Value {
        let keys = v["keys"].as_array().cloned().unwrap_or_default();
        let shown: Vec<String> = keys
            .iter()
            .filter_map(Value::as_str)
            .map(|k| match v["data"].get(k).and_then(Value::as_str) {
                Some(val) if !kind.secret => format!("{k}={val}"),
                _ => match v["sizes"][k].as_u64() {
                    Some(1) => format!("{k} (1 byte)"),
                    _ => format!("{k} ({} bytes)", v["sizes"][k]),
                },
            })
            .collect();
        json!({"name": v["name"], "namespace": v["namespace"], "keys": shown.join(", ")})
    };
    let rows = match value {
        Value::Array(items) => Value::Array(items.iter().map(row).collect()),
        one => row(one),
    };
    let header = if kind.secret { "KEYS" } else { "DATA" };
    print(
        opts,
        &rows,
        &[
            ("NAME", "/name"),
            ("NAMESPACE", "/namespace"),
            (header, "/keys"),
        ],
    );
}

pub(super) async fn data_cmd(kind: Kind, verb: DataVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        DataVerb::Create { id, sources } => {
            let body =
                json!({"name": id.name(), "namespace": id.namespace, "data": sources.data()?});
            let v: Value = c.post_json(kind.path, &body).await?;
            show(kind, opts, &v);
        }
        DataVerb::Get { id } => {
            let v: Value = c.get(&item(kind, &id)).await?;
            show(kind, opts, &v);
        }
        DataVerb::List { namespace, scope } => {
            let query = if scope.all {
                "all_namespaces=true".to_string()
            } else {
                format!("namespace={}", urlencode(&namespace))
            };
            let v: Value = c.get(&format!("{}?{query}", kind.path)).await?;
            show(kind, opts, &v);
        }
        DataVerb::Update { id, sources } => {
            let body =
                json!({"name": id.name(), "namespace": id.namespace, "data": sources.data()?});
            let v: Value = c.put_json(&item(kind, &id), &body).await?;
            show(kind, opts, &v);
        }
        DataVerb::Delete { id, missing } => match c.delete(&item(kind, &id)).await {
            Ok(()) => super::output::deleted(opts, kind.noun, Some(&id.namespace), &id.name()),
            Err(e) => missing.apply(opts, Err(e))?,
        },
    }
    Ok(())
}

/// `NAME` or `NAMESPACE/NAME`, as a function's reference.
/// `NAME` (in `default_ns`, the function's) or `NAMESPACE/NAME` of `--secret`/`--configmap`.
pub(super) fn object_ref(flag: &str, text: &str, default_ns: &str) -> Result<Value> {
    let (namespace, name) = match text.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (default_ns, text),
    };
    if name.is_empty() || namespace.is_empty() {
        bail!("{flag} {text:?}: expected NAME or NAMESPACE/NAME");
    }
    Ok(json!({"name": name, "namespace": namespace}))
}

/// `KEY=VALUE` of `--env-var`.
pub(super) fn env_var(text: &str) -> Result<(String, String)> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| anyhow!("--env-var {text:?}: expected KEY=VALUE"))
}
