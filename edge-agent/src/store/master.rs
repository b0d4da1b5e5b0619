//! The `master` table: the edge's copy of the hub's master data, one row per kind and key
//! with the hub's version (a deleted record keeps its row with no JSON). Lives beneath
//! `events`, `people` and `records`, which check references against it; the file import
//! around it is in [`crate::master`].

use rusqlite::{Connection, OptionalExtension, params};
use shared_model::master::{MasterKind, MasterRecord};

use super::StoreError;

/// The JSON of the live (not deleted) record of `kind` under `key`, if held.
pub fn json(conn: &Connection, kind: MasterKind, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT json FROM master WHERE kind = ?1 AND key = ?2 AND json IS NOT NULL",
        )?
        .query_row(params![kind.as_str(), key], |r| r.get(0))
        .optional()?)
}

/// Whether a live record of `kind` under `key` is held: the reference check of events and
/// work orders.
pub fn exists(conn: &Connection, kind: MasterKind, key: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM master WHERE kind = ?1 AND key = ?2 AND json IS NOT NULL")?
        .query_row(params![kind.as_str(), key], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Stores a version of a record unless a newer one is already there.
pub fn upsert(conn: &Connection, version: u64, record: &MasterRecord) -> Result<(), StoreError> {
    let json = serde_json::to_string(record)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode master record: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO master (kind, key, version, json) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, key) DO UPDATE SET version = excluded.version, json = excluded.json
         WHERE excluded.version >= master.version",
    )?
    .execute(params![
        record.kind().as_str(),
        record.key(),
        version as i64,
        json
    ])?;
    Ok(())
}

pub fn delete(
    conn: &Connection,
    version: u64,
    kind: MasterKind,
    key: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO master (kind, key, version, json) VALUES (?1, ?2, ?3, NULL)
         ON CONFLICT (kind, key) DO UPDATE SET version = excluded.version, json = NULL
         WHERE excluded.version >= master.version",
    )?
    .execute(params![kind.as_str(), key, version as i64])?;
    Ok(())
}

/// Imports records locally. A local import has no hub version: it uses version 0, so any
/// version the hub sends later replaces it.
pub fn import(
    conn: &mut Connection,
    records: &[MasterRecord],
) -> Result<Vec<(MasterKind, usize)>, StoreError> {
    let tx = conn.transaction()?;
    let mut counts: Vec<(MasterKind, usize)> = MasterKind::ALL.iter().map(|k| (*k, 0)).collect();
    for r in records {
        upsert(&tx, 0, r)?;
        if let Some(c) = counts.iter_mut().find(|(k, _)| *k == r.kind()) {
            c.1 += 1;
        }
    }
    tx.commit()?;
    Ok(counts)
}
