//! The command line, in Fission's shape: `fusion <noun> <verb> [flags]`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::server::{self, ServerArgs};
use crate::spec;

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
pub(crate) struct ClientOpts {
    /// The Fusion API address.
    #[arg(
        long = "server",
        env = "FUSION_URL",
        default_value = "http://127.0.0.1:8889",
        global = true
    )]
    api: String,
    /// A PEM certificate (or bundle) to trust for an https API, beside the system's.
    #[arg(long = "cacert", env = "FUSION_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

impl ClientOpts {
    /// The API client: the token from `FUSION_TOKEN` or the data dir, and the
    /// CA certificate to trust, if given.
    pub(crate) fn client(&self) -> Result<Client> {
        Client::new(&self.api, crate::token::for_cli(), self.ca_cert.as_deref())
    }

    /// Whether the output is JSON (`-o json`).
    pub(crate) fn json(&self) -> bool {
        self.output == Output::Json
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Output {
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
    /// Packages: code with an optional build step (source built into a deployment).
    #[command(name = "pkg", alias = "package")]
    Pkg {
        #[command(subcommand)]
        verb: crate::cli_pkg::PkgVerb,
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

#[derive(Args)]
struct EnvFields {
    /// A bundled runtime: python, nodejs or binary.
    #[arg(long)]
    runtime: Option<String>,
    /// Or any command that speaks the runtime protocol (split on spaces).
    #[arg(long, conflicts_with = "runtime")]
    command: Option<String>,
    /// Or an OCI image on this machine: a layout directory or an oci-archive tar
    /// (container backend; the runtime listens on port 8888).
    #[arg(long, conflicts_with_all = ["runtime", "command"])]
    image: Option<PathBuf>,
    /// Generic instances kept warm.
    #[arg(long)]
    poolsize: Option<usize>,
    #[arg(long = "mincpu", hide = true)]
    _mincpu: Option<u64>,
    /// Memory limit per instance (all its processes), in MiB.
    #[arg(long = "maxmemory", alias = "memory")]
    memory: Option<u64>,
    /// CPU limit per instance in millicores.
    #[arg(long = "maxcpu")]
    cpu: Option<u64>,
    /// The network instances get on the container backend: host (default) or none.
    #[arg(long, value_parser = ["host", "none"])]
    network: Option<String>,
}

#[derive(Subcommand)]
enum EnvVerb {
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: EnvFields,
    },
    Get {
        #[arg(long)]
        name: String,
    },
    List,
    Update {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: EnvFields,
    },
    Delete {
        #[arg(long)]
        name: String,
    },
}

#[derive(Args)]
struct FnFields {
    /// The environment to run in.
    #[arg(long)]
    env: Option<String>,
    /// The code: one file, or a zip archive.
    #[arg(long)]
    code: Option<PathBuf>,
    /// Or a named package (see `fusion pkg create`), in the namespace `default`;
    /// a package with a source runs its build.
    #[arg(long = "pkg", conflicts_with = "code")]
    pkg: Option<String>,
    /// The entrypoint inside the code.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Seconds before a request gets 504.
    #[arg(long = "fntimeout", alias = "ft")]
    timeout: Option<u64>,
    /// Seconds an idle instance is kept.
    #[arg(long = "idletimeout")]
    idle_timeout: Option<u64>,
    /// Most instances at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Concurrent requests per instance.
    #[arg(long = "rpp")]
    requests_per_instance: Option<usize>,
}

#[derive(Subcommand)]
enum FnVerb {
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: FnFields,
    },
    Get {
        #[arg(long)]
        name: String,
    },
    List,
    Update {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: FnFields,
    },
    Delete {
        #[arg(long)]
        name: String,
    },
    /// Call the function and print its answer.
    Test {
        #[arg(long)]
        name: String,
        #[arg(long, short = 'X', default_value = "GET")]
        method: String,
        /// A header, as `Key: Value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The request body.
        #[arg(short = 'b', long = "body")]
        body: Option<String>,
        /// A sub-path below the function.
        #[arg(long, default_value = "/")]
        subpath: String,
    },
    /// Print the function's logs.
    Logs {
        /// The function (also as `fusion fn logs NAME`).
        #[arg(long = "name", required_unless_present = "function")]
        name: Option<String>,
        #[arg(conflicts_with = "name", hide = true)]
        function: Option<String>,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// List the function's running instances.
    Instances {
        #[arg(long)]
        name: String,
    },
}

#[derive(Args)]
struct RouteFields {
    /// A URL template with {params}, matched exactly.
    #[arg(long)]
    url: Option<String>,
    /// A path prefix.
    #[arg(long, conflicts_with = "url")]
    prefix: Option<String>,
    /// Methods (repeatable); none means all.
    #[arg(long = "method")]
    methods: Vec<String>,
    /// The target function.
    #[arg(long)]
    function: Option<String>,
    /// Or the target workflow.
    #[arg(long, conflicts_with = "function")]
    workflow: Option<String>,
    #[arg(long)]
    host: Option<String>,
}

#[derive(Subcommand)]
enum RouteVerb {
    Create {
        /// Generated from the URL when absent.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: RouteFields,
    },
    Get {
        #[arg(long)]
        name: String,
    },
    List,
    Update {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: RouteFields,
    },
    Delete {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum WfVerb {
    /// Store a workflow (version 1).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long = "file", short = 'f')]
        file: PathBuf,
    },
    /// Store a new version of a workflow.
    Update {
        #[arg(long)]
        name: String,
        #[arg(long = "file", short = 'f')]
        file: PathBuf,
    },
    Get {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    List,
    Versions {
        #[arg(long)]
        name: String,
    },
    Delete {
        #[arg(long)]
        name: String,
    },
    /// Run the workflow and print its output (or, with --async, the run id).
    Invoke {
        #[arg(long)]
        name: String,
        /// The input body.
        #[arg(short = 'b', long = "body")]
        body: Option<String>,
        /// A header, as `Key: Value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Do not wait for the result.
        #[arg(long = "async")]
        asynchronous: bool,
    },
}

#[derive(Subcommand)]
enum RunVerb {
    List {
        #[arg(long)]
        workflow: Option<String>,
        /// running, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    Get {
        #[arg(long)]
        id: String,
    },
    Events {
        #[arg(long)]
        id: String,
    },
    Cancel {
        #[arg(long)]
        id: String,
    },
    /// Run again from the failed tasks, keeping the outputs of those that succeeded.
    Retry {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum SpecVerb {
    /// Create or update every resource in a file or folder.
    Apply {
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
    },
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
            up(server, examples).await
        }
        Command::Runtime {
            which: RuntimeKind::Binary,
        } => crate::runtime_binary::serve().await,
        Command::Env { verb, opts } => env_cmd(verb, &opts).await,
        Command::Fn { verb, opts } => fn_cmd(verb, &opts).await,
        Command::Pkg { verb, opts } => crate::cli_pkg::pkg_cmd(verb, &opts).await,
        Command::Route { verb, opts } => route_cmd(verb, &opts).await,
        Command::Wf { verb, opts } => wf_cmd(verb, &opts).await,
        Command::Run { verb, opts } => run_cmd(verb, &opts).await,
        Command::Spec {
            verb: SpecVerb::Apply { path },
            opts,
        } => {
            let summary = spec::apply(&opts.client()?, &path).await?;
            spec::print_summary(&summary);
            Ok(())
        }
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

async fn up(server: ServerArgs, examples: PathBuf) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ca_cert = server.tls_cert.clone();
    let serve = server::run(server, move |r| {
        let _ = tx.send((
            r.router_addr,
            r.api_addr,
            r.scheme,
            r.token.clone(),
            r.token_file.clone(),
            r.isolation.clone(),
        ));
    });
    tokio::pin!(serve);
    let ready = tokio::select! {
        r = &mut serve => return r,
        a = rx => a.map_err(|_| anyhow!("the server did not start"))?,
    };
    let (router, api, scheme, token, token_file, isolation) = ready;
    let router = format!("{scheme}://{router}");
    let api = format!("{scheme}://{api}");
    let client = Client::new(&api, Some(token.as_str().to_string()), ca_cert.as_deref())?;
    // What curl needs to trust a self-signed certificate.
    let cacert = ca_cert
        .as_deref()
        .map(|p| format!(" --cacert {}", shell_quote(&p.display().to_string())))
        .unwrap_or_default();
    let applied = async {
        if examples.is_dir() {
            match spec::apply(&client, &examples).await {
                Ok(s) => {
                    spec::print_summary(&s);
                    println!();
                }
                Err(e) => eprintln!("warning: could not apply {}: {e:#}", examples.display()),
            }
        } else {
            eprintln!("note: {} not found; nothing applied", examples.display());
        }
        let routes: Vec<Value> = client.get("/v1/routes").await.unwrap_or_default();
        println!("Fusion is up.");
        println!("  router: {router}");
        println!("  API:    {api}   (export FUSION_URL={api})");
        match isolation.backend {
            "process" => println!("  WARNING: no isolation: {}", isolation.summary),
            _ => println!("  instances: {}", isolation.summary),
        }
        println!("The API needs its token (the CLI reads it from FUSION_TOKEN, or from the data dir when run here):");
        println!(
            "  export FUSION_TOKEN=$(cat {})",
            shell_quote(&token_file.display().to_string())
        );
        if let Some(cert) = &ca_cert {
            // So that the CLI trusts a self-signed certificate too.
            println!(
                "  export FUSION_CA_CERT={}",
                shell_quote(&cert.display().to_string())
            );
        }
        println!("  curl{cacert} -H \"Authorization: Bearer $FUSION_TOKEN\" {api}/v1/functions");
        if !routes.is_empty() {
            println!("Try:");
            for r in routes {
                let url = r["url"].as_str().or(r["prefix"].as_str()).unwrap_or("/");
                println!("  curl{cacert} {router}{}", example_path(url));
            }
        }
        let workflows: Vec<Value> = client.get("/v1/workflows").await.unwrap_or_default();
        if !workflows.is_empty() {
            let names: Vec<&str> = workflows
                .iter()
                .filter_map(|w| w["name"].as_str())
                .collect();
            println!("Workflows, invoked like functions: {}", names.join(", "));
            println!(
                "  curl{cacert} -H 'Content-Type: text/plain' -d 'hello' {router}/fission-function/{}",
                names[0]
            );
            println!("  fusion run list        # what ran, with every task");
        }
        println!("Stop with Ctrl-C.");
    };
    tokio::select! {
        r = &mut serve => return r,
        _ = applied => {}
    }
    serve.await
}

pub(crate) fn print(opts: &ClientOpts, value: &Value, columns: &[(&str, &str)]) {
    if opts.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
        return;
    }
    let rows: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let cell = |row: &Value, ptr: &str| -> String {
        match row.pointer(ptr) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            Some(v) => v.to_string(),
        }
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(_, p)| cell(r, p)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            table
                .iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(columns.iter().map(|(h, _)| h.to_string()).collect());
    for row in table {
        line(row);
    }
}

/// One kind of resource on the API, as the CLI lists and changes it.
struct Collection {
    path: &'static str,
    noun: &'static str,
    columns: &'static [(&'static str, &'static str)],
}

impl Collection {
    fn item(&self, name: &str) -> String {
        format!("{}/{name}", self.path)
    }
    async fn create(&self, c: &Client, opts: &ClientOpts, body: &Value) -> Result<()> {
        let v: Value = c.post_json(self.path, body).await?;
        print(opts, &v, self.columns);
        Ok(())
    }
    async fn show(&self, c: &Client, opts: &ClientOpts, name: &str) -> Result<()> {
        let v: Value = c.get(&self.item(name)).await?;
        print(opts, &v, self.columns);
        Ok(())
    }
    async fn list(&self, c: &Client, opts: &ClientOpts) -> Result<()> {
        let v: Value = c.get(self.path).await?;
        print(opts, &v, self.columns);
        Ok(())
    }
    /// The stored resource, to change and `replace`.
    async fn current(&self, c: &Client, name: &str) -> Result<Value> {
        c.get(&self.item(name)).await
    }
    async fn replace(&self, c: &Client, opts: &ClientOpts, name: &str, body: &Value) -> Result<()> {
        let v: Value = c.put_json(&self.item(name), body).await?;
        print(opts, &v, self.columns);
        Ok(())
    }
    async fn delete(&self, c: &Client, name: &str) -> Result<()> {
        c.delete(&self.item(name)).await?;
        println!("{} {name} deleted", self.noun);
        Ok(())
    }
}

const ENVIRONMENTS: Collection = Collection {
    path: "/v1/environments",
    noun: "environment",
    columns: ENV_COLUMNS,
};
const FUNCTIONS: Collection = Collection {
    path: "/v1/functions",
    noun: "function",
    columns: FN_COLUMNS,
};
const ROUTES: Collection = Collection {
    path: "/v1/routes",
    noun: "route",
    columns: ROUTE_COLUMNS,
};

const ENV_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("RUNTIME", "/runtime"),
    ("COMMAND", "/command"),
    ("IMAGE", "/image"),
    ("POOLSIZE", "/poolsize"),
    ("MEMORY_MB", "/memory_mb"),
    ("NETWORK", "/network"),
    ("ISOLATION", "/status/isolation/backend"),
];

async fn env_cmd(verb: EnvVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    let envs = &ENVIRONMENTS;
    match verb {
        EnvVerb::Create { name, fields } => {
            let mut body = json!({"name": name});
            merge_env(&mut body, fields)?;
            envs.create(&c, opts, &body).await
        }
        EnvVerb::Get { name } => envs.show(&c, opts, &name).await,
        EnvVerb::List => envs.list(&c, opts).await,
        EnvVerb::Update { name, fields } => {
            let mut body = envs.current(&c, &name).await?;
            merge_env(&mut body, fields)?;
            envs.replace(&c, opts, &name, &body).await
        }
        EnvVerb::Delete { name } => envs.delete(&c, &name).await,
    }
}

fn merge_env(body: &mut Value, f: EnvFields) -> Result<()> {
    // One of runtime, command and image replaces the others.
    let mut only = |key: &str, value: Value| {
        if let Some(o) = body.as_object_mut() {
            for other in ["runtime", "command", "image"] {
                o.remove(other);
            }
            o.insert(key.into(), value);
        }
    };
    if let Some(r) = f.runtime {
        only("runtime", json!(r));
    }
    if let Some(cmd) = f.command {
        only("command", json!(cmd.split_whitespace().collect::<Vec<_>>()));
    }
    if let Some(image) = f.image {
        // The server reads the image from its own disk: send an absolute path.
        let path = image.canonicalize().map_err(|_| {
            anyhow!(
                "no image at {}: give an OCI layout directory or oci-archive tar; registry pulls are not supported",
                image.display()
            )
        })?;
        only("image", json!(path));
    }
    if let Some(p) = f.poolsize {
        body["poolsize"] = json!(p);
    }
    if let Some(m) = f.memory {
        body["memory_mb"] = json!(m);
    }
    if let Some(cpu) = f.cpu {
        body["cpu_millis"] = json!(cpu);
    }
    if let Some(network) = f.network {
        body["network"] = json!(network);
    }
    Ok(())
}

const FN_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("ENV", "/env"),
    ("ENTRYPOINT", "/entrypoint"),
    ("TIMEOUT", "/timeout_secs"),
    ("IDLE", "/idle_timeout_secs"),
    ("CONCURRENCY", "/concurrency"),
    ("RPP", "/requests_per_instance"),
    ("GENERATION", "/generation"),
];

async fn merge_fn(c: &Client, body: &mut Value, f: FnFields) -> Result<()> {
    if let Some(e) = f.env {
        body["env"] = json!(e);
    }
    if let Some(code) = f.code {
        body["package"] = c.upload(&code).await?;
    }
    if let Some(pkg) = f.pkg {
        body["package"] = json!({"packageref": {"name": pkg, "namespace": "default"}});
    }
    if let Some(e) = f.entrypoint {
        body["entrypoint"] = json!(e);
    }
    if let Some(t) = f.timeout {
        body["timeout_secs"] = json!(t);
    }
    if let Some(t) = f.idle_timeout {
        body["idle_timeout_secs"] = json!(t);
    }
    if let Some(n) = f.concurrency {
        body["concurrency"] = json!(n);
    }
    if let Some(n) = f.requests_per_instance {
        body["requests_per_instance"] = json!(n);
    }
    Ok(())
}

async fn fn_cmd(verb: FnVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        FnVerb::Create { name, fields } => {
            if fields.env.is_none() {
                bail!("--env is required");
            }
            if fields.code.is_none() && fields.pkg.is_none() {
                bail!("--code (a file or zip archive) or --pkg (a named package) is required");
            }
            let mut body = json!({"name": name});
            merge_fn(&c, &mut body, fields).await?;
            FUNCTIONS.create(&c, opts, &body).await?;
        }
        FnVerb::Get { name } => FUNCTIONS.show(&c, opts, &name).await?,
        FnVerb::List => FUNCTIONS.list(&c, opts).await?,
        FnVerb::Update { name, fields } => {
            let mut body = FUNCTIONS.current(&c, &name).await?;
            merge_fn(&c, &mut body, fields).await?;
            FUNCTIONS.replace(&c, opts, &name, &body).await?;
        }
        FnVerb::Delete { name } => FUNCTIONS.delete(&c, &name).await?,
        FnVerb::Test {
            name,
            method,
            headers,
            body,
            subpath,
        } => {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
                .map_err(|_| anyhow!("bad method {method:?}"))?;
            let sub = subpath.trim_start_matches('/');
            let path = if sub.is_empty() {
                format!("/v1/functions/{name}/invoke")
            } else {
                format!("/v1/functions/{name}/invoke/{sub}")
            };
            let mut req = c.request(method, &path);
            req = with_headers(req, &headers)?;
            if let Some(b) = body {
                req = req.body(b);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach the Fusion API at {}", opts.api))?;
            let status = resp.status();
            let text = resp.text().await?;
            print!("{text}");
            if !status.is_success() {
                bail!("the function answered {status}");
            }
        }
        FnVerb::Logs {
            name,
            function,
            follow,
        } => {
            let name = name.or(function).unwrap_or_default();
            use futures_util::StreamExt;
            use std::io::Write;
            let path = format!("/v1/functions/{name}/logs");
            let resp = c
                .send(c.request(Method::GET, &path).query(&[("follow", follow)]))
                .await?;
            let mut stream = resp.bytes_stream();
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?)?;
                out.flush()?;
            }
        }
        FnVerb::Instances { name } => {
            let v: Value = c.get(&format!("/v1/functions/{name}/instances")).await?;
            print(
                opts,
                &v,
                &[
                    ("ID", "/id"),
                    ("PID", "/pid"),
                    ("ADDRESS", "/address"),
                    ("STATE", "/state"),
                    ("ACTIVE", "/active_requests"),
                ],
            );
        }
    }
    Ok(())
}

const ROUTE_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("METHODS", "/methods"),
    ("URL", "/url"),
    ("PREFIX", "/prefix"),
    ("HOST", "/host"),
    ("FUNCTION", "/function"),
    ("WORKFLOW", "/workflow"),
];

