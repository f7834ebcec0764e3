//! Server assembly: refuses plain HTTP off loopback unless allowed, loads (or
//! generates) the API token, opens the store, starts the pool manager (and the
//! workflow engine), serves the router and API listeners (the API behind the
//! token and content-type guard), and shuts down gracefully on SIGINT/SIGTERM:
//! stop accepting, let in-flight requests finish within a bound, stop every
//! instance.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Request;
use pool_manager::backend::container::{self, ContainerBackend, ContainerConfig};
use pool_manager::backend::process::ProcessBackend;
use pool_manager::Backend;
use pool_manager::{LaunchConfig, PoolConfig, PoolManager};

use crate::api::{self, AppState};
use crate::guard;
use crate::listen::{self, Limits};
use crate::token::Token;

/// The bundled runtimes, written under the data directory at start so that the
/// binary is all a user needs.
const RUNTIME_FILES: [(&str, &str); 3] = [
    (
        "python/server.py",
        include_str!("../environments/python/server.py"),
    ),
    (
        "python/flask.py",
        include_str!("../environments/python/flask.py"),
    ),
    (
        "nodejs/server.js",
        include_str!("../environments/nodejs/server.js"),
    ),
];

/// The longest period a flag in seconds may give: the server adds it to the
/// clock, and a longer one is a typo.
const YEAR_SECS: u64 = 365 * 24 * 3600;

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Where Fusion keeps its database, packages and logs.
    #[arg(long, env = "FUSION_DATA_DIR", default_value = ".fusion")]
    pub data_dir: PathBuf,
    /// The public listener for routes and /fission-function/<name>.
    #[arg(long, env = "FUSION_ROUTER_LISTEN", default_value = "127.0.0.1:8888",
          value_parser = listen_address)]
    pub router_listen: SocketAddr,
    /// The admin listener for /v1/... and health.
    #[arg(long, env = "FUSION_API_LISTEN", default_value = "127.0.0.1:8889",
          value_parser = listen_address)]
    pub api_listen: SocketAddr,
    /// Log a line for each request the router routes, once answered (499
    /// when its caller went away first): client address, method, path
    /// (without the query), status, bytes of the answer and milliseconds to
    /// its last byte (target `fusion::access`). Requests the listener refuses
    /// before routing (400, 408, 414, 431) have none.
    #[arg(long, env = "FUSION_ACCESS_LOG",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub access_log: bool,
    /// Largest request body the router passes to a function, in bytes.
    #[arg(long, env = "FUSION_BODY_LIMIT", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_limit: u64,
    /// How long a request waits for a function's capacity before 429, in ms.
    #[arg(long, env = "FUSION_LEASE_WAIT_MS", default_value_t = 5000)]
    pub lease_wait_ms: u64,
    /// How long in-flight requests may take to finish at shutdown, in ms.
    #[arg(long, env = "FUSION_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// Finished workflow runs older than this many hours are pruned (30
    /// days by default: a store that grows without end fills its disk; 0
    /// keeps them forever, as `--invocation-retention-hours 0`).
    #[arg(long, env = "FUSION_RUN_RETENTION_HOURS", default_value_t = 720)]
    pub run_retention_hours: u64,
    /// How often run retention is enforced (this and each workflow's
    /// `historyRetention`), in seconds.
    #[arg(long, env = "FUSION_RETENTION_SWEEP_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=YEAR_SECS))]
    pub retention_sweep_secs: u64,
    /// The store's page cache, in MiB: what the server keeps of sled's data in
    /// memory (most of its memory under load). sled's own default is 1024.
    #[arg(long, env = "FUSION_STORE_CACHE_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub store_cache_mb: u64,
    /// How long one package build may take before it is stopped with every
    /// process it started, in seconds.
    #[arg(long, env = "FUSION_BUILD_TIMEOUT_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=YEAR_SECS))]
    pub build_timeout_secs: u64,
    /// How much disk one package build may use (its source, output, home and
    /// temporary files), in MiB: past it the build is stopped with every
    /// process it started. A build is also stopped when the data directory's
    /// disk has less than 256 MiB free.
    #[arg(long, env = "FUSION_BUILD_DISK_MB", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=(1 << 24)))]
    pub build_disk_mb: u64,
    /// How often the code no function, package or instance uses any more is
    /// removed from the data directory, in seconds (0: only when asked,
    /// `POST /v1/archives/prune`). Code stored or newly used within the last
    /// hour is kept.
    #[arg(long, env = "FUSION_PACKAGE_PRUNE_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(..=YEAR_SECS))]
    pub package_prune_secs: u64,
    /// Asynchronous function calls (`X-Async: true`) tried at once in the
    /// background, over every function (each function also keeps at least
    /// half of its capacity for synchronous calls).
    #[arg(long, env = "FUSION_ASYNC_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub async_concurrency: u64,
    /// Asynchronous invocations that succeeded or failed are pruned this many
    /// hours after they finished (dead letters stay until redriven); 0 keeps them.
    #[arg(long, env = "FUSION_INVOCATION_RETENTION_HOURS", default_value_t = 168)]
    pub invocation_retention_hours: u64,
    /// The python interpreter for the python runtime.
    #[arg(long, env = "FUSION_PYTHON", default_value = "python3")]
    pub python: String,
    /// The node executable for the nodejs runtime.
    #[arg(long, env = "FUSION_NODE", default_value = "node")]
    pub node: String,
    /// What runs instances: `container` (an OCI runtime), `process` (plain child
    /// processes, no isolation), `kubernetes` (pods; a build with the
    /// `kubernetes` feature), or `auto` (containers where they can run).
    #[arg(long, env = "FUSION_BACKEND", default_value = "auto")]
    pub backend: BackendChoice,
    /// The kubeconfig context to use (kubernetes backend; default: in the
    /// cluster, the pod's service account, else the kubeconfig's current context).
    #[arg(long, env = "FUSION_KUBE_CONTEXT")]
    pub kube_context: Option<String>,
    /// The namespace function pods run in (kubernetes backend).
    #[arg(
        long,
        env = "FUSION_KUBE_NAMESPACE",
        default_value = "fusion-functions"
    )]
    pub kube_namespace: String,
    /// The image of a bundled runtime on the cluster, as `RUNTIME=IMAGE`
    /// (`python=registry.example/fusion-python:0.1.0`); repeatable. Defaults:
    /// fusion/python:0.1.0, fusion/nodejs:0.1.0, fusion/binary:0.1.0.
    #[arg(long = "runtime-image", value_parser = parse_runtime_image)]
    pub runtime_images: Vec<(pool_manager::Runtime, String)>,
    /// This server's pool of function pods (their `fusion.dev/pool` label): two
    /// Fusions sharing a namespace need different ones (kubernetes backend).
    #[arg(long, env = "FUSION_KUBE_POOL", default_value = "fusion")]
    pub kube_pool: String,
    /// The `fusion` image function pods run their fetcher from (kubernetes backend).
    #[arg(
        long,
        env = "FUSION_FETCHER_IMAGE",
        default_value = "fusion/fusion:0.1.0"
    )]
    pub fetcher_image: String,
    /// Fusion's API as function pods reach it, where their fetchers pull code
    /// (kubernetes backend). Default in the cluster: the `fusion` Service of
    /// Fusion's namespace on the API port; from outside it must be given.
    #[arg(long, env = "FUSION_API_URL_FOR_PODS", value_parser = parse_public_url)]
    pub fusion_api_url: Option<String>,
    /// The OCI runtime for the container backend (default: runc or crun on PATH).
    #[arg(long, env = "FUSION_OCI_RUNTIME")]
    pub oci_runtime: Option<PathBuf>,
    /// The API's bearer token file; generated (mode 0600) at first start when
    /// absent. Default: `token` in the data directory.
    #[arg(long, env = "FUSION_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS for both listeners: the certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "FUSION_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS for both listeners: the private key (PEM); needs --tls-cert.
    #[arg(long, env = "FUSION_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (refused without this flag).
    #[arg(long, env = "FUSION_ALLOW_INSECURE",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure: bool,
    /// How long a client may take to send a request's headers, and how long an
    /// idle keep-alive connection is kept, in ms.
    #[arg(long, env = "FUSION_HEADER_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// How long an API request's body may go without a byte before the request
    /// is given up with 408, in ms.
    #[arg(long, env = "FUSION_BODY_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_idle_timeout_ms: u64,
    /// Open connections per listener at most; past it new ones are closed at
    /// once. Default: (open-file limit - 256) / 4, so 192 at 1024.
    #[arg(long, env = "FUSION_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// The API's URL as its clients and functions reach it (behind a proxy, or
    /// from inside a function's network), e.g. `https://fusion.example.com`:
    /// the base of callback URLs and of the `Location` of runs started through
    /// the router. Default: the API listener's own address.
    #[arg(long, env = "FUSION_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// The NATS server message-queue triggers connect to when their metadata
    /// names none (`natsUrl`). Default: nats://127.0.0.1:4222.
    #[arg(long, env = "FUSION_NATS_URL", value_parser = parse_nats_url)]
    pub nats_url: Option<String>,
    /// A NATS subject every dead-lettered asynchronous invocation is also
    /// published to (its JSON record), on --nats-url; through JetStream when a
    /// stream holds the subject.
    #[arg(long, env = "FUSION_DEAD_LETTER_SUBJECT")]
    pub dead_letter_subject: Option<String>,
    /// Most asynchronous function calls queued or running at once; past it a
    /// new one is answered 429.
    #[arg(long, env = "FUSION_ASYNC_QUEUE_LIMIT", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub async_queue_limit: u64,
    /// Reconcile Fission's `fission.io/v1` custom resources (Environment,
    /// Package, Function, HTTPTrigger, TimeTrigger, MessageQueueTrigger,
    /// Workflow, KubernetesWatchTrigger) of the cluster into Fusion: in-cluster,
    /// or through the kubeconfig. Always on with `--backend kubernetes`. Needs a
    /// fusion built with the `kubernetes` feature.
    #[arg(long, env = "FUSION_KUBE_CONTROLLER",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub kube_controller: bool,
    /// How often the controller applies every custom resource again, which
    /// reverts changes made in Fusion to what a custom resource owns, in seconds.
    #[arg(long, env = "FUSION_KUBE_RESYNC_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=YEAR_SECS))]
    pub kube_resync_secs: u64,
    /// The Fusion API the controller applies through, with the admin token
    /// (default: this server's own, on loopback). For tests, which put a
    /// recording proxy in between.
    #[arg(long, env = "FUSION_KUBE_CONTROLLER_API_URL", hide = true, value_parser = parse_public_url)]
    pub kube_controller_api_url: Option<String>,
}

