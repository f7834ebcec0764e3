//! `fusion fn`: functions, and calling them (`fn test`, `--async`), their logs and
//! instances; their asynchronous invocations and dead letters in `invocation.rs`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::output::{print, Collection};
use super::{with_headers, ClientOpts, Name, SpecOpt};
use crate::client::Client;
use crate::spec::{model::Kind, save};

/// A route made with the function, as Fission's `fn create --url`.
#[derive(Args)]
pub(super) struct FnRoute {
    /// Also create a route from this URL template to the function (as
    /// `fusion route create --url`).
    #[arg(long, value_name = "TEMPLATE", conflicts_with = "prefix")]
    url: Option<String>,
    /// Or a route from every path below this prefix.
    #[arg(long, value_name = "PATH")]
    prefix: Option<String>,
    /// The route's HTTP method (repeatable; GET when absent, ANY for every one).
    #[arg(long = "method", value_name = "METHOD")]
    methods: Vec<String>,
}

#[derive(Args)]
pub(super) struct FnFields {
    /// The environment to run in.
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
    /// The code: one file, a zip archive, or a directory (zipped).
    #[arg(long, value_name = "FILE|DIR")]
    code: Option<PathBuf>,
    /// Or a named package (see `fusion pkg create`) in the function's namespace;
    /// a package with a source runs its build.
    #[arg(
        long = "pkg",
        visible_alias = "pkgname",
        value_name = "PACKAGE",
        conflicts_with = "code"
    )]
    pkg: Option<String>,
    /// Or source code to build into a package made for the function (as
    /// Fission's CLI): a directory, a zip archive or a file (repeatable).
    #[arg(long = "src", alias = "sourcearchive", conflicts_with_all = ["code", "pkg"])]
    src: Vec<PathBuf>,
    /// Or code to run as it is, in a package made for the function
    /// (repeatable; with --src, the package has both).
    #[arg(long = "deploy", alias = "deployarchive", conflicts_with_all = ["code", "pkg"])]
    deploy: Vec<PathBuf>,
    /// The build command of that package (with --src; on update, of the
    /// function's package).
    #[arg(long)]
    buildcmd: Option<String>,
    /// The entrypoint inside the code (`main`, `hello.main`, ...; the runtime's
    /// default when absent).
    #[arg(long, visible_alias = "ep")]
    entrypoint: Option<String>,
    /// Seconds a request may take before it gets 504 (default 60).
    #[arg(long = "fntimeout", visible_alias = "ft", value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Seconds an idle specialized instance is kept before it is stopped
    /// (default 120; instances up to --minscale are kept anyway).
    #[arg(long = "idletimeout", value_name = "SECONDS")]
    idle_timeout: Option<u64>,
    /// Fission's executor type: poolmgr (the default) or newdeploy. Both run on
    /// the environment's pool; newdeploy keeps --minscale instances warm and
    /// caps them at --maxscale, as its deployment would in Fission.
    #[arg(long = "executortype", value_name = "TYPE", value_parser = ["poolmgr", "newdeploy"])]
    executor_type: Option<String>,
    /// Specialized instances kept warm, started when the function is created or
    /// updated and never reaped below this (default 0).
    #[arg(long = "minscale", value_name = "INSTANCES")]
    min_scale: Option<usize>,
    /// Most instances at once (default 10); past it requests wait, then get 429.
    #[arg(long = "maxscale", value_name = "INSTANCES")]
    max_scale: Option<usize>,
    /// Fission's name of --maxscale for poolmgr functions: with both, a
    /// newdeploy function takes --maxscale and any other this, as in Fission.
    #[arg(long = "concurrency", visible_alias = "con", value_name = "INSTANCES")]
    concurrency: Option<usize>,
    /// Concurrent requests one instance takes (default 1).
    #[arg(
        long = "rpp",
        visible_alias = "requestsperpod",
        value_name = "REQUESTS"
    )]
    requests_per_instance: Option<usize>,
    /// A secret the function reads at /secrets/<namespace>/<name>/<key>, as NAME
    /// or NAMESPACE/NAME (repeatable; replaces the list, '' to empty it; container backend).
    #[arg(long = "secret", value_name = "[NAMESPACE/]NAME")]
    secrets: Vec<String>,
    /// A configmap the function reads at /configs/<namespace>/<name>/<key>, as
    /// NAME or NAMESPACE/NAME (repeatable; replaces the list, '' to empty it; container backend).
    #[arg(long = "configmap", value_name = "[NAMESPACE/]NAME")]
    configmaps: Vec<String>,
    /// An environment variable set before the code loads, as KEY=VALUE
    /// (repeatable; sets or replaces KEY; `KEY-` removes it, as `kubectl set
    /// env` does; bundled runtimes only).
    #[arg(long = "env-var", value_name = "KEY=VALUE")]
    env_vars: Vec<String>,
    /// Attempts of an asynchronous call (X-Async: true), the first included
    /// (default 3); then it is dead-lettered.
    #[arg(long = "async-retry-max-attempts", value_name = "ATTEMPTS")]
    async_max_attempts: Option<u32>,
    /// The delay before an asynchronous call's first retry, doubled for each
    /// next one, e.g. `500ms` (default 1s).
    #[arg(long = "async-backoff-base", value_name = "DURATION")]
    async_backoff_base: Option<String>,
    /// The longest delay between an asynchronous call's attempts (default 5m).
    #[arg(long = "async-backoff-cap", value_name = "DURATION")]
    async_backoff_cap: Option<String>,
    /// Whether the delays between an asynchronous call's attempts are
    /// jittered (default true).
    #[arg(long = "async-backoff-jitter", value_name = "BOOL")]
    async_backoff_jitter: Option<bool>,
    /// Fission's per-function pod resources and autoscaling (newdeploy) and its
    /// specialization timeout: Kubernetes-only, accepted with a warning and not
    /// applied; an instance takes its environment's limits (`fusion env update
    /// ENV --maxcpu/--maxmemory`).
    #[command(flatten)]
    kube_only: FnKubeOnly,
    /// How long an asynchronous call may keep being tried, e.g. `1h` (default 6h).
    #[arg(long = "async-max-age", value_name = "DURATION")]
    async_max_age: Option<String>,
    /// A function of the namespace called with the result envelope once an
    /// asynchronous call succeeded (Fission's destination); "" removes it.
    #[arg(long = "async-on-success", value_name = "FUNCTION")]
    async_on_success: Option<String>,
    /// A function of the namespace called with the result envelope once an
    /// asynchronous call failed for good; "" removes it.
    #[arg(long = "async-on-failure", value_name = "FUNCTION")]
    async_on_failure: Option<String>,
}

