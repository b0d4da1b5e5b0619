//! The `production` report against the oracle: good, scrap, total and scrap rate per group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sqlx::PgPool;

use super::oracle::{
    Ask, Fine, GROUPINGS, Range, Sums, api_rows, check_num, check_ratio, fine_rows_of, ratio,
    same_groups, sum_by,
};

/// Production facts in the range: good, scrap, ideal seconds, with scrap reason.
pub(super) async fn oracle_production(admin: &PgPool, range: Range) -> Vec<Fine> {
    let with = "x AS (
            SELECT e.site_id, e.equipment, date_trunc('hour', e.occurred_at, o.tz) AS hour,
                   ord.material AS product, e.good, e.scrap, e.scrap_reason,
                   (e.good + e.scrap) * coalesce(i.ideal_ms, 0) / 1000.0 AS ideal
            FROM eff e JOIN o_sites o ON o.site_id = e.site_id
            LEFT JOIN o_orders ord ON ord.site_id = e.site_id AND ord.id = e.work_order
            LEFT JOIN o_ideal i ON i.material = ord.material AND i.equipment = e.equipment
            WHERE e.kind = 'production_count')";
    let measures = "x.scrap_reason AS reason, NULL::text AS reason_name,
        NULL::text AS loss_category, false AS planned,
        x.good::float8 AS m0, x.scrap::float8 AS m1, x.ideal::float8 AS m2";
    fine_rows_of(admin, with, measures, "", range, true).await
}

/// Checks the total of a report of counts (`production`, `scrap`) against the oracle's `prod`:
/// good, scrap and the scrap rate of their sums.
pub(super) fn check_count_total(ctx: &str, v: &Value, prod: &[Fine]) {
    let (g, x) = prod
        .iter()
        .fold((0.0, 0.0), |(g, x), r| (g + r.m[0], x + r.m[1]));
    check_num(ctx, "good", &v["total"], g);
    check_num(ctx, "scrap", &v["total"], x);
    check_ratio(ctx, "scrap_rate", &v["total"], ratio(x, g + x));
}

/// Every `group_by` set of `production` over one range, group by group and the total; how
/// many groups were compared.
pub(super) async fn compare(ask: Ask<'_>, prod: &[Fine]) -> usize {
    let Ask { seed, q, .. } = ask;
    let mut compared = 0usize;
    let more: [&[&str]; 2] = [&["product"], &["site", "product", "shift"]];
    for groups in GROUPINGS.into_iter().chain(more) {
        let path = format!(
            "/api/v1/reports/production?{q}&group_by={}",
            groups.join(",")
        );
        let what = format!("seed {seed}: production by {groups:?} ({q})");
        let v = ask.report("production", &path, groups).await;
        let oracle = sum_by(prod, groups, 2, 0, 2);
        let oracle: Sums = oracle
            .into_iter()
            .filter(|(_, s)| s.iter().any(|x| *x != 0.0))
            .collect();
        let api = api_rows(&v, groups, &["good", "scrap"]);
        same_groups(&api, &oracle, &what, "groups differ");
        for (k, s) in &oracle {
            let ctx = format!("{what} group {k:?}");
            let a = api[k];
            check_num(&ctx, "good", a, s[0]);
            check_num(&ctx, "scrap", a, s[1]);
            check_num(&ctx, "total_count", a, s[0] + s[1]);
            check_ratio(&ctx, "scrap_rate", a, ratio(s[1], s[0] + s[1]));
            compared += 1;
        }
        let ctx = format!("{what} total");
        check_count_total(&ctx, &v, prod);
    }
    compared
}