/// A public URL: absolute `http` or `https`, with no query or fragment; kept
/// without a trailing slash so paths append to it.
fn parse_nats_url(s: &str) -> Result<String, String> {
    triggers::mqt::check_url(s)
        .map(|()| s.to_string())
        .map_err(|_| format!("{s:?} is not a NATS URL (nats://host:port or tls://host:port)"))
}

fn parse_public_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {:?}",
            url.scheme()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a public URL has no query or fragment".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("a public URL names a host".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// `RUNTIME=IMAGE`, for `--runtime-image`.
fn parse_runtime_image(s: &str) -> Result<(pool_manager::Runtime, String), String> {
    let (runtime, image) = s
        .split_once('=')
        .ok_or_else(|| format!("expected RUNTIME=IMAGE (python=IMAGE), not {s:?}"))?;
    let runtime = runtime
        .trim()
        .parse()
        .map_err(|e: pool_manager::Error| e.to_string())?;
    let image = image.trim();
    if image.is_empty() {
        return Err(format!("no image given for {runtime:?}"));
    }
    Ok((runtime, image.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Container,
    Process,
    Kubernetes,
}

pub struct Running {
    pub router_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// What the backend in use enforces on function code.
    pub isolation: pool_manager::Isolation,
    /// `https` when the listeners serve TLS, else `http`.
    pub scheme: &'static str,
    /// The API token and the file it is in.
    pub token: Token,
    pub token_file: PathBuf,
}

/// Why the server refuses to start with these settings.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to serve plain HTTP on {addr} ({which}), which is not a loopback address: \
         give --tls-cert and --tls-key, or --allow-insecure (FUSION_ALLOW_INSECURE=true) \
         when something in front terminates TLS"
    )]
    InsecureListen {
        addr: SocketAddr,
        which: &'static str,
    },
}

