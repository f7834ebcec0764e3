//! `fusion run`: workflow runs, their tasks and events; cancel and retry.

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::output::print;
use super::{ClientOpts, Output, RunId};

#[derive(Subcommand)]
pub(super) enum RunVerb {
    /// List runs, newest first.
    List(ListArgs),
    /// Show a run: its status, input, output, and every task with its attempts.
    Get {
        #[command(flatten)]
        id: RunId,
    },
    /// Wait for a run to end and show it as `get` does; exits 1 when it did
    /// not succeed, 124 when it is still running at --timeout.
    Wait {
        #[command(flatten)]
        id: RunId,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 600, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Print the durable events the run's state is folded from (a table; JSON with
    /// `-o json`).
    Events {
        #[command(flatten)]
        id: RunId,
    },
    /// Cancel a running run; its tasks in flight end cancelled.
    Cancel {
        #[command(flatten)]
        id: RunId,
        /// Why, kept in the run's error.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Delete finished runs: their records, events and places in the listings
    /// (a running one must be cancelled first).
    Delete {
        /// The runs' ids.
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
    /// Run again from the failed tasks, keeping the outputs of those that succeeded.
    Retry {
        #[command(flatten)]
        id: RunId,
    },
    /// Complete a task waiting on a callback: with --result, or fail it with
    /// --error.
    Complete {
        /// The callback: its token, its path (/v1/callbacks/TOKEN) or its URL.
        #[arg(value_name = "CALLBACK")]
        callback: String,
        /// The task's result: JSON, or @FILE holding JSON (default: null).
        #[arg(long, value_name = "JSON|@FILE", conflicts_with = "error")]
        result: Option<String>,
        /// Fail the task with this message (the cause, with --error-type).
        #[arg(long, value_name = "MESSAGE")]
        error: Option<String>,
        /// The error's type, for RFC-0022 `catch` rules (e.g. Approval.Rejected).
        #[arg(long, value_name = "TYPE", requires = "error")]
        error_type: Option<String>,
    },
}

/// Which runs `run list` (and `wf runs list`) prints.
#[derive(Args)]
pub(super) struct ListArgs {
    /// Only runs of this workflow.
    #[arg(long, value_name = "WORKFLOW")]
    workflow: Option<String>,
    /// Only runs in this status: running, succeeded, failed or cancelled
    /// (several separated by commas: `failed,cancelled`).
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
    /// Only runs created at or after this time: RFC 3339
    /// (2026-12-01T10:00:00Z), milliseconds since the epoch, or a time back
    /// from now (90s, 30m, 2h, 1d).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    since: Option<u64>,
    /// Only runs created at or before this time (as --since).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    until: Option<u64>,
    /// Most runs to print.
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_name = "RUNS")]
    limit: usize,
    /// Where to go on from: the cursor the previous page printed.
    #[arg(long, value_name = "CURSOR")]
    cursor: Option<String>,
    /// The run an invocation with this Idempotency-Key started (with
    /// --workflow: a key names a run of one workflow).
    #[arg(long, value_name = "KEY", requires = "workflow")]
    idempotency_key: Option<String>,
}

/// The token of a callback given as a token, a path or a URL.
fn callback_token(callback: &str) -> Result<&str> {
    let token = match callback.rsplit_once(CALLBACKS) {
        Some((_, t)) => t,
        None => callback,
    };
    let token = token.trim_end_matches('/');
    if token.is_empty() || token.contains(['/', '?', '#']) || token.contains(char::is_whitespace) {
        anyhow::bail!("{callback:?} is not a callback token, path or URL (…{CALLBACKS}TOKEN)");
    }
    Ok(token)
}

const CALLBACKS: &str = "/v1/callbacks/";

/// What `run complete` POSTs: the output, or `{"error": ...}` (typed when a type
/// is given, as RFC-0022's errors are).
fn completion(
    result: Option<String>,
    error: Option<String>,
    error_type: Option<String>,
) -> Result<Value> {
    Ok(match (error, error_type) {
        (Some(cause), Some(t)) => json!({"error": {"errorType": t, "cause": cause}}),
        (Some(message), None) => json!({"error": message}),
        (None, _) => match result {
            Some(text) => {
                let v = super::workflow::json_arg("--result", &text)?;
                // The API reads an object with the single key `error` as a failure.
                if v.as_object()
                    .is_some_and(|m| m.len() == 1 && m.contains_key("error"))
                {
                    anyhow::bail!(
                        "--result {{\"error\": ...}} would fail the task: use --error MESSAGE to fail it"
                    );
                }
                v
            }
            None => Value::Null,
        },
    })
}

/// Runs `run list` prints unless told otherwise.
const DEFAULT_LIMIT: usize = 20;

pub(super) const RUN_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("STARTED", "/started"),
    ("WORKFLOW", "/workflow"),
    ("VERSION", "/version"),
    ("STATUS", "/status"),
    ("DURATION_MS", "/duration_ms"),
    // What a running run is at: its tasks running or waiting to be tried again.
    ("RUNNING", "/running_tasks"),
    ("ERROR", "/error_text"),
];

