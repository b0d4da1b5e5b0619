//! Timestamps: microseconds since the Unix epoch, UTC.
//!
//! On the wire (postcard, not human-readable) a timestamp is a plain `i64` varint; in JSON it
//! is an RFC 3339 string. The model never reads the clock: callers pass `now` in.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time with microsecond resolution.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// The earliest timestamp the model accepts for a fact: 2000-01-01T00:00:00Z. Anything earlier
/// is an unset RTC on a PLC, not a real production event.
pub const TIMESTAMP_MIN: Timestamp = Timestamp(946_684_800_000_000);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 timestamp: {0}")]
pub struct TimestampParseError(String);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn from_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(1000))
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub const fn saturating_add_micros(self, micros: i64) -> Self {
        Self(self.0.saturating_add(micros))
    }

    /// Microseconds from `earlier` to `self`, negative when `earlier` is later.
    pub const fn micros_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn parse_rfc3339(s: &str) -> Result<Self, TimestampParseError> {
        let dt = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| TimestampParseError(format!("{s:?}: {e}")))?;
        let nanos = dt.unix_timestamp_nanos();
        let micros = i64::try_from(nanos.div_euclid(1000))
            .map_err(|_| TimestampParseError(format!("{s:?}: out of range")))?;
        Ok(Self(micros))
    }

    /// RFC 3339 in UTC with microseconds, or the raw number if it is outside what `time` can
    /// represent (it never is for a validated event).
    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .ok()
            .and_then(|dt| dt.format(&Rfc3339).ok())
            .unwrap_or_else(|| format!("@{}us", self.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_rfc3339())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Self::parse_rfc3339(&s).map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(d).map(Self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-28T06:00:00.123456Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-28T06:00:00.123456Z");
        let offset = Timestamp::parse_rfc3339("2026-11-28T07:00:00+01:00").unwrap();
        assert_eq!(offset.to_rfc3339(), "2026-11-28T06:00:00Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert_eq!(TIMESTAMP_MIN.to_rfc3339(), "2000-01-01T00:00:00Z");
    }

    #[test]
    fn json_is_text_and_postcard_is_a_number() {
        let t = Timestamp::from_millis(1_764_309_600_000);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2025-11-28T06:00:00Z\""
        );
        let bytes = postcard::to_stdvec(&t).unwrap();
        assert!(bytes.len() <= 9);
        assert_eq!(postcard::from_bytes::<Timestamp>(&bytes).unwrap(), t);
    }
}
