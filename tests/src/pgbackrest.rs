//! pgBackRest over a private PostgreSQL cluster: continuous WAL archiving, base backups and
//! point-in-time restore, with the real `pgbackrest` binary (Debian's package; `.ci/run`
//! installs it). A missing binary fails the test with the install hint, never skips it.
//!
//! [`Backed::start`] starts a cluster of its own ([`PrivateCluster`]) whose `postgresql.conf`
//! archives every WAL segment with `pgbackrest archive-push` into a repository in a temporary
//! directory of its own: encrypted (`aes-256-cbc`, a passphrase per repository), compressed
//! (`zst`), stanza [`STANZA`]. The archiving settings live in the data directory, so a restored
//! copy archives again as soon as the configuration names it. pgBackRest runs as the OS user
//! of the cluster (`postgres` when we are root), which owns the repository.
//!
//! [`Backed::restore`] restores into a new data directory (`--pg1-path`), replaces the old
//! cluster (stopped and removed: one stanza has one primary), points the configuration at the
//! restored one and starts it on a free port; it returns once the restored cluster has
//! promoted itself (a new timeline) and says how long the restore and the start took.
//!
//! Errors are `Err(String)` carrying pgBackRest's (or PostgreSQL's) own message.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pg::{PrivateCluster, cluster_dir, find_bin, free_port, is_root, run_as_cluster_user};

/// The stanza (pgBackRest's name for one cluster's backups) of every test repository, as in
/// `deploy/postgres/pgbackrest.conf`.
pub const STANZA: &str = "mes";
/// How long to wait for a WAL segment to reach the repository.
const ARCHIVE_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a restored cluster may take to replay the WAL and promote itself.
const PROMOTE_WAIT_MAX: Duration = Duration::from_secs(120);
/// Bytes of a restore target as given (an RFC 3339 time or an LSN).
const TARGET_BYTES_MAX: usize = 64;

/// The kinds of base backup: a full copy, the changes since the last full one
/// (differential), or since the last backup of any kind (incremental).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    Full,
    Diff,
    Incr,
}

impl BackupKind {
    /// pgBackRest's `--type` value, also the `type` of a backup in `info --output=json`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }
}

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// A point in time, RFC 3339 with its zone (`2030-01-01T12:00:00.5Z`): commits after it
    /// are not replayed.
    Time(String),
    /// A WAL location (`0/3000060`), as `pg_current_wal_lsn()` prints it.
    Lsn(String),
    /// The end of the archived WAL.
    Latest,
}

impl RestoreTarget {
    /// The target options of `pgbackrest restore`. Times are handed over as
    /// `YYYY-MM-DD HH:MM:SS.ffffff+00`, the form pgBackRest itself parses to choose the
    /// backup set (and PostgreSQL accepts as `recovery_target_time`).
    pub fn restore_args(&self) -> Result<Vec<String>, String> {
        let promote = "--target-action=promote".to_owned();
        match self {
            RestoreTarget::Latest => Ok(Vec::new()),
            RestoreTarget::Time(t) => {
                if t.len() > TARGET_BYTES_MAX {
                    return Err(format!("restore target time of {} bytes", t.len()));
                }
                let at = OffsetDateTime::parse(t, &Rfc3339)
                    .map_err(|e| format!("restore target {t:?} is not RFC 3339: {e}"))?
                    .to_offset(time::UtcOffset::UTC);
                let text = at
                    .format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
                    ))
                    .map_err(|e| format!("formatting {t:?}: {e}"))?;
                Ok(vec![
                    "--type=time".into(),
                    format!("--target={text}"),
                    promote,
                ])
            }
            RestoreTarget::Lsn(lsn) => {
                let valid = lsn.len() <= TARGET_BYTES_MAX
                    && lsn.split_once('/').is_some_and(|(hi, lo)| {
                        [hi, lo]
                            .iter()
                            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit()))
                    });
                if !valid {
                    return Err(format!(
                        "restore target {lsn:?} is not an LSN like 0/3000060"
                    ));
                }
                Ok(vec![
                    "--type=lsn".into(),
                    format!("--target={lsn}"),
                    promote,
                ])
            }
        }
    }
}

/// How long a restore took: `pgbackrest restore` (copying the backup into the new data
/// directory), then the start (WAL replay up to the target and promotion).
#[derive(Debug, Clone, Copy)]
pub struct RestoreTimings {
    pub restore: Duration,
    pub start: Duration,
}

/// A private cluster archived and backed up by pgBackRest into a repository of its own.
/// Dropping it stops the cluster and removes the cluster and the repository.
#[derive(Debug)]
pub struct Backed {
    /// The repository's directory: `pgbackrest.conf`, `repo/`, `log/`, `lock/`, `spool/`.
    dir: PathBuf,
    conf: PathBuf,
    pgbackrest: PathBuf,
    passphrase: String,
    cluster: Option<PrivateCluster>,
}