/// Plain HTTP only on loopback addresses, unless allowed.
fn check_insecure(args: &ServerArgs) -> Result<(), StartError> {
    if args.tls_cert.is_some() || args.allow_insecure {
        return Ok(());
    }
    for (addr, which) in [(args.router_listen, "router"), (args.api_listen, "API")] {
        if !addr.ip().to_canonical().is_loopback() {
            return Err(StartError::InsecureListen { addr, which });
        }
    }
    Ok(())
}

/// Makes the data directory, or takes the one there, readable by the server's
/// user alone (0700): it holds run inputs and outputs, functions' code,
/// settings and logs, which the API keeps behind its token.
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data directory {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "cannot make data directory {} private (mode 0700)",
                    dir.display()
                )
            },
        )?;
        tracing::info!(
            path = %dir.display(),
            was = format!("{:o}", mode & 0o777),
            "made the data directory private to the server's user (0700)"
        );
    }
    Ok(())
}

pub async fn run(args: ServerArgs, on_ready: impl FnOnce(&Running)) -> anyhow::Result<()> {
    // Handled from the first moment: a signal while the server starts (a
    // service manager's stop, Ctrl-C right after `fusion up`) stops it once
    // it has started, gracefully, rather than killing it with what it
    // started; a second one stops it at once. One while it waits for its
    // data directory stops it there: nothing has started yet.
    let stop_signal = shutdown_signal();
    let (signalled_tx, signalled) = tokio::sync::watch::channel(false);
    let during_start = {
        let first = shutdown_signal();
        AbortOnDrop(tokio::spawn(async move {
            first.await;
            signalled_tx.send_replace(true);
            let again = shutdown_signal();
            tracing::warn!(
                "a signal came while the server was starting: it stops as soon as it has started (another signal stops it at once)"
            );
            again.await;
            tracing::warn!("a second signal while starting: stopping at once");
            std::process::exit(1);
        }))
    };
    check_insecure(&args)?;
    if args.router_listen == args.api_listen && args.router_listen.port() != 0 {
        anyhow::bail!(
            "--router-listen and --api-listen are both {}: the router and the API need an address each",
            args.router_listen
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
        _ => None,
    };
    private_data_dir(&args.data_dir)?;
    crate::backup::remove_leftovers(&args.data_dir);
    // Connections, instances and the store's files all take descriptors:
    // the soft limit a service manager starts with (1024) is raised to the
    // hard one before the connection caps are reckoned from it.
    match pool_manager::sys::raise_open_files_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(before, after, "raised the soft limit on open files");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the soft limit on open files"),
    }
    // Said at the start rather than found a second after it, when the
    // journal's next segment finds no room (and runs are refused).
    const ROOM: u64 = 64 * 1024 * 1024;
    if let Ok(free) = pool_manager::sys::free_bytes(&args.data_dir) {
        if free < ROOM {
            tracing::warn!(
                free_mib = free / (1024 * 1024),
                "the data directory's filesystem has little room left: the workflow store's journal allocates 16 MiB segments (and the container backend keeps a copy of the fusion executable there); with less, runs and changes are refused"
            );
        }
    }
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("token"));
    let token = Token::load_or_create(&token_file)?;
    let data_dir = args.data_dir.canonicalize()?;
    let runtimes_dir = data_dir.join("runtimes");
    for (path, text) in RUNTIME_FILES {
        let target = runtimes_dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Rewrite only on change, so the byte code compiled below stays valid.
        if std::fs::read(&target).ok().as_deref() != Some(text.as_bytes()) {
            std::fs::write(&target, text)?;
        }
    }
    let config = sled::Config::new()
        .path(data_dir.join("db"))
        .cache_capacity(args.store_cache_mb * 1024 * 1024)
        .flush_every_ms(None);
    // A server killed a moment ago may hold the database's lock until it has
    // fully exited: a restart right after waits a little for it.
    let opening = tokio::task::spawn_blocking(move || {
        pool_manager::store::open_waiting(&config, Duration::from_secs(5))
    });
    let mut until_signalled = signalled.clone();
    let opened = tokio::select! {
        opened = opening => opened?,
        Ok(_) = until_signalled.wait_for(|s| *s) => {
            tracing::warn!("stopped while waiting for the data directory: nothing had started");
            return Ok(());
        }
    };
    let db = opened.map_err(|e| match &e {
        e if pool_manager::store::is_locked(e) => {
            let holder = match lock_holder(&data_dir.join("db").join("db")) {
                Some((pid, cmd)) => format!("process {pid} ({cmd})"),
                None => "another process".to_string(),
            };
            anyhow::anyhow!(
                "the data directory {} is in use by {holder}: stop that server first, or give this one another --data-dir",
                data_dir.display()
            )
        }
        _ => anyhow::anyhow!(
            "cannot open the database in {}: {}",
            data_dir.join("db").display(),
            pool_manager::error::sled_error_text(&e)
        ),
    })?;

    // The cluster first: with no cluster to talk to, the controller cannot run.
    // It runs wherever the pods do (`--backend kubernetes`), or when asked for.
    #[cfg(feature = "kubernetes")]
    let kube_client = if args.kube_controller || args.backend == BackendChoice::Kubernetes {
        if args.backend == BackendChoice::Kubernetes {
            // What the flags lack is said before the cluster is asked anything.
            pods_api_url(&args)?;
        }
        Some(
            cluster::connect(args.kube_context.clone())
                .await
                .context("the custom resources' controller needs a cluster")?,
        )
    } else {
        None
    };
    #[cfg(not(feature = "kubernetes"))]
    if args.kube_controller {
        anyhow::bail!(
            "--kube-controller: this fusion is built without Kubernetes support (the `kubernetes` cargo feature)"
        );
    }

    let router_listener = tokio::net::TcpListener::bind(args.router_listen)
        .await
        .with_context(|| format!("cannot listen on {} (router)", args.router_listen))?;
    let api_listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (API)", args.api_listen))?;

    // Instances on this machine run the interpreters found here.
    let local = args.backend != BackendChoice::Kubernetes;
    let python = resolve_python(&args.python, local).await;
    precompile_python(&python, &runtimes_dir.join("python")).await;
    let node = resolve_on_path(&args.node);
    if local && !std::path::Path::new(&node).is_file() {
        tracing::warn!(
            "the node executable {node:?} is not found: nodejs environments cannot start instances (--node, FUSION_NODE)"
        );
    }
    let launch = LaunchConfig {
        runtimes_dir: runtimes_dir.clone(),
        fusion_exe: std::env::current_exe()?,
        python: python.clone(),
        node,
        start_timeout: Duration::from_secs(30),
    };
    let pod_credentials = Arc::new(pool_manager::delivery::Credentials::default());
    let backend = if args.backend == BackendChoice::Kubernetes {
        kubernetes_backend(&args, pod_credentials.clone()).await?
    } else {
        choose_backend(&args, &data_dir, launch).await?
    };
    let pool = PoolManager::start(
        &db,
        PoolConfig {
            data_dir: data_dir.clone(),
            backend,
            specialize_timeout: Duration::from_secs(30),
            lease_wait: Duration::from_millis(args.lease_wait_ms),
            body_limit: args.body_limit,
            packages: Default::default(),
            reap_interval: Duration::from_millis(250),
            build_timeout: Duration::from_secs(args.build_timeout_secs),
            build_disk_mb: args.build_disk_mb,
            prune_interval: (args.package_prune_secs > 0)
                .then(|| Duration::from_secs(args.package_prune_secs)),
        },
    )
    .await?;

    let engine = engine::Engine::open(
        db.clone(),
        &data_dir.join("journal"),
        Arc::new(executor::PoolInvoker::new(pool.clone())),
        engine::EngineConfig {
            retention: (args.run_retention_hours > 0)
                .then(|| Duration::from_secs(args.run_retention_hours.saturating_mul(3600))),
            retention_sweep: Some(Duration::from_secs(args.retention_sweep_secs)),
            http: Some(Arc::new(crate::workflows::ReqwestTransport::new())),
            clock: None,
            // As for a function's caller: the router's limit.
            body_limit: Some(usize::try_from(args.body_limit).unwrap_or(usize::MAX)),
            callback_base: Some(match &args.public_url {
                Some(url) => url.clone(),
                None => format!(
                    "{}://{}",
                    if tls.is_some() { "https" } else { "http" },
                    api_listener.local_addr()?
                ),
            }),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start the workflow engine: {e}"))?;
    let workflows = triggers::Workflows {
        engine: engine.clone(),
        api: triggers::ApiListener {
            scheme: if tls.is_some() { "https" } else { "http" },
            addr: api_listener.local_addr()?,
            public: args.public_url.clone(),
        },
    };
    let mut registry = prometheus_client::registry::Registry::default();
    pool.metrics().register(&mut registry);
    engine.metrics().register(&mut registry);
    let invocation_gauges = crate::api::invocation_gauges(&mut registry);
    registry.register_collector(Box::new(crate::process_metrics::ProcessCollector::new(
        pool.isolation().backend,
    )));
    let triggers = triggers::Triggers::open(&db, pool.clone(), workflows)?;
    triggers.timers.register_metrics(&mut registry);
    registry.register_collector(Box::new(triggers::metrics::MqtCollector::new(
        triggers.clone(),
    )));
    triggers
        .invocations
        .set_queue_limit(usize::try_from(args.async_queue_limit).unwrap_or(usize::MAX));
    // Before anything can be dead-lettered.
    if let Some(subject) = &args.dead_letter_subject {
        let url = args
            .nats_url
            .clone()
            .unwrap_or_else(|| triggers::mqt::DEFAULT_NATS_URL.to_string());
        triggers.invocations.add_dead_letter_sink(Arc::new(
            triggers::mqt::dead_letters::NatsDeadLetters::new(url, subject.clone()),
        ));
    }
    triggers
        .invocations
        .start(triggers::invocations::Settings {
            concurrency: args.async_concurrency as usize,
            retention: (args.invocation_retention_hours > 0)
                .then(|| Duration::from_secs(args.invocation_retention_hours * 3600)),
            sweep: Duration::from_secs(args.retention_sweep_secs),
        })?;
    let readiness = crate::health::Readiness::default();
    let state = AppState {
        pool: pool.clone(),
        triggers: triggers.clone(),
        registry: Arc::new(registry),
        invocation_gauges,
        pod_credentials,
        readiness: readiness.clone(),
        engine: engine.clone(),
        token_file: token_file.clone(),
    };

    // The router listener calls the router directly: no axum routing or
    // layers in front of every proxied request.
    let router_handler = {
        let triggers = triggers.clone();
        let access_log = args.access_log;
        move |req: Request| {
            let triggers = triggers.clone();
            async move {
                if !access_log {
                    return triggers::route_request(&triggers, req).await;
                }
                let pending = crate::access_log::Pending::new(crate::access_log::Entry::of(&req));
                pending.answered(triggers::route_request(&triggers, req).await)
            }
        }
    };
    let declared = crate::declared::Declared::open(&db)?;
    #[cfg(feature = "kubernetes")]
    let kube_health = crate::kube::Health::default();
    let api_app = api::router(state)
        .merge(
            engine::router(engine.clone()).route_layer(axum::middleware::from_fn_with_state(
                (triggers.clone(), engine.clone()),
                api::keep_targeted_workflows,
            )),
        )
        .merge(
            declared
                .clone()
                .router()
                .layer(axum::middleware::from_fn(api::json_errors)),
        );
    #[cfg(feature = "kubernetes")]
    let api_app = api_app.merge(kube_health.clone().router());
    let api_app = api_app
        .route_layer(axum::middleware::from_fn(guard::require_content_type))
        .route_layer(axum::middleware::from_fn(guard::known_query))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(tokio::sync::Mutex::new(())),
            api::one_name_at_a_time,
        ))
        // On every endpoint merged above, the engine's and the declared
        // resources' included (after them: it is set on those registered).
        .method_not_allowed_fallback(api::method_not_allowed)
        .fallback(api::not_found)
        // Every body the API reads has one limit (an upload's, set on its
        // route, is its own): axum's default of 2 MB is not it.
        .layer(axum::extract::DefaultBodyLimit::max(
            engine::api::BODY_LIMIT,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_millis(args.body_idle_timeout_ms),
            guard::body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            declared,
            crate::declared::forget_deleted,
        ))
        .layer(axum::middleware::from_fn_with_state(
            token.clone(),
            guard::require_token,
        ));

    let running = Running {
        router_addr: router_listener.local_addr()?,
        api_addr: api_listener.local_addr()?,
        isolation: pool.isolation(),
        scheme: if tls.is_some() { "https" } else { "http" },
        token,
        token_file,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %data_dir.display(),
        router = %running.router_addr,
        api = %running.api_addr,
        "fusion is listening"
    );
    drop(during_start);
    triggers.mqt.start(args.nats_url.clone())?;
    // A server told to stop while it started is not announced as up.
    if !*signalled.borrow() {
        on_ready(&running);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = Limits::new(
        Duration::from_millis(args.header_timeout_ms),
        args.max_connections
            .map_or_else(listen::default_max_connections, |n| n as usize),
    );
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout_ms = args.header_timeout_ms,
        "connection limits per listener"
    );
    // The listeners' addresses, kept from the stop until the instances have
    // stopped (dropped at the end of this function).
    let reserved = listen::Reserved::default();
    let mut router_server = tokio::spawn(listen::serve(
        "router",
        router_listener,
        router_handler,
        tls.clone(),
        limits.clone(),
        stop_rx.clone(),
        reserved.clone(),
    ));
    let mut api_server = tokio::spawn(listen::serve(
        "api",
        api_listener,
        listen::app_handler(api_app),
        tls,
        limits,
        stop_rx.clone(),
        reserved.clone(),
    ));

    // The controller applies through the API it serves, on loopback, with
    // the admin token: exactly what `fusion spec apply` does, through the same
    // checks and locks, so no second way into the pool manager.
    #[cfg(feature = "kubernetes")]
    let controllers = match kube_client {
        Some(kube) => {
            let own = format!("{}://{}", running.scheme, loopback(running.api_addr));
            let fusion = crate::client::Client::new(
                args.kube_controller_api_url.as_deref().unwrap_or(&own),
                Some(running.token.as_str().to_string()),
                args.tls_cert.as_deref(),
            )?;
            let router = crate::client::Client::new(
                &format!("{}://{}", running.scheme, loopback(running.router_addr)),
                None,
                args.tls_cert.as_deref(),
            )?;
            tracing::info!("reconciling fission.io/v1 custom resources into Fusion");
            crate::kube::start(
                crate::kube::Settings {
                    kube,
                    fusion,
                    router,
                    resync: Duration::from_secs(args.kube_resync_secs),
                    functions_namespace: args.kube_namespace.clone(),
                },
                kube_health,
            )
        }
        None => Vec::new(),
    };

    // Stopped by a signal, or by a store that can no longer write (or
    // hangs); a stop the store holds up past the grace and half a minute
    // ends the process.
    let probe = crate::health::store_probe(db.clone()).map_err(anyhow::Error::msg)?;
    let store_failed = crate::health::watch_store(
        probe,
        crate::health::PROBE_EVERY,
        crate::health::STUCK_AFTER,
        Duration::from_millis(args.shutdown_grace_ms) + Duration::from_secs(30),
        || {
            tracing::error!("the stop did not finish: the store hangs; exiting now, what was acknowledged is on disk");
            eprintln!("error: the store refuses writes or hangs, and the stop hung on it: exited; start the server again once the cause (disk space, the device) is fixed");
            std::process::exit(1);
        },
    );
    let failed = tokio::select! {
        () = stop_signal => None,
        Ok(why) = store_failed => Some(why),
    };
    // Listened for from now: a second signal sent once the stop has begun
    // (the listeners closed, say) is not missed while the stop gets going.
    let second_signal = shutdown_signal();
    match &failed {
        Some(why) => {
            tracing::error!(
                error = %why,
                "the store refuses writes (a full disk? a failing device?) and cannot write again until the server starts again: stopping; what was acknowledged is on disk and unfinished runs go on at the next start"
            );
            readiness.set(
                "store_failed",
                format!("the store refuses writes ({why}): the server is stopping; start it again once the cause is fixed"),
            );
        }
        None => readiness.set("shutting_down", "the server is stopping".into()),
    }
    tracing::info!("shutting down: finishing in-flight requests");
    #[cfg(feature = "kubernetes")]
    for c in controllers {
        c.abort();
    }
    // No tick is taken from now on (ticks due meanwhile fire at the next
    // start); firings under way finish within the grace.
    triggers.timers.stop().await;
    // Asynchronous calls start no new attempt; pending ones resume at the next start.
    triggers.invocations.shutdown();
    let _ = stop_tx.send(true);
    // Long polls and log follows answer now (they would hold the stop for
    // the whole grace): what they wait for may happen after a restart.
    engine.end_polls();
    let grace = Duration::from_millis(args.shutdown_grace_ms);
    // A synchronous caller of a run that cannot move on within the grace
    // (asleep past it, waiting for a callback) is answered now, not at its
    // end: the run goes on at the next start either way.
    engine.stopping_within(grace);
    pool.logs().end_follows("the server is stopping");
    pool.end_tunnels();
    let stopping = tokio::time::Instant::now();
    let graceful = async {
        // Message-queue triggers take no new message and settle those in
        // flight within the same grace, beside the listeners' requests.
        let (drained, ()) = tokio::join!(
            tokio::time::timeout(grace, async {
                let _ = (&mut router_server).await;
                let _ = (&mut api_server).await;
            }),
            triggers.mqt.stop(grace),
        );
        if drained.is_err() {
            // The instances those requests hold are busy too: the calls no
            // listener sees cannot be told apart from them, and are not blamed.
            tracing::warn!(
                "in-flight requests did not finish within the grace ({grace:?}); they are answered 503 shutting_down, and any workflow step, asynchronous invocation or queue message still being handled is made again at the next start"
            );
            return;
        }
        // Then the calls no listener sees (workflow steps, asynchronous
        // attempts), in what is left of the grace.
        // The engine's count also holds calls no instance serves (`http`
        // tasks) and outcomes their runs have not yet taken.
        let left = grace.saturating_sub(stopping.elapsed());
        let (idle, settled) = tokio::join!(pool.wait_idle(left), engine.calls_settled(left));
        if !(idle && settled) {
            tracing::warn!(
                "calls no listener answers (workflow steps, their http calls, asynchronous invocations, queue messages) were still running at the end of the grace ({grace:?}); they are made again at the next start"
            );
        }
    };
    // A second SIGINT or SIGTERM (an impatient Ctrl-C) stops at once: what is
    // still running is cut off and made again at the next start.
    tokio::select! {
        () = graceful => {}
        () = second_signal => {
            tracing::warn!("a second signal: stopping now, without the rest of the grace; what was still running is made again at the next start");
        }
    }
    engine.shutdown().await;
    pool.shutdown(Duration::from_secs(5)).await;
    // The answers to the requests the stop cut off (503 `shutting_down`) are
    // written before the process ends.
    for server in [&mut router_server, &mut api_server] {
        if !server.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
        }
    }
    if let Some(why) = failed {
        anyhow::bail!(
            "the store refuses writes ({why}): stopped; what was acknowledged is on disk: start the server again once the cause (disk space, the device) is fixed"
        );
    }
    db.flush_async().await?;
    // The instances are stopped: the ports can go.
    drop(reserved);
    tracing::info!("stopped");
    Ok(())
}

