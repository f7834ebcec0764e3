//! The command line, in Fission's shape: `fusion <noun> <verb> [flags]`.
//! This module parses the command and dispatches it; each noun lives in its own module.

mod env;
mod function;
mod output;
mod route;
mod run;
mod secret;
mod spec;
mod up;
mod workflow;

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::Client;
use crate::server::{self, ServerArgs};

use env::EnvVerb;
use function::FnVerb;
use route::RouteVerb;
use run::RunVerb;
use spec::SpecVerb;
use workflow::WfVerb;

#[derive(Parser)]
#[command(
    name = "fusion",
    version,
    about = "Serverless functions and workflows in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub(super) struct ClientOpts {
    /// The Fusion API address.
    #[arg(
        long = "server",
        env = "FUSION_URL",
        default_value = "http://127.0.0.1:8889",
        global = true
    )]
    pub(super) api: String,
    /// A PEM certificate (or bundle) to trust for an https API, beside the system's.
    #[arg(long = "cacert", env = "FUSION_CA_CERT", global = true)]
    pub(super) ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, global = true)]
    pub(super) output: Output,
}

impl ClientOpts {
    /// The API client: the token from `FUSION_TOKEN` or the data dir, and the
    /// CA certificate to trust, if given.
    pub(super) fn client(&self) -> Result<Client> {
        Client::new(&self.api, crate::token::for_cli(), self.ca_cert.as_deref())
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub(super) enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server, apply workflow-examples/ and print URLs to try.
    Up {
        #[command(flatten)]
        server: ServerArgs,
        /// The folder of example specs to apply.
        #[arg(long, default_value = "workflow-examples")]
        examples: PathBuf,
    },
    /// Start the server.
    Server {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Environments: language runtimes with a pool of instances.
    #[command(name = "env", alias = "environment")]
    Env {
        #[command(subcommand)]
        verb: EnvVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Functions.
    #[command(name = "fn", alias = "function")]
    Fn {
        #[command(subcommand)]
        verb: FnVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// HTTP triggers.
    #[command(alias = "httptrigger", alias = "ht")]
    Route {
        #[command(subcommand)]
        verb: RouteVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Secrets: files a function reads at /secrets/<namespace>/<name>/<key>
    /// (values are never shown back).
    Secret {
        #[command(subcommand)]
        verb: secret::DataVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// ConfigMaps: files a function reads at /configs/<namespace>/<name>/<key>.
    #[command(name = "configmap", alias = "cm")]
    Configmap {
        #[command(subcommand)]
        verb: secret::DataVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Resource specs.
    Spec {
        #[command(subcommand)]
        verb: SpecVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Workflows: Fission Workflows YAML.
    #[command(name = "wf", alias = "workflow")]
    Wf {
        #[command(subcommand)]
        verb: WfVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Workflow runs and their history.
    Run {
        #[command(subcommand)]
        verb: RunVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Runtime servers started by Fusion itself.
    #[command(hide = true)]
    Runtime {
        #[command(subcommand)]
        which: RuntimeKind,
    },
}

#[derive(Subcommand)]
enum RuntimeKind {
    /// The binary environment's runtime.
    Binary,
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Server { server } => {
            init_tracing();
            server::run(server, |r| {
                // One machine-readable line, so scripts and tests know where to connect.
                println!(
                    "fusion listening router={s}://{} api={s}://{}",
                    r.router_addr,
                    r.api_addr,
                    s = r.scheme
                );
            })
            .await
        }
        Command::Up { server, examples } => {
            init_tracing();
            up::up(server, examples).await
        }
        Command::Runtime {
            which: RuntimeKind::Binary,
        } => crate::runtime_binary::serve().await,
        Command::Env { verb, opts } => env::env_cmd(verb, &opts).await,
        Command::Fn { verb, opts } => function::fn_cmd(verb, &opts).await,
        Command::Route { verb, opts } => route::route_cmd(verb, &opts).await,
        Command::Secret { verb, opts } => secret::data_cmd(secret::SECRETS, verb, &opts).await,
        Command::Configmap { verb, opts } => {
            secret::data_cmd(secret::CONFIGMAPS, verb, &opts).await
        }
        Command::Wf { verb, opts } => workflow::wf_cmd(verb, &opts).await,
        Command::Run { verb, opts } => run::run_cmd(verb, &opts).await,
        Command::Spec { verb, opts } => spec::spec_cmd(verb, &opts).await,
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FUSION_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Adds `-H 'Key: Value'` headers to a request.
pub(super) fn with_headers(
    mut req: reqwest::RequestBuilder,
    headers: &[String],
) -> Result<reqwest::RequestBuilder> {
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("header {h:?} must be `Key: Value`"))?;
        req = req.header(k.trim(), v.trim());
    }
    Ok(req)
}
