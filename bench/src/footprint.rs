//! The server's footprint under sustained load (`footprint`): on a fresh server
//! started with an explicit `--store-cache-mb`, `--footprint-runs` one-task
//! noop runs at `--clients` clients, sampling the server's resident memory
//! (`VmRSS` of /proc/<pid>/status) and the data directory's size every
//! `--footprint-sample-every` runs; then, with nothing running, the data
//! directory polled until its size is stable (sled's files written out) and the
//! memory sampled for `--footprint-idle-secs` (is it given back?). See
//! bench/README.md ("Footprint").

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::client::{run_batch, Probe};
use crate::ctx::Ctx;
use crate::report::target;
use crate::stats::{round3, Summary};
use crate::workflows::{chain_yaml, create_workflow, invoke_uri};

/// Issue 10's targets (reported, never asserted): server RSS after 500,000
/// one-task runs, and bytes on disk per run.
pub const MAX_RSS_MB: f64 = 256.0;
pub const MAX_DISK_BYTES_PER_RUN: f64 = 1024.0;
const WORKFLOW: &str = "bench-footprint";
/// The data directory is stable once this many polls in a row (`SETTLE_POLL`
/// apart) read the same size; it is given up on after `SETTLE_LIMIT`.
const SETTLE_READS: usize = 10;
const SETTLE_POLL: Duration = Duration::from_millis(200);
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Bytes of every file under a directory: their lengths, and the blocks
/// allocated to them (what `du` counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub apparent: u64,
    pub allocated: u64,
}

pub fn usage(dir: &Path) -> Usage {
    let mut u = Usage::default();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return u;
    };
    for e in rd.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => {
                let sub = usage(&e.path());
                u.apparent += sub.apparent;
                u.allocated += sub.allocated;
            }
            Ok(m) => {
                u.apparent += m.len();
                u.allocated += m.blocks() * 512;
            }
            Err(_) => {}
        }
    }
    u
}

/// A `Vm*` line of /proc/<pid>/status (`VmRSS`, `VmHWM`), in kB.
pub fn vm_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_kb(&status, key)
}

fn parse_vm_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// One point of the curve, after `runs` runs.
pub struct Sample {
    pub runs: usize,
    pub secs: f64,
    pub rss_kb: u64,
    pub data: Usage,
    pub db: Usage,
    /// The chunk of runs just before this sample: its rate and latencies.
    pub chunk_rps: f64,
    pub chunk: Option<Summary>,
}

pub struct Footprint {
    pub runs: usize,
    pub clients: usize,
    pub store_cache_mb: u64,
    pub sample_every: usize,
    /// Before the first measured run (after the workflow is stored and 100
    /// warm-up runs).
    pub baseline: Sample,
    pub curve: Vec<Sample>,
    pub load_secs: f64,
    pub latency: Summary,
    pub server_cpu_us_per_run: f64,
    /// The kernel's peak RSS of the server (`VmHWM`) at the end of the load.
    pub hwm_kb: u64,
    /// After the load: seconds until the data directory's size was stable, and
    /// whether it was within `SETTLE_LIMIT`.
    pub settle_secs: f64,
    pub settled: bool,
    pub data_settled: Usage,
    pub db_settled: Usage,
    /// The RSS with nothing running, sampled every second after settling:
    /// (seconds since the load ended, kB).
    pub idle: Vec<(f64, u64)>,
}

impl Footprint {
    fn end_rss_kb(&self) -> u64 {
        self.curve.last().map_or(self.baseline.rss_kb, |s| s.rss_kb)
    }

    /// The highest RSS sampled (the kernel's `VmHWM` also counts moments
    /// between samples).
    fn sampled_peak_kb(&self) -> u64 {
        self.curve
            .iter()
            .map(|s| s.rss_kb)
            .chain([self.baseline.rss_kb])
            .max()
            .unwrap_or(0)
    }

