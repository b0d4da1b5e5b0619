//! The error type of the hub's store: what ingest, record merges, site admin and master data
//! return, and how the sync session maps it to a wire error code
//! (`HubStore::error_code` in `crate::ingest`).

#[derive(Debug, thiserror::Error)]
pub enum HubStoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("record {record} belongs to another site's key space (ids must start with {site}-)")]
    ForeignRecord { site: String, record: String },
    #[error("automerge actor {actor} is bound to another site")]
    ForeignActor { actor: String },
    #[error("the document sent as {record} names {field} {found:?}; it must be the record's own")]
    MisnamedRecord {
        record: String,
        field: &'static str,
        found: String,
    },
    #[error("change for {record} does not decode: {reason}")]
    BadChange { record: String, reason: String },
    /// A change over a named limit (operations, document size) or one whose decode or merge
    /// outran `ingest::CHANGE_WORK_DEADLINE`: refused with `limit_exceeded`, nothing written.
    #[error("change for {record} refused: {reason}")]
    ChangeOverLimit { record: String, reason: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}
