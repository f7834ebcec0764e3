//! `fusion wf`: workflows (Fission Workflows YAML), their versions, and invoking them.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::output::print;
use super::run::{event_rows, run_cmd, ListArgs, RunVerb, EVENT_COLUMNS};
use super::{with_headers, ClientOpts, Name, Output, RunId};

#[derive(Subcommand)]
pub(super) enum WfVerb {
    /// Store a workflow (version 1) from a Fission Workflows YAML file or a
    /// Fission `Workflow` document.
    Create {
        /// The name (or give it as --name NAME); without one, the document's
        /// own (`name:`, or `metadata.name` of a Fission `Workflow`).
        #[arg(value_name = "NAME", conflicts_with = "name")]
        positional: Option<String>,
        /// The name (as the positional NAME).
        #[arg(long = "name", value_name = "NAME")]
        name: Option<String>,
        /// The workflow's YAML file (`-`: the standard input).
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Let the server check it as it would store it (names looked up,
        /// warnings given), without storing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Store a new version of a workflow; runs in flight keep theirs.
    Update {
        #[command(flatten)]
        name: Name,
        /// The workflow's YAML file (`-`: the standard input).
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Let the server check it as it would store it, without storing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check workflow files offline, as Fission Workflows' `validate`: each
    /// error and warning with its line and column; exits 1 when any is
    /// invalid. Function and workflow names are not looked up (`create
    /// --dry-run` asks the server).
    Validate {
        /// The workflows' YAML (or JSON) files (`-`: the standard input).
        #[arg(value_name = "FILE", required_unless_present = "file")]
        files: Vec<PathBuf>,
        /// A file to check (as a positional FILE; repeatable), as Fission's
        /// `workflow validate -f`.
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: Vec<PathBuf>,
    },
    /// Print a workflow's YAML (the latest version, or --version N).
    Get {
        #[command(flatten)]
        name: Name,
        /// The version to print (1, 2, ...); the latest when absent.
        #[arg(long, value_name = "N")]
        version: Option<u32>,
    },
    /// Print a workflow as a Mermaid flowchart (either format), as Fission's
    /// `workflow graph`: tasks and what they require, or states and their
    /// transitions.
    Graph {
        #[command(flatten)]
        name: Name,
        /// The version to draw; the latest when absent.
        #[arg(long, value_name = "N")]
        version: Option<u32>,
    },
    /// List the workflows.
    List,
    /// List every stored version of a workflow.
    Versions {
        #[command(flatten)]
        name: Name,
    },
    /// Delete a workflow and its versions (its runs stay in the history).
    Delete {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
    },
    /// Run the workflow and print its output (or, with --async, the run id);
    /// with -o json, `{"id", "output"}` (or, with --async, the API's answer).
    Invoke {
        #[command(flatten)]
        name: Name,
        /// The input body: JSON is the input as JSON, anything else a string.
        #[arg(short = 'b', long = "body")]
        body: Option<String>,
        /// A header, as `Key: Value` (repeatable).
        #[arg(short = 'H', long = "header", value_name = "KEY: VALUE")]
        headers: Vec<String>,
        /// Do not wait for the result: print the run id (see fusion run get ID).
        #[arg(long = "async")]
        asynchronous: bool,
    },
    /// Start one run of the workflow and print its id, as Fission's `workflow run`
    /// (the run goes on in the background: see `fusion wf runs describe ID`).
    Run {
        #[command(flatten)]
        name: Name,
        /// The run's input: JSON, or @FILE holding JSON.
        #[arg(long, value_name = "JSON|@FILE")]
        input: Option<String>,
    },
    /// Runs, as Fission's `workflow runs` (the same as `fusion run ...`).
    Runs {
        #[command(subcommand)]
        verb: RunsVerb,
    },
}

/// Fission's `workflow runs` verbs, on Fusion's run history.
#[derive(Subcommand)]
pub(super) enum RunsVerb {
    /// List runs, newest first (as `fusion run list`).
    List(ListArgs),
    /// Where a run is or stopped: its status, input, output, and every task.
    Describe {
        #[command(flatten)]
        id: RunId,
    },
    /// A run's step-level history: the durable events it is folded from.
    History {
        #[command(flatten)]
        id: RunId,
        /// Each event's inputs and outputs whole (a table cuts them).
        #[arg(long)]
        io: bool,
        /// Only the events of this step: a task's name (`Shout`, inside a
        /// loop too), or a state's (RFC-0022: `charge` matches `000002-charge`),
        /// or a task's whole id.
        #[arg(long, value_name = "STATE")]
        step: Option<String>,
    },
    /// Cancel a running run.
    Cancel {
        #[command(flatten)]
        id: RunId,
    },
    /// The run's workflow as a Mermaid flowchart, each task or state
    /// coloured by what the run did: succeeded, failed, running, cancelled
    /// or never reached.
    Graph {
        #[command(flatten)]
        id: RunId,
    },
}

/// The name Fission gives an event that means the same as Fusion's: a task
/// is Fission's step.
fn fission_event_name(fusion: &str) -> &str {
    match fusion {
        "TaskDispatched" => "StepScheduled",
        "TaskSucceeded" => "StepSucceeded",
        "TaskFailed" => "StepFailed",
        other => other,
    }
}

/// A task's last id part as a step's name: a state machine step's without
/// its number (`000002-charge`: `charge`; its six digits, so a task named
/// `2024-report` stays itself).
fn shown_step(last: &str) -> &str {
    match last.split_once('-') {
        Some((seq, state)) if seq.len() == 6 && seq.bytes().all(|b| b.is_ascii_digit()) => state,
        _ => last,
    }
}

/// Whether the event of task `task` (an id such as `Each/do_0/Shout` or
/// `000003-m/0001/000002-charge`) is one of step `step`: its whole id, or the
/// name of its last part (a state machine step's without its number).
fn of_step(task: &str, step: &str) -> bool {
    let last = task.rsplit('/').next().unwrap_or(task);
    task == step || last == step || shown_step(last) == step
}

/// `workflow runs history`: the run's events under Fission's names (those
/// of one step with `step`).
async fn history(
    c: &crate::client::Client,
    opts: &ClientOpts,
    id: &str,
    io: bool,
    step: Option<&str>,
) -> Result<()> {
    super::run::cells_for(opts);
    let mut v: Value = c.get(&format!("/v1/runs/{id}/events")).await?;
    if let (Some(step), Some(events)) = (step, v["events"].as_array_mut()) {
        let mut steps = std::collections::BTreeSet::new();
        events.retain(|e| match e["task"].as_str() {
            Some(task) => {
                let last = task.rsplit('/').next().unwrap_or(task);
                steps.insert(shown_step(last).to_string());
                of_step(task, step)
            }
            None => false,
        });
        if events.is_empty() {
            let steps: Vec<String> = steps.into_iter().collect();
            bail!(
                "run {id} has no step {step:?} (its steps: {})",
                match steps.is_empty() {
                    true => "none yet".to_string(),
                    false => steps.join(", "),
                }
            );
        }
    }
    if let Some(events) = v["events"].as_array_mut() {
        for e in events {
            if let Some(t) = e["type"].as_str() {
                let named = fission_event_name(t).to_string();
                e["type"] = Value::String(named);
            }
        }
    }
    if opts.output == Output::Json {
        print(opts, &v, EVENT_COLUMNS);
    } else {
        print(
            opts,
            &event_rows(&v["events"], io || opts.output == Output::Wide),
            EVENT_COLUMNS,
        );
    }
    Ok(())
}

/// The JSON an option such as `--input` gives: JSON, or `@FILE` holding JSON.
pub(super) fn json_arg(option: &str, text: &str) -> Result<Value> {
    let data = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow!("{option}: cannot read {path}: {e}"))?,
        None => text.to_string(),
    };
    serde_json::from_str(&data).map_err(|e| {
        // serde's text ends with the place, said once here, first.
        let text = e.to_string();
        let what = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(w, _)| w);
        anyhow!(
            "{option} must be JSON (or @FILE holding JSON): line {} column {}: {what}",
            e.line(),
            e.column()
        )
    })
}

