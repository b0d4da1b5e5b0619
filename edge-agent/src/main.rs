//! `edge-agent`: the per-factory agent.
//!
//! This binary is a skeleton: it parses the command line and reports the protocol it speaks.
//! The store, HTTP API and sync client arrive with the issues that build them; until then
//! every subcommand other than `version` says so and exits non-zero rather than pretending.

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "MES edge agent (offline-first, syncs to the hub)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the build and protocol versions.
    Version,
    /// Run the agent (not built yet).
    Run,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!(
                "edge-agent {} (sync protocol v{}, ALPN {})",
                env!("CARGO_PKG_VERSION"),
                sync_protocol::PROTOCOL_VERSION,
                String::from_utf8_lossy(sync_protocol::ALPN_V1)
            );
            Ok(())
        }
        Command::Run => bail!("`edge-agent run` is not implemented yet (issue 3)"),
    }
}
