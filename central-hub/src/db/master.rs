//! HQ master data: stored versioned in `master_data` and sent down to the sites it concerns.
//!
//! Materials, routings, reason codes and equipment go to every site (the equipment hierarchy
//! is small and a site ignores other plants' units); a shift calendar and a person go to their own site.
//! Each upsert gets a new version from one sequence, and the edge keeps the newest version
//! per key, so replays and reorderings are harmless.

use shared_model::SiteId;
use shared_model::master::{MasterKind, MasterRecord};
use sqlx::PgPool;
use sync_protocol::message::DownItem;

use super::store::HubStoreError;

/// Most records one upload may carry.
pub const RECORDS_PER_UPLOAD_MAX: usize = 10_000;

/// Stores and publishes records to `sites` in one transaction; returns the versions given.
pub async fn publish(
    pool: &PgPool,
    sites: &[SiteId],
    records: &[MasterRecord],
) -> Result<Vec<u64>, HubStoreError> {
    let mut tx = pool.begin().await?;
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
            // Site-owned records go to their own site only.
            let owner = match record {
                MasterRecord::ShiftCalendar(c) => Some(&c.site_id),
                MasterRecord::Personnel(p) => Some(&p.site_id),
                _ => None,
            };
            if owner.is_some_and(|o| o != site) {
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
            super::store::notify_down(&mut tx, site).await?;
        }
    }
    // Reports read master data (reasons, routings, calendars): cached answers are stale now.
    super::store::notify_data(&mut tx, None).await?;
    tx.commit().await?;
    Ok(versions)
}

/// The kind named in `PUT /api/v1/master-data/{kind}`; `shifts` is accepted for shift
/// calendars.
pub fn kind_from_path(s: &str) -> Option<MasterKind> {
    match s {
        "shifts" => Some(MasterKind::ShiftCalendar),
        other => MasterKind::parse(other),
    }
}
