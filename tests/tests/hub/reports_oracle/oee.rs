//! The `oee` report against the oracle: planned production time, stops, ideal time and counts
//! per group, and availability, performance, quality and OEE formed from the summed parts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sqlx::PgPool;

use super::oracle::{
    Ask, Fine, GROUPINGS, Range, Sums, api_rows, check_num, check_ratio, fine_rows_of, merge,
    ratio, same_groups, sum_by,
};

/// Planned production time and stop time (clamped to it) per equipment and hour.
pub(super) async fn oracle_time(admin: &PgPool, range: Range) -> Vec<Fine> {
    let with = "stops AS (
            SELECT p.site_id, p.equipment, p.hour, sum(p.secs) AS secs
            FROM pieces p LEFT JOIN o_reasons r ON r.code = p.reason
            WHERE p.state NOT IN ('running', 'planned_stop') AND NOT p.small
              AND (p.reason IS NULL OR coalesce(r.counts, true))
            GROUP BY 1, 2, 3),
         x AS (
            SELECT coalesce(p.site_id, s.site_id) AS site_id,
                   coalesce(p.equipment, s.equipment) AS equipment,
                   coalesce(p.hour, s.hour) AS hour, NULL::text AS product,
                   coalesce(p.secs, 0) AS ppt, least(coalesce(s.secs, 0), coalesce(p.secs, 0)) AS stop
            FROM ppt p FULL JOIN stops s
              ON s.site_id = p.site_id AND s.equipment = p.equipment AND s.hour = p.hour)";
    let measures = "x.ppt::float8 AS m0, x.stop::float8 AS m1, 0::float8 AS m2";
    fine_rows_of(admin, with, measures, "", range, false).await
}

fn oee_check(ctx: &str, api: &Value, s: &[f64]) {
    // Sums in the order of `sum_by` below: PPT, stop, good, scrap, ideal.
    let (ppt, stop, good, scrap, ideal) = (s[0], s[1], s[2], s[3], s[4]);
    let run = (ppt - stop).max(0.0);
    let total = good + scrap;
    check_num(ctx, "planned_production_seconds", api, ppt);
    check_num(ctx, "stop_seconds", api, stop);
    check_num(ctx, "run_seconds", api, run);
    check_num(ctx, "ideal_seconds", api, ideal);
    check_num(ctx, "good", api, good);
    check_num(ctx, "scrap", api, scrap);
    check_num(ctx, "total_count", api, total);
    check_ratio(ctx, "availability", api, ratio(run, ppt));
    check_ratio(ctx, "performance", api, ratio(ideal, run));
    check_ratio(ctx, "quality", api, ratio(good, total));
    // OEE = A × P × Q from the summed components = ideal × Q / PPT (0 without counts).
    check_ratio(
        ctx,
        "oee",
        api,
        ratio(ideal * ratio(good, total).unwrap_or(0.0), ppt),
    );
}

/// Every `group_by` set of `oee` over one range, group by group and the total; how many groups
/// were compared.
pub(super) async fn compare(ask: Ask<'_>, prod: &[Fine], time: &[Fine]) -> usize {
    let Ask { seed, q, .. } = ask;
    let mut compared = 0usize;
    for groups in GROUPINGS.into_iter().chain([&["equipment", "day"][..]]) {
        let path = format!("/api/v1/reports/oee?{q}&group_by={}", groups.join(","));
        let what = format!("seed {seed}: oee by {groups:?} ({q})");
        let v = ask.report("oee", &path, groups).await;
        let oracle = merge(sum_by(time, groups, 5, 0, 2), sum_by(prod, groups, 5, 2, 3));
        let oracle: Sums = oracle
            .into_iter()
            .filter(|(_, s)| s.iter().any(|x| *x != 0.0))
            .collect();
        let api = api_rows(
            &v,
            groups,
            &[
                "planned_production_seconds",
                "stop_seconds",
                "ideal_seconds",
                "good",
                "scrap",
            ],
        );
        same_groups(&api, &oracle, &what, "groups differ");
        for (k, s) in &oracle {
            oee_check(&format!("{what} group {k:?}"), api[k], s);
            compared += 1;
        }
        let all: Vec<f64> = (0..5)
            .map(|i| oracle.values().map(|s| s[i]).sum())
            .collect();
        oee_check(&format!("{what} total"), &v["total"], &all);
    }
    compared
}
