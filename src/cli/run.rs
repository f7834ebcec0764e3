//! `fusion run`: workflow runs, their tasks and events; cancel and retry.

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::output::print;
use super::{ClientOpts, Output};

#[derive(Subcommand)]
pub(super) enum RunVerb {
    List {
        #[arg(long)]
        workflow: Option<String>,
        /// running, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    Get {
        #[arg(long)]
        id: String,
    },
    Events {
        #[arg(long)]
        id: String,
    },
    Cancel {
        #[arg(long)]
        id: String,
    },
    /// Run again from the failed tasks, keeping the outputs of those that succeeded.
    Retry {
        #[arg(long)]
        id: String,
    },
}

pub(super) const RUN_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("WORKFLOW", "/workflow"),
    ("VERSION", "/version"),
    ("STATUS", "/status"),
    ("DURATION_MS", "/duration_ms"),
];

pub(super) async fn run_cmd(verb: RunVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        RunVerb::List {
            workflow,
            status,
            limit,
            cursor,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(w) = workflow {
                q.push(("workflow", w));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            if let Some(cur) = cursor {
                q.push(("cursor", cur));
            }
            let req = c.request(Method::GET, "/v1/runs").query(&q);
            let v: Value = c.send(req).await?.json().await?;
            if opts.output == Output::Json {
                print(opts, &v, RUN_COLUMNS);
            } else {
                print(opts, &v["runs"], RUN_COLUMNS);
                if let Some(next) = v["next_cursor"].as_str() {
                    println!("more: fusion run list --cursor {next}");
                }
            }
        }
        RunVerb::Get { id } => {
            let v: Value = c.get(&format!("/v1/runs/{id}")).await?;
            if opts.output == Output::Json {
                print(opts, &v, RUN_COLUMNS);
            } else {
                print(opts, &v, RUN_COLUMNS);
                println!();
                print(
                    opts,
                    &v["tasks"],
                    &[
                        ("TASK", "/id"),
                        ("STATUS", "/status"),
                        ("ATTEMPTS", "/attempts"),
                        ("ERROR", "/error/message"),
                    ],
                );
            }
        }
        RunVerb::Events { id } => {
            let v: Value = c.get(&format!("/v1/runs/{id}/events")).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
        }
        RunVerb::Cancel { id } => {
            let v: Value = c
                .post_json(&format!("/v1/runs/{id}/cancel"), &json!({}))
                .await?;
            print(opts, &v, RUN_COLUMNS);
        }
        RunVerb::Retry { id } => {
            let v: Value = c
                .post_json(&format!("/v1/runs/{id}/retry"), &json!({}))
                .await?;
            print(opts, &v, RUN_COLUMNS);
        }
    }
    Ok(())
}
