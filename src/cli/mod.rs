//! The command line, in Fission's shape: `fusion <noun> <verb> [flags]`.
//! This module parses the command and dispatches it; each noun lives in its own module.

mod backup;
mod canary;
mod env;

pub(crate) use env::image_use_line;
mod function;
mod graph;
mod invocation;
mod mqt;
mod output;
mod pkg;
mod route;
mod run;
mod secret;
mod spec;
mod timer;
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
    /// Fission's CLI verbosity (0 quiet, 1 the default, 2 verbose): taken,
    /// and nothing changes (the server's log is set with FUSION_LOG).
    #[arg(short = 'v', long = "verbosity", value_name = "LEVEL", global = true)]
    _verbosity: Option<u8>,
    /// Fission's Kubernetes context: not used (said on stderr); the server
    /// is --server.
    #[arg(long = "kube-context", value_name = "CONTEXT", global = true)]
    kube_context: Option<String>,
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
    /// The namespace environments, functions and routes are in (from `NsOpt`).
    #[arg(skip)]
    pub(super) namespace: Option<String>,
}

impl ClientOpts {
    /// The namespace commands act in (`default` unless given).
    pub(super) fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// `--namespace` of the env, fn and route commands.
#[derive(Args, Clone)]
pub(super) struct NsOpt {
    /// The namespace (names are unique per namespace). `--fns` is Fission's
    /// older spelling.
    #[arg(
        long,
        short = 'n',
        alias = "fns",
        env = "FUSION_NAMESPACE",
        default_value = "default",
        global = true
    )]
    namespace: String,
}

impl ClientOpts {
    /// Whether the output is JSON (`-o json`).
    pub(super) fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// These options in the namespace `ns` gives.
    fn in_namespace(mut self, ns: NsOpt) -> ClientOpts {
        self.namespace = Some(ns.namespace);
        self
    }

    /// `?namespace=NS` for a path, unless the namespace is `default`.
    pub(super) fn ns_query(&self) -> String {
        match self.namespace.as_deref() {
            None | Some("default") => String::new(),
            // Percent-encoded: a wrong namespace reaches the server whole, and
            // is refused there with its name.
            Some(ns) => format!(
                "?namespace={}",
                ns.bytes()
                    .map(|b| if b.is_ascii_alphanumeric() || b == b'-' {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    })
                    .collect::<String>()
            ),
        }
    }

    /// The API client: the token from `FUSION_TOKEN` or the data dir, and the
    /// CA certificate to trust, if given.
    pub(super) fn client(&self) -> Result<Client> {
        Client::new(&self.api, crate::token::for_cli(), self.ca_cert.as_deref())
    }
}

/// A resource's name, as Fission users type it: `fusion fn get hello`, or
/// `fusion fn get --name hello`.
#[derive(Args, Clone)]
pub(super) struct Name {
    /// The name (or give it as --name NAME).
    #[arg(value_name = "NAME", required_unless_present = "name")]
    positional: Option<String>,
    /// The name (as the positional NAME).
    #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
    name: Option<String>,
}

impl Name {
    pub(super) fn get(self) -> String {
        self.positional.or(self.name).unwrap_or_default()
    }
}

/// Fission's `--all-namespaces` of its list verbs.
#[derive(Args)]
pub(super) struct AllNamespaces {
    /// List every namespace's, with a NAMESPACE column (Fission's flag).
    #[arg(long = "all-namespaces", short = 'A')]
    pub(super) all: bool,
}

/// Fission's `--ignorenotfound` of its delete verbs: a script tearing down
/// what it made runs again without failing on what is gone already.
#[derive(Args)]
pub(super) struct IgnoreNotFound {
    /// Deleting what does not exist is no error (Fission's flag).
    #[arg(long = "ignorenotfound", alias = "ignore-not-found")]
    ignore_not_found: bool,
}

impl IgnoreNotFound {
    /// Whether `e` is an answer of "not found" that the flag makes no error.
    pub(super) fn ignores(&self, e: &anyhow::Error) -> bool {
        self.ignore_not_found && e.downcast_ref::<crate::client::NotFound>().is_some()
    }

