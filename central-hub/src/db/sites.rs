//! Site administration as the database owner: registering a site (`site add`) and keeping its
//! monthly partitions ahead of time (the hub's periodic partition task).

use shared_model::SiteId;
use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;

use super::error::HubStoreError;
use super::{PoolRole, begin};

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
    let mut tx = begin(pool, PoolRole::Write).await?;
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
        let mut tx = begin(pool, PoolRole::Write).await?;
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
    let mut tx = begin(pool, PoolRole::Write).await?;
    let rows = crate::db::query("SELECT month, moved FROM mes_split_default($1, $2)")
        .bind(site.as_str())
        .bind(SPLIT_MONTHS_PER_RUN_MAX)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let split = rows
        .iter()
        .map(|r| {
            Ok(SplitMonth {
                site: site.clone(),
                month: r.try_get("month")?,
                rows: r.try_get("moved")?,
            })
        })
        .collect::<Result<Vec<_>, HubStoreError>>()?;
    debug_assert!(
        split.len() <= SPLIT_MONTHS_PER_RUN_MAX as usize && split.iter().all(|m| m.rows >= 0),
        "mes_split_default moved more months than asked, or a negative row count"
    );
    Ok(split)
}
