//! Restate side by side (`restate`): the same four workloads on Fusion and on
//! Restate (a durable-execution engine users pick instead), in one run, each
//! step calling the same python echo function over HTTP through Fusion's router:
//!
//! - W1: one HTTP step; W2: ten HTTP steps in a row; W3: ten HTTP steps in
//!   parallel, then a join; W4: W1 under `--clients` clients (runs per second).
//!
//! Fusion runs them as Fission Workflows YAML; Restate as the `Bench` service of
//! bench/restate/service.js (its TypeScript SDK, each step a `ctx.run`), served
//! by `restate-server` from its npm package. The harness runs `npm ci` there when
//! `node_modules` is missing, starts restate-server (its data in a temporary
//! directory) and the service on free loopback ports, each in a process group of
//! its own, registers the service with Restate's admin API, measures both
//! engines with the same client, batch by batch alternately, and stops both
//! groups. See bench/README.md ("Restate side by side").

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::client::{run_batch, Probe};
use crate::ctx::{create_env, create_fn, wait_pool, Ctx, Leftovers};
use crate::report::target;
use crate::stats::{round3, Summary};

pub const ENV: &str = "restate-python";
pub const ECHO: &str = "bench-echo";
/// What every run is invoked with, and what every step sends to the echo function.
pub const INPUT: &str = r#"{"i":1}"#;
/// Steps of W2 and W3.
pub const STEPS: usize = 10;
/// Issue 10's targets side by side with Restate (reported, never asserted): the
/// p50 of W1-W3 at most these (ms), and W4 at least this many times Restate's.
pub const MAX_P50_MS: [f64; 3] = [1.0, 4.0, 2.5];
pub const MIN_W4_RATIO: f64 = 3.0;
const WHAT: [&str; 4] = [
    "W1: one HTTP step",
    "W2: ten HTTP steps in a row",
    "W3: ten HTTP steps in parallel, then a join",
    "W4: W1 under many clients",
];

/// One engine's figures.
pub struct EngineFigures {
    /// W1-W3, one client, run after run.
    pub latency: [Summary; 3],
    /// W1 under `clients` clients.
    pub w4: Summary,
    pub w4_rps: f64,
    /// The engine's CPU (server; for Restate, restate-server and the service) per
    /// run of W1-W4, in ms.
    pub cpu_ms: [f64; 4],
}

pub struct RestateResult {
    pub clients: usize,
    pub runs: usize,
    pub w4_requests: usize,
    pub restate_version: String,
    pub sdk_version: String,
    pub fusion: EngineFigures,
    pub restate: EngineFigures,
}

/// Fusion's W1 (`n` = 1), W2 (`chain`) or W3 (ten in parallel and a noop join):
/// every step calls the echo function with the same literal JSON body.
pub fn workload_yaml(n: usize, chain: bool) -> String {
    let output = if chain || n == 1 {
        format!("s{}", n - 1)
    } else {
        "join".to_string()
    };
    let mut y = format!("apiVersion: 1\noutput: {output}\ntasks:\n");
    for i in 0..n {
        let _ = writeln!(
            y,
            "  s{i}:\n    run: {ECHO}\n    inputs:\n      body: {INPUT}"
        );
        if chain && i > 0 {
            let _ = writeln!(y, "    requires: [s{}]", i - 1);
        }
    }
    if !chain && n > 1 {
        let all: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let _ = writeln!(
            y,
            "  join:\n    run: noop\n    requires: [{}]",
            all.join(", ")
        );
    }
    y
}

fn restate_dir() -> PathBuf {
    crate::workspace_root().join("bench/restate")
}

/// The restate-server binary npm installed for this platform.
fn server_binary(dir: &Path) -> Result<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        a => bail!("restate-server has no npm package for {a}"),
    };
    Ok(dir.join(format!(
        "node_modules/@restatedev/restate-server-linux-{arch}/bin/restate-server"
    )))
}

