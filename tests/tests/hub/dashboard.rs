//! The HQ dashboard in a real headless Chromium, driven over WebDriver (Debian `chromium` and
//! `chromium-driver`; `.ci/run` installs them), against real hubs on real PostgreSQL.
//!
//! Known data goes in through the real ingest path: two sites on one day whose OEE, A/P/Q,
//! downtime Pareto and daily production are worked out by hand below, orders overdue and due
//! soon, and three sync states (online, offline, lagging). The page loads from the binary with
//! a token and a fixed range in its URL fragment; the test waits (bounded) until the page's
//! refresh finished, then reads the numbers written on the charts, the bars' proportions, the
//! Pareto order and the sync status out of the live DOM, keeps a screenshot in
//! `target/test-artifacts/dashboard.png` (`UPDATE_SCREENSHOTS=1` also refreshes
//! `docs/screenshots/dashboard.png`), uses the site filter and a range button as a person
//! would, and finally checks that a bad token (401), a hub without its reporting database (503)
//! and an exhausted rate limit (429) are each told in words.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use central_hub::serve::{self, ReportSettings, ServeConfig};
use serde_json::json;
use shared_model::SiteId;
use shared_model::event::MachineState;
use sync_protocol::store::HubStore;
use system_tests::browser::{Browser, Page, artifacts};
use system_tests::hq::{
    Hq, count, every, hq, put_master, rate_limit, release_order, seed_worked_example, serve_config,
    timeline,
};

/// Opens the dashboard of the hub at `addr` with `token`, waits for its first refresh and
/// asserts that its banner says `want`; returns the page.
async fn open_with_banner(
    browser: &Browser,
    addr: std::net::SocketAddr,
    token: &str,
    want: &str,
) -> Page {
    browser.goto(&format!("http://{addr}/#token={token}")).await;
    let page = browser.rendered_after(0).await;
    assert!(page.banner().contains(want), "{}", page.banner());
    page
}

