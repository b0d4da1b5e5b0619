//! Online backup and restore of the edge's store.
//!
//! `backup` is SQLite's `VACUUM INTO` on a read-only connection: one read transaction, so the
//! copy is a consistent snapshot even while the agent writes (WAL readers never block the
//! writer). `restore` needs the agent stopped (it holds [`LOCK_FILE`] while it runs), checks
//! the backup, keeps the current file aside, puts the backup in place and marks the store for
//! repair: on its next connection the agent exchanges record heads with the hub, which sends
//! the record changes made since the backup, and resends its unacknowledged events, which the
//! hub stores once (ingest is idempotent on event ids).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::store::{DB_FILE, schema::SCHEMA_VERSION};

/// The file `edge-agent run` holds an exclusive lock on while it runs.
pub const LOCK_FILE: &str = "edge.lock";
/// The `meta` key that asks the sync client for a repair on its next connection.
pub const REPAIR_PENDING: &str = "repair_pending";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{0} already exists: choose a new file name (a backup never overwrites)")]
    Exists(String),
    #[error("{path} is not a usable backup: {message}")]
    BadBackup { path: String, message: String },
    #[error("the agent is running on {0}: stop it first (`systemctl stop mes-edge`), then restore")]
    Running(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Store(String),
}

fn io(path: &Path, e: std::io::Error) -> BackupError {
    let message = if e.kind() == std::io::ErrorKind::StorageFull {
        "the disk is full".to_owned()
    } else {
        e.to_string()
    };
    BackupError::Io {
        path: path.display().to_string(),
        message,
    }
}

/// What a backup or restore holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub events: i64,
    pub pending: i64,
    pub records: i64,
    pub bytes: u64,
}

fn contents(conn: &Connection, path: &Path) -> Result<Contents, BackupError> {
    let (events, pending, records) = conn.query_row(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM outbox),
                (SELECT count(*) FROM records)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(Contents {
        events,
        pending,
        records,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
}

/// Checks a database file: readable, intact, and a schema this binary knows.
fn verify(path: &Path) -> Result<Contents, BackupError> {
    let bad = |message: String| BackupError::BadBackup {
        path: path.display().to_string(),
        message,
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| bad(e.to_string()))?;
    let check: String = conn
        .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
        .map_err(|e| bad(e.to_string()))?;
    if check != "ok" {
        return Err(bad(format!("integrity_check: {check}")));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| bad(e.to_string()))?;
    if version == 0 || version > SCHEMA_VERSION {
        return Err(bad(format!(
            "schema version {version}; this edge-agent reads 1 to {SCHEMA_VERSION}"
        )));
    }
    contents(&conn, path).map_err(|e| bad(e.to_string()))
}

/// Writes a consistent copy of the store in `data_dir` to `out`, while the agent may run.
pub fn backup(data_dir: &Path, out: &Path) -> Result<Contents, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists(out.display().to_string()));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let db = data_dir.join(DB_FILE);
    if !db.exists() {
        return Err(BackupError::Io {
            path: db.display().to_string(),
            message: "no store here: check --data-dir".into(),
        });
    }
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let target = out
        .to_str()
        .ok_or_else(|| BackupError::Io {
            path: out.display().to_string(),
            message: "the path is not UTF-8".into(),
        })?
        .to_owned();
    // The copy holds the store's key and PIN hashes: made empty with the owner-only mode
    // first (VACUUM INTO writes into an empty file and keeps its mode).
    create_private(out)?;
    if let Err(e) = conn.execute("VACUUM INTO ?1", [target]) {
        // Best effort: the VACUUM error is the one to report, and a partial file left behind
        // is replaced by the next attempt.
        let _ = std::fs::remove_file(out);
        return Err(e.into());
    }
    verify(out)
}

/// Holds the agent's lock: [`crate::server`] takes it for the life of `run`.
#[derive(Debug)]
pub struct AgentLock {
    _file: std::fs::File,
}

