//! The time trigger resource (Fission's `TimeTrigger`): a cron schedule, a
//! target function or workflow, and the request it is called with; and one
//! firing of it as the history keeps it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use pool_manager::resources::{qualified, validate_name};
use pool_manager::{Error, Result};

use super::schedule::Schedule;

fn default_namespace() -> String {
    pool_manager::secrets::DEFAULT_NAMESPACE.to_string()
}
fn default_method() -> String {
    "POST".into()
}
fn default_subpath() -> String {
    "/".into()
}

/// A time trigger: calls a function or starts a workflow on a cron schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeTrigger {
    pub name: String,
    /// Names are unique per namespace (`default` unless given); the target
    /// function is in the same namespace (a workflow is in `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `*/5 * * * *`, with an optional leading seconds field, a descriptor
    /// (`@hourly`) or `@every 1h30m`, as Fission's timer reads it.
    pub cron: String,
    /// An IANA time zone the cron's fields are in (UTC when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The method of the request the function gets (Fission's default, POST).
    #[serde(default = "default_method")]
    pub method: String,
    /// The path the function sees (Fission's `subpath`, `/` by default).
    #[serde(default = "default_subpath")]
    pub subpath: String,
}

impl TimeTrigger {
    pub fn key(&self) -> String {
        qualified(&self.namespace, &self.name)
    }

    /// The key of the function it targets, in the trigger's namespace.
    pub fn function_key(&self) -> Option<String> {
        self.function
            .as_deref()
            .map(|f| qualified(&self.namespace, f))
    }

    /// Checks every field; answers the parsed schedule.
    pub fn validate(&self) -> Result<Schedule> {
        validate_name("time trigger", &self.name)?;
        validate_name("namespace", &self.namespace)?;
        match (&self.function, &self.workflow) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "time trigger: target either a function or a workflow, not both".into(),
                ))
            }
            (None, None) => return Err(Error::Invalid(
                "time trigger: a target function (--function) or workflow (--workflow) is required"
                    .into(),
            )),
            (Some(f), None) => validate_name("function", f)?,
            (None, Some(w)) => validate_name("workflow", w)?,
        }
        if !matches!(
            self.method.as_str(),
            "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS"
        ) {
            return Err(Error::Invalid(format!(
                "time trigger: field \"method\": unknown method {:?}: use GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS",
                self.method
            )));
        }
        if !self.subpath.starts_with('/') {
            return Err(Error::Invalid(format!(
                "time trigger: field \"subpath\": {:?} is not a path starting with '/'",
                self.subpath
            )));
        }
        if self.subpath.parse::<http::Uri>().is_err() || self.subpath.contains('#') {
            return Err(Error::Invalid(format!(
                "time trigger: field \"subpath\": {:?} is not a URL path: percent-encode a space, '#' or other such characters (%20, %23)",
                self.subpath
            )));
        }
        Schedule::parse(&self.cron, self.timezone.as_deref()).map_err(|e| {
            let field = match e {
                super::schedule::ScheduleError::TimeZone(_) => "timezone",
                _ => "cron",
            };
            Error::Invalid(format!("time trigger: field {field:?}: {e}"))
        })
    }
}

/// How a firing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Called, no answer yet.
    Running,
    /// The function answered 2xx, or the workflow's run was started.
    Succeeded,
    /// A non-2xx answer, or the call could not be made.
    Failed,
    /// The server stopped while the call was in flight: it may or may not have
    /// reached the target, and is not repeated.
    Interrupted,
}

/// One firing of a trigger: which tick, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    /// The scheduled time it fired for.
    pub tick: Timestamp,
    /// When the target was called.
    pub started_at: Timestamp,
    pub outcome: Outcome,
    /// The target's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed: the start of the answer's body, or the call's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The run a workflow target started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(json: serde_json::Value) -> TimeTrigger {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_are_fissions_and_each_bad_field_is_named() {
        let t = trigger(serde_json::json!({"name": "t", "cron": "@hourly", "function": "f"}));
        assert_eq!(
            (t.namespace.as_str(), t.method.as_str(), t.subpath.as_str()),
            ("default", "POST", "/")
        );
        assert!(t.validate().is_ok());
        let err = |v: serde_json::Value| trigger(v).validate().unwrap_err().to_string();
        let e = err(serde_json::json!({"name": "t", "cron": "* *", "function": "f"}));
        assert!(
            e.starts_with("time trigger: field \"cron\": cron \"* *\" is not valid"),
            "{e}"
        );
        let e = err(
            serde_json::json!({"name": "t", "cron": "@hourly", "function": "f", "timezone": "Nowhere"}),
        );
        assert!(e.starts_with("time trigger: field \"timezone\""), "{e}");
        let e = err(serde_json::json!({"name": "t", "cron": "@hourly"}));
        assert!(e.contains("--function"), "{e}");
        let e = err(
            serde_json::json!({"name": "t", "cron": "@hourly", "function": "f", "workflow": "w"}),
        );
        assert!(e.contains("not both"), "{e}");
        let e = err(
            serde_json::json!({"name": "t", "cron": "@hourly", "function": "f", "method": "FETCH"}),
        );
        assert!(e.contains("field \"method\""), "{e}");
        let e = err(
            serde_json::json!({"name": "t", "cron": "@hourly", "function": "f", "subpath": "x"}),
        );
        assert!(e.contains("field \"subpath\""), "{e}");
        let e = err(
            serde_json::json!({"name": "t", "cron": "@hourly", "function": "f", "subpath": "/a b#c"}),
        );
        assert!(e.contains("percent-encode"), "{e}");
        let e = err(serde_json::json!({"name": "T", "cron": "@hourly", "function": "f"}));
        assert!(e.contains("DNS-1123"), "{e}");
    }
}
