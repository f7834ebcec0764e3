//! `fusion fn`: functions, and calling them (`fn test`), their logs and instances.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::output::{print, Collection};
use super::{with_headers, ClientOpts};
use crate::client::Client;

#[derive(Args)]
pub(super) struct FnFields {
    /// The environment to run in.
    #[arg(long)]
    env: Option<String>,
    /// The code: one file, or a zip archive.
    #[arg(long)]
    code: Option<PathBuf>,
    /// The entrypoint inside the code.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Seconds before a request gets 504.
    #[arg(long = "fntimeout", alias = "ft")]
    timeout: Option<u64>,
    /// Seconds an idle instance is kept.
    #[arg(long = "idletimeout")]
    idle_timeout: Option<u64>,
    /// Most instances at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Concurrent requests per instance.
    #[arg(long = "rpp")]
    requests_per_instance: Option<usize>,
    /// A secret the function reads at /secrets/<namespace>/<name>/<key>, as NAME
    /// or NAMESPACE/NAME (repeatable; replaces the list; container backend).
    #[arg(long = "secret", value_name = "[NAMESPACE/]NAME")]
    secrets: Vec<String>,
    /// A configmap the function reads at /configs/<namespace>/<name>/<key>, as
    /// NAME or NAMESPACE/NAME (repeatable; replaces the list; container backend).
    #[arg(long = "configmap", value_name = "[NAMESPACE/]NAME")]
    configmaps: Vec<String>,
    /// An environment variable set before the code loads, as KEY=VALUE
    /// (repeatable; sets or replaces KEY; bundled runtimes only).
    #[arg(long = "env-var", value_name = "KEY=VALUE")]
    env_vars: Vec<String>,
}

#[derive(Subcommand)]
pub(super) enum FnVerb {
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: FnFields,
    },
    Get {
        #[arg(long)]
        name: String,
    },
    List,
    Update {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: FnFields,
    },
    Delete {
        #[arg(long)]
        name: String,
    },
    /// Call the function and print its answer.
    Test {
        #[arg(long)]
        name: String,
        #[arg(long, short = 'X', default_value = "GET")]
        method: String,
        /// A header, as `Key: Value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The request body.
        #[arg(short = 'b', long = "body")]
        body: Option<String>,
        /// A sub-path below the function.
        #[arg(long, default_value = "/")]
        subpath: String,
    },
    /// Print the function's logs.
    Logs {
        /// The function (also as `fusion fn logs NAME`).
        #[arg(long = "name", required_unless_present = "function")]
        name: Option<String>,
        #[arg(conflicts_with = "name", hide = true)]
        function: Option<String>,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// List the function's running instances.
    Instances {
        #[arg(long)]
        name: String,
    },
}

pub(super) const FUNCTIONS: Collection = Collection {
    path: "/v1/functions",
    noun: "function",
    columns: FN_COLUMNS,
};

pub(super) const FN_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("ENV", "/env"),
    ("ENTRYPOINT", "/entrypoint"),
    ("TIMEOUT", "/timeout_secs"),
    ("IDLE", "/idle_timeout_secs"),
    ("CONCURRENCY", "/concurrency"),
    ("RPP", "/requests_per_instance"),
    ("GENERATION", "/generation"),
];

pub(super) async fn merge_fn(c: &Client, body: &mut Value, f: FnFields) -> Result<()> {
    if let Some(e) = f.env {
        body["env"] = json!(e);
    }
    if let Some(code) = f.code {
        body["package"] = c.upload(&code).await?;
    }
    if let Some(e) = f.entrypoint {
        body["entrypoint"] = json!(e);
    }
    if let Some(t) = f.timeout {
        body["timeout_secs"] = json!(t);
    }
    if let Some(t) = f.idle_timeout {
        body["idle_timeout_secs"] = json!(t);
    }
    if let Some(n) = f.concurrency {
        body["concurrency"] = json!(n);
    }
    if let Some(n) = f.requests_per_instance {
        body["requests_per_instance"] = json!(n);
    }
    for (flag, field, given) in [
        ("--secret", "secrets", &f.secrets),
        ("--configmap", "configmaps", &f.configmaps),
    ] {
        if !given.is_empty() {
            let refs = given
                .iter()
                .map(|t| super::secret::object_ref(flag, t))
                .collect::<Result<Vec<_>>>()?;
            body[field] = json!(refs);
        }
    }
    for text in &f.env_vars {
        let (k, v) = super::secret::env_var(text)?;
        if !body["env_vars"].is_object() {
            body["env_vars"] = json!({});
        }
        body["env_vars"][k] = json!(v);
    }
    Ok(())
}

pub(super) async fn fn_cmd(verb: FnVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        FnVerb::Create { name, fields } => {
            if fields.env.is_none() {
                bail!("--env is required");
            }
            if fields.code.is_none() {
                bail!("--code is required");
            }
            let mut body = json!({"name": name});
            merge_fn(&c, &mut body, fields).await?;
            FUNCTIONS.create(&c, opts, &body).await?;
        }
        FnVerb::Get { name } => FUNCTIONS.show(&c, opts, &name).await?,
        FnVerb::List => FUNCTIONS.list(&c, opts).await?,
        FnVerb::Update { name, fields } => {
            let mut body = FUNCTIONS.current(&c, &name).await?;
            merge_fn(&c, &mut body, fields).await?;
            FUNCTIONS.replace(&c, opts, &name, &body).await?;
        }
        FnVerb::Delete { name } => FUNCTIONS.delete(&c, &name).await?,
        FnVerb::Test {
            name,
            method,
            headers,
            body,
            subpath,
        } => {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
                .map_err(|_| anyhow!("bad method {method:?}"))?;
            let sub = subpath.trim_start_matches('/');
            let path = if sub.is_empty() {
                format!("/v1/functions/{name}/invoke")
            } else {
                format!("/v1/functions/{name}/invoke/{sub}")
            };
            let mut req = c.request(method, &path);
            req = with_headers(req, &headers)?;
            if let Some(b) = body {
                req = req.body(b);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach the Fusion API at {}", opts.api))?;
            let status = resp.status();
            let text = resp.text().await?;
            print!("{text}");
            if !status.is_success() {
                bail!("the function answered {status}");
            }
        }
        FnVerb::Logs {
            name,
            function,
            follow,
        } => {
            let name = name.or(function).unwrap_or_default();
            use futures_util::StreamExt;
            use std::io::Write;
            let path = format!("/v1/functions/{name}/logs");
            let resp = c
                .send(c.request(Method::GET, &path).query(&[("follow", follow)]))
                .await?;
            let mut stream = resp.bytes_stream();
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?)?;
                out.flush()?;
            }
        }
        FnVerb::Instances { name } => {
            let v: Value = c.get(&format!("/v1/functions/{name}/instances")).await?;
            print(
                opts,
                &v,
                &[
                    ("ID", "/id"),
                    ("PID", "/pid"),
                    ("ADDRESS", "/address"),
                    ("STATE", "/state"),
                    ("ACTIVE", "/active_requests"),
                ],
            );
        }
    }
    Ok(())
}
