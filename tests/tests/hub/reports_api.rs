//! The reporting API's behaviour over real PostgreSQL and HTTP: the domain's worked OEE example
//! end to end (master data and a release through the HQ API, events through the ingest path),
//! the response cache and its invalidation on ingest, CSV, bad parameters, scopes, rate limits,
//! and — with the machine's Redis — cache and rate-limit state shared by two hub instances.
//! The exhaustive figure checks are the oracle tests in `reports_oracle.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use central_hub::serve::{self, ReportSettings, ServeConfig};
use serde_json::{Value, json};
use shared_model::event::{MachineState, ProductionCount};
use shared_model::{EquipmentId, Event, EventBody, SiteId};
use sync_protocol::store::HubStore;
use system_tests::hq::{
    Api, Hq, array_len, close, content_type, count, event, events_at, get, hq, put_master,
    rate_limit, seed_worked_example, serve_config, state, t, timeline, wait_for_x_cache,
};

/// Ingests event `n` at SITE_A: `good` more parts of the worked example's order on PRESS-01
/// at `at`.
async fn add_good(h: &Hq, n: u64, at: &str, good: u32) {
    let site = SiteId::new("SITE_A").unwrap();
    let e = event(&site, n, t(at), count("PRESS-01", "SITE_A-WO-1", good, 0));
    h.store.ingest_events(&site, &[e]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_example_cache_csv_errors_and_scopes() {
    let h = hq(
        "worked",
        &[("SITE_A", "Europe/Berlin"), ("SITE_B", "Asia/Kolkata")],
    )
    .await;
    let (hub, base, http) = h.serve(rate_limit(1000)).await;
    let writer = h.token("hq:write", None).await;
    let reader = h.token("hq:read", None).await;
    let api = Api::new(&http, &base, &reader);
    seed_worked_example(&h, &http, &base, &writer).await;

    let path = "/api/v1/reports/oee?site=SITE_A&from=2026-11-02&to=2026-11-03&group_by=site";
    let (status, v, headers) = api.get(path).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["x-cache"], "miss");
    let row = &v["rows"][0];
    assert_eq!(row["site"], "SITE_A");
    assert!(
        close(
            row["planned_production_seconds"].as_f64().unwrap(),
            27_000.0
        ),
        "{row}"
    );
    assert!(
        close(row["run_seconds"].as_f64().unwrap(), 24_300.0),
        "{row}"
    );
    assert_eq!(row["good"], 10_584);
    assert_eq!(row["scrap"], 216);
    assert!(close(row["availability"].as_f64().unwrap(), 0.9), "{row}");
    assert!(
        close(row["performance"].as_f64().unwrap(), 21_600.0 / 24_300.0),
        "{row}"
    );
    assert!(close(row["quality"].as_f64().unwrap(), 0.98), "{row}");
    assert!(close(row["oee"].as_f64().unwrap(), 0.784), "{row}");
    assert!(close(v["total"]["oee"].as_f64().unwrap(), 0.784));

    // The same request again is a cache hit (once the seeding's version announcements, which
    // arrive asynchronously, are all in); new data for the site invalidates it.
    let again = wait_for_x_cache(&http, &base, &reader, path, "hit").await;
    assert_eq!(again["rows"], v["rows"]);
    let (_, _, headers) = api.get(path).await;
    assert_eq!(headers["x-cache"], "hit", "a settled entry stays a hit");
    add_good(&h, 900, "2026-11-02T12:59:00Z", 10).await;
    let v2 = wait_for_x_cache(&http, &base, &reader, path, "miss").await;
    assert_eq!(
        v2["rows"][0]["good"], 10_594,
        "the recomputed answer has the new count"
    );

    // Shift and day groups in the site's zone; CSV by parameter and by Accept.
    let v = api.json("/api/v1/reports/production?site=SITE_A&from=2026-11-02&to=2026-11-03&group_by=shift,product").await;
    assert_eq!(v["rows"][0]["shift"], "2026-11-02 Early", "{v}");
    assert_eq!(v["rows"][0]["product"], "BRACKET-7");
    let r = http
        .get(format!("{base}/api/v1/reports/production?site=SITE_A&from=2026-11-02&to=2026-11-03&group_by=day"))
        .bearer_auth(&reader)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(content_type(&r).starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let rate = json!(216.0f64 / 10_810.0).to_string();
    assert_eq!(
        text,
        format!("day,good,scrap,total_count,scrap_rate\r\n2026-11-02,10594,216,10810,{rate}\r\n")
    );

    // Pareto: the jam, 45 min, one stop.
    let v = api
        .json("/api/v1/reports/downtime-pareto?from=2026-11-02&to=2026-11-03")
        .await;
    let first = &v["rows"][0];
    assert_eq!(first["reason"], "DOWN.JAM", "{v}");
    assert!(close(first["seconds"].as_f64().unwrap(), 2_700.0));
    assert_eq!(first["stops"], 1);
    assert_eq!(
        array_len(&v, "rows"),
        1,
        "the planned stop is left out: {v}"
    );

    // The order is due in the range and still open; it holds one lot in process.
    let v = api
        .json("/api/v1/reports/on-time?from=2026-11-02&to=2026-11-03")
        .await;
    assert_eq!(v["rows"][0]["due"], 1, "{v}");
    assert_eq!(v["rows"][0]["open"], 1);
    assert_eq!(v["rows"][0]["on_time_rate"], 0.0);
    let (status, v, _) = api.get("/api/v1/reports/wip?group_by=site,product").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"][0]["orders"], 1, "{v}");
    assert_eq!(v["rows"][0]["lots_in_process"], 1);
    assert_eq!(
        v["rows"][0]["remaining"],
        12_000 - v["rows"][0]["good"].as_i64().unwrap()
    );
    let v = api.json("/api/v1/reports/genealogy/LOT-FG-1").await;
    assert_eq!(
        v["edges"],
        json!([{"from_lot": "LOT-FG-1", "to_lot": "LOT-STEEL-1",
        "work_order": "SITE_A-WO-1", "site": "SITE_A", "quantity": 250.5, "depth": 1}]),
        "{v}"
    );
    let v = api
        .json("/api/v1/reports/genealogy/LOT-STEEL-1?direction=forward")
        .await;
    assert_eq!(v["edges"][0]["to_lot"], "LOT-FG-1", "{v}");
    let (status, _, _) = api.get("/api/v1/reports/genealogy/NO-SUCH-LOT").await;
    assert_eq!(status, 404);

    // Bad parameters: 400 with the field named.
    for (q, field) in [
        ("oee?site=NOPE", "site"),
        ("oee?from=2026-11-03&to=2026-11-02", "from"),
        ("oee?from=2024-01-01&to=2026-01-01", "to"),
        ("oee?group_by=colour", "group_by"),
        ("nonsense", "report"),
    ] {
        api.bad_parameter(q, field).await;
    }

    // A site token sees its site only; naming another is 403; a read token cannot release.
    let b_token = h.token("hq:read", Some("SITE_B")).await;
    let b_api = Api::new(&http, &base, &b_token);
    let (status, _, _) = b_api.get("/api/v1/reports/production?site=SITE_A").await;
    assert_eq!(status, 403);
    let (status, v, _) = b_api
        .get("/api/v1/reports/production?from=2026-11-02&to=2026-11-03")
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["sites"], json!(["SITE_B"]));
    assert_eq!(v["rows"], json!([]));
    let order = json!({"material": "BRACKET-7", "planned_quantity": 1});
    let path = "/api/v1/sites/SITE_A/work-orders";
    let r = api.send_json(reqwest::Method::POST, path, &order).await;
    assert_eq!(r.status().as_u16(), 403);

    // Row-level security binds the reporting role too: scoped to SITE_B, SITE_A's rows vanish.
    let reporting = central_hub::db::connect(&h.db.reporting_url).await.unwrap();
    let mut tx = reporting.begin().await.unwrap();
    central_hub::reports::scope_to_site(&mut tx, &SiteId::new("SITE_B").unwrap())
        .await
        .unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM production_hourly")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(visible, 0, "SITE_A's rollup rows leak into a SITE_B scope");
    let sites: Vec<String> = sqlx::query_scalar("SELECT site_id FROM sites")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(sites, vec!["SITE_B".to_owned()]);
    tx.rollback().await.unwrap();
    let unscoped: i64 = sqlx::query_scalar("SELECT count(*) FROM production_hourly")
        .fetch_one(&reporting)
        .await
        .unwrap();
    assert!(unscoped > 0, "HQ-wide, the same role sees SITE_A's rows");

    // The description of the API needs no token.
    let r = http
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    let doc: Value = r.json().await.unwrap();
    assert!(doc["paths"]["/api/v1/reports/{report}"].is_object());

    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let h = hq("rate", &[("SITE_A", "UTC")]).await;
    let (hub, base, http) = h.serve(rate_limit(5)).await;
    let reader = h.token("hq:read", None).await;
    let api = Api::new(&http, &base, &reader);
    let mut codes = Vec::new();
    for _ in 0..12 {
        let (status, v, headers) = api.get("/api/v1/sites").await;
        if status == 429 {
            assert_eq!(v["error"]["code"], "rate_limited");
            assert!(
                headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
        }
        codes.push(status);
    }
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 5,
        "{codes:?}"
    );
    assert!(codes.contains(&429), "{codes:?}");
    hub.stop().await.unwrap();
}

/// Redis on 127.0.0.1:6379 (the machine's; CI's too). A missing Redis fails the test.
fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_share_cache_and_rate_limits_through_redis() {
    let h = hq("redis", &[("SITE_A", "Europe/Berlin")]).await;
    let settings = ReportSettings {
        redis_url: Some(redis_url()),
        rate_limit_per_second: 8,
        cache_ttl: Duration::from_secs(30),
        ..ReportSettings::default()
    };
    let one = serve::start(ServeConfig {
        reports: settings.clone(),
        ..serve_config(&h.db, &h.state_dir)
    })
    .await
    .unwrap_or_else(|e| panic!("the hub needs Redis at {}: {e:#}", redis_url()));
    let two = h.hub(settings).await;
    let (a, b) = (
        format!("http://{}", one.http_addr),
        format!("http://{}", two.http_addr),
    );
    let http = reqwest::Client::new();
    let writer = h.token("hq:write", None).await;
    seed_worked_example(&h, &http, &a, &writer).await;
    let reader = h.token("hq:read", None).await;
    // The seeding's commits announce new data versions asynchronously (NOTIFY): wait until
    // both instances have heard them all, i.e. a warm-up query is a hit on each.
    let warm = "/api/v1/reports/production?from=2026-11-02&to=2026-11-03";
    wait_for_x_cache(&http, &a, &reader, warm, "hit").await;
    wait_for_x_cache(&http, &b, &reader, warm, "hit").await;

    let path = "/api/v1/reports/oee?from=2026-11-02&to=2026-11-03";
    let (s1, v1, h1) = get(&http, &a, &reader, path).await;
    assert_eq!(s1, 200, "{v1}");
    assert_eq!(h1["x-cache"], "miss");
    let (s2, v2, h2) = get(&http, &b, &reader, path).await;
    assert_eq!(s2, 200);
    assert_eq!(
        h2["x-cache"], "hit",
        "the second hub answers from the shared cache"
    );
    assert_eq!(v1["rows"], v2["rows"]);

    // New data through either instance's database invalidates the entry for both.
    add_good(&h, 901, "2026-11-02T12:00:00Z", 1).await;
    // New data invalidates the shared entry for the other hub too.
    wait_for_x_cache(&http, &b, &reader, path, "miss").await;

    // One token's budget is shared: 8 a second across both instances together.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = h.token("hq:read", None).await;
    let mut ok = 0;
    let mut limited = 0;
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for i in 0..20 {
        let base = if i % 2 == 0 { &a } else { &b };
        let (status, _, _) = get(&http, base, &fresh, "/api/v1/sites").await;
        match status {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let same_second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        == second;
    if same_second {
        assert_eq!(
            ok, 8,
            "8 admitted across two hubs within one second ({limited} refused)"
        );
    }
    assert!(
        limited >= 1,
        "the shared budget never ran out: {ok} admitted"
    );
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

/// A supervisor's correction of `of`: its new body `replacement`, or a void without one.
fn correction(of: &Event, replacement: Option<EventBody>) -> EventBody {
    system_tests::hq::correction(of.event_id, replacement, "fixed by the supervisor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_replace_the_corrected_event_in_place() {
    let h = hq("corr", &[("SITE_A", "UTC")]).await;
    let (hub, base, http) = h.serve(ReportSettings::default()).await;
    let writer = h.token("hq:write", None).await;
    put_master(&http, &base, &writer, "reason-codes", json!([
        {"code": "DOWN.JAM", "parent": null, "name": "Jam", "loss_category": "unplanned", "counts_against_availability": true}])).await;
    let reader = h.token("hq:read", None).await;
    let api = Api::new(&http, &base, &reader);
    let site = SiteId::new("SITE_A").unwrap();
    let plain = |good: u32, scrap: u32| {
        EventBody::ProductionCount(ProductionCount {
            equipment: EquipmentId::new("PRESS-01").unwrap(),
            work_order: None,
            good,
            scrap,
            rework: 0,
            scrap_reason: None,
        })
    };
    let x1 = event(&site, 1, t("2026-11-01T01:00:00Z"), plain(10, 0));
    let x3 = event(&site, 3, t("2026-11-01T01:30:00Z"), plain(100, 0));
    let states = timeline(
        &site,
        10,
        "PRESS-01",
        &[
            ("2026-11-01T00:00:00Z", MachineState::Running, None),
            ("2026-11-01T01:00:00Z", MachineState::Down, None),
            ("2026-11-01T02:00:00Z", MachineState::Running, None),
            ("2026-11-01T03:00:00Z", MachineState::PlannedStop, None),
        ],
    );
    let (s1, s2, s3, s4) = (&states[0], &states[1], &states[2], &states[3]);
    // Correction ids are later (their time part) than the events they correct.
    let cs = events_at(
        &site,
        20,
        &[
            ("2026-11-01T05:00:00Z", correction(&x1, Some(plain(7, 1)))),
            ("2026-11-01T05:01:00Z", correction(&x1, Some(plain(5, 0)))),
            ("2026-11-01T05:02:00Z", correction(&x3, Some(plain(2, 0)))),
            (
                "2026-11-01T05:03:00Z",
                correction(
                    s2,
                    Some(state("PRESS-01", MachineState::Down, Some("DOWN.JAM"))),
                ),
            ),
            ("2026-11-01T05:04:00Z", correction(s3, None)),
        ],
    );
    let (c1, c2, c3, c4, c5) = (&cs[0], &cs[1], &cs[2], &cs[3], &cs[4]);

    // x1 then its two corrections, the later one first; c3 before the event it corrects.
    for batch in [
        vec![x1.clone(), s1.clone(), s2.clone(), s3.clone(), s4.clone()],
        vec![c2.clone(), c3.clone()],
        vec![c1.clone(), c4.clone()],
        vec![x3.clone(), c5.clone()],
        // A re-sent batch changes nothing.
        vec![c1.clone(), c2.clone(), x3.clone(), c5.clone()],
    ] {
        h.store.ingest_events(&site, &batch).await.unwrap();
    }
    let range = "from=2026-11-01T00:00:00Z&to=2026-11-01T04:00:00Z";
    let v = api
        .json(&format!("/api/v1/reports/production?{range}"))
        .await;
    assert_eq!(
        v["rows"][0]["good"], 7,
        "x1 → c2's 5 (the latest correction), x3 → c3's 2: {v}"
    );
    assert_eq!(v["rows"][0]["scrap"], 0, "{v}");
    let v = api
        .json(&format!("/api/v1/reports/downtime-pareto?{range}"))
        .await;
    assert_eq!(array_len(&v, "rows"), 1, "{v}");
    assert_eq!(
        v["rows"][0]["reason"], "DOWN.JAM",
        "c4 gave the stop its reason: {v}"
    );
    assert!(
        close(v["rows"][0]["seconds"].as_f64().unwrap(), 7_200.0),
        "c5 voided the restart: {v}"
    );
    assert_eq!(v["rows"][0]["stops"], 1);
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_default_range_is_served_stale_while_one_request_refreshes_it() {
    let h = hq("stale", &[("SITE_A", "UTC")]).await;
    let (hub, base, http) = h
        .serve(ReportSettings {
            cache_ttl: Duration::from_secs(1),
            ..ReportSettings::default()
        })
        .await;
    let reader = h.token("hq:read", None).await;
    let api = Api::new(&http, &base, &reader);
    let path = "/api/v1/reports/production?group_by=site";
    let (_, _, first) = api.get(path).await;
    assert_eq!(first["x-cache"], "miss");
    let (_, _, second) = api.get(path).await;
    assert_eq!(second["x-cache"], "hit");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, _, third) = api.get(path).await;
    assert_eq!((status, third["x-cache"].to_str().unwrap()), (200, "stale"));
    // The background refresh lands; the entry is fresh again.
    wait_for_x_cache(&http, &base, &reader, path, "hit").await;
    hub.stop().await.unwrap();
}

/// The token lookup is cached (and refreshed in the background under load), but a revoked token
/// must still stop working within `TOKEN_CACHE_TTL` while it keeps being used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_within_the_lookup_ttl() {
    let h = hq("revoke", &[("SITE_A", "UTC")]).await;
    let (hub, base, http) = h.serve(ReportSettings::default()).await;
    let reader = h.token("hq:read", None).await;
    let api = Api::new(&http, &base, &reader);
    let other = h.token("hq:read", None).await;
    let other_api = Api::new(&http, &base, &other);
    let (status, _, _) = api.get("/api/v1/sites").await;
    assert_eq!(status, 200);
    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE hash = $1")
        .bind(central_hub::api::token_hash(&reader))
        .execute(&h.admin)
        .await
        .unwrap();
    let revoked_at = std::time::Instant::now();
    let limit = central_hub::api::TOKEN_CACHE_TTL + Duration::from_secs(1);
    loop {
        let (status, v, _) = api.get("/api/v1/sites").await;
        if status == 401 {
            assert_eq!(v["error"]["code"], "unauthorized");
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < limit,
            "the revoked token still worked {:?} after its revocation",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Revoking one token leaves the others alone.
    let (status, _, _) = other_api.get("/api/v1/sites").await;
    assert_eq!(status, 200);
    hub.stop().await.unwrap();
}