/// Fission's `fn create/update` flags for its Kubernetes pods, which Fusion's
/// instances do not have.
#[derive(Args)]
pub(super) struct FnKubeOnly {
    /// Fission's CPU request of a newdeploy pod, in millicores (Kubernetes-only).
    #[arg(long = "mincpu", value_name = "MILLICORES")]
    mincpu: Option<u64>,
    /// Fission's CPU limit of a newdeploy pod, in millicores (Kubernetes-only;
    /// the environment's --maxcpu limits an instance here).
    #[arg(long = "maxcpu", value_name = "MILLICORES")]
    maxcpu: Option<u64>,
    /// Fission's memory request of a newdeploy pod, in MiB (Kubernetes-only).
    #[arg(long = "minmemory", value_name = "MIB")]
    minmemory: Option<u64>,
    /// Fission's memory limit of a newdeploy pod, in MiB (Kubernetes-only; the
    /// environment's --maxmemory limits an instance here).
    #[arg(long = "maxmemory", value_name = "MIB")]
    maxmemory: Option<u64>,
    /// Fission's target CPU percentage for a newdeploy autoscaler (Kubernetes-only).
    #[arg(long = "targetcpu", value_name = "PERCENT")]
    targetcpu: Option<u64>,
    /// Fission's specialization timeout of a newdeploy pod, in seconds
    /// (Kubernetes-only; Fusion gives an instance 30 s to specialize).
    #[arg(
        long = "specializationtimeout",
        visible_alias = "st",
        value_name = "SECONDS"
    )]
    specializationtimeout: Option<u64>,
    /// Fission's Kubernetes labels of the function, as `a=b,c=d` (not applied).
    #[arg(long, value_name = "LABELS")]
    labels: Option<String>,
    /// Fission's Kubernetes annotation of the function, as `key=value`
    /// (repeatable; not applied).
    #[arg(long, value_name = "KEY=VALUE")]
    annotation: Vec<String>,
    /// Fission's number of pods kept after specialization (not applied).
    #[arg(long, value_name = "N")]
    retainpods: Option<u64>,
}

