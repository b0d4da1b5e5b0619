//! Finding the events a hub lost (after a restore or a failover) without sending them all.
//!
//! Both ends summarise a site's events over a span of **recording times** (`recorded_at`, the
//! edge's clock when it stored the event, which both ends hold and which the edge's retention
//! prunes by): how many, and the XOR of a 64-bit digest of each event id. Equal summaries mean
//! equal sets, up to a 2⁻⁶⁴ chance; unequal spans are split and compared again, top-down, until
//! a span is small enough to list the hub's ids, and the edge sends exactly the events the hub
//! lacks. The hub computes the same digest in SQL (`central_hub`'s gap queries), pinned to
//! [`event_digest`] by a test.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared_model::{EventId, Timestamp};

/// One hour in microseconds: the edge remembers what its retention pruned per hour of recording
/// time, so spans that hold pruned events are never split below an hour.
pub const HOUR_MICROS: i64 = 3_600_000_000;

/// A half-open span of recording times, `from ≤ recorded_at < to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub from: Timestamp,
    pub to: Timestamp,
}

impl Span {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.from <= t && t < self.to
    }

    pub fn micros(&self) -> i64 {
        self.to.as_micros().saturating_sub(self.from.as_micros())
    }
}

/// How many events a span holds and the XOR of their [`event_digest`]s: adding an event and
/// combining two disjoint summaries commute, so either end can sum in any order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub events: u64,
    pub digest: u64,
}

impl Summary {
    pub fn add(&mut self, id: &EventId) {
        self.events += 1;
        self.digest ^= event_digest(id);
    }

    #[must_use]
    pub fn combine(self, other: Summary) -> Summary {
        Summary {
            events: self.events + other.events,
            digest: self.digest ^ other.digest,
        }
    }
}

impl<'a> FromIterator<&'a EventId> for Summary {
    fn from_iter<I: IntoIterator<Item = &'a EventId>>(ids: I) -> Self {
        let mut s = Summary::default();
        for id in ids {
            s.add(id);
        }
        s
    }
}

/// The edge's side of a span: the events it still holds, and those its retention pruned
/// (remembered per hour; counted in a span when the hour starts inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeSummary {
    pub held: Summary,
    pub pruned: Summary,
}

impl EdgeSummary {
    /// Everything the edge ever had in the span.
    pub fn total(&self) -> Summary {
        self.held.combine(self.pruned)
    }
}

/// The first 8 bytes, big-endian, of SHA-256 over the id's 16 bytes. In SQL:
/// `('x' || encode(substr(sha256(uuid_send(event_id)), 1, 8), 'hex'))::bit(64)::bigint`.
pub fn event_digest(id: &EventId) -> u64 {
    let hash = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> EventId {
        EventId::from_parts(1_700_000_000_000 + u64::from(n), [n; 10])
    }

    #[test]
    fn summaries_do_not_depend_on_order_or_grouping() {
        let ids: Vec<EventId> = (0..20).map(id).collect();
        let all: Summary = ids.iter().collect();
        let rev: Summary = ids.iter().rev().collect();
        let halves = ids[..7]
            .iter()
            .collect::<Summary>()
            .combine(ids[7..].iter().collect());
        assert_eq!(all, rev);
        assert_eq!(all, halves);
        assert_eq!(all.events, 20);
        let missing_one: Summary = ids[1..].iter().collect();
        assert_ne!(all.digest, missing_one.digest);
    }

    #[test]
    fn the_digest_is_pinned() {
        // The hub's SQL must give the same value (its test uses this id too); computed with
        // Python's hashlib: sha256(uuid.bytes)[:8], big-endian.
        let e = "0190f5c4-8a2b-7c3d-9e4f-a1b2c3d4e5f6"
            .parse::<EventId>()
            .unwrap();
        assert_eq!(event_digest(&e), 0xf668_efff_0736_a189);
    }
}