/// A listen address: `IP:PORT`, or `HOST:PORT` with a host name this machine
/// resolves (`localhost:8889`), its IPv4 address first.
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("not HOST:PORT or IP:PORT (such as 127.0.0.1:8889)".into());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    let found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

/// The process holding the lock on `file` (sled's database lock, a `flock`),
/// with its command line, as `/proc/locks` says.
fn lock_holder(file: &std::path::Path) -> Option<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).ok()?;
    // How /proc/locks names a file: major:minor:inode, in hex, hex, decimal.
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 4654 fe:00:10035213 0 EOF" (a waiter's line
    // has "->" after the number: it is not the holder).
    let pid: u32 = locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) != Some(&"->") && f.get(5) == Some(&id.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .take(2)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some((
        pid,
        if cmd.is_empty() {
            "gone".into()
        } else {
            cmd.join(" ")
        },
    ))
}

/// Fusion's API as function pods reach it: `--fusion-api-url`, else in the
/// cluster the `fusion` Service of Fusion's namespace.
#[cfg(feature = "kubernetes")]
fn pods_api_url(args: &ServerArgs) -> anyhow::Result<String> {
    Ok(match (&args.fusion_api_url, std::env::var("POD_NAMESPACE")) {
        (Some(url), _) => url.clone(),
        (None, Ok(ns)) => format!(
            "{}://fusion.{ns}.svc:{}",
            if args.tls_cert.is_some() { "https" } else { "http" },
            args.api_listen.port()
        ),
        (None, Err(_)) => anyhow::bail!(
            "--backend kubernetes from outside the cluster needs --fusion-api-url: the URL function pods reach this server's API at"
        ),
    })
}

