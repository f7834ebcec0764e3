//! `fusion fn invocations`, `fusion fn invocation get|redrive` and `fusion fn
//! dlq list|show|redrive`: a function's asynchronous invocations, and the
//! dead-letter list (Fission's `fission function dlq`).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::print;
use super::ClientOpts;

/// An invocation's id: positional or `--id`.
#[derive(Args, Clone)]
pub(super) struct InvocationId {
    /// The invocation's id (or give it as --id ID).
    #[arg(value_name = "ID", required_unless_present = "id")]
    positional: Option<String>,
    /// The invocation's id (as the positional ID).
    #[arg(long = "id", value_name = "ID", conflicts_with = "positional")]
    id: Option<String>,
}

impl InvocationId {
    fn get(self) -> String {
        self.positional.or(self.id).unwrap_or_default()
    }
}

#[derive(Subcommand)]
pub(super) enum InvocationVerb {
    /// Show an invocation: its request, every attempt and the last answer.
    Get {
        #[command(flatten)]
        id: InvocationId,
    },
    /// Try a dead or failed invocation again (a new cycle of attempts).
    Redrive {
        #[command(flatten)]
        id: InvocationId,
    },
}

#[derive(Subcommand)]
pub(super) enum DlqVerb {
    /// List the dead letters: invocations whose every attempt failed.
    List {
        /// The most to list (newest first).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only the dead letters of this function.
        #[arg(long, value_name = "NAME")]
        function: Option<String>,
        /// Where to go on from: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show a dead letter.
    Show {
        #[command(flatten)]
        id: InvocationId,
    },
    /// Discard the dead letters (of one function with --function), as
    /// Fission's `dlq purge`.
    Purge {
        /// Only the dead letters of this function.
        #[arg(long, value_name = "NAME")]
        function: Option<String>,
    },
    /// Try dead letters again: one by id, or --all of them.
    Redrive {
        /// The invocation's id.
        #[arg(value_name = "ID", required_unless_present_any = ["id", "all"])]
        positional: Option<String>,
        /// The invocation's id (as the positional ID).
        #[arg(long = "id", value_name = "ID", conflicts_with = "positional")]
        id: Option<String>,
        /// Every dead letter in the namespace.
        #[arg(long, conflicts_with_all = ["id", "positional"])]
        all: bool,
        /// With --all: only the dead letters of this function.
        #[arg(long, value_name = "NAME", requires = "all")]
        function: Option<String>,
    },
}

const COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("FUNCTION", "/function"),
    ("STATUS", "/status"),
    ("ATTEMPTS", "/attempts"),
    ("HTTP", "/http_status"),
    ("REASON", "/reason"),
    ("ERROR", "/error"),
];

/// Rows as the table shows them: an invocation whose destination could not
/// be called says why in its ERROR column, after its own error if it has one
/// (a dead letter whose onFailure alert did not go out); as JSON,
/// `destination_error` beside `error`.
fn shown(opts: &ClientOpts, rows: &Value) -> Value {
    let mut rows = rows.clone();
    if opts.json() {
        return rows;
    }
    let one = |row: &mut Value| {
        if let Some(d) = row["destination_error"].as_str() {
            let text = match row["error"].as_str() {
                Some(e) => format!("{e}; destination: {d}"),
                None => format!("destination: {d}"),
            };
            row["error"] = Value::String(text);
        }
    };
    match &mut rows {
        Value::Array(items) => items.iter_mut().for_each(one),
        row => one(row),
    }
    rows
}

/// `?namespace=NS&...` (or `?...`) for a list.
fn query(opts: &ClientOpts, pairs: &[(&str, String)]) -> String {
    let mut q = opts.ns_query();
    for (k, v) in pairs {
        q.push(if q.is_empty() { '?' } else { '&' });
        q.push_str(&format!("{k}={v}"));
    }
    q
}

/// Up to `limit` invocations of the list at `path` from `cursor` on, as one
/// page (`filled_page`).
async fn filled(
    opts: &ClientOpts,
    c: &crate::client::Client,
    path: &str,
    pairs: &[(&str, String)],
    limit: usize,
    cursor: Option<String>,
) -> Result<Value> {
    super::filled_page("invocations", limit, cursor, async |limit, cursor| {
        let mut pairs = pairs.to_vec();
        pairs.push(("limit", limit.to_string()));
        if let Some(cur) = cursor {
            pairs.push(("cursor", cur.to_string()));
        }
        c.get(&format!("{path}{}", query(opts, &pairs))).await
    })
    .await
}

