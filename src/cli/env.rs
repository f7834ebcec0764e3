//! `fusion env`: environments, the language runtimes with a pool of instances.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::Collection;
use super::{ClientOpts, Name, SpecOpt};
use crate::spec::{model::Kind, save};

#[derive(Args)]
pub(super) struct EnvFields {
    /// A bundled runtime: python, nodejs or binary.
    #[arg(long)]
    runtime: Option<String>,
    /// Or any command that speaks the runtime protocol (split as a shell would:
    /// `--command "sh -c 'exec my-runtime'"`).
    #[arg(long, conflicts_with = "runtime")]
    command: Option<String>,
    /// Or an image: an OCI layout directory or oci-archive tar on this machine
    /// (container backend; its runtime listens on port 8888), or a reference such
    /// as `fission/python-env` or `ghcr.io/fission/node-env:1.34`: the image when
    /// the server has it under `<data>/images/refs/`, else, for Fission's own
    /// environment images, the bundled runtime of that language.
    #[arg(long, conflicts_with_all = ["runtime", "command"])]
    image: Option<String>,
    /// Generic instances kept warm, ready to be specialized (default 3, at most 64).
    #[arg(long, value_name = "INSTANCES")]
    poolsize: Option<usize>,
    /// Fission's CPU request, in millicores: accepted and ignored (Fusion sets
    /// only a limit, --maxcpu).
    #[arg(long = "mincpu", value_name = "MILLICORES")]
    _mincpu: Option<u64>,
    /// Fission's memory request, in MiB: accepted and ignored (Fusion sets only
    /// a limit, --maxmemory).
    #[arg(long = "minmemory", value_name = "MIB")]
    _minmemory: Option<u64>,
    /// Memory limit per instance (all its processes), in MiB (at least 32).
    #[arg(long = "maxmemory", alias = "memory", value_name = "MIB")]
    memory: Option<u64>,
    /// CPU limit per instance, in millicores (1000 = one core).
    #[arg(long = "maxcpu", value_name = "MILLICORES")]
    cpu: Option<u64>,
    /// The network instances get on the container backend: host (default) or none.
    #[arg(long, value_parser = ["host", "none"])]
    network: Option<String>,
    /// Fission's builder image: packages are built by the bundled builder of
    /// the environment's language (pip, npm, build.sh), which does what
    /// Fission's builders do; another builder is not run (said on stderr).
    #[arg(long, value_name = "IMAGE")]
    builder: Option<String>,
    /// The build command of its packages that give none (Fission's builder
    /// command); `""` removes it.
    #[arg(long, value_name = "COMMAND")]
    buildcmd: Option<String>,
    /// Fission's environment version (1, 2 or 3); as in Fission, --poolsize
    /// is honoured with version 3 only (1 and 2 keep 3).
    #[arg(long = "version", value_name = "N", value_parser = clap::value_parser!(u8).range(1..=3))]
    env_version: Option<u8>,
    #[command(flatten)]
    kube_only: EnvKubeOnly,
}

/// Fission's `env create/update` flags for its Kubernetes pods, which
/// Fusion's instances do not have: accepted, and said not to be applied.
#[derive(Args)]
pub(super) struct EnvKubeOnly {
    /// Fission's grace period of a pod being stopped, in seconds; not applied
    /// here (said on stderr).
    #[arg(long = "graceperiod", alias = "period", value_name = "SECONDS")]
    graceperiod: Option<i64>,
    /// Fission's: keep a deployment archive unextracted (for .jar); not
    /// applied here (said on stderr).
    #[arg(long)]
    keeparchive: bool,
    /// Fission's Kubernetes secret to pull the image with; not applied here
    /// (said on stderr).
    #[arg(long, value_name = "SECRET")]
    imagepullsecret: Option<String>,
    /// Fission's external network of a pod under Istio; not applied here
    /// (said on stderr; see --network).
    #[arg(long)]
    externalnetwork: bool,
    /// Fission's Kubernetes labels, as `a=b,c=d`; not applied here (said on
    /// stderr).
    #[arg(long, value_name = "LABELS")]
    labels: Option<String>,
    /// Fission's Kubernetes annotation, as `key=value` (repeatable); not
    /// applied here (said on stderr).
    #[arg(long, value_name = "KEY=VALUE")]
    annotation: Vec<String>,
}

impl EnvKubeOnly {
    /// Says which were given and what they were in Fission.
    fn warn(&self) {
        let said = [
            (self.graceperiod.is_some(), "--graceperiod (how long Fission gives a pod being stopped to drain its connections)"),
            (self.keeparchive, "--keeparchive (Fission keeps a .jar deployment unextracted)"),
            (self.imagepullsecret.is_some(), "--imagepullsecret (the Kubernetes secret Fission pulls the image with)"),
            (self.externalnetwork, "--externalnetwork (Fission's Istio egress): --network sets what an instance reaches here"),
            (self.labels.is_some() || !self.annotation.is_empty(), "--labels and --annotation (Kubernetes metadata of Fission's objects)"),
        ];
        for (given, what) in said {
            if given {
                eprintln!("warning: {what}: not applied here");
            }
        }
    }
}

