//! `central-hub serve`: QUIC sync, the HQ API and reports, enrollment, health, readiness and
//! metrics, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use central_hub::serve::{ReportSettings, ServeConfig, ServeOptions};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
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
    #[arg(long, env = "HUB_SITE_CERT_VALIDITY", default_value = "365d", value_parser = super::parse_ttl)]
    site_cert_validity: std::time::Duration,
    /// Seconds a cached report may be served.
    #[arg(long, env = "HUB_REPORT_CACHE_TTL", default_value_t = 10)]
    report_cache_ttl: u64,
    /// API requests per second (and burst) per token.
    #[arg(long, env = "HUB_RATE_LIMIT", default_value_t = 50)]
    rate_limit: u32,
    /// Longest one report statement may run, e.g. 20s or 2m (answered 503 beyond it).
    #[arg(long, env = "HUB_REPORT_STATEMENT_TIMEOUT", default_value = "20s", value_parser = super::parse_ttl)]
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
}

/// Shortest report statement timeout accepted: below it no report could answer.
const REPORT_STATEMENT_TIMEOUT_MIN: Duration = Duration::from_millis(100);

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let options = ServeOptions {
        site_cert_validity: args.site_cert_validity,
    };
    let running = central_hub::serve::start_with(config(args), options).await?;
    println!(
        "central-hub sync on quic://{} http on http://{}",
        running.quic_addr, running.http_addr
    );
    if let Some(e) = running.enroll_addr {
        println!("enrollment (edge-agent install) on https://{e}");
    }
    service_kit::process::shutdown_signal("hub").await;
    running.stop().await
}

/// The server's configuration from the flags, with the floors the flags' help promises.
fn config(args: ServeArgs) -> ServeConfig {
    ServeConfig {
        database_url: args.database_url,
        read_database_url: args.read_database_url,
        quic_listen: args.quic_listen,
        http_listen: args.http_listen,
        state_dir: args.state_dir,
        server_names: args.server_names,
        enroll_listen: Some(args.enroll_listen),
        metrics_listen: args.metrics_listen,
        reports: ReportSettings {
            redis_url: args.redis_url,
            cache_ttl: Duration::from_secs(args.report_cache_ttl.max(1)),
            rate_limit_per_second: args.rate_limit.max(1),
            statement_timeout: args
                .report_statement_timeout
                .max(REPORT_STATEMENT_TIMEOUT_MIN),
            trusted_proxies: args.trusted_proxies,
        },
        db: central_hub::db::DbSettings {
            pool_size: args.db_pool_size,
            pgbouncer: args.pgbouncer,
            listen_url: args.listen_database_url,
        },
    }
}
