//! Stalls (`stall`): W2 of the Restate part (ten HTTP steps in a row, each
//! calling the python echo function) on Fusion alone, `--stall-runs` runs one
//! after another, for the tail: p99.9 and the worst run, and which runs were
//! slow (their index and time since the start, to tell a one-off from a
//! pattern). See bench/README.md ("Stalls").

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::client::run_batch;
use crate::ctx::Ctx;
use crate::report::target;
use crate::restate::{create_echo, post, workload_yaml, STEPS};
use crate::stats::{round3, Summary};
use crate::workflows::create_workflow;

/// Issue 10's target (reported, never asserted): W2 p99.9 under 20 ms.
pub const MAX_P999_MS: f64 = 20.0;
/// Runs measured per batch (for the progress line and the time stamps).
const BATCH: usize = 500;

pub struct Stall {
    pub runs: usize,
    pub summary: Summary,
    pub secs: f64,
    pub server_cpu_ms_per_run: f64,
    /// Runs slower than the target: (index, seconds since the first, ms).
    pub slow: Vec<(usize, f64, f64)>,
}

impl Stall {
    pub fn json(&self) -> Value {
        let mut worst = self.slow.clone();
        worst.sort_by(|a, b| b.2.total_cmp(&a.2));
        json!({
            "what": "W2: ten HTTP steps in a row (bench-w2, each task calling the python echo function bench-echo), one run after another, Fusion alone",
            "runs": self.runs,
            "w2": self.summary.json(),
            "secs": round3(self.secs),
            "server_cpu_ms_per_run": round3(self.server_cpu_ms_per_run),
            "over_target_ms": MAX_P999_MS,
            "runs_over_target": self.slow.len(),
            "slowest": worst.iter().take(20).map(|(i, t, ms)| json!({"run": i, "at_s": round3(*t), "ms": round3(*ms)})).collect::<Vec<_>>(),
        })
    }

    pub fn target(&self) -> Value {
        target(
            &format!("W2 p99.9 (ms) over {} runs, Fusion alone", self.runs),
            "engine",
            MAX_P999_MS,
            Some(self.summary.p999),
            true,
        )
    }

    pub fn table(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nStalls: W2 (ten HTTP steps in a row), {} runs one after another, {:.1} s\n  {:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            self.runs, self.secs, "ms", "p50", "p95", "p99", "p99.9", "max", "mean"
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            "W2", s.p50, s.p95, s.p99, s.p999, s.max, s.mean
        );
        let mut worst = self.slow.clone();
        worst.sort_by(|a, b| b.2.total_cmp(&a.2));
        let list: Vec<String> = worst
            .iter()
            .take(5)
            .map(|(i, t, ms)| format!("#{i} at {t:.1} s: {ms:.1} ms"))
            .collect();
        let _ = writeln!(
            out,
            "  {} runs over {MAX_P999_MS} ms{}{}; server CPU {:.2} ms/run",
            self.slow.len(),
            if list.is_empty() { "" } else { ": " },
            list.join(", "),
            self.server_cpu_ms_per_run
        );
        out
    }
}

pub async fn run(ctx: &mut Ctx) -> Result<Stall> {
    let runs = ctx.args.stall_runs.max(1);
    create_echo(ctx).await?;
    create_workflow(ctx, "bench-w2", &workload_yaml(STEPS, true)).await?;
    let probe = post(
        format!("{}/fission-function/bench-w2", ctx.router),
        StatusCode::OK,
    )?;
    run_batch(&ctx.http, &probe, 1, 50).await?;
    eprintln!("fusion-bench: stall: {runs} runs of W2, one after another");
    let cpu_before = Ctx::ticks([ctx.server_pid])[0];
    let start = Instant::now();
    let mut all: Vec<Duration> = Vec::with_capacity(runs);
    let mut slow = Vec::new();
    while all.len() < runs {
        let n = (runs - all.len()).min(BATCH);
        // One client: the samples come back in the order they ran; each run's
        // start is the batch's start plus the runs before it.
        let batch_start = start.elapsed();
        let (s, _) = run_batch(&ctx.http, &probe, 1, n)
            .await
            .with_context(|| format!("after {} runs", all.len()))?;
        let mut at = batch_start;
        for d in s {
            if d.as_secs_f64() * 1e3 > MAX_P999_MS {
                slow.push((all.len(), at.as_secs_f64(), d.as_secs_f64() * 1e3));
            }
            at += d;
            all.push(d);
        }
        eprintln!("  {} runs, {} over {MAX_P999_MS} ms", all.len(), slow.len());
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = Ctx::ticks([ctx.server_pid])[0].saturating_sub(cpu_before);
    let summary = Summary::of(&all).context("no samples")?;
    eprintln!(
        "  W2 p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        summary.p50, summary.p99, summary.p999, summary.max
    );
    Ok(Stall {
        runs,
        summary,
        secs,
        server_cpu_ms_per_run: ctx.us_per(cpu, runs) / 1e3,
        slow,
    })
}
