//! Real-process chaos. A lossy UDP proxy between a real edge agent (SQLite, HTTP)
//! and a real hub (PostgreSQL) over real QUIC with mutual TLS. At 1 %, 5 % and 20 % the proxy
//! drops, duplicates and reorders datagrams both ways while a client writes events through
//! the edge's HTTP API; every event answered 201 must reach the hub exactly once, and the
//! edge must drain within a bound. And kill -9 of the hub binary and of the edge binary while
//! they sync. The same figures as the simulator's checker are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use central_hub::db::sites::add_site;
use central_hub::pki::Ca;
use central_hub::serve;
use shared_model::SiteId;
use system_tests::edge::{api_key, edge_config};
use system_tests::hq::{init, serve_config, temp_dir};
use system_tests::pg::server;
use system_tests::requests::{count_batch, send_json};
use system_tests::rng::Rng;
use tokio::net::UdpSocket;

/// What the proxy did.
#[derive(Debug, Default)]
struct ProxyStats {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

/// A UDP proxy that loses, duplicates and reorders datagrams with probability `rate` each
/// (per million), both ways. One upstream socket per client address, as a NAT would.
async fn lossy_proxy(upstream: SocketAddr, rate: u64, seed: u64) -> (SocketAddr, Arc<ProxyStats>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let stats = Arc::new(ProxyStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut held: Option<(Vec<u8>, SocketAddr)> = None;
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                break;
            };
            let back = match backs.get(&client) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    b.connect(upstream).await.unwrap();
                    // Replies from the hub go back to this client, through the same faults.
                    let (front2, b2, s2) = (front.clone(), b.clone(), s.clone());
                    let mut rng2 = Rng::new(seed ^ u64::from(client.port()));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        let mut held: Option<Vec<u8>> = None;
                        while let Ok(n) = b2.recv(&mut buf).await {
                            let d = buf[..n].to_vec();
                            if rng2.below(1_000_000) < rate {
                                s2.dropped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            if rng2.below(1_000_000) < rate && held.is_none() {
                                held = Some(d);
                                s2.reordered.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let _ = front2.send_to(&d, client).await;
                            if rng2.below(1_000_000) < rate {
                                let _ = front2.send_to(&d, client).await;
                                s2.duplicated.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(h) = held.take() {
                                let _ = front2.send_to(&h, client).await;
                            }
                            s2.forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    backs.insert(client, b.clone());
                    b
                }
            };
            let d = buf[..n].to_vec();
            if rng.below(1_000_000) < rate {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if rng.below(1_000_000) < rate && held.is_none() {
                held = Some((d, client));
                s.reordered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let _ = back.send(&d).await;
            if rng.below(1_000_000) < rate {
                let _ = back.send(&d).await;
                s.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            if let Some((h, c)) = held.take()
                && let Some(b) = backs.get(&c)
            {
                let _ = b.send(&h).await;
            }
            s.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_duplicating_reordering_network_loses_nothing() {
    init();
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let state_dir = temp_dir("chaos-udp");
    let ca = Ca::load_or_create(&state_dir).unwrap();
    let levels = [
        ("SITE_1PCT", 10_000u64),
        ("SITE_5PCT", 50_000),
        ("SITE_20PCT", 200_000),
    ];
    for (site, _) in levels {
        let s = SiteId::new(site).unwrap();
        add_site(&admin, &s, "Plant", "EU", "UTC").await.unwrap();
        ca.write_site_bundle(&s, &state_dir.join("sites").join(site))
            .unwrap();
    }
    let hub = serve::start(serve_config(&db, &state_dir)).await.unwrap();
    let http = reqwest::Client::new();
    let mut report = Vec::new();
    for (i, (site, rate)) in levels.iter().enumerate() {
        let (proxy, stats) = lossy_proxy(hub.quic_addr, *rate, 7 + i as u64).await;
        let dir = temp_dir(&format!("chaos-edge-{site}"));
        let edge = edge_agent::server::start(edge_config(
            site,
            &dir,
            &proxy.to_string(),
            &state_dir.join("sites").join(site),
        ))
        .await
        .unwrap();
        let key = api_key(&dir, "chaos");
        // A client writes 40 requests of 25 events while the network misbehaves; only what
        // was answered 201 counts as acknowledged.
        let mut acknowledged = 0u64;
        for _ in 0..40 {
            let url = format!("http://{}/api/v1/events", edge.http_addr);
            let r = send_json(http.post(url), &key, &count_batch(25)).await;
            if r.status() == 201 {
                let v: serde_json::Value = r.json().await.unwrap();
                acknowledged += v["event_ids"].as_array().unwrap().len() as u64;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let limit = Duration::from_secs(120);
        let (at_hub, distinct) = loop {
            let (n, d): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(DISTINCT event_id) FROM events WHERE site_id = $1",
            )
            .bind(site)
            .fetch_one(&admin)
            .await
            .unwrap();
            let drained = edge.state.store.pending().await.unwrap().events == 0;
            if (n as u64 >= acknowledged && drained) || started.elapsed() > limit {
                break (n as u64, d as u64);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let line = format!(
            "{:>4.0} % loss/dup/reorder: acknowledged {acknowledged}, at the hub {at_hub}, lost {}, duplicated {}, drained in {:.1} s; proxy forwarded {}, dropped {}, duplicated {}, reordered {}",
            *rate as f64 / 10_000.0,
            acknowledged.saturating_sub(distinct),
            at_hub - distinct,
            started.elapsed().as_secs_f64(),
            stats.forwarded.load(Ordering::Relaxed),
            stats.dropped.load(Ordering::Relaxed),
            stats.duplicated.load(Ordering::Relaxed),
            stats.reordered.load(Ordering::Relaxed),
        );
        println!("{line}");
        assert_eq!(
            acknowledged, 1000,
            "the edge answers writes whatever the WAN does: {line}"
        );
        assert_eq!(distinct, acknowledged, "lost events: {line}");
        assert_eq!(at_hub, distinct, "duplicated events: {line}");
        // At 1 % a short run may draw no fault at all; from 5 % on it always does.
        if *rate >= 50_000 {
            let injected = stats.dropped.load(Ordering::Relaxed)
                + stats.duplicated.load(Ordering::Relaxed)
                + stats.reordered.load(Ordering::Relaxed);
            assert!(injected > 0, "the proxy injected nothing: {line}");
        }
        report.push(line);
        edge.stop().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
    hub.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(state_dir);
}

/// Writes `rounds` requests of 20 events through the edge's API; returns the ids answered 201.
async fn write_rounds(http: &reqwest::Client, base: &str, key: &str, rounds: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..rounds {
        let events: Vec<serde_json::Value> = (0..20)
            .map(|_| serde_json::json!({"type": "production_count", "equipment": "PRESS-01", "good": 1}))
            .collect();
        if let Ok(r) = http
            .post(format!("{base}/api/v1/events"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "events": events }))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            && r.status() == 201
        {
            let v: serde_json::Value = r.json().await.unwrap();
            ids.extend(
                v["event_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_owned()),
            );
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    ids
}

/// kill -9 of the hub while the edge syncs, then of the edge while it syncs: real binaries,
/// real PostgreSQL, real SQLite. Every event answered 201 is at the hub exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_hub_and_edge_during_sync_loses_nothing() {
    use system_tests::procs::{Proc, workspace_bin};
    init();
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let state_dir = temp_dir("chaos-kill");
    let site = SiteId::new("SITE_KILL").unwrap();
    add_site(&admin, &site, "Plant", "EU", "UTC").await.unwrap();
    let ca = Ca::load_or_create(&state_dir).unwrap();
    let tls = state_dir.join("sites/SITE_KILL");
    ca.write_site_bundle(&site, &tls).unwrap();
    let quic_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (hub_bin, edge_bin) = tokio::task::spawn_blocking(|| {
        (
            workspace_bin("central-hub", "central-hub"),
            workspace_bin("edge-agent", "edge-agent"),
        )
    })
    .await
    .unwrap();
    let start_hub = || {
        let mut p = Proc::start(
            std::process::Command::new(&hub_bin)
                .arg("serve")
                .args(["--database-url", &db.hub_url])
                .args(["--read-database-url", &db.reporting_url])
                .args(["--quic-listen", &format!("127.0.0.1:{quic_port}")])
                .args([
                    "--http-listen",
                    "127.0.0.1:0",
                    "--enroll-listen",
                    "127.0.0.1:0",
                ])
                .arg("--state-dir")
                .arg(&state_dir)
                .args(["--server-name", "127.0.0.1"])
                .env("RUST_LOG", "warn"),
        );
        p.wait_for_line("central-hub sync on", Duration::from_secs(30));
        p
    };
    let dir = temp_dir("chaos-kill-edge");
    let _ = edge_config("SITE_KILL", &dir, "unused", &tls);
    let key = api_key(&dir, "chaos");
    let start_edge = || {
        let mut p = Proc::start(
            std::process::Command::new(&edge_bin)
                .args(["run", "--site", "SITE_KILL", "--http-listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(&dir)
                .args(["--hub", &format!("127.0.0.1:{quic_port}")])
                .arg("--tls-dir")
                .arg(&tls)
                .env("RUST_LOG", "warn"),
        );
        let line = p.wait_for_line("edge-agent listening on ", Duration::from_secs(30));
        let base = line
            .trim_start_matches("edge-agent listening on ")
            .to_owned();
        (p, base)
    };
    let http = reqwest::Client::new();
    let mut hub = start_hub();
    let (mut edge, mut base) = start_edge();
    let mut acked = write_rounds(&http, &base, &key, 10).await;
    // The hub dies mid-stream, the edge keeps taking writes, the hub comes back.
    hub.kill9();
    acked.extend(write_rounds(&http, &base, &key, 10).await);
    hub = start_hub();
    acked.extend(write_rounds(&http, &base, &key, 5).await);
    // The edge dies while it syncs; it restarts on the same store.
    edge.kill9();
    (edge, base) = start_edge();
    acked.extend(write_rounds(&http, &base, &key, 10).await);
    let started = Instant::now();
    let (n, distinct) = loop {
        let (n, d): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT event_id) FROM events WHERE site_id = 'SITE_KILL'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        if d as usize >= acked.len() || started.elapsed() > Duration::from_secs(90) {
            break (n, d);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let at_hub: std::collections::BTreeSet<String> = sqlx::query_scalar::<_, uuid::Uuid>(
        "SELECT event_id FROM events WHERE site_id = 'SITE_KILL'",
    )
    .fetch_all(&admin)
    .await
    .unwrap()
    .into_iter()
    .map(|u| u.to_string())
    .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !at_hub.contains(*id)).collect();
    println!(
        "kill -9 of hub and edge: acknowledged {}, at the hub {n} ({distinct} distinct), lost {}, duplicated {}, caught up {:.1} s after the last restart",
        acked.len(),
        lost.len(),
        n - distinct,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        acked.len(),
        700,
        "the edge answered every write (it never needs the hub)"
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(n, distinct, "an event is stored twice");
    drop(edge);
    drop(hub);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(state_dir);
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = temp_dir("tmpfs");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "the disk-full test mounts a small tmpfs and needs root (CAP_SYS_ADMIN); mount failed on {}",
            dir.display()
        );
        Tmpfs(dir)
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remounting {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The edge's disk fills up: writes are refused with a clear error (and store nothing), the
/// agent keeps serving, and when space returns writes are taken again; every event answered
/// 201 is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_recovers() {
    init();
    let disk = Tmpfs::mount("3m");
    let data = disk.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut cfg = edge_config("SITE_001", &data, "unused", &data.join("tls"));
    cfg.hub = None;
    let key = api_key(&data, "chaos");
    let edge = edge_agent::server::start(cfg).await.unwrap();
    let base = format!("http://{}", edge.http_addr);
    let http = reqwest::Client::new();
    let post = |n: usize| {
        let events: Vec<serde_json::Value> = (0..n)
            .map(|_| {
                serde_json::json!({"type": "production_count", "equipment": "PRESS-01", "good": 1,
                                        "scrap": 0, "rework": 0})
            })
            .collect();
        http.post(format!("{base}/api/v1/events"))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "events": events }))
            .send()
    };
    let mut acked: Vec<String> = Vec::new();
    let mut refusal = None;
    for _ in 0..2_000 {
        let r = post(200).await.unwrap();
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        if status == 201 {
            acked.extend(
                v["event_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_owned()),
            );
        } else {
            refusal = Some((status, v));
            break;
        }
    }
    let (status, body) = refusal.expect("3 MB never filled up");
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "disk_full", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("free space"), "{body}");
    // Still serving, still refusing while full, and nothing half-stored.
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(post(200).await.unwrap().status(), 507);
    // Space returns: writes are taken again.
    disk.resize("64m");
    let r = post(200).await.unwrap();
    assert_eq!(
        r.status(),
        201,
        "after space returned: {}",
        r.text().await.unwrap()
    );
    let v: serde_json::Value = r.json().await.unwrap();
    acked.extend(
        v["event_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned()),
    );
    edge.stop().await.unwrap();
    let conn = rusqlite::Connection::open_with_flags(
        data.join(edge_agent::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let stored: std::collections::BTreeSet<String> = conn
        .prepare("SELECT event_id FROM events")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let lost = acked.iter().filter(|id| !stored.contains(*id)).count();
    println!(
        "disk full: {} events acknowledged before and after, {} stored, lost {lost}; refused with 507 disk_full while full",
        acked.len(),
        stored.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(
        stored.len(),
        acked.len(),
        "a refused request left rows behind"
    );
}

/// PostgreSQL stopped with `pg_ctl stop -m immediate` while the hub ingests, then started
/// again: the hub keeps running, the edge keeps taking writes, and once the database is back
/// every acknowledged event is at the hub exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_during_ingest_loses_nothing() {
    init();
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| system_tests::pg::PrivateCluster::start(true))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a private PostgreSQL cluster for the crash test: {e}")),
    );
    let db = cluster.server().fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let state_dir = temp_dir("chaos-pg");
    let site = SiteId::new("SITE_PG").unwrap();
    add_site(&admin, &site, "Plant", "EU", "UTC").await.unwrap();
    let ca = Ca::load_or_create(&state_dir).unwrap();
    let tls = state_dir.join("sites/SITE_PG");
    ca.write_site_bundle(&site, &tls).unwrap();
    let hub = serve::start(serve_config(&db, &state_dir)).await.unwrap();
    let dir = temp_dir("chaos-pg-edge");
    let edge = edge_agent::server::start(edge_config(
        "SITE_PG",
        &dir,
        &hub.quic_addr.to_string(),
        &tls,
    ))
    .await
    .unwrap();
    let key = api_key(&dir, "chaos");
    let http = reqwest::Client::new();
    let base = format!("http://{}", edge.http_addr);
    let mut acked = write_rounds(&http, &base, &key, 10).await;
    // The database goes down hard in the middle of the stream.
    let c = cluster.clone();
    let writes = write_rounds(&http, &base, &key, 10);
    let crash = tokio::task::spawn_blocking(move || c.stop_immediate());
    acked.extend(writes.await);
    crash.await.unwrap().unwrap();
    acked.extend(write_rounds(&http, &base, &key, 10).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap()
        .unwrap();
    acked.extend(write_rounds(&http, &base, &key, 5).await);
    let started = Instant::now();
    let (n, distinct) = loop {
        let r: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT count(*), count(DISTINCT event_id) FROM events WHERE site_id = 'SITE_PG'",
        )
        .fetch_one(&admin)
        .await;
        if let Ok((n, d)) = r
            && (d as usize >= acked.len() || started.elapsed() > Duration::from_secs(120))
        {
            break (n, d);
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the database never answered again"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let at_hub: std::collections::BTreeSet<String> = sqlx::query_scalar::<_, uuid::Uuid>(
        "SELECT event_id FROM events WHERE site_id = 'SITE_PG'",
    )
    .fetch_all(&admin)
    .await
    .unwrap()
    .into_iter()
    .map(|u| u.to_string())
    .collect();
    let lost = acked.iter().filter(|id| !at_hub.contains(*id)).count();
    println!(
        "PostgreSQL stop -m immediate during ingest: acknowledged {}, at the hub {n} ({distinct} distinct), lost {lost}, duplicated {}, caught up {:.1} s after the restart",
        acked.len(),
        n - distinct,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(acked.len(), 700);
    assert_eq!(lost, 0);
    assert_eq!(n, distinct);
    edge.stop().await.unwrap();
    hub.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(state_dir);
}
