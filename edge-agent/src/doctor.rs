//! `edge-agent doctor`: is this agent healthy, and if not, what to do. Each check has a
//! status, what it found, and for a failure the remedy; the command exits non-zero when any
//! check failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::{RunArgs, RunConfig};
use crate::install::{
    CERT_RENEW_BEFORE, CLOCK_SKEW_MAX, certificate_facts, free_bytes, now_micros,
};

/// Free space below which the disk check fails.
pub const FREE_BYTES_MIN: u64 = 512 << 20;
/// An unsent event older than this fails the outbox check.
pub const OUTBOX_AGE_MAX: Duration = Duration::from_secs(24 * 3600);
/// How long the hub has to answer.
pub const HUB_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not checked, because an earlier check failed.
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Pass,
            detail: detail.into(),
            remedy: None,
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Fail,
            detail: detail.into(),
            remedy: Some(remedy.into()),
        }
    }
    fn skip(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Skip,
            detail: detail.into(),
            remedy: None,
        }
    }
}

/// The default configuration file of an installed agent.
pub const CONFIG_DEFAULT: &str = "/etc/mes-edge/edge.toml";

/// Runs every check. `clock_offset_micros` shifts this box's clock (a test hook).
pub async fn run(config: &Path, clock_offset_micros: i64) -> Vec<Check> {
    let mut out = Vec::new();
    let cfg: RunConfig = match (RunArgs {
        config: Some(config.to_path_buf()),
        ..RunArgs::default()
    })
    .resolve()
    {
        Ok(c) => {
            out.push(Check::pass(
                "config",
                format!("{} is valid (site {})", config.display(), c.site),
            ));
            c
        }
        Err(e) => {
            out.push(Check::fail(
                "config",
                format!("{e:#}"),
                "fix the file, or run `edge-agent install` again to rewrite it",
            ));
            for name in [
                "certificate",
                "hub",
                "clock",
                "disk",
                "database",
                "outbox",
                "connectors",
            ] {
                out.push(Check::skip(name, "no valid configuration"));
            }
            return out;
        }
    };
    let now = now_micros(clock_offset_micros);
    out.push(certificate(&cfg, now / 1_000_000));
    let (hub, clock) = hub_and_clock(&cfg, now).await;
    out.push(hub);
    out.push(clock);
    out.push(disk(&cfg.data_dir));
    let (db, outbox) = database(cfg.data_dir.join(crate::store::DB_FILE), now);
    out.push(db);
    out.push(outbox);
    out.push(connectors(config).await);
    out
}

/// How long `doctor` waits for a machine's server to answer.
const CONNECTOR_PROBE: std::time::Duration = std::time::Duration::from_secs(3);

/// The `[[connector]]` tables parse, and each enabled connector's server answers on TCP.
async fn connectors(config: &Path) -> Check {
    use crate::connectors::config::{self, KindSpec};
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => {
            return Check::skip(
                "connectors",
                format!("cannot read {}: {e}", config.display()),
            );
        }
    };
    let specs = match config::parse(&text) {
        Ok(s) => s,
        Err(errors) => {
            return Check::fail(
                "connectors",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                format!(
                    "fix the [[connector]] tables of {}, then `systemctl reload mes-edge` (SIGHUP)",
                    config.display()
                ),
            );
        }
    };
    if specs.is_empty() {
        return Check::pass("connectors", "none configured (machines post to the API)");
    }
    let mut answered = Vec::new();
    let mut silent = Vec::new();
    for c in specs.iter().filter(|c| c.enabled) {
        let target = match &c.kind {
            KindSpec::Mqtt(m) => format!("{}:{}", m.broker.host, m.broker.port),
            KindSpec::Sparkplug(s) => format!("{}:{}", s.broker.host, s.broker.port),
            KindSpec::OpcUa(o) => {
                let rest = o.endpoint.trim_start_matches("opc.tcp://");
                let hp = rest.split('/').next().unwrap_or(rest);
                config::host_port(hp, 4840)
                    .map(|(h, p)| format!("{h}:{p}"))
                    .unwrap_or_else(|| hp.to_owned())
            }
            KindSpec::Modbus(m) => config::host_port(&m.address, 502)
                .map(|(h, p)| format!("{h}:{p}"))
                .unwrap_or_else(|| m.address.clone()),
        };
        let ok = matches!(
            tokio::time::timeout(CONNECTOR_PROBE, tokio::net::TcpStream::connect(&target)).await,
            Ok(Ok(_))
        );
        let line = format!("{} ({} {target})", c.name, c.kind_name());
        if ok {
            answered.push(line)
        } else {
            silent.push(line)
        }
    }
    if silent.is_empty() {
        Check::pass(
            "connectors",
            format!("{} answer: {}", answered.len(), answered.join(", ")),
        )
    } else {
        Check::fail(
            "connectors",
            format!(
                "no answer within {} s from {}",
                CONNECTOR_PROBE.as_secs(),
                silent.join(", ")
            ),
            "check the machine's server is running and reachable from this box (address, port, firewall)",
        )
    }
}