pub(super) const WF_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("VERSION", "/version"),
    ("DESCRIPTION", "/description"),
];

/// The server's warnings about a stored workflow, on stderr as
/// `file:line:column: warning: message (code)`.
fn warn(file: &std::path::Path, stored: &Value) {
    for w in stored["warnings"].as_array().into_iter().flatten() {
        eprintln!(
            "{}:{}:{}: warning: {} ({})",
            file.display(),
            w["line"],
            w["column"],
            w["message"].as_str().unwrap_or_default(),
            w["code"].as_str().unwrap_or_default()
        );
    }
}

/// A workflow file's text; `-` is the standard input (`... | fusion wf
/// validate -`), as for most tools that read a file.
pub(super) fn read_file(path: &PathBuf) -> Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| anyhow!("cannot read the standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?
    };
    // Sent as it is: the server reads its one document (a trailing `---`
    // left out) and keeps the file as written.
    Ok(engine::document::without_bom(&text).to_string())
}

/// `wf validate`: each file checked offline; problems to stderr as
/// `FILE:LINE:COLUMN: ...`, one line a valid file to stdout.
fn validate_files(files: &[PathBuf]) -> Result<()> {
    let mut invalid = 0;
    for file in files {
        let source = read_file(file)?;
        let shown = match file.as_os_str() == "-" {
            true => "<stdin>".to_string(),
            false => file.display().to_string(),
        };
        match engine::validate::check_offline(&source) {
            Ok(warnings) => {
                for w in &warnings {
                    eprintln!(
                        "{shown}:{}:{}: warning: {} ({})",
                        w.line, w.column, w.message, w.code
                    );
                }
                println!("{shown}: valid");
            }
            Err(errors) => {
                invalid += 1;
                for e in &errors {
                    eprintln!(
                        "{shown}:{}:{}: {} ({})",
                        e.line, e.column, e.message, e.code
                    );
                }
            }
        }
    }
    match invalid {
        0 => Ok(()),
        n => Err(anyhow!("{n} of {} workflow files are invalid", files.len())),
    }
}