/// The kubernetes backend: pods in `--kube-namespace`, on the cluster of the
/// pod's service account or the kubeconfig.
#[cfg(feature = "kubernetes")]
async fn kubernetes_backend(
    args: &ServerArgs,
    credentials: Arc<pool_manager::delivery::Credentials>,
) -> anyhow::Result<Arc<dyn Backend>> {
    use cluster::pods::{PodBackend, PodConfig};
    let api_url = pods_api_url(args)?;
    let client = cluster::connect(args.kube_context.clone()).await?;
    let mut cfg = PodConfig::new(args.kube_namespace.clone(), api_url);
    for (runtime, image) in &args.runtime_images {
        let slot = match runtime {
            pool_manager::Runtime::Python => &mut cfg.images.python,
            pool_manager::Runtime::Nodejs => &mut cfg.images.nodejs,
            pool_manager::Runtime::Binary => &mut cfg.images.binary,
        };
        *slot = image.clone();
    }
    cfg.fetcher_image = args.fetcher_image.clone();
    pool_manager::resources::validate_name("--kube-pool", &args.kube_pool)?;
    cfg.pool = args.kube_pool.clone();
    cfg.owner = cluster::pods::find_owner(&client, &args.kube_namespace).await;
    let backend = PodBackend::connect(client, cfg, credentials).await?;
    tracing::info!("{}", backend.isolation().summary);
    Ok(Arc::new(backend))
}

