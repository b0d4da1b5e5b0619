//! The `scrap` report against the oracle: scrap per reason within each group, its share, and
//! the order within a group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use super::oracle::{
    Ask, Fine, api_keys, api_rows, check_num, check_ratio, num, pick_keys, ratio, same_groups,
};

/// Every `group_by` set of `scrap` over one range; how many groups were compared.
pub(super) async fn compare(ask: Ask<'_>, prod: &[Fine]) -> usize {
    let Ask { seed, q, .. } = ask;
    let mut compared = 0usize;
    for groups in [&[][..], &["site"], &["product"], &["site", "day"]] {
        let path = format!("/api/v1/reports/scrap?{q}&group_by={}", groups.join(","));
        let what = format!("seed {seed}: scrap by {groups:?} ({q})");
        let v = ask.report("scrap", &path, groups).await;
        let mut oracle: BTreeMap<Vec<Option<String>>, f64> = BTreeMap::new();
        for r in prod {
            let mut k = pick_keys(&r.keys, groups);
            k.push(r.reason.clone());
            *oracle.entry(k).or_default() += r.m[1];
        }
        oracle.retain(|_, s| *s != 0.0);
        let mut with_reason: Vec<&str> = groups.to_vec();
        with_reason.push("reason");
        let rows = v["rows"].as_array().unwrap();
        let api = api_rows(&v, &with_reason, &["scrap"]);
        same_groups(&api, &oracle, &what, "groups and reasons differ");
        for (k, s) in &oracle {
            let ctx = format!("{what} group {k:?}");
            let group_total: f64 = oracle
                .iter()
                .filter(|(o, _)| o[..groups.len()] == k[..groups.len()])
                .map(|(_, x)| x)
                .sum();
            check_num(&ctx, "scrap", api[k], *s);
            check_ratio(&ctx, "share", api[k], ratio(*s, group_total));
            compared += 1;
        }
        for w in rows.windows(2) {
            if api_keys(&w[0], groups) == api_keys(&w[1], groups) {
                assert!(
                    num(&w[0], "scrap") >= num(&w[1], "scrap"),
                    "seed {seed}: scrap by {groups:?} ({q}): not sorted by scrap within a group: {} then {}",
                    w[0],
                    w[1]
                );
            }
        }
        let ctx = format!("{what} total");
        super::production::check_count_total(&ctx, &v, prod);
    }
    compared
}
