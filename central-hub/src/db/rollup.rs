//! Reporting rollups maintained on ingest, beyond the production counts that the ingest
//! statement itself rolls up: equipment state timelines (time per state and reason per
//! site-local hour), lot movements for genealogy, and corrections.
//!
//! Everything here works on *facts*: what one event (or the replacement of the correction that
//! won for it) contributes to the rollups. A correction removes the corrected event's facts and
//! adds its replacement's at the corrected event's time; the rules are in `docs/reports.md`.
//! Only batches with state changes, material movements or corrections come here; plain
//! production counts stay on the single-statement fast path.

use std::collections::{BTreeMap, HashMap, HashSet};

use shared_model::event::{MaterialMovement, ProductionCount, Replacement};
use shared_model::{Event, EventBody, SiteId, Timestamp};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::store::HubStoreError;

/// A stop shorter than this is a small stop: a performance loss, not an availability loss.
pub const SMALL_STOP_MICROS: i64 = 120 * 1_000_000;
const HOUR_MICROS: i64 = 3_600 * 1_000_000;

/// How a site's local hours fall on the UTC time line.
#[derive(Debug, Clone)]
pub struct SiteClock {
    /// IANA time zone name, for `date_trunc` in SQL.
    pub timezone: String,
    /// The site's UTC offset modulo one hour, in microseconds (30 minutes for UTC+05:30).
    pub hour_offset_micros: i64,
}

impl SiteClock {
    /// The start of the site-local hour containing `t`.
    pub fn hour_of(&self, t: i64) -> i64 {
        t - (t + self.hour_offset_micros).rem_euclid(HOUR_MICROS)
    }
}

/// What one fact contributes.
#[derive(Debug, Clone)]
enum FactBody {
    Production(ProductionCount),
    State {
        equipment: String,
        state: &'static str,
        reason: Option<String>,
    },
    Lot {
        direction: &'static str,
        movement: MaterialMovement,
    },
}

#[derive(Debug, Clone)]
struct Fact {
    id: Uuid,
    at: Timestamp,
    body: FactBody,
}

/// A replacement's facts take the corrected event's place: its time *and* its id, which orders
/// simultaneous state changes and names the fact when a later correction swaps it again.
fn facts_of_replacement(id: Uuid, at: Timestamp, r: &Replacement) -> Option<Fact> {
    facts_of_body(id, at, &r.to_body())
}

fn facts_of_body(id: Uuid, at: Timestamp, body: &EventBody) -> Option<Fact> {
    let body = match body {
        EventBody::ProductionCount(p) => FactBody::Production(p.clone()),
        EventBody::EquipmentState(s) => FactBody::State {
            equipment: s.equipment.to_string(),
            state: s.state.as_str(),
            reason: s.reason.as_ref().map(|r| r.to_string()),
        },
        EventBody::MaterialConsumed(m) => FactBody::Lot {
            direction: "consumed",
            movement: m.clone(),
        },
        EventBody::MaterialProduced(m) => FactBody::Lot {
            direction: "produced",
            movement: m.clone(),
        },
        EventBody::QualitySample(_) | EventBody::OperatorClock(_) | EventBody::Correction(_) => {
            return None;
        }
    };
    Some(Fact { id, at, body })
}

/// How far before the time in its UUIDv7 an event's `occurred_at` is first looked for.
const LOOKUP_BEFORE_MICROS: i64 = 31 * 24 * 3600 * 1_000_000;
/// How far after it (edge clocks drift).
const LOOKUP_AFTER_MICROS: i64 = 24 * 3600 * 1_000_000;