#[cfg(not(feature = "kubernetes"))]
async fn kubernetes_backend(
    _args: &ServerArgs,
    _credentials: Arc<pool_manager::delivery::Credentials>,
) -> anyhow::Result<Arc<dyn Backend>> {
    anyhow::bail!(
        "this fusion was built without Kubernetes support: build it with `cargo build --features kubernetes` to use --backend kubernetes"
    )
}

/// The container backend where it can run (or where it is asked for), else the
/// process backend, said loudly: instances then run unisolated.
async fn choose_backend(
    args: &ServerArgs,
    data_dir: &std::path::Path,
    launch: LaunchConfig,
) -> anyhow::Result<Arc<dyn Backend>> {
    let runtime = args.oci_runtime.clone().or_else(|| {
        ["runc", "crun"]
            .into_iter()
            .map(resolve_on_path)
            .find(|p| p.starts_with('/'))
            .map(PathBuf::from)
    });
    if args.backend == BackendChoice::Process {
        tracing::warn!("the process backend is in use (--backend process): function code runs unisolated, as the server's user");
        return Ok(process_backend(launch, data_dir, runtime.as_deref()).await);
    }
    let probed = match runtime.clone() {
        None => Err(container::ProbeError::Unavailable(
            "no OCI runtime (runc or crun) on PATH".to_string(),
        )),
        Some(runtime) => {
            ContainerBackend::probe(ContainerConfig {
                runtime,
                dir: data_dir.join("containers"),
                prefix: container::prefix_for(data_dir),
                launch: launch.clone(),
            })
            .await
        }
    };
    match probed {
        Ok(backend) => {
            tracing::info!("{}", backend.isolation().summary);
            // What a server killed on the process backend left running.
            pool_manager::backend::process::stop_stale(&process_sockets(data_dir)).await;
            Ok(Arc::new(backend))
        }
        // Not a host that cannot run containers: a data directory that
        // cannot hold anything (the server would fail next on any backend).
        Err(container::ProbeError::DataDir(why)) => {
            anyhow::bail!("data directory {}: {why}", data_dir.display())
        }
        Err(why) if args.backend == BackendChoice::Container => {
            anyhow::bail!("the container backend cannot run here: {why}")
        }
        // A runtime named on purpose that cannot run is a mistake to say,
        // not a reason to drop isolation.
        Err(why) if args.oci_runtime.is_some() => {
            anyhow::bail!(
                "--oci-runtime: {why} (leave it out to find runc or crun on PATH, or choose --backend process)"
            )
        }
        Err(why) => {
            tracing::warn!(
                "CONTAINERS UNAVAILABLE ({why}): falling back to the process backend; function code runs unisolated, as the server's user"
            );
            Ok(process_backend(launch, data_dir, runtime.as_deref()).await)
        }
    }
}

