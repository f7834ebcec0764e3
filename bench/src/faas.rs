//! The FaaS half: warm requests routed vs direct, cold starts from the warm pool
//! and from an empty pool, and the runtime start-up floor, per language, on the
//! server's backend (`container` or `process`; `main` runs this once for each).

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper::{Method, Uri};
use serde_json::Value;

use crate::client::{run_batch, Probe};
use crate::ctx::{create_env, create_fn, delete_fn, instances, wait_env_idle, wait_pool, Ctx};
use crate::stats::{self, Summary};

#[derive(Debug, Clone, Copy)]
pub struct Lang {
    pub name: &'static str,
    pub short: &'static str,
    filename: &'static str,
    code: &'static str,
    /// Variable the server reads for the interpreter, and its default.
    interpreter: (&'static str, &'static str),
    /// The runtime script under `<data dir>/runtimes/`.
    script: &'static str,
    /// Interpreter flags before the script, as the local backend passes them.
    launch_args: &'static [&'static str],
    /// Arguments that make the interpreter print its own executable's path.
    exec_path_args: &'static [&'static str],
}

pub const LANGS: [Lang; 2] = [
    Lang {
        name: "python",
        short: "py",
        filename: "hello.py",
        code: "def main():\n    return \"hello\\n\"\n",
        interpreter: ("FUSION_PYTHON", "python3"),
        script: "python/server.py",
        launch_args: &["-S"],
        exec_path_args: &["-c", "import sys; print(sys.executable)"],
    },
    Lang {
        name: "nodejs",
        short: "node",
        filename: "hello.js",
        code: "module.exports = async () => ({ status: 200, body: \"hello\\n\" });\n",
        interpreter: ("FUSION_NODE", "node"),
        script: "nodejs/server.js",
        launch_args: &[],
        exec_path_args: &["-p", "process.execPath"],
    },
];

/// Generic instances each measured environment keeps warm.
pub const POOLSIZE: usize = 3;

/// CPU microseconds per request, by process, over all batches of one path.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuPerRequest {
    pub client: f64,
    pub server: f64,
    pub instance: f64,
}

pub struct WarmLevel {
    pub clients: usize,
    pub routed_cpu: CpuPerRequest,
    pub direct_cpu: CpuPerRequest,
    pub routed: Summary,
    pub direct: Summary,
    pub routed_rps: f64,
    pub direct_rps: f64,
}

pub struct Warm {
    /// The instance's address as the API reports it (`host:port` or `unix:<socket>`).
    pub instance: String,
    /// The backend the API reports for the instance.
    pub backend: String,
    /// Where the instance's CPU time comes from: `/v1/instances` `cpu_seconds`
    /// (the container's cgroup, or the process's /proc stat), else the pid's ticks.
    pub instance_cpu_source: &'static str,
    pub instances_after: usize,
    pub levels: Vec<WarmLevel>,
}

pub struct Cold {
    pub total: Summary,
    /// What the runtime itself reports for loading the code, when it does.
    pub runtime_load: Option<Summary>,
    pub samples_ms: Vec<f64>,
}

/// The FaaS figures of one backend's server.
pub struct BackendResult {
    /// `container` or `process`, as `FUSION_BACKEND` was set.
    pub backend: String,
    pub langs: Vec<LangResult>,
}

#[derive(Default)]
pub struct LangResult {
    pub lang: &'static str,
    pub warm: Option<Warm>,
    pub cold_pool: Option<Cold>,
    pub cold_empty: Option<Cold>,
    /// The runtime started by hand, the interpreter named as configured (PATH lookup).
    pub start_floor: Option<Floor>,
    /// The same with the interpreter's real executable (past any wrapper script,
    /// e.g. a pyenv shim, that the PATH lookup finds first).
    pub start_floor_resolved: Option<Floor>,
}

pub struct Floor {
    /// The command line, the script abbreviated to its runtime-relative path.
    pub command: String,
    /// What the command is on PATH.
    pub path: Option<String>,
    pub summary: Summary,
}

