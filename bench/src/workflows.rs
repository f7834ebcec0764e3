//! The workflow engine's half: per-task overhead of a chain of `noop` tasks, a
//! large `foreach`, concurrent one-task runs next to a plain function call, and
//! the run history's first page with many runs stored.
//!
//! Every workflow is invoked as a user would: `POST <router>/fission-function/<name>`,
//! synchronously unless said otherwise, on the same keep-alive client as the FaaS
//! half. See bench/README.md for what each figure means.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde_json::{json, Value};

use crate::client::{run_batch, Probe, HELLO};
use crate::ctx::{create_env, create_fn, instances, wait_pool, Ctx, Leftovers};
use crate::report::target;
use crate::stats::{round3, Summary};
use crate::Args;

/// The targets (goals reported, never asserted).
pub const MAX_TASK_OVERHEAD_P50_MS: f64 = 0.5;
pub const MAX_RUNS_FIRST_PAGE_MS: f64 = 5.0;

/// The python hello function the one-task workflow calls.
const HELLO_PY: &str = "def main():\n    return \"hello\\n\"\n";

#[derive(Default)]
pub struct EngineResults {
    pub chain: Option<Chain>,
    pub foreach: Option<Foreach>,
    pub concurrent: Option<Concurrent>,
    pub listing: Option<Listing>,
    /// RFC-0022 per-step overhead (bench/src/sfn.rs).
    pub sfn: Option<crate::sfn::Sfn>,
}

pub struct Chain {
    pub length: usize,
    pub chain: Summary,
    pub single: Summary,
    /// Server CPU per run (ms), chain and single.
    pub chain_cpu_ms: f64,
    pub single_cpu_ms: f64,
    /// The same chain where every task has an expression input (the previous
    /// task's output), as real workflows do.
    pub chain_expr: Option<Summary>,
    pub chain_expr_cpu_ms: f64,
}

pub struct Foreach {
    pub items: usize,
    /// `do: {run: noop, inputs: "{ task().Inputs._item }"}`.
    pub with_expr: Summary,
    pub with_expr_cpu_ms: f64,
    /// `do: {run: noop}`: the same fan-out without an expression per item.
    pub plain: Summary,
    pub plain_cpu_ms: f64,
}

pub struct PathLoad {
    pub name: &'static str,
    pub what: &'static str,
    pub summary: Summary,
    pub rps: f64,
    /// CPU microseconds per request: client, server, python instance.
    pub cpu_us: [f64; 3],
    /// The store's group commits per request (`fusion_store_flushes_total`).
    pub flushes: f64,
}

pub struct Concurrent {
    pub clients: usize,
    pub paths: Vec<PathLoad>,
}

pub struct Listing {
    pub runs: usize,
    pub counted: usize,
    pub from_cache: Option<String>,
    pub seed_secs: f64,
    pub seed_runs_per_sec: f64,
    pub store_bytes: u64,
    pub pages_to_count_secs: f64,
    pub first: Summary,
    /// `?workflow=seed-b`, `?status=succeeded`, and both.
    pub by_workflow: Summary,
    pub by_status: Summary,
    pub filtered: Summary,
    pub deep: Summary,
    pub deep_offset: usize,
    /// A backup of the server with these runs, and its restore.
    pub backup: crate::backup::Figures,
}

/// YAML of a chain of `n` noop tasks, each requiring the one before; with
/// `expr`, each task's input is the previous task's output (the first's is the
/// request body).
pub fn chain_yaml(n: usize, expr: bool) -> String {
    let mut y = format!("apiVersion: 1\noutput: t{}\ntasks:\n", n - 1);
    for i in 0..n {
        let _ = writeln!(y, "  t{i}:\n    run: noop");
        if expr {
            if i == 0 {
                y.push_str("    inputs: \"{ param() }\"\n");
            } else {
                let _ = writeln!(y, "    inputs: \"{{ output('t{}') }}\"", i - 1);
            }
        }
        if i > 0 {
            let _ = writeln!(y, "    requires: [t{}]", i - 1);
        }
    }
    y
}

fn foreach_yaml(expr: bool) -> String {
    let mut y = String::from(
        "apiVersion: 1\noutput: each\ntasks:\n  each:\n    run: foreach\n    inputs:\n      foreach: \"{ param() }\"\n      do:\n        run: noop\n",
    );
    if expr {
        y.push_str("        inputs: \"{ task().Inputs._item }\"\n");
    }
    y
}

