//! Reporting rollups maintained on ingest, beyond the production sums that the ingest writes
//! itself (`crate::ingest`): equipment state timelines (time per state and reason per
//! site-local hour), lot movements for genealogy, and corrections.
//!
//! The decisions are pure and unit-tested without PostgreSQL: [`facts`] decides which facts a
//! batch adds and removes (corrections included), [`timeline`] how state changes become
//! hourly buckets. [`apply`] is the SQL shell: it loads what the decisions need, calls them,
//! and writes the result ([`production`], [`lots`], [`states`]). Only batches with state
//! changes, material movements or corrections come here; plain production counts stay on
//! the ingest's single-statement fast path.

pub mod facts;
mod lots;
mod production;
mod states;
pub mod timeline;

use std::collections::{HashMap, HashSet};

use shared_model::{Event, EventId, SiteId};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::db::HubStoreError;
use crate::db::convert::{ts_micros, uuid_micros};
pub(crate) use production::production_upsert;

/// How a site's local hours fall on the UTC time line.
#[derive(Debug, Clone)]
pub struct SiteClock {
    /// IANA time zone name, for `date_trunc` in SQL.
    pub timezone: String,
    /// The site's UTC offset modulo one hour, in microseconds (30 minutes for UTC+05:30).
    pub hour_offset_micros: i64,
}

impl SiteClock {
    /// A clock from the zone's name and its current UTC offset in seconds.
    pub fn new(timezone: String, offset_seconds: i64) -> Self {
        let hour_offset_micros = offset_seconds.rem_euclid(3600) * 1_000_000;
        debug_assert!((0..timeline::HOUR_MICROS).contains(&hour_offset_micros));
        Self {
            timezone,
            hour_offset_micros,
        }
    }

    /// A site not (yet) registered: UTC.
    pub fn utc() -> Self {
        Self::new("UTC".into(), 0)
    }

    /// The start of the site-local hour containing `t`.
    pub fn hour_of(&self, t: i64) -> i64 {
        t - (t + self.hour_offset_micros).rem_euclid(timeline::HOUR_MICROS)
    }
}

/// Applies the rollups of a batch whose rows were just inserted. `inserted` holds the ids of
/// the batch's events that were new (not duplicates) and are not plain production counts;
/// `corrected` the ids of newly inserted events for which corrections had arrived earlier.
pub async fn apply(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    clock: &SiteClock,
    batch: &[Event],
    inserted: &HashSet<Uuid>,
    corrected: &HashSet<Uuid>,
) -> Result<(), HubStoreError> {
    let by_target = facts::corrections_by_target(batch, inserted);
    // Earlier winners, read before this batch's corrections are recorded.
    let mut targets: Vec<Uuid> = by_target.keys().copied().collect();
    targets.extend(corrected.iter().copied());
    let prior_winners = load_winners(tx, site, &targets).await?;
    if !by_target.is_empty() {
        let (corrects, by): (Vec<Uuid>, Vec<Uuid>) = by_target
            .iter()
            .flat_map(|(x, cs)| cs.iter().map(|c| (*x, *c.event_id.as_uuid())))
            .unzip();
        crate::db::query(
            "INSERT INTO corrections (site_id, corrects, correction)
             SELECT $1, x, c FROM UNNEST($2::uuid[], $3::uuid[]) AS u(x, c)
             ON CONFLICT DO NOTHING",
        )
        .bind(site.as_str())
        .bind(&corrects)
        .bind(&by)
        .execute(&mut **tx)
        .await?;
    }
    // Events that arrived after their corrections: the winners including this batch's.
    let late: Vec<Uuid> = corrected.iter().copied().collect();
    let late_winners = load_winners(tx, site, &late).await?;
    // Everything the decisions look at: the corrected events and the winning corrections.
    let mut wanted: Vec<Uuid> = by_target.keys().copied().collect();
    wanted.extend(prior_winners.values().map(|w| *w.as_uuid()));
    wanted.extend(late_winners.values().map(|w| *w.as_uuid()));
    let known = facts::Known {
        events: load_events(tx, site, &wanted).await?,
        prior_winners,
        late_winners,
    };
    let plan = facts::plan(batch, inserted, corrected, &known);
    production::apply(tx, site, clock, &plan.adds, &plan.removes).await?;
    lots::apply(tx, site, &plan.adds, &plan.removes).await?;
    states::apply(tx, site, clock, &plan.adds, &plan.removes).await?;
    Ok(())
}

