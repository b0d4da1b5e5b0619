//! Conversions between the domain's types and PostgreSQL's columns: instants (microseconds
//! since the epoch ↔ `timestamptz`), record kinds (↔ `record_kind` text), and the creation
//! time an edge wrote into a UUIDv7 event id.

use sync_protocol::message::RecordKind;
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::HubStoreError;

/// A domain instant as a `timestamptz` parameter. Out of range (beyond year 9999) becomes the
/// epoch: a timestamp never fails a statement.
pub fn ts(t: shared_model::Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Microseconds since the epoch as a `timestamptz` parameter.
pub fn ts_micros(micros: i64) -> OffsetDateTime {
    ts(shared_model::Timestamp::from_micros(micros))
}

/// A `timestamptz` column as microseconds since the epoch (saturating).
pub fn micros_of(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// The `record_kind` column's value for a kind (the model's name for it).
pub fn kind_str(kind: RecordKind) -> &'static str {
    kind.as_str()
}

/// A stored `record_kind`; anything else is corrupt data.
pub fn parse_kind(s: &str) -> Result<RecordKind, HubStoreError> {
    RecordKind::parse(s).ok_or_else(|| HubStoreError::Corrupt(format!("unknown record kind {s:?}")))
}

/// The creation time an edge wrote into a UUIDv7 event id, in microseconds.
pub fn uuid_micros(id: &Uuid) -> i64 {
    let b = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    i64::try_from(u64::from_be_bytes(ms))
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_time_is_the_creation_millis() {
        let id = shared_model::EventId::from_parts(1_795_000_000_123, [7; 10]);
        assert_eq!(uuid_micros(id.as_uuid()), 1_795_000_000_123_000);
    }

    #[test]
    fn record_kinds_round_trip() {
        for kind in RecordKind::ALL {
            assert_eq!(parse_kind(kind_str(kind)).unwrap(), kind);
        }
        assert!(matches!(parse_kind("x"), Err(HubStoreError::Corrupt(_))));
    }

    #[test]
    fn instants_round_trip() {
        let t = 1_795_000_000_123_456;
        assert_eq!(micros_of(ts_micros(t)), t);
    }
}
