//! `edge-agent`: the per-factory agent. See `docs/edge-api.md` for the commands and the API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_agent::config::RunArgs;
use edge_agent::store::{keys, open_write_connection};
use edge_agent::{master, server};

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
    /// Run the agent: local API and store (and sync, once built).
    Run(RunArgs),
    /// Manage API keys for machines and gateways.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Set supervisors' PINs for the operator terminal.
    SupervisorPin {
        #[command(subcommand)]
        command: PinCommand,
    },
    /// Load master data (materials, routings, reason codes, equipment, shift calendars,
    /// personnel, inspection plans).
    ImportMasterData {
        /// A JSON file, or TOML with a .toml extension.
        file: PathBuf,
        #[arg(long, env = "EDGE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Print the build and protocol versions.
    Version,
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it once on stdout.
    Create {
        #[arg(long, env = "EDGE_DATA_DIR")]
        data_dir: PathBuf,
        /// What the key is for, e.g. the gateway's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum PinCommand {
    /// Set or replace a supervisor's PIN (4 to 12 digits, read from standard input so it
    /// stays out of the shell history). The badge must be a supervisor of this site in the
    /// personnel master data.
    Set {
        #[arg(long, env = "EDGE_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, env = "EDGE_SITE")]
        site: String,
        #[arg(long)]
        badge: String,
    },
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn open_db(data_dir: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    open_write_connection(&data_dir.join(edge_agent::store::DB_FILE))
        .with_context(|| format!("opening the store in {}", data_dir.display()))
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
        Command::Run(args) => {
            let config = args.resolve()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(server::run(config))
        }
        Command::ApiKey {
            command: ApiKeyCommand::Create { data_dir, name },
        } => {
            let conn = open_db(&data_dir)?;
            let key = keys::create(&conn, &name, now_micros()).context("creating the key")?;
            println!("{key}");
            eprintln!("API key {name:?} created; it is shown only this once");
            Ok(())
        }
        Command::SupervisorPin {
            command:
                PinCommand::Set {
                    data_dir,
                    site,
                    badge,
                },
        } => {
            let site = shared_model::SiteId::new(site).context("invalid --site")?;
            let badge = shared_model::BadgeId::new(badge).context("invalid --badge")?;
            eprintln!("PIN for {badge} (4 to 12 digits), then Enter:");
            let mut pin = String::new();
            std::io::stdin()
                .read_line(&mut pin)
                .context("reading the PIN from standard input")?;
            let conn = open_db(&data_dir)?;
            edge_agent::store::people::set_pin(&conn, &site, &badge, pin.trim(), now_micros())
                .with_context(|| format!("setting the PIN of {badge}"))?;
            eprintln!("PIN of {badge} set; a running agent uses it from the next login");
            Ok(())
        }
        Command::ImportMasterData { file, data_dir } => {
            let records = master::read_file(&file)?;
            let mut conn = open_db(&data_dir)?;
            let counts = master::import(&mut conn, &records).context("storing master data")?;
            for (kind, n) in counts {
                println!("{:>16}: {n}", kind.as_str());
            }
            Ok(())
        }
        Command::Version => {
            println!(
                "edge-agent {} (sync protocol v{}, ALPN {}, schema v{})",
                env!("CARGO_PKG_VERSION"),
                sync_protocol::PROTOCOL_VERSION,
                String::from_utf8_lossy(sync_protocol::ALPN_V1),
                edge_agent::store::schema::SCHEMA_VERSION
            );
            Ok(())
        }
    }
}
