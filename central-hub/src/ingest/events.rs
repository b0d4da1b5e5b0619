//! A batch of events into `events`: one plain insert when every event is new (the common
//! case), or the statement that skips duplicates after a unique violation, and which events of
//! the batch were new and which a correction had already named. The new events' production
//! sums go to [`super::sums`], the rest to [`crate::rollup`].

use std::collections::HashSet;

use shared_model::{Event, EventBody, SiteId};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Row as _, Transaction};
use sync_protocol::store::IngestReport;
use time::OffsetDateTime;
use uuid::Uuid;

use super::PgHubStore;
use super::sums::BatchSums;
use crate::db::HubStoreError;
use crate::db::channels::notify_data;
use crate::db::convert::ts;
use crate::db::scoped;

/// The `events` insert of a batch, its columns as `UNNEST` parameters `$2`–`$12` (`$1` is the
/// site): shared by [`INSERT_NEW_SQL`] and [`INGEST_SQL`].
macro_rules! insert_events {
    () => {
        r#"
    INSERT INTO events (site_id, event_id, occurred_at, recorded_at, kind, equipment, work_order,
                        operator, good, scrap, body, reason)
    SELECT $1, u.* FROM UNNEST($2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                               $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[],
                               $11::bytea[], $12::text[]) AS u"#
    };
}

/// The first try of every ingest: all events as new, a plain insert. A batch holding an event
/// the hub already has (a re-send after a lost ack) fails it with a unique violation and is
/// ingested by [`INGEST_SQL`] in a new transaction instead. Inside PostgreSQL the plain insert
/// costs about two thirds of the `ON CONFLICT … RETURNING` one
/// (`docs/profiles/ingest-statement-breakdown.sql`), and re-sends are the exception.
const INSERT_NEW_SQL: &str = insert_events!();

/// Which events of the batch (`$2`) a correction named before they arrived, as the column
/// `corrected`: shared by [`CORRECTED_SQL`] and [`INGEST_SQL`].
macro_rules! corrected_events {
    () => {
        r#"
       CASE WHEN EXISTS (SELECT 1 FROM corrections WHERE site_id = $1)
            THEN ARRAY(SELECT DISTINCT c.corrects FROM corrections c
                       WHERE c.site_id = $1 AND c.corrects = ANY($2::uuid[]))
            ELSE '{}' END AS corrected"#
    };
}

/// `corrected_events!` after [`INSERT_NEW_SQL`] ([`INGEST_SQL`] says it itself).
const CORRECTED_SQL: &str = concat!("SELECT", corrected_events!());

/// The ingest statement after a unique violation: inserts the new events (duplicates skipped
/// by their key) and says which were new — all of them (`ids` NULL) or the list — and which of
/// the batch's events a correction had named before they arrived. The rollups are written by
/// [`super::sums`] from sums formed in Rust: a profile (docs/benchmarks-notes.md) showed that
/// returning every new row and grouping it in SQL cost as much as the insert itself.
const INGEST_SQL: &str = concat!(
    "WITH ins AS (",
    insert_events!(),
    r#"
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
SELECT count(*) AS inserted,
       CASE WHEN count(*) < cardinality($2::uuid[])
            THEN coalesce(array_agg(event_id), '{}') END AS ids,"#,
    corrected_events!(),
    "\nFROM ins\n"
);

/// Whether a group may be ingested as two independent halves: no corrections (a correction
/// and the event it corrects must be seen by one transaction, or in order) and no event twice
/// (the halves' inserts then never wait on each other, so they cannot deadlock).
pub(super) fn splittable(events: &[Event]) -> bool {
    let mut ids = HashSet::with_capacity(events.len());
    events
        .iter()
        .all(|e| !matches!(e.body, EventBody::Correction(_)) && ids.insert(e.event_id))
}

/// A batch's events as the columns of [`INSERT_NEW_SQL`] and [`INGEST_SQL`].
struct EventRows {
    ids: Vec<Uuid>,
    occurred: Vec<OffsetDateTime>,
    recorded: Vec<OffsetDateTime>,
    kinds: Vec<&'static str>,
    equipment: Vec<Option<String>>,
    work_order: Vec<Option<String>>,
    operator: Vec<Option<String>>,
    good: Vec<Option<i64>>,
    scrap: Vec<Option<i64>>,
    bodies: Vec<Vec<u8>>,
    reason: Vec<Option<String>>,
}

