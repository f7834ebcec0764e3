//! `fusion spec`: a project's spec folder (Fission's `specs/`, or Fusion's short
//! form) initialised, validated offline, applied, listed and destroyed.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::ClientOpts;
use crate::spec;

#[derive(Subcommand)]
pub(super) enum SpecVerb {
    /// Start a spec folder: a README and the DeploymentConfig with this project's uid.
    Init {
        /// The folder to create.
        #[arg(long, default_value = "specs")]
        specdir: PathBuf,
        /// The project's name (default: the current folder's name).
        #[arg(long)]
        name: Option<String>,
        /// The project's uid (default: a new random one).
        #[arg(long = "deployid")]
        deploy_id: Option<String>,
    },
    /// Check every document offline: errors and warnings with file, line and column.
    Validate {
        #[command(flatten)]
        from: SpecSource,
    },
    /// Create or update every resource the specs declare.
    Apply {
        #[command(flatten)]
        from: SpecSource,
        /// Also delete what this project applied before and no longer declares.
        #[arg(long)]
        delete: bool,
        /// Take over resources that exist but were applied by another project (or none).
        #[arg(long = "allowconflicts")]
        allow_conflicts: bool,
        /// Then wait until the packages it applied are built (exits non-zero
        /// when a build failed), as Fission's --wait.
        #[arg(long)]
        wait: bool,
    },
    /// Delete everything this project applied.
    Destroy {
        #[command(flatten)]
        from: SpecSource,
    },
    /// List what this project applied, and whether each is still there.
    List {
        #[command(flatten)]
        from: SpecSource,
        /// The project uid to list (default: the one in the specs).
        #[arg(long = "deployid")]
        deploy_id: Option<String>,
    },
}

#[derive(Args)]
pub(super) struct SpecSource {
    /// The spec folder (Fission's `specs/`) or a single spec file.
    #[arg(short = 'f', long = "file", alias = "specdir", default_value = "specs")]
    path: PathBuf,
    /// Namespace of resources whose metadata names none.
    #[arg(long, short = 'n', env = "FUSION_NAMESPACE", default_value = "default")]
    namespace: String,
}

impl SpecSource {
    fn source(self) -> spec::Source {
        spec::Source {
            path: self.path,
            namespace: self.namespace,
        }
    }
}

pub(super) async fn spec_cmd(verb: SpecVerb, opts: &ClientOpts) -> Result<()> {
    // What they print is a report for people, not data: said, not ignored.
    let text_only = match &verb {
        SpecVerb::Init { .. } => Some("init"),
        SpecVerb::Validate { .. } => Some("validate"),
        SpecVerb::Apply { .. } => Some("apply"),
        SpecVerb::Destroy { .. } => Some("destroy"),
        SpecVerb::List { .. } => None,
    };
    if let (true, Some(verb)) = (opts.json(), text_only) {
        anyhow::bail!(
            "spec {verb} prints a report, not JSON (spec list -o json lists what a project applied)"
        );
    }
    match verb {
        SpecVerb::Init {
            specdir,
            name,
            deploy_id,
        } => spec::init(&specdir, name, deploy_id),
        SpecVerb::Validate { from } => spec::validate(&from.source()),
        SpecVerb::Apply {
            from,
            delete,
            allow_conflicts,
            wait,
        } => {
            let o = spec::ApplyOpts {
                delete,
                allow_conflicts,
                wait,
            };
            spec::apply(&opts.client()?, &from.source(), o).await
        }
        SpecVerb::Destroy { from } => spec::destroy(&opts.client()?, &from.source()).await,
        SpecVerb::List { from, deploy_id } => {
            spec::list(&opts.client()?, &from.source(), deploy_id, opts.json()).await
        }
    }
}