/// `npm ci` in bench/restate when its node_modules is missing (no install
/// scripts: the only one is an analytics ping).
fn ensure_installed(dir: &Path) -> Result<PathBuf> {
    if !dir.join("node_modules").is_dir() {
        eprintln!("fusion-bench: restate: npm ci in {}", dir.display());
        let status = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .status()
            .context("cannot run npm (the restate part needs node and npm)")?;
        if !status.success() {
            bail!("npm ci in {} failed: {status}", dir.display());
        }
    }
    let bin = server_binary(dir)?;
    if !bin.is_file() {
        bail!(
            "no restate-server at {}: remove {}/node_modules and run again",
            bin.display(),
            dir.display()
        );
    }
    Ok(bin)
}

/// `n` free loopback ports (bound together, so they differ, then released).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("cannot bind a loopback port")?;
    let mut ports = [0; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// A process started in a process group of its own, whose whole group is
/// stopped on `stop` (and on drop).
struct Group {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Group {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Group> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Group {
            name,
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails when the process has exited, with the end of its log.
    fn check_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "{} exited ({status}); the end of its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM to the group, SIGKILL to it after `grace`; answers the group's
    /// processes still alive 5 s later.
    fn stop(&mut self, grace: Duration) -> Vec<u32> {
        let Some(mut child) = self.child.take() else {
            return Vec::new();
        };
        let pgid = child.id();
        let signal = |sig: &str| {
            // `kill` keeps this crate free of unsafe code (the workspace denies it).
            let _ = Command::new("kill")
                .args([sig, "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !group_members(pgid).is_empty() || !matches!(child.try_wait(), Ok(Some(_))) {
            eprintln!(
                "warning: {} did not stop within {grace:?}; killing its group",
                self.name
            );
            signal("-KILL");
        }
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = group_members(pgid);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = group_members(pgid);
        }
        left
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// The live (not zombie) processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the parenthesised name: state, ppid, pgrp.
            let f: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, r)| r.split_whitespace().collect());
            f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && crate::server::alive(*pid)
        })
        .collect()
}

/// Polls `f` until it succeeds or `secs` pass (answers the last error then).
async fn until<T, F, Fut>(secs: u64, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{what}: not within {secs} s")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn post(url: String, status: StatusCode) -> Result<Probe> {
    Ok(Probe::post(
        url.parse()?,
        "application/json",
        Bytes::from_static(INPUT.as_bytes()),
        status,
    ))
}

/// Sets both engines up, measures them, stops Restate; answers the figures and
/// what outlived Restate's process groups.
pub async fn run(ctx: &mut Ctx) -> Result<(RestateResult, Leftovers)> {
    let dir = restate_dir();
    let bin = ensure_installed(&dir)?;
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let sdk_version = std::fs::read_to_string(dir.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|p| {
            p["dependencies"]["@restatedev/restate-sdk"]
                .as_str()
                .map(String::from)
        })
        .unwrap_or_default();

    create_echo(ctx).await?;
    for (name, n, chain) in [
        ("bench-w1", 1, true),
        ("bench-w2", STEPS, true),
        ("bench-w3", STEPS, false),
    ] {
        crate::workflows::create_workflow(ctx, name, &workload_yaml(n, chain)).await?;
    }
    let echo_url = format!("{}/fission-function/{ECHO}", ctx.router);

    // Restate and the service, each in a process group of its own.
    let tmp = tempfile::Builder::new()
        .prefix("fusion-bench-restate-")
        .tempdir()?;
    let [ingress, admin, node, svc] = free_ports::<4>()?;
    let mut cmd = Command::new(&bin);
    cmd.args(["--no-logo", "--node-name", "bench", "--base-dir"])
        .arg(tmp.path().join("data"))
        // Its invoker makes directories of its own in the temporary directory
        // (`invoker-<id>`) and leaves them: in this run's, they go with it.
        .env("TMPDIR", tmp.path())
        .env("RESTATE_LISTEN_MODE", "tcp")
        .env("RESTATE_DISABLE_TELEMETRY", "true")
        .env("RESTATE_BIND_ADDRESS", format!("127.0.0.1:{node}"))
        .env(
            "RESTATE_ADVERTISED_ADDRESS",
            format!("http://127.0.0.1:{node}/"),
        )
        .env(
            "RESTATE_INGRESS__BIND_ADDRESS",
            format!("127.0.0.1:{ingress}"),
        )
        .env("RESTATE_ADMIN__BIND_ADDRESS", format!("127.0.0.1:{admin}"));
    let mut server = Group::spawn("restate-server", cmd, tmp.path().join("restate.log"))?;
    let mut cmd = Command::new("node");
    cmd.arg("service.js")
        .current_dir(&dir)
        .env("ECHO_URL", &echo_url)
        .env("PORT", svc.to_string());
    let mut service = Group::spawn(
        "the restate service (node)",
        cmd,
        tmp.path().join("service.log"),
    )?;

    let measured = async {
        let admin_url = format!("http://127.0.0.1:{admin}");
        let http = ctx.http.clone();
        until(60, "restate-server's admin API", || {
            let (http, url) = (http.clone(), format!("{admin_url}/health"));
            let running = server.check_running();
            async move {
                running?;
                let (s, _) = http.send(Method::GET, &url, Bytes::new(), None).await?;
                if !s.is_success() {
                    bail!("GET {url}: {s}");
                }
                Ok(())
            }
        })
        .await?;
        let body = json!({ "uri": format!("http://127.0.0.1:{svc}"), "force": true }).to_string();
        until(30, "registering the service with restate", || {
            let (http, url, body) = (
                http.clone(),
                format!("{admin_url}/deployments"),
                body.clone(),
            );
            let running = service.check_running();
            async move {
                running?;
                let (s, b) = http
                    .send(
                        Method::POST,
                        &url,
                        Bytes::from(body),
                        Some("application/json"),
                    )
                    .await?;
                if !s.is_success() {
                    bail!("POST {url}: {s}: {}", String::from_utf8_lossy(&b).trim());
                }
                Ok(())
            }
        })
        .await?;
        let ing = format!("http://127.0.0.1:{ingress}");
        let restate = [
            post(format!("{ing}/Bench/w1"), StatusCode::OK)?,
            post(format!("{ing}/Bench/w2"), StatusCode::OK)?,
            post(format!("{ing}/Bench/w3"), StatusCode::OK)?,
        ];
        let wf = |n: usize, s| post(format!("{}/fission-function/bench-w{n}", ctx.router), s);
        let fusion = [
            wf(1, StatusCode::OK)?,
            wf(2, StatusCode::OK)?,
            wf(3, StatusCode::NO_CONTENT)?,
        ];
        until(30, "the first restate run", || {
            let (http, p) = (http.clone(), restate[0].clone());
            async move { http.timed(&p).await }
        })
        .await?;
        let restate_pids = [server.pid(), service.pid()];
        measure(ctx, &fusion, &restate, restate_pids).await
    }
    .await;
    let mut left = Leftovers::default();
    for g in [&mut service, &mut server] {
        left.pids.extend(g.stop(Duration::from_secs(15)));
    }
    let (fusion, restate) = measured?;
    let a = &ctx.args;
    Ok((
        RestateResult {
            clients: a.clients,
            runs: a.restate_runs,
            w4_requests: a.restate_w4_requests,
            restate_version: version,
            sdk_version,
            fusion,
            restate,
        },
        left,
    ))
}

/// Warm-up, then `--batches` batches; in each, W1, W2, W3 (`--restate-runs` /
/// batches runs one after another) and W4 (`--restate-w4-requests` / batches at
/// `--clients`), each on both engines, which goes first alternating.
async fn measure(
    ctx: &Ctx,
    fusion: &[Probe; 3],
    restate: &[Probe; 3],
    restate_pids: [u32; 2],
) -> Result<(EngineFigures, EngineFigures)> {
    let a = &ctx.args;
    let clients = a.clients.max(1);
    let batches = a.batches.max(1);
    let per_batch = (a.restate_runs / batches).max(1);
    let w4_batch = (a.restate_w4_requests / batches).max(clients);
    let engines = [fusion, restate];
    let ticks = |e: usize| -> u64 {
        if e == 0 {
            Ctx::ticks([ctx.server_pid])[0]
        } else {
            Ctx::ticks(restate_pids).iter().sum()
        }
    };
    eprintln!("fusion-bench: restate: warm-up");
    for probes in engines {
        for p in probes {
            run_batch(&ctx.http, p, 1, 20).await?;
        }
        run_batch(&ctx.http, &probes[0], clients, clients * 10).await?;
    }
    // [engine][workload]
    let mut samples: [[Vec<Duration>; 4]; 2] = Default::default();
    let mut cpu = [[0u64; 4]; 2];
    let mut w4_wall = [Duration::ZERO; 2];
    for b in 0..batches {
        eprintln!("fusion-bench: restate: batch {}/{batches}", b + 1);
        for w in 0..4 {
            for k in 0..2 {
                let e = (k + b + w) % 2;
                let (p, c, n) = match w {
                    3 => (&engines[e][0], clients, w4_batch),
                    _ => (&engines[e][w], 1, per_batch),
                };
                let before = ticks(e);
                let (s, wall) = run_batch(&ctx.http, p, c, n)
                    .await
                    .with_context(|| format!("{} on {}", WHAT[w], ["fusion", "restate"][e]))?;
                cpu[e][w] += ticks(e).saturating_sub(before);
                samples[e][w].extend(s);
                if w == 3 {
                    w4_wall[e] += wall;
                }
            }
        }
    }
    let figures = |e: usize| -> Result<EngineFigures> {
        let s = |w: usize| Summary::of(&samples[e][w]).ok_or_else(|| anyhow!("no samples"));
        Ok(EngineFigures {
            latency: [s(0)?, s(1)?, s(2)?],
            w4: s(3)?,
            w4_rps: samples[e][3].len() as f64 / w4_wall[e].as_secs_f64(),
            cpu_ms: std::array::from_fn(|w| ctx.us_per(cpu[e][w], samples[e][w].len()) / 1e3),
        })
    };
    Ok((figures(0)?, figures(1)?))
}

impl EngineFigures {
    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (w, key) in ["w1", "w2", "w3"].iter().enumerate() {
            let mut v = self.latency[w].json();
            v["cpu_ms_per_run"] = json!(round3(self.cpu_ms[w]));
            m.insert((*key).into(), v);
        }
        let mut v = self.w4.json();
        v["runs_per_second"] = json!(round3(self.w4_rps));
        v["cpu_ms_per_run"] = json!(round3(self.cpu_ms[3]));
        m.insert("w4".into(), v);
        Value::Object(m)
    }
}

