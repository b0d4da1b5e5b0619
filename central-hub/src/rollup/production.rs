//! `production_hourly`: good and scrap counts per site-local hour, equipment, work order and
//! scrap reason. One upsert ([`production_upsert!`]) serves both writers: the ingest's sums
//! (`crate::ingest`) and the correction rollups here.

use shared_model::SiteId;
use sqlx::{Postgres, Transaction};

use super::SiteClock;
use super::facts::{Fact, FactBody};
use crate::db::HubStoreError;
use crate::db::convert::ts;

/// The `production_hourly` upsert: `$1` the site, `$2` its time zone, `$3`–`$9` the arrays
/// (instant, equipment, work order or "", scrap reason or "", good, scrap, events) whose rows
/// are summed per hour and key and added to the stored row.
///
/// The rows are inserted — and so locked — in key order (`ORDER BY`): two transactions of
/// one site that touch the same hours then take their row locks in the same order and one
/// waits for the other instead of each holding a row the other needs (a deadlock, which
/// PostgreSQL breaks by aborting one ingest). The ingest's copy had this order and the
/// correction rollup's did not; both use this one now.
macro_rules! production_upsert {
    () => {
        r#"
    INSERT INTO production_hourly AS p (site_id, hour, equipment, work_order, scrap_reason,
                                        good, scrap, events)
    SELECT $1, date_trunc('hour', u.at, $2), u.eq, u.wo, u.reason, sum(u.good), sum(u.scrap),
           sum(u.n)
    FROM UNNEST($3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[],
                $9::int8[]) AS u(at, eq, wo, reason, good, scrap, n)
    GROUP BY 2, 3, 4, 5
    ORDER BY 2, 3, 4, 5
    ON CONFLICT (site_id, hour, equipment, work_order, scrap_reason) DO UPDATE
        SET good = p.good + excluded.good, scrap = p.scrap + excluded.scrap,
            events = p.events + excluded.events"#
    };
}
pub(crate) use production_upsert;

/// Adds the production facts of `adds` and subtracts those of `removes`.
pub(super) async fn apply(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    clock: &SiteClock,
    adds: &[Fact],
    removes: &[Fact],
) -> Result<(), HubStoreError> {
    let mut at = Vec::new();
    let mut equipment = Vec::new();
    let mut work_order = Vec::new();
    let mut reason = Vec::new();
    let mut good = Vec::new();
    let mut scrap = Vec::new();
    let mut events = Vec::new();
    for (sign, facts) in [(1i64, adds), (-1i64, removes)] {
        for f in facts {
            if let FactBody::Production(p) = &f.body {
                at.push(ts(f.at));
                equipment.push(p.equipment.to_string());
                work_order.push(
                    p.work_order
                        .as_ref()
                        .map_or(String::new(), |w| w.to_string()),
                );
                reason.push(
                    p.scrap_reason
                        .as_ref()
                        .map_or(String::new(), |r| r.to_string()),
                );
                good.push(sign * i64::from(p.good));
                scrap.push(sign * i64::from(p.scrap));
                events.push(sign);
            }
        }
    }
    if at.is_empty() {
        return Ok(());
    }
    crate::db::query(production_upsert!())
        .bind(site.as_str())
        .bind(&clock.timezone)
        .bind(&at)
        .bind(&equipment)
        .bind(&work_order)
        .bind(&reason)
        .bind(&good)
        .bind(&scrap)
        .bind(&events)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