    /// Growth of the data directory per run, once settled: (apparent, allocated).
    fn disk_per_run(&self) -> (f64, f64) {
        let n = self.runs.max(1) as f64;
        let b = &self.baseline.data;
        (
            self.data_settled.apparent.saturating_sub(b.apparent) as f64 / n,
            self.data_settled.allocated.saturating_sub(b.allocated) as f64 / n,
        )
    }

    pub fn json(&self) -> Value {
        let sample = |s: &Sample| {
            json!({
                "runs": s.runs,
                "secs": round3(s.secs),
                "rss_mb": round3(mb(s.rss_kb)),
                "data_dir_bytes": s.data.apparent,
                "data_dir_allocated_bytes": s.data.allocated,
                "db_bytes": s.db.apparent,
                "db_allocated_bytes": s.db.allocated,
                "chunk_runs_per_s": s.chunk_rps.round(),
                "chunk_p50_ms": s.chunk.map(|c| round3(c.p50)),
                "chunk_p99_ms": s.chunk.map(|c| round3(c.p99)),
            })
        };
        let (apparent, allocated) = self.disk_per_run();
        let n = self.runs.max(1) as f64;
        let b = &self.baseline;
        let idle_last = self.idle.last().map(|(_, kb)| *kb);
        json!({
            "what": "one-task noop workflow (run: noop), invoked synchronously (POST /fission-function/bench-footprint, 204) by --clients clients; every run durable before it is answered",
            "runs": self.runs,
            "clients": self.clients,
            "store_cache_mb": self.store_cache_mb,
            "server_args": ["--store-cache-mb", self.store_cache_mb.to_string()],
            "sample_every_runs": self.sample_every,
            "load_secs": round3(self.load_secs),
            "runs_per_s": (n / self.load_secs).round(),
            "latency": self.latency.json(),
            "server_cpu_us_per_run": round3(self.server_cpu_us_per_run),
            "rss_mb": {
                "baseline": round3(mb(b.rss_kb)),
                "end_of_load": round3(mb(self.end_rss_kb())),
                "peak_sampled": round3(mb(self.sampled_peak_kb())),
                "peak_vmhwm": round3(mb(self.hwm_kb)),
                "idle_end": idle_last.map(|kb| round3(mb(kb))),
                "idle_min": self.idle.iter().map(|(_, kb)| *kb).min().map(|kb| round3(mb(kb))),
            },
            "disk": {
                "baseline_data_dir_bytes": b.data.apparent,
                "baseline_db_bytes": b.db.apparent,
                "settled_data_dir_bytes": self.data_settled.apparent,
                "settled_data_dir_allocated_bytes": self.data_settled.allocated,
                "settled_db_bytes": self.db_settled.apparent,
                "bytes_per_run": round3(apparent),
                "allocated_bytes_per_run": round3(allocated),
                "db_bytes_per_run": round3(self.db_settled.apparent.saturating_sub(b.db.apparent) as f64 / n),
                "settle_secs": round3(self.settle_secs),
                "settled": self.settled,
                "flushed": format!("every run is flushed before it is answered; after the load, the data directory's size was polled every {} ms until {SETTLE_READS} reads in a row agreed (at most {} s)", SETTLE_POLL.as_millis(), SETTLE_LIMIT.as_secs()),
            },
            "curve": std::iter::once(b).chain(&self.curve).map(sample).collect::<Vec<_>>(),
            "idle_rss_mb": self.idle.iter().map(|(t, kb)| json!([round3(*t), round3(mb(*kb))])).collect::<Vec<_>>(),
        })
    }