impl RestateResult {
    pub fn json(&self) -> Value {
        let p50_ratios =
            [0, 1, 2].map(|w| round3(self.fusion.latency[w].p50 / self.restate.latency[w].p50));
        json!({
            "workloads": WHAT,
            "clients_w4": self.clients,
            "runs_per_workload": self.runs,
            "w4_requests": self.w4_requests,
            "input": INPUT,
            "echo": "python echo (flask, request.get_json()), concurrency 64 on one instance, called through Fusion's router by both engines",
            "fusion_workflows": "Fission Workflows YAML: each step a task calling the echo function with a literal JSON body; W3's join a noop task requiring the ten",
            "restate_server": self.restate_version,
            "restate_sdk": self.sdk_version,
            "restate_service": "bench/restate/service.js: each step a ctx.run calling the echo function with fetch; W3 joins with RestatePromise.all; restate-server with its default (durable) configuration",
            "restate_cpu": "restate-server plus the node service",
            "fusion": self.fusion.json(),
            "restate": self.restate.json(),
            "ratios": {
                "p50_fusion_over_restate": p50_ratios,
                "w4_fusion_over_restate": round3(self.w4_ratio()),
            },
        })
    }

    fn w4_ratio(&self) -> f64 {
        self.fusion.w4_rps / self.restate.w4_rps
    }

