//! Message-queue triggers (`mqt`): messages per second from NATS JetStream
//! through a python hello function, next to the same function called over HTTP
//! through the router, batch by batch in the same run and at the same
//! concurrency. A batch of NATS messages is published first (to a subject of
//! its own), then a trigger is created on it and the clock runs until the
//! trigger has settled (called and acked) every message. Issue 9's target: at
//! least 70% of the HTTP rate (reported, never asserted). Needs `nats-server`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::client::{run_batch, Probe};
use crate::ctx::{create_env, create_fn, wait_pool, Ctx};
use crate::report::target;
use crate::stats::round3;

/// NATS rate / HTTP rate, at least (issue 9).
pub const MIN_RATIO: f64 = 0.7;

const ENV: &str = "mqt-python";
const HELLO: &str = "mqt-hello";
const CODE: &str = "def main():\n    return \"hello\\n\"\n";
const BODY: &str = "{\"order\": 1}";

pub struct MqtResult {
    pub messages: usize,
    pub concurrency: usize,
    /// Messages per second of each NATS batch, and requests per second of each
    /// HTTP batch.
    pub nats: Vec<f64>,
    pub http: Vec<f64>,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

impl MqtResult {
    pub fn ratio(&self) -> Option<f64> {
        Some(median(&self.nats)? / median(&self.http)?)
    }

    pub fn json(&self) -> Value {
        json!({
            "messages_per_batch": self.messages,
            "concurrency": self.concurrency,
            "nats_msgs_per_s": {"median": median(&self.nats).map(round3), "batches": self.nats.iter().copied().map(round3).collect::<Vec<_>>()},
            "http_req_per_s": {"median": median(&self.http).map(round3), "batches": self.http.iter().copied().map(round3).collect::<Vec<_>>()},
            "target": target("mqt rate / HTTP rate", "python", MIN_RATIO, self.ratio(), false),
        })
    }

    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let ratio = self.ratio();
        format!(
            "message-queue trigger (python hello, {} per batch, concurrency {}, {} batches)\n  NATS JetStream -> function  {} msg/s (median)\n  HTTP -> router -> function  {} req/s (median)\n  ratio {} (target at least {MIN_RATIO}: {})\n",
            self.messages,
            self.concurrency,
            self.nats.len(),
            f(median(&self.nats)),
            f(median(&self.http)),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            match ratio {
                Some(r) if r >= MIN_RATIO => "pass",
                Some(_) => "FAIL",
                None => "-",
            }
        )
    }
}

/// A `nats-server -js` on a free loopback port, its store in a temporary
/// directory; killed on drop.
struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    async fn start() -> Result<NatsServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (apt-get install nats-server)")?;
        let s = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {} within 20 s", s.url);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(s)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(
    ctx: &mut Ctx,
    messages: usize,
    concurrency: usize,
    batches: usize,
) -> Result<MqtResult> {
    let nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url.as_str())
        .await
        .context("cannot connect to nats-server")?;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        ..Default::default()
    })
    .await
    .context("cannot create the stream")?;

    create_env(ctx, ENV, "python", 3).await?;
    let pkg = ctx.http.upload(&ctx.api, "hello.py", CODE).await?;
    create_fn(ctx, HELLO, ENV, &pkg, 64, 64).await?;
    wait_pool(ctx, ENV, 1).await?;
    let probe = Probe::post(
        format!("{}/fission-function/{HELLO}", ctx.router).parse()?,
        "application/json",
        Bytes::from_static(BODY.as_bytes()),
        StatusCode::OK,
    );
    // Warm-up: the function specialized, its instances and connections up.
    run_batch(&ctx.http, &probe, concurrency, 200.max(concurrency)).await?;

    let mut result = MqtResult {
        messages,
        concurrency,
        nats: Vec::new(),
        http: Vec::new(),
    };
    for b in 0..batches {
        let (_, wall) = run_batch(&ctx.http, &probe, concurrency, messages).await?;
        result.http.push(messages as f64 / wall.as_secs_f64());

        let subject = format!("bench.b{b}");
        let mut acks = Vec::with_capacity(messages);
        for _ in 0..messages {
            acks.push(
                js.publish(subject.clone(), Bytes::from_static(BODY.as_bytes()))
                    .await?,
            );
        }
        for a in acks {
            a.await.context("publish ack")?;
        }
        let name = format!("bench-b{b}");
        let trigger = json!({
            "name": name, "function": HELLO, "topic": subject,
            "concurrency": concurrency,
            "metadata": {"natsUrl": nats.url, "stream": "BENCH"},
        });
        let started = Instant::now();
        ctx.http
            .api(
                Method::POST,
                &format!("{}/v1/mqtriggers", ctx.api),
                Some(&trigger),
            )
            .await?;
        let url = format!("{}/v1/mqtriggers/{name}", ctx.api);
        let deadline = started + Duration::from_secs(300);
        loop {
            let t = ctx.http.api(Method::GET, &url, None).await?;
            let st = &t["status"];
            if st["failed"].as_u64().unwrap_or(0) > 0 {
                bail!("trigger {name}: a message failed: {st}");
            }
            if st["succeeded"].as_u64().unwrap_or(0) >= messages as u64 {
                break;
            }
            if Instant::now() > deadline {
                bail!("trigger {name}: not done within 300 s: {st}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        result
            .nats
            .push(messages as f64 / started.elapsed().as_secs_f64());
        ctx.http.api(Method::DELETE, &url, None).await?;
        eprintln!(
            "fusion-bench: mqt batch {b}: nats {:.0} msg/s, http {:.0} req/s",
            result.nats[b], result.http[b]
        );
    }
    Ok(result)
}