/// Stores a workflow (YAML body).
pub async fn create_workflow(ctx: &Ctx, name: &str, yaml: &str) -> Result<()> {
    let url = format!("{}/v1/workflows?name={name}", ctx.api);
    let (status, body) = ctx
        .http
        .send(
            Method::POST,
            &url,
            Bytes::from(yaml.to_string()),
            Some("application/yaml"),
        )
        .await?;
    if !status.is_success() {
        bail!(
            "POST {url}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(())
}

pub fn invoke_uri(ctx: &Ctx, name: &str) -> Result<Uri> {
    Ok(format!("{}/fission-function/{name}", ctx.router).parse()?)
}

/// A synchronous invocation with a short text body.
fn text_probe(
    ctx: &Ctx,
    name: &str,
    status: StatusCode,
    body: Option<&'static [u8]>,
) -> Result<Probe> {
    let mut p = Probe::post(
        invoke_uri(ctx, name)?,
        "text/plain",
        Bytes::from_static(b"hello"),
        status,
    );
    p.expect_body = body.map(Bytes::from_static);
    Ok(p)
}

/// `n` runs one after another; answers the latencies and the server's CPU ms per run.
async fn sequential(ctx: &Ctx, probe: &Probe, n: usize) -> Result<(Vec<Duration>, u64)> {
    let before = Ctx::ticks([ctx.server_pid]);
    let (samples, _) = run_batch(&ctx.http, probe, 1, n).await?;
    let after = Ctx::ticks([ctx.server_pid]);
    Ok((samples, after[0].saturating_sub(before[0])))
}

/// The engine phases selected (`chain`, `foreach`, `concurrent`) on one server.
pub async fn run(
    ctx: &mut Ctx,
    parts: &[&str],
    results: &mut EngineResults,
    errors: &mut Vec<String>,
) -> Result<()> {
    let a = ctx.args.clone();
    create_workflow(ctx, "bench-one", &chain_yaml(1, false)).await?;
    if parts.contains(&"chain") {
        eprintln!(
            "fusion-bench: engine: {}-task noop chain vs one task",
            a.chain_length
        );
        match chain(ctx).await {
            Ok(c) => results.chain = Some(c),
            Err(e) => errors.push(format!("engine chain: {e:#}")),
        }
    }
    if parts.contains(&"foreach") {
        eprintln!(
            "fusion-bench: engine: foreach over {} items",
            a.foreach_items
        );
        match foreach(ctx).await {
            Ok(f) => results.foreach = Some(f),
            Err(e) => errors.push(format!("engine foreach: {e:#}")),
        }
    }
    if parts.contains(&"sfn") {
        match crate::sfn::run(ctx, errors).await {
            Ok(s) => results.sfn = Some(s),
            Err(e) => errors.push(format!("engine sfn: {e:#}")),
        }
    }
    if parts.contains(&"concurrent") {
        eprintln!(
            "fusion-bench: engine: concurrent one-task runs, {} clients",
            a.clients
        );
        match concurrent(ctx).await {
            Ok(c) => results.concurrent = Some(c),
            Err(e) => errors.push(format!("engine concurrent: {e:#}")),
        }
    }
    Ok(())
}

async fn chain(ctx: &mut Ctx) -> Result<Chain> {
    let n = ctx.args.chain_length.max(2);
    create_workflow(ctx, "bench-chain", &chain_yaml(n, false)).await?;
    create_workflow(ctx, "bench-chain-expr", &chain_yaml(n, true)).await?;
    // A noop without inputs has no output: 204.
    let chain = text_probe(ctx, "bench-chain", StatusCode::NO_CONTENT, None)?;
    let single = text_probe(ctx, "bench-one", StatusCode::NO_CONTENT, None)?;
    for p in [&chain, &single] {
        run_batch(&ctx.http, p, 1, 10).await?;
    }
    // Interleaved ABBA batch by batch, as routed and direct are.
    let batches = ctx.args.batches.max(1);
    let per_batch = (ctx.args.chain_runs / batches).max(1);
    let (mut c, mut s) = (Vec::new(), Vec::new());
    let (mut ccpu, mut scpu) = (0, 0);
    for b in 0..batches {
        for step in 0..2 {
            let is_chain = (step == 0) == (b % 2 == 0);
            let p = if is_chain { &chain } else { &single };
            let (v, cpu) = sequential(ctx, p, per_batch).await?;
            if is_chain {
                c.extend(v);
                ccpu += cpu;
            } else {
                s.extend(v);
                scpu += cpu;
            }
        }
    }
    let cpu_ms = |t: u64, n: usize| ctx.us_per(t, n) / 1e3;
    let mut out = Chain {
        length: n,
        chain_cpu_ms: cpu_ms(ccpu, c.len()),
        single_cpu_ms: cpu_ms(scpu, s.len()),
        chain: Summary::of(&c).context("no samples")?,
        single: Summary::of(&s).context("no samples")?,
        chain_expr: None,
        chain_expr_cpu_ms: 0.0,
    };
    eprintln!(
        "  chain p50 {:.3} ms ({:.4} ms/task), one task p50 {:.3} ms",
        out.chain.p50,
        out.chain.p50 / n as f64,
        out.single.p50
    );
    if ctx.args.chain_expr_runs > 0 {
        // The first task's output is the body, passed along the chain.
        let p = text_probe(ctx, "bench-chain-expr", StatusCode::OK, Some(b"hello"))?;
        run_batch(&ctx.http, &p, 1, 1).await?;
        let (v, cpu) = sequential(ctx, &p, ctx.args.chain_expr_runs).await?;
        out.chain_expr_cpu_ms = cpu_ms(cpu, v.len());
        out.chain_expr = Summary::of(&v);
        if let Some(e) = &out.chain_expr {
            eprintln!("  chain with expressions p50 {:.3} ms", e.p50);
        }
    }
    Ok(out)
}

async fn foreach(ctx: &mut Ctx) -> Result<Foreach> {
    let n = ctx.args.foreach_items;
    create_workflow(ctx, "bench-foreach", &foreach_yaml(true)).await?;
    create_workflow(ctx, "bench-foreach-plain", &foreach_yaml(false)).await?;
    let items: Vec<u64> = (0..n as u64).collect();
    let body = Bytes::from(serde_json::to_vec(&items)?);
    let probe = |name: &str| -> Result<Probe> {
        Ok(Probe::post(
            invoke_uri(ctx, name)?,
            "application/json",
            body.clone(),
            StatusCode::OK,
        ))
    };
    let (with_expr, plain) = (probe("bench-foreach")?, probe("bench-foreach-plain")?);
    // The plain fan-out is cheap: warm up with it, then alternate.
    run_batch(&ctx.http, &plain, 1, 3).await?;
    let (mut e, mut p) = (Vec::new(), Vec::new());
    let (mut ecpu, mut pcpu) = (0, 0);
    for i in 0..ctx.args.foreach_runs.max(1) {
        let before = Ctx::ticks([ctx.server_pid]);
        let (t, out) = ctx.http.timed_body(&with_expr).await?;
        ecpu += Ctx::ticks([ctx.server_pid])[0].saturating_sub(before[0]);
        // The collector gathers every item's output: the list itself.
        let got: Value = serde_json::from_slice(&out).context("foreach output is not JSON")?;
        if got != json!(items) {
            bail!(
                "foreach output is not the {n} items: {}",
                &got.to_string()[..200.min(got.to_string().len())]
            );
        }
        e.push(t);
        eprintln!("  run {i}: {:.1} ms", t.as_secs_f64() * 1e3);
        let (v, cpu) = sequential(ctx, &plain, 1).await?;
        p.extend(v);
        pcpu += cpu;
    }
    let cpu_ms = |t: u64, n: usize| ctx.us_per(t, n) / 1e3;
    Ok(Foreach {
        items: n,
        with_expr_cpu_ms: cpu_ms(ecpu, e.len()),
        plain_cpu_ms: cpu_ms(pcpu, p.len()),
        with_expr: Summary::of(&e).context("no samples")?,
        plain: Summary::of(&p).context("no samples")?,
    })
}

async fn concurrent(ctx: &mut Ctx) -> Result<Concurrent> {
    let clients = ctx.args.clients;
    let total = ctx.args.wf_requests.max(clients);
    // One specialized python instance takes every request, as in the FaaS half.
    let pkg = ctx.http.upload(&ctx.api, "hello.py", HELLO_PY).await?;
    create_env(ctx, "python", "python", 1).await?;
    wait_pool(ctx, "python", 1).await?;
    create_fn(ctx, "hello-py", "python", &pkg, 64, 64).await?;
    create_workflow(
        ctx,
        "bench-py",
        "apiVersion: 1\noutput: call\ntasks:\n  call:\n    run: hello-py\n",
    )
    .await?;
    let noop = text_probe(ctx, "bench-one", StatusCode::NO_CONTENT, None)?;
    let wf_py = text_probe(ctx, "bench-py", StatusCode::OK, Some(HELLO))?;
    let direct = text_probe(ctx, "hello-py", StatusCode::OK, Some(HELLO))?;
    ctx.http
        .timed(&direct)
        .await
        .context("first (specializing) request")?;
    let list = instances(ctx).await?;
    // hello-py's own instance: the server's other parts specialized others.
    let instance_pid = list
        .iter()
        .find(|i| i["function"] == "hello-py")
        .and_then(|i| i["pid"].as_u64())
        .map_or(0, |p| p as u32);
    let pids = [std::process::id(), ctx.server_pid, instance_pid];
    let paths = [
        ("workflow-noop", "one-task noop workflow", &noop),
        (
            "workflow-python",
            "one-task workflow calling hello-py",
            &wf_py,
        ),
        ("direct-python", "hello-py through the router", &direct),
    ];
    for (_, _, p) in paths {
        run_batch(&ctx.http, p, 1, 50).await?;
        run_batch(&ctx.http, p, clients, clients * 10).await?;
    }
    let batches = ctx.args.batches.max(1);
    let per_batch = (total / batches).max(clients);
    let mut samples: [Vec<Duration>; 3] = Default::default();
    let mut wall = [Duration::ZERO; 3];
    let mut cpu = [[0u64; 3]; 3];
    let mut flushes = [0u64; 3];
    for b in 0..batches {
        // Rotate the order batch by batch so drift hits every path alike.
        for k in 0..3 {
            let i = (k + b) % 3;
            let flushed = store_flushes(ctx).await?;
            let before = Ctx::ticks(pids);
            let (s, t) = run_batch(&ctx.http, paths[i].2, clients, per_batch).await?;
            let after = Ctx::ticks(pids);
            flushes[i] += store_flushes(ctx).await?.saturating_sub(flushed);
            for j in 0..3 {
                cpu[i][j] += after[j].saturating_sub(before[j]);
            }
            samples[i].extend(s);
            wall[i] += t;
        }
    }
    let mut out = Vec::new();
    for (i, (name, what, _)) in paths.iter().enumerate() {
        let n = samples[i].len();
        let l = PathLoad {
            name,
            what,
            summary: Summary::of(&samples[i]).context("no samples")?,
            rps: n as f64 / wall[i].as_secs_f64(),
            cpu_us: cpu[i].map(|t| ctx.us_per(t, n)),
            flushes: flushes[i] as f64 / n as f64,
        };
        eprintln!(
            "  {name}: p50 {:.3} ms, p99 {:.3} ms, {:.0} runs/s",
            l.summary.p50, l.summary.p99, l.rps
        );
        out.push(l);
    }
    Ok(Concurrent {
        clients,
        paths: out,
    })
}

/// The server's group commits so far, from its `/metrics`.
async fn store_flushes(ctx: &Ctx) -> Result<u64> {
    let url = format!("{}/metrics", ctx.api);
    let (status, body) = ctx.http.send(Method::GET, &url, Bytes::new(), None).await?;
    if !status.is_success() {
        bail!("GET {url}: {status}");
    }
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("fusion_store_flushes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow!("GET {url}: no fusion_store_flushes_total"))
}

/// Where seeded stores are kept between runs (gitignored).
fn cache_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results/.cache")
}

/// The cache entry for `n` runs: keyed by the last commit that changed the
/// engine's store or run state (what the stored bytes depend on).
fn cache_dir(n: usize) -> PathBuf {
    let key = Command::new("git")
        .args([
            "log",
            "-1",
            "--format=%h",
            "--",
            "engine/src/store.rs",
            "engine/src/state.rs",
        ])
        .current_dir(crate::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    cache_root().join(format!("runs-{n}-{key}"))
}

/// Copies a directory tree: symbolic links as links (the container backend's
/// root filesystem has links that point nowhere outside a container), regular
/// files as files; sockets and pipes (a stopped server leaves none that
/// matter) are left out.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src)?;
            std::os::unix::fs::symlink(&target, &dst)
                .with_context(|| format!("cannot link {}", dst.display()))?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Seeding: `n` one-task runs, 1 in 10 of workflow `seed-b` and the rest of
/// `seed-a`, started asynchronously (`X-Async: true`, 202) by `clients` concurrent
/// clients; done when no run is left running. Answers the seconds it took.
async fn seed(ctx: &Ctx, n: usize) -> Result<f64> {
    for w in ["seed-a", "seed-b"] {
        create_workflow(ctx, w, &chain_yaml(1, false)).await?;
    }
    let probe = |name: &str| -> Result<Probe> {
        let mut p = Probe::post(
            invoke_uri(ctx, name)?,
            "text/plain",
            Bytes::from_static(b"seed"),
            StatusCode::ACCEPTED,
        );
        p.headers.push(("x-async", "true"));
        Ok(p)
    };
    let (a, b) = (probe("seed-a")?, probe("seed-b")?);
    let start = Instant::now();
    let clients = ctx.args.clients;
    let mut done = 0;
    let mut last_report = Instant::now();
    // Rounds of 9 seed-a and 1 seed-b per client keep the two interleaved in time.
    while done < n {
        let round = (n - done).min(clients * 10);
        let nb = round / 10;
        run_batch(&ctx.http, &a, clients, round - nb).await?;
        if nb > 0 {
            run_batch(&ctx.http, &b, clients.min(nb), nb).await?;
        }
        done += round;
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  seeded {done} of {n} ({:.0} runs/s)",
                done as f64 / start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let url = format!("{}/v1/runs?status=running&limit=1", ctx.api);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v = ctx.http.api(Method::GET, &url, None).await?;
        if v["runs"].as_array().is_none_or(Vec::is_empty) {
            break;
        }
        if Instant::now() > deadline {
            bail!("runs still running 10 minutes after seeding");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The run history with `--runs-seed` runs stored, on a server of its own.
/// Answers the figures and what outlived the server (nothing: no function runs).
pub async fn listing(fusion: &Path, args: &Args) -> Result<(Listing, Leftovers)> {
    let n = args.runs_seed;
    let cache = cache_dir(n);
    let cached = !args.no_cache && cache.join("meta.json").is_file();
    let (mut server, mut ctx) = Ctx::start(fusion, args, None, |data| {
        if cached {
            copy_dir(&cache.join("data"), data)?;
        }
        Ok(())
    })
    .await?;
    let r = listing_on(&mut ctx, fusion, n, cached.then_some(&cache)).await;
    let data = ctx.data_dir.clone();
    let orphans = ctx.finish(&mut server).await?;
    let mut l = r?;
    if l.from_cache.is_none() && !args.no_cache {
        // The server is stopped, its store closed: keep a copy for the next run.
        let _ = std::fs::remove_dir_all(&cache);
        let saved = copy_dir(&data, &cache.join("data")).and_then(|_| {
            let meta = json!({"runs": n, "seed_secs": round3(l.seed_secs), "seeded_utc": crate::report::utc_now().0});
            Ok(std::fs::write(cache.join("meta.json"), meta.to_string())?)
        });
        match saved {
            Ok(()) => eprintln!("  kept the seeded store in {}", cache.display()),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&cache);
                eprintln!("warning: cannot keep the seeded store: {e:#}");
            }
        }
    }
    if let Some(c) = &mut l.from_cache {
        *c = cache.display().to_string();
    }
    drop(server);
    Ok((l, orphans))
}

async fn listing_on(
    ctx: &mut Ctx,
    fusion: &Path,
    n: usize,
    cache: Option<&PathBuf>,
) -> Result<Listing> {
    let (seed_secs, from_cache) = match cache {
        Some(dir) => {
            let meta: Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?)?;
            eprintln!(
                "fusion-bench: runs: {n} runs from the cache {}",
                dir.display()
            );
            (
                meta["seed_secs"].as_f64().unwrap_or(f64::NAN),
                Some(String::new()),
            )
        }
        None => {
            eprintln!("fusion-bench: runs: seeding {n} runs");
            let s = seed(ctx, n).await?;
            eprintln!("  seeded in {s:.1} s ({:.0} runs/s)", n as f64 / s);
            (s, None)
        }
    };
    // Count every run by paging through the history; keep the cursor halfway.
    let started = Instant::now();
    let (mut counted, mut cursor, mut deep) = (0usize, None::<String>, None);
    let mut deep_offset = 0;
    loop {
        let mut url = format!("{}/v1/runs?limit=1000", ctx.api);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let v = ctx.http.api(Method::GET, &url, None).await?;
        counted += v["runs"].as_array().map_or(0, Vec::len);
        cursor = v["next_cursor"].as_str().map(str::to_string);
        if deep.is_none() && counted >= n / 2 {
            deep = cursor.clone();
            deep_offset = counted;
        }
        if cursor.is_none() {
            break;
        }
    }
    let pages_to_count_secs = started.elapsed().as_secs_f64();
    if counted < n {
        bail!("{counted} runs stored, {n} expected");
    }
    let deep = deep.ok_or_else(|| anyhow!("no cursor halfway through the history"))?;
    let get = |q: String| -> Result<Probe> {
        Ok(Probe {
            method: Method::GET,
            uri: format!("{}/v1/runs?{q}", ctx.api).parse()?,
            unix: None,
            body: Bytes::new(),
            headers: Vec::new(),
            expect_status: StatusCode::OK,
            expect_body: None,
        })
    };
    let probes = [
        get("limit=50".into())?,
        get("workflow=seed-b&limit=50".into())?,
        get("status=succeeded&limit=50".into())?,
        get("workflow=seed-b&status=succeeded&limit=50".into())?,
        get(format!("limit=50&cursor={deep}"))?,
    ];
    for p in &probes {
        let (_, body) = ctx.http.timed_body(p).await?;
        let v: Value = serde_json::from_slice(&body)?;
        let got = v["runs"].as_array().map_or(0, Vec::len);
        if got != 50 {
            bail!("{}: {got} runs, 50 expected", p.uri);
        }
        run_batch(&ctx.http, p, 1, 20).await?;
    }
    let per = ctx.args.runs_requests.max(10);
    let mut samples: [Vec<Duration>; 5] = Default::default();
    for b in 0..10 {
        for k in 0..probes.len() {
            let i = (k + b) % probes.len();
            let (s, _) = run_batch(&ctx.http, &probes[i], 1, per / 10).await?;
            samples[i].extend(s);
        }
    }
    let [first, by_workflow, by_status, filtered, deep_s] = samples.map(|s| Summary::of(&s));
    let backup = crate::backup::measure(ctx, fusion, n).await?;
    let l = Listing {
        runs: n,
        counted,
        from_cache,
        seed_secs,
        seed_runs_per_sec: n as f64 / seed_secs,
        store_bytes: dir_bytes(&ctx.data_dir.join("db")),
        pages_to_count_secs,
        first: first.context("no samples")?,
        by_workflow: by_workflow.context("no samples")?,
        by_status: by_status.context("no samples")?,
        filtered: filtered.context("no samples")?,
        deep: deep_s.context("no samples")?,
        deep_offset,
        backup,
    };
    eprintln!(
        "  first page p50 {:.3} ms, ?workflow {:.3} ms, ?status {:.3} ms, both {:.3} ms, deep {:.3} ms; store {:.1} MB",
        l.first.p50,
        l.by_workflow.p50,
        l.by_status.p50,
        l.filtered.p50,
        l.deep.p50,
        l.store_bytes as f64 / 1e6
    );
    Ok(l)
}

impl EngineResults {
    pub fn is_empty(&self) -> bool {
        self.chain.is_none()
            && self.foreach.is_none()
            && self.concurrent.is_none()
            && self.listing.is_none()
            && self.sfn.as_ref().is_none_or(crate::sfn::Sfn::is_empty)
    }

    pub fn json(&self) -> Value {
        let chain = self.chain.as_ref().map(|c| {
            let n = c.length as f64;
            json!({
                "length": c.length,
                "chain": c.chain.json(),
                "single": c.single.json(),
                "per_task_p50_ms": round3(c.chain.p50 / n),
                "per_task_p95_ms": round3(c.chain.p95 / n),
                "per_task_p99_ms": round3(c.chain.p99 / n),
                "marginal_per_task_p50_ms": round3((c.chain.p50 - c.single.p50) / (n - 1.0)),
                "server_cpu_ms_per_run": {"chain": round3(c.chain_cpu_ms), "single": round3(c.single_cpu_ms), "chain_with_expressions": round3(c.chain_expr_cpu_ms)},
                "chain_with_expressions": c.chain_expr.map(|s| {
                    let mut v = s.json();
                    v["per_task_p50_ms"] = json!(round3(s.p50 / n));
                    v
                }),
            })
        });
        let foreach = self.foreach.as_ref().map(|f| {
            let n = f.items as f64;
            json!({
                "items": f.items,
                "with_item_expression": f.with_expr.json(),
                "per_item_p50_ms": round3(f.with_expr.p50 / n),
                "plain": f.plain.json(),
                "plain_per_item_p50_ms": round3(f.plain.p50 / n),
                "server_cpu_ms_per_run": {"with_item_expression": round3(f.with_expr_cpu_ms), "plain": round3(f.plain_cpu_ms)},
            })
        });
        let concurrent = self.concurrent.as_ref().map(|c| {
            let mut paths = serde_json::Map::new();
            for p in &c.paths {
                let mut v = p.summary.json();
                v["what"] = json!(p.what);
                v["rps"] = json!(p.rps.round());
                v["cpu_us_per_request"] = json!({
                    "client": round3(p.cpu_us[0]),
                    "server": round3(p.cpu_us[1]),
                    "instance": round3(p.cpu_us[2]),
                });
                v["store_flushes_per_request"] = json!(round3(p.flushes));
                paths.insert(p.name.to_string(), v);
            }
            let (wf, direct) = (c.path("workflow-python"), c.path("direct-python"));
            json!({
                "clients": c.clients,
                "paths": paths,
                "workflow_over_direct_throughput": wf.zip(direct).map(|(w, d)| round3(w.rps / d.rps)),
                "workflow_over_direct_latency_p50": wf.zip(direct).map(|(w, d)| round3(w.summary.p50 / d.summary.p50)),
            })
        });
        let listing = self.listing.as_ref().map(|l| {
            json!({
                "runs_stored": l.runs,
                "runs_counted": l.counted,
                "seed_secs": round3(l.seed_secs),
                "seed_runs_per_sec": l.seed_runs_per_sec.round(),
                "seeded_from_cache": l.from_cache,
                "store_bytes": l.store_bytes,
                "count_all_pages_secs": round3(l.pages_to_count_secs),
                "first_page": l.first.json(),
                "workflow_page": l.by_workflow.json(),
                "status_page": l.by_status.json(),
                "filtered_page": l.filtered.json(),
                "deep_page": l.deep.json(),
                "deep_page_offset": l.deep_offset,
                "backup": l.backup.json(),
                "queries": {
                    "first_page": "GET /v1/runs?limit=50",
                    "workflow_page": "GET /v1/runs?workflow=seed-b&limit=50",
                    "status_page": "GET /v1/runs?status=succeeded&limit=50",
                    "filtered_page": "GET /v1/runs?workflow=seed-b&status=succeeded&limit=50 (seed-b: 1 run in 10)",
                    "deep_page": "GET /v1/runs?limit=50&cursor=<the cursor after half the runs>",
                },
            })
        });
        let sfn = self.sfn.as_ref().map(crate::sfn::Sfn::json);
        json!({"chain": chain, "foreach": foreach, "concurrent": concurrent, "runs_listing": listing, "rfc0022": sfn})
    }

    pub fn targets(&self) -> Vec<Value> {
        let mut t = Vec::new();
        if let Some(c) = &self.chain {
            t.push(target(
                &format!("engine overhead per task p50 (ms), {}-task chain", c.length),
                "engine",
                MAX_TASK_OVERHEAD_P50_MS,
                Some(c.chain.p50 / c.length as f64),
                true,
            ));
        }
        if let Some(s) = &self.sfn {
            s.targets(&mut t);
        }
        if let Some(l) = &self.listing {
            for (what, s) in [
                ("first page", &l.first),
                ("?workflow= first page", &l.by_workflow),
                ("?status= first page", &l.by_status),
            ] {
                t.push(target(
                    &format!("GET /v1/runs {what} p50 (ms), {} runs", l.runs),
                    "engine",
                    MAX_RUNS_FIRST_PAGE_MS,
                    Some(s.p50),
                    true,
                ));
            }
        }
        t
    }

    pub fn table(&self, out: &mut String) {
        if let Some(s) = &self.sfn {
            s.table(out);
        }
        if self.chain.is_none()
            && self.foreach.is_none()
            && self.concurrent.is_none()
            && self.listing.is_none()
        {
            return;
        }
        let row = |out: &mut String, label: &str, s: &Summary, extra: String| {
            let _ = writeln!(
                out,
                "  {label:<34} {:>9.3} {:>9.3} {:>9.3} {:>9.3}  {extra}",
                s.p50, s.p95, s.p99, s.mean
            );
        };
        let _ = writeln!(
            out,
            "\nWorkflow engine (ms)                      p50       p95       p99      mean"
        );
        if let Some(c) = &self.chain {
            let n = c.length as f64;
            row(
                out,
                &format!("{}-task noop chain", c.length),
                &c.chain,
                format!("server CPU {:.1} ms/run", c.chain_cpu_ms),
            );
            row(
                out,
                "one-task noop",
                &c.single,
                format!("server CPU {:.2} ms/run", c.single_cpu_ms),
            );
            let _ = writeln!(
                out,
                "  {:<34} per task p50 {:.4} ms (run / {}), marginal {:.4} ms ((chain - one) / {})",
                "",
                c.chain.p50 / n,
                c.length,
                (c.chain.p50 - c.single.p50) / (n - 1.0),
                c.length - 1
            );
            if let Some(e) = &c.chain_expr {
                row(
                    out,
                    "chain, expression inputs",
                    e,
                    format!(
                        "{:.3} ms/task, server CPU {:.0} ms/run",
                        e.p50 / n,
                        c.chain_expr_cpu_ms
                    ),
                );
            }
        }
        if let Some(f) = &self.foreach {
            let n = f.items as f64;
            row(
                out,
                &format!("foreach {} items, _item expr", f.items),
                &f.with_expr,
                format!(
                    "{:.3} ms/item, server CPU {:.0} ms/run",
                    f.with_expr.p50 / n,
                    f.with_expr_cpu_ms
                ),
            );
            row(
                out,
                &format!("foreach {} items, plain noop", f.items),
                &f.plain,
                format!(
                    "{:.4} ms/item, server CPU {:.0} ms/run",
                    f.plain.p50 / n,
                    f.plain_cpu_ms
                ),
            );
        }
        if let Some(c) = &self.concurrent {
            for p in &c.paths {
                row(
                    out,
                    &format!("{} clients {}", c.clients, p.name),
                    &p.summary,
                    format!(
                        "{:>6.0} runs/s; CPU us/req client {:.0} server {:.0} instance {:.0}; flushes/req {:.2}",
                        p.rps, p.cpu_us[0], p.cpu_us[1], p.cpu_us[2], p.flushes
                    ),
                );
            }
            if let (Some(w), Some(d)) = (c.path("workflow-python"), c.path("direct-python")) {
                let _ = writeln!(
                    out,
                    "  {:<34} workflow/direct: throughput {:.2}x, latency p50 {:.2}x",
                    "",
                    w.rps / d.rps,
                    w.summary.p50 / d.summary.p50
                );
            }
        }
        if let Some(l) = &self.listing {
            let extra = format!(
                "{} runs, store {:.1} MB",
                l.runs,
                l.store_bytes as f64 / 1e6
            );
            row(out, "GET /v1/runs first page", &l.first, extra);
            row(out, "  ?workflow=seed-b", &l.by_workflow, String::new());
            row(out, "  ?status=succeeded", &l.by_status, String::new());
            row(
                out,
                "  ?workflow=seed-b&status=succeeded",
                &l.filtered,
                String::new(),
            );
            row(
                out,
                &format!("  cursor after {} runs", l.deep_offset),
                &l.deep,
                String::new(),
            );
            let b = &l.backup;
            row(
                out,
                "one-task run, before a backup",
                &b.runs_before,
                String::new(),
            );
            row(
                out,
                "  while `fusion backup` runs",
                &b.runs_during,
                format!(
                    "backup {:.1} s, {:.1} MB; restore {:.1} s",
                    b.backup_secs,
                    b.backup_bytes as f64 / 1e6,
                    b.restore_secs
                ),
            );
            let _ = writeln!(
                out,
                "  {:<34} seeding {:.1} s ({:.0} runs/s){}",
                "",
                l.seed_secs,
                l.seed_runs_per_sec,
                l.from_cache
                    .as_ref()
                    .map_or(String::new(), |c| format!(", reused from {c}"))
            );
        }
    }
}

impl Concurrent {
    fn path(&self, name: &str) -> Option<&PathLoad> {
        self.paths.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::{chain_yaml, copy_dir};

    #[test]
    fn copy_dir_keeps_links_even_dangling_ones() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("db")).unwrap();
        std::fs::write(from.join("db/conf"), "x").unwrap();
        std::os::unix::fs::symlink("usr/sbin", from.join("sbin")).unwrap();
        let to = dir.path().join("to");
        copy_dir(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(to.join("db/conf")).unwrap(), "x");
        assert_eq!(
            std::fs::read_link(to.join("sbin")).unwrap(),
            std::path::Path::new("usr/sbin")
        );
    }

    #[test]
    fn chain_links_each_task_to_the_previous_one() {
        let y = chain_yaml(3, true);
        assert!(y.starts_with("apiVersion: 1\noutput: t2\ntasks:\n"));
        assert!(y.contains("  t0:\n    run: noop\n    inputs: \"{ param() }\"\n  t1:"));
        assert!(y.contains(
            "  t2:\n    run: noop\n    inputs: \"{ output('t1') }\"\n    requires: [t1]\n"
        ));
        assert!(!chain_yaml(2, false).contains("inputs"));
    }
}