/// Every FaaS phase for `langs` (the start-up floor only with `floor`: it does
/// not depend on the backend); a phase that fails adds to `errors` and the others
/// still run.
pub async fn run(
    ctx: &mut Ctx,
    langs: &[Lang],
    floor: bool,
    errors: &mut Vec<String>,
) -> Result<Vec<LangResult>> {
    let mut results: Vec<LangResult> = Vec::new();
    let mut packages = Vec::new();
    for lang in langs {
        let pkg = ctx.http.upload(&ctx.api, lang.filename, lang.code).await?;
        create_env(ctx, lang.name, lang.name, POOLSIZE).await?;
        packages.push(pkg);
        results.push(LangResult {
            lang: lang.name,
            ..Default::default()
        });
    }
    // A language whose pool never fills (its runtime does not start) is not
    // measured further; its start-up floor below still shows why.
    let mut usable = Vec::new();
    for lang in langs {
        let r = wait_pool(ctx, lang.name, POOLSIZE).await;
        if let Err(e) = &r {
            errors.push(format!(
                "{}: the pool never filled, so nothing else is measured for it: {e:#}",
                lang.name
            ));
        }
        usable.push(r.is_ok());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (i, lang) in langs.iter().enumerate() {
        if !usable[i] {
            continue;
        }
        eprintln!("fusion-bench: {}: warm requests", lang.name);
        match warm(ctx, lang, &packages[i]).await {
            Ok(w) => results[i].warm = Some(w),
            Err(e) => errors.push(format!("{}: warm: {e:#}", lang.name)),
        }
    }
    for (i, lang) in langs.iter().enumerate() {
        if !usable[i] {
            continue;
        }
        eprintln!(
            "fusion-bench: {}: cold starts from the warm pool",
            lang.name
        );
        match cold(ctx, lang, &packages[i], lang.name, "cold").await {
            Ok(c) => results[i].cold_pool = Some(c),
            Err(e) => errors.push(format!("{}: cold from pool: {e:#}", lang.name)),
        }
    }
    for (i, lang) in langs.iter().enumerate() {
        if !usable[i] {
            continue;
        }
        eprintln!(
            "fusion-bench: {}: cold starts from an empty pool",
            lang.name
        );
        let env = format!("{}-empty", lang.name);
        let r = async {
            create_env(ctx, &env, lang.name, 0).await?;
            cold(ctx, lang, &packages[i], &env, "empty").await
        }
        .await;
        match r {
            Ok(c) => results[i].cold_empty = Some(c),
            Err(e) => errors.push(format!("{}: cold from empty pool: {e:#}", lang.name)),
        }
    }
    let floor_runs = ctx.args.cold.clamp(1, 20);
    for (i, lang) in langs.iter().enumerate().filter(|_| floor) {
        eprintln!("fusion-bench: {}: runtime start-up floor", lang.name);
        let command =
            std::env::var(lang.interpreter.0).unwrap_or_else(|_| lang.interpreter.1.into());
        match start_floor(ctx, lang, &command, floor_runs) {
            Ok(f) => results[i].start_floor = Some(f),
            Err(e) => errors.push(format!("{}: start-up floor: {e:#}", lang.name)),
        }
        if let Some(exe) = real_executable(&command, lang.exec_path_args) {
            match start_floor(ctx, lang, &exe, floor_runs) {
                Ok(f) => results[i].start_floor_resolved = Some(f),
                Err(e) => errors.push(format!("{}: start-up floor ({exe}): {e:#}", lang.name)),
            }
        }
    }

    Ok(results)
}

/// Warm latency and throughput: routed vs direct to the same instance.
async fn warm(ctx: &mut Ctx, lang: &Lang, package: &Value) -> Result<Warm> {
    let name = format!("warm-{}", lang.short);
    create_fn(ctx, &name, lang.name, package, 64, 64).await?;
    let routed: Uri = format!("{}/fission-function/{name}", ctx.router).parse()?;
    ctx.http
        .timed_hello(&routed)
        .await
        .context("first (specializing) request")?;
    wait_pool(ctx, lang.name, POOLSIZE).await?;

    let list = ctx
        .http
        .api(
            Method::GET,
            &format!("{}/v1/functions/{name}/instances", ctx.api),
            None,
        )
        .await?;
    let specialized: Vec<&Value> = list
        .as_array()
        .map(|a| a.iter().filter(|i| i["state"] == "specialized").collect())
        .unwrap_or_default();
    let address = specialized
        .first()
        .and_then(|i| i["address"].as_str())
        .ok_or_else(|| anyhow!("function {name} has no specialized instance: {list}"))?
        .to_string();
    if specialized.len() != 1 {
        eprintln!(
            "warning: {name} has {} specialized instances; direct requests go to {address}",
            specialized.len()
        );
    }
    let backend = specialized
        .first()
        .and_then(|i| i["backend"].as_str())
        .unwrap_or("?")
        .to_string();
    if let Some(want) = &ctx.backend {
        if *want != backend {
            bail!("the server was started with FUSION_BACKEND={want}, but its instance reports backend {backend:?}");
        }
    }
    // Direct: the same request on the same client, over TCP or the Unix socket.
    let direct = match address.strip_prefix("unix:") {
        Some(socket) => Probe::hello_unix(socket.into()),
        None => Probe::hello(format!("http://{address}/").parse()?),
    };
    let routed = Probe::hello(routed);
    let instance_id = specialized
        .first()
        .and_then(|i| i["id"].as_u64())
        .context("no id for the instance")?;
    let instance_pid = specialized
        .first()
        .and_then(|i| i["pid"].as_u64())
        .map(|p| p as u32);
    // The instance's CPU: what the API reports (a container's whole cgroup),
    // else its process's ticks.
    let api_cpu = instance_cpu_seconds(ctx, &name, instance_id)
        .await?
        .is_some();
    if !api_cpu && instance_pid.is_none() {
        bail!("neither cpu_seconds nor a pid for instance {instance_id}: cannot account its CPU");
    }
    let instance_cpu_source = if api_cpu {
        "/v1/instances cpu_seconds"
    } else {
        "pid ticks"
    };
    let meter = CpuMeter {
        function: name.clone(),
        instance_id,
        api: api_cpu,
        instance_pid,
    };

    // Warm up both paths, also the concurrent connections.
    let c = ctx.args.clients;
    for uri in [&routed, &direct] {
        run_batch(&ctx.http, uri, 1, 300).await?;
        run_batch(&ctx.http, uri, c, c * 30).await?;
    }

    let mut levels = Vec::new();
    let mut plan = vec![(1, ctx.args.requests)];
    if c > 1 {
        plan.push((c, crate::requests_concurrent(&ctx.args)));
    }
    for (clients, total) in plan {
        let batches = ctx.args.batches;
        let per_batch = (total / batches).max(clients);
        let (mut r, mut d) = (Vec::new(), Vec::new());
        let (mut rt, mut dt) = (Duration::ZERO, Duration::ZERO);
        let (mut rcpu, mut dcpu) = ([0f64; 3], [0f64; 3]);
        for b in 0..batches {
            // ABBA: drift over the run hits both paths alike.
            let routed_first = b % 2 == 0;
            for step in 0..2 {
                let is_routed = (step == 0) == routed_first;
                let uri = if is_routed { &routed } else { &direct };
                let before = meter.read(ctx, true).await?;
                let (s, t) = run_batch(&ctx.http, uri, clients, per_batch).await?;
                let after = meter.read(ctx, false).await?;
                let sum = if is_routed { &mut rcpu } else { &mut dcpu };
                for k in 0..3 {
                    sum[k] += (after[k] - before[k]).max(0.0);
                }
                if is_routed {
                    r.extend(s);
                    rt += t;
                } else {
                    d.extend(s);
                    dt += t;
                }
            }
        }
        let per_request = |cpu: [f64; 3], n: usize| {
            let us = |secs: f64| secs * 1e6 / n.max(1) as f64;
            CpuPerRequest {
                client: us(cpu[0]),
                server: us(cpu[1]),
                instance: us(cpu[2]),
            }
        };
        let level = WarmLevel {
            clients,
            routed_cpu: per_request(rcpu, r.len()),
            direct_cpu: per_request(dcpu, d.len()),
            routed_rps: r.len() as f64 / rt.as_secs_f64(),
            direct_rps: d.len() as f64 / dt.as_secs_f64(),
            routed: Summary::of(&r).context("no samples")?,
            direct: Summary::of(&d).context("no samples")?,
        };
        eprintln!(
            "  {clients:>2} clients: routed p50 {:.3} ms {:.0} req/s, direct p50 {:.3} ms {:.0} req/s",
            level.routed.p50, level.routed_rps, level.direct.p50, level.direct_rps
        );
        levels.push(level);
    }

    let after = ctx
        .http
        .api(
            Method::GET,
            &format!("{}/v1/functions/{name}/instances", ctx.api),
            None,
        )
        .await?;
    let instances_after = after.as_array().map_or(0, Vec::len);
    let _ = instances(ctx).await;
    delete_fn(ctx, &name).await?;
    Ok(Warm {
        instance: address,
        backend,
        instance_cpu_source,
        instances_after,
        levels,
    })
}

/// Reads the CPU seconds used so far by the client (this process), the server
/// and the measured instance.
struct CpuMeter {
    function: String,
    instance_id: u64,
    /// From `/v1/instances` (`cpu_seconds`), else from `instance_pid`'s ticks.
    api: bool,
    instance_pid: Option<u32>,
}

impl CpuMeter {
    /// [client, server, instance]. The API is asked outside the window in which
    /// the client's and the server's CPU are read (first when `before`, last
    /// otherwise), so that its own cost is not counted to the requests.
    async fn read(&self, ctx: &Ctx, before: bool) -> Result<[f64; 3]> {
        let tps = ctx.ticks_per_second;
        let procs = || Ctx::ticks([std::process::id(), ctx.server_pid]);
        let instance = || async {
            match (self.api, self.instance_pid) {
                (true, _) => instance_cpu_seconds(ctx, &self.function, self.instance_id)
                    .await?
                    .context("the instance's cpu_seconds went missing"),
                (false, Some(pid)) => Ok(Ctx::ticks([pid])[0] as f64 / tps),
                (false, None) => Ok(0.0),
            }
        };
        let (procs, inst) = if before {
            let inst = instance().await?;
            (procs(), inst)
        } else {
            let procs = procs();
            (procs, instance().await?)
        };
        Ok([procs[0] as f64 / tps, procs[1] as f64 / tps, inst])
    }
}

/// The CPU time instance `id` of `function` has used, as `/v1/instances` reports
/// it (`None` when the backend cannot tell); an error when the instance is gone.
async fn instance_cpu_seconds(ctx: &Ctx, function: &str, id: u64) -> Result<Option<f64>> {
    let list = ctx
        .http
        .api(
            Method::GET,
            &format!("{}/v1/functions/{function}/instances", ctx.api),
            None,
        )
        .await?;
    let instance = list
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"].as_u64() == Some(id)))
        .with_context(|| format!("instance {id} of {function} is gone"))?;
    Ok(instance["cpu_seconds"].as_f64())
}

/// Cold starts: a new function each time, its first request through the router
/// timed. With `env` a pooled environment this specializes a generic instance;
/// with a pool size of 0 it spawns one first.
async fn cold(ctx: &mut Ctx, lang: &Lang, package: &Value, env: &str, kind: &str) -> Result<Cold> {
    let pooled = env == lang.name;
    let mut totals = Vec::new();
    let mut loads = Vec::new();
    for i in 0..ctx.args.cold {
        let name = format!("{kind}-{}-{i}", lang.short);
        create_fn(ctx, &name, env, package, 10, 1).await?;
        if pooled {
            wait_pool(ctx, env, POOLSIZE).await?;
        } else {
            wait_env_idle(ctx, env).await?;
        }
        tokio::time::sleep(Duration::from_millis(ctx.args.settle_ms)).await;
        let uri: Uri = format!("{}/fission-function/{name}", ctx.router).parse()?;
        let t = ctx
            .http
            .timed_hello(&uri)
            .await
            .with_context(|| format!("first request to {name}"))?;
        totals.push(t);
        if let Some(ms) = runtime_load_ms(ctx, &name).await {
            loads.push(Duration::from_secs_f64(ms / 1e3));
        }
        let _ = instances(ctx).await;
        delete_fn(ctx, &name).await?;
    }
    let total = Summary::of(&totals).context("no cold starts measured")?;
    eprintln!("  p50 {:.1} ms, p95 {:.1} ms", total.p50, total.p95);
    Ok(Cold {
        total,
        runtime_load: Summary::of(&loads),
        samples_ms: totals
            .iter()
            .map(|d| stats::round3(d.as_secs_f64() * 1e3))
            .collect(),
    })
}

/// The runtime's own report of loading the code, from the function's log (the
/// python runtime writes `specialized <file> entry <name> (<x> ms)`).
async fn runtime_load_ms(ctx: &Ctx, function: &str) -> Option<f64> {
    let url = format!("{}/v1/functions/{function}/logs", ctx.api);
    for _ in 0..10 {
        if let Ok((s, body)) = ctx
            .http
            .send(Method::GET, &url, Default::default(), None)
            .await
        {
            if s.is_success() {
                let text = String::from_utf8_lossy(&body);
                let found = text
                    .lines()
                    .filter(|l| l.contains("specialized"))
                    .find_map(|l| {
                        let (_, tail) = l.rsplit_once('(')?;
                        tail.trim_end()
                            .strip_suffix("ms)")?
                            .trim()
                            .parse::<f64>()
                            .ok()
                    });
                if found.is_some() {
                    return found;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// The floor under an empty-pool cold start: the runtime started by hand, as the
/// local backend starts it, from spawn until its port accepts a connection
/// (polled every 0.2 ms).
fn start_floor(ctx: &Ctx, lang: &Lang, program: &str, n: usize) -> Result<Floor> {
    let script = ctx.data_dir.join("runtimes").join(lang.script);
    if !script.is_file() {
        bail!("no runtime script at {}", script.display());
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let start = Instant::now();
        let mut child = Command::new(program)
            .args(lang.launch_args)
            .arg(&script)
            .env("RUNTIME_PORT", port.to_string())
            .env("RUNTIME_HOST", "127.0.0.1")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // A pipe, not null: the runtimes exit when stdin reaches EOF.
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let result = loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break Ok(start.elapsed());
            }
            if let Some(status) = child.try_wait()? {
                break Err(anyhow!("{program} {} exited: {status}", script.display()));
            }
            if start.elapsed() > Duration::from_secs(10) {
                break Err(anyhow!("{program} did not listen within 10 s"));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let _ = child.kill();
        let _ = child.wait();
        out.push(result?);
        std::thread::sleep(Duration::from_millis(ctx.args.settle_ms));
    }
    let mut command = vec![program];
    command.extend(lang.launch_args);
    command.push(lang.script);
    Ok(Floor {
        command: command.join(" "),
        path: which(program),
        summary: Summary::of(&out).context("no samples")?,
    })
}

/// The first file named `program` on PATH (or `program` itself when it is a path).
fn which(program: &str) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_string());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// The interpreter's own executable, as it reports it.
fn real_executable(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!exe.is_empty()).then_some(exe)
}