/// The creation time an edge wrote into a UUIDv7 event id, in microseconds.
fn uuid_micros(id: &Uuid) -> i64 {
    let b = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    i64::try_from(u64::from_be_bytes(ms))
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

/// Loads stored events by id (corrected events, earlier winning corrections).
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
    .bind(crate::db::store::ts(Timestamp::from_micros(lo)))
    .bind(crate::db::store::ts(Timestamp::from_micros(hi)))
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
    let mut adds: Vec<Fact> = Vec::new();
    let mut removes: Vec<Fact> = Vec::new();

    // Corrections of this batch, grouped by the event they correct.
    let mut batch_corrections: BTreeMap<Uuid, Vec<&Event>> = BTreeMap::new();
    for e in batch {
        let id = *e.event_id.as_uuid();
        if let EventBody::Correction(c) = &e.body
            && inserted.contains(&id)
        {
            batch_corrections
                .entry(*c.corrects.as_uuid())
                .or_default()
                .push(e);
        }
    }

    // Earlier winners, before this batch's corrections are recorded.
    let mut targets: Vec<Uuid> = batch_corrections.keys().copied().collect();
    targets.extend(corrected.iter().copied());
    let prior = load_winners(tx, site, &targets).await?;
    if !batch_corrections.is_empty() {
        let (corrects, by): (Vec<Uuid>, Vec<Uuid>) = batch_corrections
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

    // Everything we need to look at: the corrected events, and earlier winning corrections.
    let mut wanted: Vec<Uuid> = batch_corrections.keys().copied().collect();
    wanted.extend(prior.values().copied());
    let stored = load_events(tx, site, &wanted).await?;
    let batch_by_id: HashMap<Uuid, &Event> =
        batch.iter().map(|e| (*e.event_id.as_uuid(), e)).collect();
    let find = |id: &Uuid| stored.get(id).or_else(|| batch_by_id.get(id).copied());
    let replacement_of = |c: &Event| match &c.body {
        EventBody::Correction(c) => c.replacement.clone(),
        _ => None,
    };

    // Plain new events: their own facts (production counts were rolled up by the ingest
    // statement already), unless a correction had arrived first.
    for e in batch {
        let id = *e.event_id.as_uuid();
        // Skipped when corrected: by an earlier correction (below, the winner stands in) or by
        // one in this batch (its loop swaps the facts).
        if !inserted.contains(&id) || corrected.contains(&id) || batch_corrections.contains_key(&id)
        {
            continue;
        }
        if let Some(f) = facts_of_body(id, e.occurred_at, &e.body)
            && !matches!(f.body, FactBody::Production(_))
        {
            adds.push(f);
        }
    }

    // Events that arrived after their corrections: the winning replacement stands in.
    let late: Vec<Uuid> = corrected.iter().copied().collect();
    let winners_of_late = load_winners(tx, site, &late).await?;
    let late_winners: Vec<Uuid> = winners_of_late.values().copied().collect();
    let late_winner_events = load_events(tx, site, &late_winners).await?;
    for x in corrected {
        let Some(e) = batch_by_id.get(x) else {
            continue;
        };
        if matches!(e.body, EventBody::Correction(_)) {
            continue;
        }
        if let Some(w) = winners_of_late.get(x)
            && let Some(wc) = late_winner_events
                .get(w)
                .or_else(|| batch_by_id.get(w).copied())
            && let Some(r) = replacement_of(wc)
            && let Some(f) = facts_of_replacement(*x, e.occurred_at, &r)
        {
            adds.push(f);
        }
    }

    // Corrections of events already known: swap the old effective fact for the new one.
    for (x, cs) in &batch_corrections {
        if corrected.contains(x) {
            // Handled above (the corrected event came in this very batch after them).
            continue;
        }
        let Some(target) = find(x) else {
            continue; // not here yet: applied when it arrives
        };
        if matches!(target.body, EventBody::Correction(_)) {
            continue; // corrections of corrections have no effect
        }
        let prev = prior.get(x).copied();
        let best_new = cs.iter().map(|c| *c.event_id.as_uuid()).max();
        let Some(best_new) = best_new else { continue };
        if prev.is_some_and(|p| p >= best_new) {
            continue; // an earlier-arrived, later-issued correction still wins
        }
        let at = target.occurred_at;
        match prev {
            Some(p) => {
                if let Some(pc) = find(&p)
                    && let Some(r) = replacement_of(pc)
                    && let Some(f) = facts_of_replacement(*x, at, &r)
                {
                    removes.push(f);
                }
            }
            None => {
                // A non-production event of this very batch never had its facts added.
                let added =
                    !inserted.contains(x) || matches!(target.body, EventBody::ProductionCount(_));
                if added && let Some(f) = facts_of_body(*x, at, &target.body) {
                    removes.push(f);
                }
            }
        }
        if let Some(wc) = batch_by_id.get(&best_new)
            && let Some(r) = replacement_of(wc)
            && let Some(f) = facts_of_replacement(*x, at, &r)
        {
            adds.push(f);
        }
    }

    apply_production(tx, site, clock, &adds, &removes).await?;
    apply_lots(tx, site, &adds, &removes).await?;
    apply_states(tx, site, clock, &adds, &removes).await?;
    Ok(())
}

async fn load_winners(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Uuid>, HubStoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(crate::db::query(
        "SELECT corrects, (array_agg(correction ORDER BY correction DESC))[1] AS winner FROM corrections
         WHERE site_id = $1 AND corrects = ANY($2) GROUP BY corrects",
    )
    .bind(site.as_str())
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("corrects")?, r.try_get("winner")?)))
    .collect::<Result<_, sqlx::Error>>()?)
}

