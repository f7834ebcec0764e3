//! One message-queue trigger at work: connects to NATS, finds its stream,
//! creates (or resumes) its durable pull consumer, and handles up to
//! `concurrency` messages at once. A message is acked only once its outcome is
//! settled: the answer published to the response topic, or the failure (after
//! the retries) to the error topic; a crash before that redelivers it. An
//! outcome that cannot be published is logged and the message terminated, so
//! that one message never calls its target again and again. Any failure to
//! connect or consume is the trigger's status, retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, Request};
use tokio::task::JoinSet;

use super::report;
use super::status::{Settled, State, StatusCell};
use super::trigger::{DeliverPolicy, MessageQueueTrigger, Settings};
use crate::invoke::{Invoker, Target};

/// The header a function reads to recognise a redelivered message.
pub const IDEMPOTENCY_KEY: &str = "X-Fusion-Idempotency-Key";

/// The most of a failed answer's body the error topic gets.
const ERROR_BODY_LIMIT: usize = 4096;
/// The most of an answer's body that is read (NATS refuses larger payloads anyway).
const ANSWER_LIMIT: usize = 8 << 20;

/// Everything one consumer needs, shared by its message tasks.
struct Job {
    trigger: MessageQueueTrigger,
    target: Target,
    invoker: Invoker,
    status: Arc<StatusCell>,
    js: jetstream::Context,
    ack_wait: Duration,
    /// What names this trigger's outcomes in JetStream's duplicate window
    /// (`Nats-Msg-Id`) beside the message's key: the trigger, and its
    /// stream's creation. Another trigger's answer to the same message, or
    /// the answer to a message of a stream made again (whose sequence starts
    /// over), is not the same message, and was dropped as one.
    outcome_tag: String,
    /// Set when the stop's grace is over: a call still in flight is given
    /// up, its message handed back.
    cut: tokio::sync::watch::Receiver<bool>,
    /// The trigger's stop: a delivery still waiting for its turn at the
    /// function's max scale, or between attempts, is handed back then.
    stop: tokio::sync::watch::Receiver<bool>,
}

/// A delivery given up at the trigger's stop before its call began: the
/// message goes back to NATS for the next consumer, not called here.
struct Abandoned;

/// A consumer's two stops: `stop` to end gracefully (no new message, the
/// calls in flight settled), `cut` once the grace is over (the calls still in
/// flight given up, their messages handed back).
pub(super) struct Stops {
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub cut: tokio::sync::watch::Receiver<bool>,
}

/// Runs the trigger until its task is aborted: connects, consumes, and after
/// any failure says why in the status and tries again with backoff.
pub(super) async fn supervise(
    trigger: MessageQueueTrigger,
    settings: Settings,
    invoker: Invoker,
    status: Arc<StatusCell>,
    Stops { stop, cut }: Stops,
) {
    let Some(target) = trigger.target() else {
        status.set(State::Error, "the trigger has no target".into());
        return;
    };
    let mut backoff = Backoff::new();
    let mut last = String::new();
    loop {
        if *stop.borrow() {
            return;
        }
        // After a failure the status keeps it (and since when) while the
        // next try runs: a server that times out would otherwise show
        // `connecting` for most of each cycle and its reason only between.
        if last.is_empty() {
            status.set(State::Connecting, format!("connecting to {}", settings.url));
        } else {
            status.set(State::Error, format!("{last} (connecting again)"));
        }
        let started = tokio::time::Instant::now();
        // Not raced against the stop: `run` settles what it holds first.
        let err = run(Conn {
            cut: cut.clone(),
            trigger: &trigger,
            settings: &settings,
            target: &target,
            invoker: &invoker,
            status: &status,
            stop: stop.clone(),
        })
        .await;
        if *stop.borrow() {
            return;
        }
        // Said once, not at every retry.
        if err != last {
            tracing::warn!(trigger = %trigger.key(), "message-queue trigger: {err}");
            last = err.clone();
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Backoff::new();
        }
        let wait = backoff.next();
        status.set(
            State::Error,
            format!("{err} (retrying in {} ms)", wait.as_millis()),
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            () = stopped(stop.clone()) => return,
        }
    }
}

/// Resolves once the trigger is asked to stop (or its handle is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Exponential backoff between reconnections: 250 ms doubling up to 5 s.
struct Backoff(Duration);
impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(250))
    }
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        now
    }
}

