//! What a message-queue trigger is doing now, as `fusion mqt get` shows it:
//! its state (connecting, running, error) with the reason and since when, and
//! counts of the messages it settled since the server started.

use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Connecting,
    Running,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    pub message: String,
    /// When it entered this state (RFC 3339).
    pub since: String,
    /// Messages acked after a 2xx answer (since the server started).
    pub succeeded: u64,
    /// Messages acked after the last attempt failed.
    pub failed: u64,
    /// Of those, messages NATS had delivered before (after a crash or an ack
    /// timeout).
    pub redelivered: u64,
}

pub struct StatusCell(Mutex<Status>);

impl StatusCell {
    pub fn new() -> StatusCell {
        StatusCell(Mutex::new(Status {
            state: State::Connecting,
            message: "starting".into(),
            since: now(),
            succeeded: 0,
            failed: 0,
            redelivered: 0,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self) -> Status {
        self.lock().clone()
    }

    /// A new state and reason; `since` moves only when the state changes.
    pub fn set(&self, state: State, message: String) {
        let mut s = self.lock();
        if s.state != state {
            s.since = now();
        }
        s.state = state;
        s.message = message;
    }

    pub fn count(&self, succeeded: bool, redelivered: bool) {
        let mut s = self.lock();
        if succeeded {
            s.succeeded += 1;
        } else {
            s.failed += 1;
        }
        if redelivered {
            s.redelivered += 1;
        }
    }
}

impl Default for StatusCell {
    fn default() -> Self {
        StatusCell::new()
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