/// The winning stored correction of each of `ids` that has one. PostgreSQL's `uuid` order is
/// the byte order `shared_model::event::correction_supersedes` compares, so the greatest id
/// here is the model's winner.
async fn load_winners(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, EventId>, HubStoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    crate::db::query(
        "SELECT corrects, (array_agg(correction ORDER BY correction DESC))[1] AS winner FROM corrections
         WHERE site_id = $1 AND corrects = ANY($2) GROUP BY corrects",
    )
    .bind(site.as_str())
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| {
        let winner: Uuid = r.try_get("winner")?;
        let winner = EventId::new(winner)
            .map_err(|e| HubStoreError::Corrupt(format!("stored correction {winner}: {e}")))?;
        Ok((r.try_get("corrects")?, winner))
    })
    .collect()
}

/// How far before the time in its UUIDv7 an event's `occurred_at` is first looked for.
const LOOKUP_BEFORE_MICROS: i64 = 31 * 24 * 3600 * 1_000_000;
/// How far after it (edge clocks drift).
const LOOKUP_AFTER_MICROS: i64 = 24 * 3600 * 1_000_000;

/// Loads stored events by id (corrected events, winning corrections).
///
/// `events` has no index on `event_id` alone (it would cost every insert for the sake of rare
/// corrections). An event id is a UUIDv7 whose time is when the edge created it, and an event
/// is created at or after it occurred, so the key `(site_id, occurred_at, event_id)` is first
/// searched in a window before that time; what is not found there (a far backdated event, a
/// sender with a wrong clock) is searched without the window.
async fn load_events(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Event>, HubStoreError> {
    let mut out = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(out);
    }
    let lo = ids.iter().map(uuid_micros).min().unwrap_or(0) - LOOKUP_BEFORE_MICROS;
    let hi = ids.iter().map(uuid_micros).max().unwrap_or(0) + LOOKUP_AFTER_MICROS;
    let windowed = crate::db::query(
        "SELECT body FROM events
         WHERE site_id = $1 AND event_id = ANY($2) AND occurred_at >= $3 AND occurred_at <= $4",
    )
    .bind(site.as_str())
    .bind(ids)
    .bind(ts_micros(lo))
    .bind(ts_micros(hi))
    .fetch_all(&mut **tx)
    .await?;
    decode_into(&mut out, windowed)?;
    let missing: Vec<Uuid> = ids
        .iter()
        .filter(|i| !out.contains_key(i))
        .copied()
        .collect();
    if !missing.is_empty() {
        let rest =
            crate::db::query("SELECT body FROM events WHERE site_id = $1 AND event_id = ANY($2)")
                .bind(site.as_str())
                .bind(&missing)
                .fetch_all(&mut **tx)
                .await?;
        decode_into(&mut out, rest)?;
    }
    Ok(out)
}

fn decode_into(
    out: &mut HashMap<Uuid, Event>,
    rows: Vec<sqlx::postgres::PgRow>,
) -> Result<(), HubStoreError> {
    for r in rows {
        let bytes: Vec<u8> = r.try_get("body")?;
        let e: Event = postcard::from_bytes(&bytes)
            .map_err(|e| HubStoreError::Corrupt(format!("stored event does not decode: {e}")))?;
        out.insert(*e.event_id.as_uuid(), e);
    }
    Ok(())
}
