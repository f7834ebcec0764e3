//! `fusion run`: workflow runs, their tasks and events; cancel and retry.

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::output::print;
use super::{ClientOpts, Output, RunId};

#[derive(Subcommand)]
pub(super) enum RunVerb {
    /// List runs, newest first.
    List {
        /// Only runs of this workflow.
        #[arg(long, value_name = "WORKFLOW")]
        workflow: Option<String>,
        /// Only runs in this status: running, succeeded, failed or cancelled.
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Most runs to print.
        #[arg(long, default_value_t = 20, value_name = "RUNS")]
        limit: usize,
        /// Where to go on from: the cursor the previous page printed.
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
    },
    /// Show a run: its status, input, output, and every task with its attempts.
    Get {
        #[command(flatten)]
        id: RunId,
    },
    /// Print the durable events the run's state is folded from (JSON).
    Events {
        #[command(flatten)]
        id: RunId,
    },
    /// Cancel a running run; tasks in flight are abandoned.
    Cancel {
        #[command(flatten)]
        id: RunId,
    },
    /// Run again from the failed tasks, keeping the outputs of those that succeeded.
    Retry {
        #[command(flatten)]
        id: RunId,
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
            let id = id.get();
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
            let id = id.get();
            let v: Value = c.get(&format!("/v1/runs/{id}/events")).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
        }
        RunVerb::Cancel { id } => {
            let id = id.get();
            let v: Value = c
                .post_json(&format!("/v1/runs/{id}/cancel"), &json!({}))
                .await?;
            print(opts, &v, RUN_COLUMNS);
        }
        RunVerb::Retry { id } => {
            let id = id.get();
            let v: Value = c
                .post_json(&format!("/v1/runs/{id}/retry"), &json!({}))
                .await?;
            print(opts, &v, RUN_COLUMNS);
        }
    }
    Ok(())
}
