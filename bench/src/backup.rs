//! A backup of the server with the seeded history (`runs`): `fusion backup`
//! of the whole store while one-task runs go on at one client, and
//! `fusion restore` of it into a new directory.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::client::{run_batch, Probe};
use crate::ctx::Ctx;
use crate::stats::{round3, Summary};

pub struct Figures {
    pub runs: usize,
    pub backup_secs: f64,
    pub backup_bytes: u64,
    pub restore_secs: f64,
    /// One-task `seed-a` runs at one client, before and while the backup is made.
    pub runs_before: Summary,
    pub runs_during: Summary,
}

impl Figures {
    pub fn json(&self) -> Value {
        json!({
            "runs_stored": self.runs,
            "backup_secs": round3(self.backup_secs),
            "backup_bytes": self.backup_bytes,
            "backup_runs_per_sec": (self.runs as f64 / self.backup_secs).round(),
            "restore_secs": round3(self.restore_secs),
            "one_task_runs_before": self.runs_before.json(),
            "one_task_runs_during": self.runs_during.json(),
            "what": "`fusion backup FILE` of the server with the seeded runs (the CLI's download and its read-back check), then `fusion restore FILE --data-dir DIR`; one-task noop runs (workflow seed-a, synchronous) at one client before and while the backup is made (in batches of 10 until it has ended: the last may end after it)",
        })
    }
}

/// Backs up the server of `ctx` with `fusion` (its CLI) while runs go on,
/// then restores the backup; both files go when done.
pub async fn measure(ctx: &Ctx, fusion: &Path, runs: usize) -> Result<Figures> {
    let token = std::fs::read_to_string(ctx.data_dir.join("token"))?
        .trim()
        .to_string();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("fusion.backup");
    let probe = Probe::post(
        format!("{}/fission-function/seed-a", ctx.router).parse()?,
        "text/plain",
        Bytes::from_static(b"seed"),
        StatusCode::NO_CONTENT,
    );
    run_batch(&ctx.http, &probe, 1, 50).await?;
    let (before, _) = run_batch(&ctx.http, &probe, 1, 500).await?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(fusion)
        .arg("backup")
        .arg(&file)
        .env("FUSION_URL", &ctx.api)
        .env("FUSION_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run fusion backup")?;
    // Batches of 10 until the backup has ended (the last may end after it).
    let mut during = Vec::new();
    let status = loop {
        let (s, _) = run_batch(&ctx.http, &probe, 1, 10).await?;
        during.extend(s);
        if let Some(status) = child.try_wait()? {
            break status;
        }
    };
    let backup_secs = started.elapsed().as_secs_f64();
    if !status.success() {
        let out = child.wait_with_output().await?;
        bail!(
            "fusion backup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let backup_bytes = std::fs::metadata(&file)?.len();
    let started = Instant::now();
    let out = tokio::process::Command::new(fusion)
        .arg("restore")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("restored"))
        .output()
        .await?;
    let restore_secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "fusion restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let f = Figures {
        runs,
        backup_secs,
        backup_bytes,
        restore_secs,
        runs_before: Summary::of(&before).context("no samples")?,
        runs_during: Summary::of(&during).context("no samples")?,
    };
    eprintln!(
        "  backup of {runs} runs: {:.1} s, {:.1} MB; restore {:.1} s; one-task runs p50 {:.3} ms before, {:.3} ms during ({} runs)",
        f.backup_secs,
        f.backup_bytes as f64 / 1e6,
        f.restore_secs,
        f.runs_before.p50,
        f.runs_during.p50,
        f.runs_during.n
    );
    Ok(f)
}
