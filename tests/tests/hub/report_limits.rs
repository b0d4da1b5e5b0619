//! Reports cannot run away, over real PostgreSQL and HTTP.
//!
//! * Lot genealogy on a blending graph (every order blends three lots, twenty levels deep:
//!   3^20 paths over 60 lots) answers within its limits: the walk visits lots, not paths.
//! * Every report statement runs under the hub's `statement_timeout`: a report stuck behind a
//!   lock is answered 503 `report_timeout` with words, not held for ever.
//! * A client that goes away cancels its query on the server: the statement waiting behind a
//!   lock is gone from `pg_stat_activity` within a second, long before its timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use central_hub::serve::{self, ReportSettings};
use sqlx::PgPool;
use system_tests::hq::{Api, Hq, array_len, assert_error, hq, rate_limit};

/// Levels of the blending graph (the genealogy walk's depth limit).
const LEVELS: usize = 20;
/// Lots per level; every order consumes all lots of the level below.
const WIDTH: usize = 3;

/// Lot `LOT-<level>-<i>` is produced by order `WO-<level>-<i>`, which consumed every lot of
/// level `level - 1`; level 0 lots are raw material.
async fn seed_blending_graph(admin: &PgPool) {
    let mut site = Vec::new();
    let mut fact = Vec::new();
    let mut direction = Vec::new();
    let mut lot = Vec::new();
    let mut material = Vec::new();
    let mut order = Vec::new();
    for level in 1..=LEVELS {
        for i in 0..WIDTH {
            let wo = format!("WO-{level}-{i}");
            let mut push = |dir: &str, l: String| {
                site.push("SITE_A".to_owned());
                fact.push(uuid::Uuid::now_v7());
                direction.push(dir.to_owned());
                lot.push(l);
                material.push(format!("MAT-{level}"));
                order.push(wo.clone());
            };
            push("produced", format!("LOT-{level}-{i}"));
            for j in 0..WIDTH {
                push("consumed", format!("LOT-{}-{j}", level - 1));
            }
        }
    }
    sqlx::query(
        "INSERT INTO lot_movements (site_id, fact_id, direction, lot, material, quantity,
                                    work_order, occurred_at)
         SELECT s, f, d, l, m, 1, w, now()
         FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[])
              AS u (s, f, d, l, m, w)",
    )
    .bind(&site)
    .bind(&fact)
    .bind(&direction)
    .bind(&lot)
    .bind(&material)
    .bind(&order)
    .execute(admin)
    .await
    .unwrap();
}

/// Report settings for these tests: no rate limit in the way, and `statement_timeout`.
fn limits(statement_timeout: Duration) -> ReportSettings {
    ReportSettings {
        statement_timeout,
        ..rate_limit(1000)
    }
}

/// An HQ with SITE_A (UTC), named after `name`, its hub serving with [`limits`] of
/// `statement_timeout`, and a reader of its API.
async fn limited_hub(name: &str, statement_timeout: Duration) -> (Hq, serve::Running, Api) {
    let h = hq(name, &[("SITE_A", "UTC")]).await;
    let (hub, base, http) = h.serve(limits(statement_timeout)).await;
    let api = Api::new(&http, &base, &h.token("hq:read", None).await);
    (h, hub, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genealogy_of_a_blending_graph_answers_within_its_limits() {
    let (h, hub, api) = limited_hub("blend", Duration::from_secs(5)).await;
    seed_blending_graph(&h.admin).await;
    let started = Instant::now();
    let (status, v, _) = api
        .get(&format!(
            "/api/v1/reports/genealogy/LOT-{LEVELS}-0?direction=backward"
        ))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{v}");
    let edges = v["edges"].as_array().unwrap();
    // Depth 1: the top lot's order consumed WIDTH lots; every deeper level: WIDTH orders
    // each consuming WIDTH lots. The walk stops at depth 20 (level 0 is reached at 20).
    assert_eq!(edges.len(), WIDTH + (LEVELS - 1) * WIDTH * WIDTH, "{v}");
    let deepest = edges.iter().map(|e| e["depth"].as_i64().unwrap()).max();
    assert_eq!(deepest, Some(LEVELS as i64));
    assert_eq!(array_len(&v, "nodes"), 1 + LEVELS * WIDTH);
    assert_eq!(v["truncated"], false);
    // Forward from a raw lot: the same graph upwards.
    let (status, v, _) = api
        .get("/api/v1/reports/genealogy/LOT-0-1?direction=forward")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(array_len(&v, "edges"), WIDTH + (LEVELS - 1) * WIDTH * WIDTH);
    println!("genealogy of a {LEVELS}-level blending graph (3^{LEVELS} paths): {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    hub.stop().await.unwrap();
}

/// An admin transaction holding `table` in ACCESS EXCLUSIVE mode: report statements that read
/// it wait (as behind a long migration or a runaway plan).
async fn lock(admin: &PgPool, table: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = admin.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// Report statements of the reporting role that are running now.
async fn running_reports(admin: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE usename = 'mes_reporting' AND state = 'active' AND datname = current_database()
           AND query ILIKE '%production_hourly%'",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_past_the_statement_timeout_is_refused_in_words() {
    let (h, hub, api) = limited_hub("stmt-timeout", Duration::from_millis(700)).await;
    let path = "/api/v1/reports/production?from=2026-11-01&to=2026-11-02&group_by=site";
    let held = lock(&h.admin, "production_hourly").await;
    let started = Instant::now();
    let (status, v, _) = api.get(path).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{v}");
    assert_error(&v, "report_timeout", "narrow the date range");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "{took:?}"
    );
    held.rollback().await.unwrap();
    // Without the lock the same report answers.
    let (status, v, _) = api.get(path).await;
    assert_eq!(status, 200, "{v}");
    println!("a report behind a lock was refused after {took:?} (timeout 700 ms)");
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_query() {
    let (h, hub, api) = limited_hub("cancel", Duration::from_secs(60)).await;
    let held = lock(&h.admin, "production_hourly").await;
    // The client gives up after half a second and closes its connection.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let url = format!(
        "{}/api/v1/reports/production?from=2026-11-01&to=2026-11-03&group_by=site",
        api.base
    );
    let waiting = tokio::spawn({
        let (impatient, url, reader) = (impatient.clone(), url.clone(), api.token.clone());
        async move { impatient.get(url).bearer_auth(reader).send().await }
    });
    // The statement is waiting on the server while the client waits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_reports(&h.admin).await == 0 {
        assert!(Instant::now() < deadline, "the report never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        waiting.await.unwrap().is_err(),
        "the client should time out"
    );
    let gone_at = Instant::now();
    let deadline = gone_at + Duration::from_secs(3);
    while running_reports(&h.admin).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the report query kept running after its client went away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled_after = gone_at.elapsed();
    println!("report query cancelled {cancelled_after:?} after its client went away");
    held.rollback().await.unwrap();
    // The pool is healthy afterwards.
    let (status, v, _) = api
        .get("/api/v1/reports/production?from=2026-11-01&to=2026-11-03&group_by=site")
        .await;
    assert_eq!(status, 200, "{v}");
    hub.stop().await.unwrap();
}
