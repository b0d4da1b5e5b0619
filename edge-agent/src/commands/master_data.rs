//! `edge-agent import-master-data FILE`: master data for a standalone edge (a connected edge
//! gets it from the hub).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use edge_agent::master;

use super::{DataDir, open_db};

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// A JSON file, or TOML with a .toml extension.
    file: PathBuf,
    #[command(flatten)]
    data: DataDir,
}

pub(crate) fn import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let records = master::read_file(&args.file)?;
    let mut conn = open_db(&args.data.data_dir)?;
    let counts = master::import(&mut conn, &records).context("storing master data")?;
    for (kind, n) in counts {
        println!("{:>16}: {n}", kind.as_str());
    }
    Ok(ExitCode::SUCCESS)
}
