//! `edge-agent backup` and `edge-agent restore`: a consistent copy of the store, and putting
//! one back in place.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::InstalledDataDir;

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    data: InstalledDataDir,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    #[arg(long)]
    from: PathBuf,
    #[command(flatten)]
    data: InstalledDataDir,
}

pub(crate) fn backup(args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let data_dir = &args.data.data_dir;
    let c = edge_agent::backup::backup(data_dir, &args.out)
        .with_context(|| format!("backing up {}", data_dir.display()))?;
    println!(
        "backup written to {}: {} events ({} waiting for the hub), {} shared records, {} KB",
        args.out.display(),
        c.events,
        c.pending,
        c.records,
        c.bytes / 1024
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let (c, kept) = edge_agent::backup::restore(&args.data.data_dir, &args.from)
        .with_context(|| format!("restoring {}", args.from.display()))?;
    println!(
        "restored {} events ({} waiting for the hub) and {} shared records from {}",
        c.events,
        c.pending,
        c.records,
        args.from.display()
    );
    if let Some(k) = kept {
        println!("the replaced store is kept as {}", k.display());
    }
    println!(
        "on its next connection the agent repairs against the hub; the hub keeps one copy of every event"
    );
    Ok(ExitCode::SUCCESS)
}