    pub fn targets(&self) -> Vec<Value> {
        let mut t: Vec<Value> = (0..3)
            .map(|w| {
                target(
                    &format!("W{} p50 (ms), side by side with Restate", w + 1),
                    "engine",
                    MAX_P50_MS[w],
                    Some(self.fusion.latency[w].p50),
                    true,
                )
            })
            .collect();
        t.push(target(
            "W4 runs/s, Fusion / Restate",
            "engine",
            MIN_W4_RATIO,
            Some(self.w4_ratio()),
            false,
        ));
        t
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nSide by side with Restate ({}, SDK {}), each step an HTTP echo call\n  {:<44} {:>10} {:>8} {:>8} | {:>11} {:>8} {:>8} | {:>9}",
            self.restate_version,
            self.sdk_version,
            "ms",
            "Fusion p50",
            "p95",
            "p99",
            "Restate p50",
            "p95",
            "p99",
            "p50 ratio"
        );
        for (w, what) in WHAT.iter().take(3).enumerate() {
            let (f, r) = (&self.fusion.latency[w], &self.restate.latency[w]);
            let _ = writeln!(
                out,
                "  {:<44} {:>10.3} {:>8.3} {:>8.3} | {:>11.3} {:>8.3} {:>8.3} | {:>8.2}x",
                what,
                f.p50,
                f.p95,
                f.p99,
                r.p50,
                r.p95,
                r.p99,
                f.p50 / r.p50
            );
        }
        let (f, r) = (&self.fusion.w4, &self.restate.w4);
        let _ = writeln!(
            out,
            "  {:<44} {:>10.3} {:>8.3} {:>8.3} | {:>11.3} {:>8.3} {:>8.3} |",
            format!("W4: W1 under {} clients", self.clients),
            f.p50,
            f.p95,
            f.p99,
            r.p50,
            r.p95,
            r.p99,
        );
        let _ = writeln!(
            out,
            "  {:<44} {:>10.0} runs/s          | {:>11.0} runs/s          | {:>8.2}x",
            "W4 throughput",
            self.fusion.w4_rps,
            self.restate.w4_rps,
            self.w4_ratio()
        );
        let _ = writeln!(
            out,
            "  {:<44} {:>10} | {:>11} (restate-server + node)",
            "engine CPU ms per run, W1/W2/W3/W4",
            self.fusion.cpu_ms.map(|c| format!("{c:.2}")).join("/"),
            self.restate.cpu_ms.map(|c| format!("{c:.2}")).join("/"),
        );
        out
    }
}

/// The echo function the workloads call (both engines), one specialized instance.
pub async fn create_echo(ctx: &mut Ctx) -> Result<()> {
    let pkg = ctx
        .http
        .upload(&ctx.api, "echo.py", crate::sfn::ECHO_PY)
        .await?;
    create_env(ctx, ENV, "python", 1).await?;
    wait_pool(ctx, ENV, 1).await?;
    create_fn(ctx, ECHO, ENV, &pkg, 64, 64).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_chain_or_join_ten_echo_steps() {
        let w1 = workload_yaml(1, true);
        assert!(w1.contains("output: s0\n") && !w1.contains("s1") && !w1.contains("requires"));
        let w2 = workload_yaml(10, true);
        assert!(w2.contains("output: s9\n") && w2.contains("    requires: [s8]\n"));
        let w3 = workload_yaml(10, false);
        assert!(w3.contains("output: join\n") && w3.matches("requires").count() == 1);
        assert!(w3.contains("requires: [s0, s1, s2, s3, s4, s5, s6, s7, s8, s9]\n"));
        assert!(w3.contains(&format!(
            "    run: {ECHO}\n    inputs:\n      body: {INPUT}\n"
        )));
    }
}
