//! `edge-agent supervisor-pin set`: a supervisor's terminal PIN, read from standard input.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::{DataDir, now_micros, open_db};

#[derive(Debug, Subcommand)]
pub(crate) enum PinCommand {
    /// Set or replace a supervisor's PIN (4 to 12 digits, read from standard input so it
    /// stays out of the shell history). The badge must be a supervisor of this site in the
    /// personnel master data.
    Set {
        #[command(flatten)]
        data: DataDir,
        #[arg(long, env = "EDGE_SITE")]
        site: String,
        #[arg(long)]
        badge: String,
    },
}

pub(crate) fn run(command: PinCommand) -> anyhow::Result<ExitCode> {
    let PinCommand::Set { data, site, badge } = command;
    let site = shared_model::SiteId::new(site).context("invalid --site")?;
    let badge = shared_model::BadgeId::new(badge).context("invalid --badge")?;
    eprintln!("PIN for {badge} (4 to 12 digits), then Enter:");
    let mut pin = String::new();
    std::io::stdin()
        .read_line(&mut pin)
        .context("reading the PIN from standard input")?;
    let conn = open_db(&data.data_dir)?;
    edge_agent::store::people::set_pin(&conn, &site, &badge, pin.trim(), now_micros())
        .with_context(|| format!("setting the PIN of {badge}"))?;
    eprintln!("PIN of {badge} set; a running agent uses it from the next login");
    Ok(ExitCode::SUCCESS)
}
