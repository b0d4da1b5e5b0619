//! Configuration of `edge-agent run`: flags, then `EDGE_*` environment variables (both via
//! clap), then a TOML file (`--config`), then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use shared_model::SiteId;

/// Default retention of acknowledged events.
pub const RETENTION_DAYS_DEFAULT: u32 = 30;
/// Default HTTP listen address: all interfaces, since terminals are on the plant LAN.
pub const HTTP_LISTEN_DEFAULT: &str = "0.0.0.0:8080";

/// The `run` arguments as given on the command line or in the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// The site this agent serves, e.g. SITE_001.
    #[arg(long, env = "EDGE_SITE")]
    pub site: Option<String>,
    /// Directory of the SQLite database and TLS files.
    #[arg(long, env = "EDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the local HTTP API and operator UI.
    #[arg(long, env = "EDGE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// The hub's QUIC address (host:port); without it the agent runs standalone.
    #[arg(long, env = "EDGE_HUB")]
    pub hub: Option<String>,
    /// Days to keep events the hub has acknowledged.
    #[arg(long, env = "EDGE_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Directory with the enrollment files (`ca.crt.pem`, `client.crt.pem`,
    /// `client.key.pem`); default `<data-dir>/tls`.
    #[arg(long, env = "EDGE_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// A TOML file with any of the above (flags and environment win).
    #[arg(long, env = "EDGE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    site: Option<String>,
    data_dir: Option<PathBuf>,
    http_listen: Option<SocketAddr>,
    hub: Option<String>,
    retention_days: Option<u32>,
    tls_dir: Option<PathBuf>,
    /// The machine connectors, checked by `connectors::config` (with their lines).
    #[serde(default)]
    #[allow(dead_code)]
    connector: Vec<toml::Value>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub site: SiteId,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub hub: Option<String>,
    pub retention_days: u32,
    pub tls_dir: PathBuf,
    /// The TOML file, when one was given: its `[[connector]]` tables are read at start and on
    /// every reload (SIGHUP, `POST /api/v1/connectors/reload`).
    pub config_file: Option<PathBuf>,
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

impl RunArgs {
    pub fn resolve(self) -> anyhow::Result<RunConfig> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let Some(site) = self.site.or(file.site) else {
            bail!(
                "no site given: pass --site SITE_001, set EDGE_SITE, or put site in the config file"
            );
        };
        let site = SiteId::new(site).context("invalid --site")?;
        let Some(data_dir) = self.data_dir.or(file.data_dir) else {
            bail!(
                "no data directory given: pass --data-dir, set EDGE_DATA_DIR, or put data_dir in the config file"
            );
        };
        let http_listen = match self.http_listen.or(file.http_listen) {
            Some(a) => a,
            None => HTTP_LISTEN_DEFAULT
                .parse()
                .context("default listen address")?,
        };
        let retention_days = self
            .retention_days
            .or(file.retention_days)
            .unwrap_or(RETENTION_DAYS_DEFAULT);
        if retention_days == 0 {
            bail!("retention_days must be at least 1");
        }
        let tls_dir = self
            .tls_dir
            .or(file.tls_dir)
            .unwrap_or_else(|| data_dir.join("tls"));
        Ok(RunConfig {
            site,
            data_dir,
            http_listen,
            hub: self.hub.or(file.hub),
            retention_days,
            tls_dir,
            config_file: self.config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("edge.toml");
        std::fs::write(
            &file,
            "site = \"SITE_009\"\ndata_dir = \"/var/lib/edge\"\nretention_days = 7\n",
        )
        .unwrap();
        let cfg = RunArgs {
            site: Some("SITE_001".into()),
            config: Some(file.clone()),
            ..RunArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.site.as_str(), "SITE_001");
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/edge"));
        assert_eq!(cfg.retention_days, 7);
        assert_eq!(cfg.http_listen.to_string(), HTTP_LISTEN_DEFAULT);

        std::fs::write(&file, "site = \"SITE_009\"\nbogus = 1\n").unwrap();
        let err = RunArgs {
            config: Some(file),
            ..RunArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_site_is_a_clear_error() {
        let err = RunArgs::default().resolve().unwrap_err();
        assert!(err.to_string().contains("--site"), "{err}");
    }
}
