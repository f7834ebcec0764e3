//! The message-queue trigger resource (Fission's `MessageQueueTrigger`, with
//! Fission's field names): which subject of which NATS JetStream stream feeds
//! which function or workflow, where answers and failures go, and the
//! connection settings read from its `metadata`; with their validation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use pool_manager::resources::{qualified, validate_name};
use pool_manager::{Error, Result};

use crate::invoke::Target;

/// The message queue types Fusion consumes.
pub const SUPPORTED_TYPES: &[&str] = &["nats-jetstream"];

/// Where a trigger connects when neither its metadata nor the server names a
/// NATS server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The metadata keys a `nats-jetstream` trigger reads, and those of Fission's
/// KEDA connector that Fusion accepts and does not need.
const METADATA_KEYS: &[&str] = &[
    "natsUrl",
    "natsServer",
    "stream",
    "consumer",
    "ackWait",
    "deliverPolicy",
];
const KEDA_KEYS: &[&str] = &[
    "natsServerMonitoringEndpoint",
    // Fission's jetstream connector's: the streams are found by subject here.
    "fissionConsumer",
    "errorStream",
    "responseStream",
    "account",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
];

/// At most this many retries of one message, and messages in flight.
const MAX_RETRIES: u32 = 100;
const MAX_CONCURRENCY: u32 = 1024;

fn default_namespace() -> String {
    pool_manager::secrets::DEFAULT_NAMESPACE.to_string()
}
fn default_type() -> String {
    SUPPORTED_TYPES[0].to_string()
}
fn default_content_type() -> String {
    "application/json".to_string()
}
fn one() -> u32 {
    1
}

/// A message-queue trigger: each message on `topic` becomes a call of its
/// function or workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MessageQueueTrigger {
    pub name: String,
    /// Names are unique per namespace; the target function is in the same one.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The target function (Fission's `functionref.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Or the target workflow (Fusion's extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// `nats-jetstream`.
    #[serde(default = "default_type", alias = "mqtype")]
    pub message_queue_type: String,
    /// The subject consumed (wildcards allowed).
    pub topic: String,
    /// Where a 2xx answer is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_topic: Option<String>,
    /// Where a failure is published after the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_topic: Option<String>,
    /// Retries after a failed call: `maxRetries + 1` attempts at most.
    #[serde(default)]
    pub max_retries: u32,
    /// The request's `Content-Type` when the message has no header of its own.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Messages in flight at once (Fusion's extension).
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Connection details: `natsUrl`, `stream`, `consumer`, `ackWait`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Fission's KEDA scaling fields: kept, not used (Fusion's consumer runs
    /// in the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "mqtkind")]
    pub mqt_kind: Option<String>,
}

/// How a trigger reaches NATS, from its metadata and the server's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    /// The stream named in the metadata; else the one that holds the topic.
    pub stream: Option<String>,
    /// The durable pull consumer's name.
    pub consumer: String,
    /// How long NATS waits for an ack before it redelivers (extended while a
    /// message is being handled).
    pub ack_wait: Duration,
    /// Where a new consumer starts in the stream.
    pub deliver_policy: DeliverPolicy,
    /// Which life of the trigger's name this is (a new one at each create,
    /// and at each update that starts its consumer afresh), written into the
    /// consumer's description: a consumer an earlier life left behind is
    /// told from its own. `None` for triggers stored before incarnations.
    pub incarnation: Option<String>,
}

/// Where a trigger's durable consumer starts in its stream when it is
/// created (metadata `deliverPolicy`, with NATS's names); afterwards it goes
/// on from what it acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliverPolicy {
    /// Every message the stream holds (the default).
    #[default]
    All,
    /// Only messages published after the consumer is created.
    New,
    /// The last message the stream holds on the topic, then new ones.
    Last,
    /// The last message of each subject the topic matches, then new ones.
    LastPerSubject,
}

