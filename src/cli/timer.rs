//! `fusion timer` (aliases `timetrigger`, `tt`, as Fission's): time triggers,
//! cron schedules that call a function or start a workflow, and their history.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::{print, Collection};
use super::{ClientOpts, Name, SpecOpt};
use crate::spec::{model::Kind, save};

#[derive(Args)]
pub(super) struct TimerFields {
    /// The schedule: `*/5 * * * *`, with seconds first `*/10 * * * * *`, a
    /// descriptor (`@hourly`, `@daily`, ...) or `@every 1h30m`.
    #[arg(long, value_name = "CRON")]
    cron: Option<String>,
    /// The target function (in the trigger's namespace).
    #[arg(long, value_name = "FUNCTION")]
    function: Option<String>,
    /// Or the target workflow (started in the background; the run's id is in
    /// the history).
    #[arg(long, conflicts_with = "function", value_name = "WORKFLOW")]
    workflow: Option<String>,
    /// The IANA time zone the cron is in (`Europe/Paris`); UTC by default
    /// (`--timezone ""` on update takes it away).
    #[arg(long, value_name = "ZONE")]
    timezone: Option<String>,
    /// The method of the request the function gets [default: POST].
    #[arg(long, value_name = "METHOD")]
    method: Option<String>,
    /// The path the function sees [default: /].
    #[arg(long, value_name = "PATH")]
    subpath: Option<String>,
}

