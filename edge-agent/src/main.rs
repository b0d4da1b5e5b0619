//! `edge-agent`: the per-factory agent. See `docs/edge-api.md` for the commands and the API.
//!
//! This file parses the command line, sets up logging and the one tokio runtime, and hands
//! the command to [`commands::run`]; each command lives in its own file under `commands/`.

use std::process::ExitCode;

use clap::Parser;

mod commands;

/// MES edge agent (offline-first, syncs to the hub)
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Fails only when a provider is installed already, which is the state wanted.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was installed already");
    }
    let runtime = service_kit::process::runtime()?;
    commands::run(cli.command, &runtime)
}
