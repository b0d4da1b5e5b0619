//! Authorization and bad parameters of the report endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use shared_model::SiteId;
use sync_protocol::store::HubStore;
use system_tests::hq::{Api, array_len, t};

use super::{expect, row_of};

/// Authorization and bad parameters: a site token naming another site gets `403` and no data,
/// an HQ read token cannot release work orders, and every documented bad parameter is a `400`
/// with `{"error": {"code", "message", "field"}}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_and_bad_parameters() {
    use system_tests::hq::{count, event};
    let (h, hub, base, http) = super::berlin_and_kolkata("authz").await;
    for (s, good) in [("SITE_B", 11), ("SITE_K", 22)] {
        let site = SiteId::new(s).unwrap();
        let e = event(
            &site,
            1,
            t("2026-11-03T10:00:00Z"),
            count("PRESS-01", &format!("{s}-WO-1"), good, 0),
        );
        h.store.ingest_events(&site, &[e]).await.unwrap();
    }
    let reader = h.token("hq:read", None).await;
    let api = Api::new(&http, &base, &reader);
    let k_token = h.token("hq:read", Some("SITE_K")).await;
    let k_api = Api::new(&http, &base, &k_token);
    let range = "from=2026-11-03&to=2026-11-04";

    // Without a token: 401.
    let r = http
        .get(format!("{base}/api/v1/reports/oee?{range}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "oee without a token");

    // A SITE_K token naming SITE_B, alone or with its own site: 403 and no rows, on every report.
    for report in [
        "oee",
        "production",
        "scrap",
        "downtime-pareto",
        "on-time",
        "wip",
    ] {
        for sites in ["SITE_B", "SITE_K,SITE_B", "SITE_K&site=SITE_B"] {
            let (status, v, _) = k_api
                .get(&format!("/api/v1/reports/{report}?{range}&site={sites}"))
                .await;
            assert_eq!(
                status, 403,
                "{report} with a SITE_K token and site={sites}: {v}"
            );
            assert!(
                v.get("rows").is_none(),
                "{report}: a 403 carries no data: {v}"
            );
        }
    }
    let (status, v, _) = k_api.get("/api/v1/work-orders?site=SITE_B").await;
    assert_eq!(
        status, 403,
        "work-orders with a SITE_K token and site=SITE_B: {v}"
    );
    // Naming no site, the site token gets its own site only.
    let (status, v, _) = k_api
        .get(&format!("/api/v1/reports/production?{range}"))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["sites"],
        json!(["SITE_K"]),
        "production with a SITE_K token: {v}"
    );
    assert_eq!(array_len(&v, "rows"), 1, "{v}");
    expect(
        "production",
        "SITE_K token, site=SITE_K",
        row_of(&v, "production", &[("site", Some("SITE_K"))]),
        "good",
        22.0,
    );
    expect("production", "SITE_K token", &v["total"], "good", 22.0);
    // The HQ-wide token sees both.
    let v = api
        .json(&format!("/api/v1/reports/production?{range}"))
        .await;
    assert_eq!(v["sites"], json!(["SITE_B", "SITE_K"]), "{v}");
    expect("production", "HQ token", &v["total"], "good", 33.0);

    // Read tokens (HQ-wide or site-scoped) cannot release work orders; nothing is created.
    for api in [&api, &k_api] {
        let order = json!({"id": "SITE_K-WO-99", "material": "BRACKET-7", "planned_quantity": 5});
        let path = "/api/v1/sites/SITE_K/work-orders";
        let r = api.send_json(reqwest::Method::POST, path, &order).await;
        assert_eq!(
            r.status().as_u16(),
            403,
            "POST work-orders with a read token"
        );
    }
    let v = api.json("/api/v1/work-orders?state=all").await;
    assert!(
        !v.to_string().contains("SITE_K-WO-99"),
        "a refused release left an order: {v}"
    );

    // Bad parameters: 400, JSON error naming the field.
    for (path, field) in [
        ("oee?site=SITE_Z", "site"),
        ("oee?from=2026-11-04&to=2026-11-03", "from"),
        (
            "oee?from=2026-11-03T00:00:00Z&to=2026-11-03T00:00:00Z",
            "from",
        ),
        (
            "oee?from=2025-10-01T00:00:00Z&to=2026-11-05T00:00:01Z",
            "to",
        ),
        ("production?from=2020-01-01&to=2026-01-01", "to"),
        ("oee?group_by=colour", "group_by"),
        ("oee?group_by=product", "group_by"),
        ("downtime-pareto?group_by=product", "group_by"),
        ("on-time?group_by=equipment", "group_by"),
        ("wip?group_by=day", "group_by"),
        ("oee?from=yesterday", "from"),
        ("oee?format=xml", "format"),
        ("downtime-pareto?include_planned=maybe", "include_planned"),
        ("genealogy/LOT-1?direction=sideways", "direction"),
        ("oee?sight=SITE_B", "query"),
        ("nonsense", "report"),
    ] {
        let e = api.bad_parameter(path, field).await;
        assert!(
            e["code"].as_str().is_some_and(|c| !c.is_empty())
                && e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: error without code or message: {e}"
        );
    }
    // The limit is inclusive: exactly 400 days (2025-10-01 + 400 d = 2026-11-05) is answered.
    let (status, v, _) = api
        .get("/api/v1/reports/production?from=2025-10-01T00:00:00Z&to=2026-11-05T00:00:00Z")
        .await;
    assert_eq!(status, 200, "a range of exactly 400 days: {v}");
    hub.stop().await.unwrap();
}
