//! The hourly partition task: the coming months' partitions of every site, and months that
//! landed in a site's DEFAULT partition moved into their own.

use sqlx::PgPool;

use super::PARTITION_INTERVAL;
use crate::db::sites::ensure_partitions;

pub(super) async fn partition_loop(pool: PgPool) {
    loop {
        // The hub role reads only its scoped rows, so it asks the SECURITY DEFINER function
        // per site id it knows from the partition catalogue instead of the sites table.
        let sites: Result<Vec<String>, _> = async {
            let mut tx = crate::db::begin(&pool, crate::db::PoolRole::Write).await?;
            let sites = crate::db::query_scalar(
                "SELECT upper(substr(c.relname, 10)) FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname = 'events'",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(sites)
        }
        .await;
        match sites {
            Ok(sites) => {
                let ids: Vec<_> = sites
                    .into_iter()
                    .filter_map(|s| shared_model::SiteId::new(s).ok())
                    .collect();
                match ensure_partitions(&pool, &ids).await {
                    Ok(split) => {
                        for s in split {
                            tracing::info!(site = %s.site, month = %s.month, rows = s.rows,
                                "moved a month out of the site's default partition");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "creating partitions failed; will retry"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing partitions failed; will retry"),
        }
        tokio::time::sleep(PARTITION_INTERVAL).await;
    }
}
