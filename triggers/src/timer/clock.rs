//! Time as the timer service sees it, behind a trait: the system clock with
//! tokio's timers in the server, a manual clock in tests (which then drive time
//! without sleeping).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    /// Resolves once the clock reads `at` or later (it may resolve earlier, when
    /// the clock was changed: the caller looks at `now` again).
    fn sleep_until(&self, at: Timestamp) -> Sleep;
}

/// The system's wall clock; sleeps are tokio timers, at most a minute long so
/// that a wall clock set forward is noticed within a minute.
pub struct SystemClock;

const LONGEST_SLEEP: Duration = Duration::from_secs(60);

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let left = at.duration_since(Timestamp::now());
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(left.min(LONGEST_SLEEP)))
    }
}

/// A clock that moves only when told to (tests).
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
    /// What `now` last answered.
    seen: Mutex<Timestamp>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(start),
            seen: Mutex::new(start),
        }
    }

    pub fn set(&self, t: Timestamp) {
        self.now.send_replace(t);
    }

    /// The time, as tests read it (without counting as the service's read).
    pub fn get(&self) -> Timestamp {
        *self.now.borrow()
    }

    pub fn advance(&self, by: jiff::SignedDuration) {
        self.now.send_modify(|t| *t += by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        let t = *self.now.borrow();
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = t;
        t
    }

    /// Resolves at `at`, or as soon as the clock has moved since `now` was
    /// last read: each move gets a pass of the service, which tests wait on.
    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let seen = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|now| *now >= at || *now != seen).await;
        })
    }
}
