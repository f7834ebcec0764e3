//! `fusion-bench`: the benchmark harness for Fusion.
//!
//! Starts the real `fusion server` (a release build given with `--fusion`) on free
//! loopback ports in a temporary data directory and measures
//!
//! - the FaaS half (`faas`), for python and nodejs hello functions, once per
//!   backend (`--backends`, a fresh server with `FUSION_BACKEND` each): warm
//!   latency and throughput through the router vs direct to the same specialized
//!   instance, cold starts from the warm pool and from an empty pool, and the
//!   runtime's own start-up floor;
//! - the workflow engine (`workflows`): per-task overhead of a chain of `noop`
//!   tasks, a 1,000-item `foreach`, concurrent one-task runs next to a plain
//!   function call, and the run history's first page with 100,000 runs stored
//!   (and a backup and restore of that store);
//! - RFC-0022 workflows (`sfn`): per-step overhead of a 100-state Task chain and a
//!   1,000-item Map calling an echo function, against as many direct calls;
//! - message-queue triggers (`mqt`): messages per second from NATS JetStream
//!   (a `nats-server` the harness starts) through a hello function, next to the
//!   same function over HTTP;
//! - Restate side by side (`restate`): W1-W4 on Fusion and on Restate (its npm
//!   server and a service written with its SDK, bench/restate) in one run;
//! - the server's footprint (`footprint`): RSS and disk over many one-task runs,
//!   with an explicit `--store-cache-mb`;
//! - stalls (`stall`): the tail (p99.9, max) of W2 over thousands of runs.
//!
//! Each part runs on a server of its own. Prints a table and writes
//! `<out>/<UTC timestamp>.json` and `<out>/latest.json`. The targets from the
//! issues are reported as pass/fail, never asserted. See bench/README.md.

#![recursion_limit = "256"]

mod backup;
mod client;
mod ctx;
mod faas;
mod footprint;
mod mqt;
mod report;
mod restate;
mod server;
mod sfn;
mod stall;
mod stats;
mod timer;
mod workflows;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde_json::json;

use crate::ctx::Ctx;
use crate::ctx::Leftovers;
use crate::faas::{BackendResult, Lang, LANGS, POOLSIZE};
use crate::workflows::EngineResults;

