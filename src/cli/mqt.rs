//! `fusion mqt` (alias `mqtrigger`): message-queue triggers, NATS JetStream
//! subjects to functions and workflows, with Fission's flags.

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::Collection;
use super::{ClientOpts, Name, SpecOpt};
use crate::spec::{model::Kind, save};

#[derive(Args)]
pub(super) struct MqtFields {
    /// The target function.
    #[arg(long, value_name = "FUNCTION")]
    function: Option<String>,
    /// Or the target workflow.
    #[arg(long, conflicts_with = "function", value_name = "WORKFLOW")]
    workflow: Option<String>,
    /// The message queue type: nats-jetstream (the one Fusion consumes).
    #[arg(long, value_name = "TYPE")]
    mqtype: Option<String>,
    /// The subject it consumes (wildcards allowed); a JetStream stream must hold it.
    #[arg(long, value_name = "SUBJECT")]
    topic: Option<String>,
    /// Where a 2xx answer is published ('' to publish it nowhere).
    #[arg(long, value_name = "SUBJECT")]
    resptopic: Option<String>,
    /// Where a failure is published after the last attempt ('' for nowhere).
    #[arg(long, value_name = "SUBJECT")]
    errortopic: Option<String>,
    /// Retries after a failed call (with backoff): maxretries + 1 attempts.
    #[arg(long, value_name = "N")]
    maxretries: Option<u32>,
    /// The request's Content-Type when a message has none (default application/json).
    #[arg(long, short = 'c', value_name = "TYPE")]
    contenttype: Option<String>,
    /// Messages handled at once (default 1).
    #[arg(long, value_name = "C")]
    concurrency: Option<u32>,
    /// Connection details, repeatable: natsUrl=nats://HOST:PORT, stream=NAME,
    /// consumer=NAME, ackWait=30s, deliverPolicy=all|new|last|last_per_subject.
    /// `KEY=` removes one (update).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Fission's KEDA fields, kept with the trigger (Fusion consumes in the server).
    #[arg(long, value_name = "SECONDS", hide = true)]
    pollinginterval: Option<i64>,
    #[arg(long, value_name = "SECONDS", hide = true)]
    cooldownperiod: Option<i64>,
    #[arg(long, value_name = "N", hide = true)]
    minreplicacount: Option<i64>,
    #[arg(long, value_name = "N", hide = true)]
    maxreplicacount: Option<i64>,
    /// Fission's secret of the queue's credentials: kept with the trigger,
    /// not used (said on stderr): the trigger connects to its `natsUrl`
    /// metadata, or the server's --nats-url.
    #[arg(long, value_name = "NAME")]
    secret: Option<String>,
    #[arg(long, value_name = "KIND", hide = true)]
    mqtkind: Option<String>,
}