/// What one connection's life works with.
struct Conn<'a> {
    trigger: &'a MessageQueueTrigger,
    settings: &'a Settings,
    target: &'a Target,
    invoker: &'a Invoker,
    status: &'a Arc<StatusCell>,
    stop: tokio::sync::watch::Receiver<bool>,
    cut: tokio::sync::watch::Receiver<bool>,
}

/// One connection's life: returns why it ended.
async fn run(conn: Conn<'_>) -> String {
    let (trigger, settings) = (conn.trigger, conn.settings);
    let (events, url) = (conn.status.clone(), settings.url.clone());
    let client = match async_nats::ConnectOptions::new()
        .name(format!("fusion mqtrigger {}", trigger.key()))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let (status, url) = (events.clone(), url.clone());
            async move {
                match event {
                    async_nats::Event::Disconnected => status.disconnected(&url),
                    async_nats::Event::Connected => status.reconnected(),
                    _ => {}
                }
            }
        })
        .connect(settings.url.as_str())
        .await
    {
        Ok(c) => c,
        Err(e) => return format!("cannot connect to NATS at {}: {e}", settings.url),
    };
    let js = jetstream::new(client);
    let stream_name = match &settings.stream {
        Some(s) => s.clone(),
        None => match js.stream_by_subject(trigger.topic.as_str()).await {
            Ok(s) => s,
            Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
                return format!(
                    "no JetStream stream on {} holds subject {:?}: create one, or name it with --metadata stream=NAME",
                    settings.url, trigger.topic
                )
            }
            Err(e) => return format!("cannot look up the stream of {:?}: {e}", trigger.topic),
        },
    };
    let stream = match js.get_stream(&stream_name).await {
        Ok(s) => s,
        Err(e) => return format!("stream {stream_name:?} on {}: {e}", settings.url),
    };
    let concurrency = trigger.concurrency as usize;
    // A consumer that was there before, not made by Fusion for this trigger
    // (a user's own, named with `--metadata consumer=`), is used as it is:
    // neither changed nor, at the trigger's delete, removed.
    let ours = description(&trigger.key(), settings.incarnation.as_deref());
    if let Ok(info) = stream.consumer_info(&settings.consumer).await {
        let said = info.config.description.as_deref().unwrap_or_default();
        // Made for an earlier life of the trigger's name (deleted or moved
        // while NATS was away, or by a server with another data directory):
        // taken over where it stands when it reads what this one would (its
        // position kept: nothing is delivered twice), else made afresh (NATS
        // changes no consumer's deliver policy).
        let same_reading = info.config.filter_subject == trigger.topic
            && info.config.deliver_policy == nats_policy(settings.deliver_policy);
        if said != ours && made_for(said, &trigger.key()) && !same_reading {
            if let Err(e) = stream.delete_consumer(&settings.consumer).await {
                return format!(
                    "cannot delete consumer {:?} on stream {stream_name:?}, left by an earlier trigger of this name: {e}",
                    settings.consumer
                );
            }
            tracing::info!(consumer = %settings.consumer, "deleted the consumer an earlier trigger of this name left");
        } else if said != ours && !made_for(said, &trigger.key()) {
            return match stream
                .get_consumer::<pull::Config>(&settings.consumer)
                .await
            {
                Ok(consumer) => consume(conn, &stream, js, consumer).await,
                Err(e) => format!(
                    "consumer {:?} on stream {stream_name:?} is not Fusion's, and it cannot be used as a pull consumer: {e}",
                    settings.consumer
                ),
            };
        }
    }
    let consumer: jetstream::consumer::PullConsumer = match stream
        .create_consumer(pull::Config {
            durable_name: Some(settings.consumer.clone()),
            description: Some(ours),
            filter_subject: trigger.topic.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: settings.ack_wait,
            deliver_policy: nats_policy(settings.deliver_policy),
            // The server hands out at most twice as many as are in flight: the
            // next ones wait here (told in progress) so that a freed slot
            // never waits for a pull.
            max_ack_pending: 2 * concurrency as i64,
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => {
            return format!(
                "cannot create consumer {:?} on stream {stream_name:?}: {e}",
                settings.consumer
            )
        }
    };
    consume(conn, &stream, js, consumer).await
}