    /// `result`, where an answer of "not found" counts as deleted when the
    /// flag is given (said as nothing deleted: `{"deleted": null}` with `-o
    /// json`, nothing otherwise).
    pub(super) fn apply(&self, opts: &ClientOpts, result: Result<()>) -> Result<()> {
        match result {
            Err(e) if self.ignores(&e) => {
                output::deleted_nothing(opts);
                Ok(())
            }
            other => other,
        }
    }
}

/// `--spec` and `--dry` of the create commands, as Fission's CLI has them.
#[derive(Args)]
pub(super) struct SpecOpt {
    /// Write what would be created into the spec folder (`fusion spec init`
    /// makes one) instead of creating it; `fusion spec apply` creates it.
    #[arg(long)]
    spec: bool,
    /// Print the spec documents instead of creating anything (with --spec
    /// too: printed, not saved, as in Fission).
    #[arg(long)]
    dry: bool,
    /// The spec folder --spec writes into.
    #[arg(long, default_value = "specs", value_name = "DIR")]
    specdir: PathBuf,
}

impl SpecOpt {
    /// Where the documents go, when they are to be written rather than sent.
    pub(super) fn target(self) -> Option<crate::spec::save::Target> {
        (self.spec || self.dry).then_some(crate::spec::save::Target {
            dir: self.specdir,
            dry: self.dry,
        })
    }
}

/// A run's id: `fusion run get ID`, or `fusion run get --id ID`.
#[derive(Args, Clone)]
pub(super) struct RunId {
    /// The run's id (or give it as --id ID).
    #[arg(value_name = "ID", required_unless_present = "id")]
    positional: Option<String>,
    /// The run's id (as the positional ID; `--name`, as Fission's
    /// `workflow runs` commands name a run).
    #[arg(
        long = "id",
        alias = "name",
        value_name = "ID",
        conflicts_with = "positional"
    )]
    id: Option<String>,
}

