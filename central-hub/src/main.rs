//! `central-hub`: the central sync and reporting service.
//!
//! `migrate` (as the database owner), `site add|revoke`, `enroll-token`, `import-master-data`,
//! `cert`, `api-token`, `partitions retire`, and `serve` (QUIC sync, the HQ API and reports,
//! enrollment, health, readiness and metrics). This file parses the command line, sets up logs
//! and traces and the one tokio runtime, and hands the command to [`commands::run`]; each
//! command lives in its own file under `commands/`.

use anyhow::Context;
use clap::Parser;

mod commands;

/// MES central hub (sync server and HQ reporting)
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
    /// Log lines on stderr as text or JSON.
    #[arg(
        long,
        global = true,
        env = "HUB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: central_hub::telemetry::LogFormat,
    /// OTLP/HTTP collector base URL (spans go to <URL>/v1/traces); no tracing without it.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share of traces sent, 0.0–1.0 (the deployment guide samples 10 %).
    #[arg(
        long,
        global = true,
        env = "OTEL_TRACES_SAMPLER_ARG",
        default_value_t = 0.1
    )]
    trace_sample_ratio: f64,
    #[arg(
        long,
        global = true,
        env = "OTEL_SERVICE_NAME",
        default_value = "central-hub"
    )]
    service_name: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = central_hub::telemetry::init(
        cli.log_format,
        cli.otlp_endpoint.filter(|e| !e.is_empty()).map(|endpoint| {
            central_hub::telemetry::TraceSettings {
                endpoint,
                sample_ratio: cli.trace_sample_ratio,
                service_name: cli.service_name.clone(),
            }
        }),
    )
    .context("setting up logs and traces")?;
    // Declared after the telemetry guard, so it is dropped first: spans of the last tasks are
    // still exported while the runtime shuts down.
    let runtime = service_kit::process::runtime()?;
    runtime.block_on(commands::run(cli.command))
}
