//! The hub's side of finding the events it lost in a restore or a failover (issue 22,
//! `sync_protocol::gap`): a site's events summarised over spans of recording time, and the ids
//! of a span, for the edge to compare with what it sent.
//!
//! The digest is computed in SQL, the same function as [`sync_protocol::gap::event_digest`]
//! (the first 8 bytes of SHA-256 over the id's 16 bytes, big-endian, as a signed `bigint`
//! with the same bits), XOR-ed with `bit_xor`; a system test pins the two together.

use shared_model::{EventId, SiteId, Timestamp};
use sqlx::PgPool;
use sync_protocol::gap::{Span, Summary};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::convert::ts;
use crate::db::{HubStoreError, scoped, timed};

/// Most spans summarised by one statement, as on the edge (`edge_agent::store::gap`).
pub const GAP_SPANS_MAX: usize = 64;
/// Most ids listed in one page.
pub const GAP_IDS_MAX: usize = 10_000;

/// One pass over the site's events between the outermost bounds: each event falls in the
/// bucket between two consecutive bounds of all the spans (`width_bucket` over the sorted,
/// distinct bounds `$2`), and each span sums the buckets it covers. So 64 spans cost one scan,
/// not 64 (the events table has no index on `recorded_at`: a site's partitions are read once).
/// `site_id = $1` prunes the `LIST (site_id)` partitions; row-level security would confine the
/// rows to the site anyway.
const SUMMARIES_SQL: &str = r#"
SELECT width_bucket(e.recorded_at, $2::timestamptz[]) AS k,
       count(*) AS events,
       bit_xor(('x' || encode(substr(sha256(uuid_send(e.event_id)), 1, 8), 'hex'))::bit(64)::bigint) AS digest
FROM events e
WHERE e.site_id = $1 AND e.recorded_at >= $3 AND e.recorded_at < $4
GROUP BY 1
"#;

/// The ids of one span after `$4` (NULL: from the start), ascending as bytes.
const IDS_SQL: &str = r#"
SELECT event_id FROM events
WHERE site_id = $1 AND recorded_at >= $2 AND recorded_at < $3
  AND ($4::uuid IS NULL OR event_id > $4::uuid)
ORDER BY event_id
LIMIT $5
"#;

/// The latest instant a `timestamptz` parameter carries faithfully ([`ts`] turns anything past
/// year 9999 into the epoch, which would silently empty a span meant to cover everything).
const SPAN_BOUND_MICROS_MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
/// The earliest one (year 1): a span bound is clamped into the range, not refused.
const SPAN_BOUND_MICROS_MIN: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z

fn bound(t: Timestamp) -> OffsetDateTime {
    ts(Timestamp::from_micros(
        t.as_micros()
            .clamp(SPAN_BOUND_MICROS_MIN, SPAN_BOUND_MICROS_MAX),
    ))
}

fn over_limit(what: &str, n: usize, max: usize) -> HubStoreError {
    HubStoreError::Db(sqlx::Error::InvalidArgument(format!(
        "{n} {what} asked, at most {max} per call"
    )))
}

/// The count and digest of the site's events in each span, in one statement, in the order
/// of `spans` (at most [`GAP_SPANS_MAX`]).
pub async fn summaries(
    pool: &PgPool,
    site: &SiteId,
    spans: &[Span],
) -> Result<Vec<Summary>, HubStoreError> {
    if spans.len() > GAP_SPANS_MAX {
        return Err(over_limit("spans", spans.len(), GAP_SPANS_MAX));
    }
    if spans.is_empty() {
        return Ok(Vec::new());
    }
    // The buckets: every span's bounds, sorted and distinct (clamped as the statement sees
    // them, so a span and its bucket agree).
    let clamp = |t: Timestamp| {
        t.as_micros()
            .clamp(SPAN_BOUND_MICROS_MIN, SPAN_BOUND_MICROS_MAX)
    };
    let mut bounds: Vec<i64> = spans
        .iter()
        .flat_map(|s| [clamp(s.from), clamp(s.to)])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let (first, last) = match (bounds.first(), bounds.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => return Ok(Vec::new()),
    };
    let thresholds: Vec<OffsetDateTime> = bounds
        .iter()
        .map(|b| ts(Timestamp::from_micros(*b)))
        .collect();
    let mut tx = scoped(pool, site).await?;
    let rows: Vec<(i32, i64, i64)> = timed(
        "gap_summaries",
        crate::db::query_as(SUMMARIES_SQL)
            .bind(site.as_str())
            .bind(&thresholds)
            .bind(ts(Timestamp::from_micros(first)))
            .bind(ts(Timestamp::from_micros(last)))
            .fetch_all(&mut *tx),
    )
    .await?;
    tx.commit().await?;
    // Bucket k (1-based) holds bounds[k-1] ≤ recorded_at < bounds[k]; the WHERE keeps every
    // event inside 1..bounds.len()-1. Validate what was read before trusting it.
    let mut buckets = vec![Summary::default(); bounds.len()];
    for (k, events, digest) in rows {
        let slot = usize::try_from(k)
            .ok()
            .filter(|k| (1..bounds.len()).contains(k))
            .ok_or_else(|| HubStoreError::Corrupt(format!("gap bucket {k} of {}", bounds.len())))?;
        let events = u64::try_from(events)
            .map_err(|_| HubStoreError::Corrupt(format!("gap bucket {k} counts {events}")))?;
        // The same bits: SQL has no unsigned 64-bit type.
        buckets[slot] = Summary {
            events,
            digest: digest as u64,
        };
    }
    let index = |t: i64| bounds.binary_search(&t).unwrap_or_else(|i| i);
    Ok(spans
        .iter()
        .map(|s| {
            // The buckets from the span's start up to its end; none for an inverted span.
            let (from, to) = (index(clamp(s.from)), index(clamp(s.to)));
            buckets
                .get(from + 1..=to)
                .unwrap_or_default()
                .iter()
                .fold(Summary::default(), |acc, b| acc.combine(*b))
        })
        .collect())
}

/// The ids of the site's events in `span`, ascending, after `after`, at most `limit`
/// (≤ [`GAP_IDS_MAX`]).
pub async fn event_ids_in(
    pool: &PgPool,
    site: &SiteId,
    span: Span,
    after: Option<EventId>,
    limit: usize,
) -> Result<Vec<EventId>, HubStoreError> {
    if limit > GAP_IDS_MAX {
        return Err(over_limit("ids", limit, GAP_IDS_MAX));
    }
    let mut tx = scoped(pool, site).await?;
    let ids: Vec<Uuid> = timed(
        "gap_event_ids",
        crate::db::query_scalar(IDS_SQL)
            .bind(site.as_str())
            .bind(bound(span.from))
            .bind(bound(span.to))
            .bind(after.map(|a| *a.as_uuid()))
            .bind(limit as i64)
            .fetch_all(&mut *tx),
    )
    .await?;
    tx.commit().await?;
    ids.into_iter()
        .map(|u| {
            EventId::new(u).map_err(|e| HubStoreError::Corrupt(format!("stored event id {u}: {e}")))
        })
        .collect()
}
