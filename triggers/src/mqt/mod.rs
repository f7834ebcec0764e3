//! Message-queue triggers (Fission's `MessageQueueTrigger` on NATS JetStream):
//! stored in sled, each run by a consumer task of its own from server start
//! (`start`) until it is deleted or the server stops; the API shows each with
//! its live status.

mod consumer;
pub mod dead_letters;
mod report;
pub mod status;
pub mod trigger;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pool_manager::store::Records;
use pool_manager::{Error, Result};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::invoke::Invoker;
pub use consumer::IDEMPOTENCY_KEY;
pub use status::{State, Status};
pub use trigger::{MessageQueueTrigger, DEFAULT_NATS_URL, SUPPORTED_TYPES};

use status::StatusCell;

/// A trigger as the API shows it: the resource and what it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerView {
    #[serde(flatten)]
    pub trigger: MessageQueueTrigger,
    pub status: Status,
}

struct Running {
    task: JoinHandle<()>,
    status: Arc<StatusCell>,
    /// Set to ask the consumer to stop gracefully (see `consumer::run`).
    stop: tokio::sync::watch::Sender<bool>,
}

/// How long an update or a delete waits for its old consumer's calls in
/// flight to finish (then they are cut off, and NATS redelivers them).
const HALT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Asks the consumers to stop and waits for them, up to `grace`: each takes
/// no new message, hands back those it holds unstarted (redelivered at once
/// to the next consumer), and acks those in flight once settled. Those
/// still running then are cut off (NATS redelivers them after its ack wait).
async fn stop_all(consumers: Vec<Running>, grace: std::time::Duration) {
    for r in &consumers {
        let _ = r.stop.send(true);
    }
    let mut tasks: Vec<JoinHandle<()>> = consumers.into_iter().map(|r| r.task).collect();
    let all = futures_util::future::join_all(tasks.iter_mut());
    if tokio::time::timeout(grace, all).await.is_err() {
        for t in &tasks {
            t.abort();
        }
    }
}

pub struct MessageQueueTriggers {
    records: Records,
    invoker: Invoker,
    /// The server-wide NATS address (`--nats-url`), once started.
    default_url: Mutex<Option<String>>,
    running: Mutex<HashMap<String, Running>>,
    /// Held by each create, update and delete, so that two changes of
    /// triggers never interleave (a delete during an update's consumer
    /// clean-up would leave a consumer running for a deleted trigger).
    changes: tokio::sync::Mutex<()>,
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "mqtrigger",
        name: name.to_string(),
    }
}