impl FnKubeOnly {
    /// Says which were given, what each was in Fission, and that it changes
    /// nothing here.
    fn warn(&self) {
        let resources: Vec<&str> = [
            ("--mincpu", self.mincpu.is_some()),
            ("--maxcpu", self.maxcpu.is_some()),
            ("--minmemory", self.minmemory.is_some()),
            ("--maxmemory", self.maxmemory.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if !resources.is_empty() {
            eprintln!(
                "warning: {} set the resources of Fission's Kubernetes pods: not applied here; an instance takes its environment's limits (fusion env update ENV --maxcpu/--maxmemory)",
                resources.join(", ")
            );
        }
        if self.targetcpu.is_some() {
            eprintln!("warning: --targetcpu was the CPU use Fission's autoscaler keeps a newdeploy function's pods at: not applied here; instances are added as requests need them, up to --maxscale");
        }
        if self.specializationtimeout.is_some() {
            eprintln!("warning: --specializationtimeout was how long Fission waits for a newdeploy function's pod to be ready: not applied here; an instance has 30 s to load its code");
        }
        if self.labels.is_some() || !self.annotation.is_empty() {
            eprintln!("warning: --labels and --annotation were Kubernetes metadata of Fission's function: not applied here");
        }
        if self.retainpods.is_some() {
            eprintln!("warning: --retainpods was how many pods Fission keeps after specializing: not applied here; idle instances go after --idletimeout");
        }
    }
}

#[derive(Subcommand)]
pub(super) enum FnVerb {
    /// Create a function from code in an environment.
    Create {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: FnFields,
        #[command(flatten)]
        route: FnRoute,
        #[command(flatten)]
        spec: SpecOpt,
    },
    /// Show a function.
    #[command(alias = "getmeta")]
    Get {
        #[command(flatten)]
        name: Name,
        /// Print the code it runs instead (as Fission's `fn get`): a file as it
        /// is; a directory as a zip archive, or a tar with `--dest NAME.tar`
        /// (with --dest, or piped: never to a terminal).
        #[arg(long)]
        code: bool,
        /// With --code: write it to this file.
        #[arg(long, requires = "code", value_name = "FILE")]
        dest: Option<PathBuf>,
    },
    /// List the functions.
    List {
        #[command(flatten)]
        scope: super::AllNamespaces,
    },
    /// Change a function: new requests go to the new version, requests in
    /// flight finish on the old one. New code (--code, --src, --deploy,
    /// --buildcmd) updates the package it runs, as Fission's CLI does.
    Update {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: FnFields,
        /// Update the function's package even when other functions run it too.
        #[arg(long)]
        force: bool,
    },
    /// Delete a function (refused while routes target it).
    Delete {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
    },
    /// Call the function and print its answer.
    Test {
        #[command(flatten)]
        name: Name,
        /// The HTTP method.
        #[arg(long, short = 'X', short_alias = 'm', default_value = "GET")]
        method: String,
        /// A header, as `Key: Value` (repeatable).
        #[arg(short = 'H', long = "header", value_name = "KEY: VALUE")]
        headers: Vec<String>,
        /// A query parameter, as `key=value` (repeatable).
        #[arg(short = 'q', long = "query", value_name = "KEY=VALUE")]
        query: Vec<String>,
        /// The request body.
        #[arg(short = 'b', long = "body")]
        body: Option<String>,
        /// A sub-path below the function, e.g. `/users/7`; what follows a `?`
        /// is the query (`/users/7?full=1`, as `-q full=1`).
        #[arg(long, default_value = "/")]
        subpath: String,
        /// Call it asynchronously: print the invocation's id at once (see
        /// `fusion fn invocation get ID`; for a workflow, its run's id: `fusion
        /// run get ID`).
        #[arg(long = "async")]
        asynchronous: bool,
        /// How long to wait for the answer (as "30s", "2m"; 0 or less: no
        /// limit, the default).
        #[arg(
            short = 't',
            long = "timeout",
            value_name = "DURATION",
            allow_hyphen_values = true
        )]
        timeout: Option<String>,
    },
    /// List the function's asynchronous invocations, newest first.
    Invocations {
        #[command(flatten)]
        name: Name,
        /// Only those in this status: queued, running, succeeded, failed or dead.
        #[arg(long)]
        status: Option<String>,
        /// The most to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Where to go on from: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One asynchronous invocation: show it, or redrive it.
    Invocation {
        #[command(subcommand)]
        verb: super::invocation::InvocationVerb,
    },
    /// The dead-letter list: asynchronous invocations whose every attempt failed.
    Dlq {
        #[command(subcommand)]
        verb: super::invocation::DlqVerb,
    },
    /// Print the function's logs (the output of its instances).
    #[command(alias = "log")]
    Logs {
        #[command(flatten)]
        name: Name,
        /// Keep printing new lines as they come.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines (then, with --follow, what comes).
        #[arg(long, value_name = "N", alias = "recordcount")]
        tail: Option<usize>,
        /// Only the lines written at or after this time: RFC 3339, epoch
        /// milliseconds, or a time back from now (90s, 30m, 2h), as `run
        /// list --since` takes it (a run's or an attempt's start).
        #[arg(long, value_name = "TIME", value_parser = super::run::time_arg)]
        since: Option<u64>,
        /// Fission's `--detail`: each line's time and instance, which Fusion
        /// always shows.
        #[arg(short = 'd', long)]
        detail: bool,
        /// The newest lines first (Fission's flag; not with --follow).
        #[arg(short = 'r', long, conflicts_with = "follow")]
        reverse: bool,
        /// Fission's pod to read; here every instance's lines are shown, each
        /// naming its instance (said on stderr).
        #[arg(long, value_name = "POD")]
        pod: Option<String>,
        /// Fission's: every pod's lines, which Fusion always shows.
        #[arg(long = "all-pods")]
        all_pods: bool,
    },
    /// List the function's running instances (Fission's `fn pods`).
    #[command(alias = "pods")]
    Instances {
        #[command(flatten)]
        name: Name,
    },
}

pub(super) const FUNCTIONS: Collection = Collection {
    path: "/v1/functions",
    noun: "function",
    columns: FN_COLUMNS,
};

pub(super) const FN_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("ENV", "/env"),
    ("ENTRYPOINT", "/entrypoint"),
    ("TIMEOUT", "/timeout_secs"),
    ("IDLE", "/idle_timeout_secs"),
    ("EXECUTOR", "/executor_type"),
    ("MINSCALE", "/min_scale"),
    ("MAXSCALE", "/max_scale"),
    ("RPP", "/requests_per_instance"),
    ("GENERATION", "/generation"),
];

