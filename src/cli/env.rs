//! `fusion env`: environments, the language runtimes with a pool of instances.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::Collection;
use super::{ClientOpts, Name};

#[derive(Args)]
pub(super) struct EnvFields {
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
}

#[derive(Subcommand)]
pub(super) enum EnvVerb {
    /// Create an environment: a runtime, a command or an image, with its pool.
    Create {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: EnvFields,
    },
    /// Show an environment and the isolation its instances get.
    Get {
        #[command(flatten)]
        name: Name,
    },
    /// List the environments.
    List,
    /// Change an environment; the flags given replace those fields only.
    Update {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: EnvFields,
    },
    /// Delete an environment (refused while functions use it).
    Delete {
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
    ("MEMORY_MB", "/memory_mb"),
    ("NETWORK", "/network"),
    ("ISOLATION", "/status/isolation/backend"),
];

pub(super) async fn env_cmd(verb: EnvVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    let envs = &ENVIRONMENTS;
    match verb {
        EnvVerb::Create { name, fields } => {
            let mut body = json!({"name": name.get()});
            merge_env(&mut body, fields)?;
            envs.create(&c, opts, &body).await
        }
        EnvVerb::Get { name } => envs.show(&c, opts, &name.get()).await,
        EnvVerb::List => envs.list(&c, opts).await,
        EnvVerb::Update { name, fields } => {
            let name = name.get();
            let mut body = envs.current(&c, &name).await?;
            merge_env(&mut body, fields)?;
            envs.replace(&c, opts, &name, &body).await
        }
        EnvVerb::Delete { name } => envs.delete(&c, &name.get()).await,
    }
}

pub(super) fn merge_env(body: &mut Value, f: EnvFields) -> Result<()> {
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
