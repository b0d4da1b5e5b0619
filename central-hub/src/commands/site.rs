//! `central-hub site add|revoke`: registering a site (partitions, certificate, enrollment
//! bundle) and shutting one out.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{Database, site_arg};

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Revoke a site: every certificate of it and its unused enrollment tokens are revoked
    /// (a later `site add` revives none of them) and a live session is cut within 5 s.
    Revoke {
        site: String,
        #[command(flatten)]
        db: Database,
    },
    /// Register a site and create its event partitions.
    Add {
        site: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
        /// IANA time zone of the plant, for shift and day boundaries in reports.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[command(flatten)]
        db: Database,
        /// Directory of the CA; the site's enrollment bundle goes to `<state-dir>/sites/<SITE>`.
        #[arg(long, env = "HUB_STATE_DIR", default_value = "hub-state")]
        state_dir: PathBuf,
    },
}

pub(crate) async fn run(command: SiteCommand) -> anyhow::Result<()> {
    match command {
        SiteCommand::Add {
            site,
            name,
            region,
            timezone,
            db,
            state_dir,
        } => {
            let site = site_arg(site)?;
            let pool = db.connect().await?;
            let master = central_hub::db::sites::add_site(&pool, &site, &name, &region, &timezone)
                .await
                .context("adding the site")?;
            let ca = central_hub::pki::Ca::load_or_create(&state_dir)
                .with_context(|| format!("loading the CA in {}", state_dir.display()))?;
            let bundle = state_dir.join("sites").join(site.as_str());
            let cert = central_hub::certs::issue_bundle(&pool, &ca, &site, &bundle)
                .await
                .context("issuing the site certificate")?;
            println!("site {site} added with partitions");
            if master > 0 {
                println!("{master} master data records queued for its edge");
            }
            println!(
                "enrollment bundle: {} (certificate {})",
                bundle.display(),
                cert.serial
            );
        }
        SiteCommand::Revoke { site, db } => {
            let site = site_arg(site)?;
            let pool = db.connect().await?;
            let r = central_hub::certs::revoke_site(&pool, &site)
                .await
                .context("revoking")?;
            println!(
                "site {site} revoked with {} certificate(s) and {} unused enrollment token(s); its sessions end within 5 s",
                r.certificates, r.tokens
            );
            println!(
                "`site add {site}` re-admits the site but none of them: its box must enroll again with a new token"
            );
        }
    }
    Ok(())
}
