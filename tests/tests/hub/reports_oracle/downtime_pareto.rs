//! The `downtime-pareto` report against the oracle: seconds and stops per reason, with and
//! without planned stops, its order, share and cumulative share.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::oracle::{
    Ask, Fine, GROUPINGS, Range, api_keys, api_rows, check_num, check_ratio, fine_rows_of, num,
    pick_keys, ratio, same_groups,
};

/// Downtime pieces (any state but running, small stops included).
pub(super) async fn oracle_downtime(admin: &PgPool, range: Range) -> Vec<Fine> {
    fine_rows_of(
        admin,
        "x AS (SELECT p.*, NULL::text AS product FROM pieces p WHERE p.state <> 'running')",
        "x.reason, r.name AS reason_name, r.cat AS loss_category,
         (x.state = 'planned_stop' OR coalesce(r.cat, '') = 'planned') AS planned,
         x.secs AS m0, x.starts::float8 AS m1, 0::float8 AS m2",
        "LEFT JOIN o_reasons r ON r.code = x.reason",
        range,
        true,
    )
    .await
}

/// Every `group_by` set of `downtime-pareto` over one range, with and without planned stops;
/// how many groups were compared.
pub(super) async fn compare(ask: Ask<'_>, down: &[Fine]) -> usize {
    let Ask { seed, q, .. } = ask;
    let mut compared = 0usize;
    for planned in [false, true] {
        for groups in GROUPINGS {
            let path = format!(
                "/api/v1/reports/downtime-pareto?{q}&include_planned={planned}&group_by={}",
                groups.join(",")
            );
            let v = ask.report("downtime-pareto", &path, groups).await;
            let mut oracle: BTreeMap<Vec<Option<String>>, (f64, f64, &Fine)> = BTreeMap::new();
            for r in down.iter().filter(|r| planned || !r.planned) {
                let mut k = pick_keys(&r.keys, groups);
                k.push(r.reason.clone());
                let e = oracle.entry(k).or_insert((0.0, 0.0, r));
                e.0 += r.m[0];
                e.1 += r.m[1];
            }
            oracle.retain(|_, (s, n, _)| *s > 0.0 || *n > 0.0);
            let mut with_reason: Vec<&str> = groups.to_vec();
            with_reason.push("reason");
            let rows = v["rows"].as_array().unwrap();
            let api = api_rows(&v, &with_reason, &[]);
            let what = format!(
                "seed {seed}: downtime-pareto by {groups:?} (include_planned={planned}, {q})"
            );
            same_groups(&api, &oracle, &what, "groups and reasons differ");
            for (k, (secs, stops, f)) in &oracle {
                let ctx = format!("{what} group {k:?}");
                let a = api[k];
                check_num(&ctx, "seconds", a, *secs);
                check_num(&ctx, "stops", a, *stops);
                assert_eq!(
                    (a["reason_name"].as_str(), a["loss_category"].as_str()),
                    (f.reason_name.as_deref(), f.loss_category.as_deref()),
                    "{ctx}: reason name and loss category"
                );
                compared += 1;
            }
            // Order (seconds descending within a group), share and cumulative share.
            let mut cum = 0.0;
            for (i, r) in rows.iter().enumerate() {
                let g = api_keys(r, groups);
                let total: f64 = oracle
                    .iter()
                    .filter(|(k, _)| k[..groups.len()] == g[..])
                    .map(|(_, (s, _, _))| s)
                    .sum();
                if i == 0 || api_keys(&rows[i - 1], groups) != g {
                    cum = 0.0;
                } else {
                    assert!(
                        num(&rows[i - 1], "seconds") >= num(r, "seconds"),
                        "{what}: not sorted by seconds within group {g:?}: {} then {r}",
                        rows[i - 1]
                    );
                }
                cum += num(r, "seconds");
                let ctx = format!("{what} group {g:?} reason {}", r["reason"]);
                check_ratio(&ctx, "share", r, ratio(num(r, "seconds"), total));
                check_ratio(&ctx, "cumulative_share", r, ratio(cum, total));
            }
        }
    }
    compared
}
