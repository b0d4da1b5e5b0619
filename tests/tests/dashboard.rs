//! The HQ dashboard in real headless Chromium (Debian `chromium`; `.ci/run` installs it)
//! against a real hub on real PostgreSQL: the page loads from the binary, calls the reporting
//! API with the token from its URL, and draws the figures the data implies. The rendered DOM is
//! read back after the page's scripts ran, and a screenshot is kept in
//! `target/test-artifacts/dashboard.png` (`UPDATE_SCREENSHOTS=1` also refreshes
//! `docs/screenshots/dashboard.png`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use central_hub::serve::ReportSettings;
use serde_json::json;
use shared_model::SiteId;
use shared_model::event::MachineState;
use sync_protocol::store::HubStore;
use system_tests::hq::{count, event, hq, put_master, seed_worked_example, state, t, temp_dir};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `args`, bounded in time; returns its stdout.
fn chromium(url: &str, args: &[&str], profile: &Path) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); .ci/run does"
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1600,1300",
            // Virtual time runs the page's timers; it waits while fetches are in flight.
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `data-testid="{id}"` in serialized HTML.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("data-testid=\"{id}\""))?;
    let open_end = at + dom[at..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(dom[open_end..close].to_owned())
}

fn artifacts() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_the_figures_in_chromium() {
    let h = hq("dash", &[("SITE_A", "Europe/Berlin"), ("SITE_B", "UTC")]).await;
    let hub = h.hub(ReportSettings::default()).await;
    let base = format!("http://{}", hub.http_addr);
    let http = reqwest::Client::new();
    let writer = h.token("hq:write", None).await;
    // SITE_A: the worked example, OEE 78.4 %, 45 min jam, its order overdue.
    seed_worked_example(&h, &http, &base, &writer).await;
    // SITE_B: scheduled around the clock (no calendar), 24 h of PPT on 2026-11-02, a one-hour
    // jam, 21,600 good parts at 2 s ideal: OEE = 21,600 × 2 / 86,400 = 50.0 %.
    let r = http
        .post(format!("{base}/api/v1/sites/SITE_B/work-orders"))
        .bearer_auth(&writer)
        .json(
            &json!({"id": "SITE_B-WO-1", "material": "BRACKET-7", "planned_quantity": 30000,
                      "due": "2030-01-01T00:00:00Z"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let b = SiteId::new("SITE_B").unwrap();
    let mut events = vec![
        event(
            &b,
            1,
            t("2026-11-02T00:00:00Z"),
            state("PRESS-01", MachineState::Running, None),
        ),
        event(
            &b,
            2,
            t("2026-11-02T01:00:00Z"),
            state("PRESS-01", MachineState::Down, Some("DOWN.JAM")),
        ),
        event(
            &b,
            3,
            t("2026-11-02T02:00:00Z"),
            state("PRESS-01", MachineState::Running, None),
        ),
    ];
    for i in 0..216u64 {
        let at = t("2026-11-02T02:00:00Z").saturating_add_micros(i as i64 * 5 * 60_000_000);
        events.push(event(
            &b,
            10 + i,
            at,
            count("PRESS-01", "SITE_B-WO-1", 100, 0),
        ));
    }
    h.store.ingest_events(&b, &events).await.unwrap();
    put_master(&http, &base, &writer, "reason-codes", json!([
        {"code": "DOWN.JAM", "parent": null, "name": "Material jam", "loss_category": "unplanned", "counts_against_availability": true}])).await;
    // SITE_A's edge is connected; SITE_B's is not.
    sqlx::query("UPDATE sites SET connected = true, last_seen_at = now(), edge_pending_events = 0 WHERE site_id = 'SITE_A'")
        .execute(&h.admin)
        .await
        .unwrap();

    let reader = h.token("hq:read", None).await;
    let url = format!("{base}/#token={reader}&from=2026-11-02&to=2026-11-03");
    let profile = temp_dir("chromium");
    let dom = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.clone());
        move || chromium(&url, &["--dump-dom"], &profile)
    })
    .await
    .unwrap();
    assert!(
        dom.contains("data-loaded=\"ok\""),
        "the page did not finish loading without errors; banner: {:?}",
        text_of(&dom, "error")
    );
    assert_eq!(
        text_of(&dom, "oee-SITE_A").as_deref(),
        Some("OEE 78.4 %"),
        "{dom}"
    );
    assert_eq!(text_of(&dom, "oee-SITE_B").as_deref(), Some("OEE 50.0 %"));
    // Pareto: both jams together, 45 + 60 = 105 min in 2 stops, one bar (the planned stop is
    // not in it).
    assert_eq!(text_of(&dom, "pareto-reason").as_deref(), Some("DOWN.JAM"));
    assert_eq!(dom.matches("data-testid=\"pareto-bar\"").count(), 1);
    assert!(dom.contains(">105 min<"), "Pareto bar label missing");
    assert!(dom.contains(">2 stops<"));
    // Trend: one bar per site on that day.
    assert!(dom.contains("data-testid=\"trend-SITE_A-2026-11-02\""));
    assert!(dom.contains("data-testid=\"trend-SITE_B-2026-11-02\""));
    // The overdue order is at risk; the far-future one is not.
    assert!(dom.contains("data-testid=\"risk-SITE_A-WO-1\""));
    assert!(!dom.contains("data-testid=\"risk-SITE_B-WO-1\""));
    assert_eq!(text_of(&dom, "status-SITE_A").as_deref(), Some("online"));
    assert_eq!(text_of(&dom, "status-SITE_B").as_deref(), Some("offline"));

    // A screenshot for people.
    let shot = artifacts().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking({
        let (url, profile, arg) = (
            url.clone(),
            profile.clone(),
            format!("--screenshot={}", shot.display()),
        );
        move || chromium(&url, &[&arg], &profile)
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "the screenshot is not a real page"
    );
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&shot, docs.join("dashboard.png")).unwrap();
    }

    // A bad token: the page says so in words.
    let dom = tokio::task::spawn_blocking({
        let url = format!("{base}/#token=hub_wrong");
        let profile = temp_dir("chromium-bad");
        move || chromium(&url, &["--dump-dom"], &profile)
    })
    .await
    .unwrap();
    let banner = text_of(&dom, "error").unwrap_or_default();
    assert!(banner.contains("refused the token (401)"), "{banner:?}");
    hub.stop().await.unwrap();
}
