//! The database's generation: which history of the data the hub is writing to.
//!
//! A point-in-time restore or a failover to an asynchronous replica takes the hub's database
//! back in time, and edges may hold what the lost history held (events the hub acknowledged,
//! down cursors, master versions). PostgreSQL itself tells that it happened: a restore ends
//! its recovery on a new WAL timeline, a promotion starts one, and a logical reload into
//! another cluster brings another system identifier. `mes_observe_generation()` (a migration
//! in [`super::schema`]) compares that pair with the newest row of `hub_generations` and, when
//! it changed, records the next generation, the newest instant the restored data knows, and
//! moves the down-log and master-version sequences past anything the lost timeline issued.
//!
//! A generation's number alone does not name a history: a second restore to before the row of
//! generation 2 was written makes another generation 2. [`Generation::same_history`] compares
//! everything that tells two histories apart.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use shared_model::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;

use super::convert::micros_of;
use super::error::HubStoreError;
use super::{PoolRole, begin};

/// Most generations [`history`] returns: one per restore or failover, so a hundred is years.
pub const HISTORY_ROWS_MAX: i64 = 100;

/// How long [`GenerationWatch`] trusts its last observation unless told otherwise.
pub const WATCH_TTL_DEFAULT: Duration = Duration::from_secs(5);

/// The longest a [`GenerationWatch`] may trust an observation: a restore must be noticed
/// within minutes, whatever the configuration says.
pub const WATCH_TTL_MAX: Duration = Duration::from_secs(300);

/// One history of the hub's data, as `hub_generations` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// 1 for the first observation, one more for each restore, promotion or reload.
    pub number: u32,
    /// PostgreSQL's system identifier (`pg_control_system()`), the bits of its `bigint`.
    pub system_id: u64,
    /// The WAL timeline the hub was writing on when the generation was detected.
    pub timeline: u32,
    /// When the hub first observed this generation.
    pub detected_at: Timestamp,
    /// The newest instant the data knew when this generation was detected (events received,
    /// down-log items written, shared records merged); `None` for the first generation.
    pub restore_point: Option<Timestamp>,
}

impl Generation {
    /// Whether `other` is this very history: the number, the cluster, the timeline and the
    /// instant of detection all agree. Two restores can each produce a generation with the
    /// same number; they differ in timeline or detection time.
    pub fn same_history(&self, other: &Generation) -> bool {
        self == other
    }

    fn from_row(row: &PgRow) -> Result<Generation, HubStoreError> {
        let number: i32 = row.try_get("number")?;
        let system_id: i64 = row.try_get("system_id")?;
        let timeline: i32 = row.try_get("timeline")?;
        let detected_at: OffsetDateTime = row.try_get("detected_at")?;
        let restore_point: Option<OffsetDateTime> = row.try_get("restore_point")?;
        // The table's checks keep both positive; a row that breaks them is corrupt, not a
        // reason to panic.
        let number = u32::try_from(number)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| HubStoreError::Corrupt(format!("generation number {number}")))?;
        let timeline = u32::try_from(timeline)
            .ok()
            .filter(|t| *t > 0)
            .ok_or_else(|| HubStoreError::Corrupt(format!("generation timeline {timeline}")))?;
        Ok(Generation {
            number,
            // The identifier is an unsigned 64-bit number PostgreSQL shows as a signed bigint.
            system_id: system_id as u64,
            timeline,
            detected_at: Timestamp::from_micros(micros_of(detected_at)),
            restore_point: restore_point.map(|t| Timestamp::from_micros(micros_of(t))),
        })
    }
}

