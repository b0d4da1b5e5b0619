//! The old home of the hub's store, kept only so that call sites outside this change keep
//! compiling until they are moved (then delete this file): the `HubStore` implementation is
//! `crate::ingest`, site admin `crate::db::sites`, the error type `crate::db::error`, NOTIFY
//! `crate::db::channels`, time conversion `crate::db::convert`, transactions `crate::db::tx`.

pub use super::channels::{DATA_CHANNEL, notify_data, notify_down};
pub use super::convert::ts;
pub use super::error::HubStoreError;
pub use super::sites::{
    PARTITION_MONTHS_AHEAD, SPLIT_MONTHS_PER_RUN_MAX, SplitMonth, add_site, ensure_partitions,
    split_default,
};
pub use super::tx::scoped;
pub use crate::ingest::{CHANGE_WORK_DEADLINE, PgHubStore, SPLIT_INGEST_MIN, load_record};
