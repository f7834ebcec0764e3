//! Dead letters on a NATS subject: each asynchronous invocation that is
//! dead-lettered is also published, as its JSON record, to the subject the
//! server names (`--dead-letter-subject`), as the triggers publish their
//! outcomes: through JetStream when a stream holds the subject (acknowledged,
//! and deduplicated by `Nats-Msg-Id`), as a plain NATS message otherwise. The dead-letter list
//! (`GET /v1/deadletters`) is kept either way; a publish that fails is logged.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Mutex;

use crate::invocations::record::Invocation;
use crate::invocations::DeadLetterSink;

pub struct NatsDeadLetters {
    url: String,
    subject: String,
    /// Connected on first use, and again after a failure.
    client: Mutex<Option<async_nats::Client>>,
}

impl NatsDeadLetters {
    pub fn new(url: String, subject: String) -> NatsDeadLetters {
        NatsDeadLetters {
            url,
            subject,
            client: Mutex::new(None),
        }
    }

    async fn publish(&self, invocation: &Invocation) -> Result<(), String> {
        let payload = serde_json::to_vec(invocation).map_err(|e| e.to_string())?;
        let mut client = self.client.lock().await;
        if client.is_none() {
            let c = async_nats::ConnectOptions::new()
                .name("fusion dead letters")
                .connection_timeout(Duration::from_secs(5))
                .connect(self.url.as_str())
                .await
                .map_err(|e| format!("cannot connect to NATS at {}: {e}", self.url))?;
            *client = Some(c);
        }
        let Some(c) = client.as_ref() else {
            return Err("no NATS connection".into());
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}-{}", invocation.id, invocation.cycle).as_str(),
        );
        headers.insert("X-Fusion-Invocation-Id", invocation.id.as_str());
        headers.insert("Content-Type", "application/json");
        let js = jetstream::new(c.clone());
        let sent = super::consumer::publish(&js, &self.subject, headers, payload.into()).await;
        if sent.is_err() {
            // Connect afresh next time.
            *client = None;
        }
        sent.map_err(|e| format!("{e} (NATS at {})", self.url))
    }
}

impl DeadLetterSink for NatsDeadLetters {
    fn dead_lettered<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if let Err(e) = self.publish(invocation).await {
                tracing::warn!(invocation = %invocation.id, "dead letter not published: {e}");
            }
        })
    }
}
