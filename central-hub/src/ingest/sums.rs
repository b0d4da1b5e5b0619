//! The production counts and first sightings of one ingest's new events, summed in Rust per
//! 15-minute UTC slot and written in one statement ([`ROLLUP_SQL`]): a profile
//! (docs/benchmarks-notes.md) showed that returning every new row and grouping it in SQL cost
//! as much as the insert itself. Every time zone's hours start on a quarter hour of UTC, so
//! `date_trunc` in the site's zone still makes the hour buckets, daylight saving included.

use std::collections::HashMap;

use shared_model::{Event, EventBody, SiteId};
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;

use crate::db::HubStoreError;
use crate::db::convert::ts_micros;
use crate::rollup::SiteClock;

/// The rollups of one ingest: production counts into `production_hourly` (the one upsert
/// shared with the correction rollups, [`crate::rollup::production_upsert`]), the first hour
/// each piece of equipment reported into `equipment_seen`, and the site's last event time.
/// Rows are locked in key order, so two ingests of one site cannot deadlock.
const ROLLUP_SQL: &str = concat!(
    "WITH roll AS (",
    crate::rollup::production_upsert!(),
    r#"
), seen AS (
    INSERT INTO equipment_seen AS s (site_id, equipment, first_hour)
    SELECT $1, x.eq, date_trunc('hour', min(x.slot), $2)
    FROM UNNEST($10::text[], $11::timestamptz[]) AS x(eq, slot)
    GROUP BY x.eq
    ORDER BY x.eq
    ON CONFLICT (site_id, equipment) DO UPDATE SET first_hour = excluded.first_hour
        WHERE excluded.first_hour < s.first_hour
)
UPDATE sites SET last_event_at = now() WHERE site_id = $1
"#
);

/// A quarter hour in microseconds: the slot the sums use.
const SLOT_MICROS: i64 = 15 * 60 * 1_000_000;

/// (15-minute slot, equipment, work order or "", scrap reason or "").
type SumKey<'a> = (i64, &'a str, &'a str, &'a str);

/// Production sums and first sightings of one ingest's new events, per 15-minute UTC slot.
#[derive(Default)]
pub(super) struct BatchSums<'a> {
    /// Key → (good, scrap, events).
    production: HashMap<SumKey<'a>, (i64, i64, i64)>,
    /// Equipment → earliest slot it reported a count or a state in.
    seen: HashMap<&'a str, i64>,
}

impl<'a> BatchSums<'a> {
    fn slot(t: shared_model::Timestamp) -> i64 {
        let m = t.as_micros();
        m - m.rem_euclid(SLOT_MICROS)
    }

    /// Adds one new event; a production count that a correction already replaced is left to
    /// the correction rollups, as are events of other kinds.
    pub(super) fn add(&mut self, e: &'a Event, corrected: bool) {
        let slot = Self::slot(e.occurred_at);
        let equipment = match &e.body {
            EventBody::ProductionCount(p) => {
                if !corrected {
                    let key = (
                        slot,
                        p.equipment.as_str(),
                        p.work_order.as_ref().map_or("", |w| w.as_str()),
                        p.scrap_reason.as_ref().map_or("", |r| r.as_str()),
                    );
                    let sum = self.production.entry(key).or_default();
                    sum.0 += i64::from(p.good);
                    sum.1 += i64::from(p.scrap);
                    sum.2 += 1;
                }
                p.equipment.as_str()
            }
            EventBody::EquipmentState(s) => s.equipment.as_str(),
            // Listed one by one: a new event kind must decide here whether it counts or shows
            // its equipment as seen.
            EventBody::QualitySample(_)
            | EventBody::MaterialConsumed(_)
            | EventBody::MaterialProduced(_)
            | EventBody::OperatorClock(_)
            | EventBody::Correction(_) => return,
        };
        let first = self.seen.entry(equipment).or_insert(slot);
        *first = (*first).min(slot);
    }

    /// Writes the sums and the site's last event time ([`ROLLUP_SQL`]).
    pub(super) async fn write(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        site: &SiteId,
        clock: &SiteClock,
    ) -> Result<(), HubStoreError> {
        let n = self.production.len();
        let (mut slot, mut eq, mut wo, mut reason) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut good, mut scrap, mut count) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (&(s, e, w, r), &(g, sc, c)) in &self.production {
            // Counts of new events only add: a negative sum here would subtract production
            // that a correction, not an ingest, must remove.
            debug_assert!(
                g >= 0 && sc >= 0 && c > 0,
                "ingest sums must be positive: {g}/{sc}/{c}"
            );
            debug_assert_eq!(s.rem_euclid(SLOT_MICROS), 0, "sums are per quarter hour");
            slot.push(ts_micros(s));
            eq.push(e);
            wo.push(w);
            reason.push(r);
            good.push(g);
            scrap.push(sc);
            count.push(c);
        }
        let (seen_eq, seen_slot): (Vec<&str>, Vec<OffsetDateTime>) =
            self.seen.iter().map(|(&e, &s)| (e, ts_micros(s))).unzip();
        crate::db::query(ROLLUP_SQL)
            .bind(site.as_str())
            .bind(&clock.timezone)
            .bind(&slot)
            .bind(&eq)
            .bind(&wo)
            .bind(&reason)
            .bind(&good)
            .bind(&scrap)
            .bind(&count)
            .bind(&seen_eq)
            .bind(&seen_slot)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
