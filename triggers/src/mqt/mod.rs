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

    /// Stops every consumer: messages in flight are not acked, so NATS
    /// redelivers them to the next consumer.
    pub fn stop(&self) {
        for (_, r) in self.running().drain() {
            r.task.abort();
        }
    }

    fn launch(&self, t: MessageQueueTrigger) {
        let status = Arc::new(StatusCell::new());
        let settings = t.settings(&self.default_url());
        let key = t.key();
        let task = tokio::spawn(consumer::supervise(
            t,
            settings,
            self.invoker.clone(),
            status.clone(),
        ));
        if let Some(old) = self.running().insert(key, Running { task, status }) {
            old.task.abort();
        }
    }

    fn halt(&self, key: &str) {
        if let Some(r) = self.running().remove(key) {
            r.task.abort();
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

    pub async fn create(&self, t: MessageQueueTrigger) -> Result<TriggerView> {
        let _change = self.changes.lock().await;
        self.check(&t)?;
        self.records.create(&t.key(), &t).await?;
        self.launch(t.clone());
        Ok(self.view(t))
    }

    pub async fn update(&self, t: MessageQueueTrigger) -> Result<TriggerView> {
        let _change = self.changes.lock().await;
        self.check(&t)?;
        let old = self.stored(&t.key())?;
        if old == t {
            return Ok(self.view(t));
        }
        self.records.put(&t.key(), &t).await?;
        self.halt(&t.key());
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
            consumer::delete_consumer(old.topic.clone(), before).await;
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
        self.halt(key);
        // Awaited (bounded in time), so that a trigger created again under the
        // name does not have its new consumer deleted behind it.
        let settings = old.settings(&self.default_url());
        consumer::delete_consumer(old.topic, settings).await;
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
