//! An asynchronous invocation's retry policy (a function's `invocation`, as
//! Fission's RFC-0024 has it) and the decision taken after each attempt:
//! done, failed for good, retry after a delay, or dead-lettered. Pure.

use std::time::Duration;

use engine::retry::Backoff;
use engine::spec::parse_duration;
use pool_manager::resources::{InvocationConfig, InvocationDestination};
use pool_manager::{Error, Result};

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MOST_ATTEMPTS: u32 = 100;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
/// How much of a delay jitter may take off (at random), when on.
const JITTER: f64 = 0.5;

/// A function's validated retry policy for asynchronous calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub max_age: Duration,
    /// The function (same namespace) called with the result of an
    /// invocation that succeeded, and of one that failed for good.
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
}

/// What one attempt's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx to 3xx.
    Success,
    /// A 4xx other than 408 and 429: trying again will not help.
    Permanent,
    /// 5xx (the function's, or Fusion's own: timeout, instance failure,
    /// unavailable), 408 and 429.
    Retryable,
}

/// What happens to the invocation after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Succeeded,
    Failed,
    RetryAfter(Duration),
    Dead,
}

pub fn classify(status: u16) -> Outcome {
    match status {
        408 | 429 => Outcome::Retryable,
        s if s < 400 => Outcome::Success,
        s if s < 500 => Outcome::Permanent,
        _ => Outcome::Retryable,
    }
}

fn duration(field: &str, text: &Option<String>, default: Duration) -> Result<Duration> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(t).ok_or_else(|| {
            Error::Invalid(format!(
                "function: invocation.{field} {t:?} is not a duration (write e.g. \"100ms\", \"2s\", \"6h\")"
            ))
        }),
    }
}

/// The function a destination names; refuses a topic (until Fusion publishes
/// to message queues) and anything but exactly one target.
fn destination(field: &str, d: Option<&InvocationDestination>) -> Result<Option<String>> {
    let Some(d) = d else { return Ok(None) };
    match (&d.function, &d.topic) {
        (Some(_), Some(_)) | (None, None) => Err(Error::Invalid(format!(
            "function: invocation.{field} names exactly one of `function` and `topic`"
        ))),
        (None, Some(_)) => Err(Error::Invalid(format!(
            "function: invocation.{field}.topic: Fusion does not publish results to message-queue topics yet; name a function"
        ))),
        (Some(f), None) => {
            if f.kind.as_deref().is_some_and(|k| k != "name") {
                return Err(Error::Invalid(format!(
                    "function: invocation.{field}.function.type must be \"name\""
                )));
            }
            pool_manager::resources::validate_name("function", &f.name)?;
            Ok(Some(f.name.clone()))
        }
    }
}

impl Policy {
    /// The policy of `config` (platform defaults for what it leaves out);
    /// refuses values that do not hold together.
    pub fn of(config: Option<&InvocationConfig>) -> Result<Policy> {
        let default = InvocationConfig::default();
        let c = config.unwrap_or(&default);
        let max_attempts = c.retry.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 || max_attempts > MOST_ATTEMPTS {
            return Err(Error::Invalid(format!(
                "function: invocation.retry.maxAttempts {max_attempts} must be between 1 and {MOST_ATTEMPTS}"
            )));
        }
        let base = duration(
            "retry.backoffBase",
            &c.retry.backoff_base,
            DEFAULT_BACKOFF_BASE,
        )?;
        let cap = duration(
            "retry.backoffCap",
            &c.retry.backoff_cap,
            DEFAULT_BACKOFF_CAP.max(base),
        )?;
        let jitter = if c.retry.jitter.unwrap_or(true) {
            JITTER
        } else {
            0.0
        };
        let backoff = Backoff::try_new(base, cap, 2.0, jitter).map_err(|e| {
            Error::Invalid(format!(
                "function: invocation.retry: backoffBase {base:?} is above backoffCap {cap:?} ({e})"
            ))
        })?;
        let max_age = duration("maxAge", &c.max_age, DEFAULT_MAX_AGE)?;
        if max_age.is_zero() {
            return Err(Error::Invalid(
                "function: invocation.maxAge must be more than 0".into(),
            ));
        }
        Ok(Policy {
            max_attempts,
            backoff,
            max_age,
            on_success: destination("onSuccess", c.on_success.as_ref())?,
            on_failure: destination("onFailure", c.on_failure.as_ref())?,
        })
    }