/// Whether an `edge-agent run` holds the data directory's lock now.
pub fn agent_running(data_dir: &Path) -> bool {
    let path = data_dir.join(crate::backup::LOCK_FILE);
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(&path) else {
        return false;
    };
    // A shared lock is refused only while the agent holds its exclusive one; it is released
    // when `file` is dropped.
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
}

/// The certificate the running agent last said it uses (`sync::META_CERTIFICATE`).
fn certificate_in_use(data_dir: &Path) -> Option<crate::identity::CertInfo> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join(crate::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    if let Err(e) = conn.busy_timeout(Duration::from_secs(5)) {
        tracing::debug!(error = %e, "no busy timeout: a busy store fails its check at once");
    }
    let json: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [crate::sync::META_CERTIFICATE],
            |r| r.get(0),
        )
        .ok()?;
    serde_json::from_str(&json).ok()
}

fn date(secs: i64) -> String {
    shared_model::Timestamp::from_micros(secs.saturating_mul(1_000_000))
        .to_string()
        .chars()
        .take(10)
        .collect()
}

fn certificate(cfg: &RunConfig, now_secs: i64) -> Check {
    const NAME: &str = "certificate";
    let path = cfg.tls_dir.join("client.crt.pem");
    if cfg.hub.is_none() && !path.exists() {
        return Check::pass(NAME, "standalone agent (no hub configured): none needed");
    }
    let re_enroll =
        "ask HQ for a token (`central-hub enroll-token SITE`) and run `edge-agent install` again";
    let Ok(pem) = std::fs::read(&path) else {
        return Check::fail(
            NAME,
            format!("{} cannot be read", path.display()),
            re_enroll,
        );
    };
    let Some((cn, not_before, not_after)) = certificate_facts(&pem) else {
        return Check::fail(
            NAME,
            format!("{} is not a certificate", path.display()),
            re_enroll,
        );
    };
    if cn != cfg.site.as_str() {
        return Check::fail(
            NAME,
            format!(
                "the certificate is for {cn}, the configuration for {}",
                cfg.site
            ),
            re_enroll,
        );
    }
    if !cfg.tls_dir.join("client.key.pem").exists() {
        return Check::fail(NAME, "the private key client.key.pem is missing", re_enroll);
    }
    if now_secs < not_before {
        return Check::fail(
            NAME,
            "the certificate is not valid yet: this box's clock is behind",
            "set the time (`timedatectl set-ntp true`)",
        );
    }
    let left = not_after - now_secs;
    if left <= 0 {
        return Check::fail(NAME, "the certificate has expired", re_enroll);
    }
    // The running agent may use another certificate than the file's: it renews in place,
    // and a re-run of install writes new files the running agent has not loaded.
    let file_serial = crate::identity::CertInfo::from_pem(&pem).map(|c| c.serial);
    let running = agent_running(&cfg.data_dir);
    let in_use = if running {
        certificate_in_use(&cfg.data_dir)
    } else {
        None
    };
    if let (Some(used), Some(file)) = (&in_use, &file_serial)
        && used.serial != *file
    {
        return Check::fail(
            NAME,
            format!(
                "the running agent uses certificate {} (valid until {}), but {} holds {file}",
                used.serial,
                date(used.not_after),
                path.display()
            ),
            "restart the agent to load the files (`systemctl restart mes-edge`)",
        );
    }
    let (serial, not_before, not_after, whose) = match &in_use {
        Some(used) => (
            used.serial.clone(),
            used.not_before,
            used.not_after,
            "the running agent uses",
        ),
        None => (
            file_serial.unwrap_or_default(),
            not_before,
            not_after,
            if running {
                "the running agent has not said which it uses; the file holds"
            } else {
                "the agent is not running; the file holds"
            },
        ),
    };
    let left = not_after - now_secs;
    if left <= 0 {
        return Check::fail(
            NAME,
            format!(
                "{whose} certificate {serial}, which expired on {}",
                date(not_after)
            ),
            re_enroll,
        );
    }
    let days = left / 86_400;
    let renew_at = crate::identity::CertInfo {
        serial: serial.clone(),
        common_name: cn.clone(),
        not_before,
        not_after,
    }
    .renew_at();
    let detail = format!(
        "{whose} certificate {serial} for {cn}, valid until {} ({days} more days; renewed automatically over sync from {})",
        date(not_after),
        date(renew_at)
    );
    if left < CERT_RENEW_BEFORE.as_secs() as i64 {
        return Check::fail(
            NAME,
            format!("{detail}: it expires in {days} days and was not renewed"),
            format!(
                "the agent renews it over its sync session: fix the hub check; if sync works and it still is not renewed, {re_enroll}"
            ),
        );
    }
    Check::pass(NAME, detail)
}

