//! The `edge-agent` subcommands, one file per command or command group, and the flags and
//! helpers they share. Every command returns the process exit code or an error, which `main`
//! prints as `error: …` with exit code 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use edge_agent::config::RunArgs;
use tokio::runtime::Runtime;

mod api_key;
mod backup;
mod doctor;
mod install;
mod master_data;
mod supervisor_pin;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the agent: local API, store and sync with the hub.
    Run(RunArgs),
    /// Manage API keys for machines and gateways.
    ApiKey {
        #[command(subcommand)]
        command: api_key::ApiKeyCommand,
    },
    /// Enroll this box with the hub and install the agent as a service.
    Install(install::InstallArgs),
    /// Check this agent's health: configuration, certificate, hub, clock, disk, store, outbox.
    Doctor(doctor::DoctorArgs),
    /// Write a consistent copy of the store to FILE (while the agent runs).
    Backup(backup::BackupArgs),
    /// Put a backup in place of the store (the agent must be stopped); the next connection
    /// repairs against the hub.
    Restore(backup::RestoreArgs),
    /// Set supervisors' PINs for the operator terminal.
    SupervisorPin {
        #[command(subcommand)]
        command: supervisor_pin::PinCommand,
    },
    /// Load master data (materials, routings, reason codes, equipment, shift calendars,
    /// personnel, inspection plans).
    ImportMasterData(master_data::ImportArgs),
    /// Print the build and protocol versions.
    Version,
}

/// `--data-dir` of commands that work on an existing agent's store (no default: naming the
/// wrong directory must not quietly act on another one).
#[derive(Debug, Args)]
pub(crate) struct DataDir {
    #[arg(long, env = "EDGE_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
}

/// `--data-dir` of backup and restore, which default to the installed agent's directory.
#[derive(Debug, Args)]
pub(crate) struct InstalledDataDir {
    #[arg(long, env = "EDGE_DATA_DIR", default_value = "/var/lib/mes-edge")]
    pub(crate) data_dir: PathBuf,
}

pub(crate) fn run(command: Command, runtime: &Runtime) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let config = args.resolve()?;
            runtime
                .block_on(edge_agent::server::run(config))
                .map(|()| ExitCode::SUCCESS)
        }
        Command::ApiKey { command } => api_key::run(command),
        Command::Install(args) => install::run(args, runtime),
        Command::Doctor(args) => doctor::run(&args, runtime),
        Command::Backup(args) => backup::backup(&args),
        Command::Restore(args) => backup::restore(&args),
        Command::SupervisorPin { command } => supervisor_pin::run(command),
        Command::ImportMasterData(args) => master_data::import(&args),
        Command::Version => {
            println!(
                "edge-agent {} (sync protocol v{}, ALPN {}, schema v{})",
                env!("CARGO_PKG_VERSION"),
                sync_protocol::PROTOCOL_VERSION,
                String::from_utf8_lossy(sync_protocol::ALPN_V1),
                edge_agent::store::schema::SCHEMA_VERSION
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// This box's wall clock in microseconds since the Unix epoch (0 before 1970).
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The store in `data_dir`, created (with the directory) if missing.
fn open_db(data_dir: &Path) -> anyhow::Result<rusqlite::Connection> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    edge_agent::store::open_write_connection(&data_dir.join(edge_agent::store::DB_FILE))
        .with_context(|| format!("opening the store in {}", data_dir.display()))
}

/// The store of an existing data directory (a typo in --data-dir must not create an empty
/// store and report "no such key").
fn open_existing_db(data_dir: &Path) -> anyhow::Result<rusqlite::Connection> {
    let path = data_dir.join(edge_agent::store::DB_FILE);
    anyhow::ensure!(
        path.exists(),
        "no store at {}: check --data-dir (EDGE_DATA_DIR)",
        path.display()
    );
    open_db(data_dir)
}

/// A test hook: seconds added to this box's clock by `install` and `doctor`.
fn clock_offset_micros() -> i64 {
    std::env::var("EDGE_CLOCK_SKEW_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |s| s.saturating_mul(1_000_000))
}

/// An RFC 3339 time for listings, or `fallback` when it cannot be formatted.
fn rfc3339(t: time::OffsetDateTime, fallback: impl FnOnce() -> String) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| fallback())
}