fn merge_route(body: &mut Value, f: RouteFields) {
    if let Some(u) = f.url {
        body["url"] = json!(u);
        body.as_object_mut().map(|o| o.remove("prefix"));
    }
    if let Some(p) = f.prefix {
        body["prefix"] = json!(p);
        body.as_object_mut().map(|o| o.remove("url"));
    }
    if !f.methods.is_empty() {
        body["methods"] = json!(f
            .methods
            .iter()
            .map(|m| m.to_uppercase())
            .collect::<Vec<_>>());
    }
    if let Some(fun) = f.function {
        body["function"] = json!(fun);
        body.as_object_mut().map(|o| o.remove("workflow"));
    }
    if let Some(w) = f.workflow {
        body["workflow"] = json!(w);
        body.as_object_mut().map(|o| o.remove("function"));
    }
    if let Some(h) = f.host {
        body["host"] = json!(h);
    }
}

/// Adds `-H 'Key: Value'` headers to a request.
fn with_headers(
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

/// `text` as one shell word: as it is when it has only safe characters, else in
/// single quotes.
fn shell_quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// A URL template with each `{param}` filled in, for the quickstart's hints.
fn example_path(template: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') { "world" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// A route name derived from its URL: `/users/{id}` -> `users-id`.
fn route_name(url: &str) -> String {
    let mut name: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name = name.trim_matches('-');
    let name = if name.is_empty() { "root" } else { name };
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

async fn route_cmd(verb: RouteVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        RouteVerb::Create { name, fields } => {
            let url = fields
                .url
                .clone()
                .or(fields.prefix.clone())
                .ok_or_else(|| anyhow!("--url or --prefix is required"))?;
            let name = name.unwrap_or_else(|| route_name(&url));
            let mut body = json!({"name": name});
            merge_route(&mut body, fields);
            ROUTES.create(&c, opts, &body).await
        }
        RouteVerb::Get { name } => ROUTES.show(&c, opts, &name).await,
        RouteVerb::List => ROUTES.list(&c, opts).await,
        RouteVerb::Update { name, fields } => {
            let mut body = ROUTES.current(&c, &name).await?;
            merge_route(&mut body, fields);
            ROUTES.replace(&c, opts, &name, &body).await
        }
        RouteVerb::Delete { name } => ROUTES.delete(&c, &name).await,
    }
}

const WF_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("VERSION", "/version"),
    ("DESCRIPTION", "/description"),
];

const RUN_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("WORKFLOW", "/workflow"),
    ("VERSION", "/version"),
    ("STATUS", "/status"),
    ("DURATION_MS", "/duration_ms"),
];