async fn hub_and_clock(cfg: &RunConfig, now: i64) -> (Check, Check) {
    let Some(address) = &cfg.hub else {
        return (
            Check::pass("hub", "standalone agent: no hub configured"),
            Check::skip("clock", "no hub to compare with"),
        );
    };
    match crate::sync::probe(&cfg.tls_dir, address, HUB_TIMEOUT).await {
        Ok(p) => {
            let hub = Check::pass(
                "hub",
                format!(
                    "{address} answers over QUIC in {} ms and knows this box as {}",
                    p.round_trip.as_millis(),
                    p.site_id
                ),
            );
            let skew = (now - p.hub_time.as_micros()) / 1_000_000;
            let clock = if skew.unsigned_abs() > CLOCK_SKEW_MAX.as_secs() {
                Check::fail(
                    "clock",
                    format!(
                        "this box's clock is {} s {} the hub's (at most {} s)",
                        skew.abs(),
                        if skew > 0 { "ahead of" } else { "behind" },
                        CLOCK_SKEW_MAX.as_secs()
                    ),
                    "set the time (`timedatectl set-ntp true`, or point it at the plant's NTP server)",
                )
            } else {
                Check::pass("clock", format!("{skew} s from the hub's"))
            };
            (hub, clock)
        }
        Err(e) => {
            let remedy = match &e {
                crate::sync::ProbeError::NoAnswer { .. } => format!(
                    "check that the hub runs and that UDP port {} is open outbound from this network to it",
                    address.rsplit_once(':').map_or("4433", |(_, p)| p)
                ),
                crate::sync::ProbeError::Refused { message, .. } if message.contains("revoked") => {
                    "the hub revoked this site's certificate: ask HQ whether the site is to be re-admitted, then enroll again with a new token".to_owned()
                }
                crate::sync::ProbeError::Refused { .. } => {
                    "the hub does not accept this certificate: enroll again with a new token".to_owned()
                }
                crate::sync::ProbeError::Setup(_) => {
                    "the enrollment files are missing or broken: run `edge-agent install` again".to_owned()
                }
                crate::sync::ProbeError::Connect { .. } => {
                    "check the hub address in the configuration and the network to it".to_owned()
                }
            };
            (
                Check::fail("hub", e.to_string(), remedy),
                Check::skip("clock", "no session with the hub"),
            )
        }
    }
}