/// SITE_A is the worked example (Berlin, 7.5 h planned, 45 min jam: A 90.0 %, P 88.9 %,
/// Q 98.0 %, OEE 78.4 %, 10,584 good). SITE_B (UTC, no shift calendar: 24 h planned on
/// 2026-11-02) jams for 60 min and changes a tool for 20 min: run 86,400 − 4,800 = 81,600 s;
/// 216 counts of 95 good + 5 scrap = 21,600 parts at 2 s ideal = 43,200 s: A 94.4 %,
/// P 52.9 %, Q 95.0 %, OEE 20,520 × 2 / 86,400 = 47.5 % (below the page's 60 % threshold).
/// Both, from summed components: A = 105,900 / 113,400 = 93.4 %, P = 64,800 / 105,900 =
/// 61.2 %, Q = 31,104 / 32,400 = 96.0 %, OEE 54.9 %.
/// Pareto (planned stops left out): jam 105 min in 2 stops (84.0 %), tool 20 min (100.0 %).
/// SITE_C has no production; its edge is connected with a 15-minute-old backlog (lagging).
async fn seed(h: &Hq, base: &str) {
    let http = reqwest::Client::new();
    let writer = h.token("hq:write", None).await;
    seed_worked_example(h, &http, base, &writer).await;
    put_master(&http, base, &writer, "reason-codes", json!([
        {"code": "DOWN.JAM", "parent": null, "name": "Material jam", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "DOWN.TOOL", "parent": null, "name": "Tool change", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "SCRAP.BURR", "parent": null, "name": "Burr", "loss_category": "quality", "counts_against_availability": false}])).await;
    let soon = time::OffsetDateTime::now_utc() + time::Duration::hours(6);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for order in [
        json!({"id": "SITE_B-WO-1", "material": "BRACKET-7", "planned_quantity": 30000, "due": "2030-01-01T00:00:00Z"}),
        json!({"id": "SITE_B-WO-2", "material": "BRACKET-7", "planned_quantity": 500, "due": soon}),
    ] {
        release_order(&http, base, &writer, "SITE_B", &order).await;
    }
    let b = SiteId::new("SITE_B").unwrap();
    let mut events = timeline(
        &b,
        1,
        "PRESS-01",
        &[
            ("2026-11-02T00:00:00Z", MachineState::Running, None),
            ("2026-11-02T01:00:00Z", MachineState::Down, Some("DOWN.JAM")),
            ("2026-11-02T02:00:00Z", MachineState::Running, None),
            (
                "2026-11-02T10:00:00Z",
                MachineState::Down,
                Some("DOWN.TOOL"),
            ),
            ("2026-11-02T10:20:00Z", MachineState::Running, None),
        ],
    );
    events.extend(every(
        &b,
        10,
        "2026-11-02T02:00:00Z",
        5,
        216,
        &count("PRESS-01", "SITE_B-WO-1", 95, 5),
    ));
    h.store.ingest_events(&b, &events).await.unwrap();
    sqlx::query(
        "UPDATE sites SET connected = true, last_seen_at = now(), edge_pending_events = 0
         WHERE site_id = 'SITE_A'",
    )
    .execute(&h.admin)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE sites SET connected = true, last_seen_at = now(), edge_pending_events = 1200,
                edge_oldest_pending_at = now() - interval '15 minutes', edge_status_at = now()
         WHERE site_id = 'SITE_C'",
    )
    .execute(&h.admin)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_figures_in_chromium() {
    let h = hq(
        "dash",
        &[
            ("SITE_A", "Europe/Berlin"),
            ("SITE_B", "UTC"),
            ("SITE_C", "UTC"),
        ],
    )
    .await;
    let hub = h.hub(ReportSettings::default()).await;
    let base = format!("http://{}", hub.http_addr);
    seed(&h, &base).await;
    let reader = h.token("hq:read", None).await;

    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "{base}/#token={reader}&from=2026-11-02&to=2026-11-03"
        ))
        .await;
    let page = browser.rendered_after(0).await;
    page.assert_loaded();
    assert!(page.text("refreshed").starts_with("updated "));
    assert_eq!(page.text("range"), "2026-11-02 → 2026-11-03");
    // The token went to localStorage and out of the address bar.
    let href = page.0["href"].as_str().unwrap();
    assert!(!href.contains(&reader), "{href}");
    assert!(href.ends_with("#from=2026-11-02&to=2026-11-03"), "{href}");

    // OEE by site: the figures written on the chart, and bars in proportion to them.
    for (site, oee, a, p, q, low) in [
        ("SITE_A", 0.784, "90.0", "88.9", "98.0", false),
        ("SITE_B", 0.475, "94.4", "52.9", "95.0", true),
    ] {
        assert_eq!(
            page.text(&format!("oee-{site}")),
            format!("OEE {:.1} %", oee * 100.0)
        );
        assert_eq!(page.text(&format!("oee-a-{site}")), format!("A {a} %"));
        assert_eq!(page.text(&format!("oee-p-{site}")), format!("P {p} %"));
        assert_eq!(page.text(&format!("oee-q-{site}")), format!("Q {q} %"));
        let bar = format!("oee-bar-{site}");
        let drawn = page.number(&bar, "width") / page.data(&bar, "track").parse::<f64>().unwrap();
        assert!((drawn - oee).abs() < 0.002, "{site}: bar at {drawn}");
        // Colour is for the abnormal only: the low OEE is red, the other grey.
        assert_eq!(page.data(&bar, "low"), low.to_string());
        assert_eq!(page.class(&bar).contains("low"), low);
    }
    assert!(!page.has("oee-SITE_C"), "SITE_C had no planned time");
    assert!(
        page.text("oee-total")
            .starts_with("All sites shown: OEE 54.9 % (A 93.4 % · P 61.2 % · Q 96.0 %)"),
        "{}",
        page.text("oee-total")
    );

    // Downtime Pareto: largest first, cumulative share, the planned stop left out.
    assert_eq!(page.data("pareto-reason-0", "reason"), "DOWN.JAM");
    assert_eq!(page.text("pareto-reason-0"), "Material jam");
    assert_eq!(page.text("pareto-value-0"), "105 min");
    assert_eq!(page.text("pareto-stops-0"), "2 stops");
    assert_eq!(page.text("pareto-cum-0"), "84.0 %");
    assert_eq!(page.data("pareto-reason-1", "reason"), "DOWN.TOOL");
    assert_eq!(page.text("pareto-value-1"), "20 min");
    assert_eq!(page.text("pareto-stops-1"), "1 stop");
    assert_eq!(page.text("pareto-cum-1"), "100.0 %");
    assert!(!page.has("pareto-bar-2"));
    let (h0, h1) = (
        page.number("pareto-bar-0", "height"),
        page.number("pareto-bar-1", "height"),
    );
    assert!((h1 / h0 - 20.0 / 105.0).abs() < 0.01, "bars {h0} and {h1}");

    // Production per day, labelled with the good count.
    assert_eq!(page.text("trend-label-SITE_A-2026-11-02"), "10,584");
    assert_eq!(page.text("trend-label-SITE_B-2026-11-02"), "20,520");

    // Orders at risk: overdue in red, due soon in amber, the far one absent.
    // (The year is written only when it is not the current one.)
    let due = page.text("risk-due-SITE_A-WO-1");
    assert!(
        due.starts_with("overdue ") && due.ends_with("11-02 13:00"),
        "{due}"
    );
    assert_eq!(page.class("risk-due-SITE_A-WO-1"), "late");
    // The order's counts come from the site's work-order record, which no edge synced here.
    assert_eq!(page.text("risk-left-SITE_A-WO-1"), "12,000");
    assert!(page.text("risk-due-SITE_B-WO-2").starts_with("due "));
    assert_eq!(page.class("risk-due-SITE_B-WO-2"), "soon");
    assert!(!page.has("risk-SITE_B-WO-1"));

    // Sync health.
    assert_eq!(page.text("status-SITE_A"), "online");
    assert_eq!(page.class("status-SITE_A"), "status ok");
    assert_eq!(page.text("status-SITE_B"), "offline");
    assert_eq!(page.class("status-SITE_B"), "status offline");
    assert_eq!(page.text("status-SITE_C"), "lagging");
    assert_eq!(page.text("backlog-SITE_C"), "1,200");
    assert_eq!(page.text("lag-SITE_C"), "15 min");
    assert_eq!(page.text("seen-SITE_B"), "never");

    // A screenshot for people.
    let png = browser.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "the screenshot is not a rendered page ({} bytes)",
        png.len()
    );
    let shot = artifacts().join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    if std::env::var("UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&shot, docs.join("dashboard.png")).unwrap();
    }

    // The site filter, as a person uses it: only SITE_B's figures remain.
    let seen = browser.refreshes().await;
    browser
        .click("[data-testid=site-filter] option[value=SITE_B]")
        .await;
    let page = browser.rendered_after(seen).await;
    page.assert_loaded();
    assert!(!page.has("oee-SITE_A"));
    assert_eq!(page.text("oee-SITE_B"), "OEE 47.5 %");
    assert!(page.text("oee-total").starts_with("SITE_B: OEE 47.5 %"));
    assert_eq!(page.text("pareto-value-0"), "60 min");
    assert!(!page.has("trend-label-SITE_A-2026-11-02"));
    assert!(!page.has("risk-SITE_A-WO-1"));
    assert!(!page.has("status-SITE_A"));
    assert!(page.0["href"].as_str().unwrap().ends_with("&site=SITE_B"));

    // A range button leaves the fixed range for a rolling one (7 days is the API's default
    // range, the others start at a whole hour).
    for (button, label) in [
        ("24h", "last 24 h"),
        ("30d", "last 30 days"),
        ("7d", "last 7 days"),
    ] {
        let seen = browser.refreshes().await;
        browser
            .click(&format!("[data-testid=range-{button}]"))
            .await;
        let page = browser.rendered_after(seen).await;
        page.assert_loaded();
        assert_eq!(page.text("range"), label);
        let href = page.0["href"].as_str().unwrap().to_owned();
        assert!(
            href.ends_with(&format!("#range={button}&site=SITE_B")),
            "{href}"
        );
    }
    // "7 days" asks for the API's default range, so every screen on it shares one cached
    // answer: the same question right after the page's is not computed again.
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/api/v1/reports/oee?group_by=site&site=SITE_B"
        ))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    let cache = r.headers()["x-cache"].to_str().unwrap().to_owned();
    assert!(cache == "hit" || cache == "stale", "X-Cache: {cache}");

    // Many sites, drawn by the page's own functions from made-up answers: OEE rows turn
    // compact (A/P/Q as text), the sync table puts the abnormal first and only counts the
    // rest of the healthy ones.
    let many = browser
        .js(r##"
            const rows = [];
            for (let i = 0; i < 8; i++) rows.push({site: "S" + i, planned_production_seconds: 3600,
                oee: i / 10, availability: 0.9, performance: 0.8, quality: 0.95, good: 10,
                total_count: 11, stop_seconds: 60});
            renderOee({rows, total: {oee: 0.35, availability: 0.9, performance: 0.8, quality: 0.95}});
            const sites = [];
            for (let i = 0; i < 12; i++) sites.push({site_id: "S" + String(i).padStart(2, "0"),
                name: "Plant", connected: i !== 7, revoked: false, lag_seconds: i === 9 ? 900 : 0,
                last_seen_at: null, backlog_events: 0, down_backlog: 0});
            site = "";
            renderSync({sites});
            const q = (id) => document.querySelector(`[data-testid="${id}"]`);
            return {
                p: q("oee-p-S3").textContent, low: q("oee-bar-S3").dataset.low,
                ok: q("oee-bar-S7").dataset.low,
                rows: [...document.querySelectorAll("#sync tbody tr")].map((r) => r.dataset.testid),
                more: q("sync-more").textContent,
            };"##)
        .await;
    assert_eq!(
        many,
        json!({"p": "P 80.0 %", "low": "true", "ok": "false",
               "rows": ["sync-S07", "sync-S09", "sync-S00", "sync-S01", "sync-S02"],
               "more": "and 7 more sites online and in sync"})
    );
    std::fs::write(
        artifacts().join("dashboard-many-sites.png"),
        browser.screenshot().await,
    )
    .unwrap();
    drop(browser);

    // Failures are told in words: a token the hub refuses...
    let browser = Browser::start().await;
    browser.goto(&format!("{base}/#token=hub_wrong")).await;
    let page = browser.rendered_after(0).await;
    assert!(
        page.banner().contains("refused the token (401)"),
        "{}",
        page.banner()
    );
    assert!(
        !page.get("login")["hidden"].as_bool().unwrap(),
        "the token form is not shown"
    );
    // The form takes a good token instead.
    let seen = browser.refreshes().await;
    browser.type_into("#token", &reader).await;
    browser.click("#login button[type=submit]").await;
    let page = browser.rendered_after(seen).await;
    page.assert_loaded();
    assert!(page.get("login")["hidden"].as_bool().unwrap());
    assert_eq!(page.text("status-SITE_A"), "online");

    // ... a hub without its reporting database ...
    let blind = serve::start(ServeConfig {
        read_database_url: None,
        ..serve_config(&h.db, &h.state_dir)
    })
    .await
    .unwrap();
    let page = open_with_banner(
        &browser,
        blind.http_addr,
        &reader,
        "cannot reach its reporting database (503)",
    )
    .await;
    assert!(page.text("refreshed").contains("not loaded"));

    // ... and a token over its rate limit (one request a second; the page makes five).
    let strict = h.hub(rate_limit(1)).await;
    open_with_banner(
        &browser,
        strict.http_addr,
        &reader,
        "Too many requests with this token (429)",
    )
    .await;
    drop(browser);

    strict.stop().await.unwrap();
    blind.stop().await.unwrap();
    hub.stop().await.unwrap();
}
