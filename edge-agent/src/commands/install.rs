//! `edge-agent install`: enroll this box with the hub and install the agent as a service,
//! printing one progress line per step.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use edge_agent::install::{InstallOptions, Installed};
use tokio::runtime::Runtime;

use super::clock_offset_micros;

#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// The hub's enrollment endpoint, host:port (HTTPS; port 8443 by default).
    #[arg(long)]
    hub: String,
    /// The one-time token from `central-hub enroll-token SITE`.
    #[arg(long, env = "EDGE_ENROLL_TOKEN")]
    token: String,
    /// Install under this root instead of / (for tests and images).
    #[arg(long, default_value = "/")]
    prefix: PathBuf,
    /// Address of the local API and operator terminal.
    #[arg(long, default_value = edge_agent::config::HTTP_LISTEN_DEFAULT)]
    http_listen: std::net::SocketAddr,
    /// The hub's QUIC sync address, when not the hub's host and advertised port.
    #[arg(long)]
    hub_quic: Option<String>,
    /// Free disk space required, in MB.
    #[arg(long, default_value_t = 1024)]
    min_free_mb: u64,
    /// Write everything but do not start the service.
    #[arg(long)]
    no_start: bool,
}

pub(crate) fn run(args: InstallArgs, runtime: &Runtime) -> anyhow::Result<ExitCode> {
    let opts = InstallOptions {
        hub: args.hub,
        token: args.token,
        prefix: args.prefix,
        http_listen: args.http_listen,
        hub_quic: args.hub_quic,
        min_free_bytes: args.min_free_mb.saturating_mul(1 << 20),
        clock_offset_micros: clock_offset_micros(),
        start_service: !args.no_start,
    };
    // Each step prints "[n/total] what ... " and the next step (or the end) closes the line.
    let mut open_step = false;
    let result = runtime.block_on(edge_agent::install::install(&opts, |n, total, what| {
        if open_step {
            eprintln!("ok");
        }
        eprint!("[{n}/{total}] {what} ... ");
        open_step = true;
    }));
    match result {
        Ok(done) => {
            eprintln!("ok");
            print_summary(&done);
            Ok(ExitCode::SUCCESS)
        }
        // Printed here rather than by `main`, to finish the open progress line first.
        Err(e) => {
            eprintln!("failed");
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_summary(done: &Installed) {
    println!(
        "edge agent installed for {}{}",
        done.site,
        if done.enrolled_now {
            ""
        } else {
            " (kept the existing enrollment)"
        }
    );
    println!("  configuration: {}", done.layout.config_file().display());
    println!("  data:          {}", done.layout.data_dir().display());
    println!("  service:       {}", done.layout.unit_file().display());
    println!("  {}", done.start_hint);
    println!(
        "  check it any time with: edge-agent doctor --config {}",
        done.layout.config_file().display()
    );
}
