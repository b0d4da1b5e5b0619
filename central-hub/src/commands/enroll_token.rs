//! `central-hub enroll-token SITE`: a one-time token for `edge-agent install`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{Database, parse_ttl, site_arg};

#[derive(Debug, Args)]
pub(crate) struct EnrollTokenArgs {
    site: String,
    /// How long the token is valid, e.g. 30m, 24h, 7d (at most 30 days).
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    ttl: std::time::Duration,
    #[command(flatten)]
    db: Database,
    /// Directory of the CA whose fingerprint the token pins.
    #[arg(long, env = "HUB_STATE_DIR", default_value = "hub-state")]
    state_dir: PathBuf,
}

pub(crate) async fn run(args: EnrollTokenArgs) -> anyhow::Result<()> {
    let site = site_arg(args.site)?;
    let pool = args.db.connect().await?;
    let ca = central_hub::pki::Ca::load_or_create(&args.state_dir)
        .with_context(|| format!("loading the CA in {}", args.state_dir.display()))?;
    let token = central_hub::enroll::create_token(&pool, &ca, &site, args.ttl)
        .await
        .context("creating the enrollment token")?;
    println!("{token}");
    eprintln!(
        "one-time enrollment token for {site}, valid for {} min; on the edge box run:\n  edge-agent install --hub HUB_HOST:8443 --token {token}",
        args.ttl.as_secs() / 60
    );
    Ok(())
}
