//! The edge's SQLite store.
//!
//! One file (`edge.db`) in WAL mode with `synchronous=FULL`: a transaction that returned from
//! COMMIT survives kill -9 and power loss. All writes go through **one writer thread** that
//! takes jobs from a bounded channel and commits each burst of them in one transaction
//! (group commit): under load many API requests share one fsync, and each request is answered
//! only after the commit that holds its rows. Every job runs in its own savepoint, so one
//! request's failure rolls back only its own rows. Reads use a few read-only connections on
//! blocking threads, which WAL lets run beside the writer.

pub mod counts;
pub(crate) mod events;
pub mod gap;
pub mod master;
pub(crate) mod outbox;
// For the gap tests (outbox uses gap, so gap names no item of outbox: no import circle).
#[cfg(test)]
pub(crate) use outbox::PRUNE_BATCH_ROWS;
pub mod people;
pub mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use shared_model::SiteId;
use shared_model::work_order::TransitionError;
use tokio::sync::{Semaphore, mpsc, oneshot};

pub(crate) use events::insert as insert_events;

/// Stores already-built events with their outbox entries, bypassing the HTTP layer: for
/// tests and benchmarks that need a filled outbox.
pub fn insert_events_for_tests(
    conn: &Connection,
    events: &[shared_model::Event],
) -> Result<EventsOutcome, StoreError> {
    events::insert(conn, events, None, 0, |_| String::new())
}
pub use events::{EventsOutcome, RefCheck};

/// Decodes a stored event and checks it again: data read from disk is validated like data
/// read from the network. Here rather than in `events` because `counts` (which `events`
/// calls) and the outbox read stored events too.
pub fn decode_event(body: &[u8]) -> Result<shared_model::Event, StoreError> {
    let e: shared_model::Event = postcard::from_bytes(body)
        .map_err(|err| StoreError::Corrupt(format!("stored event does not decode: {err}")))?;
    e.validate_structure()
        .map_err(|v| StoreError::Corrupt(format!("stored event {} invalid: {v}", e.event_id)))?;
    Ok(e)
}
pub use outbox::PendingCounts;
pub(crate) use outbox::push_change as outbox_push_change;
pub(crate) use writer::WriteJob;

use crate::metrics::Metrics;

/// A record kind read back from the store (outbox or work order rows): an unknown name means
/// the file is corrupt.
pub fn parse_record_kind(s: &str) -> Result<sync_protocol::message::RecordKind, StoreError> {
    s.parse()
        .map_err(|e: shared_model::UnknownName| StoreError::Corrupt(e.to_string()))
}

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "edge.db";
/// Jobs waiting for the writer; senders wait beyond this, which is the back-pressure on the API.
pub const WRITE_QUEUE_JOBS_MAX: usize = 4_096;
/// Most jobs committed in one transaction: bounds the latency one commit adds to the first job.
pub const GROUP_COMMIT_JOBS_MAX: usize = 1_024;
/// Read-only connections, each used by one blocking task at a time.
pub const READERS_MAX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the database schema is version {found}, newer than this edge-agent supports ({supported}); upgrade edge-agent"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the store is shut down")]
    Closed,
    #[error("{field} {value:?} is not in the master data")]
    UnknownReference {
        /// Position of the item in a batch request.
        index: usize,
        field: &'static str,
        value: String,
    },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id} already exists")]
    AlreadyExists { what: &'static str, id: String },
    #[error(transparent)]
    IllegalTransition(#[from] TransitionError),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A change from the hub refused before anything of it was written: malformed, over a
    /// limit (`sync_protocol::records` caps) or past the decode deadline. The session closes
    /// with `limit_exceeded` (`over_limit`) or `malformed_frame`.
    #[error("change for {record} refused: {reason}")]
    ChangeRefused {
        record: String,
        reason: String,
        over_limit: bool,
    },
}

/// Work on a connection, given to [`Store::write`] and [`Store::read`]; it runs on another
/// thread.
pub trait OnConnection<R>: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static {}

impl<R, F> OnConnection<R> for F where
    F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static
{
}

/// Handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    site: SiteId,
    sender: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    reader_permits: Semaphore,
    metrics: Arc<Metrics>,
    /// The Automerge actor of local edits: random per open, never persisted.
    actor: automerge::ActorId,
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Opens a writable connection with the durability settings, for the writer and for
/// one-shot CLI commands.
pub fn open_write_connection(path: &Path) -> Result<Connection, StoreError> {
    private_store_file(path)?;
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "could not switch {} to WAL (got {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// Mode of the store's files: they hold API key and PIN hashes, so only their owner (the
/// service user) may read them.
pub const STORE_FILE_MODE: u32 = 0o600;

/// Creates the store file with [`STORE_FILE_MODE`] before SQLite opens it (SQLite gives the
/// `-wal` and `-shm` files the database file's mode), and takes group and other bits off the
/// files of a store made before this rule.
pub fn private_store_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if !path.exists() {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(STORE_FILE_MODE)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
        }
        for suffix in ["", "-wal", "-shm"] {
            let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if let Ok(m) = std::fs::metadata(&p)
                && m.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(STORE_FILE_MODE))?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating and migrating if needed) the store in `data_dir` and starts the writer.
    pub fn open(data_dir: &Path, site: SiteId, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let conn = open_write_connection(&path)?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_JOBS_MAX);
        let writer_metrics = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer::run(conn, rx, &writer_metrics))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                site,
                sender: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                readers: Mutex::new(Vec::new()),
                reader_permits: Semaphore::new(READERS_MAX),
                metrics,
                actor: automerge::ActorId::random(),
            }),
        })
    }

    pub fn site(&self) -> &SiteId {
        &self.inner.site
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn actor(&self) -> &automerge::ActorId {
        &self.inner.actor
    }

    /// Runs `f` in the writer's next transaction (in its own savepoint) and resolves after
    /// that transaction committed. `f` runs on the writer thread: keep it short.
    pub async fn write<R: Send + 'static>(&self, f: impl OnConnection<R>) -> Result<R, StoreError> {
        let sender = self
            .inner
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let (done, result) = oneshot::channel();
        sender
            .send(writer::job(f, done))
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read-only connection on a blocking thread.
    pub async fn read<R: Send + 'static>(&self, f: impl OnConnection<R>) -> Result<R, StoreError> {
        let _permit = self
            .inner
            .reader_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    configure(&c)?;
                    c
                }
            };
            let r = f(&conn);
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            r
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("reader task failed: {e}")))?
    }

    /// Stops taking writes, lets the writer commit everything queued, and waits for it.
    pub fn close(&self) {
        self.inner
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the store's writer thread panicked");
        }
    }

    /// Sets a key of the `meta` table.
    pub async fn set_meta(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![key, value],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes a key from the `meta` table.
    pub async fn delete_meta(&self, key: &'static str) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM meta WHERE key = ?1", [key])?;
            Ok(())
        })
        .await
    }

    /// A value from the `meta` table.
    pub async fn meta(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            Ok(
                c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?,
            )
        })
        .await
    }
}