fn process_sockets(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("instances")
}

/// The process backend, once the containers a server killed on the container
/// backend left are removed (with `runtime`, when there is one that runs).
async fn process_backend(
    launch: LaunchConfig,
    data_dir: &std::path::Path,
    runtime: Option<&std::path::Path>,
) -> Arc<dyn Backend> {
    if let Some(runtime) = runtime {
        container::remove_containers(
            runtime,
            &container::prefix_for(data_dir),
            &data_dir.join("containers"),
            true,
        )
        .await;
    }
    Arc::new(ProcessBackend::new(launch, process_sockets(data_dir)))
}

/// The address to reach a listener from this machine: loopback for a
/// listener on every address.
#[cfg(feature = "kubernetes")]
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// The absolute path of `name` on PATH (as given when it has a slash or is not found).
fn resolve_on_path(name: &str) -> String {
    if name.contains('/') {
        return name.to_string();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
}

/// The interpreter's real path: version-manager shims (pyenv, asdf) on PATH add
/// 100 ms or more to every instance start. Falls back to the name as given.
async fn resolve_python(name: &str, local: bool) -> String {
    let probe = tokio::process::Command::new(name)
        .args(["-S", "-c", "import sys; print(sys.executable)"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Ok(out)) if out.status.success() => {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if path.is_empty() {
                name.to_string()
            } else {
                path
            }
        }
        // Said at the start, not only when a python pool first fills.
        failed if local => {
            let why = match failed {
                Ok(Ok(out)) => format!("it exited with {}", out.status),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "it did not answer within 10 s".into(),
            };
            tracing::warn!(
                "the python interpreter {name:?} does not run ({why}): python environments cannot start instances (--python, FUSION_PYTHON)"
            );
            name.to_string()
        }
        _ => name.to_string(),
    }
}

/// Byte-compiles the python runtime once, so no instance compiles it at start
/// (instances run with PYTHONDONTWRITEBYTECODE and would redo it every time).
async fn precompile_python(python: &str, dir: &std::path::Path) {
    let run = tokio::process::Command::new(python)
        .args(["-S", "-m", "compileall", "-q"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let why = match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(out)) if out.status.success() => return,
        Ok(Ok(out)) => {
            // compileall names the file it could not compile on stdout.
            let said = [out.stdout, out.stderr]
                .iter()
                .flat_map(|b| {
                    String::from_utf8_lossy(b)
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            format!("{python} -m compileall exited with {}: {said}", out.status)
        }
        Ok(Err(e)) => format!("cannot run {python}: {e}"),
        Err(_) => "it did not finish within 30 s".into(),
    };
    tracing::warn!(
        "could not byte-compile the python runtime in {} ({why}); instances will start slower",
        dir.display()
    );
}

/// Aborts its task when dropped (as a start that fails returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves at the first SIGINT, SIGTERM or SIGHUP (the terminal that ran
/// `fusion up` closed, an SSH session dropped): each is a graceful stop. The
/// handlers are installed when this is called, not when it is first awaited:
/// it is called before the server says it is ready, so a signal sent right
/// after that is never the default action (which would kill the server
/// without stopping its instances).
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals: Vec<_> = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
    ]
    .into_iter()
    .filter_map(|kind| signal(kind).ok())
    .collect();
    async move {
        if signals.is_empty() {
            return std::future::pending().await;
        }
        let waits = signals.into_iter().map(|mut s| {
            Box::pin(async move {
                s.recv().await;
            })
        });
        futures_util::future::select_all(waits).await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_public_url;

    #[test]
    fn a_public_url_is_an_absolute_http_url_kept_without_its_trailing_slash() {
        assert_eq!(
            parse_public_url("https://fusion.example.com/api/").unwrap(),
            "https://fusion.example.com/api"
        );
        assert_eq!(
            parse_public_url("http://10.0.0.2:8889").unwrap(),
            "http://10.0.0.2:8889"
        );
        for bad in [
            "fusion.example.com",
            "ftp://x.example",
            "http://x.example/?a=1",
            "http://x.example/#f",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad} was accepted");
        }
    }
}