/// A listed run as a table row shows it: its start's time, and why it failed
/// in a few words (triage without a `run get` per run).
fn run_row_cells(run: &mut Value) {
    run["started"] = json!(run["created_at"].as_u64().map(clock_ms));
    run["error_text"] = error_cell(run);
    // A failed run that a retry carried on says so where it is listed.
    if run["retried_by"].is_string() {
        run["status"] = json!(format!(
            "{} (retried)",
            run["status"].as_str().unwrap_or("?")
        ));
    }
}

/// A run's error as a cell: the failing task, then what it met.
fn error_cell(v: &Value) -> Value {
    match (v.pointer("/error/task"), v.pointer("/error/message")) {
        (Some(Value::String(t)), Some(m)) => cell(&json!(format!(
            "task {t:?}: {}",
            m.as_str().unwrap_or_default()
        ))),
        (_, Some(m)) => cell(m),
        _ => Value::Null,
    }
}

pub(super) async fn run_cmd(verb: RunVerb, opts: &ClientOpts) -> Result<()> {
    cells_for(opts);
    let c = opts.client()?;
    match verb {
        RunVerb::List(ListArgs {
            workflow,
            status,
            since,
            until,
            limit,
            cursor,
            idempotency_key,
        }) => {
            let mut q: Vec<(&str, String)> = Vec::new();
            if let Some(k) = idempotency_key {
                q.push(("idempotency_key", k));
            }
            if let Some(w) = &workflow {
                q.push(("workflow", w.clone()));
            }
            if let Some(s) = &status {
                q.push(("status", s.clone()));
            }
            if let Some(t) = since {
                q.push(("since", t.to_string()));
            }
            if let Some(t) = until {
                q.push(("until", t.to_string()));
            }
            let mut v = super::filled_page("runs", limit, cursor, async |limit, cursor| {
                let mut q = q.clone();
                q.push(("limit", limit.to_string()));
                if let Some(cur) = cursor {
                    q.push(("cursor", cur.to_string()));
                }
                let req = c.request(Method::GET, "/v1/runs").query(&q);
                Ok(c.send(req).await?.json().await?)
            })
            .await?;
            if opts.output == Output::Json {
                print(opts, &v, RUN_COLUMNS);
            } else {
                for run in v["runs"].as_array_mut().into_iter().flatten() {
                    run_row_cells(run);
                }
                print(opts, &v["runs"], RUN_COLUMNS);
                if let Some(next) = v["next_cursor"].as_str() {
                    let filters = Filters {
                        workflow: workflow.as_deref(),
                        status: status.as_deref(),
                        since,
                        until,
                    };
                    // Aside, as other hints: what goes to a pipe is the runs.
                    eprintln!("more: {}", next_page(&filters, limit, next));
                }
                if let (Some(w), Some(Value::Array(inside))) =
                    (&workflow, v.get("also_runs_inside"))
                {
                    let names: Vec<&str> = inside.iter().filter_map(Value::as_str).collect();
                    if let Some(first) = names.first() {
                        eprintln!(
                            "note: {w} also runs as a task of {} {}: those runs hold its tasks (fusion run list --workflow {first})",
                            if names.len() == 1 { "workflow" } else { "workflows" },
                            names.join(", "),
                        );
                    }
                }
            }
        }
        RunVerb::Get { id } => {
            let id = id.get();
            let v: Value = c.get(&format!("/v1/runs/{id}")).await?;
            print_run(opts, &v);
        }
        RunVerb::Wait { id, timeout } => {
            let id = id.get();
            // A timeout past the clock's range waits as long as the run takes.
            let deadline =
                std::time::Instant::now().checked_add(std::time::Duration::from_secs(timeout));
            // Asked at once first: a wrong address or run fails fast, and a
            // run still going is said to be waited for.
            let mut v: Value = c.get(&format!("/v1/runs/{id}")).await?;
            if v["status"] == "running" {
                eprintln!("run {id} is running; waiting for it to end (at most {timeout} s)");
            }
            // The server holds each request until the run ends, up to its most.
            let mut down = false;
            while v["status"] == "running" {
                let left = deadline.map_or(std::time::Duration::MAX, |d| {
                    d.saturating_duration_since(std::time::Instant::now())
                });
                // Rounded up: the last second is waited for, not skipped.
                let wait = left.as_millis().div_ceil(1000).min(300) as u64;
                if wait == 0 {
                    break;
                }
                match c.get(&format!("/v1/runs/{id}?wait={wait}")).await {
                    Ok(now) => {
                        v = now;
                        down = false;
                    }
                    // A server that answered, restarting: the run goes on
                    // after it, and so does the wait, until its time is up.
                    Err(e) if e.downcast_ref::<crate::client::Unreachable>().is_some() => {
                        if !down {
                            eprintln!("{e}; waiting for it (a restart?)");
                            down = true;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            print_run(opts, &v);
            match v["status"].as_str() {
                Some("succeeded") => {}
                Some("running") => {
                    return Err(super::ExitWith {
                        code: super::STILL_RUNNING_EXIT,
                        message: format!("run {id} is still running after {timeout} s"),
                    }
                    .into())
                }
                Some(other) => bail!(
                    "run {id} {other}: {}",
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("no error recorded")
                ),
                None => bail!("the API answered no status for run {id}: {v}"),
            }
        }
        RunVerb::Events { id } => {
            let id = id.get();
            let v: Value = c.get(&format!("/v1/runs/{id}/events")).await?;
            if opts.output == Output::Json {
                print(opts, &v, EVENT_COLUMNS);
            } else {
                print(
                    opts,
                    &event_rows(&v["events"], opts.output == Output::Wide),
                    EVENT_COLUMNS,
                );
            }
        }
        RunVerb::Cancel { id, reason } => {
            let id = id.get();
            let body = match reason {
                Some(r) => json!({ "reason": r }),
                None => json!({}),
            };
            let mut v: Value = c.post_json(&format!("/v1/runs/{id}/cancel"), &body).await?;
            if opts.output != Output::Json {
                run_row_cells(&mut v);
            }
            print(opts, &v, RUN_COLUMNS);
        }
        RunVerb::Complete {
            callback,
            result,
            error,
            error_type,
        } => {
            let token = callback_token(&callback)?;
            let body = completion(result, error, error_type)?;
            let v: Value = c.post_json(&format!("{CALLBACKS}{token}"), &body).await?;
            print(opts, &v, &[("TASK", "/task"), ("COMPLETED", "/completed")]);
        }
        RunVerb::Delete { ids } => {
            for id in ids {
                c.delete(&format!("/v1/runs/{id}")).await?;
                eprintln!("run {id} deleted");
            }
        }
        RunVerb::Retry { id } => {
            let id = id.get();
            let v: Value = c
                .post_json(&format!("/v1/runs/{id}/retry"), &json!({}))
                .await?;
            let new = v["id"]
                .as_str()
                .ok_or_else(|| anyhow!("the API did not answer with a run id: {v}"))?;
            if opts.output == Output::Json {
                println!("{v}");
            } else {
                // Just the id, as `wf run` prints it; the rest said aside.
                println!("{new}");
                eprintln!(
                    "run {id} retried as {new}: workflow {} version {} (fusion run get {new})",
                    v["workflow"].as_str().unwrap_or("?"),
                    v["version"],
                );
            }
        }
    }
    Ok(())
}

const RUN_DETAIL_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("WORKFLOW", "/workflow"),
    ("VERSION", "/version"),
    ("STATUS", "/status"),
    ("STARTED", "/started"),
    ("DURATION_MS", "/duration_ms"),
    ("INPUT", "/input"),
    ("OUTPUT", "/output"),
    ("ERROR", "/error"),
];

const TASK_COLUMNS: &[(&str, &str)] = &[
    ("TASK", "/id"),
    ("RUN", "/run"),
    ("STATUS", "/status"),
    ("STARTED", "/started"),
    ("DURATION_MS", "/duration_ms"),
    ("ATTEMPTS", "/attempts"),
    ("OUTPUT", "/output"),
    ("ERROR", "/error"),
];

pub(super) const EVENT_COLUMNS: &[(&str, &str)] = &[
    ("AT", "/at"),
    ("EVENT", "/type"),
    ("TASK", "/task"),
    ("ATTEMPT", "/attempt"),
    ("DETAIL", "/detail"),
];

/// How wide a value may be in a table cell; `-o json` shows it whole.
const CELL_WIDTH: usize = 60;

/// Whether table cells are whole (`-o wide`): set once per command.
static WIDE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Cells as `opts` asks: cut (a table) or whole (`-o wide`).
pub(super) fn cells_for(opts: &ClientOpts) {
    WIDE.store(
        opts.output == Output::Wide,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// A value as one table cell: a string as itself, anything else as compact JSON,
/// cut at `CELL_WIDTH` characters (whole with `-o wide`).
fn cell(v: &Value) -> Value {
    let text = match v {
        Value::Null => return Value::Null,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text = text.replace('\n', " ");
    if text.chars().count() > CELL_WIDTH && !WIDE.load(std::sync::atomic::Ordering::Relaxed) {
        let cut: String = text.chars().take(CELL_WIDTH - 3).collect();
        Value::String(format!("{cut}..."))
    } else {
        Value::String(text)
    }
}

/// A run in full: as the API gives it with `-o json`, else its detail and
/// a table of its tasks.
fn print_run(opts: &ClientOpts, v: &Value) {
    if opts.output == Output::Json {
        print(opts, v, RUN_COLUMNS);
    } else {
        print(opts, &run_row(v), RUN_DETAIL_COLUMNS);
        // The runs a retry links: the one it carries on, the one that
        // carried it on.
        for (what, key) in [("retry of", "retry_of"), ("retried by", "retried_by")] {
            if let Some(other) = v[key].as_str() {
                println!("{what}: {other}");
            }
        }
        println!();
        print(opts, &task_rows(&v["tasks"]), TASK_COLUMNS);
        // Every attempt of each task tried more than once.
        let retried = attempt_rows(&v["tasks"]);
        if retried.as_array().is_some_and(|r| !r.is_empty()) {
            println!();
            print(opts, &retried, ATTEMPT_COLUMNS);
        }
    }
}

const ATTEMPT_COLUMNS: &[(&str, &str)] = &[
    ("TASK", "/task"),
    ("ATTEMPT", "/attempt"),
    ("OUTCOME", "/outcome"),
    ("STARTED", "/started"),
    ("DURATION_MS", "/duration_ms"),
    ("STATUS", "/http_status"),
    ("ERROR", "/error"),
];

/// Every attempt of the tasks tried more than once, task by task: those
/// that failed and were tried again, then the last (its outcome the task's;
/// a retrying task's next one is said with its time).
fn attempt_rows(tasks: &Value) -> Value {
    let duration = |start: &Value, end: &Value| match (start.as_u64(), end.as_u64()) {
        (Some(s), Some(e)) => json!(e.saturating_sub(s)),
        _ => Value::Null,
    };
    let mut rows = Vec::new();
    for t in tasks.as_array().into_iter().flatten() {
        let failed = t["failed_attempts"].as_array().cloned().unwrap_or_default();
        if failed.is_empty() {
            continue;
        }
        for a in &failed {
            rows.push(json!({
                "task": t["id"],
                "attempt": a["attempt"],
                "outcome": "failed",
                "started": a["started_at"].as_u64().map(clock_ms),
                "duration_ms": duration(&a["started_at"], &a["ended_at"]),
                "http_status": a["http_status"],
                "error": cell(&a["error"]),
            }));
        }
        let last = t["attempts"].as_u64().unwrap_or_default();
        let tried = failed
            .last()
            .and_then(|a| a["attempt"].as_u64())
            .unwrap_or_default();
        if last > tried {
            let (outcome, ended, http, error) = match t["status"].as_str() {
                Some("retrying") => ("failed", Value::Null, Value::Null, Value::Null),
                Some(status @ ("running" | "waiting")) => {
                    (status, Value::Null, Value::Null, Value::Null)
                }
                Some(status) => (
                    status,
                    t["ended_at"].clone(),
                    t["http_status"].clone(),
                    cell(&t["error"]),
                ),
                None => ("", Value::Null, Value::Null, Value::Null),
            };
            rows.push(json!({
                "task": t["id"],
                "attempt": last,
                "outcome": outcome,
                "started": t["attempt_started_at"].as_u64().map(clock_ms),
                "duration_ms": duration(&t["attempt_started_at"], &ended),
                "http_status": http,
                "error": error,
            }));
        }
        if let Some(at) = t["retry_at"].as_u64() {
            rows.push(json!({
                "task": t["id"],
                "attempt": last + 1,
                "outcome": format!("due {} (of {})", clock_ms(at), t["max_attempts"]),
            }));
        }
    }
    Value::Array(rows)
}

/// The run's row of `run get`: its input is the body it was invoked with (the
/// headers and query are in `-o json`), its error the message and the task.
fn run_row(v: &Value) -> Value {
    let mut row = v.clone();
    row["started"] = json!(v["created_at"].as_u64().map(clock_ms));
    // The body: `body`, or `default` alone when the run is answered with a
    // large body once.
    let body = v.pointer("/input/body").or(v.pointer("/input/default"));
    let input = match body {
        Some(body) if v["input"].get("headers").is_some() => body,
        _ => &v["input"],
    };
    row["input"] = cell(input);
    row["output"] = cell(&v["output"]);
    row["error"] = error_cell(v);
    row
}

/// The tasks in the order they started (those that never did last), each with
/// its start time and duration; a callback still waiting shows where to
/// complete it.
fn task_rows(tasks: &Value) -> Value {
    let rows: Vec<Value> = in_the_order_they_ran(tasks)
        .into_iter()
        .map(|t| {
            let mut row = t.clone();
            row["output"] = cell(&t["output"]);
            if let Some(path) = t.pointer("/callback/path").and_then(Value::as_str) {
                if t["status"] == "running" {
                    row["output"] = json!(format!("waiting: POST {path}"));
                }
            }
            row["error"] = cell(&t["error"]);
            // A task left unfinished says why, as a failed one says its error.
            if let (true, Some(why)) = (t["status"] == "cancelled", t["cancel_reason"].as_str()) {
                // A task cut off between attempts keeps its last one's error too.
                row["error"] = match t["error"].as_str() {
                    Some(last) => cell(&json!(format!("{why}; its last attempt: {last}"))),
                    None => cell(&json!(why)),
                };
            }
            // A task the run never started (it ended first, or was cancelled
            // before the task's turn) is `cancelled` in the API: said as
            // what it is, as `wf runs graph` draws it (unreached).
            if t["status"] == "cancelled"
                && t["started_at"].is_null()
                && t["attempts"].as_u64().unwrap_or(0) == 0
            {
                row["status"] = json!("not run");
            }
            // A retry's task whose outcome it kept from an earlier run: not
            // run again (`-o json` names the run, `kept_from`).
            if t["kept_from"].is_string() {
                row["status"] = json!(format!("{}, kept", t["status"].as_str().unwrap_or("")));
            }
            // Calls made again after a restart are calls the function saw.
            if let Some(again) = t["repeated_after_restart"].as_u64().filter(|n| *n > 0) {
                row["attempts"] = json!(format!("{} (+{again} after a restart)", t["attempts"]));
            }
            // A stored workflow run by name: which version ran.
            if let (Some(run), Some(v)) = (t["run"].as_str(), t["workflow_version"].as_u64()) {
                row["run"] = json!(format!("{run} v{v}"));
            }
            row["started"] = json!(t["started_at"].as_u64().map(clock_ms));
            row["duration_ms"] = match (t["started_at"].as_u64(), t["ended_at"].as_u64()) {
                (Some(a), Some(b)) => json!(b.saturating_sub(a)),
                _ => Value::Null,
            };
            row
        })
        .collect();
    Value::Array(rows)
}

/// The tasks in the order they started, those that never did last. Tasks
/// started in the same millisecond (or never) come after the ones among them
/// they required (`W/4/wait` before `W/4/action`), else by id as a person
/// reads them (`do_2` before `do_10`).
fn in_the_order_they_ran(tasks: &Value) -> Vec<&Value> {
    let mut tasks: Vec<&Value> = tasks.as_array().into_iter().flatten().collect();
    tasks.sort_by_cached_key(|t| {
        (
            t["started_at"].as_u64().unwrap_or(u64::MAX),
            natural_key(t["id"].as_str().unwrap_or_default()),
        )
    });
    let mut ordered = Vec::with_capacity(tasks.len());
    for group in tasks.chunk_by(|a, b| a["started_at"] == b["started_at"]) {
        ordered.extend(required_first(group));
    }
    ordered
}

/// `group` reordered so that a task follows those of the group it requires,
/// keeping the group's order otherwise (Kahn's algorithm, the earliest ready
/// task first).
fn required_first<'a>(group: &[&'a Value]) -> Vec<&'a Value> {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    if group.len() < 2 {
        return group.to_vec();
    }
    let at: HashMap<&str, usize> = group
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((t["id"].as_str()?, i)))
        .collect();
    let mut waits_for = vec![0usize; group.len()];
    let mut dependents = vec![Vec::new(); group.len()];
    for (i, t) in group.iter().enumerate() {
        for r in t["requires"].as_array().into_iter().flatten() {
            if let Some(&j) = r.as_str().and_then(|r| at.get(r)) {
                waits_for[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..group.len())
        .filter(|&i| waits_for[i] == 0)
        .map(Reverse)
        .collect();
    let mut ordered = Vec::with_capacity(group.len());
    while let Some(Reverse(i)) = ready.pop() {
        ordered.push(group[i]);
        for &d in &dependents[i] {
            waits_for[d] -= 1;
            if waits_for[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    // A cycle (no run has one) keeps the rest, those still waiting, in the
    // group's order.
    ordered.extend(
        (0..group.len())
            .filter(|&i| waits_for[i] > 0)
            .map(|i| group[i]),
    );
    ordered
}

/// A sort key that orders the numbers in a name by value: `do_2` < `do_10`.
fn natural_key(id: &str) -> Vec<(String, u128)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut chars = id.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut digits = String::from(c);
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                digits.push(d);
            }
            key.push((
                std::mem::take(&mut text),
                digits.parse().unwrap_or(u128::MAX),
            ));
        } else {
            text.push(c);
        }
    }
    key.push((text, 0));
    key
}

/// One row per event: its time, type, task and attempt, and what else it says.
pub(super) fn event_rows(events: &Value, whole: bool) -> Value {
    const SHOWN: &[&str] = &["at", "type", "task", "attempt", "run_id"];
    let rows: Vec<Value> = events
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let detail: serde_json::Map<String, Value> = e
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| !SHOWN.contains(&k.as_str()) && !v.is_null())
                .map(|(k, v)| {
                    // Times as the AT column shows them, not epoch numbers.
                    let time =
                        matches!(k.as_str(), "due" | "wake_at" | "deadline") || k.ends_with("_at");
                    match v.as_u64().filter(|_| time) {
                        Some(ms) => (k.clone(), json!(clock_ms(ms))),
                        None => (k.clone(), v.clone()),
                    }
                })
                .collect();
            let mut row = e.clone();
            if let Some(at) = e["at"].as_u64() {
                row["at"] = json!(clock_ms(at));
            }
            row["detail"] = if detail.is_empty() {
                Value::Null
            } else if whole {
                json!(Value::Object(detail).to_string())
            } else {
                cell(&Value::Object(detail))
            };
            row
        })
        .collect();
    Value::Array(rows)
}