/// Gives `path` (recursively) to the cluster's OS user when we are root.
fn chown_to_cluster_user(path: &Path) -> Result<(), String> {
    if !is_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chown {} failed: {status}", path.display()))
    }
}

impl Backed {
    /// A new cluster archiving into a new repository, `stanza-create` and `check` done.
    pub fn start() -> Result<Backed, String> {
        let pgbackrest = find_bin("pgbackrest").ok_or(
            "pgbackrest not found on PATH: install Debian's pgbackrest (apt-get install \
             pgbackrest; .ci/run does)",
        )?;
        let dir = cluster_dir("mes-test-pgbackrest")?;
        let mut backed = Backed {
            conf: dir.join("pgbackrest.conf"),
            dir,
            pgbackrest,
            // Per repository, so no two test repositories share a key.
            passphrase: format!("mes-test-{}", uuid::Uuid::now_v7().simple()),
            cluster: None,
        };
        for sub in ["repo", "log", "lock", "spool"] {
            let p = backed.dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        chown_to_cluster_user(&backed.dir)?;
        let archive_command = format!(
            "{} --config={} --stanza={STANZA} archive-push %p",
            backed.pgbackrest.display(),
            backed.conf.display()
        );
        let cluster = PrivateCluster::start_with(
            false,
            &[
                ("wal_level", "replica"),
                ("archive_mode", "on"),
                ("archive_command", &archive_command),
            ],
        )?;
        backed.write_conf(cluster.data_dir(), cluster.port(), cluster.socket_dir())?;
        backed.cluster = Some(cluster);
        backed.run(&["stanza-create"])?;
        backed.check()?;
        Ok(backed)
    }

    /// The configuration: the repository and the cluster pgBackRest works on (`[mes]`).
    fn write_conf(&self, data: &Path, port: u16, socket: &Path) -> Result<(), String> {
        let dir = self.dir.display();
        let text = format!(
            "# Written by tests/src/pgbackrest.rs; the production file is deploy/postgres/pgbackrest.conf.\n\
             [global]\n\
             repo1-path={dir}/repo\n\
             repo1-cipher-type=aes-256-cbc\n\
             repo1-cipher-pass={pass}\n\
             repo1-retention-full=2\n\
             compress-type=zst\n\
             start-fast=y\n\
             process-max=2\n\
             log-path={dir}/log\n\
             lock-path={dir}/lock\n\
             spool-path={dir}/spool\n\
             log-level-console=off\n\
             log-level-stderr=warn\n\
             log-level-file=detail\n\
             archive-timeout=30\n\
             db-timeout=60\n\
             protocol-timeout=90\n\
             \n\
             [{STANZA}]\n\
             pg1-path={data}\n\
             pg1-port={port}\n\
             pg1-socket-path={socket}\n\
             pg1-user=postgres\n",
            pass = self.passphrase,
            data = data.display(),
            socket = socket.display(),
        );
        std::fs::write(&self.conf, text).map_err(|e| format!("{}: {e}", self.conf.display()))?;
        chown_to_cluster_user(&self.conf)
    }

    /// Runs `pgbackrest --config=… --stanza=mes <args>` as the cluster's user; its standard
    /// output, or an error with its standard error.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let config = format!("--config={}", self.conf.display());
        let stanza = format!("--stanza={STANZA}");
        let mut all = vec![config.as_str(), stanza.as_str()];
        all.extend_from_slice(args);
        run_as_cluster_user(&self.pgbackrest, &all)
            .map_err(|e| format!("pgbackrest {}: {e}", args.join(" ")))
    }

    /// The cluster being backed up; an error after [`Backed::destroy`].
    pub fn cluster(&self) -> Result<&PrivateCluster, String> {
        self.cluster
            .as_ref()
            .ok_or_else(|| "the cluster was destroyed and not restored".to_owned())
    }

    /// The repository's directory (encrypted backups and WAL under `repo/`).
    pub fn repo_dir(&self) -> PathBuf {
        self.dir.join("repo")
    }

    /// The configuration file pgBackRest and the cluster's `archive_command` read.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// `pgbackrest check`: the configuration, the cluster and WAL archiving work (it switches
    /// the WAL and waits for the segment to reach the repository).
    pub fn check(&self) -> Result<(), String> {
        self.run(&["check"]).map(drop)
    }

    /// A base backup of `kind`.
    pub fn backup(&self, kind: BackupKind) -> Result<(), String> {
        let kind = format!("--type={}", kind.as_str());
        self.run(&["backup", &kind]).map(drop)
    }

    /// `pgbackrest info --output=json`: an array with one object per stanza (`repo[].cipher`,
    /// `backup[].type`, `archive[]`, …).
    pub fn info(&self) -> Result<serde_json::Value, String> {
        let out = self.run(&["info", "--output=json"])?;
        serde_json::from_str(&out).map_err(|e| format!("pgbackrest info is not JSON: {e}: {out}"))
    }