/// Whether a workflow's document names itself (`name:`, or a Fission
/// `Workflow`'s `metadata.name`); one that does not parse is left to the
/// server, which says where it is wrong.
fn names_itself(source: &str) -> bool {
    let Ok(source) = engine::validate::workflow_text(source) else {
        return true;
    };
    let source = &*source;
    if engine::validate::precheck(source).is_err() {
        return true;
    }
    match serde_yaml::from_str::<Value>(source) {
        Ok(doc) => {
            doc.get("name").is_some_and(Value::is_string)
                || engine::sfn::run::document_name(source).is_some()
        }
        Err(_) => true,
    }
}

pub(super) use crate::spec::model::WORKFLOW_ENV;

/// Whether `fn create|update --env workflow` means Fission Workflows' deploy:
/// the server has no environment of that name (one that has is used as any).
pub(super) async fn is_fission_workflows_env(
    c: &crate::client::Client,
    opts: &ClientOpts,
    env: &str,
) -> Result<bool> {
    if env != WORKFLOW_ENV {
        return Ok(false);
    }
    let path = format!("/v1/environments/{WORKFLOW_ENV}{}", opts.ns_query());
    Ok(c.get_opt::<Value>(&path).await?.is_none())
}

/// Stores `file` as workflow `name` (a new one, or a new version of it), for
/// a function deployed to Fission Workflows' `workflow` environment; says so
/// on stderr.
pub(super) async fn store_as_function(
    c: &crate::client::Client,
    opts: &ClientOpts,
    name: &str,
    files: &[&PathBuf],
    update: bool,
) -> Result<()> {
    let [file] = files else {
        bail!(
            "a function of Fission Workflows' `{WORKFLOW_ENV}` environment is one workflow file (--src {name}.wf.yaml); Fusion stores it as workflow {name:?}"
        );
    };
    if !file.is_file() {
        bail!(
            "{} is not a file: a function of Fission Workflows' `{WORKFLOW_ENV}` environment is one workflow file (*.wf.yaml)",
            file.display()
        );
    }
    let source = read_file(file)?;
    let req = if update {
        c.request(Method::PUT, &format!("/v1/workflows/{name}"))
    } else {
        c.request(Method::POST, "/v1/workflows")
            .query(&[("name", name)])
    };
    let req = req.header("content-type", "application/yaml").body(source);
    let v = send_file(c, file, req).await?;
    warn(file, &v);
    eprintln!(
        "note: Fusion runs workflows itself (no `{WORKFLOW_ENV}` environment): {} as workflow {name:?}; see `fusion wf get {name}`, `fusion run list --workflow {name}`",
        if update { "updated" } else { "stored" }
    );
    if let Some(ns) = opts.namespace.as_deref().filter(|ns| *ns != "default") {
        eprintln!(
            "note: workflows have no namespace (-n {ns} is not kept): call it as /fission-function/{name}"
        );
    }
    stored(opts, &v, false);
    Ok(())
}