/// A listing's filters, kept by the command for its next page.
struct Filters<'a> {
    workflow: Option<&'a str>,
    status: Option<&'a str>,
    since: Option<u64>,
    until: Option<u64>,
}

/// A time in milliseconds as a table shows it: UTC, to the millisecond (runs
/// and events follow each other closely).
pub(super) fn clock_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || ms.to_string(),
            |t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        )
}

/// `--since`/`--until`: an RFC 3339 time, milliseconds since the epoch, or a
/// time back from now (`90s`, `30m`, `2h`, `1d`); answers milliseconds.
pub(super) fn time_arg(text: &str) -> std::result::Result<u64, String> {
    let now = jiff::Timestamp::now().as_millisecond();
    time_at(text, now)
}

fn time_at(text: &str, now_ms: i64) -> std::result::Result<u64, String> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return u64::try_from(ts.as_millisecond()).map_err(|_| format!("{t:?} is before 1970"));
    }
    let unit = t.chars().last().unwrap_or(' ');
    let per = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => 0,
    };
    match t[..t.len() - unit.len_utf8().min(t.len())].parse::<i64>() {
        Ok(n) if per > 0 && n >= 0 => Ok(u64::try_from(now_ms.saturating_sub(n.saturating_mul(per))).unwrap_or(0)),
        _ => Err(format!(
            "{t:?} is not a time: give RFC 3339 (2026-12-01T10:00:00Z), milliseconds since the epoch, or a time back from now (90s, 30m, 2h, 1d)"
        )),
    }
}