/// `bytes` random bytes as hex: session tokens and API keys.
pub fn random_hex(bytes: usize) -> Result<String, StoreError> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| StoreError::Corrupt("no randomness available".into()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Idempotency keys: the first response to a keyed request, replayed for a repeat of it.
pub mod idempotency {
    use rusqlite::{Connection, OptionalExtension, params};

    use super::StoreError;

    pub fn lookup(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT response FROM idempotency WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    pub fn remember(
        conn: &Connection,
        key: &str,
        response: &str,
        now_micros: i64,
    ) -> Result<(), StoreError> {
        conn.prepare_cached(
            "INSERT INTO idempotency (key, response, created_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![key, response, now_micros])?;
        Ok(())
    }
}

/// API keys: created, listed and revoked by the CLI (which writes the file directly, also
/// while the agent runs: WAL lets it), checked by the API. Only a SHA-256 of each key is
/// stored.
pub mod keys {
    use rusqlite::{Connection, OptionalExtension};

    use super::StoreError;

    pub fn hash(key: &str) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
            .as_ref()
            .to_vec()
    }

    /// Creates a key, returns it. It is shown once; only its hash is stored.
    pub fn create(conn: &Connection, name: &str, now_micros: i64) -> Result<String, StoreError> {
        let key = format!("edge_{}", super::random_hex(24)?);
        conn.execute(
            "INSERT INTO api_keys (hash, name, created_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![hash(&key), name, now_micros],
        )?;
        Ok(key)
    }

    /// Whether `key` is a key the CLI created and nobody revoked.
    pub fn exists(conn: &Connection, key: &str) -> Result<bool, StoreError> {
        Ok(conn
            .prepare_cached("SELECT 1 FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL")?
            .query_row([hash(key)], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// One key as `api-key list` shows it (never the key, which is not kept).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct KeyInfo {
        /// The first 8 hex digits of the key's SHA-256: tells same-named keys apart.
        pub id: String,
        pub name: String,
        /// Microseconds since the epoch.
        pub created_at: i64,
        pub revoked_at: Option<i64>,
    }

    /// Every key, oldest first.
    pub fn list(conn: &Connection) -> Result<Vec<KeyInfo>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT hash, name, created_at, revoked_at FROM api_keys ORDER BY created_at, name",
        )?;
        let rows = stmt.query_map([], |r| {
            let hash: Vec<u8> = r.get(0)?;
            Ok(KeyInfo {
                id: hash.iter().take(4).map(|b| format!("{b:02x}")).collect(),
                name: r.get(1)?,
                created_at: r.get(2)?,
                revoked_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes every live key named `name`; returns how many. A running agent refuses them
    /// within `api::KEY_RECHECK_MICROS`.
    pub fn revoke(conn: &Connection, name: &str, now_micros: i64) -> Result<usize, StoreError> {
        Ok(conn.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            rusqlite::params![name, now_micros],
        )?)
    }
}

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;