#[derive(Subcommand)]
pub(super) enum EnvVerb {
    /// Create an environment: a runtime, a command or an image, with its pool.
    Create {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: EnvFields,
        #[command(flatten)]
        spec: SpecOpt,
    },
    /// Show an environment, the isolation its instances get and how its pool
    /// stands (a warning says why an instance last failed to start).
    Get {
        #[command(flatten)]
        name: Name,
    },
    /// List the environments.
    List {
        #[command(flatten)]
        scope: super::AllNamespaces,
    },
    /// Change an environment; the flags given replace those fields only.
    Update {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: EnvFields,
    },
    /// Delete an environment (refused while functions or packages use it).
    Delete {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
        /// First delete the packages of the environment that no function
        /// uses (those `fn delete` leaves), as Fission's `env delete --force`
        /// goes on past them; still refused while functions use it.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// List the environment's instances, generic and specialized (Fission's
    /// `env pods`).
    #[command(alias = "pods")]
    Instances {
        #[command(flatten)]
        name: Name,
    },
}

pub(super) const ENVIRONMENTS: Collection = Collection {
    path: "/v1/environments",
    noun: "environment",
    columns: ENV_COLUMNS,
};

pub(super) const ENV_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("RUNTIME", "/runtime"),
    ("COMMAND", "/command"),
    ("IMAGE", "/image"),
    ("POOLSIZE", "/poolsize"),
    ("READY", "/status/pool/ready"),
    ("MEMORY_MB", "/memory_mb"),
    ("CPU_MILLIS", "/cpu_millis"),
    ("NETWORK", "/network"),
    ("ISOLATION", "/status/isolation/backend"),
];

