//! `central-hub`: the central sync and reporting service.
//!
//! Built so far: `migrate` and `site add` against PostgreSQL. `serve` (QUIC sync server and
//! HTTP API), enrollment certificates and tokens arrive with the sync issue; until then
//! `serve` says so and exits non-zero rather than pretending.

use anyhow::{Context, bail};
use central_hub::db::{self, schema, store};
use clap::{Parser, Subcommand};
use shared_model::SiteId;

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
    /// Create or upgrade the database schema (run as the database owner).
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Manage sites.
    Site {
        #[command(subcommand)]
        command: SiteCommand,
    },
    /// Serve sync and HTTP (not built yet).
    Serve,
    /// Print the build and protocol versions.
    Version,
}

#[derive(Debug, Subcommand)]
enum SiteCommand {
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
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Migrate { database_url } => runtime()?.block_on(async {
            let pool = db::connect(&database_url)
                .await
                .context("connecting to PostgreSQL")?;
            let v = schema::migrate(&pool).await.context("migrating")?;
            println!("schema at version {v}");
            Ok(())
        }),
        Command::Site {
            command:
                SiteCommand::Add {
                    site,
                    name,
                    region,
                    timezone,
                    database_url,
                },
        } => {
            let site = SiteId::new(site).context("invalid site id")?;
            runtime()?.block_on(async {
                let pool = db::connect(&database_url)
                    .await
                    .context("connecting to PostgreSQL")?;
                store::add_site(&pool, &site, &name, &region, &timezone)
                    .await
                    .context("adding the site")?;
                println!("site {site} added with partitions");
                Ok(())
            })
        }
        Command::Serve => bail!("`central-hub serve` is not implemented yet (issue 4)"),
        Command::Version => {
            println!(
                "central-hub {} (sync protocol v{}, ALPN {}, schema v{})",
                env!("CARGO_PKG_VERSION"),
                sync_protocol::PROTOCOL_VERSION,
                String::from_utf8_lossy(sync_protocol::ALPN_V1),
                schema::SCHEMA_VERSION
            );
            Ok(())
        }
    }
}
