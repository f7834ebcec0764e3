//! `fusion spec`: apply a file or folder of resource specs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::ClientOpts;

#[derive(Subcommand)]
pub(super) enum SpecVerb {
    /// Create or update every resource in a file or folder.
    Apply {
        /// A spec file (YAML documents separated by `---`) or a folder of them.
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
    },
}

pub(super) async fn spec_cmd(verb: SpecVerb, opts: &ClientOpts) -> Result<()> {
    match verb {
        SpecVerb::Apply { path } => {
            let summary = crate::spec::apply(&opts.client()?, &path).await?;
            crate::spec::print_summary(&summary);
            Ok(())
        }
    }
}
