//! The `central-hub` subcommands, one file per command or command group, and the flags and
//! helpers they share. Every command runs on the one runtime `main` builds; an error ends the
//! process with exit code 1 and `Error: …` (anyhow's report).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use shared_model::SiteId;

mod api_token;
mod cert;
mod enroll_token;
mod master_data;
mod partitions;
mod serve;
mod site;

// Parsed once per process: the size of the `serve` variant's flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or upgrade the database schema (run as the database owner).
    Migrate {
        #[command(flatten)]
        db: Database,
    },
    /// Manage sites.
    Site {
        #[command(subcommand)]
        command: site::SiteCommand,
    },
    /// Serve QUIC sync and HTTP.
    Serve(serve::ServeArgs),
    /// Upload master data (JSON, or TOML by extension) and send it down to the sites.
    ImportMasterData(master_data::ImportArgs),
    /// Make a one-time enrollment token for a site's edge agent (`edge-agent install`).
    EnrollToken(enroll_token::EnrollTokenArgs),
    /// Partition lifecycle (retention).
    Partitions {
        #[command(subcommand)]
        command: partitions::PartitionCommand,
    },
    /// The registry of site certificates: list, revoke one.
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Manage HQ API tokens.
    ApiToken {
        #[command(subcommand)]
        command: api_token::TokenCommand,
    },
    /// Print the build and protocol versions.
    Version,
}

/// `--database-url` of the commands an operator runs against PostgreSQL directly.
#[derive(Debug, Args)]
pub(crate) struct Database {
    #[arg(long, env = "DATABASE_URL")]
    pub(crate) database_url: String,
}

impl Database {
    /// A pool for one command.
    async fn connect(&self) -> anyhow::Result<sqlx::PgPool> {
        central_hub::db::connect(&self.database_url)
            .await
            .context("connecting to PostgreSQL")
    }
}

pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate { db } => {
            let pool = db.connect().await?;
            let v = central_hub::db::schema::migrate(&pool)
                .await
                .context("migrating")?;
            println!("schema at version {v}");
            Ok(())
        }
        Command::Site { command } => site::run(command).await,
        Command::Serve(args) => serve::run(args).await,
        Command::ImportMasterData(args) => master_data::import(args).await,
        Command::EnrollToken(args) => enroll_token::run(args).await,
        Command::Partitions { command } => partitions::run(command).await,
        Command::Cert { command } => cert::run(command).await,
        Command::ApiToken { command } => api_token::run(command).await,
        Command::Version => {
            println!(
                "central-hub {} (sync protocol v{}, ALPN {}, schema v{})",
                env!("CARGO_PKG_VERSION"),
                sync_protocol::PROTOCOL_VERSION,
                String::from_utf8_lossy(sync_protocol::ALPN_V1),
                central_hub::db::schema::SCHEMA_VERSION
            );
            Ok(())
        }
    }
}

/// `30m`, `24h`, `7d` or plain seconds.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// A site id given as a positional argument.
fn site_arg(site: String) -> anyhow::Result<SiteId> {
    SiteId::new(site).context("invalid site id")
}

/// An optional `--site` flag, validated.
fn site_opt(site: Option<String>) -> anyhow::Result<Option<SiteId>> {
    site.map(SiteId::new).transpose().context("invalid --site")
}

/// An RFC 3339 time for listings, `-` for none.
fn rfc3339_or_dash(t: Option<time::OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn ttls() {
        let cases: &[(&str, Option<u64>)] = &[
            ("90", Some(90)),
            ("30m", Some(1_800)),
            ("24h", Some(86_400)),
            ("7d", Some(604_800)),
            ("20s", Some(20)),
            ("7w", None),
            ("m", None),
            ("", None),
        ];
        for (input, secs) in cases {
            assert_eq!(
                parse_ttl(input).ok(),
                secs.map(Duration::from_secs),
                "{input:?}"
            );
        }
    }
}