impl EventRows {
    fn new(events: &[Event]) -> Result<Self, HubStoreError> {
        let n = events.len();
        let mut rows = EventRows {
            ids: Vec::with_capacity(n),
            occurred: Vec::with_capacity(n),
            recorded: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            equipment: Vec::with_capacity(n),
            work_order: Vec::with_capacity(n),
            operator: Vec::with_capacity(n),
            good: Vec::with_capacity(n),
            scrap: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
        };
        for e in events {
            rows.ids.push(*e.event_id.as_uuid());
            rows.occurred.push(ts(e.occurred_at));
            rows.recorded.push(ts(e.recorded_at));
            rows.kinds.push(e.kind().as_str());
            rows.operator
                .push(e.operator.as_ref().map(|o| o.to_string()));
            let (eq, wo, g, s) = match &e.body {
                EventBody::ProductionCount(p) => (
                    Some(p.equipment.to_string()),
                    p.work_order.as_ref().map(|w| w.to_string()),
                    Some(i64::from(p.good)),
                    Some(i64::from(p.scrap)),
                ),
                EventBody::EquipmentState(s) => (Some(s.equipment.to_string()), None, None, None),
                EventBody::QualitySample(q) => (
                    q.equipment.as_ref().map(|x| x.to_string()),
                    q.work_order.as_ref().map(|w| w.to_string()),
                    None,
                    None,
                ),
                EventBody::MaterialConsumed(m) | EventBody::MaterialProduced(m) => (
                    m.equipment.as_ref().map(|x| x.to_string()),
                    m.work_order.as_ref().map(|w| w.to_string()),
                    None,
                    None,
                ),
                EventBody::OperatorClock(c) => (
                    c.equipment.as_ref().map(|x| x.to_string()),
                    None,
                    None,
                    None,
                ),
                EventBody::Correction(_) => (None, None, None, None),
            };
            rows.reason.push(match &e.body {
                EventBody::ProductionCount(p) => p.scrap_reason.as_ref().map(|r| r.to_string()),
                EventBody::EquipmentState(s) => s.reason.as_ref().map(|r| r.to_string()),
                // Failed samples are marked so the quality-alert gauge can count them without
                // decoding bodies; no rollup reads a quality sample's reason.
                EventBody::QualitySample(q) => (!q.pass).then(|| "out_of_spec".to_owned()),
                EventBody::MaterialConsumed(_)
                | EventBody::MaterialProduced(_)
                | EventBody::OperatorClock(_)
                | EventBody::Correction(_) => None,
            });
            rows.equipment.push(eq);
            rows.work_order.push(wo);
            rows.good.push(g);
            rows.scrap.push(s);
            rows.bodies
                .push(postcard::to_stdvec(e).map_err(|err| {
                    HubStoreError::Corrupt(format!("cannot encode event: {err}"))
                })?);
        }
        Ok(rows)
    }

    /// Binds the site and the columns, `$1`–`$12`.
    fn bind<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
        site: &'q SiteId,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(site.as_str())
            .bind(&self.ids)
            .bind(&self.occurred)
            .bind(&self.recorded)
            .bind(&self.kinds)
            .bind(&self.equipment)
            .bind(&self.work_order)
            .bind(&self.operator)
            .bind(&self.good)
            .bind(&self.scrap)
            .bind(&self.bodies)
            .bind(&self.reason)
    }
}

/// What the insert of a batch found: how many events were new, which (`None`: all of them),
/// and which of the new ones a correction stored earlier had already named.
struct Inserted {
    count: u64,
    new_ids: Option<HashSet<Uuid>>,
    corrected: HashSet<Uuid>,
}

impl Inserted {
    fn is_new(&self, id: &Uuid) -> bool {
        self.new_ids.as_ref().is_none_or(|s| s.contains(id))
    }
}