fn disk(data_dir: &Path) -> Check {
    match free_bytes(data_dir) {
        Ok(free) if free < FREE_BYTES_MIN => Check::fail(
            "disk",
            format!("{} MB free in {}", free >> 20, data_dir.display()),
            format!(
                "free at least {} MB: the store must be able to grow while the hub is unreachable",
                FREE_BYTES_MIN >> 20
            ),
        ),
        Ok(free) => Check::pass(
            "disk",
            format!("{} MB free in {}", free >> 20, data_dir.display()),
        ),
        Err(e) => Check::fail(
            "disk",
            format!("{}: {e}", data_dir.display()),
            "create the data directory, or run `edge-agent install` again",
        ),
    }
}

fn database(path: PathBuf, now: i64) -> (Check, Check) {
    let conn = match rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(_) if !path.exists() => {
            return (
                Check::pass(
                    "database",
                    "no store yet: the agent creates it on its first start",
                ),
                Check::skip("outbox", "no store yet"),
            );
        }
        Err(e) => {
            return (
                Check::fail(
                    "database",
                    format!("{}: {e}", path.display()),
                    "restore the last backup: `edge-agent restore --from FILE`",
                ),
                Check::skip("outbox", "the store cannot be opened"),
            );
        }
    };
    if let Err(e) = conn.busy_timeout(Duration::from_secs(10)) {
        tracing::debug!(error = %e, "no busy timeout: a busy store fails its check at once");
    }
    let integrity: Result<Vec<String>, rusqlite::Error> = conn
        .prepare("PRAGMA integrity_check(20)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    let db = match integrity {
        Ok(rows) if rows == ["ok"] => Check::pass(
            "database",
            format!("{}: integrity_check ok", path.display()),
        ),
        Ok(rows) => Check::fail(
            "database",
            format!("integrity_check: {}", rows.join("; ")),
            "stop the agent and restore the last backup: `edge-agent restore --from FILE` (the hub resends what it has)",
        ),
        Err(e) => Check::fail(
            "database",
            e.to_string(),
            "restore the last backup: `edge-agent restore --from FILE`",
        ),
    };
    let pending: Result<(i64, i64, Option<i64>), rusqlite::Error> = conn.query_row(
        "SELECT (SELECT count(*) FROM outbox WHERE event_id IS NOT NULL),
                (SELECT count(*) FROM outbox WHERE event_id IS NULL),
                (SELECT min(e.recorded_at) FROM outbox o JOIN events e ON e.event_id = o.event_id)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    let outbox = match pending {
        Ok((0, 0, _)) => Check::pass("outbox", "empty: the hub has everything"),
        Ok((events, changes, oldest)) => {
            let age = oldest.map_or(0, |o| (now - o).max(0) / 1_000_000);
            let detail = format!(
                "{events} events and {changes} record changes wait for the hub; the oldest for {age} s"
            );
            if age > OUTBOX_AGE_MAX.as_secs() as i64 {
                Check::fail(
                    "outbox",
                    detail,
                    "the hub has taken nothing for a day: fix the hub check above; nothing is lost meanwhile",
                )
            } else {
                Check::pass("outbox", detail)
            }
        }
        Err(e) => Check::fail(
            "outbox",
            e.to_string(),
            "restore the last backup: `edge-agent restore --from FILE`",
        ),
    };
    (db, outbox)
}

/// The report as a person reads it.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.status {
            Status::Pass => "ok  ",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        out.push_str(&format!("{mark} {:<12} {}\n", c.name, c.detail));
        if let Some(r) = &c.remedy {
            out.push_str(&format!("     {:<12} -> {r}\n", ""));
        }
    }
    out
}

pub fn all_passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}