/// Takes the exclusive lock on `data_dir`, or says the agent is running.
pub fn lock(data_dir: &Path) -> Result<AgentLock, BackupError> {
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| BackupError::Running(data_dir.display().to_string()))?;
    Ok(AgentLock { _file: file })
}

/// Replaces the store in `data_dir` with the backup `from`; the file replaced is kept as
/// `edge.db.replaced-<unix time>`. Returns what the restored store holds and where the old
/// file went.
pub fn restore(data_dir: &Path, from: &Path) -> Result<(Contents, Option<PathBuf>), BackupError> {
    let _lock = lock(data_dir)?;
    verify(from)?;
    let db = data_dir.join(DB_FILE);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tmp = data_dir.join(format!("{DB_FILE}.restoring"));
    for suffix in ["", "-wal", "-shm", "-journal"] {
        // Usually absent (NotFound); a leftover that cannot be removed makes
        // `create_private` below fail with the real cause.
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    create_private(&tmp)?;
    let mut restored;
    {
        let mut src = std::fs::File::open(from).map_err(|e| io(from, e))?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        std::io::copy(&mut src, &mut dst).map_err(|e| io(&tmp, e))?;
        dst.sync_all().map_err(|e| io(&tmp, e))?;
    }
    {
        // Migrated as the agent would, so the totals can be rebuilt in the current schema.
        let mut conn = crate::store::open_write_connection(&tmp)
            .map_err(|e| BackupError::Store(e.to_string()))?;
        let tx = conn.transaction()?;
        // The restored store repairs itself against the hub on its next connection.
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, '1')
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [REPAIR_PENDING],
        )?;
        // Per-order totals from the events (a backup may predate them), never below the
        // totals kept nor below what the order's record already carries.
        crate::store::counts::recompute(&tx).map_err(|e| BackupError::Store(e.to_string()))?;
        crate::store::counts::at_least_the_records(&tx)
            .map_err(|e| BackupError::Store(e.to_string()))?;
        tx.commit()?;
        restored = contents(&conn, &tmp)?;
        // Closing the last connection checkpoints the WAL into the file and removes it.
        conn.close().map_err(|(_, e)| e)?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
    // Run as root for a service that runs as its own user (the installer's `mes-edge`): the
    // restored store belongs to whoever owns the data directory, or the agent cannot write it.
    give_to_directory_owner(data_dir, &tmp)?;
    // The replaced store is kept whole, with its WAL, under a name SQLite can open.
    let aside = data_dir.join(format!("{DB_FILE}.replaced-{stamp}"));
    let kept = db.exists().then(|| aside.clone());
    for suffix in ["", "-wal", "-shm"] {
        let p = data_dir.join(format!("{DB_FILE}{suffix}"));
        if p.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&p, &to).map_err(|e| io(&p, e))?;
        }
    }
    std::fs::rename(&tmp, &db).map_err(|e| io(&db, e))?;
    // The renames are durable only once the directory is.
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(data_dir, e))?;
    let lock_file = data_dir.join(LOCK_FILE);
    give_to_directory_owner(data_dir, &lock_file)?;
    restored.bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    Ok((restored, kept))
}

/// Creates `path` empty, readable and writable by its owner only ([`crate::store::STORE_FILE_MODE`]).
fn create_private(path: &Path) -> Result<(), BackupError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(crate::store::STORE_FILE_MODE);
    }
    o.open(path).map(drop).map_err(|e| io(path, e))
}

/// Gives `path` to the owner of `dir` when they differ (a restore run as root).
fn give_to_directory_owner(dir: &Path, path: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (Ok(d), Ok(f)) = (std::fs::metadata(dir), std::fs::metadata(path)) else {
            return Ok(());
        };
        if (d.uid(), d.gid()) != (f.uid(), f.gid()) {
            std::os::unix::fs::chown(path, Some(d.uid()), Some(d.gid())).map_err(|e| {
                BackupError::Io {
                    path: path.display().to_string(),
                    message: format!(
                        "cannot give it to the data directory's owner (uid {}): {e}; \
                         run restore as root or as that user",
                        d.uid()
                    ),
                }
            })?;
        }
    }
    Ok(())
}
