//! `edge-agent doctor`: the health checks, as lines or JSON; exit code 1 when one fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio::runtime::Runtime;

use super::clock_offset_micros;

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    #[arg(long, env = "EDGE_CONFIG", default_value = edge_agent::doctor::CONFIG_DEFAULT)]
    config: PathBuf,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &DoctorArgs, runtime: &Runtime) -> anyhow::Result<ExitCode> {
    let checks = runtime.block_on(edge_agent::doctor::run(&args.config, clock_offset_micros()));
    let passed = edge_agent::doctor::all_passed(&checks);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "ok": passed,
                "checks": checks,
            })
        );
    } else {
        print!("{}", edge_agent::doctor::render(&checks));
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