/// The parts `--only` selects from; `engine` is chain, foreach and concurrent
/// (`sfn`, RFC-0022 per-step overhead, runs on the same server); `timer` is
/// time-trigger firing lateness, `mqt` messages per second from NATS,
/// `restate` W1-W4 side by side with Restate, `footprint` RSS and disk over many
/// runs and `stall` W2's tail, each on a server of its own.
const PARTS: [&str; 11] = [
    "faas",
    "chain",
    "foreach",
    "sfn",
    "concurrent",
    "runs",
    "timer",
    "mqt",
    "restate",
    "footprint",
    "stall",
];
/// The values of `FUSION_BACKEND` the FaaS part is run with.
const BACKENDS: [&str; 2] = ["container", "process"];

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Benchmark Fusion: router overhead, warm throughput, cold starts, workflow engine"
)]
pub struct Args {
    /// The fusion binary to benchmark. Build it first:
    /// `cargo build --release --bin fusion`. Default:
    /// `$CARGO_TARGET_DIR/release/fusion`, else `target/release/fusion` in the workspace.
    #[arg(long)]
    fusion: Option<PathBuf>,
    /// The commit the --fusion binary was built from, when it is not this
    /// checkout's HEAD with its uncommitted changes (e.g. a build of a clean
    /// export while others edit the checkout); recorded instead of HEAD.
    #[arg(long)]
    fusion_commit: Option<String>,
    /// Parts to run: faas, chain, foreach, sfn, concurrent, runs, timer, mqt, restate,
    /// footprint, stall; `engine`
    /// is chain, foreach and concurrent [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measured requests per path (routed, direct) at 1 client.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Measured requests per path at the concurrent level [default: 10 x --requests].
    #[arg(long)]
    requests_concurrent: Option<usize>,
    /// Concurrent clients of the concurrent levels (FaaS and workflow runs) and of
    /// seeding.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Batches per level; the paths compared alternate batch by batch.
    #[arg(long, default_value_t = 10)]
    batches: usize,
    /// Cold starts measured per language and kind (warm pool, empty pool).
    #[arg(long, default_value_t = 30)]
    cold: usize,
    /// Quiet time before each cold start, once the pool is full, in ms.
    #[arg(long, default_value_t = 100)]
    settle_ms: u64,
    /// Backends the FaaS part runs on, one after another, each on a fresh server
    /// started with `FUSION_BACKEND=<backend>`.
    #[arg(long, value_delimiter = ',', default_values_t = BACKENDS.map(String::from))]
    backends: Vec<String>,
    /// Languages to measure.
    #[arg(long, value_delimiter = ',', default_values_t = ["python".to_string(), "nodejs".to_string()])]
    languages: Vec<String>,
    /// Tasks in the noop chain.
    #[arg(long, default_value_t = 100)]
    chain_length: usize,
    /// Measured runs of the chain (and of the one-task baseline), after warm-up.
    #[arg(long, default_value_t = 50)]
    chain_runs: usize,
    /// Measured runs of the chain whose tasks have expression inputs (0: skip).
    #[arg(long, default_value_t = 10)]
    chain_expr_runs: usize,
    /// Items of the foreach.
    #[arg(long, default_value_t = 1000)]
    foreach_items: usize,
    /// Measured runs of the foreach.
    #[arg(long, default_value_t = 5)]
    foreach_runs: usize,
    /// States of the RFC-0022 Task chain (`sfn`; at most 100, RFC-0022's limit).
    #[arg(long, default_value_t = 100)]
    sfn_chain_length: usize,
    /// Measured runs of the RFC-0022 Task chain, each paired with as many
    /// direct calls (0: skip).
    #[arg(long, default_value_t = 40)]
    sfn_chain_runs: usize,
    /// Items of the RFC-0022 Map.
    #[arg(long, default_value_t = 1000)]
    sfn_map_items: usize,
    /// maxConcurrency of the RFC-0022 Map (and clients of its direct calls).
    #[arg(long, default_value_t = 10)]
    sfn_map_concurrency: usize,
    /// Measured runs of the RFC-0022 Map, each paired with as many direct calls
    /// (0: skip).
    #[arg(long, default_value_t = 10)]
    sfn_map_runs: usize,
    /// Measured requests per path of the concurrent workflow runs.
    #[arg(long, default_value_t = 5000)]
    wf_requests: usize,
    /// Runs stored before the run history is measured (0: skip that part).
    #[arg(long, default_value_t = 100_000)]
    runs_seed: usize,
    /// Measured requests per run-history query.
    #[arg(long, default_value_t = 200)]
    runs_requests: usize,
    /// `@every 1s` time triggers measured at once (`timer`), each calling its own function.
    #[arg(long, default_value_t = 4)]
    timer_triggers: usize,
    /// Seconds the time triggers are measured for (after 3 warm-up ticks).
    #[arg(long, default_value_t = 60)]
    timer_secs: u64,
    /// Messages per batch of the message-queue trigger part (and HTTP requests
    /// of the batch it is compared with).
    #[arg(long, default_value_t = 5000)]
    mqt_messages: usize,
    /// Messages in flight of the trigger, and HTTP clients of its comparison.
    #[arg(long, default_value_t = 16)]
    mqt_concurrency: usize,
    /// Batches of the message-queue trigger part (NATS and HTTP alternate).
    #[arg(long, default_value_t = 5)]
    mqt_batches: usize,
    /// Runs of each of W1, W2, W3 per engine, one after another (`restate`).
    #[arg(long, default_value_t = 500)]
    restate_runs: usize,
    /// Runs of W4 (W1 at --clients clients) per engine (`restate`).
    #[arg(long, default_value_t = 5000)]
    restate_w4_requests: usize,
    /// One-task runs of the footprint part (at --clients clients).
    #[arg(long, default_value_t = 500_000)]
    footprint_runs: usize,
    /// Runs between two samples of the footprint part's RSS and disk.
    #[arg(long, default_value_t = 10_000)]
    footprint_sample_every: usize,
    /// Seconds the server's RSS is sampled (every second) after the footprint
    /// part's load, with nothing running.
    #[arg(long, default_value_t = 30)]
    footprint_idle_secs: u64,
    /// `--store-cache-mb` the footprint part's server is started with (the
    /// store's page cache, MiB).
    #[arg(long, default_value_t = 64)]
    store_cache_mb: u64,
    /// Runs of W2 (ten HTTP steps in a row), one after another (`stall`).
    #[arg(long, default_value_t = 5000)]
    stall_runs: usize,
    /// Seed the run history afresh and keep no copy in bench/results/.cache.
    #[arg(long)]
    no_cache: bool,
    /// Where the JSON results go [default: bench/results of the workspace].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the figures but write no files.
    #[arg(long)]
    no_write: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C the run future is dropped, and with it the server guard, which
    // stops the server and removes the temporary directory.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some measurements failed; see the errors above (and in the JSON)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn default_fusion() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("release/fusion"),
        None => workspace_root().join("target/release/fusion"),
    }
}