    /// The decision after attempt number `attempt` (1 = the first of this
    /// cycle) ended with `outcome`; `sample` in [0, 1) draws the jitter.
    pub fn settle(&self, outcome: Outcome, attempt: u32, sample: f64) -> Settle {
        match outcome {
            Outcome::Success => Settle::Succeeded,
            Outcome::Permanent => Settle::Failed,
            Outcome::Retryable if attempt >= self.max_attempts => Settle::Dead,
            Outcome::Retryable => Settle::RetryAfter(self.backoff.delay(attempt, sample)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_manager::resources::InvocationRetry;
    use proptest::prelude::*;

    fn config(attempts: Option<u32>, base: &str, cap: &str) -> InvocationConfig {
        InvocationConfig {
            retry: InvocationRetry {
                max_attempts: attempts,
                backoff_base: Some(base.into()),
                backoff_cap: Some(cap.into()),
                jitter: Some(false),
            },
            ..InvocationConfig::default()
        }
    }

    #[test]
    fn four_hundreds_are_final_except_timeouts_and_throttling() {
        assert_eq!(classify(200), Outcome::Success);
        assert_eq!(classify(204), Outcome::Success);
        assert_eq!(classify(302), Outcome::Success);
        assert_eq!(classify(400), Outcome::Permanent);
        assert_eq!(classify(404), Outcome::Permanent);
        assert_eq!(classify(424), Outcome::Permanent);
        assert_eq!(classify(408), Outcome::Retryable);
        assert_eq!(classify(429), Outcome::Retryable);
        assert_eq!(classify(500), Outcome::Retryable);
        assert_eq!(classify(502), Outcome::Retryable);
        assert_eq!(classify(504), Outcome::Retryable);
    }

    #[test]
    fn defaults_are_three_attempts_and_six_hours() {
        let p = Policy::of(None).unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.max_age, Duration::from_secs(6 * 3600));
        assert_eq!(
            p.settle(Outcome::Retryable, 3, 0.0),
            Settle::Dead,
            "the third failure is the last"
        );
        assert_eq!(p.settle(Outcome::Permanent, 1, 0.0), Settle::Failed);
        assert_eq!(p.settle(Outcome::Success, 3, 0.0), Settle::Succeeded);
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = Policy::of(Some(&config(Some(6), "100ms", "350ms"))).unwrap();
        let delays: Vec<_> = (1..6)
            .map(|n| match p.settle(Outcome::Retryable, n, 0.9) {
                Settle::RetryAfter(d) => d.as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [100, 200, 350, 350, 350]);
        assert_eq!(p.settle(Outcome::Retryable, 6, 0.0), Settle::Dead);
    }

    #[test]
    fn bad_policies_are_refused_with_the_field() {
        let e = Policy::of(Some(&config(Some(0), "1s", "2s")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("maxAttempts 0"), "{e}");
        let e = Policy::of(Some(&config(None, "soon", "2s")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invocation.retry.backoffBase \"soon\""), "{e}");
        let e = Policy::of(Some(&config(None, "5s", "1s")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("above backoffCap"), "{e}");
        let mut c = config(None, "1s", "2s");
        c.max_age = Some("0s".into());
        assert!(Policy::of(Some(&c)).is_err());
        let mut c = config(None, "1s", "2s");
        c.on_failure = Some(InvocationDestination {
            function: None,
            topic: Some(serde_json::json!({"messageQueueType": "nats", "topic": "t"})),
        });
        let e = Policy::of(Some(&c)).unwrap_err().to_string();
        assert!(e.contains("invocation.onFailure.topic"), "{e}");
    }

    proptest! {
        /// Delays stay between half the uncapped delay and the cap, and an
        /// invocation is never retried past its attempts.
        #[test]
        fn retries_are_bounded(attempts in 1u32..20, attempt in 1u32..30, sample in 0.0f64..1.0,
                               base_ms in 0u64..5000, extra_ms in 0u64..60_000) {
            let c = InvocationConfig {
                retry: InvocationRetry {
                    max_attempts: Some(attempts),
                    backoff_base: Some(format!("{base_ms}ms")),
                    backoff_cap: Some(format!("{}ms", base_ms + extra_ms)),
                    jitter: None,
                },
                ..InvocationConfig::default()
            };
            let p = Policy::of(Some(&c)).unwrap();
            match p.settle(Outcome::Retryable, attempt, sample) {
                Settle::Dead => prop_assert!(attempt >= attempts),
                Settle::RetryAfter(d) => {
                    prop_assert!(attempt < attempts);
                    prop_assert!(d <= Duration::from_millis(base_ms + extra_ms));
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