impl MessageQueueTriggers {
    pub fn open(db: &sled::Db, invoker: Invoker) -> Result<MessageQueueTriggers> {
        Ok(MessageQueueTriggers {
            records: Records::open(db, "mqtriggers", "mqtrigger")?,
            invoker,
            default_url: Mutex::new(None),
            running: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn default_url(&self) -> String {
        self.default_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_string())
    }

    /// Starts a consumer for every stored trigger; `default_url` is where
    /// triggers that name no `natsUrl` connect. Called once the server runs.
    pub fn start(&self, default_url: Option<String>) -> Result<()> {
        *self.default_url.lock().unwrap_or_else(|p| p.into_inner()) = default_url;
        for t in self.records.list::<MessageQueueTrigger>()? {
            self.launch(t);
        }
        Ok(())
    }

    /// Stops every consumer (at server shutdown), waiting up to `grace` for
    /// the messages in flight to be settled and acked; see [`stop_all`].
    pub async fn stop(&self, grace: std::time::Duration) {
        let consumers: Vec<Running> = self.running().drain().map(|(_, r)| r).collect();
        stop_all(consumers, grace).await;
    }

    fn launch(&self, t: MessageQueueTrigger) {
        let status = Arc::new(StatusCell::new());
        let settings = t.settings(&self.default_url());
        let key = t.key();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(consumer::supervise(
            t,
            settings,
            self.invoker.clone(),
            status.clone(),
            stopped,
        ));
        if let Some(old) = self.running().insert(key, Running { task, status, stop }) {
            old.task.abort();
        }
    }

    /// Stops the trigger's consumer, its calls in flight settled first (so
    /// that its next consumer neither calls them again nor waits out their
    /// ack wait).
    async fn halt(&self, key: &str) {
        let old = self.running().remove(key);
        if let Some(r) = old {
            stop_all(vec![r], HALT_GRACE).await;
        }
    }

    fn view(&self, trigger: MessageQueueTrigger) -> TriggerView {
        let status = match self.running().get(&trigger.key()) {
            Some(r) => r.status.get(),
            None => StatusCell::new().get(),
        };
        TriggerView { trigger, status }
    }

    pub fn get(&self, key: &str) -> Result<TriggerView> {
        let t = self.stored(key)?;
        Ok(self.view(t))
    }

    fn stored(&self, key: &str) -> Result<MessageQueueTrigger> {
        self.records.get(key)?.ok_or_else(|| not_found(key))
    }

    pub fn list(&self) -> Result<Vec<TriggerView>> {
        Ok(self
            .records
            .list::<MessageQueueTrigger>()?
            .into_iter()
            .map(|t| self.view(t))
            .collect())
    }

    pub async fn create(&self, mut t: MessageQueueTrigger) -> Result<TriggerView> {
        let _change = self.changes.lock().await;
        self.invoker
            .retarget_to_workflow(&t.namespace, &mut t.function, &mut t.workflow);
        self.check(&t)?;
        self.records.create(&t.key(), &t).await?;
        self.launch(t.clone());
        Ok(self.view(t))
    }

    pub async fn update(&self, mut t: MessageQueueTrigger) -> Result<TriggerView> {
        let _change = self.changes.lock().await;
        self.invoker
            .retarget_to_workflow(&t.namespace, &mut t.function, &mut t.workflow);
        self.check(&t)?;
        let old = self.stored(&t.key())?;
        if old == t {
            return Ok(self.view(t));
        }
        self.records.put(&t.key(), &t).await?;
        self.halt(&t.key()).await;
        let url = self.default_url();
        let (before, after) = (old.settings(&url), t.settings(&url));
        let moved = old.topic != t.topic
            || before.url != after.url
            || before.stream != after.stream
            || before.consumer != after.consumer
            || before.deliver_policy != after.deliver_policy;
        if moved {
            // Its position belongs to the old subject or stream, and NATS
            // changes no consumer's deliver policy: start afresh. (A new ack
            // wait or concurrency updates the consumer in place.)
            consumer::delete_consumer(old.topic.clone(), before, &old.key()).await;
        }
        self.launch(t.clone());
        Ok(self.view(t))
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let _change = self.changes.lock().await;
        let old = self.stored(key)?;
        if !self.records.delete(key).await? {
            return Err(not_found(key));
        }
        self.halt(key).await;
        // Awaited (bounded in time), so that a trigger created again under the
        // name does not have its new consumer deleted behind it.
        let settings = old.settings(&self.default_url());
        consumer::delete_consumer(old.topic.clone(), settings, &old.key()).await;
        Ok(())
    }

    /// The triggers that target function `key`.
    pub fn targeting_function(&self, key: &str) -> Result<Vec<MessageQueueTrigger>> {
        Ok(self
            .records
            .list::<MessageQueueTrigger>()?
            .into_iter()
            .filter(|t| t.function_key().as_deref() == Some(key))
            .collect())
    }

    /// The triggers that start workflow `name`.
    pub fn targeting_workflow(&self, name: &str) -> Result<Vec<MessageQueueTrigger>> {
        Ok(self
            .records
            .list::<MessageQueueTrigger>()?
            .into_iter()
            .filter(|t| t.workflow.as_deref() == Some(name))
            .collect())
    }

    fn check(&self, t: &MessageQueueTrigger) -> Result<()> {
        t.validate()?;
        // One durable consumer, one trigger: two would take each other's
        // messages, and the delete of one would remove the other's consumer.
        let url = self.default_url();
        let mine = t.settings(&url);
        for other in self.records.list::<MessageQueueTrigger>()? {
            let theirs = other.settings(&url);
            if other.key() != t.key()
                && theirs.url == mine.url
                && theirs.consumer == mine.consumer
                && (theirs.stream.is_none()
                    || mine.stream.is_none()
                    || theirs.stream == mine.stream)
            {
                return Err(Error::Conflict(format!(
                    "mqtrigger {:?}: consumer {:?} is trigger {:?}'s; give this one another (--metadata consumer=NAME)",
                    t.name,
                    mine.consumer,
                    other.key()
                )));
            }
        }
        if let Some(f) = t.function_key() {
            if !self.invoker.function_exists(&f) {
                return Err(Error::Conflict(format!(
                    "mqtrigger {:?}: function {f:?} does not exist",
                    t.name
                )));
            }
        }
        if let Some(w) = &t.workflow {
            if !self.invoker.workflow_exists(w) {
                return Err(Error::Conflict(format!(
                    "mqtrigger {:?}: workflow {w:?} does not exist",
                    t.name
                )));
            }
        }
        Ok(())
    }
}
