//! `central-hub`: the central sync and reporting service.
//!
//! `migrate` (as the database owner), `site add` (registers a site, creates its partitions and
//! writes its enrollment bundle), and `serve` (QUIC sync server plus health, readiness and
//! metrics over HTTP). The HQ API, reporting and API tokens arrive with their issues.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
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

// Parsed once per process: the size of the `serve` variant's flags costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Serve QUIC sync and HTTP.
    Serve {
        /// As the hub role `mes_hub` (neither owner nor superuser).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// As the reporting role `mes_reporting` (a read replica may serve it).
        #[arg(long, env = "READ_DATABASE_URL")]
        read_database_url: Option<String>,
        #[arg(long, env = "HUB_QUIC_LISTEN", default_value = "0.0.0.0:4433")]
        quic_listen: SocketAddr,
        #[arg(long, env = "HUB_HTTP_LISTEN", default_value = "0.0.0.0:8090")]
        http_listen: SocketAddr,
        /// Directory of the CA (created on first use).
        #[arg(long, env = "HUB_STATE_DIR", default_value = "hub-state")]
        state_dir: PathBuf,
        /// Names the server certificate is valid for (repeatable, or comma-separated in the
        /// environment).
        #[arg(long = "server-name", env = "HUB_SERVER_NAMES", value_delimiter = ',',
              default_values = ["localhost", "127.0.0.1"])]
        server_names: Vec<String>,
        /// PgBouncer in transaction mode sits in front of --database-url and
        /// --read-database-url: no prepared-statement cache (see docs/operations.md).
        #[arg(long, env = "HUB_PGBOUNCER", value_parser = clap::builder::FalseyValueParser::new(),
              default_value = "false", num_args = 0..=1, default_missing_value = "true")]
        pgbouncer: bool,
        /// A session connection for LISTEN/NOTIFY (PostgreSQL itself or a session-mode
        /// PgBouncer database); required with --pgbouncer.
        #[arg(long, env = "LISTEN_DATABASE_URL")]
        listen_database_url: Option<String>,
        /// Connections per pool (write and read each) of this instance.
        #[arg(long, env = "HUB_DB_POOL_SIZE", default_value_t = central_hub::db::POOL_CONNECTIONS_MAX,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(central_hub::db::POOL_CONNECTIONS_LIMIT)))]
        db_pool_size: u32,
        /// HTTPS enrollment endpoint for `edge-agent install`.
        #[arg(long, env = "HUB_ENROLL_LISTEN", default_value = "0.0.0.0:8443")]
        enroll_listen: SocketAddr,
        /// Serve `/metrics` on this address only (e.g. 0.0.0.0:9090 on the pod network), not on
        /// the API port.
        #[arg(long, env = "HUB_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Redis for the report cache, data versions and rate limits shared by all instances.
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// Lifetime of the site certificates this hub issues (enrollment and renewal), e.g.
        /// 365d or 90d; edges renew at two thirds of it.
        #[arg(long, env = "HUB_SITE_CERT_VALIDITY", default_value = "365d", value_parser = parse_ttl)]
        site_cert_validity: std::time::Duration,
        /// Seconds a cached report may be served.
        #[arg(long, env = "HUB_REPORT_CACHE_TTL", default_value_t = 10)]
        report_cache_ttl: u64,
        /// API requests per second (and burst) per token.
        #[arg(long, env = "HUB_RATE_LIMIT", default_value_t = 50)]
        rate_limit: u32,
        /// Longest one report statement may run, e.g. 20s or 2m (answered 503 beyond it).
        #[arg(long, env = "HUB_REPORT_STATEMENT_TIMEOUT", default_value = "20s", value_parser = parse_ttl)]
        report_statement_timeout: std::time::Duration,
        /// A proxy (address or network, e.g. 10.0.0.0/8) in front of the HTTP port whose
        /// X-Forwarded-For names the client; repeatable, or comma-separated in the
        /// environment. Failed authentications are counted per client address: without this,
        /// behind a proxy every client counts as the proxy.
        #[arg(
            long = "trusted-proxy",
            env = "HUB_TRUSTED_PROXIES",
            value_delimiter = ','
        )]
        trusted_proxies: Vec<central_hub::auth::Cidr>,
    },
    /// Upload master data (JSON, or TOML by extension) and send it down to the sites.
    ImportMasterData {
        file: PathBuf,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Make a one-time enrollment token for a site's edge agent (`edge-agent install`).
    EnrollToken {
        site: String,
        /// How long the token is valid, e.g. 30m, 24h, 7d (at most 30 days).
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Directory of the CA whose fingerprint the token pins.
        #[arg(long, env = "HUB_STATE_DIR", default_value = "hub-state")]
        state_dir: PathBuf,
    },
    /// Partition lifecycle (retention).
    Partitions {
        #[command(subcommand)]
        command: PartitionCommand,
    },
    /// The registry of site certificates: list, revoke one.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Manage HQ API tokens.
    ApiToken {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the build and protocol versions.
    Version,
}

#[derive(Debug, Subcommand)]
enum PartitionCommand {
    /// Archive event partitions older than the retention age to CSV files, then drop them
    /// (as the schema owner, directly against PostgreSQL).
    Retire {
        #[arg(long, env = "HUB_RETENTION_MONTHS")]
        older_than_months: u32,
        #[arg(long, env = "HUB_ARCHIVE_DIR")]
        archive_dir: PathBuf,
        /// List what would be retired and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once.
    Create {
        /// hq:read or hq:write.
        #[arg(long, value_parser = ["hq:read", "hq:write"])]
        scope: String,
        /// Limit the token to one site.
        #[arg(long)]
        site: Option<String>,
        #[arg(long, default_value = "hq")]
        name: String,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// List every token: id (the first 8 hex digits of its hash), name, scope, site,
    /// created, last used (to the minute), revoked.
    List {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Revoke every live token named NAME; every hub instance refuses it within 2 s.
    Revoke {
        name: String,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Every certificate the hub issued (or saw), by site and issue time.
    List {
        /// Only this site's certificates.
        #[arg(long)]
        site: Option<String>,
        /// One JSON object per certificate, in an array.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Revoke one certificate: refused from now on, its live session cut within 5 s.
    Revoke {
        /// As `cert list` prints it (colons, a 0x prefix and upper case are accepted).
        serial: String,
        /// Kept with the revocation.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum SiteCommand {
    /// Revoke a site: every certificate of it and its unused enrollment tokens are revoked
    /// (a later `site add` revives none of them) and a live session is cut within 5 s.
    Revoke {
        site: String,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
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
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Directory of the CA; the site's enrollment bundle goes to `<state-dir>/sites/<SITE>`.
        #[arg(long, env = "HUB_STATE_DIR", default_value = "hub-state")]
        state_dir: PathBuf,
    },
}

/// `30m`, `24h`, `7d` or plain seconds.
fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
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
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

/// An optional `--site` flag, validated.
fn site_opt(site: Option<String>) -> anyhow::Result<Option<SiteId>> {
    site.map(SiteId::new).transpose().context("invalid --site")
}

/// A pool on `url` for one command (the owner's commands and `serve`'s setup).
async fn connect(url: &str) -> anyhow::Result<sqlx::PgPool> {
    db::connect(url).await.context("connecting to PostgreSQL")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
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
    match cli.command {
        Command::Partitions {
            command:
                PartitionCommand::Retire {
                    older_than_months,
                    archive_dir,
                    dry_run,
                    database_url,
                },
        } => runtime()?.block_on(async {
            let pool = connect(&database_url).await?;
            let now = time::OffsetDateTime::now_utc();
            if dry_run {
                let due = db::retention::due(&pool, older_than_months, now).await?;
                for (table, _, month) in &due {
                    println!("would retire {table} ({month})");
                }
                println!("{} partition(s) due", due.len());
                return Ok(());
            }
            let done = db::retention::retire(&pool, older_than_months, &archive_dir, now).await?;
            for r in &done {
                println!(
                    "retired {} ({} rows, {} bytes) -> {} sha256 {}",
                    r.table,
                    r.rows,
                    r.bytes,
                    r.file.display(),
                    r.sha256
                );
            }
            println!("{} partition(s) retired", done.len());
            Ok(())
        }),
        Command::Migrate { database_url } => runtime()?.block_on(async {
            let pool = connect(&database_url).await?;
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
                    state_dir,
                },
        } => {
            let site = SiteId::new(site).context("invalid site id")?;
            runtime()?.block_on(async {
                let pool = connect(&database_url).await?;
                let master = store::add_site(&pool, &site, &name, &region, &timezone)
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
                Ok(())
            })
        }
        Command::EnrollToken {
            site,
            ttl,
            database_url,
            state_dir,
        } => {
            let site = SiteId::new(site).context("invalid site id")?;
            runtime()?.block_on(async {
                let pool = connect(&database_url).await?;
                let ca = central_hub::pki::Ca::load_or_create(&state_dir)
                    .with_context(|| format!("loading the CA in {}", state_dir.display()))?;
                let token = central_hub::enroll::create_token(&pool, &ca, &site, ttl)
                    .await
                    .context("creating the enrollment token")?;
                println!("{token}");
                eprintln!(
                    "one-time enrollment token for {site}, valid for {} min; on the edge box run:\n  edge-agent install --hub HUB_HOST:8443 --token {token}",
                    ttl.as_secs() / 60
                );
                Ok(())
            })
        }
        Command::Site {
            command: SiteCommand::Revoke { site, database_url },
        } => {
            let site = SiteId::new(site).context("invalid site id")?;
            runtime()?.block_on(async {
                let pool = connect(&database_url).await?;
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
                Ok(())
            })
        }
        Command::Cert {
            command:
                CertCommand::List {
                    site,
                    json,
                    database_url,
                },
        } => {
            let site = site_opt(site)?;
            runtime()?.block_on(async {
                let pool = connect(&database_url).await?;
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
                Ok(())
            })
        }
        Command::Cert {
            command:
                CertCommand::Revoke {
                    serial,
                    reason,
                    database_url,
                },
        } => runtime()?.block_on(async {
            let pool = connect(&database_url).await?;
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
            Ok(())
        }),
        Command::Serve {
            database_url,
            read_database_url,
            quic_listen,
            http_listen,
            state_dir,
            server_names,
            pgbouncer,
            listen_database_url,
            db_pool_size,
            enroll_listen,
            metrics_listen,
            redis_url,
            report_cache_ttl,
            report_statement_timeout,
            rate_limit,
            site_cert_validity,
            trusted_proxies,
        } => runtime()?.block_on(async {
            let options = central_hub::serve::ServeOptions { site_cert_validity };
            let running = central_hub::serve::start_with(
                central_hub::serve::ServeConfig {
                    database_url,
                    read_database_url,
                    quic_listen,
                    http_listen,
                    state_dir,
                    server_names,
                    enroll_listen: Some(enroll_listen),
                    metrics_listen,
                    reports: central_hub::serve::ReportSettings {
                        redis_url,
                        cache_ttl: std::time::Duration::from_secs(report_cache_ttl.max(1)),
                        rate_limit_per_second: rate_limit.max(1),
                        statement_timeout: report_statement_timeout
                            .max(std::time::Duration::from_millis(100)),
                        trusted_proxies,
                    },
                    db: central_hub::db::DbSettings {
                        pool_size: db_pool_size,
                        pgbouncer,
                        listen_url: listen_database_url,
                    },
                },
                options,
            )
            .await?;
            println!(
                "central-hub sync on quic://{} http on http://{}",
                running.quic_addr, running.http_addr
            );
            if let Some(e) = running.enroll_addr {
                println!("enrollment (edge-agent install) on https://{e}");
            }
            shutdown_signal().await;
            running.stop().await
        }),
        Command::ApiToken {
            command:
                TokenCommand::Create {
                    scope,
                    site,
                    name,
                    database_url,
                },
        } => {
            let site = site_opt(site)?;
            runtime()?.block_on(async {
                let pool = connect(&database_url).await?;
                let same_name = central_hub::auth::list_tokens(&pool)
                    .await
                    .context("listing tokens")?
                    .iter()
                    .filter(|t| t.name == name && t.revoked_at.is_none())
                    .count();
                let token = central_hub::api::create_token(&pool, &name, &scope, site.as_ref())
                    .await
                    .context("creating the token")?;
                println!("{token}");
                eprintln!("token {name:?} ({scope}) created; it is shown only this once");
                if same_name > 0 {
                    eprintln!(
                        "note: {same_name} other live token(s) are named {name:?}; `api-token revoke {name}` revokes them all"
                    );
                }
                Ok(())
            })
        }
        Command::ApiToken {
            command: TokenCommand::List { database_url },
        } => runtime()?.block_on(async {
            let pool = connect(&database_url).await?;
            let tokens = central_hub::auth::list_tokens(&pool)
                .await
                .context("listing tokens")?;
            let ts = |t: Option<time::OffsetDateTime>| {
                t.and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| "-".to_owned())
            };
            println!(
                "{:<8}  {:<24}  {:<8}  {:<20}  {:<25}  {:<25}  REVOKED",
                "ID", "NAME", "SCOPE", "SITE", "CREATED", "LAST USED"
            );
            for t in &tokens {
                println!(
                    "{:<8}  {:<24}  {:<8}  {:<20}  {:<25}  {:<25}  {}",
                    t.id,
                    t.name,
                    t.scope,
                    t.site.as_deref().unwrap_or("(all)"),
                    ts(Some(t.created_at)),
                    ts(t.last_used_at),
                    ts(t.revoked_at)
                );
            }
            eprintln!(
                "{} token(s), {} live",
                tokens.len(),
                tokens.iter().filter(|t| t.revoked_at.is_none()).count()
            );
            Ok(())
        }),
        Command::ApiToken {
            command: TokenCommand::Revoke { name, database_url },
        } => runtime()?.block_on(async {
            let pool = connect(&database_url).await?;
            let n = central_hub::auth::revoke_tokens(&pool, &name)
                .await
                .context("revoking")?;
            anyhow::ensure!(n > 0, "no live token named {name:?} (see api-token list)");
            println!(
                "{n} token(s) named {name:?} revoked; every hub instance refuses them within {} s",
                central_hub::auth::TOKEN_CACHE_TTL.as_secs()
            );
            Ok(())
        }),
        Command::ImportMasterData { file, database_url } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed: shared_model::master::MasterFile = if file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
            {
                toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
            } else {
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", file.display()))?
            };
            let records = parsed.into_records();
            for r in &records {
                r.validate()
                    .with_context(|| format!("{} {}", r.kind().as_str(), r.key()))?;
            }
            runtime()?.block_on(async {
                let pool = connect(&database_url).await?;
                let sites: Vec<SiteId> = sqlx::query_scalar::<_, String>(
                    "SELECT site_id FROM sites WHERE revoked_at IS NULL",
                )
                .fetch_all(&pool)
                .await
                .context("listing sites")?
                .into_iter()
                .filter_map(|s| SiteId::new(s).ok())
                .collect();
                db::master::publish(&pool, &sites, &records)
                    .await
                    .context("publishing master data")?;
                println!(
                    "{} records stored and sent to {} sites",
                    records.len(),
                    sites.len()
                );
                Ok(())
            })
        }
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