    pub fn targets(&self) -> Vec<Value> {
        vec![
            target(
                &format!(
                    "server RSS (MB) after {} one-task runs, cache {} MB",
                    self.runs, self.store_cache_mb
                ),
                "engine",
                MAX_RSS_MB,
                Some(mb(self.end_rss_kb())),
                true,
            ),
            target(
                &format!("server peak RSS (MB, VmHWM) over {} runs", self.runs),
                "engine",
                MAX_RSS_MB,
                Some(mb(self.hwm_kb)),
                true,
            ),
            target(
                "disk bytes per one-task run",
                "engine",
                MAX_DISK_BYTES_PER_RUN,
                Some(self.disk_per_run().0),
                true,
            ),
        ]
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let (apparent, allocated) = self.disk_per_run();
        let _ = writeln!(
            out,
            "\nFootprint: {} one-task runs at {} clients, --store-cache-mb {}",
            self.runs, self.clients, self.store_cache_mb
        );
        let _ = writeln!(
            out,
            "  {:.1} s, {:.0} runs/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms; server CPU {:.0} us/run",
            self.load_secs,
            self.runs as f64 / self.load_secs,
            self.latency.p50,
            self.latency.p99,
            self.latency.p999,
            self.server_cpu_us_per_run
        );
        let _ = writeln!(
            out,
            "  RSS MB: start {:.1}, end of load {:.1}, peak {:.1} (sampled) / {:.1} (VmHWM), idle after {:.0} s {}",
            mb(self.baseline.rss_kb),
            mb(self.end_rss_kb()),
            mb(self.sampled_peak_kb()),
            mb(self.hwm_kb),
            self.idle.last().map_or(0.0, |(t, _)| *t),
            self.idle
                .last()
                .map_or("-".to_string(), |(_, kb)| format!("{:.1}", mb(*kb))),
        );
        let _ = writeln!(
            out,
            "  disk: data dir {:.1} -> {:.1} MB: {:.0} bytes/run ({:.0} allocated); {} after {:.1} s",
            self.baseline.data.apparent as f64 / 1e6,
            self.data_settled.apparent as f64 / 1e6,
            apparent,
            allocated,
            if self.settled { "stable" } else { "NOT stable" },
            self.settle_secs
        );
        let _ = writeln!(
            out,
            "  {:>9} {:>8} {:>9} {:>10}",
            "runs", "s", "RSS MB", "db MB"
        );
        let step = (self.curve.len() / 10).max(1);
        for s in std::iter::once(&self.baseline).chain(
            self.curve
                .iter()
                .enumerate()
                .filter(|(i, _)| (i + 1) % step == 0 || i + 1 == self.curve.len())
                .map(|(_, s)| s),
        ) {
            let _ = writeln!(
                out,
                "  {:>9} {:>8.1} {:>9.1} {:>10.1}",
                s.runs,
                s.secs,
                mb(s.rss_kb),
                s.db.apparent as f64 / 1e6
            );
        }
        out
    }
}

/// Polls the data directory until `SETTLE_READS` reads in a row agree (or
/// `SETTLE_LIMIT` passes); answers the size, the seconds and whether it settled.
async fn settle(data: &Path) -> (Usage, f64, bool) {
    let start = Instant::now();
    let mut last = usage(data);
    let mut same = 0;
    while start.elapsed() < SETTLE_LIMIT {
        tokio::time::sleep(SETTLE_POLL).await;
        let now = usage(data);
        if now == last {
            same += 1;
            if same >= SETTLE_READS {
                return (now, start.elapsed().as_secs_f64(), true);
            }
        } else {
            same = 0;
            last = now;
        }
    }
    (last, start.elapsed().as_secs_f64(), false)
}

