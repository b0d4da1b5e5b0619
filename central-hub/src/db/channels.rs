//! PostgreSQL NOTIFY channels: announcements made inside a transaction and delivered at its
//! commit (NOTIFY is transactional), to every hub instance that listens.

use shared_model::SiteId;
use sqlx::{Postgres, Transaction};

/// The channel on which every data change of a site is announced (payload `SITE:txid`, or
/// `*:txid` for master data): report caches of all hub instances listen to it.
pub const DATA_CHANNEL: &str = "mes_data";

/// The channel that wakes a site's sessions when its down log grew (payload: the site id).
pub const DOWN_CHANNEL: &str = "mes_down";

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

/// Wakes the site's sessions on every hub instance, at commit.
pub async fn notify_down(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
) -> Result<(), sqlx::Error> {
    crate::db::query("SELECT pg_notify($1, $2)")
        .bind(DOWN_CHANNEL)
        .bind(site.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