/// Inserts the batch, first as all new ([`INSERT_NEW_SQL`]); on a unique violation the
/// transaction is aborted, so it is rolled back and a new one runs [`INGEST_SQL`]. Returns
/// the transaction the rest of the ingest goes on in.
async fn insert_batch(
    pool: &sqlx::PgPool,
    mut tx: Transaction<'static, Postgres>,
    site: &SiteId,
    rows: &EventRows,
) -> Result<(Transaction<'static, Postgres>, Inserted), HubStoreError> {
    let n = rows.ids.len() as u64;
    let first = rows
        .bind(crate::db::query(INSERT_NEW_SQL), site)
        .execute(&mut *tx)
        .await;
    let (count, new_ids, corrected): (i64, _, Vec<Uuid>) = match first {
        Ok(_) => {
            let corrected = crate::db::query_scalar(CORRECTED_SQL)
                .bind(site.as_str())
                .bind(&rows.ids)
                .fetch_one(&mut *tx)
                .await?;
            (n as i64, None, corrected)
        }
        // An event of the batch is here already: a new transaction (this one is aborted)
        // with the statement that skips duplicates and says which events were new.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            // Rolled back before the next is opened: never two connections for one ingest.
            tx.rollback().await?;
            tx = scoped(pool, site).await?;
            let row = rows
                .bind(crate::db::query(INGEST_SQL), site)
                .fetch_one(&mut *tx)
                .await?;
            // None: every event of the batch was new.
            let new_ids: Option<HashSet<Uuid>> = row
                .try_get::<Option<Vec<Uuid>>, _>("ids")?
                .map(|v| v.into_iter().collect());
            (row.try_get("inserted")?, new_ids, row.try_get("corrected")?)
        }
        Err(e) => return Err(e.into()),
    };
    // The count decides the ack and the duplicates metric: a count outside 0..=n is a broken
    // statement, and acking on it would lose or invent events.
    assert!(
        (0..=n as i64).contains(&count),
        "ingest inserted {count} of {n} events"
    );
    debug_assert!(
        new_ids.as_ref().is_none_or(|ids| ids.len() as i64 == count),
        "the new ids and the inserted count disagree"
    );
    let mut inserted = Inserted {
        count: count as u64,
        new_ids,
        corrected: HashSet::new(),
    };
    inserted.corrected = corrected
        .into_iter()
        .filter(|id| inserted.is_new(id))
        .collect();
    Ok((tx, inserted))
}

impl PgHubStore {
    /// Ingests events in one transaction: the insert ([`insert_batch`]), the production sums
    /// of the new events ([`super::sums`]), the other rollups ([`crate::rollup::apply`]) and
    /// the change announcement, committed together.
    pub(super) async fn ingest_part(
        &self,
        site: &SiteId,
        events: &[Event],
    ) -> Result<IngestReport, HubStoreError> {
        let started = std::time::Instant::now();
        let rows = EventRows::new(events)?;
        let clock = self.clock(site).await?;
        let tx = scoped(&self.pool, site).await?;
        let (mut tx, inserted) = insert_batch(&self.pool, tx, site, &rows).await?;
        let mut sums = BatchSums::default();
        // New events other than production counts: the rollups beyond the sums take them.
        let mut others = HashSet::new();
        for e in events {
            let id = e.event_id.as_uuid();
            if !inserted.is_new(id) {
                continue;
            }
            if !matches!(e.body, EventBody::ProductionCount(_)) {
                others.insert(*id);
            }
            sums.add(e, inserted.corrected.contains(id));
        }
        if inserted.count > 0 {
            sums.write(&mut tx, site, &clock).await?;
        }
        if !others.is_empty() || !inserted.corrected.is_empty() {
            crate::rollup::apply(&mut tx, site, &clock, events, &others, &inserted.corrected)
                .await?;
        }
        if inserted.count > 0 {
            notify_data(&mut tx, Some(site)).await?;
        }
        tx.commit().await?;
        crate::metrics::QUERIES.observe("ingest", started.elapsed());
        let offered = events.len() as u64;
        Ok(IngestReport {
            inserted: inserted.count,
            duplicates: offered - inserted.count,
        })
    }
}
