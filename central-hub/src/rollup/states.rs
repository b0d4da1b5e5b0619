//! The state rollups' SQL: per equipment, the stored window of the timeline that a batch's
//! edits touch is read under an advisory lock, rewritten ([`super::timeline::rewrite`]),
//! and the difference written to `state_changes`, `state_current` and `state_hourly`.

use shared_model::SiteId;
use sqlx::{Postgres, Row as _, Transaction};
use uuid::Uuid;

use super::SiteClock;
use super::facts::Fact;
use super::timeline::{self, Deltas, Edit, Point};
use crate::db::HubStoreError;
use crate::db::convert::{micros_of, ts_micros};

type Tx = Transaction<'static, Postgres>;

pub(super) async fn apply(
    tx: &mut Tx,
    site: &SiteId,
    clock: &SiteClock,
    adds: &[Fact],
    removes: &[Fact],
) -> Result<(), HubStoreError> {
    let edits = timeline::edits_by_equipment(adds, removes);
    let mut acc = Deltas::new();
    for (equipment, list) in &edits {
        apply_equipment(tx, site, clock, equipment, list, &mut acc).await?;
    }
    write_hourly(tx, site, acc).await
}

/// One equipment's edits: its window read and rewritten, the deltas added to `acc`.
async fn apply_equipment(
    tx: &mut Tx,
    site: &SiteId,
    clock: &SiteClock,
    equipment: &str,
    list: &[Edit],
    acc: &mut Deltas,
) -> Result<(), HubStoreError> {
    // Two instances ingesting for one site must not interleave their view of a timeline.
    crate::db::query("SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))")
        .bind(site.as_str())
        .bind(equipment)
        .execute(&mut **tx)
        .await?;
    let lo = list.iter().map(|e| e.point.at).min().unwrap_or(0);
    let hi = list.iter().map(|e| e.point.at).max().unwrap_or(0);
    let old = read_window(tx, site, equipment, lo, hi).await?;
    let new = timeline::rewrite(&old, list);
    timeline::window_deltas(acc, clock, equipment, &old, &new);
    // Without a later point the window reaches the end of the timeline: its last point is
    // the current state.
    let at_end: bool = crate::db::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM state_changes
                            WHERE site_id = $1 AND equipment = $2 AND at > $3)",
    )
    .bind(site.as_str())
    .bind(equipment)
    .bind(ts_micros(hi))
    .fetch_one(&mut **tx)
    .await?;
    if at_end {
        write_current(tx, site, equipment, new.last()).await?;
    }
    write_changes(tx, site, equipment, list).await
}

/// The stored points from the last one before `lo` through the first one after `hi`: every
/// interval the edits in `lo..=hi` can change.
async fn read_window(
    tx: &mut Tx,
    site: &SiteId,
    equipment: &str,
    lo: i64,
    hi: i64,
) -> Result<Vec<Point>, HubStoreError> {
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
    .bind(ts_micros(lo))
    .bind(ts_micros(hi))
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Point {
                at: micros_of(r.try_get("at")?),
                id: r.try_get("fact_id")?,
                state: r.try_get("state")?,
                reason: r.try_get("reason")?,
            })
        })
        .collect()
}

/// `state_current`: the timeline's last point, or no row once it has none.
async fn write_current(
    tx: &mut Tx,
    site: &SiteId,
    equipment: &str,
    last: Option<&Point>,
) -> Result<(), HubStoreError> {
    match last {
        Some(last) => {
            crate::db::query(
                "INSERT INTO state_current (site_id, equipment, at, state, reason)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (site_id, equipment) DO UPDATE
                     SET at = excluded.at, state = excluded.state, reason = excluded.reason",
            )
            .bind(site.as_str())
            .bind(equipment)
            .bind(ts_micros(last.at))
            .bind(&last.state)
            .bind(&last.reason)
            .execute(&mut **tx)
            .await?;
        }
        None => {
            crate::db::query("DELETE FROM state_current WHERE site_id = $1 AND equipment = $2")
                .bind(site.as_str())
                .bind(equipment)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// `state_changes`: the removed points deleted, the inserted ones added.
async fn write_changes(
    tx: &mut Tx,
    site: &SiteId,
    equipment: &str,
    list: &[Edit],
) -> Result<(), HubStoreError> {
    let gone = timeline::removed(list);
    if !gone.is_empty() {
        let (ats, ids): (Vec<_>, Vec<Uuid>) = gone.iter().map(|(a, i)| (ts_micros(*a), *i)).unzip();
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
    let ins: Vec<&Point> = list.iter().filter(|e| e.insert).map(|e| &e.point).collect();
    if ins.is_empty() {
        return Ok(());
    }
    let ats: Vec<_> = ins.iter().map(|p| ts_micros(p.at)).collect();
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
    Ok(())
}

/// `state_hourly`: the accumulated deltas added to the stored buckets.
async fn write_hourly(tx: &mut Tx, site: &SiteId, mut acc: Deltas) -> Result<(), HubStoreError> {
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
        hours.push(ts_micros(h));
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
