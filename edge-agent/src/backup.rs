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
    if let Err(e) = conn.execute("VACUUM INTO ?1", [target]) {
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
    std::fs::copy(from, &tmp).map_err(|e| io(&tmp, e))?;
    {
        // The restored store repairs itself against the hub on its next connection.
        let conn = Connection::open(&tmp)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, '1')
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [REPAIR_PENDING],
        )?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
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
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok((contents(&conn, &db)?, kept))
}