pub fn requests_concurrent(args: &Args) -> usize {
    args.requests_concurrent.unwrap_or(args.requests * 10)
}

/// The parts selected by `--only`.
fn parts(args: &Args) -> Result<Vec<&'static str>> {
    if args.only.is_empty() {
        return Ok(PARTS.to_vec());
    }
    let mut out = Vec::new();
    for p in &args.only {
        match p.as_str() {
            "engine" => out.extend(["chain", "foreach", "concurrent"]),
            p => out.push(*PARTS.iter().find(|x| **x == p).ok_or_else(|| {
                anyhow!("unknown part {p:?}: use {} or engine", PARTS.join(", "))
            })?),
        }
    }
    Ok(out)
}

/// Runs every selected part; answers whether all of them succeeded.
async fn run(args: Args) -> Result<bool> {
    let fusion = args.fusion.clone().unwrap_or_else(default_fusion);
    if !fusion.is_file() {
        bail!(
            "no fusion binary at {}: build it with `cargo build --release --bin fusion` \
             (or pass --fusion PATH)",
            fusion.display()
        );
    }
    let parts = parts(&args)?;
    let langs: Vec<Lang> = args
        .languages
        .iter()
        .map(|l| {
            LANGS
                .iter()
                .find(|x| x.name == l.as_str())
                .copied()
                .ok_or_else(|| anyhow!("unknown language {l:?}: use python or nodejs"))
        })
        .collect::<Result<_>>()?;
    if let Some(b) = args
        .backends
        .iter()
        .find(|b| !BACKENDS.contains(&b.as_str()))
    {
        bail!("unknown backend {b:?}: use {}", BACKENDS.join(", "));
    }
    if args.clients == 0 || args.batches == 0 || args.requests == 0 {
        bail!("--clients, --batches and --requests must be at least 1");
    }
    let started = report::utc_now();
    let load_before = report::loadavg();
    let fusion_abs = fusion.canonicalize().unwrap_or(fusion.clone());
    eprintln!("fusion-bench: starting {}", fusion_abs.display());

    let mut errors: Vec<String> = Vec::new();
    let mut orphans = Leftovers::default();
    let mut instances_seen = 0;
    let mut faas: Vec<BackendResult> = Vec::new();
    let mut engine = EngineResults::default();
    let phase_started = Instant::now();
    let mut phase_secs = serde_json::Map::new();

    // The runtime start-up floor does not depend on the backend: measured on the
    // first server that runs.
    let mut floor_pending = true;
    for backend in args.backends.iter().filter(|_| parts.contains(&"faas")) {
        let t = Instant::now();
        eprintln!("fusion-bench: faas on the {backend} backend");
        match Ctx::start(&fusion, &args, Some(backend), |_| Ok(())).await {
            Err(e) => errors.push(format!(
                "faas on {backend}: the server did not start: {e:#}"
            )),
            Ok((mut server, mut ctx)) => {
                let r = faas::run(&mut ctx, &langs, floor_pending, &mut errors).await;
                instances_seen += ctx.pids.len();
                orphans.extend(ctx.finish(&mut server).await?);
                match r {
                    Ok(langs) => {
                        floor_pending = false;
                        faas.push(BackendResult {
                            backend: backend.clone(),
                            langs,
                        });
                    }
                    Err(e) => errors.push(format!("faas on {backend}: {e:#}")),
                }
            }
        }
        phase_secs.insert(format!("faas-{backend}"), json!(t.elapsed().as_secs()));
    }
    let engine_parts: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| ["chain", "foreach", "sfn", "concurrent"].contains(p))
        .collect();
    if !engine_parts.is_empty() {
        let t = Instant::now();
        let (mut server, mut ctx) = Ctx::start(&fusion, &args, None, |_| Ok(())).await?;
        let r = workflows::run(&mut ctx, &engine_parts, &mut engine, &mut errors).await;
        instances_seen += ctx.pids.len();
        orphans.extend(ctx.finish(&mut server).await?);
        if let Err(e) = r {
            errors.push(format!("engine: {e:#}"));
        }
        phase_secs.insert("engine".into(), json!(t.elapsed().as_secs()));
    }
    if parts.contains(&"runs") && args.runs_seed > 0 {
        let t = Instant::now();
        match workflows::listing(&fusion, &args).await {
            Ok((l, o)) => {
                engine.listing = Some(l);
                orphans.extend(o);
            }
            Err(e) => errors.push(format!("runs listing: {e:#}")),
        }
        phase_secs.insert("runs".into(), json!(t.elapsed().as_secs()));
    }
    let mut timer_result = None;
    if parts.contains(&"timer") {
        let t = Instant::now();
        eprintln!("fusion-bench: timer lateness");
        let (mut server, mut ctx) = Ctx::start(&fusion, &args, None, |_| Ok(())).await?;
        let r = timer::run(&mut ctx, args.timer_triggers, args.timer_secs).await;
        instances_seen += ctx.pids.len();
        orphans.extend(ctx.finish(&mut server).await?);
        match r {
            Ok(r) => timer_result = Some(r),
            Err(e) => errors.push(format!("timer: {e:#}")),
        }
        phase_secs.insert("timer".into(), json!(t.elapsed().as_secs()));
    }
    let mut mqt_result = None;
    if parts.contains(&"mqt") {
        let t = Instant::now();
        eprintln!("fusion-bench: message-queue triggers");
        let (mut server, mut ctx) = Ctx::start(&fusion, &args, None, |_| Ok(())).await?;
        let r = mqt::run(
            &mut ctx,
            args.mqt_messages,
            args.mqt_concurrency.max(1),
            args.mqt_batches.max(1),
        )
        .await;
        instances_seen += ctx.pids.len();
        orphans.extend(ctx.finish(&mut server).await?);
        match r {
            Ok(m) => mqt_result = Some(m),
            Err(e) => errors.push(format!("mqt: {e:#}")),
        }
        phase_secs.insert("mqt".into(), json!(t.elapsed().as_secs()));
    }
    let mut footprint_result = None;
    if parts.contains(&"footprint") {
        let t = Instant::now();
        let extra = [
            "--store-cache-mb".to_string(),
            args.store_cache_mb.to_string(),
        ];
        let (mut server, ctx) =
            Ctx::start_with_args(&fusion, &args, None, &extra, |_| Ok(())).await?;
        let r = footprint::run(&ctx, args.store_cache_mb).await;
        instances_seen += ctx.pids.len();
        orphans.extend(ctx.finish(&mut server).await?);
        match r {
            Ok(f) => footprint_result = Some(f),
            Err(e) => errors.push(format!("footprint: {e:#}")),
        }
        phase_secs.insert("footprint".into(), json!(t.elapsed().as_secs()));
    }
    let mut stall_result = None;
    if parts.contains(&"stall") {
        let t = Instant::now();
        let (mut server, mut ctx) = Ctx::start(&fusion, &args, None, |_| Ok(())).await?;
        let r = stall::run(&mut ctx).await;
        instances_seen += ctx.pids.len();
        orphans.extend(ctx.finish(&mut server).await?);
        match r {
            Ok(s) => stall_result = Some(s),
            Err(e) => errors.push(format!("stall: {e:#}")),
        }
        phase_secs.insert("stall".into(), json!(t.elapsed().as_secs()));
    }
    let mut restate_result = None;
    if parts.contains(&"restate") {
        let t = Instant::now();
        eprintln!("fusion-bench: W1-W4 side by side with Restate");
        let (mut server, mut ctx) = Ctx::start(&fusion, &args, None, |_| Ok(())).await?;
        let r = restate::run(&mut ctx).await;
        instances_seen += ctx.pids.len();
        orphans.extend(ctx.finish(&mut server).await?);
        match r {
            Ok((r, left)) => {
                restate_result = Some(r);
                orphans.extend(left);
            }
            Err(e) => errors.push(format!("restate: {e:#}")),
        }
        phase_secs.insert("restate".into(), json!(t.elapsed().as_secs()));
    }
    if !orphans.pids.is_empty() {
        errors.push(format!(
            "instances still running after the server stopped: pids {:?}",
            orphans.pids
        ));
    }
    if !orphans.containers.is_empty() {
        errors.push(format!(
            "containers left in `runc list` after the server stopped: {}",
            orphans.containers.join(", ")
        ));
    }

    for e in &errors {
        eprintln!("error: {e}");
    }
    let run_info = json!({
        "started_utc": started.0,
        "finished_utc": report::utc_now().0,
        "seconds": phase_started.elapsed().as_secs(),
        "seconds_by_part": phase_secs,
        "parts": parts,
        "loadavg_before": load_before,
        "loadavg_after": report::loadavg(),
        "fusion_binary": fusion_abs.display().to_string(),
        "instances_seen": instances_seen,
        "orphans": orphans.pids,
        "orphan_containers": orphans.containers,
        "config": {
            "requests_1_client": args.requests,
            "clients": args.clients,
            "requests_concurrent": requests_concurrent(&args),
            "batches": args.batches,
            "backends": args.backends,
            "cold_starts": args.cold,
            "settle_ms": args.settle_ms,
            "poolsize": POOLSIZE,
            "function": {"concurrency": 64, "requests_per_instance": 64},
            "chain_length": args.chain_length,
            "chain_runs": args.chain_runs,
            "chain_expr_runs": args.chain_expr_runs,
            "foreach_items": args.foreach_items,
            "foreach_runs": args.foreach_runs,
            "wf_requests": args.wf_requests,
            "sfn_chain_length": args.sfn_chain_length,
            "sfn_chain_runs": args.sfn_chain_runs,
            "sfn_map_items": args.sfn_map_items,
            "sfn_map_concurrency": args.sfn_map_concurrency,
            "sfn_map_runs": args.sfn_map_runs,
            "runs_seed": args.runs_seed,
            "runs_requests": args.runs_requests,
            "timer_triggers": args.timer_triggers,
            "timer_secs": args.timer_secs,
            "mqt_messages": args.mqt_messages,
            "mqt_concurrency": args.mqt_concurrency,
            "mqt_batches": args.mqt_batches,
            "restate_runs": args.restate_runs,
            "restate_w4_requests": args.restate_w4_requests,
            "footprint_runs": args.footprint_runs,
            "footprint_sample_every": args.footprint_sample_every,
            "footprint_idle_secs": args.footprint_idle_secs,
            "store_cache_mb_footprint": args.store_cache_mb,
            "stall_runs": args.stall_runs,
            "client": "one keep-alive HTTP/1.1 connection per client (TCP_NODELAY for TCP, or the Unix socket), the request written from bytes prepared once, answers read with httparse; one current-thread tokio runtime",
        },
    });
    let mut doc = report::document(&faas, &engine, &args, run_info, &errors);
    if let Some(t) = &timer_result {
        doc["timer"] = t.json();
        if let Some(targets) = doc["targets"].as_array_mut() {
            targets.push(t.target());
        }
        print!("{}", t.table());
    }
    if let Some(r) = &restate_result {
        doc["restate"] = r.json();
        if let Some(targets) = doc["targets"].as_array_mut() {
            targets.extend(r.targets());
        }
        print!("{}", r.table());
    }
    if let Some(f) = &footprint_result {
        doc["footprint"] = f.json();
        if let Some(targets) = doc["targets"].as_array_mut() {
            targets.extend(f.targets());
        }
        print!("{}", f.table());
    }
    if let Some(s) = &stall_result {
        doc["stall"] = s.json();
        if let Some(targets) = doc["targets"].as_array_mut() {
            targets.push(s.target());
        }
        print!("{}", s.table());
    }
    println!("{}", report::table(&faas, &engine, &doc));
    if let Some(m) = &mqt_result {
        doc["mqt"] = m.json();
        println!("{}", m.table());
    }
    if !args.no_write {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        // A run of one of these parts alone is named for it.
        let suffix = match parts.as_slice() {
            [p @ ("restate" | "footprint" | "stall" | "runs")] => format!("-{p}"),
            _ => String::new(),
        };
        let dated = out.join(format!("{}{suffix}.json", started.1));
        std::fs::write(&dated, &text)
            .with_context(|| format!("cannot write {}", dated.display()))?;
        std::fs::write(out.join("latest.json"), &text)?;
        eprintln!("fusion-bench: wrote {} and latest.json", dated.display());
    }
    Ok(errors.is_empty())
}