async fn apply_production(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    clock: &SiteClock,
    adds: &[Fact],
    removes: &[Fact],
) -> Result<(), HubStoreError> {
    let mut at = Vec::new();
    let mut equipment = Vec::new();
    let mut work_order = Vec::new();
    let mut reason = Vec::new();
    let mut good = Vec::new();
    let mut scrap = Vec::new();
    let mut events = Vec::new();
    for (sign, facts) in [(1i64, adds), (-1i64, removes)] {
        for f in facts {
            if let FactBody::Production(p) = &f.body {
                at.push(crate::db::store::ts(f.at));
                equipment.push(p.equipment.to_string());
                work_order.push(
                    p.work_order
                        .as_ref()
                        .map_or(String::new(), |w| w.to_string()),
                );
                reason.push(
                    p.scrap_reason
                        .as_ref()
                        .map_or(String::new(), |r| r.to_string()),
                );
                good.push(sign * i64::from(p.good));
                scrap.push(sign * i64::from(p.scrap));
                events.push(sign);
            }
        }
    }
    if at.is_empty() {
        return Ok(());
    }
    crate::db::query(
        "INSERT INTO production_hourly AS p
             (site_id, hour, equipment, work_order, scrap_reason, good, scrap, events)
         SELECT $1, date_trunc('hour', u.at, $2), u.eq, u.wo, u.reason, sum(u.good), sum(u.scrap),
                sum(u.n)
         FROM UNNEST($3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::int8[],
                     $8::int8[], $9::int8[]) AS u(at, eq, wo, reason, good, scrap, n)
         GROUP BY 2, 3, 4, 5
         ON CONFLICT (site_id, hour, equipment, work_order, scrap_reason) DO UPDATE
             SET good = p.good + excluded.good, scrap = p.scrap + excluded.scrap,
                 events = p.events + excluded.events",
    )
    .bind(site.as_str())
    .bind(&clock.timezone)
    .bind(&at)
    .bind(&equipment)
    .bind(&work_order)
    .bind(&reason)
    .bind(&good)
    .bind(&scrap)
    .bind(&events)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn apply_lots(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    adds: &[Fact],
    removes: &[Fact],
) -> Result<(), HubStoreError> {
    let gone: Vec<Uuid> = removes
        .iter()
        .filter(|f| matches!(f.body, FactBody::Lot { .. }))
        .map(|f| f.id)
        .collect();
    if !gone.is_empty() {
        crate::db::query("DELETE FROM lot_movements WHERE site_id = $1 AND fact_id = ANY($2)")
            .bind(site.as_str())
            .bind(&gone)
            .execute(&mut **tx)
            .await?;
    }
    let mut ids = Vec::new();
    let mut direction = Vec::new();
    let mut lot = Vec::new();
    let mut material = Vec::new();
    let mut quantity = Vec::new();
    let mut work_order: Vec<Option<String>> = Vec::new();
    let mut at = Vec::new();
    for f in adds {
        if let FactBody::Lot {
            direction: d,
            movement: m,
        } = &f.body
        {
            ids.push(f.id);
            direction.push(*d);
            lot.push(m.lot.to_string());
            material.push(m.material.to_string());
            quantity.push(m.quantity);
            work_order.push(m.work_order.as_ref().map(|w| w.to_string()));
            at.push(crate::db::store::ts(f.at));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    crate::db::query(
        "INSERT INTO lot_movements (site_id, fact_id, direction, lot, material, quantity,
                                    work_order, occurred_at)
         SELECT $1, u.* FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::float8[], $7::text[], $8::timestamptz[]) AS u
         ON CONFLICT DO NOTHING",
    )
    .bind(site.as_str())
    .bind(&ids)
    .bind(&direction)
    .bind(&lot)
    .bind(&material)
    .bind(&quantity)
    .bind(&work_order)
    .bind(&at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One point of a state timeline.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    at: i64,
    id: Uuid,
    state: String,
    reason: Option<String>,
}

/// (equipment, hour, state, reason, small)
type Bucket = (String, i64, String, String, bool);

/// Adds (sign 1) or subtracts (-1) the closed intervals of `points` (sorted) to `acc`. The
/// last point's interval is open and is not rolled up.
fn contribute(
    acc: &mut HashMap<Bucket, (i64, i64)>,
    clock: &SiteClock,
    equipment: &str,
    points: &[Point],
    sign: i64,
) {
    for w in points.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (start, end) = (a.at, b.at);
        if end <= start {
            continue; // zero-length intervals are ignored
        }
        let small = a.state != "running" && end - start < SMALL_STOP_MICROS;
        let reason = a.reason.clone().unwrap_or_default();
        let mut h = clock.hour_of(start);
        let mut first = true;
        while h < end {
            let lo = start.max(h);
            let hi = end.min(h + HOUR_MICROS);
            let e = acc
                .entry((
                    equipment.to_owned(),
                    h,
                    a.state.clone(),
                    reason.clone(),
                    small,
                ))
                .or_insert((0, 0));
            e.0 += sign * (hi - lo);
            if first {
                e.1 += sign;
                first = false;
            }
            h += HOUR_MICROS;
        }
    }
}

async fn apply_states(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    clock: &SiteClock,
    adds: &[Fact],
    removes: &[Fact],
) -> Result<(), HubStoreError> {
    // Edits per equipment: (point, insert?)
    let mut edits: BTreeMap<String, Vec<(Point, bool)>> = BTreeMap::new();
    for (insert, facts) in [(false, removes), (true, adds)] {
        for f in facts {
            if let FactBody::State {
                equipment,
                state,
                reason,
            } = &f.body
            {
                edits.entry(equipment.clone()).or_default().push((
                    Point {
                        at: f.at.as_micros(),
                        id: f.id,
                        state: (*state).to_owned(),
                        reason: reason.clone(),
                    },
                    insert,
                ));
            }
        }
    }
    let mut acc: HashMap<Bucket, (i64, i64)> = HashMap::new();
    for (equipment, list) in &edits {
        // Two instances ingesting for one site must not interleave their view of a timeline.
        crate::db::query("SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))")
            .bind(site.as_str())
            .bind(equipment)
            .execute(&mut **tx)
            .await?;
        let lo = list.iter().map(|(p, _)| p.at).min().unwrap_or(0);
        let hi = list.iter().map(|(p, _)| p.at).max().unwrap_or(0);
        let rows = crate::db::query(
            "SELECT at, fact_id, state, reason FROM state_changes
             WHERE site_id = $1 AND equipment = $2
               AND at >= coalesce((SELECT max(at) FROM state_changes
                                   WHERE site_id = $1 AND equipment = $2 AND at < $3), $3)
               AND at <= coalesce((SELECT min(at) FROM state_changes
                                   WHERE site_id = $1 AND equipment = $2 AND at > $4), 'infinity')
             ORDER BY at, fact_id",
        )
        .bind(site.as_str())
        .bind(equipment)
        .bind(crate::db::store::ts(Timestamp::from_micros(lo)))
        .bind(crate::db::store::ts(Timestamp::from_micros(hi)))
        .fetch_all(&mut **tx)
        .await?;
        let mut old = Vec::with_capacity(rows.len());
        for r in rows {
            let at: time::OffsetDateTime = r.try_get("at")?;
            old.push(Point {
                at: i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX),
                id: r.try_get("fact_id")?,
                state: r.try_get("state")?,
                reason: r.try_get("reason")?,
            });
        }
        let removed: HashSet<(i64, Uuid)> = list
            .iter()
            .filter(|(_, ins)| !ins)
            .map(|(p, _)| (p.at, p.id))
            .collect();
        let mut new: Vec<Point> = old
            .iter()
            .filter(|p| !removed.contains(&(p.at, p.id)))
            .cloned()
            .collect();
        for (p, ins) in list {
            if *ins && !new.iter().any(|q| q.at == p.at && q.id == p.id) {
                new.push(p.clone());
            }
        }
        new.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        contribute(&mut acc, clock, equipment, &old, -1);
        contribute(&mut acc, clock, equipment, &new, 1);
        // Without a later point the window reaches the end of the timeline: its last point is
        // the current state.
        let at_end: bool = crate::db::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM state_changes
                                WHERE site_id = $1 AND equipment = $2 AND at > $3)",
        )
        .bind(site.as_str())
        .bind(equipment)
        .bind(crate::db::store::ts(Timestamp::from_micros(hi)))
        .fetch_one(&mut **tx)
        .await?;
        if at_end {
            match new.last() {
                Some(last) => {
                    crate::db::query(
                        "INSERT INTO state_current (site_id, equipment, at, state, reason)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (site_id, equipment) DO UPDATE
                             SET at = excluded.at, state = excluded.state, reason = excluded.reason",
                    )
                    .bind(site.as_str())
                    .bind(equipment)
                    .bind(crate::db::store::ts(Timestamp::from_micros(last.at)))
                    .bind(&last.state)
                    .bind(&last.reason)
                    .execute(&mut **tx)
                    .await?;
                }
                None => {
                    crate::db::query(
                        "DELETE FROM state_current WHERE site_id = $1 AND equipment = $2",
                    )
                    .bind(site.as_str())
                    .bind(equipment)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }

        let gone: Vec<(i64, Uuid)> = removed.into_iter().collect();
        if !gone.is_empty() {
            let (ats, ids): (Vec<_>, Vec<_>) = gone
                .iter()
                .map(|(a, i)| (crate::db::store::ts(Timestamp::from_micros(*a)), *i))
                .unzip();
            crate::db::query(
                "DELETE FROM state_changes s USING UNNEST($3::timestamptz[], $4::uuid[]) AS u(at, id)
                 WHERE s.site_id = $1 AND s.equipment = $2 AND s.at = u.at AND s.fact_id = u.id",
            )
            .bind(site.as_str())
            .bind(equipment)
            .bind(&ats)
            .bind(&ids)
            .execute(&mut **tx)
            .await?;
        }
        let ins: Vec<&Point> = list.iter().filter(|(_, i)| *i).map(|(p, _)| p).collect();
        if !ins.is_empty() {
            let ats: Vec<_> = ins
                .iter()
                .map(|p| crate::db::store::ts(Timestamp::from_micros(p.at)))
                .collect();
            let ids: Vec<Uuid> = ins.iter().map(|p| p.id).collect();
            let states: Vec<&str> = ins.iter().map(|p| p.state.as_str()).collect();
            let reasons: Vec<Option<&str>> = ins.iter().map(|p| p.reason.as_deref()).collect();
            crate::db::query(
                "INSERT INTO state_changes (site_id, equipment, at, fact_id, state, reason)
                 SELECT $1, $2, u.* FROM UNNEST($3::timestamptz[], $4::uuid[], $5::text[],
                                                $6::text[]) AS u
                 ON CONFLICT DO NOTHING",
            )
            .bind(site.as_str())
            .bind(equipment)
            .bind(&ats)
            .bind(&ids)
            .bind(&states)
            .bind(&reasons)
            .execute(&mut **tx)
            .await?;
        }
    }
    acc.retain(|_, (us, n)| *us != 0 || *n != 0);
    if acc.is_empty() {
        return Ok(());
    }
    let mut equipment_col = Vec::with_capacity(acc.len());
    let mut hours = Vec::with_capacity(acc.len());
    let mut states = Vec::with_capacity(acc.len());
    let mut reasons = Vec::with_capacity(acc.len());
    let mut smalls = Vec::with_capacity(acc.len());
    let mut micros = Vec::with_capacity(acc.len());
    let mut starts = Vec::with_capacity(acc.len());
    for ((eq, h, state, reason, small), (us, n)) in acc {
        equipment_col.push(eq);
        hours.push(crate::db::store::ts(Timestamp::from_micros(h)));
        states.push(state);
        reasons.push(reason);
        smalls.push(small);
        micros.push(us);
        starts.push(n);
    }
    crate::db::query(
        "INSERT INTO state_hourly AS s (site_id, equipment, hour, state, reason, small, micros, starts)
         SELECT $1, u.* FROM UNNEST($2::text[], $3::timestamptz[], $4::text[], $5::text[],
                                    $6::bool[], $7::int8[], $8::int8[]) AS u
         ON CONFLICT (site_id, hour, equipment, state, reason, small) DO UPDATE
             SET micros = s.micros + excluded.micros, starts = s.starts + excluded.starts",
    )
    .bind(site.as_str())
    .bind(&equipment_col)
    .bind(&hours)
    .bind(&states)
    .bind(&reasons)
    .bind(&smalls)
    .bind(&micros)
    .bind(&starts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_time_is_the_creation_millis() {
        let id = shared_model::EventId::from_parts(1_795_000_000_123, [7; 10]);
        assert_eq!(uuid_micros(id.as_uuid()), 1_795_000_000_123_000);
    }

    fn p(at_min: i64, state: &str) -> Point {
        Point {
            at: at_min * 60_000_000,
            id: Uuid::from_u128(at_min as u128),
            state: state.to_owned(),
            reason: None,
        }
    }

    #[test]
    fn intervals_split_at_local_hours() {
        // UTC+05:30: local hours start at hh:30 UTC.
        let clock = SiteClock {
            timezone: "Asia/Kolkata".into(),
            hour_offset_micros: 30 * 60_000_000,
        };
        let mut acc = HashMap::new();
        // 00:10 .. 01:40 UTC down, then running: buckets 23:30, 00:30, 01:30.
        contribute(
            &mut acc,
            &clock,
            "E",
            &[p(10, "down"), p(100, "running")],
            1,
        );
        let get = |h_min: i64| {
            acc.get(&(
                "E".to_owned(),
                h_min * 60_000_000,
                "down".to_owned(),
                String::new(),
                false,
            ))
            .copied()
        };
        assert_eq!(get(-30), Some((20 * 60_000_000, 1)));
        assert_eq!(get(30), Some((60 * 60_000_000, 0)));
        assert_eq!(get(90), Some((10 * 60_000_000, 0)));
        assert_eq!(acc.len(), 3, "the open running interval is not rolled up");
    }

    #[test]
    fn short_stops_are_small_and_diffs_cancel() {
        let clock = SiteClock {
            timezone: "UTC".into(),
            hour_offset_micros: 0,
        };
        let mut acc = HashMap::new();
        let old = [p(0, "running"), p(60, "running")];
        let new = [
            p(0, "running"),
            p(30, "down"),
            p(31, "running"),
            p(60, "running"),
        ];
        contribute(&mut acc, &clock, "E", &old, -1);
        contribute(&mut acc, &clock, "E", &new, 1);
        acc.retain(|_, (us, n)| *us != 0 || *n != 0);
        let down = acc
            .get(&("E".to_owned(), 0, "down".to_owned(), String::new(), true))
            .copied();
        assert_eq!(
            down,
            Some((60_000_000, 1)),
            "a one-minute stop is a small stop"
        );
        let running = acc
            .get(&(
                "E".to_owned(),
                0,
                "running".to_owned(),
                String::new(),
                false,
            ))
            .copied();
        // 60 min of running became 30 + 29 min: one minute less, one more start.
        assert_eq!(running, Some((-60_000_000, 1)));
    }
}
