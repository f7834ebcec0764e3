//! `fusion canary-config` (alias `canary`, as Fission's): canary releases, a
//! route's requests moved step by step from an old function to a new one
//! while the new one's failures stay under a threshold.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::Collection;
use super::{ClientOpts, Name};

/// A canary's settings, with Fission's flag names.
#[derive(Args)]
pub(super) struct CanaryFields {
    /// The function the requests move to.
    #[arg(long = "newfunction", alias = "new-function", value_name = "FUNCTION")]
    new_function: Option<String>,
    /// The function they move from.
    #[arg(long = "oldfunction", alias = "old-function", value_name = "FUNCTION")]
    old_function: Option<String>,
    /// The route whose weights move: it shares its requests between the two
    /// (`route create --function OLD --weight 100 --function NEW --weight 0`).
    #[arg(long = "httptrigger", alias = "route", value_name = "ROUTE")]
    trigger: Option<String>,
    /// Points of the hundred moved to the new function at each step [default: 20].
    #[arg(long = "increment-step", value_name = "PERCENT")]
    increment: Option<u32>,
    /// How long each step lasts: `30s`, `2m`, `1h` [default: 2m].
    #[arg(long = "increment-interval", value_name = "DURATION")]
    interval: Option<String>,
    /// The new function's failures in a step, in percent of its calls, past
    /// which every request goes back to the old function [default: 10].
    #[arg(long = "failure-threshold", value_name = "PERCENT")]
    threshold: Option<u32>,
    /// What a failure is: `status-code` (a 5xx answer), the one type.
    #[arg(long = "failure-type", value_name = "TYPE")]
    failure_type: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum CanaryVerb {
    /// Start a canary release: the route's requests move to the new function
    /// a step at a time, or all back to the old one past the failure threshold.
    Create {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: CanaryFields,
    },
    /// Show a canary: where it stands, the new function's share and its
    /// last failure rate.
    Get {
        #[command(flatten)]
        name: Name,
    },
    /// List the canaries.
    List {
        #[command(flatten)]
        scope: super::AllNamespaces,
    },
    /// Change a canary; it starts again from the route's weights as they are.
    Update {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: CanaryFields,
    },
    /// Delete a canary (the route keeps its weights as they are).
    Delete {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
    },
}

pub(super) const CANARIES: Collection = Collection {
    path: "/v1/canaries",
    noun: "canary",
    columns: &[
        ("NAME", "/name"),
        ("ROUTE", "/trigger"),
        ("NEW", "/new_function"),
        ("OLD", "/old_function"),
        ("STEP", "/weight_increment"),
        ("EVERY", "/weight_increment_duration"),
        ("THRESHOLD", "/failure_threshold"),
        ("STATUS", "/status/status"),
        ("NEW_WEIGHT", "/status/new_weight"),
        ("FAILURES_%", "/status/failure_percent"),
        ("MESSAGE", "/status/message"),
    ],
};

fn merge(body: &mut Value, f: CanaryFields) {
    let mut set = |field: &str, v: Option<Value>| {
        if let Some(v) = v {
            body[field] = v;
        }
    };
    set("new_function", f.new_function.map(|v| json!(v)));
    set("old_function", f.old_function.map(|v| json!(v)));
    set("trigger", f.trigger.map(|v| json!(v)));
    set("weight_increment", f.increment.map(|v| json!(v)));
    set("weight_increment_duration", f.interval.map(|v| json!(v)));
    set("failure_threshold", f.threshold.map(|v| json!(v)));
    set("failure_type", f.failure_type.map(|v| json!(v)));
}

pub(super) async fn canary_cmd(verb: CanaryVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        CanaryVerb::Create { name, fields } => {
            for (given, flag) in [
                (fields.new_function.is_some(), "--newfunction"),
                (fields.old_function.is_some(), "--oldfunction"),
                (fields.trigger.is_some(), "--httptrigger"),
            ] {
                if !given {
                    anyhow::bail!(
                        "{flag} is required: a canary names the route (--httptrigger) and its new and old functions"
                    );
                }
            }
            let mut body = json!({"name": name.get()});
            merge(&mut body, fields);
            CANARIES.create(&c, opts, &body).await
        }
        CanaryVerb::Get { name } => CANARIES.show(&c, opts, &name.get()).await,
        CanaryVerb::List { scope } => CANARIES.list(&c, opts, &scope).await,
        CanaryVerb::Update { name, fields } => {
            let name = name.get();
            let mut body = CANARIES.current(&c, opts, &name).await?;
            body.as_object_mut().map(|o| o.remove("status"));
            merge(&mut body, fields);
            CANARIES.replace(&c, opts, &name, &body).await
        }
        CanaryVerb::Delete { name, missing } => {
            missing.apply(opts, CANARIES.delete(&c, opts, &name.get()).await)
        }
    }
}
