//! `bench-sync`: the whole sync path, edge outbox → QUIC (mutual TLS, loopback) → hub →
//! partitioned PostgreSQL with row-level security and the rollup, in one process.
//!
//! 1. Backlog drain: SITE_001's edge starts with a week of backlog (`--backlog` events, default
//!    500,000) while SITE_002 and SITE_003 stream live events; time until every backlog event
//!    is committed at the hub, and the edge's outbox is empty.
//! 2. Baseline, same run, same tables: a plain `INSERT … SELECT FROM UNNEST` of the same rows
//!    (the hub's own statement, in the same batch size) for a fresh site: the ratio.
//! 3. Propagation online: single events written at an idle edge, time until the hub's ingest
//!    transaction (`received_at − recorded_at`, one clock); HQ releases published at the hub,
//!    time until they are applied at the connected edge.
//! 4. Wire cost: bytes per event in a full event batch frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use central_hub::db::sites::add_site;
use central_hub::pki::Ca;
use central_hub::serve::{self, ServeConfig};
use edge_agent::config::RunConfig;
use shared_model::event::ProductionCount;
use shared_model::{EquipmentId, Event, EventBody, EventId, SiteId, Timestamp, WorkOrderId};
use sqlx::PgPool;
use sync_protocol::message::{DownItem, RecordChange, RecordId, RecordKind};
use sync_protocol::store::HubStore;
use system_tests::benchout::figure;
use system_tests::pg::server;

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A typical production count: equipment, work order, counts, an operator.
fn event(site: &SiteId, n: u64, at: Timestamp) -> Event {
    let mut rnd = [0u8; 10];
    rnd[..8].copy_from_slice(&n.to_be_bytes());
    rnd[8] = site.as_str().len() as u8;
    rnd[9] = site.as_str().as_bytes()[site.as_str().len() - 1];
    Event {
        event_id: EventId::from_parts((at.as_micros() / 1000) as u64, rnd),
        site_id: site.clone(),
        occurred_at: at,
        recorded_at: at,
        operator: Some(shared_model::BadgeId::new("B-0042").unwrap_or_else(|_| unreachable!())),
        body: EventBody::ProductionCount(ProductionCount {
            equipment: EquipmentId::new(format!("PRESS-{:02}", n % 40 + 1))
                .unwrap_or_else(|_| unreachable!()),
            work_order: Some(
                WorkOrderId::new(format!("{site}-WO-{:06}", n % 100))
                    .unwrap_or_else(|_| unreachable!()),
            ),
            good: 1 + (n % 5) as u32,
            scrap: u32::from(n.is_multiple_of(23)),
            rework: 0,
            scrap_reason: None,
        }),
    }
}

fn master(site: &str) -> String {
    let mut eq = vec![format!(
        r#"{{"id":"{site}","parent":null,"level":"site","name":"Plant","class":"site"}}"#
    )];
    for i in 1..=40 {
        eq.push(format!(
            r#"{{"id":"PRESS-{i:02}","parent":"{site}","level":"work_unit","name":"Press","class":"press"}}"#
        ));
    }
    format!(
        r#"{{"materials":[{{"id":"BRACKET-7","name":"Bracket","unit":"pcs","tracking":"lot"}}],"equipment":[{}]}}"#,
        eq.join(",")
    )
}

