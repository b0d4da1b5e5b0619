//! The hub's store: `sync_protocol::store::HubStore` on PostgreSQL.
//!
//! Every method opens a transaction, scopes it to the session's site with
//! `set_config('app.current_site_id', site, true)` (transaction-local, so it never leaks to
//! the next user of a pooled or PgBouncer connection), does its work, and commits before
//! returning: the session acks only after that.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use automerge::AutoCommit;
use shared_model::{Event, EventBody, SiteId};
use sqlx::{PgPool, Postgres, Row, Transaction};
use sync_protocol::message::{
    DownItem, ErrorCode, RecordChange, RecordHeads, RecordId, RecordKind,
};
use sync_protocol::records::read_view;
use sync_protocol::store::{DownEntry, HeadsComparison, HubStore, IngestReport};
use time::OffsetDateTime;
use uuid::Uuid;

use super::rollup::{self, SiteClock};

/// Longest the hub works on a batch's changes on a blocking thread — decoding them, or merging
/// one into its record — before it refuses the batch with `limit_exceeded`. The pre-scan's
/// caps (`records::CHANGE_OPS_MAX`, `DOC_OPS_MAX`) already bound that work to milliseconds in
/// a release build; the deadline is the backstop should automerge still find a slow path, so
/// that no session waits on it and no transaction stays open behind it. (A blocking thread
/// cannot be cancelled: one that overran finishes on its own and its result is dropped.)
pub const CHANGE_WORK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Months of partitions created ahead of the current one.
pub const PARTITION_MONTHS_AHEAD: i32 = 3;

/// Months moved out of one site's DEFAULT partition per run of the partition task: a site
/// whose edge sent years of backdated events is caught up over several runs, each holding
/// the site's write lock only briefly.
pub const SPLIT_MONTHS_PER_RUN_MAX: i32 = 12;

/// One month moved out of a site's DEFAULT partition into its own partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMonth {
    pub site: SiteId,
    /// The first day of the month (UTC).
    pub month: time::Date,
    pub rows: i64,
}

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
    /// outran [`CHANGE_WORK_DEADLINE`]: refused with `limit_exceeded`, nothing written.
    #[error("change for {record} refused: {reason}")]
    ChangeOverLimit { record: String, reason: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone)]
pub struct PgHubStore {
    pool: PgPool,
    /// Each site's time zone, read once: it decides the rollups' hour buckets.
    clocks: Arc<Mutex<HashMap<SiteId, SiteClock>>>,
    /// Groups of at least this many events are ingested as two concurrent halves.
    split_min: usize,
}

/// The channel on which every data change of a site is announced (payload `SITE:txid`, or
/// `*:txid` for master data): report caches of all hub instances listen to it.
pub const DATA_CHANNEL: &str = "mes_data";