impl DeliverPolicy {
    const NAMES: &'static [(&'static str, DeliverPolicy)] = &[
        ("all", DeliverPolicy::All),
        ("new", DeliverPolicy::New),
        ("last", DeliverPolicy::Last),
        ("last_per_subject", DeliverPolicy::LastPerSubject),
    ];

    fn parse(v: &str) -> std::result::Result<DeliverPolicy, String> {
        DeliverPolicy::NAMES
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                let names: Vec<&str> = DeliverPolicy::NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "metadata deliverPolicy {v:?} is not one of {}",
                    names.join(", ")
                )
            })
    }
}

impl MessageQueueTrigger {
    pub fn key(&self) -> String {
        qualified(&self.namespace, &self.name)
    }

    pub fn target(&self) -> Option<Target> {
        match (&self.function, &self.workflow) {
            (Some(f), None) => Some(Target::Function(qualified(&self.namespace, f))),
            (None, Some(w)) => Some(Target::Workflow(w.clone())),
            _ => None,
        }
    }

    /// The key of the function it targets, in the trigger's namespace.
    pub fn function_key(&self) -> Option<String> {
        self.function
            .as_deref()
            .map(|f| qualified(&self.namespace, f))
    }

    /// Spellings that mean the same written one way: an empty response or
    /// error topic is none (as Fission's own specs write it).
    pub fn normalize(&mut self) {
        for topic in [&mut self.resp_topic, &mut self.error_topic] {
            if topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
                *topic = None;
            }
        }
    }

    pub fn settings(&self, default_url: &str) -> Settings {
        let meta = |k: &str| self.metadata.get(k).filter(|v| !v.is_empty()).cloned();
        Settings {
            url: meta("natsUrl")
                .or_else(|| meta("natsServer"))
                .unwrap_or_else(|| default_url.to_string()),
            stream: meta("stream"),
            consumer: meta("consumer")
                .unwrap_or_else(|| format!("fusion-mqt-{}-{}", self.namespace, self.name)),
            ack_wait: meta("ackWait")
                .and_then(|v| parse_duration(&v).ok())
                .unwrap_or(Duration::from_secs(30)),
            deliver_policy: meta("deliverPolicy")
                .and_then(|v| DeliverPolicy::parse(&v).ok())
                .unwrap_or_default(),
            incarnation: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        validate_name("message queue trigger", &self.name)?;
        validate_name("namespace", &self.namespace)?;
        let invalid = |m: String| Err(Error::Invalid(format!("mqtrigger {:?}: {m}", self.name)));
        match (&self.function, &self.workflow) {
            (Some(_), Some(_)) => {
                return invalid("target either a function or a workflow, not both".into())
            }
            (None, None) => {
                return invalid(
                    "a target function (--function) or workflow (--workflow) is required".into(),
                )
            }
            _ => {}
        }
        if !SUPPORTED_TYPES.contains(&self.message_queue_type.as_str()) {
            return invalid(format!(
                "message queue type {:?} is not supported: Fusion consumes {}",
                self.message_queue_type,
                SUPPORTED_TYPES.join(", ")
            ));
        }
        check_subject("topic", &self.topic, true).or_else(&invalid)?;
        for (field, subject) in [
            ("respTopic", &self.resp_topic),
            ("errorTopic", &self.error_topic),
        ] {
            let Some(s) = subject else { continue };
            check_subject(field, s, false).or_else(&invalid)?;
            if subject_matches(&self.topic, s) {
                return invalid(format!(
                    "{field} {s:?} is within the topic it consumes ({:?}): its messages would come back to it",
                    self.topic
                ));
            }
        }
        if self.max_retries > MAX_RETRIES {
            return invalid(format!("maxRetries is at most {MAX_RETRIES}"));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return invalid(format!("concurrency is 1 to {MAX_CONCURRENCY}"));
        }
        if self.content_type.trim().is_empty()
            || http::HeaderValue::from_str(&self.content_type).is_err()
        {
            return invalid(format!(
                "contentType {:?} is not a header value",
                self.content_type
            ));
        }
        for (k, v) in &self.metadata {
            if KEDA_KEYS.contains(&k.as_str()) {
                continue;
            }
            if !METADATA_KEYS.contains(&k.as_str()) {
                return invalid(format!(
                    "unknown metadata {k:?}: a nats-jetstream trigger reads {}",
                    METADATA_KEYS.join(", ")
                ));
            }
            match k.as_str() {
                "natsUrl" | "natsServer" => check_url(v).or_else(&invalid)?,
                "stream" | "consumer" => check_jetstream_name(k, v).or_else(&invalid)?,
                "deliverPolicy" => {
                    if let Err(e) = DeliverPolicy::parse(v) {
                        return invalid(e);
                    }
                }
                "ackWait" => {
                    let d = parse_duration(v)
                        .map_err(|e| Error::Invalid(format!("mqtrigger {:?}: {e}", self.name)))?;
                    if d < Duration::from_secs(1) {
                        return invalid("metadata ackWait is at least 1s".into());
                    }
                }
                _ => {}
            }
        }
        for (field, v) in [
            ("pollingInterval", self.polling_interval),
            ("cooldownPeriod", self.cooldown_period),
            ("minReplicaCount", self.min_replica_count),
            ("maxReplicaCount", self.max_replica_count),
        ] {
            if v.is_some_and(|v| v < 0) {
                return invalid(format!("{field} must be at least 0"));
            }
        }
        Ok(())
    }
}