async fn count(admin: &PgPool, site: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM events WHERE site_id = $1")
            .bind(site)
            .fetch_one(admin)
            .await?,
    )
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The reference: the rows into the partitioned, row-level-secured events table with one
/// plain `INSERT … SELECT FROM UNNEST`, the columns built as the hub builds them.
async fn plain_insert(pool: &sqlx::PgPool, site: &SiteId, events: &[Event]) -> anyhow::Result<()> {
    let ts = |t: Timestamp| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    let mut ids = Vec::with_capacity(events.len());
    let (mut occurred, mut recorded, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut equipment, mut work_order, mut operator) = (Vec::new(), Vec::new(), Vec::new());
    let (mut good, mut scrap, mut bodies, mut reason) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in events {
        ids.push(*e.event_id.as_uuid());
        occurred.push(ts(e.occurred_at));
        recorded.push(ts(e.recorded_at));
        kinds.push(e.kind().as_str());
        operator.push(e.operator.as_ref().map(|o| o.to_string()));
        let EventBody::ProductionCount(p) = &e.body else {
            anyhow::bail!("the reference rows are production counts");
        };
        equipment.push(Some(p.equipment.to_string()));
        work_order.push(p.work_order.as_ref().map(|w| w.to_string()));
        good.push(Some(i64::from(p.good)));
        scrap.push(Some(i64::from(p.scrap)));
        reason.push(p.scrap_reason.as_ref().map(|r| r.to_string()));
        bodies.push(postcard::to_stdvec(e)?);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.current_site_id', $1, true)")
        .bind(site.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO events (site_id, event_id, occurred_at, recorded_at, kind, equipment,
                             work_order, operator, good, scrap, body, reason)
         SELECT $1, u.* FROM UNNEST($2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                                    $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[],
                                    $11::bytea[], $12::text[]) AS u",
    )
    .bind(site.as_str())
    .bind(&ids)
    .bind(&occurred)
    .bind(&recorded)
    .bind(&kinds)
    .bind(&equipment)
    .bind(&work_order)
    .bind(&operator)
    .bind(&good)
    .bind(&scrap)
    .bind(&bodies)
    .bind(&reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backlog: u64 = std::env::args()
        .skip_while(|a| a != "--backlog")
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(500_000);
    let root = std::env::temp_dir().join(format!("bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await?;
    let state_dir = root.join("hub");
    let ca = Ca::load_or_create(&state_dir)?;
    let sites: Vec<SiteId> = ["SITE_001", "SITE_002", "SITE_003", "SITE_004"]
        .into_iter()
        .map(SiteId::new)
        .collect::<Result<_, _>>()?;
    for s in &sites {
        add_site(&admin, s, "Plant", "EU", "UTC").await?;
        ca.write_site_bundle(s, &state_dir.join("sites").join(s.as_str()))?;
    }
    let hub = serve::start(ServeConfig {
        db: Default::default(),
        database_url: db.hub_url.clone(),
        read_database_url: None,
        quic_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        state_dir: state_dir.clone(),
        server_names: vec!["127.0.0.1".into()],
        enroll_listen: None,
        metrics_listen: None,
        reports: Default::default(),
    })
    .await?;

    // Prepare the three edges' stores; SITE_001 gets the backlog before it starts.
    let t0 = Timestamp::from_micros(now_micros() - 7 * 86_400_000_000);
    let mut configs = Vec::new();
    for s in &sites[..3] {
        let dir = root.join(s.as_str().to_lowercase());
        std::fs::create_dir_all(&dir)?;
        let md: shared_model::master::MasterFile = serde_json::from_str(&master(s.as_str()))?;
        let mut c =
            edge_agent::store::open_write_connection(&dir.join(edge_agent::store::DB_FILE))?;
        edge_agent::master::import(&mut c, &md.into_records())?;
        // The 100 work orders the events refer to.
        let actor = automerge::ActorId::random();
        for k in 0..100 {
            let view = sync_protocol::records::WorkOrderView {
                order: shared_model::work_order::WorkOrder::released(
                    WorkOrderId::new(format!("{s}-WO-{k:06}"))?,
                    s.clone(),
                    shared_model::MaterialId::new("BRACKET-7")?,
                    1000,
                ),
                work_unit: None,
            };
            edge_agent::records::create(&c, &view, &actor)?;
        }
        configs.push(RunConfig {
            site: s.clone(),
            data_dir: dir,
            http_listen: "127.0.0.1:0".parse()?,
            hub: Some(hub.quic_addr.to_string()),
            retention_days: 30,
            tls_dir: state_dir.join("sites").join(s.as_str()),
            config_file: None,
        });
    }
    {
        let store = edge_agent::store::Store::open(
            &configs[0].data_dir,
            sites[0].clone(),
            Arc::new(edge_agent::metrics::Metrics::default()),
        )?;
        let fill = Instant::now();
        let step = 604_800_000_000 / backlog.max(1) as i64;
        for chunk in 0..backlog.div_ceil(10_000) {
            let site = sites[0].clone();
            let batch: Vec<Event> = (chunk * 10_000..((chunk + 1) * 10_000).min(backlog))
                .map(|n| event(&site, n, t0.saturating_add_micros(n as i64 * step)))
                .collect();
            store
                .write(move |c| edge_agent::store::insert_events_for_tests(c, &batch))
                .await?;
        }
        store.close();
        println!(
            "backlog of {backlog} events written at SITE_001 in {:.1} s",
            fill.elapsed().as_secs_f64()
        );
    }

    // Two edges stream live, then the backlogged one connects.
    let mut edges = Vec::new();
    for c in &configs[1..] {
        edges.push(edge_agent::server::start(c.clone()).await?);
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut live = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        let store = e.state.store.clone();
        let state = e.state.clone();
        let site = sites[i + 1].clone();
        let mut stop_rx = stop_rx.clone();
        live.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop_rx.changed() => return n }
                let site = site.clone();
                let from = n;
                let batch: Vec<Event> = (from..from + 10)
                    .map(|k| event(&site, 10_000_000 + k, Timestamp::from_micros(now_micros())))
                    .collect();
                if store
                    .write(move |c| edge_agent::store::insert_events_for_tests(c, &batch))
                    .await
                    .is_ok()
                {
                    n += 10;
                    state.notify_outbox();
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let drain_from = now_micros();
    let ingested = || {
        hub.metrics
            .events_ingested
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let ingested_before = ingested();
    let started = Instant::now();
    let backlogged = edge_agent::server::start(configs[0].clone()).await?;
    // The hub's own counter says when the backlog can have landed (it also counts the live
    // sites' events); only then is the database asked. Counting a growing site's rows every
    // 100 ms would take CPU from the ingest being measured.
    loop {
        if ingested() - ingested_before >= backlog {
            let n = count(&admin, "SITE_001").await?;
            if n as u64 >= backlog {
                break;
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "backlog did not drain in 10 min ({} events ingested)",
            ingested() - ingested_before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let mut streamed = 0;
    for l in live {
        streamed += l.await.unwrap_or(0);
    }
    let pending = backlogged.state.store.pending().await?;
    println!(
        "backlog drained: {backlog} events in {drain:.2} s = {:.0} events/s (outbox left {}); {streamed} live events streamed by two other sites meanwhile",
        backlog as f64 / drain,
        pending.events
    );
    // The live sites' edge → hub latency while the backlog drained (one clock: the hub's
    // ingest time minus the edge's recording time, both on this machine).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut live_lat: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM received_at - recorded_at)::float8 * 1000 FROM events
         WHERE site_id IN ('SITE_002', 'SITE_003')
           AND recorded_at BETWEEN to_timestamp($1::float8 / 1e6) AND to_timestamp($2::float8 / 1e6)",
    )
    .bind(drain_from as f64)
    .bind((drain_from as f64) + drain * 1e6)
    .fetch_all(&admin)
    .await?;
    live_lat.sort_by(f64::total_cmp);
    println!(
        "live sites during the drain ({} events): edge → hub p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        live_lat.len(),
        pct(&live_lat, 0.5),
        pct(&live_lat, 0.99),
        live_lat.last().copied().unwrap_or(f64::NAN)
    );
    figure("sync.drain_s", drain, "s");
    figure(
        "sync.drain_events_per_s",
        backlog as f64 / drain,
        "events/s",
    );
    figure("sync.live_p99_during_drain_ms", pct(&live_lat, 0.99), "ms");

    // References, same rows, same batch size as the hub's group commit, for a fresh site each,
    // as the hub role under row-level security, one connection, one transaction per batch:
    // (1) the plain INSERT … UNNEST of the rows into the partitioned events table, nothing
    // else (what a naive bulk loader does), and (2) the hub's own ingest call (the insert with
    // duplicate detection and every rollup), without QUIC, sessions or the edge.
    let rows_for = |site: &SiteId| -> Vec<Event> {
        let step = 604_800_000_000 / backlog.max(1) as i64;
        (0..backlog)
            .map(|n| event(site, n, t0.saturating_add_micros(n as i64 * step)))
            .collect()
    };
    let group = sync_protocol::driver::INGEST_EVENTS_MAX;
    let hub_pool = central_hub::db::connect(&db.hub_url).await?;
    let rows = rows_for(&sites[3]);
    let base = Instant::now();
    for chunk in rows.chunks(group) {
        plain_insert(&hub_pool, &sites[3], chunk).await?;
    }
    let plain_s = base.elapsed().as_secs_f64();
    println!(
        "plain INSERT … UNNEST of the same {backlog} rows: {plain_s:.2} s = {:.0} events/s; full path / plain = {:.2}",
        backlog as f64 / plain_s,
        plain_s / drain
    );
    figure(
        "sync.plain_events_per_s",
        backlog as f64 / plain_s,
        "events/s",
    );
    figure("sync.full_over_plain", plain_s / drain, "ratio");
    let store = central_hub::ingest::PgHubStore::new(hub_pool.clone());
    let site5 = SiteId::new("SITE_005")?;
    add_site(&admin, &site5, "Plant", "EU", "UTC").await?;
    let rows = rows_for(&site5);
    let base = Instant::now();
    for chunk in rows.chunks(group) {
        store.ingest_events(&site5, chunk).await?;
    }
    let call_s = base.elapsed().as_secs_f64();
    println!(
        "the hub's ingest call on the same {backlog} rows: {call_s:.2} s = {:.0} events/s",
        backlog as f64 / call_s,
    );
    figure(
        "sync.ingest_call_events_per_s",
        backlog as f64 / call_s,
        "events/s",
    );

    // Propagation, edge → hub, when online and idle.
    let site2 = sites[1].clone();
    let store2 = edges[0].state.store.clone();
    let mut ids = Vec::new();
    for k in 0..200u64 {
        let e = event(&site2, 20_000_000 + k, Timestamp::from_micros(now_micros()));
        ids.push(*e.event_id.as_uuid());
        let batch = vec![e];
        store2
            .write(move |c| edge_agent::store::insert_events_for_tests(c, &batch))
            .await?;
        edges[0].state.notify_outbox();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lat: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM received_at - recorded_at)::float8 * 1000 FROM events WHERE event_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&admin)
    .await?;
    lat.sort_by(f64::total_cmp);
    println!(
        "edge → hub propagation ({} events, one at a time): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    figure("sync.edge_hub_p50_ms", pct(&lat, 0.5), "ms");
    figure("sync.edge_hub_p99_ms", pct(&lat, 0.99), "ms");

    // Propagation, HQ release → connected edge.
    let hq = central_hub::ingest::PgHubStore::new(central_hub::db::connect(&db.hub_url).await?);
    let site3 = sites[2].clone();
    let store3 = edges[1].state.store.clone();
    let mut rel = Vec::new();
    for k in 0..50 {
        let id = format!("SITE_003-WO-R{k:03}");
        let mut doc = automerge::AutoCommit::new();
        let view = sync_protocol::records::WorkOrderView {
            order: shared_model::work_order::WorkOrder::released(
                WorkOrderId::new(id.clone())?,
                site3.clone(),
                shared_model::MaterialId::new("BRACKET-7")?,
                10,
            ),
            work_unit: None,
        };
        sync_protocol::records::write_all(&mut doc, &view).map_err(|e| anyhow::anyhow!("{e}"))?;
        doc.commit();
        let change = RecordChange::new(
            RecordId::new(RecordKind::WorkOrder, id.clone()).map_err(|e| anyhow::anyhow!(e))?,
            doc.get_last_local_change()
                .context("no change")?
                .raw_bytes()
                .to_vec(),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let t = Instant::now();
        hq.publish(&site3, &DownItem::RecordChange(change)).await?;
        loop {
            let id2 = id.clone();
            let found = store3
                .read(move |c| edge_agent::records::get(c, &id2))
                .await?
                .is_some();
            if found {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "release {id} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rel.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    rel.sort_by(f64::total_cmp);
    println!(
        "HQ release → connected edge ({} releases): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        rel.len(),
        pct(&rel, 0.5),
        pct(&rel, 0.99),
        rel.last().copied().unwrap_or(f64::NAN)
    );
    figure("sync.release_p50_ms", pct(&rel, 0.5), "ms");
    figure("sync.release_p99_ms", pct(&rel, 0.99), "ms");

    // Wire cost of a full batch of typical events.
    let batch: Vec<Event> = (0..2_048).map(|n| event(&sites[0], n, t0)).collect();
    let frame = sync_protocol::frame::encode(
        &sync_protocol::message::Message::EventBatch(sync_protocol::message::EventBatch {
            last_seq: 1_000_000,
            events: batch,
        }),
        sync_protocol::frame::FRAME_BODY_BYTES_MAX_DEFAULT,
    )?;
    println!(
        "wire cost: {} bytes for a frame of 2,048 events = {:.1} bytes per event (before QUIC/TLS framing)",
        frame.len(),
        frame.len() as f64 / 2048.0
    );
    figure(
        "sync.wire_bytes_per_event",
        frame.len() as f64 / 2048.0,
        "B",
    );

    backlogged.stop().await?;
    for e in edges {
        e.stop().await?;
    }
    hub.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
