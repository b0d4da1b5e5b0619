//! HQ master data: stored versioned in `master_data` and sent down to the sites it concerns.
//!
//! Materials, routings, reason codes and equipment go to every site (the equipment hierarchy
//! is small and a site ignores other plants' units); a shift calendar and a person go to their own site.
//! Each upsert gets a new version from one sequence, and the edge keeps the newest version
//! per key, so replays and reorderings are harmless.

use shared_model::SiteId;
use shared_model::master::{MasterKind, MasterRecord};
use sqlx::{PgPool, Postgres, Row as _, Transaction};
use sync_protocol::message::DownItem;

use super::channels::{notify_data, notify_down};
use super::error::HubStoreError;

/// Most records one upload may carry.
pub const RECORDS_PER_UPLOAD_MAX: usize = 10_000;

/// Stores and publishes records to `sites` in one transaction; returns the versions given.
pub async fn publish(
    pool: &PgPool,
    sites: &[SiteId],
    records: &[MasterRecord],
) -> Result<Vec<u64>, HubStoreError> {
    let mut tx = super::begin(pool, super::PoolRole::Write).await?;
    let mut versions = Vec::with_capacity(records.len());
    for record in records {
        let json = serde_json::to_value(record)
            .map_err(|e| HubStoreError::Corrupt(format!("master record: {e}")))?;
        let version: i64 = crate::db::query_scalar(
            "INSERT INTO master_data (kind, key, version, json)
             VALUES ($1, $2, nextval('master_version_seq'), $3)
             ON CONFLICT (kind, key) DO UPDATE SET version = excluded.version, json = excluded.json
             RETURNING version",
        )
        .bind(record.kind().as_str())
        .bind(record.key())
        .bind(json)
        .fetch_one(&mut *tx)
        .await?;
        versions.push(version as u64);
        for site in sites {
            if !concerns(record, site) {
                continue;
            }
            // Each site's rows are written under that site's row-level-security scope.
            crate::db::query("SELECT set_config('app.current_site_id', $1, true)")
                .bind(site.as_str())
                .execute(&mut *tx)
                .await?;
            let item = DownItem::MasterUpsert {
                version: version as u64,
                record: record.clone(),
            };
            let bytes = postcard::to_stdvec(&item)
                .map_err(|e| HubStoreError::Corrupt(format!("cannot encode down item: {e}")))?;
            crate::db::query("INSERT INTO down_log (site_id, item) VALUES ($1, $2)")
                .bind(site.as_str())
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
            notify_down(&mut tx, site).await?;
        }
    }
    // Reports read master data (reasons, routings, calendars): cached answers are stale now.
    notify_data(&mut tx, None).await?;
    tx.commit().await?;
    Ok(versions)
}

/// Whether `record` goes to `site`: site-owned records (a shift calendar, a person) to their
/// own site only, everything else to every site.
pub fn concerns(record: &MasterRecord, site: &SiteId) -> bool {
    let owner = match record {
        MasterRecord::ShiftCalendar(c) => Some(&c.site_id),
        MasterRecord::Personnel(p) => Some(&p.site_id),
        MasterRecord::Material(_)
        | MasterRecord::RoutingStep(_)
        | MasterRecord::ReasonCode(_)
        | MasterRecord::Equipment(_)
        | MasterRecord::InspectionPlan(_) => None,
    };
    owner.is_none_or(|o| o == site)
}

/// Appends the whole current master data that concerns `site` to its down log, oldest version
/// first, in the caller's transaction: a site added after master data was imported (or
/// re-admitted after a revocation, during which uploads skipped it) starts with everything
/// its edge needs, before its first session. Returns the number of records queued.
pub async fn send_snapshot(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
) -> Result<usize, HubStoreError> {
    crate::db::query("SELECT set_config('app.current_site_id', $1, true)")
        .bind(site.as_str())
        .execute(&mut **tx)
        .await?;
    let rows = crate::db::query(
        "SELECT version, json FROM master_data WHERE json IS NOT NULL ORDER BY version",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut items: Vec<Vec<u8>> = Vec::new();
    for row in rows {
        let version: i64 = row.try_get("version")?;
        let json: serde_json::Value = row.try_get("json")?;
        let record: MasterRecord = serde_json::from_value(json)
            .map_err(|e| HubStoreError::Corrupt(format!("master record version {version}: {e}")))?;
        if !concerns(&record, site) {
            continue;
        }
        let item = DownItem::MasterUpsert {
            version: version as u64,
            record,
        };
        items.push(
            postcard::to_stdvec(&item)
                .map_err(|e| HubStoreError::Corrupt(format!("cannot encode down item: {e}")))?,
        );
    }
    if items.is_empty() {
        return Ok(0);
    }
    crate::db::query(
        "INSERT INTO down_log (site_id, item)
         SELECT $1, item FROM unnest($2::bytea[]) WITH ORDINALITY AS u (item, n) ORDER BY n",
    )
    .bind(site.as_str())
    .bind(&items)
    .execute(&mut **tx)
    .await?;
    notify_down(tx, site).await?;
    Ok(items.len())
}

/// The kind named in `PUT /api/v1/master-data/{kind}`; `shifts` is accepted for shift
/// calendars.
pub fn kind_from_path(s: &str) -> Option<MasterKind> {
    match s {
        "shifts" => Some(MasterKind::ShiftCalendar),
        other => MasterKind::parse(other),
    }
}