/// Announces, at commit, that `site`'s data (or with `None` master data) changed.
pub async fn notify_data(
    tx: &mut Transaction<'static, Postgres>,
    site: Option<&SiteId>,
) -> Result<(), sqlx::Error> {
    crate::db::query("SELECT pg_notify($1, $2 || ':' || txid_current())")
        .bind(DATA_CHANNEL)
        .bind(site.map_or("*", |s| s.as_str()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Begins a transaction scoped to `site` by row-level security.
pub async fn scoped(
    pool: &PgPool,
    site: &SiteId,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = crate::db::begin(pool, crate::db::PoolRole::Write).await?;
    crate::db::query("SELECT set_config('app.current_site_id', $1, true)")
        .bind(site.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

pub(crate) fn ts(t: shared_model::Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn kind_str(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::WorkOrder => "work_order",
        RecordKind::NonConformance => "non_conformance",
        RecordKind::LotHold => "lot_hold",
    }
}

fn parse_kind(s: &str) -> Result<RecordKind, HubStoreError> {
    match s {
        "work_order" => Ok(RecordKind::WorkOrder),
        "non_conformance" => Ok(RecordKind::NonConformance),
        "lot_hold" => Ok(RecordKind::LotHold),
        other => Err(HubStoreError::Corrupt(format!(
            "unknown record kind {other:?}"
        ))),
    }
}

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
/// [`ROLLUP_SQL`] from sums formed in Rust: a profile (docs/benchmarks-notes.md) showed that
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

/// The rollups of one ingest, from sums per 15-minute UTC slot formed in Rust (every time
/// zone's hours start on a quarter hour of UTC, so `date_trunc` in the site's zone still makes
/// the hour buckets, daylight saving included): production counts into `production_hourly`,
/// the first hour each piece of equipment reported into `equipment_seen`, and the site's last
/// event time. Rows are locked in key order, so two ingests of one site cannot deadlock.
const ROLLUP_SQL: &str = r#"
WITH roll AS (
    INSERT INTO production_hourly AS p (site_id, hour, equipment, work_order, scrap_reason,
                                        good, scrap, events)
    SELECT $1, date_trunc('hour', u.slot, $2), u.eq, u.wo, u.reason, sum(u.good), sum(u.scrap),
           sum(u.n)
    FROM UNNEST($3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[],
                $9::int8[]) AS u(slot, eq, wo, reason, good, scrap, n)
    GROUP BY 2, 3, 4, 5
    ORDER BY 2, 3, 4, 5
    ON CONFLICT (site_id, hour, equipment, work_order, scrap_reason) DO UPDATE
        SET good = p.good + excluded.good, scrap = p.scrap + excluded.scrap,
            events = p.events + excluded.events
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
"#;

/// A quarter hour in microseconds: the slot the Rust-side sums use.
const SLOT_MICROS: i64 = 15 * 60 * 1_000_000;

/// Production sums and first sightings of one ingest's new events, per 15-minute UTC slot.
/// (15-minute slot, equipment, work order or "", scrap reason or "").
type SumKey<'a> = (i64, &'a str, &'a str, &'a str);

#[derive(Default)]
struct BatchSums<'a> {
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
    fn add(&mut self, e: &'a Event, corrected: bool) {
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
            _ => return,
        };
        let first = self.seen.entry(equipment).or_insert(slot);
        *first = (*first).min(slot);
    }
}

/// Writes one ingest's [`BatchSums`] and the site's last event time ([`ROLLUP_SQL`]).
async fn rollup_sums(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    clock: &SiteClock,
    sums: &BatchSums<'_>,
) -> Result<(), HubStoreError> {
    let n = sums.production.len();
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
    for (&(s, e, w, r), &(g, sc, c)) in &sums.production {
        slot.push(ts(shared_model::Timestamp::from_micros(s)));
        eq.push(e);
        wo.push(w);
        reason.push(r);
        good.push(g);
        scrap.push(sc);
        count.push(c);
    }
    let (seen_eq, seen_slot): (Vec<&str>, Vec<OffsetDateTime>) = sums
        .seen
        .iter()
        .map(|(&e, &s)| (e, ts(shared_model::Timestamp::from_micros(s))))
        .unzip();
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

/// Groups of at least this many events are ingested as two concurrent halves (a backlog
/// drain's groups; live traffic comes in small groups and keeps to one connection).
pub const SPLIT_INGEST_MIN: usize = 2_048;

/// Whether a group may be ingested as two independent halves: no corrections (a correction
/// and the event it corrects must be seen by one transaction, or in order) and no event twice
/// (the halves' inserts then never wait on each other, so they cannot deadlock).
fn splittable(events: &[Event]) -> bool {
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
                EventBody::QualitySample(q) if !q.pass => Some("out_of_spec".to_owned()),
                _ => None,
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
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        site: &'q SiteId,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
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

impl PgHubStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            clocks: Arc::default(),
            split_min: SPLIT_INGEST_MIN,
        }
    }

    /// The store with another threshold for two-halves ingests ([`SPLIT_INGEST_MIN`]): the
    /// rollup oracle sets a small one so that its small random batches take that path too.
    pub fn with_split_ingest_min(mut self, events: usize) -> Self {
        self.split_min = events.max(2);
        self
    }

    /// The site's time zone and how its local hours fall on UTC.
    pub async fn clock(&self, site: &SiteId) -> Result<SiteClock, HubStoreError> {
        if let Some(c) = self.clocks.lock().ok().and_then(|m| m.get(site).cloned()) {
            return Ok(c);
        }
        let mut tx = scoped(&self.pool, site).await?;
        let row = crate::db::query(
            "SELECT timezone,
                    extract(epoch FROM (now() AT TIME ZONE timezone) - (now() AT TIME ZONE 'UTC'))::int8
                        AS offset_seconds
             FROM sites WHERE site_id = $1",
        )
        .bind(site.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let clock = match row {
            Some(r) => {
                let offset: i64 = r.try_get("offset_seconds")?;
                SiteClock {
                    timezone: r.try_get("timezone")?,
                    hour_offset_micros: offset.rem_euclid(3600) * 1_000_000,
                }
            }
            None => SiteClock {
                timezone: "UTC".into(),
                hour_offset_micros: 0,
            },
        };
        if let Ok(mut m) = self.clocks.lock() {
            m.insert(site.clone(), clock.clone());
        }
        Ok(clock)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends an item to a site's down log (an HQ release or edit, master data); returns its
    /// cursor. Record changes are merged into the hub's copy in the same transaction.
    pub async fn publish(&self, site: &SiteId, item: &DownItem) -> Result<u64, HubStoreError> {
        // Decoded before the transaction opens, like a site's changes.
        let change = match item {
            DownItem::RecordChange(c) => Some(decode_changes(site, std::slice::from_ref(c)).await?),
            _ => None,
        };
        let mut tx = scoped(&self.pool, site).await?;
        if let (DownItem::RecordChange(c), Some(decoded)) = (item, change) {
            for change in decoded {
                merge_change(&mut tx, site, c, change, false).await?;
            }
        }
        let cursor = append_down(&mut tx, site, item).await?;
        tx.commit().await?;
        Ok(cursor)
    }

    /// Ingests events in one transaction: see [`INSERT_NEW_SQL`] and [`INGEST_SQL`].
    async fn ingest_part(
        &self,
        site: &SiteId,
        events: &[Event],
    ) -> Result<IngestReport, HubStoreError> {
        let started = std::time::Instant::now();
        let n = events.len();
        let rows = EventRows::new(events)?;
        let clock = self.clock(site).await?;
        let mut tx = scoped(&self.pool, site).await?;
        let first = rows
            .bind(crate::db::query(INSERT_NEW_SQL), site)
            .execute(&mut *tx)
            .await;
        let (inserted, new_ids, corrected) = match first {
            Ok(_) => {
                let corrected: Vec<Uuid> = crate::db::query_scalar(CORRECTED_SQL)
                    .bind(site.as_str())
                    .bind(&rows.ids)
                    .fetch_one(&mut *tx)
                    .await?;
                (n as i64, None, corrected)
            }
            // An event of the batch is here already: a new transaction (this one is aborted)
            // with the statement that skips duplicates and says which events were new.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await?;
                tx = scoped(&self.pool, site).await?;
                let row = rows
                    .bind(crate::db::query(INGEST_SQL), site)
                    .fetch_one(&mut *tx)
                    .await?;
                let inserted: i64 = row.try_get("inserted")?;
                // None: every event of the batch was new.
                let new_ids: Option<HashSet<Uuid>> = row
                    .try_get::<Option<Vec<Uuid>>, _>("ids")?
                    .map(|v| v.into_iter().collect());
                (inserted, new_ids, row.try_get("corrected")?)
            }
            Err(e) => return Err(e.into()),
        };
        let is_new = |id: &Uuid| new_ids.as_ref().is_none_or(|s| s.contains(id));
        let corrected: HashSet<Uuid> = corrected.into_iter().filter(|id| is_new(id)).collect();
        let mut sums = BatchSums::default();
        let mut others = HashSet::new();
        for e in events {
            let id = e.event_id.as_uuid();
            if !is_new(id) {
                continue;
            }
            if !matches!(e.body, EventBody::ProductionCount(_)) {
                others.insert(*id);
            }
            sums.add(e, corrected.contains(id));
        }
        if inserted > 0 {
            rollup_sums(&mut tx, site, &clock, &sums).await?;
        }
        if !others.is_empty() || !corrected.is_empty() {
            rollup::apply(&mut tx, site, &clock, events, &others, &corrected).await?;
        }
        if inserted > 0 {
            notify_data(&mut tx, Some(site)).await?;
        }
        tx.commit().await?;
        crate::metrics::QUERIES.observe("ingest", started.elapsed());
        Ok(IngestReport {
            inserted: inserted as u64,
            duplicates: (n as u64).saturating_sub(inserted as u64),
        })
    }
}

async fn append_down(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    item: &DownItem,
) -> Result<u64, HubStoreError> {
    let bytes = postcard::to_stdvec(item)
        .map_err(|e| HubStoreError::Corrupt(format!("cannot encode down item: {e}")))?;
    let cursor: i64 = crate::db::query_scalar(
        "INSERT INTO down_log (site_id, item) VALUES ($1, $2) RETURNING cursor",
    )
    .bind(site.as_str())
    .bind(bytes)
    .fetch_one(&mut **tx)
    .await?;
    notify_down(tx, site).await?;
    Ok(cursor as u64)
}

/// Wakes the site's sessions on every hub instance, at commit (NOTIFY is transactional).
pub async fn notify_down(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
) -> Result<(), HubStoreError> {
    crate::db::query("SELECT pg_notify('mes_down', $1)")
        .bind(site.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A refused change as the store's error: over a limit, or malformed.
fn change_error(record: &str, e: sync_protocol::records::DocError) -> HubStoreError {
    let (record, reason) = (record.to_owned(), e.to_string());
    if e.is_limit() {
        HubStoreError::ChangeOverLimit { record, reason }
    } else {
        HubStoreError::BadChange { record, reason }
    }
}

/// Runs Automerge work on a blocking thread, never on the async workers that serve the other
/// sites' sessions, and gives up on it after [`CHANGE_WORK_DEADLINE`].
async fn off_workers<T: Send + 'static>(
    record: &str,
    what: &str,
    work: impl FnOnce() -> Result<T, HubStoreError> + Send + 'static,
) -> Result<T, HubStoreError> {
    match tokio::time::timeout(CHANGE_WORK_DEADLINE, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(HubStoreError::BadChange {
            record: record.to_owned(),
            reason: format!("{what} failed: {join}"),
        }),
        Err(_) => Err(HubStoreError::ChangeOverLimit {
            record: record.to_owned(),
            reason: format!("{what} took longer than {CHANGE_WORK_DEADLINE:?}"),
        }),
    }
}

/// Checks a batch's records against the site's key space and decodes its changes (the
/// pre-scan, then automerge), on a blocking thread with a deadline and before any transaction
/// is open: a hostile change costs no connection, no lock and no async worker.
async fn decode_changes(
    site: &SiteId,
    changes: &[RecordChange],
) -> Result<Vec<automerge::Change>, HubStoreError> {
    for c in changes {
        if !c.record.id().starts_with(&format!("{site}-")) {
            return Err(HubStoreError::ForeignRecord {
                site: site.to_string(),
                record: c.record.id().to_owned(),
            });
        }
    }
    // The pre-scan is linear in the bytes (1 MiB at most) and never calls automerge, so it
    // runs right here: a bomb is refused without waiting for a blocking thread.
    for c in changes {
        sync_protocol::records::scan_change(c.bytes())
            .map_err(|e| change_error(c.record.id(), e.into()))?;
    }
    let first = changes.first().map_or("", |c| c.record.id()).to_owned();
    let changes = changes.to_vec();
    off_workers(&first, "decoding the changes", move || {
        changes
            .iter()
            .map(|c| {
                sync_protocol::records::decode_untrusted(c.bytes())
                    .map_err(|e| change_error(c.record.id(), e))
            })
            .collect()
    })
    .await
}

/// What merging a change into a record's document produced, computed off the async workers.
struct Merged {
    doc: Vec<u8>,
    conflicts: Vec<String>,
    view: Option<sync_protocol::records::WorkOrderView>,
}

/// Merges one decoded change into the hub's copy of its record (the record is already known
/// to be in the site's key space: [`decode_changes`]). `from_edge` changes are checked for
/// site isolation: the change's actor must be bound to the site.
async fn merge_change(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    c: &RecordChange,
    change: automerge::Change,
    from_edge: bool,
) -> Result<(), HubStoreError> {
    let record = &c.record;
    if from_edge {
        let actor = change.actor_id().to_bytes().to_vec();
        crate::db::query(
            "INSERT INTO actors (actor_id, site_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&actor)
        .bind(site.as_str())
        .execute(&mut **tx)
        .await?;
        // Row-level security hides another site's binding: not seeing the row we just tried
        // to insert means the actor is taken.
        let bound: Option<String> =
            crate::db::query_scalar("SELECT site_id FROM actors WHERE actor_id = $1")
                .bind(&actor)
                .fetch_optional(&mut **tx)
                .await?;
        if bound.as_deref() != Some(site.as_str()) {
            return Err(HubStoreError::ForeignActor {
                actor: change.actor_id().to_hex_string(),
            });
        }
    }
    let existing: Option<Vec<u8>> = crate::db::query_scalar(
        "SELECT doc FROM records WHERE site_id = $1 AND record_kind = $2 AND record_id = $3 FOR UPDATE",
    )
    .bind(site.as_str())
    .bind(kind_str(record.kind))
    .bind(record.id())
    .fetch_optional(&mut **tx)
    .await?;
    // The merge runs while the row is locked (it must: the saved document replaces the row),
    // but on a blocking thread and bounded: the change passed the pre-scan, the document is
    // capped (DOC_OPS_MAX, DOC_BYTES_MAX), and the deadline ends the transaction regardless.
    let id = record.id().to_owned();
    let is_work_order = record.kind == RecordKind::WorkOrder;
    let merged = off_workers(record.id(), "merging the change", move || {
        let mut doc = match existing {
            Some(bytes) => AutoCommit::load(&bytes)
                .map_err(|e| HubStoreError::Corrupt(format!("record {id}: {e}")))?,
            None => AutoCommit::new(),
        };
        sync_protocol::records::apply_untrusted(&mut doc, vec![change])
            .map_err(|e| change_error(&id, e))?;
        let saved =
            sync_protocol::records::save_checked(&mut doc).map_err(|e| change_error(&id, e))?;
        let conflicts = if is_work_order {
            sync_protocol::records::state_conflicts(&doc)
                .map_err(|e| HubStoreError::Corrupt(format!("record {id}: {e}")))?
        } else {
            Vec::new()
        };
        let view = if is_work_order {
            read_view(&doc).ok()
        } else {
            None
        };
        Ok(Merged {
            doc: saved,
            conflicts,
            view,
        })
    })
    .await?;
    // A work order's document names itself: it must name the record it arrives under and the
    // session's site, or its row would be materialized over another order's (nothing is
    // written: the transaction is rolled back with the error).
    if let Some(v) = &merged.view {
        if v.order.id.as_str() != record.id() {
            return Err(HubStoreError::MisnamedRecord {
                record: record.id().to_owned(),
                field: "id",
                found: v.order.id.to_string(),
            });
        }
        if &v.order.site_id != site {
            return Err(HubStoreError::MisnamedRecord {
                record: record.id().to_owned(),
                field: "site_id",
                found: v.order.site_id.to_string(),
            });
        }
    }
    crate::db::query(
        "INSERT INTO records (site_id, record_kind, record_id, doc) VALUES ($1, $2, $3, $4)
         ON CONFLICT (site_id, record_kind, record_id) DO UPDATE SET doc = excluded.doc, updated_at = now()",
    )
    .bind(site.as_str())
    .bind(kind_str(record.kind))
    .bind(record.id())
    .bind(&merged.doc)
    .execute(&mut **tx)
    .await?;
    if record.kind == RecordKind::WorkOrder {
        let conflicts = merged.conflicts;
        // A conflict the document no longer shows (a later edit settled the state, or it was
        // only an intermediate step of a batch) is resolved; the current ones are open.
        crate::db::query(
            "UPDATE conflicts SET resolved_at = now()
             WHERE site_id = $1 AND record_kind = $2 AND record_id = $3 AND resolved_at IS NULL
               AND NOT (description = ANY($4))",
        )
        .bind(site.as_str())
        .bind(kind_str(record.kind))
        .bind(record.id())
        .bind(&conflicts)
        .execute(&mut **tx)
        .await?;
        for description in conflicts {
            crate::db::query(
                "INSERT INTO conflicts (site_id, record_kind, record_id, description)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (site_id, record_kind, record_id, description) WHERE resolved_at IS NULL
                 DO NOTHING",
            )
            .bind(site.as_str())
            .bind(kind_str(record.kind))
            .bind(record.id())
            .bind(description)
            .execute(&mut **tx)
            .await?;
        }
    }
    // Work orders feed the on-time, WIP and product reports.
    notify_data(tx, Some(site)).await?;
    if let Some(v) = merged.view {
        let o = &v.order;
        crate::db::query(
            "INSERT INTO work_orders (site_id, id, state, material, planned_quantity, due, priority,
                                      good_count, scrap_count, actual_start, actual_end)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (site_id, id) DO UPDATE SET state = excluded.state, material = excluded.material,
                 planned_quantity = excluded.planned_quantity, due = excluded.due,
                 priority = excluded.priority, good_count = excluded.good_count,
                 scrap_count = excluded.scrap_count, actual_start = excluded.actual_start,
                 actual_end = excluded.actual_end, updated_at = now()",
        )
        .bind(site.as_str())
        .bind(o.id.as_str())
        .bind(o.state.as_str())
        .bind(o.material.as_str())
        .bind(i64::from(o.planned_quantity))
        .bind(o.due.map(ts))
        .bind(i32::from(o.priority))
        .bind(o.good_count as i64)
        .bind(o.scrap_count as i64)
        .bind(o.actual_start.map(ts))
        .bind(o.actual_end.map(ts))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl HubStore for PgHubStore {
    type Error = HubStoreError;

    fn error_code(e: &HubStoreError) -> ErrorCode {
        match e {
            HubStoreError::ForeignRecord { .. }
            | HubStoreError::ForeignActor { .. }
            | HubStoreError::MisnamedRecord { .. } => ErrorCode::Unauthorized,
            HubStoreError::BadChange { .. } => ErrorCode::MalformedFrame,
            HubStoreError::ChangeOverLimit { .. } => ErrorCode::LimitExceeded,
            HubStoreError::Db(_) | HubStoreError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    async fn ingest_events(
        &self,
        site: &SiteId,
        events: &[Event],
    ) -> Result<IngestReport, HubStoreError> {
        // A large group that can be split is ingested as two halves at once, each in its own
        // transaction on its own connection: PostgreSQL inserts both on two cores, and the
        // second half's rollups wait only for the first's row locks at the end. Either half
        // may commit without the other; the session acks neither until both have, and a
        // re-send skips what one of them already wrote.
        if events.len() >= self.split_min && splittable(events) {
            let (a, b) = events.split_at(events.len() / 2);
            let (ra, rb) = tokio::join!(self.ingest_part(site, a), self.ingest_part(site, b));
            let (ra, rb) = (ra?, rb?);
            return Ok(IngestReport {
                inserted: ra.inserted + rb.inserted,
                duplicates: ra.duplicates + rb.duplicates,
            });
        }
        self.ingest_part(site, events).await
    }

    async fn apply_changes(
        &self,
        site: &SiteId,
        changes: &[RecordChange],
    ) -> Result<(), HubStoreError> {
        // Every change is decoded before the transaction opens.
        let decoded = decode_changes(site, changes).await?;
        let mut tx = scoped(&self.pool, site).await?;
        for (c, change) in changes.iter().zip(decoded) {
            merge_change(&mut tx, site, c, change, true).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn down_after(
        &self,
        site: &SiteId,
        after_cursor: u64,
        limit: usize,
    ) -> Result<Vec<DownEntry>, HubStoreError> {
        let mut tx = scoped(&self.pool, site).await?;
        let rows = crate::db::query(
            "SELECT cursor, item FROM down_log WHERE site_id = $1 AND cursor > $2 ORDER BY cursor LIMIT $3",
        )
        .bind(site.as_str())
        .bind(after_cursor as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| {
                let cursor: i64 = r.try_get("cursor")?;
                let bytes: Vec<u8> = r.try_get("item")?;
                let item = postcard::from_bytes(&bytes)
                    .map_err(|e| HubStoreError::Corrupt(format!("down log entry {cursor}: {e}")))?;
                Ok(DownEntry {
                    cursor: cursor as u64,
                    item,
                })
            })
            .collect()
    }

    async fn record_down_ack(&self, site: &SiteId, cursor: u64) -> Result<(), HubStoreError> {
        let mut tx = scoped(&self.pool, site).await?;
        crate::db::query(
            "UPDATE sites SET down_acked = greatest(down_acked, $2), last_seen_at = now() WHERE site_id = $1",
        )
        .bind(site.as_str())
        .bind(cursor as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_edge_status(
        &self,
        site: &SiteId,
        status: sync_protocol::message::EdgeStatus,
    ) -> Result<(), HubStoreError> {
        let mut tx = scoped(&self.pool, site).await?;
        crate::db::query(
            "UPDATE sites SET edge_pending_events = $2, edge_pending_changes = $3,
                 edge_oldest_pending_at = $4, edge_status_at = now(), last_seen_at = now()
             WHERE site_id = $1",
        )
        .bind(site.as_str())
        .bind(status.pending_events.min(i64::MAX as u64) as i64)
        .bind(status.pending_changes.min(i64::MAX as u64) as i64)
        .bind(status.oldest_pending_at.map(ts))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_ids_between(
        &self,
        site: &SiteId,
        after: Option<&RecordId>,
        through: Option<&RecordId>,
    ) -> Result<Vec<RecordId>, HubStoreError> {
        let mut tx = scoped(&self.pool, site).await?;
        let rows =
            crate::db::query("SELECT record_kind, record_id FROM records WHERE site_id = $1")
                .bind(site.as_str())
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut ids = rows
            .into_iter()
            .map(|r| {
                let kind: String = r.try_get("record_kind")?;
                let id: String = r.try_get("record_id")?;
                RecordId::new(parse_kind(&kind)?, id).map_err(HubStoreError::Corrupt)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // RecordId's order (kind, then id) is the protocol's page order.
        ids.retain(|r| after.is_none_or(|a| r > a) && through.is_none_or(|t| r <= t));
        ids.sort();
        Ok(ids)
    }

    async fn compare_heads(
        &self,
        site: &SiteId,
        peer: &RecordHeads,
    ) -> Result<HeadsComparison, HubStoreError> {
        let mut tx = scoped(&self.pool, site).await?;
        let doc: Option<Vec<u8>> = crate::db::query_scalar(
            "SELECT doc FROM records WHERE site_id = $1 AND record_kind = $2 AND record_id = $3",
        )
        .bind(site.as_str())
        .bind(kind_str(peer.record.kind))
        .bind(peer.record.id())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut doc = doc
            .map(|bytes| {
                AutoCommit::load(&bytes).map_err(|e| {
                    HubStoreError::Corrupt(format!("record {}: {e}", peer.record.id()))
                })
            })
            .transpose()?;
        sync_protocol::records::compare_heads(doc.as_mut(), peer)
            .map_err(|e| HubStoreError::Corrupt(format!("record {}: {e}", peer.record.id())))
    }
}

/// The hub's copy of a record's document, for an HQ edit.
pub async fn load_record(
    pool: &PgPool,
    site: &SiteId,
    record: &RecordId,
) -> Result<Option<Vec<u8>>, HubStoreError> {
    let mut tx = scoped(pool, site).await?;
    let doc: Option<Vec<u8>> = crate::db::query_scalar(
        "SELECT doc FROM records WHERE site_id = $1 AND record_kind = $2 AND record_id = $3",
    )
    .bind(site.as_str())
    .bind(kind_str(record.kind))
    .bind(record.id())
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(doc)
}

/// Registers a site and creates its partitions (as the database owner, at `site add`). A
/// new site, or one re-admitted after a revocation, also gets the current master data in its
/// down log ([`super::master::send_snapshot`]); returns how many master records were queued.
pub async fn add_site(
    pool: &PgPool,
    site: &SiteId,
    name: &str,
    region: &str,
    timezone: &str,
) -> Result<usize, HubStoreError> {
    let mut tx = pool.begin().await?;
    // None: a new site; Some(None): an active site (a rename); Some(Some(_)): re-admitted.
    let revoked: Option<Option<OffsetDateTime>> =
        crate::db::query_scalar("SELECT revoked_at FROM sites WHERE site_id = $1 FOR UPDATE")
            .bind(site.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    crate::db::query(
        "INSERT INTO sites (site_id, name, region, timezone) VALUES ($1, $2, $3, $4)
         ON CONFLICT (site_id) DO UPDATE SET name = excluded.name, region = excluded.region,
             timezone = excluded.timezone, revoked_at = NULL",
    )
    .bind(site.as_str())
    .bind(name)
    .bind(region)
    .bind(timezone)
    .execute(&mut *tx)
    .await?;
    crate::db::query("SELECT mes_ensure_partitions($1, (now() AT TIME ZONE 'UTC')::date, $2)")
        .bind(site.as_str())
        .bind(PARTITION_MONTHS_AHEAD)
        .execute(&mut *tx)
        .await?;
    let sent = match revoked {
        Some(None) => 0,
        None | Some(Some(_)) => super::master::send_snapshot(&mut tx, site).await?,
    };
    tx.commit().await?;
    Ok(sent)
}

/// Creates the coming months' partitions for every site and moves months that sit in a
/// site's DEFAULT partition into partitions of their own (the hub's periodic task), so
/// retention can archive them like any other month.
pub async fn ensure_partitions(
    pool: &PgPool,
    sites: &[SiteId],
) -> Result<Vec<SplitMonth>, HubStoreError> {
    let mut split = Vec::new();
    for site in sites {
        let mut tx = pool.begin().await?;
        crate::db::query("SELECT mes_ensure_partitions($1, (now() AT TIME ZONE 'UTC')::date, $2)")
            .bind(site.as_str())
            .bind(PARTITION_MONTHS_AHEAD)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        split.extend(split_default(pool, site).await?);
    }
    Ok(split)
}

/// Moves up to [`SPLIT_MONTHS_PER_RUN_MAX`] months out of the site's DEFAULT partition,
/// oldest first, each into its own month partition, in one transaction.
pub async fn split_default(pool: &PgPool, site: &SiteId) -> Result<Vec<SplitMonth>, HubStoreError> {
    let mut tx = pool.begin().await?;
    let rows = crate::db::query("SELECT month, moved FROM mes_split_default($1, $2)")
        .bind(site.as_str())
        .bind(SPLIT_MONTHS_PER_RUN_MAX)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            Ok(SplitMonth {
                site: site.clone(),
                month: r.try_get("month")?,
                rows: r.try_get("moved")?,
            })
        })
        .collect()
}