/// Observes the database's generation: the current one, and whether this call is the one
/// that recorded it after an earlier generation (a restore, promotion or reload it is the
/// first to see). The first observation of a fresh database is generation 1 and not new.
/// Cheap when nothing changed: one statement that reads the control file and one index row.
pub async fn observe(pool: &PgPool) -> Result<(Generation, bool), HubStoreError> {
    // In a transaction of its own: the function's advisory lock is held to its end, and
    // behind PgBouncer the unnamed statement stays on one server connection.
    let mut tx = begin(pool, PoolRole::Write).await?;
    let row = crate::db::query(
        "SELECT number, system_id, timeline, detected_at, restore_point, is_new
         FROM mes_observe_generation()",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let is_new: bool = row.try_get("is_new")?;
    Ok((Generation::from_row(&row)?, is_new))
}

/// The recorded generations, newest first, at most [`HISTORY_ROWS_MAX`].
pub async fn history(pool: &PgPool) -> Result<Vec<Generation>, HubStoreError> {
    let rows = super::fetch_all_in_tx(
        pool,
        PoolRole::Read,
        crate::db::query(
            "SELECT number, system_id, timeline, detected_at, restore_point
             FROM hub_generations ORDER BY number DESC LIMIT $1",
        )
        .bind(HISTORY_ROWS_MAX),
    )
    .await?;
    rows.iter().map(Generation::from_row).collect()
}

/// The current generation for a hub instance's sessions, observed again at most once per
/// `ttl`: every session asks, and a restore is noticed within `ttl` of the first session after
/// it. Time is passed in, so a test decides when the observation is stale.
#[derive(Debug)]
pub struct GenerationWatch {
    pool: PgPool,
    ttl: Duration,
    /// The last observation and when it was made. Not held across the query: two callers that
    /// both find it stale both observe, which the database makes harmless.
    last: Mutex<Option<(Instant, Generation)>>,
}

impl GenerationWatch {
    /// A watch that observes again after [`WATCH_TTL_DEFAULT`].
    pub fn new(pool: PgPool) -> GenerationWatch {
        GenerationWatch::with_ttl(pool, WATCH_TTL_DEFAULT)
    }

    /// A watch with its own `ttl`, at most [`WATCH_TTL_MAX`].
    pub fn with_ttl(pool: PgPool, ttl: Duration) -> GenerationWatch {
        GenerationWatch {
            pool,
            ttl: ttl.min(WATCH_TTL_MAX),
            last: Mutex::new(None),
        }
    }

    /// How long an observation is trusted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The generation at `now`: the last observation while it is younger than the ttl, else a
    /// new one. A failed observation is returned as the error and forgets nothing: the next
    /// call observes again rather than serving a generation it could not confirm.
    pub async fn current(&self, now: Instant) -> Result<Generation, HubStoreError> {
        if let Some(g) = self.cached(now) {
            return Ok(g);
        }
        let (generation, _new) = observe(&self.pool).await?;
        *self.lock() = Some((now, generation.clone()));
        Ok(generation)
    }

    fn cached(&self, now: Instant) -> Option<Generation> {
        self.lock()
            .as_ref()
            .filter(|(at, _)| fresh(*at, now, self.ttl))
            .map(|(_, g)| g.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Generation)>> {
        // The guarded value is replaced whole, never left half-written: a poisoned lock still
        // holds a consistent observation.
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether an observation made at `at` is still trusted at `now`. A `now` before `at` (a
/// caller's instants out of order) counts as fresh: time has not passed.
fn fresh(at: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(at) < ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_is_trusted_for_the_ttl_only() {
        let at = Instant::now();
        let ttl = Duration::from_secs(5);
        for (after, trusted) in [
            (Duration::ZERO, true),
            (Duration::from_millis(4_999), true),
            (Duration::from_secs(5), false),
            (Duration::from_secs(60), false),
        ] {
            assert_eq!(fresh(at, at + after, ttl), trusted, "after {after:?}");
        }
        assert!(fresh(at + Duration::from_secs(1), at, ttl), "earlier now");
    }

    #[test]
    fn histories_differ_by_more_than_the_number() {
        let g = Generation {
            number: 2,
            system_id: 7_300_000_000_000_000_001,
            timeline: 2,
            detected_at: Timestamp::from_micros(1_795_000_000_000_000),
            restore_point: None,
        };
        assert!(g.same_history(&g.clone()));
        let other_timeline = Generation {
            timeline: 3,
            ..g.clone()
        };
        assert!(!g.same_history(&other_timeline));
    }
}