    /// Closes the current WAL segment and waits until it is in the repository, so that a
    /// restore target up to now is covered by the archive. Returns the segment's name.
    pub async fn switch_wal_and_wait_archived(&self) -> Result<String, String> {
        let url = &self.cluster()?.admin_url;
        let mut c = PgConnection::connect(url)
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        // A record first, so the switch has something to close even on an idle cluster (a
        // switch with nothing written since the last one does nothing).
        sqlx::query("SELECT pg_logical_emit_message(false, 'mes-test', 'wal switch')::text")
            .execute(&mut c)
            .await
            .map_err(|e| format!("writing a WAL record: {e}"))?;
        let segment: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
            .fetch_one(&mut c)
            .await
            .map_err(|e| format!("pg_switch_wal: {e}"))?;
        let started = Instant::now();
        loop {
            let (last, failed, last_failed): (String, i64, String) = sqlx::query_as(
                "SELECT coalesce(last_archived_wal, ''), failed_count, \
                 coalesce(last_failed_wal, '') FROM pg_stat_archiver",
            )
            .fetch_one(&mut c)
            .await
            .map_err(|e| format!("reading pg_stat_archiver: {e}"))?;
            // Segments are archived in order; names of one timeline sort like their LSNs, and
            // a later timeline's sort after. History files (`00000002.history`) sort first.
            if last.len() >= 24 && last[..24] >= *segment {
                return Ok(segment);
            }
            if started.elapsed() > ARCHIVE_WAIT_MAX {
                let log = std::fs::read_to_string(
                    self.dir
                        .join("log")
                        .join(format!("{STANZA}-archive-push.log")),
                )
                .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                return Err(format!(
                    "WAL segment {segment} not archived after {ARCHIVE_WAIT_MAX:?}: last archived \
                     {last:?}, {failed} failures (last {last_failed:?}); archive-push log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Loses the cluster: stop without a checkpoint and remove its data directory. The
    /// repository stays.
    pub fn destroy(&mut self) -> Result<(), String> {
        match self.cluster.take() {
            Some(c) => c.destroy(),
            None => Err("the cluster is already destroyed".to_owned()),
        }
    }

    /// Restores the repository to `target` into a new data directory and starts it; the old
    /// cluster, if still there, is destroyed first, and the configuration is re-pointed at
    /// the restored cluster (whose archiving then resumes into the same stanza, on its new
    /// timeline). Returns when the restored cluster has promoted itself.
    pub async fn restore(&mut self, target: &RestoreTarget) -> Result<RestoreTimings, String> {
        let target_args = target.restore_args()?;
        let dir = cluster_dir("mes-test-restored")?;
        let data = dir.join("data");
        // pgBackRest restores into an existing, empty directory; PostgreSQL wants it 0700.
        let made = std::fs::create_dir(&data)
            .and_then(|()| std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)));
        if let Err(e) = made
            .map_err(|e| format!("{}: {e}", data.display()))
            .and_then(|()| chown_to_cluster_user(&data))
        {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }

        let started = Instant::now();
        let mut args = vec![
            "restore".to_owned(),
            format!("--pg1-path={}", data.display()),
        ];
        args.extend(target_args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = self.run(&args) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let restore = started.elapsed();

        // One stanza, one primary: the old cluster must not archive next to the new one.
        if let Some(old) = self.cluster.take() {
            old.destroy()?;
        }
        let started = Instant::now();
        let port = free_port()?;
        self.write_conf(&data, port, &dir)?;
        let cluster = PrivateCluster::start_existing(dir, port)?;
        wait_promoted(&cluster).await?;
        let start = started.elapsed();
        self.cluster = Some(cluster);
        Ok(RestoreTimings { restore, start })
    }
}

/// Waits until `cluster` has left recovery: it reached its target (or the end of the
/// archive) and promoted itself.
async fn wait_promoted(cluster: &PrivateCluster) -> Result<(), String> {
    let url = &cluster.admin_url;
    let started = Instant::now();
    let mut last_error = String::new();
    while started.elapsed() < PROMOTE_WAIT_MAX {
        match PgConnection::connect(url).await {
            Ok(mut c) => match sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                .fetch_one(&mut c)
                .await
            {
                Ok(false) => return Ok(()),
                Ok(true) => last_error = "still in recovery".to_owned(),
                Err(e) => last_error = e.to_string(),
            },
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "the restored cluster did not promote within {PROMOTE_WAIT_MAX:?} ({last_error}); server log:\n{}",
        cluster.log_tail()
    ))
}

impl Drop for Backed {
    fn drop(&mut self) {
        // The cluster first (its own drop stops it), then the repository.
        drop(self.cluster.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