fn read_file(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
}

async fn wf_cmd(verb: WfVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        WfVerb::Create { name, file } => {
            let req = c
                .request(Method::POST, "/v1/workflows")
                .query(&[("name", &name)])
                .header("content-type", "application/yaml")
                .body(read_file(&file)?);
            let v: Value = c.send(req).await?.json().await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Update { name, file } => {
            let req = c
                .request(Method::PUT, &format!("/v1/workflows/{name}"))
                .header("content-type", "application/yaml")
                .body(read_file(&file)?);
            let v: Value = c.send(req).await?.json().await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Get { name, version } => {
            let mut path = format!("/v1/workflows/{name}");
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let v: Value = c.get(&path).await?;
            if opts.output == Output::Json {
                print(opts, &v, WF_COLUMNS);
            } else {
                println!("# {name} version {}", v["version"]);
                print!("{}", v["source"].as_str().unwrap_or_default());
            }
        }
        WfVerb::List => {
            let v: Value = c.get("/v1/workflows").await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Versions { name } => {
            let v: Value = c.get(&format!("/v1/workflows/{name}/versions")).await?;
            print(opts, &v, WF_COLUMNS);
        }
        WfVerb::Delete { name } => {
            c.delete(&format!("/v1/workflows/{name}")).await?;
            println!("workflow {name} deleted");
        }
        WfVerb::Invoke {
            name,
            body,
            headers,
            asynchronous,
        } => {
            let mut req = c.request(Method::POST, &format!("/v1/workflows/{name}/invoke"));
            req = with_headers(req, &headers)?;
            if asynchronous {
                req = req.header("X-Async", "true");
            }
            if let Some(b) = body {
                req = req.body(b);
            }
            let resp = c.send(req).await?;
            let run = resp
                .headers()
                .get("x-fusion-run-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = resp.text().await?;
            print!("{text}");
            if !text.is_empty() && !text.ends_with('\n') {
                println!();
            }
            if let Some(id) = run {
                eprintln!("run {id}");
            }
        }
    }
    Ok(())
}

async fn run_cmd(verb: RunVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        RunVerb::List {
            workflow,
            status,
            limit,
            cursor,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(w) = workflow {
                q.push(("workflow", w));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            if let Some(cur) = cursor {
                q.push(("cursor", cur));
            }
            let req = c.request(Method::GET, "/v1/runs").query(&q);
            let v: Value = c.send(req).await?.json().await?;
            if opts.output == Output::Json {
                print(opts, &v, RUN_COLUMNS);
            } else {
                print(opts, &v["runs"], RUN_COLUMNS);
                if let Some(next) = v["next_cursor"].as_str() {
                    println!("more: fusion run list --cursor {next}");
                }
            }
        }
        RunVerb::Get { id } => {
            let v: Value = c.get(&format!("/v1/runs/{id}")).await?;
            if opts.output == Output::Json {
                print(opts, &v, RUN_COLUMNS);
            } else {
                print(opts, &v, RUN_COLUMNS);
                println!();
                print(
                    opts,
                    &v["tasks"],
                    &[
                        ("TASK", "/id"),
                        ("STATUS", "/status"),
                        ("ATTEMPTS", "/attempts"),
                        ("ERROR", "/error/message"),
                    ],
                );
            }
        }
        RunVerb::Events { id } => {
            let v: Value = c.get(&format!("/v1/runs/{id}/events")).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
        }
        RunVerb::Cancel { id } => {
            let v: Value = c
                .post_json(&format!("/v1/runs/{id}/cancel"), &json!({}))
                .await?;
            print(opts, &v, RUN_COLUMNS);
        }
        RunVerb::Retry { id } => {
            let v: Value = c
                .post_json(&format!("/v1/runs/{id}/retry"), &json!({}))
                .await?;
            print(opts, &v, RUN_COLUMNS);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::route_name;

    #[test]
    fn route_names_from_urls() {
        assert_eq!(route_name("/users/{id}"), "users-id");
        assert_eq!(route_name("/"), "root");
        assert_eq!(route_name("/Hello_World"), "hello-world");
        assert_eq!(super::example_path("/hello/{name}/x"), "/hello/world/x");
        assert_eq!(super::shell_quote(".fusion/token"), ".fusion/token");
        assert_eq!(super::shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
