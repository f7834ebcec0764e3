//! A real `nats-server` with JetStream for the message-queue trigger tests: on
//! a free loopback port, its store in a temporary directory, killed on drop;
//! and a small blocking client over async-nats (streams, publish, read back).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: Option<async_nats::Client>,
}

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub sequence: u64,
    pub headers: HashMap<String, String>,
    pub payload: String,
}

/// A loopback port nothing listens on (now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Nats {
    pub fn start() -> Nats {
        Nats::on_port(free_port(), true)
    }

    /// A server whose address is known but which is not started yet (`launch`).
    pub fn stopped() -> Nats {
        Nats::on_port(free_port(), false)
    }

    fn on_port(port: u16, launch: bool) -> Nats {
        let mut n = Nats {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir: tempfile::tempdir().expect("temp dir"),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            client: None,
        };
        if launch {
            n.launch();
        }
        n
    }

    /// Starts `nats-server -js` on this port and store, and waits until a
    /// client connects.
    pub fn launch(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (apt-get install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = self.url.clone();
        loop {
            let ready = self.rt.block_on(async {
                let c = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .connect(url.as_str())
                    .await
                    .ok()?;
                // JetStream is up before the server listens for clients.
                c.flush().await.ok()?;
                Some(c)
            });
            if let Some(c) = ready {
                self.client = Some(c);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {url}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.client = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn js(&self) -> jetstream::Context {
        let _in_runtime = self.rt.enter();
        jetstream::new(self.client.clone().expect("nats-server is running"))
    }

    pub fn create_stream(&self, name: &str, subjects: &[&str]) {
        let js = self.js();
        let config = jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.rt
            .block_on(js.create_stream(config))
            .expect("create stream");
    }

    /// Deletes a stream, its messages and its consumers with it.
    pub fn delete_stream(&self, name: &str) {
        let js = self.js();
        self.rt
            .block_on(js.delete_stream(name))
            .expect("delete stream");
    }

    /// A durable pull consumer of the user's own, made outside Fusion.
    pub fn create_consumer(&self, stream: &str, name: &str) {
        let js = self.js();
        self.rt.block_on(async move {
            let s = js.get_stream(stream).await.expect("stream");
            s.create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(name.to_string()),
                description: Some("the user's".into()),
                ..Default::default()
            })
            .await
            .expect("create consumer");
        });
    }

    /// Publishes through JetStream and waits for the stream's ack; the
    /// message's stream sequence.
    pub fn publish(&self, subject: &str, payload: &str, headers: &[(&str, &str)]) -> u64 {
        let js = self.js();
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        let (subject, payload) = (subject.to_string(), payload.to_string());
        self.rt.block_on(async move {
            js.publish_with_headers(subject, h, payload.into())
                .await
                .expect("publish")
                .await
                .expect("publish ack")
                .sequence
        })
    }

    /// Every message of `stream` on `subject`, in order.
    pub fn messages(&self, stream: &str, subject: &str) -> Vec<Stored> {
        let js = self.js();
        self.rt.block_on(async move {
            let mut s = js.get_stream(stream).await.expect("stream");
            let state = s.info().await.expect("stream info").state.clone();
            let mut out = Vec::new();
            if state.messages == 0 {
                return out;
            }
            for seq in state.first_sequence..=state.last_sequence {
                let Ok(m) = s.get_raw_message(seq).await else {
                    continue;
                };
                if m.subject.as_str() != subject {
                    continue;
                }
                let headers = m
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            v.first()
                                .map(|v| v.as_str().to_string())
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                out.push(Stored {
                    subject: m.subject.to_string(),
                    sequence: m.sequence,
                    headers,
                    payload: String::from_utf8_lossy(&m.payload).into_owned(),
                });
            }
            out
        })
    }

    /// The names of the consumers of `stream`.
    pub fn consumers(&self, stream: &str) -> Vec<String> {
        use futures_util::StreamExt;
        let js = self.js();
        self.rt.block_on(async move {
            let s = js.get_stream(stream).await.expect("stream");
            let names: Vec<_> = s.consumer_names().collect().await;
            names.into_iter().filter_map(Result::ok).collect()
        })
    }
}

/// Where a durable consumer stands, as NATS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerState {
    /// Messages delivered (the consumer's sequence).
    pub delivered: u64,
    /// Delivered and neither acked nor terminated yet.
    pub ack_pending: usize,
    /// Messages delivered more than once.
    pub redelivered: usize,
    /// Messages not delivered yet.
    pub pending: u64,
}

impl Nats {
    /// As `create_stream`, taking no message larger than `max_message_size`.
    pub fn create_stream_limited(&self, name: &str, subjects: &[&str], max_message_size: i32) {
        let js = self.js();
        let config = jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            max_message_size,
            ..Default::default()
        };
        self.rt
            .block_on(js.create_stream(config))
            .expect("create stream");
    }

    /// As `publish`, with any bytes.
    pub fn publish_bytes(&self, subject: &str, payload: &[u8]) -> u64 {
        let js = self.js();
        let (subject, payload) = (subject.to_string(), payload.to_vec());
        self.rt.block_on(async move {
            js.publish(subject, payload.into())
                .await
                .expect("publish")
                .await
                .expect("publish ack")
                .sequence
        })
    }

    /// Pulls what durable consumer `consumer` of `stream` gives another
    /// client within `wait`, each message's payload and its delivery count,
    /// and hands every one back at once (a NAK).
    pub fn pull_and_hand_back(
        &self,
        stream: &str,
        consumer: &str,
        wait: std::time::Duration,
    ) -> Vec<(String, i64)> {
        use futures_util::StreamExt;
        let js = self.js();
        self.rt.block_on(async move {
            let s = js.get_stream(stream).await.expect("stream");
            let c: async_nats::jetstream::consumer::PullConsumer =
                s.get_consumer(consumer).await.expect("consumer");
            let mut batch = c
                .batch()
                .max_messages(100)
                .expires(wait)
                .messages()
                .await
                .expect("a pull");
            let mut got = Vec::new();
            while let Some(Ok(m)) = batch.next().await {
                let delivered = m.info().map(|i| i.delivered).unwrap_or_default();
                got.push((String::from_utf8_lossy(&m.payload).into_owned(), delivered));
                m.ack_with(async_nats::jetstream::AckKind::Nak(None))
                    .await
                    .expect("a nak");
            }
            got
        })
    }

    /// What NATS says of consumer `consumer` of `stream`.
    pub fn consumer_state(&self, stream: &str, consumer: &str) -> ConsumerState {
        let js = self.js();
        self.rt.block_on(async move {
            let s = js.get_stream(stream).await.expect("stream");
            let i = s.consumer_info(consumer).await.expect("consumer info");
            ConsumerState {
                delivered: i.delivered.consumer_sequence,
                ack_pending: i.num_ack_pending,
                redelivered: i.num_redelivered,
                pending: i.num_pending,
            }
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