/// Runs the part on `ctx`, whose server was started with
/// `--store-cache-mb <store_cache_mb>`.
pub async fn run(ctx: &Ctx, store_cache_mb: u64) -> Result<Footprint> {
    let a = &ctx.args;
    let (runs, clients) = (a.footprint_runs, a.clients.max(1));
    let every = a.footprint_sample_every.max(clients);
    create_workflow(ctx, WORKFLOW, &chain_yaml(1, false)).await?;
    let probe = Probe::post(
        invoke_uri(ctx, WORKFLOW)?,
        "text/plain",
        Bytes::from_static(b"hello"),
        StatusCode::NO_CONTENT,
    );
    run_batch(&ctx.http, &probe, clients, 100).await?;
    let pid = ctx.server_pid;
    let data = ctx.data_dir.clone();
    let db = data.join("db");
    let rss = || vm_kb(pid, "VmRSS").context("cannot read the server's VmRSS");
    // Settled before the baseline too, so warm-up writes are not counted.
    let (base_data, _, _) = settle(&data).await;
    let baseline = Sample {
        runs: 0,
        secs: 0.0,
        rss_kb: rss()?,
        data: base_data,
        db: usage(&db),
        chunk_rps: 0.0,
        chunk: None,
    };
    eprintln!(
        "fusion-bench: footprint: {runs} one-task runs at {clients} clients, --store-cache-mb {store_cache_mb} (RSS {:.1} MB)",
        mb(baseline.rss_kb)
    );
    let cpu_before = Ctx::ticks([pid])[0];
    let start = Instant::now();
    let mut all = Vec::with_capacity(runs);
    let mut curve = Vec::new();
    let mut done = 0;
    let mut last_report = Instant::now();
    while done < runs {
        let n = (runs - done).min(every);
        let (s, wall) = run_batch(&ctx.http, &probe, clients, n)
            .await
            .with_context(|| format!("after {done} runs"))?;
        done += n;
        let sample = Sample {
            runs: done,
            secs: start.elapsed().as_secs_f64(),
            rss_kb: rss()?,
            data: usage(&data),
            db: usage(&db),
            chunk_rps: n as f64 / wall.as_secs_f64(),
            chunk: Summary::of(&s),
        };
        all.extend(s);
        if last_report.elapsed() > Duration::from_secs(15) || done == runs {
            eprintln!(
                "  {done} runs, {:.0} s: RSS {:.1} MB, db {:.1} MB, {:.0} runs/s",
                sample.secs,
                mb(sample.rss_kb),
                sample.db.apparent as f64 / 1e6,
                sample.chunk_rps
            );
            last_report = Instant::now();
        }
        curve.push(sample);
    }
    let load_secs = start.elapsed().as_secs_f64();
    let cpu = Ctx::ticks([pid])[0].saturating_sub(cpu_before);
    let hwm_kb = vm_kb(pid, "VmHWM").unwrap_or(0);
    let load_end = Instant::now();
    let (data_settled, settle_secs, settled) = settle(&data).await;
    let db_settled = usage(&db);
    let mut idle = vec![(load_end.elapsed().as_secs_f64(), rss()?)];
    let idle_until = Instant::now() + Duration::from_secs(a.footprint_idle_secs);
    while Instant::now() < idle_until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        idle.push((load_end.elapsed().as_secs_f64(), rss()?));
    }
    let f = Footprint {
        runs,
        clients,
        store_cache_mb,
        sample_every: every,
        baseline,
        curve,
        load_secs,
        latency: Summary::of(&all).context("no samples")?,
        server_cpu_us_per_run: ctx.us_per(cpu, runs),
        hwm_kb,
        settle_secs,
        settled,
        data_settled,
        db_settled,
        idle,
    };
    eprintln!(
        "  RSS end {:.1} MB, peak {:.1} MB, idle {:.1} MB; disk {:.0} bytes/run",
        mb(f.end_rss_kb()),
        mb(f.hwm_kb),
        f.idle.last().map_or(0.0, |(_, kb)| mb(*kb)),
        f.disk_per_run().0
    );
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_lines_in_kb() {
        let status = "Name:\tfusion\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_kb(status, "VmRSS"), Some(102_400));
        assert_eq!(parse_vm_kb(status, "VmHWM"), Some(204_800));
        assert_eq!(parse_vm_kb(status, "VmSwap"), None);
        assert!(vm_kb(std::process::id(), "VmRSS").is_some_and(|kb| kb > 0));
    }

    #[test]
    fn usage_counts_files_below_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("db/b"), [0u8; 5000]).unwrap();
        let u = usage(dir.path());
        assert_eq!(u.apparent, 5100);
        assert!(u.allocated >= 4096);
        assert_eq!(usage(&dir.path().join("missing")), Usage::default());
    }
}