/// Prints a page of invocations: as JSON the page itself (`invocations` and
/// `next_cursor`), as the API answers it; as a table its rows, and on stderr
/// the command that prints the next page, `command` given `--cursor`.
fn print_page(opts: &ClientOpts, page: &Value, command: &str) {
    if opts.json() {
        println!("{}", serde_json::to_string_pretty(page).unwrap_or_default());
        return;
    }
    print(opts, &shown(opts, &page["invocations"]), COLUMNS);
    if let Some(next) = page["next_cursor"].as_str() {
        // Aside, as other hints: what goes to a pipe is the rows. In the
        // namespace this page is of.
        let ns = match opts.namespace.as_deref() {
            None | Some("default") => String::new(),
            Some(ns) => format!(" -n {}", super::up::shell_quote(ns)),
        };
        eprintln!(
            "more: {command}{ns} --cursor {}",
            super::up::shell_quote(next)
        );
    }
}

/// `fusion fn invocations NAME`: the function's invocations, newest first.
pub(super) async fn list(
    opts: &ClientOpts,
    function: &str,
    status: Option<String>,
    limit: usize,
    cursor: Option<String>,
) -> Result<()> {
    let c = opts.client()?;
    let mut pairs = vec![("function", function.to_string())];
    let quote = super::up::shell_quote;
    let mut command = format!("fusion fn invocations {}", quote(function));
    if let Some(s) = status {
        command.push_str(&format!(" --status {}", quote(&s)));
        pairs.push(("status", s));
    }
    command.push_str(&format!(" --limit {limit}"));
    let page = filled(opts, &c, "/v1/invocations", &pairs, limit, cursor).await?;
    print_page(opts, &page, &command);
    Ok(())
}

/// A caller's text as a line of `invocation get`: control characters shown
/// escaped, cut at 200 characters (whole with `-o wide`).
fn shown_text(opts: &ClientOpts, text: &str) -> String {
    let wide = opts.output == super::Output::Wide;
    let mut shown: String = text
        .chars()
        .take(if wide { usize::MAX } else { 200 })
        .collect();
    if shown.len() < text.len() {
        shown.push_str("...");
    }
    super::output::printable(shown)
}

async fn show(opts: &ClientOpts, id: &str) -> Result<()> {
    let c = opts.client()?;
    let v: Value = c.get(&format!("/v1/invocations/{id}")).await?;
    if opts.json() {
        print(opts, &v, &[]);
    } else {
        // The row as the list shows it: the attempts that count (this
        // cycle's, not one a server's stop interrupted), the last status.
        let attempts: Vec<Value> = v["attempts"].as_array().cloned().unwrap_or_default();
        let counted = attempts
            .iter()
            .filter(|a| a["cycle"] == v["cycle"] && a["interrupted"] != json!(true))
            .count();
        let mut row = v.clone();
        row["attempts"] = json!(counted);
        row["http_status"] = v
            .pointer("/response/status")
            .cloned()
            .unwrap_or(Value::Null);
        print(opts, &shown(opts, &row), COLUMNS);
        // The request as it came: its line, headers, and body (text).
        let r = &v["request"];
        if let Some(method) = r["method"].as_str() {
            let path = r["path"].as_str().unwrap_or("/");
            let query = r["query"].as_str().filter(|q| !q.is_empty());
            println!(
                "\nrequest: {method} {path}{}{}",
                query.map_or(String::new(), |q| format!("?{q}")),
                r["body_bytes"]
                    .as_u64()
                    .map_or(String::new(), |n| format!(" ({n} bytes of body)"))
            );
            for h in r["headers"].as_array().into_iter().flatten() {
                if let (Some(name), Some(value)) = (h[0].as_str(), h[1].as_str()) {
                    println!("  {name}: {}", shown_text(opts, value));
                }
            }
            if let Some(body) = r["body"].as_str().filter(|b| !b.is_empty()) {
                println!("  {}", shown_text(opts, body));
            } else if r["body_base64"].is_string() {
                println!("  (not text: -o json shows it as body_base64)");
            }
            if r["body_truncated"] == json!(true) {
                println!("  (the first 64 KiB of it are kept)");
            }
        }
        println!();
        let rows: Vec<Value> = attempts
            .iter()
            .map(|a| {
                let mut r = a.clone();
                r["started"] = json!(a["started_ms"].as_u64().map(super::run::clock_ms));
                if a["interrupted"].as_bool() == Some(true) {
                    r["error"] = json!("interrupted: the server stopped during it (not counted)");
                }
                r
            })
            .collect();
        print(
            opts,
            &Value::Array(rows),
            &[
                ("ATTEMPT", "/number"),
                ("CYCLE", "/cycle"),
                ("STARTED", "/started"),
                ("HTTP", "/status"),
                ("ERROR", "/error"),
            ],
        );
        if let Some(body) = v.pointer("/response/body").and_then(Value::as_str) {
            println!("\n{body}");
        }
    }
    Ok(())
}