/// An asynchronous destination that names no function (yet) is said when it
/// is set, not found only when the first asynchronous call has settled.
async fn warn_of_missing_destinations(c: &Client, opts: &ClientOpts, body: &Value) -> Result<()> {
    for key in ["onSuccess", "onFailure"] {
        let Some(name) = body
            .pointer(&format!("/invocation/{key}/function/name"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        if c.get_opt::<Value>(&FUNCTIONS.item(opts, name))
            .await?
            .is_none()
        {
            eprintln!(
                "warning: the {key} destination {name:?} is not a function in namespace {}: asynchronous calls record a destination_error until it exists",
                opts.ns()
            );
        }
    }
    Ok(())
}

pub(super) async fn merge_fn(
    c: &Client,
    opts: &ClientOpts,
    body: &mut Value,
    f: FnFields,
) -> Result<()> {
    let namespace = opts.namespace.clone().unwrap_or_else(|| "default".into());
    f.kube_only.warn();
    if let Some(e) = f.env {
        body["env"] = json!(e);
    }
    if let Some(code) = f.code {
        // A directory goes as a zip of what it holds.
        let (bytes, name) = super::pkg::archive_of(&[code])?;
        body["package"] = c.upload_bytes(&name, bytes).await?;
    }
    if let Some(pkg) = f.pkg {
        body["package"] = json!({"packageref": {"name": pkg, "namespace": namespace}});
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
    if let Some(t) = f.executor_type {
        body["executor_type"] = json!(t);
    }
    if let Some(n) = f.min_scale {
        body["min_scale"] = json!(n);
    }
    // The type given now, or else the stored one's.
    let max_scale = match body["executor_type"] == "newdeploy" {
        true => f.max_scale.or(f.concurrency),
        false => f.concurrency.or(f.max_scale),
    };
    if let Some(n) = max_scale {
        // One field under its current name, whichever name the stored one has.
        if let Some(o) = body.as_object_mut() {
            o.remove("concurrency");
        }
        body["max_scale"] = json!(n);
    }
    if let Some(n) = f.requests_per_instance {
        body["requests_per_instance"] = json!(n);
    }
    for (flag, field, given) in [
        ("--secret", "secrets", &f.secrets),
        ("--configmap", "configmaps", &f.configmaps),
    ] {
        if !given.is_empty() {
            // `--secret ''` alone: none any more.
            let refs = given
                .iter()
                .filter(|t| !(given.len() == 1 && t.is_empty()))
                .map(|t| super::secret::object_ref(flag, t, &namespace))
                .collect::<Result<Vec<_>>>()?;
            body[field] = json!(refs);
        }
    }
    for (field, value) in [
        ("/retry/maxAttempts", f.async_max_attempts.map(|n| json!(n))),
        ("/retry/backoffBase", f.async_backoff_base.map(|d| json!(d))),
        ("/retry/backoffCap", f.async_backoff_cap.map(|d| json!(d))),
        ("/retry/jitter", f.async_backoff_jitter.map(|j| json!(j))),
        ("/maxAge", f.async_max_age.map(|d| json!(d))),
    ] {
        let Some(value) = value else { continue };
        if !body["invocation"].is_object() {
            body["invocation"] = json!({});
        }
        let invocation = &mut body["invocation"];
        match field.strip_prefix("/retry/") {
            Some(key) => {
                if !invocation["retry"].is_object() {
                    invocation["retry"] = json!({});
                }
                invocation["retry"][key] = value;
            }
            None => invocation["maxAge"] = value,
        }
    }
    for (key, target) in [
        ("onSuccess", f.async_on_success),
        ("onFailure", f.async_on_failure),
    ] {
        let Some(target) = target else { continue };
        if target.is_empty() {
            // `--async-on-success ""`: no destination any more.
            if let Some(inv) = body["invocation"].as_object_mut() {
                inv.remove(key);
            }
            continue;
        }
        if !body["invocation"].is_object() {
            body["invocation"] = json!({});
        }
        body["invocation"][key] = json!({"function": {"type": "name", "name": target}});
    }
    for text in &f.env_vars {
        // `KEY-`: no such variable any more (a name holds no `-` or `=`).
        if let Some(k) = text.strip_suffix('-').filter(|k| !k.contains(['=', '-'])) {
            if let Some(vars) = body["env_vars"].as_object_mut() {
                vars.remove(k);
            }
            continue;
        }
        let (k, v) = super::secret::env_var(text)?;
        if !body["env_vars"].is_object() {
            body["env_vars"] = json!({});
        }
        body["env_vars"][k] = json!(v);
    }
    Ok(())
}

/// `fn update` with new code, as Fission's CLI: the package the function runs
/// is updated in place (refused without `force` when other functions run it
/// too); a function whose code was uploaded with it gets the new code
/// (`--code`, left in `fields`) or a package made for it (`--src`, `--deploy`).
async fn new_code(
    c: &Client,
    opts: &ClientOpts,
    name: &str,
    current: &Value,
    fields: &mut FnFields,
    force: bool,
) -> Result<()> {
    let given = fields.code.is_some()
        || !fields.src.is_empty()
        || !fields.deploy.is_empty()
        || fields.buildcmd.is_some();
    if fields.pkg.is_some() && fields.buildcmd.is_some() {
        bail!("--buildcmd changes the function's own package; with --pkg, change that package with `fusion pkg update --buildcmd`");
    }
    if !given || fields.pkg.is_some() {
        return Ok(());
    }
    let ns = opts.ns().to_string();
    let Some(pkg) = current["package"]["packageref"]["name"].as_str() else {
        if !fields.src.is_empty() || !fields.deploy.is_empty() {
            let env = match &fields.env {
                Some(e) => e.clone(),
                None => current["env"].as_str().unwrap_or_default().to_string(),
            };
            let made = super::pkg::create_for_function(
                c,
                &ns,
                name,
                &env,
                std::mem::take(&mut fields.src),
                std::mem::take(&mut fields.deploy),
                fields.buildcmd.take(),
            )
            .await?;
            fields.pkg = Some(made);
        } else if fields.buildcmd.is_some() {
            bail!("--buildcmd: function {name:?} has no package to build (its code was uploaded with it); give its source with --src");
        }
        return Ok(());
    };
    let all: Vec<Value> = c.get(&format!("/v1/functions{}", opts.ns_query())).await?;
    let others: Vec<&str> = all
        .iter()
        .filter(|f| f["name"] != name && f["package"]["packageref"]["name"] == pkg)
        .filter_map(|f| f["name"].as_str())
        .collect();
    if !others.is_empty() && !force {
        bail!(
            "package {pkg:?} is also run by {}: --force updates it for all of them (or give {name:?} a package of its own with --pkg)",
            others.join(", ")
        );
    }
    let mut deploy = std::mem::take(&mut fields.deploy);
    deploy.extend(fields.code.take());
    // A function moved to another environment takes its package along (and
    // with --force, the others that run it).
    let moving = fields.env.clone();
    let update = super::pkg::PkgFields {
        env: moving.clone(),
        src: std::mem::take(&mut fields.src),
        deploy,
        code: None,
        buildcmd: fields.buildcmd.take(),
        checksums: Default::default(),
    };
    super::pkg::update(c, &ns, pkg, update, moving.is_some()).await?;
    eprintln!("package {pkg} updated");
    Ok(())
}

/// A function's timeout when it names none, here as in Fission.
const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// `fn create --spec`: the function's documents, with an ArchiveUploadSpec
/// and a Package made for its code (as Fission's CLI writes them), into
/// `function-<name>.yaml`.
async fn save_fn(
    c: &Client,
    opts: &ClientOpts,
    target: &save::Target,
    name: &str,
    mut fields: FnFields,
) -> Result<()> {
    let ns = opts.ns().to_string();
    if let Some(pkg) = &fields.pkg {
        // As Fission's CLI: the package must be declared first, and the
        // function runs in its environment.
        let Some(declared) = save::declared(&target.dir, Kind::Package, &ns, pkg) else {
            bail!(
                "package {pkg:?} is not declared in {}: write its spec first (fusion pkg create {pkg} --spec ...)",
                target.dir.display()
            );
        };
        let built_for = declared["environment"].as_str().unwrap_or_default();
        match &fields.env {
            Some(env) if env != built_for => bail!(
                "function {name:?} runs in environment {env:?}, but package {pkg:?} is built for environment {built_for:?}"
            ),
            _ => fields.env = Some(built_for.to_string()),
        }
    }
    let Some(env) = fields.env.clone() else {
        bail!("--env ENV is required: the environment to run in");
    };
    let mut docs = Vec::new();
    let code: Vec<PathBuf> = fields.code.take().into_iter().collect();
    let (src, deploy) = if code.is_empty() {
        (
            std::mem::take(&mut fields.src),
            std::mem::take(&mut fields.deploy),
        )
    } else {
        (Vec::new(), code)
    };
    if !src.is_empty() || !deploy.is_empty() {
        let pkg = super::pkg::generated_name(std::path::Path::new(name));
        docs.extend(super::pkg::package_docs(
            target,
            &ns,
            &pkg,
            &env,
            &src,
            &deploy,
            fields.buildcmd.take().as_deref(),
        )?);
        fields.pkg = Some(pkg);
    }
    if fields.pkg.is_none() {
        bail!("--code FILE|DIR, --pkg PACKAGE or --src/--deploy is required");
    }
    let mut body = json!({"name": name});
    merge_fn(c, opts, &mut body, fields).await?;
    // Written out, as Fission's CLI writes it (the server's default too).
    if body.get("timeout_secs").is_none() {
        body["timeout_secs"] = json!(DEFAULT_TIMEOUT_SECS);
    }
    docs.push(save::resource(Kind::Function, &ns, &body)?);
    save::save(target, &format!("function-{name}.yaml"), &docs)
}

/// A function command's answer; a function not found whose name is a
/// workflow's (they share one name space) is said to be a workflow, with
/// the command (`see`, followed by the name) that shows it.
async fn workflow_said<T>(c: &Client, name: &str, answer: Result<T>, see: &str) -> Result<T> {
    match answer {
        Err(e)
            if e.downcast_ref::<crate::client::NotFound>().is_some()
                && c.get_opt::<Value>(&format!("/v1/workflows/{name}"))
                    .await?
                    .is_some() =>
        {
            bail!("{name:?} is a workflow, not a function: {see} {name}")
        }
        other => other,
    }
}

/// The route `fn create --url|--prefix` makes to the function just created
/// (a workflow, for Fission Workflows' `workflow` environment: the server
/// takes a route's function of a workflow's name as the workflow).
async fn create_route(
    c: &crate::client::Client,
    opts: &ClientOpts,
    name: &str,
    at: &str,
    route: &FnRoute,
) -> Result<()> {
    let methods: Vec<String> = if route.methods.is_empty() {
        vec!["GET".into()]
    } else {
        super::route::methods(&route.methods)
    };
    let route_name = super::route::free_name(
        c,
        opts,
        &super::route::ROUTES,
        super::route::route_name(at),
        None,
    )
    .await
    .map_err(|e| anyhow!("function {name:?} was created, its route was not: {e}"))?;
    let mut r = json!({
        "name": route_name,
        "function": name,
        "methods": methods,
    });
    let key = if route.prefix.is_some() {
        "prefix"
    } else {
        "url"
    };
    r[key] = json!(at);
    super::route::ROUTES
        .create(c, opts, &r)
        .await
        .map_err(|e| anyhow!("function {name:?} was created, its route was not: {e}"))?;
    Ok(())
}

impl FnFields {
    /// Every code path given: --code, --src and --deploy.
    fn code_files(&self) -> Vec<&PathBuf> {
        self.code
            .iter()
            .chain(&self.src)
            .chain(&self.deploy)
            .collect()
    }
}

pub(super) async fn fn_cmd(verb: FnVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        FnVerb::Create {
            name,
            mut fields,
            route,
            spec,
        } => {
            let name = name.get();
            if fields.buildcmd.is_some() && fields.src.is_empty() {
                bail!("--buildcmd builds the package's source: give the source with --src");
            }
            let at = route
                .url
                .clone()
                .or(route.prefix.clone())
                .map(super::route::rooted);
            if let Some(target) = spec.target() {
                if at.is_some() {
                    bail!("--url and --prefix make a route: with --spec, write it with `fusion route create --spec`");
                }
                return save_fn(&c, opts, &target, &name, fields).await;
            }
            // A URL the route could not take is said before anything is made.
            if let Some(at) = &at {
                let flag = if route.prefix.is_some() {
                    "--prefix"
                } else {
                    "--url"
                };
                triggers::table::Template::parse(at).map_err(|e| anyhow!("{flag} {at:?}: {e}"))?;
                if route.prefix.is_some() && at.contains('{') {
                    bail!("--prefix {at:?}: a prefix cannot hold {{params}}");
                }
            }
            // As Fission: a function of a package runs in the package's environment.
            if let (None, Some(pkg)) = (&fields.env, &fields.pkg) {
                let namespace = opts.namespace.clone().unwrap_or_else(|| "default".into());
                let p: Value = c
                    .get(&format!("/v1/packages/{pkg}?namespace={namespace}"))
                    .await?;
                fields.env = p["environment"].as_str().map(str::to_string);
            }
            let Some(env) = fields.env.clone() else {
                bail!("--env ENV is required: the environment to run in (see fusion env list)");
            };
            if super::workflow::is_fission_workflows_env(&c, opts, &env).await? {
                if fields.pkg.is_some() {
                    bail!("--pkg: a function of Fission Workflows' `workflow` environment is its workflow file (--src FILE.wf.yaml)");
                }
                let files = fields.code_files();
                super::workflow::store_as_function(&c, opts, &name, &files, false).await?;
                if let Some(at) = at {
                    create_route(&c, opts, &name, &at, &route).await?;
                }
                return Ok(());
            }
            if !fields.src.is_empty() || !fields.deploy.is_empty() {
                let namespace = opts.namespace.clone().unwrap_or_else(|| "default".into());
                let pkg = super::pkg::create_for_function(
                    &c,
                    &namespace,
                    &name,
                    &env,
                    std::mem::take(&mut fields.src),
                    std::mem::take(&mut fields.deploy),
                    fields.buildcmd.take(),
                )
                .await?;
                fields.pkg = Some(pkg);
            }
            if fields.code.is_none() && fields.pkg.is_none() {
                bail!("--code FILE|DIR (a source file, a zip archive or a directory), --pkg PACKAGE (a named package), or --src/--deploy (a package made for it) is required");
            }
            let mut body = json!({"name": name});
            merge_fn(&c, opts, &mut body, fields).await?;
            FUNCTIONS.create(&c, opts, &body).await?;
            warn_of_missing_destinations(&c, opts, &body).await?;
            // As Fission's CLI: a route to it in the same command.
            if let Some(at) = at {
                create_route(&c, opts, &name, &at, &route).await?;
            }
        }
        FnVerb::Get {
            name,
            code: true,
            dest,
        } => {
            let path = format!("/v1/functions/{}/code{}", name.get(), opts.ns_query());
            super::pkg::download(&c, &path, dest.as_deref()).await?
        }
        FnVerb::Get { name, .. } => {
            let name = name.get();
            let shown = FUNCTIONS.show(&c, opts, &name).await;
            workflow_said(&c, &name, shown, "fusion wf get").await?
        }
        FnVerb::List { scope } => FUNCTIONS.list(&c, opts, &scope).await?,
        FnVerb::Update {
            name,
            mut fields,
            force,
        } => {
            let name = name.get();
            // A workflow deployed as a function of Fission Workflows'
            // `workflow` environment is updated as such.
            let function = c.get_opt::<Value>(&FUNCTIONS.item(opts, &name)).await?;
            let workflow = function.is_none()
                && opts.namespace.as_deref().is_none_or(|ns| ns == "default")
                && c.get_opt::<Value>(&format!("/v1/workflows/{name}"))
                    .await?
                    .is_some();
            if workflow {
                if let Some(env) = fields
                    .env
                    .as_deref()
                    .filter(|e| *e != super::workflow::WORKFLOW_ENV)
                {
                    bail!("{name:?} is a workflow, not a function: it cannot move to environment {env:?} (delete it first: fusion wf delete {name})");
                }
                let files = fields.code_files();
                if files.is_empty() {
                    bail!("{name:?} is a workflow: give its new file with --src FILE.wf.yaml (or `fusion wf update {name} --file FILE`)");
                }
                return super::workflow::store_as_function(&c, opts, &name, &files, true).await;
            }
            let mut body = FUNCTIONS.current(&c, opts, &name).await?;
            new_code(&c, opts, &name, &body, &mut fields, force).await?;
            merge_fn(&c, opts, &mut body, fields).await?;
            FUNCTIONS.replace(&c, opts, &name, &body).await?;
            warn_of_missing_destinations(&c, opts, &body).await?;
        }
        FnVerb::Delete { name, missing } => {
            let name = name.get();
            // Workflows have no namespace: one is deleted this way only in
            // the default one, where Fission Workflows deployed them.
            let default_ns = opts.namespace.as_deref().is_none_or(|ns| ns == "default");
            match FUNCTIONS.delete(&c, opts, &name).await {
                // A workflow deployed as a function (Fission Workflows) goes as one.
                Err(e)
                    if default_ns
                        && e.downcast_ref::<crate::client::NotFound>().is_some()
                        && c.get_opt::<Value>(&format!("/v1/workflows/{name}"))
                            .await?
                            .is_some() =>
                {
                    c.delete(&format!("/v1/workflows/{name}")).await?;
                    super::output::deleted(opts, "workflow", None, &name);
                }
                other => missing.apply(opts, other)?,
            }
        }
        FnVerb::Test {
            name,
            method,
            headers,
            query,
            body,
            subpath,
            asynchronous,
            timeout,
        } => {
            let name = name.get();
            if opts.json() && !asynchronous {
                bail!("fn test prints the function's answer as it gave it, not JSON (with --async, the invocation is JSON)");
            }
            // Go's notation, as Fission's flag: "0" or a negative one is no limit.
            let timeout = match timeout.as_deref().map(str::trim) {
                None | Some("0") => None,
                Some(t) if t.starts_with('-') => None,
                Some(t) => Some(
                    engine::sfn::spec::parse_go_duration(t)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| anyhow!("--timeout {t:?} is not a duration (e.g. 30s)"))?,
                ),
            };
            // The invoke endpoint passes the function's own 404s through: ask first,
            // so a misspelt name is said as such. (Workflows are invoked there too.)
            let function = c
                .get_opt::<Value>(&format!("/v1/functions/{name}{}", opts.ns_query()))
                .await?
                .is_some();
            let workflow = !function
                && c.get_opt::<Value>(&format!("/v1/workflows/{name}"))
                    .await?
                    .is_some();
            if !function && !workflow {
                bail!("function {name:?} does not exist (fusion fn list shows the functions)");
            }
            // A workflow made as a function of another namespace (Fission
            // Workflows' `-n`): workflows have none, so it is called as it is.
            let namespace = opts.namespace.as_deref().filter(|ns| *ns != "default");
            if let (true, Some(ns)) = (workflow, namespace) {
                eprintln!("note: {name} is a workflow, and workflows have no namespace (-n {ns} left out)");
            }
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
                .map_err(|_| anyhow!("bad method {method:?}"))?;
            // As typed: characters a path cannot hold (a space, `#`) are
            // escaped; `%XX` escapes already there are kept. A `?` starts
            // the query, as in a URL.
            let (subpath, sub_query) = match subpath.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (subpath, None),
            };
            const PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
                .add(b' ')
                .add(b'"')
                .add(b'#')
                .add(b'<')
                .add(b'>')
                .add(b'?')
                .add(b'`')
                .add(b'{')
                .add(b'}');
            let sub = percent_encoding::utf8_percent_encode(subpath.trim_start_matches('/'), PATH)
                .to_string();
            let path = if sub.is_empty() {
                format!("/v1/functions/{name}/invoke")
            } else {
                format!("/v1/functions/{name}/invoke/{sub}")
            };
            let mut req = c.request(method, &path);
            if let Some(ns) = namespace.filter(|_| function) {
                // Taken off by the API before the function sees the query.
                req = req.query(&[("fusion-namespace", ns)]);
            }
            req = with_headers(req, &headers)?;
            if asynchronous {
                req = req.header("X-Async", "true");
            }
            if let Some(q) = &sub_query {
                for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                    req = req.query(&[(k.as_ref(), v.as_ref())]);
                }
            }
            for q in &query {
                let (k, v) = q
                    .split_once('=')
                    .ok_or_else(|| anyhow!("query {q:?} must be `key=value`"))?;
                req = req.query(&[(k, v)]);
            }
            if let Some(b) = body {
                req = req.body(b);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let late = || {
                anyhow!(
                    "no answer within the --timeout of {:?}",
                    timeout.unwrap_or_default()
                )
            };
            let resp = match req.send().await {
                Err(e) if e.is_timeout() => return Err(late()),
                sent => {
                    sent.with_context(|| format!("cannot reach the Fusion API at {}", opts.api))?
                }
            };
            let status = resp.status();
            let text = match resp.text().await {
                Err(e) if e.is_timeout() => return Err(late()),
                read => read?,
            };
            if !status.is_success() {
                // Fusion's own answer (cannot load the code, a timeout, a failed
                // run): its message, as one line.
                let fusion_error = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
                    let message = v.pointer("/error/message")?.as_str()?.to_string();
                    v.pointer("/error/code")?.as_str()?;
                    Some(message)
                });
                if let Some(message) = fusion_error {
                    bail!("{message} ({})", status.as_u16());
                }
                print!("{text}");
                bail!("the function answered {status}");
            }
            // Asynchronously: the invocation's id, as the help says (the whole
            // answer with -o json).
            let id = asynchronous
                .then(|| serde_json::from_str::<Value>(&text).ok())
                .flatten()
                .and_then(|v| v["id"].as_str().map(str::to_string))
                .filter(|_| !opts.json());
            match id {
                Some(id) => println!("{id}"),
                // The server's JSON, a line as every -o json output is.
                None if asynchronous => println!("{}", text.trim_end()),
                // The function's own answer, byte for byte (as curl prints it).
                None => print!("{text}"),
            }
        }
        FnVerb::Logs {
            name,
            follow,
            tail,
            since,
            detail: _,
            reverse,
            pod,
            all_pods: _,
        } => {
            let name = name.get();
            if let Some(pod) = pod {
                eprintln!("warning: --pod {pod}: Fusion shows every instance's lines, each naming its instance (fusion fn instances {name} lists them)");
            }
            use futures_util::StreamExt;
            use std::io::Write;
            let path = format!("/v1/functions/{name}/logs{}", opts.ns_query());
            let mut req = c.request(Method::GET, &path).query(&[("follow", follow)]);
            if let Some(n) = tail {
                req = req.query(&[("tail", n)]);
            }
            if let Some(t) = since {
                req = req.query(&[("since", t)]);
            }
            let sent = c.send(req).await;
            let mut stream = workflow_said(&c, &name, sent, "fusion run list --workflow")
                .await?
                .bytes_stream();
            let mut out = std::io::stdout();
            // `-o json`: one JSON object per line, cut on whole lines.
            let mut partial: Vec<u8> = Vec::new();
            // Each line as it can go to a terminal (what the function wrote is
            // escaped), or as JSON: cut on whole lines either way.
            let shown = |line: &str| {
                if opts.json() {
                    log_line_json(line).to_string()
                } else {
                    super::output::printable_log_line(line)
                }
            };
            // With --reverse, every line is read before the newest is printed
            // first (no --follow then).
            let mut held: Vec<String> = Vec::new();
            let mut emit = |out: &mut std::io::Stdout, line: String| -> std::io::Result<()> {
                if reverse {
                    held.push(line);
                    Ok(())
                } else {
                    writeln!(out, "{line}")
                }
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    anyhow::anyhow!("the log stream broke off (did the server stop?): {e}")
                })?;
                partial.extend_from_slice(&chunk);
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    emit(&mut out, shown(&String::from_utf8_lossy(&line[..i])))?;
                }
                out.flush()?;
            }
            if !partial.is_empty() {
                emit(&mut out, shown(&String::from_utf8_lossy(&partial)))?;
            }
            for line in held.iter().rev() {
                writeln!(out, "{line}")?;
            }
        }
        FnVerb::Invocations {
            name,
            status,
            limit,
            cursor,
        } => super::invocation::list(opts, &name.get(), status, limit, cursor).await?,
        FnVerb::Invocation { verb } => super::invocation::invocation_cmd(verb, opts).await?,
        FnVerb::Dlq { verb } => super::invocation::dlq_cmd(verb, opts).await?,
        FnVerb::Instances { name } => {
            let name = name.get();
            let listed = c
                .get::<Value>(&format!(
                    "/v1/functions/{name}/instances{}",
                    opts.ns_query()
                ))
                .await;
            let v = workflow_said(&c, &name, listed, "fusion run list --workflow").await?;
            print_instances(opts, v);
        }
    }
    Ok(())
}