/// Consumes from `consumer` until a failure (returned) or the stop.
async fn consume(
    conn: Conn<'_>,
    stream: &jetstream::stream::Stream,
    js: jetstream::Context,
    consumer: jetstream::consumer::PullConsumer,
) -> String {
    let Conn {
        trigger,
        settings,
        target,
        invoker,
        status,
        stop,
        cut,
    } = conn;
    let concurrency = trigger.concurrency as usize;
    // Fetched ahead: at most twice as many as are in flight, so that a freed
    // slot never waits for a pull.
    let room = 2 * concurrency;
    // One pull at a time, each for what there is room for, ending within
    // `PULL_EXPIRES`: so that a stop can let the last one end and know that
    // NATS sends nothing more (a message sent to a pull nobody reads any
    // more would wait out its ack wait).
    let pull = |n: usize| {
        let consumer = &consumer;
        async move {
            consumer
                .batch()
                .max_messages(n)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(|e| format!("cannot pull from consumer {:?}: {e}", settings.consumer))
        }
    };
    let mut batch = match pull(room).await {
        Ok(b) => Some(b),
        Err(e) => return e,
    };
    status.set(
        State::Running,
        format!(
            "consuming {:?} from stream {:?} (consumer {:?})",
            trigger.topic,
            stream.cached_info().config.name,
            settings.consumer
        ),
    );
    let job = Arc::new(Job {
        trigger: trigger.clone(),
        target: target.clone(),
        invoker: invoker.clone(),
        status: status.clone(),
        js,
        ack_wait: settings.ack_wait,
        outcome_tag: format!(
            "{}/{}",
            trigger.key(),
            stream.cached_info().created.unix_timestamp_nanos()
        ),
        cut,
        stop: stop.clone(),
    });
    let mut inflight: JoinSet<Result<(), String>> = JoinSet::new();
    // Messages NATS handed over that wait for a free slot, told in progress
    // while they wait, as a call is: else a message waiting behind slow calls
    // past its ack wait is delivered again, and both copies run.
    let mut queued: std::collections::VecDeque<jetstream::Message> = Default::default();
    let mut progress = tokio::time::interval(keepalive_every(settings.ack_wait));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        while !stopping && inflight.len() < concurrency {
            let Some(message) = queued.pop_front() else {
                break;
            };
            let job = job.clone();
            inflight.spawn(async move { job.handle(message).await });
        }
        // While messages wait here, the next pull waits for room for a
        // quarter of what may be held (pulls of one message each would cost
        // a round trip per message), and goes out while some still wait (so
        // that the calls do not wait for its round trip).
        let free = room.saturating_sub(inflight.len() + queued.len());
        let worth = if queued.is_empty() {
            1
        } else {
            room.div_ceil(4)
        };
        if batch.is_none() && !stopping && free >= worth {
            batch = match pull(free).await {
                Ok(b) => Some(b),
                Err(e) => return e,
            };
        }
        if stopping && batch.is_none() {
            // NATS sends nothing more: what was fetched but not started goes
            // back at once, for the next consumer; the calls in flight are
            // settled and acked (so that none runs twice) before the stop
            // ends.
            for m in queued.drain(..) {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
            while let Some(done) = inflight.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::warn!(trigger = %trigger.key(), "{e}");
                }
            }
            // The acks sent before the stop returns; not waited for past a
            // moment while NATS is away (they cannot reach it, and the
            // message is redelivered anyway).
            let client = job.js.client();
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
            return "stopped".into();
        }
        tokio::select! {
            () = stopped(stop.clone()), if !stopping => {
                // Stopping (an update, a delete, the server's shutdown): no
                // new pull; the one out is read to its end (what it brings
                // is held, then handed back).
                stopping = true;
            }
            next = async { batch.as_mut().expect("a pull").next().await }, if batch.is_some() => match next {
                Some(Ok(message)) => queued.push_back(message),
                Some(Err(e)) => return format!("consuming {:?}: {e}", trigger.topic),
                None => batch = None,
            },
            _ = progress.tick(), if !queued.is_empty() => {
                for m in &queued {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
            }
            Some(done) = inflight.join_next() => match done {
                Ok(Ok(())) => {}
                // One message's trouble (its ack not sent) is its own: it
                // stays unacked, NATS redelivers it, and the other messages
                // go on.
                Ok(Err(e)) => tracing::warn!(trigger = %trigger.key(), "{e}"),
                Err(e) => tracing::warn!(trigger = %trigger.key(), "a message task failed: {e}"),
            },
        }
    }
}

