//! Versioned schema migrations, tracked in SQLite's `user_version`.
//!
//! Migrations are append-only: a released migration is never edited, a change is a new one.
//! An older binary opening a database migrated by a newer one refuses to run rather than
//! writing rows the newer schema does not expect.

use rusqlite::Connection;

use super::StoreError;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: events, the outbox, work orders, master data, API keys, idempotency keys.
    r#"
    CREATE TABLE events (
        event_id     TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        occurred_at  INTEGER NOT NULL,
        recorded_at  INTEGER NOT NULL,
        equipment    TEXT,
        work_order   TEXT,
        body         BLOB NOT NULL,          -- postcard-encoded shared_model::Event
        acked        INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX events_prune ON events (acked, recorded_at);
    CREATE INDEX events_work_order ON events (work_order) WHERE work_order IS NOT NULL;

    -- One sequence for everything that goes up: events and record changes, in commit order.
    CREATE TABLE outbox (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id     TEXT,
        record_kind  TEXT,
        record_id    TEXT,
        change       BLOB
    );

    CREATE TABLE records (
        record_kind  TEXT NOT NULL,
        record_id    TEXT NOT NULL,
        doc          BLOB NOT NULL,          -- Automerge document, saved whole
        PRIMARY KEY (record_kind, record_id)
    ) WITHOUT ROWID;

    -- Materialized from the work-order documents, for listing and filtering.
    CREATE TABLE work_orders (
        id           TEXT PRIMARY KEY,
        state        TEXT NOT NULL,
        work_unit    TEXT,
        priority     INTEGER NOT NULL,
        due          INTEGER,
        json         TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX work_orders_list ON work_orders (state, priority, due);

    CREATE TABLE master (
        kind         TEXT NOT NULL,
        key          TEXT NOT NULL,
        version      INTEGER NOT NULL,
        json         TEXT,                   -- NULL once deleted
        PRIMARY KEY (kind, key)
    ) WITHOUT ROWID;

    CREATE TABLE api_keys (
        hash         BLOB PRIMARY KEY,       -- SHA-256 of the key; the key itself is not kept
        name         TEXT NOT NULL,
        created_at   INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE idempotency (
        key          TEXT PRIMARY KEY,
        response     TEXT NOT NULL,
        created_at   INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE meta (
        key          TEXT PRIMARY KEY,
        value        TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 2: business conflicts found after merging shared records (shown to supervisors).
    r#"
    CREATE TABLE conflicts (
        id           INTEGER PRIMARY KEY,
        record_kind  TEXT NOT NULL,
        record_id    TEXT NOT NULL,
        description  TEXT NOT NULL,
        detected_at  INTEGER NOT NULL,
        resolved_at  INTEGER
    );
    CREATE UNIQUE INDEX conflicts_open_once ON conflicts (record_kind, record_id, description)
        WHERE resolved_at IS NULL;
    "#,
    // 3: the operator terminal: supervisor PINs, running totals per work order (kept in the
    // insert transaction), and the latest state of a work unit found by index.
    r#"
    CREATE TABLE pins (
        badge        TEXT PRIMARY KEY,
        salt         BLOB NOT NULL,
        hash         BLOB NOT NULL,          -- PBKDF2-HMAC-SHA256 of the PIN; the PIN is not kept
        iterations   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE order_counts (
        work_order   TEXT PRIMARY KEY,
        good         INTEGER NOT NULL DEFAULT 0,
        scrap        INTEGER NOT NULL DEFAULT 0,
        rework       INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    -- The correction in force for each corrected production count, and the counts it put in
    -- place (latest correction id wins, as at the hub).
    CREATE TABLE count_corrections (
        corrected    TEXT PRIMARY KEY,
        correction   TEXT NOT NULL,
        work_order   TEXT,
        good         INTEGER NOT NULL,
        scrap        INTEGER NOT NULL,
        rework       INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE INDEX events_equipment_latest ON events (equipment, kind, occurred_at)
        WHERE equipment IS NOT NULL;
    "#,
    // 4: an event is acknowledged when it has left the outbox; the ack no longer rewrites each
    // event row and its `events_prune` entry (a profile of a backlog drain had that at 18 % of
    // the machine's CPU). Retention finds old events by `recorded_at` and keeps any still in
    // the outbox, found by `outbox_event`. The `acked` column stays, unused: dropping it would
    // rewrite every stored event during the upgrade.
    r#"
    DROP INDEX events_prune;
    CREATE INDEX events_recorded ON events (recorded_at);
    CREATE INDEX outbox_event ON outbox (event_id);
    "#,
    // 5: credentials. API keys are revoked, not deleted (`edge-agent api-key revoke`: the row
    // says when, and `list` shows it). Wrong supervisor PINs are counted per badge here rather
    // than in memory, so neither a restart nor a flood of made-up badges clears a lock; only
    // badges of this site's personnel get a row, which bounds the table.
    r#"
    ALTER TABLE api_keys ADD COLUMN revoked_at INTEGER;
    CREATE TABLE pin_failures (
        badge            TEXT PRIMARY KEY,
        failures         INTEGER NOT NULL,   -- wrong PINs since the last lock ended
        locks            INTEGER NOT NULL,   -- locks in a row: the next lock's length
        last_failure_at  INTEGER NOT NULL,
        locked_until     INTEGER             -- NULL: not locked
    ) WITHOUT ROWID;
    "#,
    // 6: machine connectors. What each tag last left behind (a counter's reading, a state's
    // meaning) is written in the transaction of the events it produced, so a restart neither
    // repeats nor loses a delta. Notices (counter resets, unmapped state codes) are kept for the
    // API, the newest `connectors::store::NOTICES_KEPT` of them.
    r#"
    CREATE TABLE connector_tags (
        connector    TEXT NOT NULL,
        tag          TEXT NOT NULL,
        counter      INTEGER,
        last         TEXT,
        updated_at   INTEGER NOT NULL,
        PRIMARY KEY (connector, tag)
    ) WITHOUT ROWID;
    -- Messages committed and perhaps not yet acknowledged to their broker: a redelivery
    -- (MQTT's DUP flag) of one of these is acknowledged without being used again.
    CREATE TABLE connector_messages (
        connector    TEXT NOT NULL,
        digest       BLOB NOT NULL,
        at           INTEGER NOT NULL,
        PRIMARY KEY (connector, digest)
    ) WITHOUT ROWID;
    CREATE INDEX connector_messages_at ON connector_messages (at);
    -- Orders sent down to machines, and how that went (the newest per connector and unit).
    CREATE TABLE connector_writes (
        connector    TEXT NOT NULL,
        equipment    TEXT NOT NULL,
        work_order   TEXT NOT NULL,
        at           INTEGER NOT NULL,
        ok           INTEGER NOT NULL,
        error        TEXT,
        PRIMARY KEY (connector, equipment)
    ) WITHOUT ROWID;
    CREATE TABLE connector_notices (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        connector    TEXT NOT NULL,
        tag          TEXT NOT NULL,
        at           INTEGER NOT NULL,
        message      TEXT NOT NULL
    );
    "#,
    // 7: what retention pruned, per hour of recording time (issue 22). After a hub restore the
    // edge compares what it ever sent with what the hub still has (`sync_protocol::gap`); the
    // pruned events are gone, so their count and digest are kept here, in the transaction that
    // deletes them, and the edge can say exactly which hours cannot be healed any more.
    r#"
    CREATE TABLE pruned_hours (
        hour         INTEGER PRIMARY KEY,    -- start of the hour: recorded_at floored to HOUR_MICROS
        events       INTEGER NOT NULL,
        digest       INTEGER NOT NULL        -- XOR of the events' gap::event_digest, u64 bits as i64
    );
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], each migration in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Brings the database to `version` (tests build older databases with it).
pub(crate) fn migrate_to(conn: &mut Connection, version: i64) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    let wanted = version.clamp(0, SCHEMA_VERSION) as usize;
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(wanted)
        .skip(current as usize)
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