/// The command that prints the next page, with the filters of this one.
fn next_page(f: &Filters, limit: usize, cursor: &str) -> String {
    let mut cmd = String::from("fusion run list");
    // As the user may have written them (`--status "failed, cancelled"`):
    // quoted for the shell the command is pasted into.
    let quote = super::up::shell_quote;
    if let Some(w) = f.workflow {
        cmd.push_str(&format!(" --workflow {}", quote(w)));
    }
    if let Some(s) = f.status {
        cmd.push_str(&format!(" --status {}", quote(s)));
    }
    if let Some(t) = f.since {
        cmd.push_str(&format!(" --since {t}"));
    }
    if let Some(t) = f.until {
        cmd.push_str(&format!(" --until {t}"));
    }
    if limit != DEFAULT_LIMIT {
        cmd.push_str(&format!(" --limit {limit}"));
    }
    cmd.push_str(&format!(" --cursor {}", quote(cursor)));
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancelled task says why in ERROR; cut off between attempts, it keeps
    /// its last attempt's error beside the reason; never started, it is `not run`.
    #[test]
    fn a_cancelled_task_says_why_and_keeps_its_last_error() {
        let tasks = json!([
            {"id": "a", "status": "cancelled", "attempts": 1, "started_at": 1, "ended_at": 5,
             "error": "boom", "cancel_reason": "the run was cancelled"},
            {"id": "b", "status": "cancelled", "attempts": 0, "started_at": null,
             "error": null, "cancel_reason": "the run failed at task \"c\""},
        ]);
        let rows = task_rows(&tasks);
        assert_eq!(
            rows[0]["error"],
            "the run was cancelled; its last attempt: boom"
        );
        assert_eq!(rows[1]["error"], "the run failed at task \"c\"");
        assert_eq!(rows[1]["status"], "not run");
    }

    /// A retry's task kept from the run it retried says so; one it ran does not.
    #[test]
    fn a_kept_task_says_so() {
        let tasks = json!([
            {"id": "a", "status": "succeeded", "attempts": 1, "started_at": 1, "ended_at": 2,
             "kept_from": "r0"},
            {"id": "b", "status": "succeeded", "attempts": 1, "started_at": 3, "ended_at": 4,
             "kept_from": null},
        ]);
        let rows = task_rows(&tasks);
        assert_eq!(rows[0]["status"], "succeeded, kept");
        assert_eq!(rows[1]["status"], "succeeded");
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        let f = Filters {
            workflow: Some("w"),
            status: Some("failed"),
            since: Some(7),
            until: None,
        };
        assert_eq!(
            next_page(&f, 5, "c1"),
            "fusion run list --workflow w --status failed --since 7 --limit 5 --cursor c1"
        );
        let none = Filters {
            workflow: None,
            status: None,
            since: None,
            until: None,
        };
        assert_eq!(
            next_page(&none, DEFAULT_LIMIT, "c"),
            "fusion run list --cursor c"
        );
        // What the shell would split or read is quoted.
        let spaced = Filters {
            status: Some("failed, cancelled"),
            ..none
        };
        assert_eq!(
            next_page(&spaced, DEFAULT_LIMIT, "c"),
            "fusion run list --status 'failed, cancelled' --cursor c"
        );
    }

    /// Tasks started in the same millisecond are listed after the tasks
    /// among them they required, not by id: `W/4/wait` before `W/4/action`.
    #[test]
    fn tasks_started_together_follow_what_they_required() {
        let tasks = json!([
            {"id": "W/4/action", "status": "succeeded", "attempts": 1, "started_at": 7,
             "ended_at": 7, "requires": ["W/4/wait"]},
            {"id": "W/4/condition", "status": "succeeded", "attempts": 1, "started_at": 7,
             "ended_at": 7, "requires": ["W/4/action"]},
            {"id": "W/4/wait", "status": "succeeded", "attempts": 1, "started_at": 7,
             "ended_at": 7, "requires": ["W/3/condition"]},
            {"id": "W/3/condition", "status": "succeeded", "attempts": 1, "started_at": 6,
             "ended_at": 7, "requires": []},
            {"id": "A", "status": "succeeded", "attempts": 1, "started_at": 7,
             "ended_at": 8, "requires": []},
            {"id": "B", "status": "cancelled", "attempts": 0, "started_at": null,
             "requires": ["A"]},
        ]);
        let rows = task_rows(&tasks);
        let ids: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "W/3/condition",
                "A",
                "W/4/wait",
                "W/4/action",
                "W/4/condition",
                "B"
            ]
        );
    }

    #[test]
    fn ids_sort_as_a_person_reads_them() {
        let mut ids = vec!["do_10", "do_2", "do_1", "b", "a10b", "a9c", "do_100"];
        ids.sort_by_key(|id| natural_key(id));
        assert_eq!(ids, ["a9c", "a10b", "b", "do_1", "do_2", "do_10", "do_100"]);
    }

    #[test]
    fn times_are_read_as_a_user_writes_them() {
        let now = 1_796_083_200_000; // 2026-12-01T00:00:00Z
        assert_eq!(time_at("1796083200000", now), Ok(now as u64));
        assert_eq!(time_at("2026-12-01T00:00:00Z", now), Ok(now as u64));
        assert_eq!(time_at("90s", now), Ok(now as u64 - 90_000));
        assert_eq!(time_at("2h", now), Ok(now as u64 - 7_200_000));
        assert_eq!(time_at("1d", now), Ok(now as u64 - 86_400_000));
        assert!(time_at("yesterday", now)
            .unwrap_err()
            .contains("not a time"));
        assert!(time_at("", now).is_err());
        assert_eq!(clock_ms(now as u64), "2026-12-01T00:00:00.000Z");
    }

    #[test]
    fn long_cells_are_cut() {
        assert_eq!(cell(&json!({"a": 1})), json!("{\"a\":1}"));
        let long = cell(&json!("x".repeat(100)));
        assert_eq!(long.as_str().unwrap().chars().count(), CELL_WIDTH);
        assert_eq!(cell(&Value::Null), Value::Null);
    }
}