/// A time trigger's name for `create`, where it may be left out (a random one
/// is made, as Fission does).
#[derive(Args)]
pub(super) struct OptionalName {
    /// The trigger's name.
    #[arg(value_name = "NAME")]
    positional: Option<String>,
    /// The trigger's name (as the positional NAME).
    #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
    name: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum TimerVerb {
    /// Create a time trigger: a cron schedule that calls a function or starts
    /// a workflow.
    Create {
        #[command(flatten)]
        name: OptionalName,
        #[command(flatten)]
        fields: TimerFields,
        #[command(flatten)]
        spec: SpecOpt,
    },
    /// Show a time trigger, with the next tick it fires for.
    Get {
        #[command(flatten)]
        name: Name,
    },
    /// List the time triggers.
    List {
        #[command(flatten)]
        scope: super::AllNamespaces,
    },
    /// Change a time trigger; the flags given replace those fields only.
    Update {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: TimerFields,
    },
    /// Delete a time trigger (and its history).
    Delete {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
    },
    /// A trigger's last firings, newest first: the tick, the outcome, the
    /// target's status, the workflow run started, the error.
    History {
        #[command(flatten)]
        name: Name,
        /// How many firings (100 are kept per trigger).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The next times a cron fires, read here without a server (Fission's
    /// `showschedule`).
    #[command(alias = "show")]
    Showschedule {
        /// The schedule, as for `create`.
        #[arg(long, value_name = "CRON")]
        cron: String,
        /// The IANA time zone the cron is in; UTC by default.
        #[arg(long, value_name = "ZONE")]
        timezone: Option<String>,
        /// How many times to show.
        #[arg(long, default_value_t = 1)]
        round: usize,
    },
}

pub(super) const TIMERS: Collection = Collection {
    path: "/v1/timers",
    noun: "time trigger",
    columns: &[
        ("NAME", "/name"),
        ("CRON", "/cron"),
        ("TIMEZONE", "/timezone"),
        ("FUNCTION", "/function"),
        ("WORKFLOW", "/workflow"),
        ("METHOD", "/method"),
        ("SUBPATH", "/subpath"),
        ("NEXT", "/status/next"),
    ],
};

const HISTORY_COLUMNS: &[(&str, &str)] = &[
    ("TICK", "/tick"),
    ("OUTCOME", "/outcome"),
    ("STATUS", "/status"),
    ("MS", "/duration_ms"),
    ("RUN", "/run_id"),
    ("ERROR", "/error"),
];

fn merge(body: &mut Value, f: TimerFields) {
    let set = |body: &mut Value, field: &str, v: Option<String>| {
        if let Some(v) = v {
            body[field] = json!(v);
        }
    };
    set(body, "cron", f.cron);
    // `--timezone ""` takes the zone away (back to UTC, or the cron's prefix).
    match f.timezone {
        Some(tz) if tz.is_empty() => {
            body.as_object_mut().map(|o| o.remove("timezone"));
        }
        tz => set(body, "timezone", tz),
    }
    set(body, "method", f.method.map(|m| m.to_uppercase()));
    set(body, "subpath", f.subpath);
    if let Some(fun) = f.function {
        body["function"] = json!(fun);
        body.as_object_mut().map(|o| o.remove("workflow"));
    }
    if let Some(w) = f.workflow {
        body["workflow"] = json!(w);
        body.as_object_mut().map(|o| o.remove("function"));
    }
}

pub(super) async fn timer_cmd(verb: TimerVerb, opts: &ClientOpts) -> Result<()> {
    if let TimerVerb::Showschedule {
        cron,
        timezone,
        round,
    } = &verb
    {
        let schedule = triggers::timer::Schedule::parse(cron, timezone.as_deref())?;
        let now = jiff::Timestamp::now();
        let mut next = Vec::new();
        let mut t = now;
        while next.len() < *round {
            let Some(n) = schedule.next_after(t) else {
                break;
            };
            next.push(n);
            t = n;
        }
        if opts.json() {
            let v = json!({
                "current": now.to_string(),
                "next": next.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!("Current time: \t{now}");
        for (i, n) in next.iter().enumerate() {
            println!("Next {} invocation: \t{n}", i + 1);
        }
        return Ok(());
    }
    let c = opts.client()?;
    match verb {
        TimerVerb::Showschedule { .. } => Ok(()),
        TimerVerb::Create { name, fields, spec } => {
            if fields.cron.is_none() {
                anyhow::bail!(
                    "--cron is required: a schedule like '*/5 * * * *', '0 30 * * * *', '@every 1h30m' or '@hourly'"
                );
            }
            if fields.function.is_none() && fields.workflow.is_none() {
                anyhow::bail!("--function FUNCTION or --workflow WORKFLOW is required");
            }
            let name = name
                .positional
                .or(name.name)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let mut body = json!({"name": name});
            merge(&mut body, fields);
            if let Some(target) = spec.target() {
                let doc = save::resource(Kind::TimeTrigger, opts.ns(), &body)?;
                return save::save(&target, &format!("timetrigger-{name}.yaml"), &[doc]);
            }
            TIMERS.create_trigger(&c, opts, &body, "time trigger").await
        }
        TimerVerb::Get { name } => TIMERS.show(&c, opts, &name.get()).await,
        TimerVerb::List { scope } => TIMERS.list(&c, opts, &scope).await,
        TimerVerb::Update { name, fields } => {
            let name = name.get();
            let mut body = TIMERS.current(&c, opts, &name).await?;
            body.as_object_mut().map(|o| o.remove("status"));
            merge(&mut body, fields);
            TIMERS
                .replace_trigger(&c, opts, &name, &body, "time trigger")
                .await
        }
        TimerVerb::Delete { name, missing } => {
            missing.apply(opts, TIMERS.delete(&c, opts, &name.get()).await)
        }
        TimerVerb::History { name, limit } => {
            let item = TIMERS.item(opts, &name.get());
            let (path, query) = item.split_once('?').unwrap_or((&item, ""));
            let sep = if query.is_empty() { "" } else { "&" };
            let v: Value = c
                .get(&format!("{path}/history?{query}{sep}limit={limit}"))
                .await?;
            if opts.json() {
                print(opts, &v, HISTORY_COLUMNS);
                return Ok(());
            }
            // A workflow's firing succeeded in starting its run, whatever the
            // run then did: say so, and where to look.
            let mut rows = v;
            for row in rows.as_array_mut().into_iter().flatten() {
                if row["run_id"].is_string() && row["outcome"] == "succeeded" {
                    row["outcome"] = json!("run started");
                }
            }
            print(opts, &rows, HISTORY_COLUMNS);
            if rows
                .as_array()
                .is_some_and(|r| r.iter().any(|row| row["run_id"].is_string()))
            {
                println!("(a run's own outcome: `fusion run get RUN`)");
            }
            Ok(())
        }
    }
}
