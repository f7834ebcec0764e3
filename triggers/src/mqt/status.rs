//! What a message-queue trigger is doing now, as `fusion mqt get` shows it:
//! its state (connecting, running, error) with the reason and since when, and
//! counts of the messages it settled and of the redeliveries since the server
//! started.

use std::sync::{Arc, Mutex};

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
    /// Messages settled after a 2xx answer (published to the response topic
    /// when there is one), since the server started.
    pub succeeded: u64,
    /// Messages settled after the last attempt failed, or whose answer the
    /// response topic would not take.
    pub failed: u64,
    /// Deliveries of a message NATS had delivered before (after a crash, an
    /// ack timeout or a lost ack), counted as they arrive.
    pub redelivered: u64,
    /// Of the settled messages, those whose outcome (answer or failure report)
    /// could not be published: each is logged, and terminated on NATS rather
    /// than redelivered.
    pub unpublished: u64,
    /// The running message to say again when a lost connection comes back.
    #[serde(skip)]
    running: Option<String>,
}

/// What became of one message, as the status counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub succeeded: bool,
    /// Its answer or failure report went where the trigger says (or the
    /// trigger names no topic for it).
    pub published: bool,
}

/// The counts of a trigger's status, shared by the consumers of its
/// successive lives (an update starts a new one while the old one settles
/// what it holds): they count since the server started.
#[derive(Debug, Default)]
struct Counts {
    succeeded: u64,
    failed: u64,
    redelivered: u64,
    unpublished: u64,
}

pub struct StatusCell(Mutex<Status>, Arc<Mutex<Counts>>);

impl StatusCell {
    /// The status of a trigger's next life (after an update): its own state,
    /// the counts it goes on from.
    pub fn continuing(before: &StatusCell) -> StatusCell {
        let mut next = StatusCell::new();
        next.1 = before.1.clone();
        next
    }

    pub fn new() -> StatusCell {
        StatusCell(
            Mutex::new(Status {
                state: State::Connecting,
                message: "starting".into(),
                since: now(),
                succeeded: 0,
                failed: 0,
                redelivered: 0,
                unpublished: 0,
                running: None,
            }),
            Arc::default(),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.1.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self) -> Status {
        let mut s = self.lock().clone();
        let c = self.counts();
        (s.succeeded, s.failed, s.redelivered, s.unpublished) =
            (c.succeeded, c.failed, c.redelivered, c.unpublished);
        s
    }

    /// A new state and reason; `since` moves only when the state changes.
    pub fn set(&self, state: State, message: String) {
        let mut s = self.lock();
        if s.state != state {
            s.since = now();
        }
        s.running = (state == State::Running).then(|| message.clone());
        s.state = state;
        s.message = message;
    }

    /// The consumer's connection to NATS broke: said at once (its pull
    /// would say so only after two missed heartbeats), running again when it
    /// comes back.
    pub fn disconnected(&self, url: &str) {
        let mut s = self.lock();
        if s.state == State::Running {
            let running = s.running.take();
            s.since = now();
            s.state = State::Connecting;
            s.message = format!("lost the connection to NATS at {url}; reconnecting");
            s.running = running;
        }
    }

    pub fn reconnected(&self) {
        let mut s = self.lock();
        if s.state == State::Connecting {
            if let Some(message) = s.running.clone() {
                s.since = now();
                s.state = State::Running;
                s.message = message;
            }
        }
    }

    pub fn settled(&self, outcome: Settled) {
        let mut s = self.counts();
        if outcome.succeeded {
            s.succeeded += 1;
        } else {
            s.failed += 1;
        }
        if !outcome.published {
            s.unpublished += 1;
        }
    }

    pub fn redelivered(&self) {
        self.counts().redelivered += 1;
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