/// Instances as a table (usage as a person reads it: MiB and CPU seconds),
/// or as the API gives them with `-o json`.
pub(super) fn print_instances(opts: &ClientOpts, mut v: Value) {
    if !opts.json() {
        for i in v.as_array_mut().into_iter().flatten() {
            i["memory_mib"] = json!(i["memory_bytes"]
                .as_u64()
                .map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64)));
            i["cpu_s"] = json!(i["cpu_seconds"].as_f64().map(|c| format!("{c:.2}")));
        }
    }
    print(
        opts,
        &v,
        &[
            ("ID", "/id"),
            ("PID", "/pid"),
            ("ADDRESS", "/address"),
            ("FUNCTION", "/function"),
            ("STATE", "/state"),
            ("ACTIVE", "/active_requests"),
            ("MEMORY_MIB", "/memory_mib"),
            ("CPU_S", "/cpu_s"),
        ],
    );
}

/// A function's log line (`<time> [<instance> <stream>] <text>`) as JSON:
/// `{"at", "instance", "stream", "message"}`; a line of another shape is all
/// message.
pub(super) fn log_line_json(line: &str) -> Value {
    let parsed = line.split_once(" [").and_then(|(at, rest)| {
        let (tag, message) = rest.split_once("] ")?;
        let (instance, stream) = tag.split_once(' ')?;
        Some(json!({
            "at": at,
            "instance": instance.parse::<u64>().ok()?,
            "stream": stream,
            "message": message,
        }))
    });
    parsed.unwrap_or_else(|| json!({ "message": line }))
}
