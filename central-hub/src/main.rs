//! `central-hub`: the central sync and reporting service.
//!
//! This binary is a skeleton: it parses the command line and reports the protocol it speaks.
//! The Postgres store, QUIC server and HTTP API arrive with the issues that build them; until
//! then every subcommand other than `version` says so and exits non-zero.

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "central-hub",
    version,
    about = "MES central hub (sync server and HQ reporting)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the build and protocol versions.
    Version,
    /// Serve sync and HTTP (not built yet).
    Serve,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!(
                "central-hub {} (sync protocol v{}, ALPN {})",
                env!("CARGO_PKG_VERSION"),
                sync_protocol::PROTOCOL_VERSION,
                String::from_utf8_lossy(sync_protocol::ALPN_V1)
            );
            Ok(())
        }
        Command::Serve => bail!("`central-hub serve` is not implemented yet (issue 4)"),
    }
}