/// How long one pull waits for messages before it ends (and the next is
/// made): also the longest a stop waits for the last one to end.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How often a message held (waiting, or in its call) is told in progress:
/// three times per ack wait.
fn keepalive_every(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(300))
}

/// A call's 2xx answer.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A call that did not answer 2xx.
struct Failure {
    status: Option<u16>,
    body: String,
    message: String,
}

impl Job {
    /// Delivers one message, settles its outcome, then acks it; or, when the
    /// outcome could not be published, terminates it (logged): a message is
    /// never redelivered for want of a place to put its outcome, which would
    /// call the target again at every ack wait. An error means the ack was
    /// not sent: NATS redelivers the message.
    async fn handle(&self, message: jetstream::Message) -> Result<(), String> {
        let (stream, seq, delivered) = match message.info() {
            Ok(i) => (i.stream.to_string(), i.stream_sequence, i.delivered),
            Err(e) => return Err(format!("a message without JetStream metadata: {e}")),
        };
        if delivered > 1 {
            self.status.redelivered();
        }
        let key = format!("{stream}-{seq}");
        let work = async {
            let outcome = self.deliver(&message, &key).await.ok()?;
            Some(self.settle(&message, &key, &stream, seq, outcome).await)
        };
        // While the call runs, NATS is told the message is being worked on, so
        // it does not redeliver it to anyone else.
        let keepalive = async {
            let every = keepalive_every(self.ack_wait);
            loop {
                tokio::time::sleep(every).await;
                let _ = message.ack_with(AckKind::Progress).await;
            }
        };
        let settled = tokio::select! {
            s = work => s,
            _ = keepalive => unreachable!("the keepalive never ends"),
            () = stopped(self.cut.clone()) => {
                tracing::warn!(trigger = %self.trigger.key(), key, "message {key} was still being handled at the end of the stop's grace: handed back to NATS, it is delivered again at once (its call may have had effects: the key is the same)");
                None
            }
        };
        let Some(settled) = settled else {
            // Abandoned at the stop before its call began, or cut off at the
            // end of its grace: at once to the next consumer.
            return message
                .ack_with(AckKind::Nak(None))
                .await
                .map_err(|e| format!("cannot hand back message {key}: {e}"));
        };
        self.status.settled(settled);
        // A plain ack (or term): were it lost, NATS would redeliver the
        // message, which is then called again with the same key; nothing is
        // lost either way, and no round trip holds up the next message.
        let kind = if settled.published {
            AckKind::Ack
        } else {
            AckKind::Term
        };
        message
            .ack_with(kind)
            .await
            .map_err(|e| format!("cannot ack message {key}: {e}"))
    }

    /// Calls the target up to `maxRetries + 1` times, with backoff between
    /// attempts; the 2xx answer, or the last failure and the attempts made.
    async fn deliver(
        &self,
        message: &jetstream::Message,
        key: &str,
    ) -> Result<Result<Answer, (Failure, u32)>, Abandoned> {
        let attempts = self.trigger.max_retries + 1;
        let mut wait = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let failure = match self.call(message, key, attempt).await? {
                Ok(answer) => return Ok(Ok(answer)),
                Err(f) => f,
            };
            if attempt >= attempts {
                return Ok(Err((failure, attempt)));
            }
            // A stop during the backoff hands the message back.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stopped(self.stop.clone()) => return Err(Abandoned),
            }
            wait = (wait * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }

    async fn call(
        &self,
        message: &jetstream::Message,
        key: &str,
        attempt: u32,
    ) -> Result<Result<Answer, Failure>, Abandoned> {
        let req = Request::builder()
            .method(http::Method::POST)
            .uri("/")
            .body(Body::from(message.payload.clone()))
            .map_err(|e| Failure {
                status: None,
                body: String::new(),
                message: format!("cannot build the request: {e}"),
            });
        let mut req = match req {
            Ok(r) => r,
            Err(f) => return Ok(Err(f)),
        };
        let headers = req.headers_mut();
        if let Some(h) = &message.headers {
            for (name, values) in h.iter() {
                let Ok(name) = HeaderName::from_bytes(name.to_string().as_bytes()) else {
                    continue;
                };
                // What frames the request is Fusion's to set, not the
                // message's; and the trigger waits for the answer it
                // publishes: a message asking for an asynchronous call (of a
                // workflow, which would answer "running") is not heard.
                if [
                    http::header::CONTENT_LENGTH,
                    http::header::HOST,
                    http::header::TRANSFER_ENCODING,
                    http::header::CONNECTION,
                    HeaderName::from_static("x-async"),
                    HeaderName::from_static("x-fission-invoke-mode"),
                    http::header::HeaderName::from_static("prefer"),
                ]
                .contains(&name)
                {
                    continue;
                }
                for v in values {
                    if let Ok(v) = HeaderValue::from_str(v.as_str()) {
                        headers.append(name.clone(), v);
                    }
                }
            }
        }
        if !headers.contains_key(http::header::CONTENT_TYPE) {
            if let Ok(v) = HeaderValue::from_str(&self.trigger.content_type) {
                headers.insert(http::header::CONTENT_TYPE, v);
            }
        }
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        put(IDEMPOTENCY_KEY, key);
        put("X-Fusion-Topic", message.subject.as_str());
        put("X-Fusion-Attempt", &attempt.to_string());
        // NATS's count of this message's deliveries: above 1 after a crash, an
        // ack wait passed or a delete mid-call, where the attempts start again.
        let delivered = message.info().map_or(1, |i| i.delivered);
        put("X-Fusion-Delivery", &delivered.to_string());
        // As Fission's message-queue triggers send them.
        put("X-Fission-MQTrigger-Topic", message.subject.as_str());
        if let Some(t) = &self.trigger.resp_topic {
            put("X-Fission-MQTrigger-RespTopic", t);
        }
        if let Some(t) = &self.trigger.error_topic {
            put("X-Fission-MQTrigger-ErrorTopic", t);
        }
        // And as Fission's KEDA connectors (its triggers' `kind: keda`, as
        // for nats-jetstream) send them, where the message has none of its
        // own of those names.
        let keda = [
            ("Topic", Some(message.subject.as_str())),
            ("RespTopic", self.trigger.resp_topic.as_deref()),
            ("ErrorTopic", self.trigger.error_topic.as_deref()),
            // The connectors' default source.
            ("Source-Name", Some("KEDAConnector")),
        ];
        for (name, value) in keda {
            if headers.contains_key(name) {
                continue;
            }
            if let Some(Ok(v)) = value.map(HeaderValue::from_str) {
                headers.insert(name, v);
            }
        }
        // At the function's max scale the delivery waits its turn (within the
        // function's timeout) rather than spend an attempt on a 429; a stop
        // meanwhile hands the message back (a call that began is finished).
        let (on_leased, leased) = pool_manager::OnLeased::new();
        if matches!(self.target, Target::Function(_)) {
            req.extensions_mut().insert(on_leased);
        }
        let call = self.invoker.call_within(&self.target, req, "/", &[], None);
        tokio::pin!(call);
        let mut waiting = matches!(self.target, Target::Function(_)).then_some(leased);
        let resp = loop {
            tokio::select! {
                biased;
                resp = &mut call => break resp,
                _ = async { waiting.as_mut().expect("while waiting").await }, if waiting.is_some() => {
                    waiting = None;
                }
                () = stopped(self.stop.clone()), if waiting.is_some() => return Err(Abandoned),
            }
        };
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, ANSWER_LIMIT).await;
        Ok(match bytes {
            Ok(b) if status.is_success() => Ok(Answer {
                status: status.as_u16(),
                headers: parts.headers,
                body: b,
            }),
            Ok(b) => Err(Failure {
                status: Some(status.as_u16()),
                body: String::from_utf8_lossy(&b[..b.len().min(ERROR_BODY_LIMIT)]).into_owned(),
                message: format!("the {} answered {status}", self.target_noun()),
            }),
            Err(e) => Err(Failure {
                status: Some(status.as_u16()),
                body: String::new(),
                message: format!("cannot read the answer: {e}"),
            }),
        })
    }

    fn target_noun(&self) -> String {
        match &self.target {
            Target::Function(f) => format!("function {f:?}"),
            Target::Workflow(w) => format!("workflow {w:?}"),
        }
    }

    /// Publishes the outcome where the trigger says. An answer the response
    /// topic does not take (larger than NATS takes, or refused) is a failure,
    /// reported on the error topic.
    async fn settle(
        &self,
        message: &jetstream::Message,
        key: &str,
        stream: &str,
        seq: u64,
        outcome: Result<Answer, (Failure, u32)>,
    ) -> Settled {
        let Answer {
            status,
            headers: answer_headers,
            body,
        } = match outcome {
            Ok(answer) => answer,
            Err((failure, attempts)) => {
                return self
                    .report(message, key, stream, seq, failure, attempts)
                    .await
            }
        };
        let Some(topic) = &self.trigger.resp_topic else {
            return Settled {
                succeeded: true,
                published: true,
            };
        };
        let limit = self.js.client().server_info().max_payload;
        let refused = if body.len() > limit.saturating_sub(report::HEADERS_ROOM) {
            // NATS would refuse it every time.
            format!(
                "the answer ({} bytes) is larger than the NATS server takes in one message ({limit} bytes)",
                body.len()
            )
        } else {
            let mut h = HeaderMap::new();
            h.insert(IDEMPOTENCY_KEY, key);
            // JetStream drops a second copy (an ack lost, a redelivery).
            let id = format!("{}/{key}-response", self.outcome_tag);
            h.insert("Nats-Msg-Id", id.as_str());
            if let Some(ct) = answer_headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
            {
                h.insert("Content-Type", ct);
            }
            match publish(&self.js, topic, h, body).await {
                Ok(()) => {
                    return Settled {
                        succeeded: true,
                        published: true,
                    }
                }
                Err(e) => format!("the answer could not be published: {e}"),
            }
        };
        let failure = Failure {
            status: Some(status),
            body: String::new(),
            message: refused,
        };
        self.report(message, key, stream, seq, failure, 1).await
    }

    /// Logs a failed message and publishes its report to the error topic, if
    /// the trigger names one.
    async fn report(
        &self,
        message: &jetstream::Message,
        key: &str,
        stream: &str,
        seq: u64,
        failure: Failure,
        attempts: u32,
    ) -> Settled {
        tracing::info!(
            trigger = %self.trigger.key(), key, attempts,
            "message failed: {}", failure.message
        );
        let mut settled = Settled {
            succeeded: false,
            published: true,
        };
        let Some(topic) = &self.trigger.error_topic else {
            return settled;
        };
        let limit = self.js.client().server_info().max_payload;
        let doc = report::render(
            &report::Failed {
                status: failure.status,
                body: &failure.body,
                message: &failure.message,
                attempts,
                trigger: &self.trigger.name,
                namespace: &self.trigger.namespace,
                topic: message.subject.as_str(),
                stream,
                sequence: seq,
                key,
            },
            &message.payload,
            limit.saturating_sub(report::HEADERS_ROOM),
        );
        let mut h = HeaderMap::new();
        h.insert(IDEMPOTENCY_KEY, key);
        let id = format!("{}/{key}-error", self.outcome_tag);
        h.insert("Nats-Msg-Id", id.as_str());
        h.insert("Content-Type", "application/json");
        if let Err(e) = publish(&self.js, topic, h, Bytes::from(doc)).await {
            tracing::warn!(
                trigger = %self.trigger.key(), key,
                "the failure of message {key} is not reported ({e}): the message is terminated, not redelivered"
            );
            settled.published = false;
        }
        settled
    }
}

