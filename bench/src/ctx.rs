//! What every phase shares: the server under test and one HTTP client, plus the
//! API calls that set a benchmark up (environments, functions, pools) and the
//! check that no instance outlives the server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::Http;
use crate::server::{self, Server};
use crate::Args;

pub struct Ctx {
    pub http: Http,
    pub api: String,
    pub router: String,
    pub data_dir: PathBuf,
    pub args: Args,
    /// The `FUSION_BACKEND` the server was started with (`None`: its default).
    pub backend: Option<String>,
    pub server_pid: u32,
    pub ticks_per_second: f64,
    /// Every instance pid seen, to check none outlives the server.
    pub pids: BTreeSet<u32>,
}

/// What outlived a server: instance pids still running, and OCI containers
/// (`runc list`) whose bundle is under its data directory.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub pids: Vec<u32>,
    pub containers: Vec<String>,
}

impl Leftovers {
    pub fn extend(&mut self, other: Leftovers) {
        self.pids.extend(other.pids);
        self.containers.extend(other.containers);
    }
}

impl Ctx {
    /// Starts a server (see `Server::start_with`), with `FUSION_BACKEND=<backend>`
    /// when one is given, and waits until it is ready.
    pub async fn start(
        fusion: &Path,
        args: &Args,
        backend: Option<&str>,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<(Server, Ctx)> {
        Ctx::start_with_args(fusion, args, backend, &[], prepare).await
    }

    /// The same, with `extra` arguments to `fusion server` (e.g.
    /// `--store-cache-mb 64`).
    pub async fn start_with_args(
        fusion: &Path,
        args: &Args,
        backend: Option<&str>,
        extra: &[String],
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<(Server, Ctx)> {
        let envs: Vec<(&str, &str)> = backend.map(|b| ("FUSION_BACKEND", b)).into_iter().collect();
        let server = Server::start_with(fusion, &envs, extra, prepare)?;
        let ctx = Ctx {
            http: Http::new(&server.api, &server.token)?,
            api: server.api.clone(),
            router: server.router.clone(),
            data_dir: server.data_dir(),
            args: args.clone(),
            backend: backend.map(str::to_string),
            server_pid: server.pid().context("the server is not running")?,
            ticks_per_second: server::ticks_per_second(),
            pids: BTreeSet::new(),
        };
        wait_ready(&ctx).await?;
        Ok((server, ctx))
    }

    /// Stops the server (it stops every instance; the guard also does on any
    /// early return; the caller drops it, which removes its data) and answers the
    /// instance pids still alive 5 s later and the containers `runc list` still
    /// shows with a bundle in the server's data directory by then.
    pub async fn finish(mut self, server: &mut Server) -> Result<Leftovers> {
        let _ = instances(&mut self).await;
        drop(self.http);
        server.stop(Duration::from_secs(15))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut orphans: Vec<u32> = self
            .pids
            .iter()
            .copied()
            .filter(|p| server::alive(*p))
            .collect();
        let mut containers = server::runc_leftovers(&self.data_dir)?;
        while (!orphans.is_empty() || !containers.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            orphans.retain(|p| server::alive(*p));
            containers = server::runc_leftovers(&self.data_dir)?;
        }
        Ok(Leftovers {
            pids: orphans,
            containers,
        })
    }

    /// CPU ticks used so far by each of `pids` (0 for one that is gone).
    pub fn ticks<const N: usize>(pids: [u32; N]) -> [u64; N] {
        pids.map(|p| server::cpu_ticks(p).unwrap_or(0))
    }

    /// Microseconds of CPU per item for `ticks` clock ticks over `n` items.
    pub fn us_per(&self, ticks: u64, n: usize) -> f64 {
        ticks as f64 / self.ticks_per_second * 1e6 / n.max(1) as f64
    }
}

pub async fn wait_ready(ctx: &Ctx) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = format!("{}/readyz", ctx.api);
        match ctx
            .http
            .send(Method::GET, &url, Default::default(), None)
            .await
        {
            Ok((s, _)) if s.is_success() => return Ok(()),
            _ if Instant::now() > deadline => bail!("the server is not ready after 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

pub async fn create_env(ctx: &Ctx, name: &str, runtime: &str, poolsize: usize) -> Result<()> {
    let body = json!({"name": name, "runtime": runtime, "poolsize": poolsize});
    ctx.http
        .api(
            Method::POST,
            &format!("{}/v1/environments", ctx.api),
            Some(&body),
        )
        .await?;
    Ok(())
}

pub async fn create_fn(
    ctx: &Ctx,
    name: &str,
    env: &str,
    package: &Value,
    concurrency: usize,
    rpp: usize,
) -> Result<()> {
    let body = json!({
        "name": name,
        "env": env,
        "package": package,
        "concurrency": concurrency,
        "requests_per_instance": rpp,
        "idle_timeout_secs": 600,
    });
    ctx.http
        .api(
            Method::POST,
            &format!("{}/v1/functions", ctx.api),
            Some(&body),
        )
        .await?;
    Ok(())
}

pub async fn delete_fn(ctx: &Ctx, name: &str) -> Result<()> {
    ctx.http
        .api(
            Method::DELETE,
            &format!("{}/v1/functions/{name}", ctx.api),
            None,
        )
        .await?;
    Ok(())
}

/// Every running instance (and remember their pids).
pub async fn instances(ctx: &mut Ctx) -> Result<Vec<Value>> {
    let v = ctx
        .http
        .api(Method::GET, &format!("{}/v1/instances", ctx.api), None)
        .await?;
    let list = v.as_array().cloned().unwrap_or_default();
    for i in &list {
        if let Some(pid) = i["pid"].as_u64() {
            ctx.pids.insert(pid as u32);
        }
    }
    Ok(list)
}

/// Waits (bounded) until `env` has at least `n` generic instances.
pub async fn wait_pool(ctx: &mut Ctx, env: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = instances(ctx).await?;
        let generic = list
            .iter()
            .filter(|i| i["environment"] == env && i["state"] == "generic")
            .count();
        if generic >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("environment {env}: {generic} of {n} generic instances after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until `env` has no instance at all (the last one has exited).
pub async fn wait_env_idle(ctx: &mut Ctx, env: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = instances(ctx).await?;
        let n = list.iter().filter(|i| i["environment"] == env).count();
        if n == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("environment {env}: {n} instances still running after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