impl RunId {
    pub(super) fn get(self) -> String {
        self.positional.or(self.id).unwrap_or_default()
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub(super) enum Output {
    Table,
    /// A table whose cells are whole (errors, inputs and outputs not cut).
    Wide,
    Json,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start the server, apply workflow-examples/ and print URLs to try.
    #[command(after_help = LOGGING_HELP)]
    Up {
        #[command(flatten)]
        server: ServerArgs,
        /// The folder of example specs to apply.
        #[arg(long, default_value = "workflow-examples")]
        examples: PathBuf,
    },
    /// Start the server.
    #[command(after_help = LOGGING_HELP)]
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
        #[command(flatten)]
        ns: NsOpt,
    },
    /// Functions: code in an environment, called through routes or
    /// /fission-function/NAME.
    #[command(name = "fn", alias = "function")]
    Fn {
        #[command(subcommand)]
        verb: FnVerb,
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        ns: NsOpt,
    },
    /// Packages: code with an optional build step (a source built into a deployment).
    #[command(name = "pkg", alias = "package")]
    Pkg {
        #[command(subcommand)]
        verb: pkg::PkgVerb,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Routes (Fission's HTTP triggers): URLs to functions and workflows.
    #[command(alias = "httptrigger", alias = "ht")]
    Route {
        #[command(subcommand)]
        verb: RouteVerb,
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        ns: NsOpt,
    },
    /// Time triggers (Fission's): cron schedules that call a function or start
    /// a workflow, with each firing's outcome.
    #[command(alias = "timetrigger", alias = "tt")]
    Timer {
        #[command(subcommand)]
        verb: timer::TimerVerb,
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        ns: NsOpt,
    },
    /// Message-queue triggers (Fission's mqtrigger): NATS JetStream subjects
    /// to functions and workflows.
    #[command(alias = "mqtrigger")]
    Mqt {
        #[command(subcommand)]
        verb: mqt::MqtVerb,
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        ns: NsOpt,
    },
    /// Canary releases (Fission's canary-config): a route's requests moved to
    /// a new function step by step, or back to the old one past a failure rate.
    #[command(name = "canary-config", alias = "canary")]
    CanaryConfig {
        #[command(subcommand)]
        verb: canary::CanaryVerb,
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        ns: NsOpt,
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
    /// Resource specs: a project's folder (Fission's specs/) initialised, validated,
    /// applied, listed and destroyed.
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
    /// A backup of the running server (runs, workflows, functions and their
    /// code, triggers, secrets, the token) into FILE, made while it goes on.
    Backup {
        /// Where to write it (`-`: stdout); never an existing file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// A backup into a new data directory, for `fusion server --data-dir DIR`
    /// (no server involved).
    Restore {
        /// The backup (`-`: stdin).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The data directory to make: new, or empty.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// This client's version and the server's (and the backend it runs).
    Version {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// The fetcher of a function pod (kubernetes backend): pulls the code the
    /// pool stages on the pod into its /userfunc volume.
    #[command(hide = true)]
    Fetcher {
        #[command(flatten)]
        args: crate::fetcher::FetcherArgs,
    },
    /// Runtime servers started by Fusion itself.
    #[command(hide = true)]
    Runtime {
        #[command(subcommand)]
        which: RuntimeKind,
    },
}

/// `fusion version`: the client's, then the server's (a server that cannot be
/// reached is an error after the client's line, so scripts see both).
async fn version(opts: &ClientOpts) -> Result<()> {
    let client = env!("CARGO_PKG_VERSION");
    if opts.json() {
        let server: serde_json::Value = opts.client()?.get("/v1/version").await?;
        let both = serde_json::json!({"client": {"version": client}, "server": server});
        println!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(());
    }
    println!("client: fusion {client}");
    let server: serde_json::Value = opts.client()?.get("/v1/version").await?;
    println!(
        "server: fusion {} ({} backend)",
        server["version"].as_str().unwrap_or("?"),
        server["backend"].as_str().unwrap_or("?")
    );
    Ok(())
}

#[derive(Subcommand)]
enum RuntimeKind {
    /// The binary environment's runtime.
    Binary,
    /// The first process of a container: runs the command, passes it
    /// signals, reaps orphans and exits as it exits.
    Init {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
}

impl Cli {
    /// The command `fusion runtime init` runs, if that is what was asked:
    /// it runs before any thread starts (it waits for signals by masking them).
    pub fn init_command(&self) -> Option<&[std::ffi::OsString]> {
        match &self.command {
            Command::Runtime {
                which: RuntimeKind::Init { command },
            } => Some(command),
            _ => None,
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    if let Some(context) = &cli.kube_context {
        eprintln!("warning: --kube-context {context} is not used: Fusion talks to the server --server (FUSION_URL) names, not to Kubernetes");
    }
    match cli.command {
        Command::Server { server } => {
            let json = init_tracing()?;
            server::run(server, |r| {
                // One machine-readable line, so scripts and tests know where to
                // connect; a reader gone (`| head -1`) does not stop the server.
                // With JSON logs, JSON too: under journald it lands among them.
                use std::io::Write;
                let router = format!("{}://{}", r.scheme, r.router_addr);
                let api = format!("{}://{}", r.scheme, r.api_addr);
                let line = if json {
                    serde_json::json!({"message": "fusion listening", "router": router, "api": api})
                        .to_string()
                } else {
                    format!("fusion listening router={router} api={api}")
                };
                let _ = writeln!(std::io::stdout(), "{line}");
            })
            .await
        }
        Command::Up { server, examples } => {
            init_tracing()?;
            up::up(server, examples).await
        }
        Command::Runtime {
            which: RuntimeKind::Binary,
        } => crate::runtime_binary::serve().await,
        Command::Runtime {
            which: RuntimeKind::Init { command },
        } => crate::init::run(&command),
        Command::Fetcher { args } => {
            init_tracing()?;
            crate::fetcher::serve(args).await
        }
        Command::Env { verb, opts, ns } => env::env_cmd(verb, &opts.in_namespace(ns)).await,
        Command::Fn { verb, opts, ns } => function::fn_cmd(verb, &opts.in_namespace(ns)).await,
        Command::Pkg { verb, opts } => pkg::pkg_cmd(verb, &opts).await,
        Command::Version { opts } => version(&opts).await,
        Command::Backup { file, opts } => backup::backup(&file, &opts).await,
        Command::Restore { file, data_dir } => backup::restore(&file, &data_dir).await,
        Command::Route { verb, opts, ns } => route::route_cmd(verb, &opts.in_namespace(ns)).await,
        Command::Timer { verb, opts, ns } => timer::timer_cmd(verb, &opts.in_namespace(ns)).await,
        Command::Mqt { verb, opts, ns } => mqt::mqt_cmd(verb, &opts.in_namespace(ns)).await,
        Command::CanaryConfig { verb, opts, ns } => {
            canary::canary_cmd(verb, &opts.in_namespace(ns)).await
        }
        Command::Secret { verb, opts } => secret::data_cmd(secret::SECRETS, verb, &opts).await,
        Command::Configmap { verb, opts } => {
            secret::data_cmd(secret::CONFIGMAPS, verb, &opts).await
        }
        Command::Wf { verb, opts } => workflow::wf_cmd(verb, &opts).await,
        Command::Run { verb, opts } => run::run_cmd(verb, &opts).await,
        Command::Spec { verb, opts } => spec::spec_cmd(verb, &opts).await,
    }
}

/// What `up` and `server` say of their log, below their flags.
const LOGGING_HELP: &str =
    "Logging (to stderr): FUSION_LOG sets what is logged, as a tracing filter \
(default `info,async_nats=warn`; `debug`, `warn`, `engine=debug,info`); FUSION_LOG_FORMAT=json writes one JSON \
object a line. Colours only on a terminal, and never with NO_COLOR set.";

/// Sets up the log; answers whether it is JSON (`FUSION_LOG_FORMAT=json`).
fn init_tracing() -> Result<bool> {
    use std::io::IsTerminal;
    // The NATS client's own events (each reconnection attempt while NATS is
    // away, several a second) only at warn: a trigger's status and its one
    // warning a change say the outage.
    let filter = match std::env::var("FUSION_LOG") {
        Ok(f) if !f.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&f)
            .map_err(|e| anyhow!("FUSION_LOG={f:?} is not a log filter ({e}): try `info`, `debug` or `engine=debug,info`"))?,
        _ => tracing_subscriber::EnvFilter::new("info,async_nats=warn"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogOut(std::io::stderr()));
    let json = match std::env::var("FUSION_LOG_FORMAT") {
        Err(_) => false,
        Ok(f) if f.is_empty() || f.eq_ignore_ascii_case("text") => false,
        Ok(f) if f.eq_ignore_ascii_case("json") => true,
        Ok(f) => anyhow::bail!(
            "FUSION_LOG_FORMAT={f:?} is not a log format: use `text` (the default) or `json`"
        ),
    };
    let _ = if json {
        builder.json().try_init()
    } else {
        // Escape codes only where a terminal reads them: a log file, journald
        // or a pipe gets plain text.
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        builder.with_ansi(ansi).try_init()
    };
    Ok(json)
}

/// The log's writer: a log nobody reads any more (a closed pipe, a log
/// shipper that went away) loses its lines, it does not stop the server.
struct LogOut(std::io::Stderr);

impl std::io::Write for LogOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
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
        let (k, v) = (k.trim(), v.trim());
        // Checked here: reqwest would report it as a failed connection.
        let name = reqwest::header::HeaderName::try_from(k)
            .map_err(|_| anyhow!("header {h:?}: {k:?} is not a header name"))?;
        let value = reqwest::header::HeaderValue::try_from(v).map_err(|_| {
            anyhow!("header {h:?}: its value holds a character a header cannot (a line break, a control character)")
        })?;
        req = req.header(name, value);
    }
    Ok(req)
}

/// One page of a list as a user asked for it: up to `limit` items (under
/// `key`) from `cursor` on, with the `next_cursor` of the last page read.
/// The server ends a page early, with a cursor, once it has read so much of
/// its index (a filter few items pass): the pages after it fill it.
pub(super) async fn filled_page(
    key: &str,
    limit: usize,
    mut cursor: Option<String>,
    fetch: impl AsyncFn(usize, Option<&str>) -> Result<serde_json::Value>,
) -> Result<serde_json::Value> {
    let count = |page: &serde_json::Value| page[key].as_array().map_or(0, Vec::len);
    let mut filled = fetch(limit, cursor.as_deref()).await?;
    loop {
        cursor = filled["next_cursor"].as_str().map(str::to_string);
        let have = count(&filled);
        if cursor.is_none() || have >= limit {
            return Ok(filled);
        }
        let mut page = fetch(limit - have, cursor.as_deref()).await?;
        let more = page[key].take();
        if let (Some(items), serde_json::Value::Array(more)) = (filled[key].as_array_mut(), more) {
            items.extend(more);
        }
        filled["next_cursor"] = page["next_cursor"].take();
    }
}

/// An error that ends the CLI with a status of its own, not 1: what a script
/// tells apart from a failure (`run wait` at its `--timeout` exits 124, as
/// GNU `timeout` does, while the run goes on).
#[derive(Debug)]
pub struct ExitWith {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}

/// The exit status of `run wait` when the run is still going at its timeout.
pub(super) const STILL_RUNNING_EXIT: i32 = 124;

/// A command-line mistake as one line: clap's message, then what it adds (the
/// argument missing, a tip, the usage) in parentheses, without the blank lines
/// and the "For more information" footer.
pub fn usage_error(rendered: &str) -> String {
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"));
    let mut first = lines
        .next()
        .unwrap_or("error: bad command line")
        .to_string();
    let mut extra: Vec<String> = Vec::new();
    for line in lines {
        if let Some(usage) = line.strip_prefix("Usage: ") {
            extra.push(format!("usage: {usage}"));
        } else if first.ends_with(':') {
            // "the following required arguments were not provided:" + the list.
            first.push(' ');
            first.push_str(line);
        } else {
            extra.push(line.to_string());
        }
    }
    if extra.is_empty() {
        first
    } else {
        format!("{first} ({})", extra.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Short pages with a cursor are followed until the limit; a page that
    /// fills it, or the last page, ends the list.
    #[tokio::test]
    async fn a_short_page_is_filled_from_the_next() {
        use serde_json::{json, Value};
        // The server's pages: at most two items read per page, of 1..=7,
        // where only the odd ones pass the filter.
        let server = async |limit: usize, cursor: Option<&str>| -> anyhow::Result<Value> {
            let from: u64 = cursor.map_or(1, |c| c.parse::<u64>().unwrap() + 1);
            let read: Vec<u64> = (from..=7).take(2).collect();
            let items: Vec<u64> = read
                .iter()
                .copied()
                .filter(|i| i % 2 == 1)
                .take(limit)
                .collect();
            let next = match read.last() {
                Some(&l) if l < 7 => json!(l.to_string()),
                _ => Value::Null,
            };
            Ok(json!({"items": items, "next_cursor": next}))
        };
        let page = super::filled_page("items", 3, None, server).await.unwrap();
        assert_eq!(page, json!({"items": [1, 3, 5], "next_cursor": "6"}));
        let page = super::filled_page("items", 3, Some("6".into()), server)
            .await
            .unwrap();
        assert_eq!(page, json!({"items": [7], "next_cursor": null}));
    }

    /// clap's own checks of every command (an argument that names another
    /// that does not exist, two flags of one name, ...), which otherwise fail
    /// only when a user runs that command.
    #[test]
    fn every_command_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// Every command and every flag a user can see says what it is for.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != " fusion" {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !arg.is_hide_set() && !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" && !sub.is_hide_set() {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:#?}");
    }

    #[test]
    fn usage_errors_are_one_line() {
        use clap::Parser;
        let one_line = |args: &[&str]| {
            let e = super::Cli::try_parse_from(args)
                .err()
                .expect("a usage error");
            super::usage_error(&e.render().to_string())
        };
        assert_eq!(
            one_line(&["fusion", "fn", "get"]),
            "error: the following required arguments were not provided: <NAME> (usage: fusion fn get <NAME>)"
        );
        assert_eq!(
            one_line(&["fusion", "env", "create", "py", "--poolsize", "x"]),
            "error: invalid value 'x' for '--poolsize <INSTANCES>': invalid digit found in string"
        );
        let e = one_line(&["fusion", "fn", "create", "a", "--executortype", "container"]);
        assert!(
            e.starts_with("error: invalid value 'container' for '--executortype <TYPE>' ([possible values: poolmgr, newdeploy]"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn names_and_run_ids_are_positional_or_flags() {
        use clap::Parser;
        for args in [
            ["fusion", "fn", "test", "hello"].as_slice(),
            &["fusion", "fn", "test", "--name", "hello"],
            &["fusion", "env", "get", "py"],
            &["fusion", "wf", "get", "w"],
            &["fusion", "run", "get", "ID"],
            &["fusion", "run", "get", "--id", "ID"],
            &[
                "fusion",
                "route",
                "create",
                "--url",
                "/x",
                "--function",
                "f",
            ],
        ] {
            super::Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        for args in [
            ["fusion", "fn", "test"].as_slice(),
            &["fusion", "fn", "get", "a", "--name", "b"],
            &["fusion", "run", "get"],
        ] {
            assert!(super::Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