/// The pauses before each publish sent again after its ack did not come.
const PUBLISH_RETRIES: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Publishes to a subject: through JetStream (waiting for the stream's ack)
/// when a stream holds it, else as a plain NATS message, flushed.
pub(super) async fn publish(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(), String> {
    use async_nats::jetstream::context::PublishErrorKind;
    let subject = subject.to_string();
    // An ack that does not come (NATS restarting, a leader moving) says
    // nothing of whether the stream stored the message: sent again, under
    // the same Nats-Msg-Id, it is stored once either way.
    let mut tries = PUBLISH_RETRIES.iter();
    let acked = loop {
        let sent = js
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await;
        let acked = match sent {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match (&acked, tries.next()) {
            (Err(e), Some(pause))
                if matches!(
                    e.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                ) && headers.get("Nats-Msg-Id").is_some() =>
            {
                tokio::time::sleep(*pause).await;
            }
            _ => break acked,
        }
    };
    match acked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
            let client = js.client();
            client
                .publish_with_headers(subject.clone(), headers, body)
                .await
                .map_err(|e| format!("cannot publish to {subject:?}: {e}"))?;
            client
                .flush()
                .await
                .map_err(|e| format!("cannot publish to {subject:?}: {e}"))
        }
        Err(e) => Err(format!("cannot publish to {subject:?}: {e}")),
    }
}

/// Deletes the trigger's durable consumer (when the trigger is deleted or
/// moves to another subject or stream); best effort, bounded in time.
/// What a consumer Fusion made for trigger `key` says of itself: how a
/// delete knows the consumer is its own to remove.
fn description(key: &str, incarnation: Option<&str>) -> String {
    match incarnation {
        Some(i) => format!("Fusion message-queue trigger {key} ({i})"),
        None => format!("Fusion message-queue trigger {key}"),
    }
}

fn nats_policy(p: DeliverPolicy) -> jetstream::consumer::DeliverPolicy {
    match p {
        DeliverPolicy::All => jetstream::consumer::DeliverPolicy::All,
        DeliverPolicy::New => jetstream::consumer::DeliverPolicy::New,
        DeliverPolicy::Last => jetstream::consumer::DeliverPolicy::Last,
        DeliverPolicy::LastPerSubject => jetstream::consumer::DeliverPolicy::LastPerSubject,
    }
}

/// Whether a consumer's description says Fusion made it for trigger `key`,
/// in any life of that name.
fn made_for(said: &str, key: &str) -> bool {
    let plain = description(key, None);
    said == plain
        || said
            .strip_prefix(&plain)
            .is_some_and(|r| r.starts_with(" ("))
}

/// Deletes trigger `key`'s consumer, if it made it: one that was there
/// before (a consumer of the user's, named with `--metadata consumer=`) is
/// left alone.
pub(super) async fn delete_consumer(
    topic: String,
    settings: Settings,
    key: &str,
) -> Result<(), String> {
    use jetstream::context::{ConsumerInfoErrorKind, GetStreamByNameErrorKind, GetStreamErrorKind};
    use jetstream::stream::ConsumerErrorKind;
    let work = async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(settings.url.as_str())
            .await
            .map_err(|e| Unreached(e.to_string()))?;
        let js = jetstream::new(client);
        let stream = match &settings.stream {
            Some(s) => s.clone(),
            None => js
                .stream_by_subject(topic.as_str())
                .await
                .map_err(|e| match e.kind() {
                    GetStreamByNameErrorKind::Request => Unreached(e.to_string()),
                    _ => Kept(e.to_string()),
                })?,
        };
        let stream = js.get_stream(&stream).await.map_err(|e| match e.kind() {
            GetStreamErrorKind::Request => Unreached(e.to_string()),
            _ => Kept(e.to_string()),
        })?;
        let info = stream
            .consumer_info(&settings.consumer)
            .await
            .map_err(|e| match e.kind() {
                ConsumerInfoErrorKind::Request
                | ConsumerInfoErrorKind::TimedOut
                | ConsumerInfoErrorKind::NoResponders
                | ConsumerInfoErrorKind::Offline => Unreached(e.to_string()),
                _ => Kept(e.to_string()),
            })?;
        let ours = description(key, settings.incarnation.as_deref());
        if info.config.description.as_deref() != Some(ours.as_str()) {
            return Err(Kept(format!(
                "it is not the one Fusion made for trigger {key} (its description is {:?})",
                info.config.description.as_deref().unwrap_or_default()
            )));
        }
        stream
            .delete_consumer(&settings.consumer)
            .await
            .map_err(|e| match e.kind() {
                ConsumerErrorKind::Request | ConsumerErrorKind::TimedOut => {
                    Unreached(e.to_string())
                }
                _ => Kept(e.to_string()),
            })?;
        Ok::<(), NotDeleted>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), work).await {
        Ok(Ok(())) => Ok(()),
        // NATS away: worth trying again.
        Ok(Err(Unreached(e))) => Err(e),
        Err(_) => Err("no answer from NATS within 5s".into()),
        // Nothing (of Fusion's) to delete: said, and done.
        Ok(Err(Kept(e))) => {
            tracing::info!(consumer = %settings.consumer, "consumer not deleted: {e}");
            Ok(())
        }
    }
}

/// Why a consumer was not deleted.
enum NotDeleted {
    /// NATS could not be reached.
    Unreached(String),
    /// It is not there, or not Fusion's.
    Kept(String),
}
use NotDeleted::{Kept, Unreached};

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn reconnection_backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..7).map(|_| b.next()).collect();
        assert_eq!(waits[0], Duration::from_millis(250));
        assert_eq!(waits[1], Duration::from_millis(500));
        assert_eq!(waits[5], Duration::from_secs(5));
        assert_eq!(waits[6], Duration::from_secs(5));
    }
}