/// A NATS subject: dot-separated tokens without spaces; `*` and a final `>`
/// only where wildcards are allowed.
fn check_subject(field: &str, s: &str, wildcards: bool) -> Result<(), String> {
    let tokens: Vec<&str> = s.split('.').collect();
    let bad = s.is_empty()
        || s.len() > 255
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
        || tokens.iter().any(|t| t.is_empty());
    if bad {
        return Err(format!(
            "{field} {s:?} is not a NATS subject (dot-separated tokens, no spaces)"
        ));
    }
    for (i, t) in tokens.iter().enumerate() {
        let wild = *t == "*" || *t == ">";
        if wild && !wildcards {
            return Err(format!("{field} {s:?} cannot hold wildcards"));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err(format!("{field} {s:?}: '>' may only end a subject"));
        }
        if !wild && (t.contains('*') || t.contains('>')) {
            return Err(format!("{field} {s:?}: '*' and '>' are whole tokens"));
        }
    }
    Ok(())
}

/// Whether `v` is a NATS server's URL (`nats://` or `tls://`, host and port).
pub fn check_url(v: &str) -> Result<(), String> {
    let ok = ["nats://", "tls://"].iter().any(|p| v.starts_with(p))
        && !v.chars().any(char::is_whitespace)
        && v.len() > "nats://".len();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "metadata natsUrl {v:?} is not a NATS URL (nats://host:port or tls://host:port)"
        ))
    }
}

/// A stream or consumer name: no spaces, '.', '*', '>' or path separators.
fn check_jetstream_name(k: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 255
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "metadata {k} {v:?} is not a JetStream name (no spaces, '.', '*', '>', '/' or '\\')"
        ))
    }
}

/// `30s`, `2m`, or a number of seconds.
fn parse_duration(v: &str) -> std::result::Result<Duration, String> {
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|_| {
        format!("metadata ackWait {v:?} is not a duration: give seconds (30) or a duration such as 30s, 2m or 1m30s")
    })
}

