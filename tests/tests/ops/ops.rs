//! Operations: the hub behind a real PgBouncer in transaction mode, reports from a real
//! streaming replica with its lag exported, partition retirement to archive files, and the
//! operational metrics with their values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use central_hub::db::DbSettings;
use central_hub::db::sites::add_site;
use central_hub::ingest::PgHubStore;
use central_hub::pki::Ca;
use central_hub::serve::{self, ReportSettings, ServeConfig};
use serde_json::Value;
use shared_model::event::QualitySample;
use shared_model::{
    BadgeId, CharacteristicId, EquipmentId, Event, EventBody, EventId, SiteId, Timestamp,
};
use sqlx::PgPool;
use sync_protocol::store::HubStore;
use system_tests::edge::{edge_config, good_part, record};
use system_tests::hq::{init, json_of, serve_config, t, temp_dir, text_of, wait_for};
use system_tests::pgbouncer::PgBouncer;

fn count_event(site: &SiteId, i: u64, at: Timestamp) -> Event {
    good_part(site, 1_796_000_000_000, i, at)
}

async fn metrics(http: &reqwest::Client, base: &str) -> String {
    text_of(http.get(format!("{base}/metrics"))).await
}

/// The value of one sample line (`name{labels} value`) of the exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Without the PgBouncer mode sqlx names and caches its prepared statements per connection,
/// and transaction pooling hands the next transaction another server connection: the
/// statement is missing there (or its name is taken). With it (`DbSettings::pgbouncer`) the
/// same load runs clean. This is the control that shows the hub test below can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_break_behind_transaction_pooling_and_the_pgbouncer_mode_does_not() {
    let server = system_tests::pg::server().await;
    let db = server.fresh_database().await;
    let bouncer = PgBouncer::start(server.admin_url(), "transaction", 4);
    let url = bouncer.url(&db.admin_url);
    let run = |settings: DbSettings| {
        let url = url.clone();
        async move {
            let pool = central_hub::db::connect_with(&url, &settings)
                .await
                .unwrap();
            // sqlx's own (named, cached) statements, or the hub's (unnamed in PgBouncer mode).
            let pgbouncer = settings.pgbouncer;
            let q = move |sql: &'static str| {
                if pgbouncer {
                    central_hub::db::query_scalar::<i64>(sql)
                } else {
                    sqlx::query_scalar::<sqlx::Postgres, i64>(sql)
                }
            };
            let errors = Arc::new(AtomicU64::new(0));
            let first = Arc::new(std::sync::Mutex::new(None::<String>));
            let tasks: Vec<_> = (0..40)
                .map(|task| {
                    let (pool, errors, first) = (pool.clone(), errors.clone(), first.clone());
                    tokio::spawn(async move {
                        for i in 0..25i64 {
                            let r: Result<i64, _> = async {
                                let mut tx = pool.begin().await?;
                                let v: i64 = q("SELECT $1::int8 + $2::int8")
                                    .bind(task)
                                    .bind(i)
                                    .fetch_one(&mut *tx)
                                    .await?;
                                let w: i64 =
                                    q("SELECT $1::int8 * 2").bind(v).fetch_one(&mut *tx).await?;
                                tx.commit().await?;
                                Ok::<_, sqlx::Error>(w)
                            }
                            .await;
                            match r {
                                Ok(w) => assert_eq!(w, (task + i) * 2),
                                Err(e) => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    first.lock().unwrap().get_or_insert(e.to_string());
                                }
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            pool.close().await;
            let msg = first.lock().unwrap().take().unwrap_or_default();
            (errors.load(Ordering::Relaxed), msg)
        }
    };
    let (errors, msg) = run(DbSettings {
        pool_size: 40,
        ..DbSettings::default()
    })
    .await;
    eprintln!("statement cache on, through transaction pooling: {errors} failed of 1000 ({msg})");
    assert!(
        errors > 0 && msg.contains("prepared statement"),
        "expected prepared-statement errors without the PgBouncer mode, got {errors} ({msg})"
    );
    let (errors, msg) = run(DbSettings {
        pool_size: 40,
        pgbouncer: true,
        listen_url: None,
    })
    .await;
    assert_eq!(errors, 0, "PgBouncer mode still failed: {msg}");
}

/// Two hub instances whose write and read pools go through one PgBouncer in transaction mode
/// (hundreds of client connections onto 20 server connections): three edges sync their
/// backlogs over QUIC while 300 HQ clients read reports and the site list and HQ releases
/// work orders. Every request answers 200, every event lands exactly once, no sync session
/// fails, and PgBouncer saw the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sync_and_reports_run_through_pgbouncer_in_transaction_mode() {
    init();
    let server = system_tests::pg::server().await;
    let db = server.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let state_dir = temp_dir("pgb-hub");
    let ca = Ca::load_or_create(&state_dir).unwrap();
    let sites = ["SITE_A", "SITE_B", "SITE_C"];
    for s in sites {
        let site = SiteId::new(s).unwrap();
        add_site(&admin, &site, "Plant", "EU", "UTC").await.unwrap();
        ca.write_site_bundle(&site, &state_dir.join("sites").join(s))
            .unwrap();
    }
    let bouncer = PgBouncer::start(server.admin_url(), "transaction", 20);
    let start_hub = |quic: &str| {
        serve::start(ServeConfig {
            database_url: bouncer.url(&db.hub_url),
            read_database_url: Some(bouncer.url(&db.reporting_url)),
            quic_listen: quic.parse().unwrap(),
            reports: ReportSettings {
                rate_limit_per_second: 1_000_000,
                ..ReportSettings::default()
            },
            db: DbSettings {
                pool_size: 120,
                pgbouncer: true,
                // LISTEN/NOTIFY cannot cross transaction pooling: straight to PostgreSQL.
                listen_url: Some(db.hub_url.clone()),
            },
            ..serve_config(&db, &state_dir)
        })
    };
    // Refused without a session connection for LISTEN.
    let refused = serve::start(ServeConfig {
        db: DbSettings {
            pgbouncer: true,
            ..DbSettings::default()
        },
        database_url: bouncer.url(&db.hub_url),
        read_database_url: None,
        ..serve_config(&db, &state_dir)
    })
    .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("LISTEN_DATABASE_URL")),
        "{refused:?}"
    );
    let one = start_hub("127.0.0.1:0").await.unwrap();
    let two = start_hub("127.0.0.1:0").await.unwrap();
    let writer = central_hub::api::create_token(&admin, "ops", "hq:write", None)
        .await
        .unwrap();

    // Three edges with 1,500 events each, split over the two hubs.
    const PER_SITE: u64 = 1_500;
    let mut edges = Vec::new();
    for (i, s) in sites.iter().enumerate() {
        let hub = if i % 2 == 0 {
            one.quic_addr
        } else {
            two.quic_addr
        };
        let dir = temp_dir(&format!("pgb-edge-{s}"));
        let edge = edge_agent::server::start(edge_config(
            s,
            &dir,
            &hub.to_string(),
            &state_dir.join("sites").join(s),
        ))
        .await
        .unwrap();
        let site = SiteId::new(*s).unwrap();
        let batch: Vec<Event> = (0..PER_SITE)
            .map(|n| {
                count_event(
                    &site,
                    n,
                    t("2026-11-20T08:00:00Z").saturating_add_micros(n as i64 * 1_000_000),
                )
            })
            .collect();
        record(&edge, batch).await;
        edges.push((edge, dir));
    }

    // 300 HQ clients, 4 requests each, on both hubs: reports with distinct ranges (cache
    // misses, so each one is a read transaction), the site list, and releases (writes).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let bases = [
        format!("http://{}", one.http_addr),
        format!("http://{}", two.http_addr),
    ];
    let peak_clients = Arc::new(AtomicU64::new(0));
    let sampling = {
        let peak = peak_clients.clone();
        let b = bouncer.console();
        tokio::spawn(async move {
            loop {
                let n = b.clients().await;
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for c in 0..300u32 {
        let (http, writer, failures) = (http.clone(), writer.clone(), failures.clone());
        let base = bases[c as usize % 2].clone();
        tasks.push(tokio::spawn(async move {
            let day = 1 + c % 28;
            let paths = [
                format!("/api/v1/reports/oee?from=2026-10-{day:02}&to=2026-11-29&group_by=site"),
                format!("/api/v1/reports/production?from=2026-10-{day:02}&to=2026-11-28"),
                "/api/v1/sites".to_owned(),
            ];
            for p in &paths {
                let r = http
                    .get(format!("{base}{p}"))
                    .bearer_auth(&writer)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 200 => {}
                    Ok(r) => {
                        let msg =
                            format!("{p}: {} {}", r.status(), r.text().await.unwrap_or_default());
                        failures.lock().unwrap().push(msg);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{p}: {e}")),
                }
            }
            let site = ["SITE_A", "SITE_B", "SITE_C"][c as usize % 3];
            let r = http
                .post(format!("{base}/api/v1/sites/{site}/work-orders"))
                .bearer_auth(&writer)
                .json(
                    &serde_json::json!({"id": format!("{site}-PGB-{c}"), "material": "BRACKET-7",
                                          "planned_quantity": 10}),
                )
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 201 => {}
                Ok(r) => {
                    let msg = format!(
                        "release: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                    failures.lock().unwrap().push(msg);
                }
                Err(e) => failures.lock().unwrap().push(format!("release: {e}")),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of 1,200 HQ requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    wait_for("every backlog to land", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&admin)
            .await
            .unwrap();
        n == 3 * PER_SITE as i64
    })
    .await;
    for (edge, _) in &edges {
        let store = edge.state.store.clone();
        wait_for("the outbox to drain", Duration::from_secs(20), || {
            let store = store.clone();
            async move { store.pending().await.unwrap().events == 0 }
        })
        .await;
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM work_orders")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(orders, 300, "every release stored once");
    sampling.abort();
    let peak = peak_clients.load(Ordering::Relaxed);
    let servers = bouncer.console().servers().await;
    eprintln!(
        "PgBouncer: peak {peak} client connections, {servers} server connections to PostgreSQL"
    );
    assert!(peak >= 150, "expected hundreds of clients, peak was {peak}");
    assert!(
        servers <= 2 * (20 + 5) + 1,
        "more server connections ({servers}) than the pools allow"
    );
    for h in [&one, &two] {
        let text = metrics(&http, &format!("http://{}", h.http_addr)).await;
        assert_eq!(
            sample(&text, "hub_sync_sessions_failed_total"),
            Some(0.0),
            "a sync session failed on a store error"
        );
    }
    let log = bouncer.log();
    assert!(
        !log.contains("prepared statement"),
        "PgBouncer logged prepared-statement errors:\n{log}"
    );
    for (edge, dir) in edges {
        edge.stop().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
    one.stop().await.unwrap();
    two.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(state_dir);
}

/// Reports read from a real streaming replica (`pg_basebackup -R`): with replay paused on the
/// replica, new events are in the primary but not in the report, `/ready` and
/// `mes_db_replication_lag_seconds` show the lag; resumed, the report catches up and the lag
/// returns to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_come_from_a_streaming_replica_and_its_lag_is_exported() {
    init();
    let primary = system_tests::pg::PrivateCluster::start(false).expect("a private primary");
    let replica = primary.start_replica().expect("a streaming replica");
    let db = primary.server().fresh_database().await;
    db.migrate().await;
    let on_replica = |url: &str| primary.url_on(&replica, url);
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let site = SiteId::new("SITE_A").unwrap();
    add_site(&admin, &site, "Plant", "EU", "UTC").await.unwrap();
    // Tokens are looked up on the read side: made before the replica is awaited, so a lookup
    // never meets a replica that lacks it (and the failed-authentication limit with it).
    let reader = central_hub::api::create_token(&admin, "ops", "hq:read", None)
        .await
        .unwrap();
    // The replica replays the new database, its site and the token asynchronously.
    let replica_admin = on_replica(&db.admin_url);
    wait_for(
        "the site and the token on the replica",
        Duration::from_secs(30),
        || async {
            match central_hub::db::connect(&replica_admin).await {
                Ok(p) => {
                    let n: Result<i64, _> = sqlx::query_scalar(
                        "SELECT (SELECT count(*) FROM sites) + (SELECT count(*) FROM api_tokens)",
                    )
                    .fetch_one(&p)
                    .await;
                    p.close().await;
                    n.is_ok_and(|n| n == 2)
                }
                Err(_) => false,
            }
        },
    )
    .await;
    let state_dir = temp_dir("replica");
    let hub = serve::start(ServeConfig {
        read_database_url: Some(on_replica(&db.reporting_url)),
        ..serve_config(&db, &state_dir)
    })
    .await
    .unwrap();
    let store = PgHubStore::new(central_hub::db::connect(&db.hub_url).await.unwrap());
    let base = format!("http://{}", hub.http_addr);
    let http = reqwest::Client::new();
    let good = || {
        let (http, base, reader) = (http.clone(), base.clone(), reader.clone());
        async move {
            let v: Value = http
                .get(format!(
                    "{base}/api/v1/reports/production?from=2026-11-20&to=2026-11-21&group_by=site"
                ))
                .bearer_auth(&reader)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["total"]["good"].as_f64().unwrap_or(-1.0)
        }
    };
    let batch = |from: u64, n: u64| -> Vec<Event> {
        (from..from + n)
            .map(|i| {
                count_event(
                    &site,
                    i,
                    t("2026-11-20T08:00:00Z").saturating_add_micros(i as i64 * 1_000_000),
                )
            })
            .collect()
    };
    store.ingest_events(&site, &batch(0, 100)).await.unwrap();
    wait_for(
        "the replica to have the first 100",
        Duration::from_secs(20),
        || async { good().await == 100.0 },
    )
    .await;
    let ready: Value = json_of(http.get(format!("{base}/ready"))).await;
    assert_eq!(ready["read_database"]["replica"], true, "{ready}");

    // Pause replay: the primary moves on, the replica (and so the report) does not.
    let replica_admin = central_hub::db::connect(&on_replica(&db.admin_url))
        .await
        .unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica_admin)
        .await
        .unwrap();
    store.ingest_events(&site, &batch(100, 50)).await.unwrap();
    let primary_good: i64 = sqlx::query_scalar("SELECT sum(good)::int8 FROM production_hourly")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(primary_good, 150);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(good().await, 100.0, "the report must come from the replica");
    let ready: Value = json_of(http.get(format!("{base}/ready"))).await;
    let lag = ready["read_database"]["replication_lag_seconds"]
        .as_f64()
        .unwrap();
    assert!(lag >= 1.0, "lag with replay paused: {ready}");
    let text = metrics(&http, &base).await;
    let exported = sample(&text, "mes_db_replication_lag_seconds").unwrap();
    assert!(exported >= 1.0, "mes_db_replication_lag_seconds {exported}");
    eprintln!("replay paused: /ready lag {lag:.2} s, metric {exported:.2} s");

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica_admin)
        .await
        .unwrap();
    wait_for(
        "the replica to catch up",
        Duration::from_secs(20),
        || async { good().await == 150.0 },
    )
    .await;
    wait_for(
        "the lag to return to zero",
        Duration::from_secs(10),
        || async {
            let text = metrics(&http, &base).await;
            sample(&text, "mes_db_replication_lag_seconds") == Some(0.0)
        },
    )
    .await;
    hub.stop().await.unwrap();
    replica_admin.close().await;
    admin.close().await;
    drop(replica);
    let _ = std::fs::remove_dir_all(state_dir);
}

async fn partitions(admin: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events_p_site_a'
         ORDER BY 1",
    )
    .fetch_all(admin)
    .await
    .unwrap()
}

/// A fresh migrated database with SITE_A registered and `months` monthly partitions of it
/// from January 2024 on: the database, its owner's pool, the site and the hub's store.
async fn site_with_partitions(
    months: u32,
) -> (system_tests::pg::TestDb, sqlx::PgPool, SiteId, PgHubStore) {
    init();
    let db = system_tests::pg::server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let site = SiteId::new("SITE_A").unwrap();
    add_site(&admin, &site, "Plant", "EU", "UTC").await.unwrap();
    sqlx::query("SELECT mes_ensure_partitions('SITE_A', '2024-01-01', $1)")
        .bind(months as i32)
        .execute(&admin)
        .await
        .unwrap();
    let store = PgHubStore::new(central_hub::db::connect(&db.hub_url).await.unwrap());
    (db, admin, site, store)
}

/// Months older than the retention age are copied to CSV files (row counts and SHA-256 in a
/// manifest), then detached and dropped; newer months, the default partition and the rollups
/// stay. A re-run does nothing; an archive loads back with the runbook's COPY + ATTACH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_partitions_are_archived_to_files_then_dropped() {
    // Partitions from January 2024 on (a site with history).
    let (_db, admin, site, store) = site_with_partitions(36).await;
    let mut n = 0u64;
    let mut at = |s: &str, k: u64| -> Vec<Event> {
        (0..k)
            .map(|i| {
                n += 1;
                count_event(&site, n, t(s).saturating_add_micros(i as i64 * 60_000_000))
            })
            .collect()
    };
    let jan24 = at("2024-01-10T08:00:00Z", 40);
    let feb24 = at("2024-02-10T08:00:00Z", 25);
    let dec24 = at("2024-12-10T08:00:00Z", 10);
    let nov26 = at("2026-11-10T08:00:00Z", 5);
    for b in [&jan24, &feb24, &dec24, &nov26] {
        store.ingest_events(&site, b).await.unwrap();
    }
    let before = partitions(&admin).await;
    assert!(before.contains(&"events_p_site_a_202401".to_owned()));
    let rollup_before: i64 = sqlx::query_scalar("SELECT sum(good)::int8 FROM production_hourly")
        .fetch_one(&admin)
        .await
        .unwrap();
    let archive = temp_dir("archive");
    let now = time::macros::datetime!(2026-11-29 05:00 UTC);

    let refused = central_hub::db::retention::retire(&admin, 2, &archive, now).await;
    assert!(matches!(
        refused,
        Err(central_hub::db::retention::RetentionError::TooShort(2))
    ));

    // 24 months back from November 2026: everything that ended by 1 November 2024 goes.
    let done = central_hub::db::retention::retire(&admin, 24, &archive, now)
        .await
        .unwrap();
    let names: Vec<&str> = done.iter().map(|r| r.table.as_str()).collect();
    assert_eq!(names.len(), 10, "{names:?}");
    assert_eq!(names.first(), Some(&"events_p_site_a_202401"));
    assert_eq!(names.last(), Some(&"events_p_site_a_202410"));
    let jan = &done[0];
    assert_eq!(jan.rows, 40);
    assert_eq!(done[1].rows, 25);
    assert!(done[2..].iter().all(|r| r.rows == 0));
    // The file holds exactly the month's events, and its hash is the manifest's.
    let csv = std::fs::read_to_string(&jan.file).unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("site_id,event_id,occurred_at")
    );
    let mut ids: Vec<String> = lines
        .map(|l| l.split(',').nth(1).unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want: Vec<String> = jan24
        .iter()
        .map(|e| e.event_id.as_uuid().to_string())
        .collect();
    want.sort();
    assert_eq!(ids, want);
    let digest = ring::digest::digest(&ring::digest::SHA256, csv.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, jan.sha256);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(jan.file.with_extension("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["rows"], 40);
    assert_eq!(manifest["sha256"], jan.sha256.as_str());

    let after = partitions(&admin).await;
    assert!(
        !after
            .iter()
            .any(|p| p.as_str() <= "events_p_site_a_202410"
                && p.as_str() >= "events_p_site_a_202401")
    );
    assert!(after.contains(&"events_p_site_a_202411".to_owned()));
    assert!(after.contains(&"events_p_site_a_default".to_owned()));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(left, 15, "December 2024 and November 2026 stay");
    let rollup_after: i64 = sqlx::query_scalar("SELECT sum(good)::int8 FROM production_hourly")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(rollup_after, rollup_before, "rollups are kept");

    // Again: nothing is due.
    let again = central_hub::db::retention::retire(&admin, 24, &archive, now)
        .await
        .unwrap();
    assert!(again.is_empty());

    // The runbook's restore: a table like the partition, COPY FROM the file, ATTACH.
    let mut conn = admin.acquire().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE events_p_site_a_202401 (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let mut copy = conn
        .copy_in_raw("COPY events_p_site_a_202401 FROM STDIN WITH (FORMAT csv, HEADER)")
        .await
        .unwrap();
    copy.send(csv.as_bytes()).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), 40);
    sqlx::raw_sql(
        "ALTER TABLE events_p_site_a ATTACH PARTITION events_p_site_a_202401
         FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let restored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE occurred_at < '2024-02-01' AND site_id = 'SITE_A'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(restored, 40);
    let _ = std::fs::remove_dir_all(archive);
}

/// A late event for a month already retired waits in the site's DEFAULT partition; the
/// partition task gives the month its own partition again, and the next retention run
/// archives it beside the first archive without overwriting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_for_a_retired_month_is_archived_beside_the_first_archive() {
    let (_db, admin, site, store) = site_with_partitions(2).await;
    let jan: Vec<Event> = (0..3)
        .map(|i| count_event(&site, i, t("2024-01-10T08:00:00Z")))
        .collect();
    store.ingest_events(&site, &jan).await.unwrap();
    let archive = temp_dir("archive-late");
    let now = time::macros::datetime!(2026-11-29 05:00 UTC);
    let first = central_hub::db::retention::retire(&admin, 24, &archive, now)
        .await
        .unwrap();
    assert_eq!(first.len(), 3, "{first:?}");
    let first_jan = first[0].clone();
    assert_eq!(first_jan.rows, 3);
    let first_bytes = std::fs::read(&first_jan.file).unwrap();

    // Two late events for January 2024 (an edge back from a long outage).
    let late: Vec<Event> = (10..12)
        .map(|i| count_event(&site, i, t("2024-01-20T08:00:00Z")))
        .collect();
    store.ingest_events(&site, &late).await.unwrap();
    assert!(
        partitions(&admin)
            .await
            .contains(&"events_p_site_a_default".to_owned())
    );
    let split = central_hub::db::sites::ensure_partitions(&admin, std::slice::from_ref(&site))
        .await
        .unwrap();
    assert_eq!(split.len(), 1);
    assert_eq!(
        (split[0].month.to_string(), split[0].rows),
        ("2024-01-01".to_owned(), 2)
    );
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM events_p_site_a_default")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(in_default, 0);

    let second = central_hub::db::retention::retire(&admin, 24, &archive, now)
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].table, "events_p_site_a_202401");
    assert_eq!(second[0].rows, 2);
    assert_ne!(second[0].file, first_jan.file);
    assert!(
        second[0]
            .file
            .ends_with("SITE_A/events_p_site_a_202401.2.csv"),
        "{:?}",
        second[0].file
    );
    assert_eq!(
        std::fs::read(&first_jan.file).unwrap(),
        first_bytes,
        "first archive overwritten"
    );
    // Archives hold a site's raw data: for the hub's user only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [
            first_jan.file.clone(),
            second[0].file.clone(),
            archive.join("SITE_A/events_p_site_a_202401.2.manifest.json"),
        ] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
    assert!(
        archive
            .join("SITE_A/events_p_site_a_202401.2.manifest.json")
            .exists()
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let _ = std::fs::remove_dir_all(archive);
}

/// With `--metrics-listen`, `/metrics` (every site's name and backlog) is served on its own
/// listener only: the API port answers it 404, the metrics port answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_served_on_their_own_listener_only() {
    let h = system_tests::hq::hq("ops-metrics-port", &[("SITE_A", "UTC")]).await;
    let hub = serve::start(ServeConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..serve_config(&h.db, &h.state_dir)
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let api = http
        .get(format!("http://{}/metrics", hub.http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404, "the API port still serves /metrics");
    let health = http
        .get(format!("http://{}/health", hub.http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics_addr = hub.metrics_addr.expect("a metrics listener");
    let m = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    assert!(text.contains("site=\"SITE_A\""), "{text}");
    hub.stop().await.unwrap();
}

/// The guide's metrics carry the values they claim: per-site gauges from the data (a failed
/// quality sample, an operator at work, a running order), the HTTP counters by route pattern,
/// the pool gauges with their limit, and the cache rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_site_pool_and_http_figures() {
    let h = system_tests::hq::hq("ops-metrics", &[("SITE_A", "UTC"), ("SITE_B", "UTC")]).await;
    let (hub, base, http) = h.serve(ReportSettings::default()).await;
    let site = SiteId::new("SITE_A").unwrap();
    let now = Timestamp::from_micros(
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64,
    );
    let sample_event = |n: u64, pass: bool, operator: &str| Event {
        event_id: EventId::from_parts(1_797_000_000_000 + n, [n as u8; 10]),
        site_id: site.clone(),
        occurred_at: now.saturating_add_micros(-(n as i64) * 1_000_000),
        recorded_at: now,
        operator: Some(BadgeId::new(operator).unwrap()),
        body: EventBody::QualitySample(QualitySample {
            equipment: Some(EquipmentId::new("PRESS-01").unwrap()),
            work_order: None,
            lot: None,
            characteristic: CharacteristicId::new("hole_diameter").unwrap(),
            value: if pass { 8.0 } else { 8.4 },
            lower_limit: Some(7.9),
            upper_limit: Some(8.1),
            pass,
        }),
    };
    let events = vec![
        sample_event(1, false, "B1001"),
        sample_event(2, true, "B1001"),
        sample_event(3, false, "B1002"),
    ];
    h.store.ingest_events(&site, &events).await.unwrap();
    let writer = h.token("hq:write", None).await;
    let (status, _, _) = system_tests::hq::get(&http, &base, &writer, "/api/v1/sites").await;
    assert_eq!(status, 200);
    let (status, _, _) = system_tests::hq::get(&http, &base, &writer, "/api/v1/no-such").await;
    assert_eq!(status, 404);
    let text = metrics(&http, &base).await;
    assert_eq!(
        sample(&text, "mes_quality_alerts_active{site=\"SITE_A\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "mes_quality_alerts_active{site=\"SITE_B\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "mes_active_users_by_site{site=\"SITE_A\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "mes_work_orders_active{site=\"SITE_A\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "mes_sync_site_connected{site=\"SITE_A\"}"),
        Some(0.0)
    );
    // Process-wide counters: other tests of this binary may have added to them.
    assert!(
        sample(
            &text,
            "mes_http_requests_total{method=\"GET\",route=\"/api/v1/sites\",status=\"200\"}"
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        text.contains("mes_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"),
        "an unknown path is counted without its raw path"
    );
    // Label order is the encoder's (OpenMetrics writes `le` first).
    assert!(text.lines().any(|l| {
        l.strip_prefix("mes_http_request_duration_seconds_bucket{")
            .is_some_and(|l| l.contains("route=\"/api/v1/sites\"") && l.contains("le=\"+Inf\""))
    }));
    assert_eq!(
        sample(&text, "mes_db_connections_limit{pool=\"write\"}"),
        Some(f64::from(central_hub::db::POOL_CONNECTIONS_MAX))
    );
    assert!(sample(&text, "mes_db_connections_waiting{pool=\"read\"}").is_some());
    assert!(text.contains("mes_db_query_duration_seconds_count{query=\"ingest\"}"));
    assert!(sample(&text, "mes_cache_hit_rate").is_some());
    assert!(sample(&text, "mes_sync_edges_connected").is_some());
    hub.stop().await.unwrap();
}
