//! `fusion wf`: workflows (Fission Workflows YAML), their versions, and invoking them.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::output::print;
use super::{with_headers, ClientOpts, Output};

#[derive(Subcommand)]
pub(super) enum WfVerb {
    /// Store a workflow (version 1).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long = "file", short = 'f')]
        file: PathBuf,
    },
    /// Store a new version of a workflow.
    Update {
        #[arg(long)]
        name: String,
        #[arg(long = "file", short = 'f')]
        file: PathBuf,
    },
    Get {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    List,
    Versions {
        #[arg(long)]
        name: String,
    },
    Delete {
        #[arg(long)]
        name: String,
    },
    /// Run the workflow and print its output (or, with --async, the run id).
    Invoke {
        #[arg(long)]
        name: String,
        /// The input body.
        #[arg(short = 'b', long = "body")]
        body: Option<String>,
        /// A header, as `Key: Value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Do not wait for the result.
        #[arg(long = "async")]
        asynchronous: bool,
    },
}

pub(super) const WF_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("VERSION", "/version"),
    ("DESCRIPTION", "/description"),
];

pub(super) fn read_file(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
}

pub(super) async fn wf_cmd(verb: WfVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        WfVerb::Create { name, file } => {
            let req = c
                .request(Method::POST, "/v1/workflows")
                .query(&[("name", &name)])
                .header("content-type", "application/yaml")
                .body(read_file(&file)?);
            let v: Value = c.send(req).await?.json().await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Update { name, file } => {
            let req = c
                .request(Method::PUT, &format!("/v1/workflows/{name}"))
                .header("content-type", "application/yaml")
                .body(read_file(&file)?);
            let v: Value = c.send(req).await?.json().await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Get { name, version } => {
            let mut path = format!("/v1/workflows/{name}");
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let v: Value = c.get(&path).await?;
            if opts.output == Output::Json {
                print(opts, &v, WF_COLUMNS);
            } else {
                println!("# {name} version {}", v["version"]);
                print!("{}", v["source"].as_str().unwrap_or_default());
            }
        }
        WfVerb::List => {
            let v: Value = c.get("/v1/workflows").await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Versions { name } => {
            let v: Value = c.get(&format!("/v1/workflows/{name}/versions")).await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Delete { name } => {
            c.delete(&format!("/v1/workflows/{name}")).await?;
            println!("workflow {name} deleted");
        }
        WfVerb::Invoke {
            name,
            body,
            headers,
            asynchronous,
        } => {
            let mut req = c.request(Method::POST, &format!("/v1/workflows/{name}/invoke"));
            req = with_headers(req, &headers)?;
            if asynchronous {
                req = req.header("X-Async", "true");
            }
            if let Some(b) = body {
                req = req.body(b);
            }
            let resp = c.send(req).await?;
            let run = resp
                .headers()
                .get("x-fusion-run-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = resp.text().await?;
            print!("{text}");
            if !text.is_empty() && !text.ends_with('\n') {
                println!();
            }
            if let Some(id) = run {
                eprintln!("run {id}");
            }
        }
    }
    Ok(())
}
