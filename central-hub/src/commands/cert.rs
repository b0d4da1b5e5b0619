//! `central-hub cert list|revoke`: the registry of site certificates.

use anyhow::Context;
use clap::Subcommand;

use super::{Database, site_opt};

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Every certificate the hub issued (or saw), by site and issue time.
    List {
        /// Only this site's certificates.
        #[arg(long)]
        site: Option<String>,
        /// One JSON object per certificate, in an array.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: Database,
    },
    /// Revoke one certificate: refused from now on, its live session cut within 5 s.
    Revoke {
        /// As `cert list` prints it (colons, a 0x prefix and upper case are accepted).
        serial: String,
        /// Kept with the revocation.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
        #[command(flatten)]
        db: Database,
    },
}

pub(crate) async fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::List { site, json, db } => {
            let site = site_opt(site)?;
            let pool = db.connect().await?;
            let rows = central_hub::certs::list(&pool, site.as_ref())
                .await
                .context("listing certificates")?;
            let now = time::OffsetDateTime::now_utc();
            if json {
                let list: Vec<_> = rows.iter().map(|r| r.to_json(now)).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", central_hub::certs::render_table(&rows, now));
            }
        }
        CertCommand::Revoke { serial, reason, db } => {
            let pool = db.connect().await?;
            let r = central_hub::certs::revoke_serial(&pool, &serial, &reason)
                .await
                .context("revoking the certificate")?;
            if r.already {
                println!(
                    "certificate {} of {} was already revoked; nothing changed",
                    r.serial, r.site
                );
            } else {
                println!(
                    "certificate {} of {} revoked; a session using it ends within 5 s",
                    r.serial, r.site
                );
            }
        }
    }
    Ok(())
}
