//! `edge-agent`: the per-factory agent. See `docs/edge-api.md` for the commands and the API.

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Enroll this box with the hub and install the agent as a service.
    Install {
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
    },
    /// Check this agent's health: configuration, certificate, hub, clock, disk, store, outbox.
    Doctor {
        #[arg(long, env = "EDGE_CONFIG", default_value = edge_agent::doctor::CONFIG_DEFAULT)]
        config: PathBuf,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the store to FILE (while the agent runs).
    Backup {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, env = "EDGE_DATA_DIR", default_value = "/var/lib/mes-edge")]
        data_dir: PathBuf,
    },
    /// Put a backup in place of the store (the agent must be stopped); the next connection
    /// repairs against the hub.
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[arg(long, env = "EDGE_DATA_DIR", default_value = "/var/lib/mes-edge")]
        data_dir: PathBuf,
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
    /// List every key: id (the first 8 hex digits of its hash), name, created, revoked.
    List {
        #[arg(long, env = "EDGE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Revoke every live key named NAME; a running agent refuses it within 2 s.
    Revoke {
        name: String,
        #[arg(long, env = "EDGE_DATA_DIR")]
        data_dir: PathBuf,
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

/// The store of an existing data directory (a typo in --data-dir must not create an empty
/// store and report "no such key").
fn open_existing_db(data_dir: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    let path = data_dir.join(edge_agent::store::DB_FILE);
    anyhow::ensure!(
        path.exists(),
        "no store at {}: check --data-dir (EDGE_DATA_DIR)",
        path.display()
    );
    open_db(data_dir)
}

/// A test hook: seconds added to this box's clock by `install` and `doctor`.
fn clock_offset_micros() -> i64 {
    std::env::var("EDGE_CLOCK_SKEW_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |s| s.saturating_mul(1_000_000))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
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
                .map(|()| ExitCode::SUCCESS)
        }
        Command::ApiKey {
            command: ApiKeyCommand::Create { data_dir, name },
        } => {
            let conn = open_db(&data_dir)?;
            let key = keys::create(&conn, &name, now_micros()).context("creating the key")?;
            println!("{key}");
            eprintln!("API key {name:?} created; it is shown only this once");
            Ok(ExitCode::SUCCESS)
        }
        Command::ApiKey {
            command: ApiKeyCommand::List { data_dir },
        } => {
            let conn = open_existing_db(&data_dir)?;
            let list = keys::list(&conn).context("listing the keys")?;
            let ts = |micros: i64| {
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| micros.to_string())
            };
            println!("{:<8}  {:<24}  {:<32}  REVOKED", "ID", "NAME", "CREATED");
            for k in &list {
                println!(
                    "{:<8}  {:<24}  {:<32}  {}",
                    k.id,
                    k.name,
                    ts(k.created_at),
                    k.revoked_at.map_or_else(|| "-".to_owned(), ts)
                );
            }
            eprintln!(
                "{} key(s), {} live",
                list.len(),
                list.iter().filter(|k| k.revoked_at.is_none()).count()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ApiKey {
            command: ApiKeyCommand::Revoke { name, data_dir },
        } => {
            let conn = open_existing_db(&data_dir)?;
            let n = keys::revoke(&conn, &name, now_micros()).context("revoking")?;
            anyhow::ensure!(n > 0, "no live API key named {name:?} (see api-key list)");
            println!(
                "{n} API key(s) named {name:?} revoked; a running agent refuses them within {} s",
                edge_agent::api::KEY_RECHECK_MICROS / 1_000_000
            );
            Ok(ExitCode::SUCCESS)
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Install {
            hub,
            token,
            prefix,
            http_listen,
            hub_quic,
            min_free_mb,
            no_start,
        } => {
            let opts = edge_agent::install::InstallOptions {
                hub,
                token,
                prefix,
                http_listen,
                hub_quic,
                min_free_bytes: min_free_mb.saturating_mul(1 << 20),
                clock_offset_micros: clock_offset_micros(),
                start_service: !no_start,
            };
            let mut open_step = false;
            let result =
                runtime()?.block_on(edge_agent::install::install(&opts, |n, total, what| {
                    if open_step {
                        eprintln!("ok");
                    }
                    eprint!("[{n}/{total}] {what} ... ");
                    open_step = true;
                }));
            match result {
                Ok(done) => {
                    eprintln!("ok");
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
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("failed");
                    eprintln!("error: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Doctor { config, json } => {
            let checks =
                runtime()?.block_on(edge_agent::doctor::run(&config, clock_offset_micros()));
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": edge_agent::doctor::all_passed(&checks),
                        "checks": checks,
                    })
                );
            } else {
                print!("{}", edge_agent::doctor::render(&checks));
            }
            Ok(if edge_agent::doctor::all_passed(&checks) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Backup { out, data_dir } => {
            let c = edge_agent::backup::backup(&data_dir, &out)
                .with_context(|| format!("backing up {}", data_dir.display()))?;
            println!(
                "backup written to {}: {} events ({} waiting for the hub), {} shared records, {} KB",
                out.display(),
                c.events,
                c.pending,
                c.records,
                c.bytes / 1024
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { from, data_dir } => {
            let (c, kept) = edge_agent::backup::restore(&data_dir, &from)
                .with_context(|| format!("restoring {}", from.display()))?;
            println!(
                "restored {} events ({} waiting for the hub) and {} shared records from {}",
                c.events,
                c.pending,
                c.records,
                from.display()
            );
            if let Some(k) = kept {
                println!("the replaced store is kept as {}", k.display());
            }
            println!(
                "on its next connection the agent repairs against the hub; the hub keeps one copy of every event"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportMasterData { file, data_dir } => {
            let records = master::read_file(&file)?;
            let mut conn = open_db(&data_dir)?;
            let counts = master::import(&mut conn, &records).context("storing master data")?;
            for (kind, n) in counts {
                println!("{:>16}: {n}", kind.as_str());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!(
                "edge-agent {} (sync protocol v{}, ALPN {}, schema v{})",
                env!("CARGO_PKG_VERSION"),
                sync_protocol::PROTOCOL_VERSION,
                String::from_utf8_lossy(sync_protocol::ALPN_V1),
                edge_agent::store::schema::SCHEMA_VERSION
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