pub(super) async fn env_cmd(verb: EnvVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    let envs = &ENVIRONMENTS;
    match verb {
        EnvVerb::Create { name, fields, spec } => {
            let name = name.get();
            let mut body = json!({"name": name});
            let builder = fields.builder.clone();
            merge_env(&mut body, fields)?;
            if let Some(target) = spec.target() {
                let mut doc = save::resource(Kind::Environment, opts.ns(), &body)?;
                // Kept for Fission, which runs it (Fusion builds with the
                // bundled builder of the language); version 2 has builds.
                if let (Some(builder), Some(spec)) = (builder, doc.value.get_mut("spec")) {
                    spec["builder"] = json!({ "image": builder });
                    if spec["version"] == 1 {
                        spec["version"] = json!(2);
                    }
                }
                return save::save(&target, &format!("env-{name}.yaml"), &[doc]);
            }
            // Fission Workflows' own environment (its `workflows-env.yaml`):
            // Fusion runs workflows itself, and a function created with
            // `--env workflow` is stored as a workflow.
            let image = body["image"].as_str().unwrap_or_default();
            if name == super::workflow::WORKFLOW_ENV
                && crate::spec::model::is_fission_workflows_image(image)
            {
                eprintln!(
                    "note: Fusion runs Fission Workflows' workflows itself: no environment is needed; `fusion fn create --env {name} --src W.wf.yaml` stores W as a workflow"
                );
                return Ok(());
            }
            envs.create(&c, opts, &body).await?;
            say_image_use(&c, opts, &name).await
        }
        EnvVerb::Get { name } => {
            let name = name.get();
            let env: Value = c.get(&envs.item(opts, &name)).await?;
            super::output::print(opts, &env, envs.columns);
            // Why its pool may be short, where it cannot be missed.
            if let Some(failure) = env.pointer("/status/pool/last_start_failure") {
                eprintln!(
                    "warning: environment {name}: an instance failed to start at {}: {}",
                    failure["at"].as_str().unwrap_or("?"),
                    failure["message"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        EnvVerb::List { scope } => envs.list(&c, opts, &scope).await,
        EnvVerb::Update { name, fields } => {
            let name = name.get();
            let mut body = envs.current(&c, opts, &name).await?;
            merge_env(&mut body, fields)?;
            envs.replace(&c, opts, &name, &body).await?;
            say_image_use(&c, opts, &name).await
        }
        EnvVerb::Delete {
            name,
            missing,
            force,
        } => {
            let name = name.get();
            if force {
                for pkg in left_packages(&c, opts, &name).await? {
                    let path = format!("/v1/packages/{pkg}{}", opts.ns_query());
                    match c.delete(&path).await {
                        Ok(()) => eprintln!("package {pkg} deleted: no function used it"),
                        // Gone meanwhile: what was asked for is done.
                        Err(e) if e.downcast_ref::<crate::client::NotFound>().is_some() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            match envs.delete(&c, opts, &name).await {
                Err(e)
                    if !force
                        && e.downcast_ref::<crate::client::ApiError>()
                            .is_some_and(|e| e.status == 409) =>
                {
                    let left = left_packages(&c, opts, &name).await?;
                    if left.is_empty() {
                        return Err(e);
                    }
                    Err(anyhow!(
                        "{e}: --force deletes the packages no function uses ({}) first, or `fusion pkg delete --orphan` does",
                        left.join(", ")
                    ))
                }
                other => missing.apply(opts, other),
            }
        }
        EnvVerb::Instances { name } => {
            let name = name.get();
            // Known, or said so (an empty list would hide a typo).
            let _: Value = c.get(&envs.item(opts, &name)).await?;
            let key = match opts.ns() {
                "default" => name,
                ns => format!("{ns}/{name}"),
            };
            let all: Vec<Value> = c.get("/v1/instances").await?;
            let mine = all
                .into_iter()
                .filter(|i| i["environment"].as_str() == Some(key.as_str()))
                .collect();
            super::function::print_instances(opts, Value::Array(mine));
            Ok(())
        }
    }
}

/// The packages of environment `env` that no function uses (what `fn delete`
/// leaves behind, as in Fission).
async fn left_packages(
    c: &crate::client::Client,
    opts: &ClientOpts,
    env: &str,
) -> Result<Vec<String>> {
    Ok(super::pkg::packages(c, Some(opts.ns()), true)
        .await?
        .into_iter()
        .filter(|p| p["environment"] == env)
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect())
}

/// Says on stderr what an environment's image stands for, when it has one,
/// and which of its settings the backend cannot enforce.
async fn say_image_use(c: &crate::client::Client, opts: &ClientOpts, name: &str) -> Result<()> {
    let env: Value = c.get(&ENVIRONMENTS.item(opts, name)).await?;
    if let Some(line) = image_use_line(&env) {
        eprintln!("{line}");
    }
    let backend = env
        .pointer("/status/isolation/backend")
        .and_then(Value::as_str)
        .unwrap_or("this");
    for what in env
        .pointer("/status/not_enforced")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        eprintln!("warning: environment {name}: the {backend} backend does not enforce {what}");
    }
    Ok(())
}

/// `environment py: image fission/python-env ...`, from an environment's status.
pub(crate) fn image_use_line(env: &Value) -> Option<String> {
    let image = env.get("image")?.as_str()?;
    let name = env.get("name").and_then(Value::as_str).unwrap_or("?");
    let used = env.pointer("/status/image")?;
    Some(match used.get("source").and_then(Value::as_str) {
        Some("bundled") => format!(
            "environment {name}: image {image} is not on this machine; the bundled {} runtime runs instead",
            used.get("runtime").and_then(Value::as_str).unwrap_or("?")
        ),
        _ => format!(
            "environment {name}: image {image} runs from {}",
            used.get("path").and_then(Value::as_str).unwrap_or("?")
        ),
    })
}

pub(super) fn merge_env(body: &mut Value, f: EnvFields) -> Result<()> {
    f.kube_only.warn();
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
        // Checked here too, so a typo is one clear line before any request.
        r.parse::<pool_manager::Runtime>()?;
        only("runtime", json!(r));
    }
    if let Some(cmd) = f.command {
        let words = shlex::split(&cmd)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| anyhow!("--command {cmd:?} is not a command (an unclosed quote?)"))?;
        only("command", json!(words));
    }
    if let Some(image) = f.image {
        // A path is read by the server from its own disk: send it absolute. Anything
        // else is a reference the server resolves.
        let local = PathBuf::from(&image);
        let looks_like_path = image.starts_with('.') || image.starts_with('/') || local.exists();
        if looks_like_path {
            let path = local
                .canonicalize()
                .map_err(|_| anyhow!("no image at {image}: the path does not exist"))?;
            only("image", json!(path));
        } else {
            only("image", json!(image));
        }
    }
    if let Some(p) = f.poolsize {
        body["poolsize"] = json!(p);
    }
    if f.env_version.is_some_and(|v| v < 3) && body["poolsize"].as_u64() != Some(3) {
        if f.poolsize.is_some() {
            eprintln!("warning: --poolsize is honoured only with --version 3 (as in Fission): the pool keeps 3");
        }
        body["poolsize"] = json!(3);
    }
    if let Some(builder) = f.builder {
        let own = pool_manager::resources::fission_runtime(&builder);
        let runs = body["image"]
            .as_str()
            .and_then(pool_manager::resources::fission_runtime)
            .or_else(|| body["runtime"].as_str().and_then(|r| r.parse().ok()));
        if own.is_none() || own != runs {
            eprintln!("warning: builder image {builder} is not run: packages are built by the bundled builder of the environment's language");
        }
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
    match f.buildcmd.as_deref() {
        None => {}
        Some("") => {
            if let Some(o) = body.as_object_mut() {
                o.remove("buildcmd");
            }
        }
        Some(cmd) => body["buildcmd"] = json!(cmd),
    }
    Ok(())
}