/// A trigger's name for `create`, where it may be left out.
#[derive(Args)]
pub(super) struct OptionalName {
    /// The trigger's name; made from the topic when absent (`orders.new` ->
    /// `orders-new`).
    #[arg(value_name = "NAME")]
    positional: Option<String>,
    /// The trigger's name (as the positional NAME).
    #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
    name: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum MqtVerb {
    /// Create a message-queue trigger: each message on a NATS JetStream
    /// subject calls a function or a workflow.
    Create {
        #[command(flatten)]
        name: OptionalName,
        #[command(flatten)]
        fields: MqtFields,
        #[command(flatten)]
        spec: SpecOpt,
    },
    /// Show a trigger and its status (running, or the error that stops it).
    Get {
        #[command(flatten)]
        name: Name,
    },
    /// List the triggers.
    List {
        /// Only the triggers of this message queue type (Fission's flag).
        #[arg(long, value_name = "TYPE")]
        mqtype: Option<String>,
        #[command(flatten)]
        scope: super::AllNamespaces,
    },
    /// Change a trigger; the flags given replace those fields only.
    Update {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: MqtFields,
    },
    /// Delete a trigger (and its durable consumer on NATS).
    Delete {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
    },
}

pub(super) const MQTRIGGERS: Collection = Collection {
    path: "/v1/mqtriggers",
    noun: "mqtrigger",
    columns: &[
        ("NAME", "/name"),
        ("TOPIC", "/topic"),
        ("FUNCTION", "/function"),
        ("WORKFLOW", "/workflow"),
        ("RESPTOPIC", "/respTopic"),
        ("ERRORTOPIC", "/errorTopic"),
        ("RETRIES", "/maxRetries"),
        ("STATE", "/status/state"),
        ("MESSAGE", "/status/message"),
    ],
};

fn merge(body: &mut Value, f: MqtFields) -> Result<()> {
    if f.secret.as_deref().is_some_and(|s| !s.is_empty()) {
        eprintln!("warning: --secret is not applied: Fusion does not read the queue's credentials from a secret; the trigger connects to its natsUrl metadata (--metadata natsUrl=...), else the server's --nats-url");
    }
    let mut set = |k: &str, v: Value| body[k] = v;
    if let Some(fun) = f.function {
        set("function", json!(fun));
        body.as_object_mut().map(|o| o.remove("workflow"));
    }
    if let Some(w) = f.workflow {
        body["workflow"] = json!(w);
        body.as_object_mut().map(|o| o.remove("function"));
    }
    let fields = [
        ("messageQueueType", f.mqtype.map(Value::from)),
        ("topic", f.topic.map(Value::from)),
        ("respTopic", f.resptopic.map(Value::from)),
        ("errorTopic", f.errortopic.map(Value::from)),
        ("maxRetries", f.maxretries.map(Value::from)),
        ("contentType", f.contenttype.map(Value::from)),
        ("concurrency", f.concurrency.map(Value::from)),
        ("pollingInterval", f.pollinginterval.map(Value::from)),
        ("cooldownPeriod", f.cooldownperiod.map(Value::from)),
        ("minReplicaCount", f.minreplicacount.map(Value::from)),
        ("maxReplicaCount", f.maxreplicacount.map(Value::from)),
        ("secret", f.secret.map(Value::from)),
        ("mqtkind", f.mqtkind.map(Value::from)),
    ];
    for (k, v) in fields {
        match v {
            // An empty subject (or secret) unsets it: `--resptopic ''`.
            Some(Value::String(s)) if s.is_empty() => {
                body.as_object_mut().map(|o| o.remove(k));
            }
            Some(v) => body[k] = v,
            None => {}
        }
    }
    for kv in f.metadata {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--metadata {kv:?}: give KEY=VALUE");
        };
        if !body.get("metadata").is_some_and(Value::is_object) {
            body["metadata"] = json!({});
        }
        let meta = body["metadata"]
            .as_object_mut()
            .ok_or_else(|| anyhow!("metadata is not an object"))?;
        if v.is_empty() {
            meta.remove(k);
        } else {
            meta.insert(k.to_string(), json!(v));
        }
    }
    Ok(())
}

pub(super) async fn mqt_cmd(verb: MqtVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        MqtVerb::Create { name, fields, spec } => {
            let topic = fields
                .topic
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| anyhow!("--topic SUBJECT is required (it cannot be empty)"))?;
            if fields.function.is_none() && fields.workflow.is_none() {
                bail!("--function FUNCTION or --workflow WORKFLOW is required");
            }
            let target = spec.target();
            let name = match name.positional.or(name.name) {
                Some(name) => name,
                None => {
                    let base = super::route::route_name(&topic);
                    let spec = target.as_ref().map(|t| (t, "mqtrigger"));
                    super::route::free_name(&c, opts, &MQTRIGGERS, base, spec).await?
                }
            };
            let mut body = json!({"name": name});
            merge(&mut body, fields)?;
            if let Some(target) = target {
                let doc = save::resource(Kind::MessageQueueTrigger, opts.ns(), &body)?;
                return save::save(&target, &format!("mqtrigger-{name}.yaml"), &[doc]);
            }
            MQTRIGGERS.create(&c, opts, &body).await
        }
        MqtVerb::Get { name } => MQTRIGGERS.show(&c, opts, &name.get()).await,
        MqtVerb::List { mqtype, scope } => {
            MQTRIGGERS
                .list_where(&c, opts, &scope, |t| {
                    mqtype
                        .as_deref()
                        .is_none_or(|want| t["messageQueueType"] == want)
                })
                .await
        }
        MqtVerb::Update { name, fields } => {
            let name = name.get();
            let mut body = MQTRIGGERS.current(&c, opts, &name).await?;
            merge(&mut body, fields)?;
            MQTRIGGERS.replace(&c, opts, &name, &body).await
        }
        MqtVerb::Delete { name, missing } => {
            missing.apply(opts, MQTRIGGERS.delete(&c, opts, &name.get()).await)
        }
    }
}