/// Whether NATS subject `subject` is one that `pattern` (with `*` for one
/// token and a final `>` for one or more) subscribes to.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut want = pattern.split('.');
    let mut got = subject.split('.');
    loop {
        match (want.next(), got.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(w), Some(g)) if w == g => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_nats_subscriptions_do() {
        assert!(subject_matches("orders.new", "orders.new"));
        assert!(subject_matches("orders.*", "orders.new"));
        assert!(subject_matches("orders.>", "orders.new.eu"));
        assert!(subject_matches("*.new", "orders.new"));
        assert!(!subject_matches("orders.*", "orders.new.eu"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(!subject_matches("orders.new", "orders.done"));
        assert!(!subject_matches("orders", "orders.new"));
    }

    fn trigger() -> MessageQueueTrigger {
        serde_json::from_value(serde_json::json!({
            "name": "orders", "function": "hello", "topic": "orders.new"
        }))
        .unwrap()
    }

    #[test]
    fn fission_defaults() {
        let t = trigger();
        assert_eq!(t.message_queue_type, "nats-jetstream");
        assert_eq!(t.content_type, "application/json");
        assert_eq!(t.concurrency, 1);
        assert_eq!(t.max_retries, 0);
        t.validate().unwrap();
        let s = t.settings(DEFAULT_NATS_URL);
        assert_eq!(s.url, DEFAULT_NATS_URL);
        assert_eq!(s.stream, None);
        assert_eq!(s.consumer, "fusion-mqt-default-orders");
        assert_eq!(t.target(), Some(Target::Function("hello".into())));
    }

    #[test]
    fn other_queue_types_are_refused_naming_the_supported_one() {
        let mut t = trigger();
        t.message_queue_type = "kafka".into();
        let e = t.validate().unwrap_err().to_string();
        assert!(
            e.contains("\"kafka\" is not supported") && e.contains("nats-jetstream"),
            "{e}"
        );
    }

    #[test]
    fn subjects_are_checked() {
        assert!(check_subject("topic", "orders.*", true).is_ok());
        assert!(check_subject("topic", "orders.>", true).is_ok());
        assert!(check_subject("topic", "orders.>.x", true).is_err());
        assert!(check_subject("topic", "orders..x", true).is_err());
        assert!(check_subject("topic", "or ders", true).is_err());
        assert!(check_subject("respTopic", "orders.*", false).is_err());
        let mut t = trigger();
        t.resp_topic = Some("orders.new".into());
        assert!(t.validate().unwrap_err().to_string().contains("come back"));
    }

    #[test]
    fn metadata_is_read_and_checked() {
        let mut t = trigger();
        t.metadata
            .insert("natsUrl".into(), "nats://10.0.0.1:4222".into());
        t.metadata.insert("stream".into(), "ORDERS".into());
        t.metadata.insert("ackWait".into(), "5s".into());
        t.metadata.insert("account".into(), "$G".into());
        // Fission's jetstream example's keys are taken (and not needed).
        for key in ["fissionConsumer", "errorStream", "responseStream"] {
            t.metadata.insert(key.into(), "x".into());
        }
        t.validate().unwrap();
        let s = t.settings(DEFAULT_NATS_URL);
        assert_eq!(s.url, "nats://10.0.0.1:4222");
        assert_eq!(s.stream.as_deref(), Some("ORDERS"));
        assert_eq!(s.ack_wait, Duration::from_secs(5));
        t.metadata.insert("natsurl".into(), "x".into());
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown metadata"));
        t.metadata.remove("natsurl");
        t.metadata.insert("stream".into(), "a.b".into());
        assert!(t.validate().is_err());
    }

    #[test]
    fn the_deliver_policy_is_all_unless_the_metadata_says() {
        let mut t = trigger();
        assert_eq!(
            t.settings(DEFAULT_NATS_URL).deliver_policy,
            DeliverPolicy::All
        );
        for (v, want) in [
            ("all", DeliverPolicy::All),
            ("new", DeliverPolicy::New),
            ("last", DeliverPolicy::Last),
            ("last_per_subject", DeliverPolicy::LastPerSubject),
        ] {
            t.metadata.insert("deliverPolicy".into(), v.into());
            t.validate().unwrap();
            assert_eq!(t.settings(DEFAULT_NATS_URL).deliver_policy, want);
        }
        t.metadata.insert("deliverPolicy".into(), "latest".into());
        let e = t.validate().unwrap_err().to_string();
        assert!(
            e.contains("deliverPolicy \"latest\" is not one of all, new, last, last_per_subject"),
            "{e}"
        );
    }

    #[test]
    fn exactly_one_target() {
        let mut t = trigger();
        t.workflow = Some("w".into());
        assert!(t.validate().is_err());
        t.function = None;
        t.validate().unwrap();
        assert_eq!(t.target(), Some(Target::Workflow("w".into())));
        t.workflow = None;
        assert!(t.validate().is_err());
    }
}
