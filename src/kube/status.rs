//! A custom resource's status as the controller writes it: a `Ready`
//! condition (True, or False with why: `Invalid`, `Pending`, `Failed`) and
//! `observedGeneration`, computed here without I/O so that a status that would
//! not change is not written again.

use serde_json::{json, Value};

/// What the `Ready` condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub ready: bool,
    /// `Applied`, `Invalid`, `Pending` or `Failed`.
    pub reason: &'static str,
    pub message: String,
}

impl Ready {
    pub fn applied(message: String) -> Ready {
        Ready {
            ready: true,
            reason: "Applied",
            message,
        }
    }
    pub fn not(reason: &'static str, message: String) -> Ready {
        Ready {
            ready: false,
            reason,
            message,
        }
    }
}

/// The `status` to merge into the object, or `None` when it already says
/// this. `current` is the object's status, `now` the time of a transition
/// (RFC 3339).
pub fn next(
    current: Option<&Value>,
    generation: Option<i64>,
    ready: &Ready,
    now: &str,
) -> Option<Value> {
    let status = if ready.ready { "True" } else { "False" };
    let empty = Vec::new();
    let conditions = current
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let old = conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let same = |field: &str, want: &Value| old.and_then(|c| c.get(field)) == Some(want);
    let observed = current.and_then(|s| s.get("observedGeneration"));
    let generation_v = json!(generation);
    if same("status", &json!(status))
        && same("reason", &json!(ready.reason))
        && same("message", &json!(ready.message))
        && same("observedGeneration", &generation_v)
        && observed == Some(&generation_v)
    {
        return None;
    }
    // The time of the last change of `status`, kept while it does not change.
    let since = match old {
        Some(c) if c.get("status").and_then(Value::as_str) == Some(status) => c
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| json!(now)),
        _ => json!(now),
    };
    let mut out: Vec<Value> = conditions
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some("Ready"))
        .cloned()
        .collect();
    out.push(json!({
        "type": "Ready",
        "status": status,
        "reason": ready.reason,
        "message": ready.message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }));
    Some(json!({"observedGeneration": generation, "conditions": out}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_that_says_the_same_is_not_written_again() {
        let ready = Ready::applied("applied".into());
        let first = next(None, Some(2), &ready, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(first["observedGeneration"], 2);
        assert_eq!(first["conditions"][0]["status"], "True");
        assert_eq!(
            next(Some(&first), Some(2), &ready, "2026-01-02T00:00:00Z"),
            None
        );
        // A new generation is written, the transition time kept.
        let second = next(Some(&first), Some(3), &ready, "2026-01-02T00:00:00Z").unwrap();
        assert_eq!(
            second["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        // A change of status moves it.
        let bad = Ready::not("Invalid", "spec.x: wrong".into());
        let third = next(Some(&second), Some(4), &bad, "2026-01-03T00:00:00Z").unwrap();
        assert_eq!(third["conditions"][0]["status"], "False");
        assert_eq!(third["conditions"][0]["reason"], "Invalid");
        assert_eq!(
            third["conditions"][0]["lastTransitionTime"],
            "2026-01-03T00:00:00Z"
        );
    }

    #[test]
    fn other_conditions_are_kept() {
        let current = json!({"conditions": [{"type": "Other", "status": "True"}]});
        let out = next(Some(&current), Some(1), &Ready::applied("a".into()), "t").unwrap();
        let types: Vec<&str> = out["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Other", "Ready"]);
    }
}
