//! Retry policy: exponential backoff with jitter, validated at construction.
//! Pure: the jitter sample is a parameter, so delays are reproducible.

use std::time::Duration;

use crate::spec::{parse_duration, RetrySpec};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("initial delay {initial:?} is larger than max {max:?}")]
    InitialAboveMax { initial: Duration, max: Duration },
    #[error("multiplier {0} must be at least 1")]
    Multiplier(f64),
    #[error("jitter {0} must be between 0 and 1")]
    Jitter(f64),
    #[error("maxAttempts must be at least 1")]
    Attempts,
    #[error("invalid duration {0:?} (use e.g. \"100ms\", \"2s\")")]
    Duration(String),
}

/// Exponential backoff: delay(n) = min(max, initial * multiplier^(n-1)), then
/// reduced by up to `jitter` of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Backoff {
    pub fn try_new(
        initial: Duration,
        max: Duration,
        multiplier: f64,
        jitter: f64,
    ) -> Result<Self, BackoffError> {
        if initial > max {
            return Err(BackoffError::InitialAboveMax { initial, max });
        }
        if multiplier.is_nan() || multiplier < 1.0 || !multiplier.is_finite() {
            return Err(BackoffError::Multiplier(multiplier));
        }
        if jitter.is_nan() || !(0.0..=1.0).contains(&jitter) {
            return Err(BackoffError::Jitter(jitter));
        }
        Ok(Backoff {
            initial,
            max,
            multiplier,
            jitter,
        })
    }

    /// Delay before retry number `retry` (1 = first retry); `sample` in [0, 1).
    pub fn delay(&self, retry: u32, sample: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(1000) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let capped = if base.is_finite() {
            base.min(self.max.as_secs_f64())
        } else {
            self.max.as_secs_f64()
        };
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jittered = capped * (1.0 - self.jitter * sample);
        Duration::from_secs_f64(jittered.max(0.0))
    }

    pub fn max(&self) -> Duration {
        self.max
    }
}

/// A task's validated retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::try_new(Duration::ZERO, Duration::ZERO, 1.0, 0.0)
                .expect("constant backoff is valid"),
        }
    }

    pub fn from_spec(spec: Option<&RetrySpec>) -> Result<Self, BackoffError> {
        let Some(spec) = spec else {
            return Ok(Self::none());
        };
        if spec.max_attempts == 0 {
            return Err(BackoffError::Attempts);
        }
        let b = spec.backoff.clone().unwrap_or(crate::spec::BackoffSpec {
            initial: None,
            max: None,
            multiplier: None,
        });
        let dur = |s: &Option<String>, d: Duration| match s {
            None => Ok(d),
            Some(text) => parse_duration(text).ok_or_else(|| BackoffError::Duration(text.clone())),
        };
        let backoff = Backoff::try_new(
            dur(&b.initial, Duration::from_millis(100))?,
            dur(&b.max, Duration::from_secs(10))?,
            b.multiplier.unwrap_or(2.0),
            spec.jitter.unwrap_or(0.2),
        )?;
        Ok(RetryPolicy {
            max_attempts: spec.max_attempts,
            backoff,
        })
    }
}

/// A deterministic sample in [0, 1) from a string (the attempt's key), so the
/// pure state machine can jitter without a random source.
pub fn sample_from(key: &str) -> f64 {
    // FNV-1a
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_values() {
        let s = Duration::from_secs(1);
        assert!(Backoff::try_new(s * 2, s, 2.0, 0.1).is_err());
        assert!(Backoff::try_new(s, s, 0.5, 0.1).is_err());
        assert!(Backoff::try_new(s, s, 2.0, 1.5).is_err());
        assert!(Backoff::try_new(s, s, f64::NAN, 0.1).is_err());
    }

    #[test]
    fn grows_exponentially() {
        let b =
            Backoff::try_new(Duration::from_millis(100), Duration::from_secs(1), 2.0, 0.0).unwrap();
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(400));
        assert_eq!(b.delay(10, 0.5), Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn delay_stays_within_bounds(
            initial_ms in 0u64..10_000,
            extra_ms in 0u64..100_000,
            multiplier in 1.0f64..10.0,
            jitter in 0.0f64..=1.0,
            retry in 0u32..10_000,
            sample in 0.0f64..1.0,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = Duration::from_millis(initial_ms + extra_ms);
            let b = Backoff::try_new(initial, max, multiplier, jitter).unwrap();
            let d = b.delay(retry, sample);
            prop_assert!(d <= max + Duration::from_micros(1));
            let undelayed = initial.as_secs_f64() * multiplier.powi(retry.saturating_sub(1).min(1000) as i32);
            let lower = undelayed.min(max.as_secs_f64()) * (1.0 - jitter);
            prop_assert!(d.as_secs_f64() + 1e-6 >= lower);
        }

        #[test]
        fn sample_in_unit_interval(key in ".*") {
            let s = sample_from(&key);
            prop_assert!((0.0..1.0).contains(&s));
        }
    }
}