/// Sends a workflow file's document: the server's errors about it said as
/// `wf validate` says them, `FILE:LINE:COLUMN: message (code)`, one a line.
async fn send_file(
    c: &crate::client::Client,
    file: &std::path::Path,
    req: reqwest::RequestBuilder,
) -> Result<Value> {
    match c.send(req).await {
        Ok(resp) => Ok(resp.json().await?),
        Err(e) => {
            let Some(api) = e.downcast_ref::<crate::client::ApiError>() else {
                return Err(e);
            };
            if api.details.is_empty() {
                return Err(e);
            }
            let lines: Vec<String> = api
                .details
                .iter()
                .map(|d| {
                    format!(
                        "{}:{}:{}: {} ({})",
                        file.display(),
                        d["line"],
                        d["column"],
                        d["message"].as_str().unwrap_or_default(),
                        d["code"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            Err(anyhow!("{}", lines.join("\n")))
        }
    }
}

/// What `create` or `update` answered: the stored version's row, or with
/// --dry-run the version it would have been.
fn stored(opts: &ClientOpts, v: &Value, dry_run: bool) {
    if dry_run && opts.output != Output::Json {
        println!(
            "workflow {}: valid; not stored (it would be version {})",
            v["name"].as_str().unwrap_or("?"),
            v["version"]
        );
    } else {
        if v["unchanged"] == true {
            eprintln!(
                "workflow {}: unchanged (the document is version {}'s)",
                v["name"].as_str().unwrap_or("?"),
                v["version"]
            );
        }
        print(opts, v, WF_COLUMNS);
    }
}

pub(super) async fn wf_cmd(verb: WfVerb, opts: &ClientOpts) -> Result<()> {
    // What they print is for people (or Mermaid), not data: said, not ignored.
    let text_only = match &verb {
        WfVerb::Validate { .. } => Some(("wf validate", "a report")),
        WfVerb::Graph { .. } => Some(("wf graph", "a Mermaid flowchart")),
        WfVerb::Runs {
            verb: RunsVerb::Graph { .. },
        } => Some(("wf runs graph", "a Mermaid flowchart")),
        _ => None,
    };
    if let (true, Some((verb, what))) = (opts.json(), text_only) {
        bail!("{verb} prints {what}, not JSON (wf get -o json and run get -o json give the data)");
    }
    let c = opts.client()?;
    match verb {
        // Offline: the server is not asked.
        WfVerb::Validate { mut files, file } => {
            files.extend(file);
            validate_files(&files)?
        }
        WfVerb::Create {
            positional,
            name,
            file,
            dry_run,
        } => {
            let source = read_file(&file)?;
            let mut req = c.request(Method::POST, "/v1/workflows");
            match positional.or(name) {
                Some(name) => req = req.query(&[("name", &name)]),
                None if !names_itself(&source) => bail!(
                    "give the workflow's name: `fusion wf create NAME --file {}` (or a top-level `name:` in the file; `metadata.name` in a Fission `Workflow`)",
                    file.display()
                ),
                None => {}
            }
            if dry_run {
                req = req.query(&[("dry_run", "true")]);
            }
            let req = req.header("content-type", "application/yaml").body(source);
            let v = send_file(&c, &file, req).await?;
            warn(&file, &v);
            stored(opts, &v, dry_run);
        }
        WfVerb::Update {
            name,
            file,
            dry_run,
        } => {
            let name = name.get();
            let mut req = c.request(Method::PUT, &format!("/v1/workflows/{name}"));
            if dry_run {
                req = req.query(&[("dry_run", "true")]);
            }
            let req = req
                .header("content-type", "application/yaml")
                .body(read_file(&file)?);
            let v = send_file(&c, &file, req).await?;
            warn(&file, &v);
            stored(opts, &v, dry_run);
        }
        WfVerb::Graph { name, version } => {
            let name = name.get();
            let mut path = format!("/v1/workflows/{name}");
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let wf: Value = c.get(&path).await?;
            print!(
                "{}",
                super::graph::mermaid(wf["format"].as_str().unwrap_or_default(), &wf["spec"], None)
            );
        }
        WfVerb::Get { name, version } => {
            let name = name.get();
            let mut path = format!("/v1/workflows/{name}");
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let v: Value = c.get(&path).await?;
            if opts.output == Output::Json {
                print(opts, &v, WF_COLUMNS);
            } else {
                // Which version, said beside the document: `wf get W > f`
                // is the stored source, to edit and `wf update` again.
                eprintln!("# {name} version {}", v["version"]);
                print!("{}", v["source"].as_str().unwrap_or_default());
            }
        }
        WfVerb::List => {
            let v: Value = c.get("/v1/workflows").await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Versions { name } => {
            let name = name.get();
            let v: Value = c.get(&format!("/v1/workflows/{name}/versions")).await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Delete { name, missing } => {
            let name = name.get();
            let gone = c.delete(&format!("/v1/workflows/{name}")).await;
            if gone.is_ok() {
                super::output::deleted(opts, "workflow", None, &name);
            }
            missing.apply(opts, gone)?;
        }
        WfVerb::Invoke {
            name,
            body,
            headers,
            asynchronous,
        } => {
            let name = name.get();
            let mut req = c.request(Method::POST, &format!("/v1/workflows/{name}/invoke"));
            req = with_headers(req, &headers)?;
            if asynchronous {
                req = req.header("X-Async", "true");
            }
            if let Some(b) = body {
                let typed = headers
                    .iter()
                    .any(|h| h.to_ascii_lowercase().starts_with("content-type:"));
                if !typed {
                    let json = serde_json::from_str::<Value>(&b).is_ok();
                    let content_type = if json {
                        "application/json"
                    } else {
                        "text/plain"
                    };
                    req = req.header("content-type", content_type);
                }
                req = req.body(b);
            }
            let resp = c.send(req).await?;
            let run = resp
                .headers()
                .get("x-fusion-run-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let json_answer = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.contains("json"));
            let no_content = resp.status() == reqwest::StatusCode::NO_CONTENT;
            let body = resp.bytes().await?;
            if !asynchronous && opts.output == Output::Json {
                // The run and its output as the run's record has it: a JSON
                // answer as it is, none (204) as null, text as a string,
                // other bytes as `{"$bytes": "<base64>"}`.
                let output = if no_content {
                    Value::Null
                } else if let Some(v) = json_answer
                    .then(|| serde_json::from_slice::<Value>(&body).ok())
                    .flatten()
                {
                    v
                } else {
                    match std::str::from_utf8(&body) {
                        Ok(text) => Value::String(text.to_string()),
                        Err(_) => {
                            use base64::Engine as _;
                            let b64 = base64::engine::general_purpose::STANDARD.encode(&body);
                            serde_json::json!({ "$bytes": b64 })
                        }
                    }
                };
                println!("{}", serde_json::json!({"id": run, "output": output}));
                return Ok(());
            }
            let text = String::from_utf8_lossy(&body).into_owned();
            if asynchronous && opts.output != Output::Json {
                // Just the id, for `ID=$(fusion wf invoke NAME --async)`.
                let id = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                    .or(run)
                    .ok_or_else(|| anyhow!("the API did not answer with a run id: {text}"))?;
                println!("{id}");
                return Ok(());
            }
            if std::str::from_utf8(&body).is_ok() {
                print!("{text}");
                if !text.is_empty() && !text.ends_with('\n') {
                    println!();
                }
            } else {
                // Bytes as they came (a newline would be one more byte).
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                out.write_all(&body)?;
                out.flush()?;
            }
            if let Some(id) = run {
                eprintln!("run {id}");
            }
        }
        WfVerb::Run { name, input } => {
            let name = name.get();
            let input = match input {
                Some(text) => json_arg("--input", &text)?,
                None => Value::Null,
            };
            let req = c
                .request(Method::POST, &format!("/v1/workflows/{name}/invoke"))
                .header("X-Async", "true")
                .json(&input);
            let answer: Value = c.send(req).await?.json().await?;
            let id = answer["id"]
                .as_str()
                .ok_or_else(|| anyhow!("the API did not answer with a run id: {answer}"))?;
            if opts.output == Output::Json {
                println!("{answer}");
            } else {
                // Just the id, for `ID=$(fusion wf run NAME)`; the rest said aside.
                println!("{id}");
                eprintln!("workflow {name}: run started (fusion run get {id})");
            }
        }
        WfVerb::Runs { verb } => {
            let verb = match verb {
                RunsVerb::List(args) => RunVerb::List(args),
                RunsVerb::Describe { id } => RunVerb::Get { id },
                RunsVerb::History { id, io, step } => {
                    return history(&c, opts, &id.get(), io, step.as_deref()).await
                }
                RunsVerb::Cancel { id } => RunVerb::Cancel { id, reason: None },
                RunsVerb::Graph { id } => {
                    let id = id.get();
                    let run: Value = c.get(&format!("/v1/runs/{id}")).await?;
                    // The version the run runs, from the run itself (also
                    // once the workflow was changed or deleted).
                    let wf: Value = c.get(&format!("/v1/runs/{id}/workflow")).await?;
                    let format = wf["format"].as_str().unwrap_or_default();
                    let statuses = super::graph::run_statuses(format, &run);
                    print!(
                        "{}",
                        super::graph::mermaid(format, &wf["spec"], Some(&statuses))
                    );
                    return Ok(());
                }
            };
            return run_cmd(verb, opts).await;
        }
    }
    Ok(())
}