async fn redrive(opts: &ClientOpts, id: &str) -> Result<()> {
    let c = opts.client()?;
    let v: Value = c
        .post_json(&format!("/v1/invocations/{id}/redrive"), &json!({}))
        .await?;
    print(
        opts,
        &v,
        &[
            ("ID", "/id"),
            ("STATUS", "/status"),
            ("LOCATION", "/location"),
        ],
    );
    Ok(())
}

pub(super) async fn invocation_cmd(verb: InvocationVerb, opts: &ClientOpts) -> Result<()> {
    match verb {
        InvocationVerb::Get { id } => show(opts, &id.get()).await,
        InvocationVerb::Redrive { id } => redrive(opts, &id.get()).await,
    }
}

pub(super) async fn dlq_cmd(verb: DlqVerb, opts: &ClientOpts) -> Result<()> {
    match verb {
        DlqVerb::List {
            limit,
            function,
            cursor,
        } => {
            let c = opts.client()?;
            let mut pairs = Vec::new();
            let mut command = format!("fusion fn dlq list --limit {limit}");
            if let Some(f) = function {
                command.push_str(&format!(" --function {}", super::up::shell_quote(&f)));
                pairs.push(("function", f));
            }
            let page = filled(opts, &c, "/v1/deadletters", &pairs, limit, cursor).await?;
            print_page(opts, &page, &command);
            Ok(())
        }
        DlqVerb::Show { id } => show(opts, &id.get()).await,
        DlqVerb::Purge { function } => {
            let c = opts.client()?;
            let mut pairs = Vec::new();
            if let Some(f) = function {
                pairs.push(("function", f));
            }
            let v: Value = c
                .send(c.request(
                    reqwest::Method::DELETE,
                    &format!("/v1/deadletters{}", query(opts, &pairs)),
                ))
                .await?
                .json()
                .await?;
            println!(
                "purged {} dead letter(s)",
                v["purged"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        DlqVerb::Redrive {
            positional,
            id,
            all,
            function,
        } => {
            if let Some(id) = positional.or(id) {
                return redrive(opts, &id).await;
            }
            if !all {
                bail!("give an invocation's ID, or --all");
            }
            // Every dead letter as listed now (one that dies again after its
            // redrive is not taken twice).
            let c = opts.client()?;
            let mut ids: Vec<String> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut pairs = vec![("limit", "1000".to_string())];
                if let Some(f) = &function {
                    pairs.push(("function", f.clone()));
                }
                if let Some(cur) = &cursor {
                    pairs.push(("cursor", cur.clone()));
                }
                let page: Value = c
                    .get(&format!("/v1/deadletters{}", query(opts, &pairs)))
                    .await?;
                if let Some(items) = page["invocations"].as_array() {
                    ids.extend(
                        items
                            .iter()
                            .filter_map(|i| i["id"].as_str().map(str::to_string)),
                    );
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_string()),
                    None => break,
                }
            }
            // One that someone else redrove meanwhile is skipped, not the end.
            let (mut count, mut skipped) = (0, Vec::new());
            for id in ids {
                let sent: Result<Value> = c
                    .post_json(&format!("/v1/invocations/{id}/redrive"), &json!({}))
                    .await;
                match sent {
                    Ok(_) => count += 1,
                    Err(e) => skipped.push(format!("{id}: {e}")),
                }
            }
            println!("{count} dead letters redriven");
            for s in &skipped {
                eprintln!("not redriven: {s}");
            }
            if skipped.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "{} dead letters not redriven",
                    skipped.len()
                ))
            }
        }
    }
}
