//! `mes-demo`: the whole system on one machine, for a first look.
//!
//! Uses `DATABASE_URL`, or PostgreSQL on 127.0.0.1:5432, or starts a private cluster; creates
//! a fresh database, migrates it, registers three sites, starts the hub and three edge agents
//! (real QUIC with mutual TLS on loopback), feeds them sample production, prints the URLs,
//! and stops everything cleanly on Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use central_hub::db::sites::add_site;
use central_hub::pki::Ca;
use central_hub::serve::{self, ServeConfig};
use edge_agent::config::RunConfig;
use shared_model::SiteId;
use system_tests::pg::server;

const SITES: [(&str, &str, &str, &str); 3] = [
    ("SITE_001", "Plant Lyon", "EU", "Europe/Paris"),
    ("SITE_002", "Plant Porto", "EU", "Europe/Lisbon"),
    ("SITE_003", "Plant Monterrey", "NA", "America/Monterrey"),
];

/// Badges of the demo's people at every site, and the supervisor's PIN.
const OPERATOR_BADGE: &str = "1001";
const SUPERVISOR_BADGE: &str = "9001";
const SUPERVISOR_PIN: &str = "1234";

fn master_data(site: &str) -> String {
    format!(
        r#"{{
  "materials": [{{"id": "BRACKET-7", "name": "Bracket", "unit": "pcs", "tracking": "lot"}},
                {{"id": "STEEL-S235", "name": "Steel sheet S235", "unit": "kg", "tracking": "lot"}}],
  "routings": [{{"material": "BRACKET-7", "version": 1, "seq": 10, "operation_code": "PRESS",
                 "work_center_class": "press", "ideal_cycle_time_ms": 100, "setup_time_ms": 0}}],
  "reason_codes": [{{"code": "DOWN", "parent": null, "name": "Unplanned stop", "loss_category": "unplanned",
                     "counts_against_availability": true}},
                   {{"code": "DOWN.JAM", "parent": "DOWN", "name": "Jam", "loss_category": "unplanned",
                     "counts_against_availability": true}},
                   {{"code": "DOWN.TOOL", "parent": "DOWN", "name": "Tool broken", "loss_category": "unplanned",
                     "counts_against_availability": true}},
                   {{"code": "BREAK", "parent": null, "name": "Planned break", "loss_category": "planned",
                     "counts_against_availability": false}},
                   {{"code": "SCRAP.BURR", "parent": null, "name": "Burr", "loss_category": "quality",
                     "counts_against_availability": false}},
                   {{"code": "SCRAP.CRACK", "parent": null, "name": "Crack", "loss_category": "quality",
                     "counts_against_availability": false}}],
  "equipment": [{{"id": "{site}", "parent": null, "level": "site", "name": "Plant", "class": "site"}},
                {{"id": "PRESS-01", "parent": "WC-PRESSES", "level": "work_unit", "name": "Press 1", "class": "press"}},
                {{"id": "PRESS-02", "parent": "WC-PRESSES", "level": "work_unit", "name": "Press 2", "class": "press"}}],
  "personnel": [{{"badge": "{OPERATOR_BADGE}", "site_id": "{site}", "name": "Demo Operator", "role": "operator"}},
                {{"badge": "{SUPERVISOR_BADGE}", "site_id": "{site}", "name": "Demo Supervisor", "role": "supervisor"}}],
  "inspection_plans": [{{"material": "BRACKET-7", "characteristic": "hole_diameter", "unit": "mm",
                         "lower_limit": 7.9, "upper_limit": 8.1, "sample_every": 500}}]
}}"#
    )
}

/// Three released orders for PRESS-02, the press the sample feed leaves to people at the
/// terminal.
async fn release_demo_orders(base: &str, key: &str, site: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    for (n, qty) in [(1, 120), (2, 80), (3, 200)] {
        let r = http
            .post(format!("{base}/api/v1/work-orders"))
            .bearer_auth(key)
            .json(&serde_json::json!({
                "id": format!("{site}-WO-T{n}"), "material": "BRACKET-7",
                "planned_quantity": qty, "priority": n, "work_unit": "PRESS-02",
            }))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "releasing a demo order at {site}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Posts a production count now and then, like a line gateway would.
async fn feed(
    base: String,
    key: String,
    site: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{site}: no HTTP client: {e}");
            return;
        }
    };
    let order = format!("{site}-WO-0001");
    let _ = client
        .post(format!("{base}/api/v1/work-orders"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"id": order, "material": "BRACKET-7", "planned_quantity": 5000, "work_unit": "PRESS-01"}))
        .send()
        .await;
    let _ = client
        .post(format!("{base}/api/v1/work-orders/{order}/start"))
        .bearer_auth(&key)
        .send()
        .await;
    let post = |event: serde_json::Value| {
        let (client, base, key, site) = (&client, &base, &key, &site);
        async move {
            if let Err(e) = client
                .post(format!("{base}/api/v1/events"))
                .bearer_auth(key)
                .json(&event)
                .send()
                .await
            {
                eprintln!("{site}: posting an event failed: {e}");
            }
        }
    };
    for press in ["PRESS-01", "PRESS-02"] {
        post(
            serde_json::json!({"type": "equipment_state", "equipment": press, "state": "running"}),
        )
        .await;
    }
    // Each site jams now and then, at its own rhythm, so the dashboard has stops to show.
    let digit = site
        .bytes()
        .last()
        .map_or(0, |b| u64::from(b.saturating_sub(b'0')));
    let jam_every = 60 + digit * 20; // ticks of 250 ms: a jam every 20 to 30 s
    let mut n: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        if n.is_multiple_of(jam_every) {
            post(
                serde_json::json!({"type": "equipment_state", "equipment": "PRESS-02",
                                    "state": "down", "reason": "DOWN.JAM"}),
            )
            .await;
        }
        if n % jam_every == jam_every / 3 {
            post(
                serde_json::json!({"type": "equipment_state", "equipment": "PRESS-02",
                                    "state": "running"}),
            )
            .await;
        }
        let scrap = u32::from(n.is_multiple_of(17));
        let mut event = serde_json::json!({
            "type": "production_count",
            "equipment": if n.is_multiple_of(2) { "PRESS-01" } else { "PRESS-02" },
            "work_order": order,
            "good": 3 + (n % 4),
            "scrap": scrap,
        });
        if scrap > 0 {
            event["scrap_reason"] = "SCRAP.BURR".into();
        }
        post(event).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let root: PathBuf = std::env::var_os("MES_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("mes-demo-{}", std::process::id())));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    println!("== preparing PostgreSQL");
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url)
        .await
        .context("connecting as the owner")?;
    let state_dir = root.join("hub");
    let ca = Ca::load_or_create(&state_dir)?;
    let mut ids = Vec::new();
    for (site, name, region, tz) in SITES {
        let id = SiteId::new(site)?;
        add_site(&admin, &id, name, region, tz).await?;
        ca.write_site_bundle(&id, &state_dir.join("sites").join(site))?;
        ids.push(id);
    }
    // HQ's master data (routings with ideal cycle times, reasons, equipment) at the hub, for
    // the reports; the same file goes to each edge below.
    let md: shared_model::master::MasterFile = serde_json::from_str(&master_data("SITE_001"))?;
    central_hub::db::master::publish(&admin, &ids, &md.into_records()).await?;
    let hq_token =
        central_hub::api::create_token(&admin, "demo dashboard", "hq:read", None).await?;
    println!("== starting the hub");
    let hub = serve::start(ServeConfig {
        db: Default::default(),
        database_url: db.hub_url.clone(),
        read_database_url: Some(db.reporting_url.clone()),
        quic_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        state_dir: state_dir.clone(),
        server_names: vec!["127.0.0.1".into(), "localhost".into()],
        enroll_listen: None,
        metrics_listen: None,
        reports: Default::default(),
    })
    .await?;
    println!("== starting three edge agents");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut edges = Vec::new();
    let mut feeders = Vec::new();
    let mut lines = Vec::new();
    for (site, name, _, _) in SITES {
        let data_dir = root.join(site.to_lowercase());
        std::fs::create_dir_all(&data_dir)?;
        let md_path = data_dir.join("master-data.json");
        std::fs::write(&md_path, master_data(site))?;
        let records = edge_agent::master::read_file(&md_path)?;
        let mut conn =
            edge_agent::store::open_write_connection(&data_dir.join(edge_agent::store::DB_FILE))?;
        edge_agent::master::import(&mut conn, &records)?;
        let key = edge_agent::store::keys::create(&conn, "demo", 0)?;
        edge_agent::store::people::set_pin(
            &conn,
            &SiteId::new(site)?,
            &shared_model::BadgeId::new(SUPERVISOR_BADGE)?,
            SUPERVISOR_PIN,
            0,
        )?;
        drop(conn);
        let edge = edge_agent::server::start(RunConfig {
            site: SiteId::new(site)?,
            data_dir: data_dir.clone(),
            http_listen: "127.0.0.1:0".parse()?,
            hub: Some(hub.quic_addr.to_string()),
            retention_days: 30,
            tls_dir: state_dir.join("sites").join(site),
            config_file: None,
        })
        .await?;
        let base = format!("http://{}", edge.http_addr);
        release_demo_orders(&base, &key, site).await?;
        lines.push(format!(
            "  {site} ({name}): operator terminal {base}/#station=PRESS-02   API key: {key}"
        ));
        feeders.push(tokio::spawn(feed(
            base,
            key,
            site.to_owned(),
            stop_rx.clone(),
        )));
        edges.push(edge);
    }
    println!();
    println!("The system is running. Sample production flows into each edge and up to the hub.");
    println!(
        "Edge agents (operator terminal in a browser; machines send the key as 'Authorization: Bearer KEY'):"
    );
    for l in &lines {
        println!("{l}");
    }
    println!(
        "  terminal badges: {OPERATOR_BADGE} (operator), {SUPERVISOR_BADGE} (supervisor, PIN {SUPERVISOR_PIN})"
    );
    println!("  e.g. curl -H 'Authorization: Bearer KEY' http://.../api/v1/sync/status");
    println!(
        "Hub: sync on quic://{}, health http://{}/health, metrics http://{}/metrics",
        hub.quic_addr, hub.http_addr, hub.http_addr
    );
    println!(
        "HQ dashboard: http://{}/#token={hq_token}   (reports: http://{}/api/v1/openapi.json)",
        hub.http_addr, hub.http_addr
    );
    println!("PostgreSQL database (owner URL): {}", db.admin_url);
    println!("Data under {}. Press Ctrl-C to stop.", root.display());
    // A status line every few seconds, so the flow is visible without opening anything.
    let mut status = tokio::time::interval(Duration::from_secs(5));
    status.tick().await;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                break;
            }
            _ = status.tick() => {
                let at_hub: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                    .fetch_one(&admin)
                    .await
                    .unwrap_or(-1);
                let mut line = format!("hub holds {at_hub} events;");
                for (e, (site, _, _, _)) in edges.iter().zip(SITES) {
                    let pending = e.state.store.pending().await.map(|p| p.events).unwrap_or(0);
                    let up = e.state.connected.load(std::sync::atomic::Ordering::Relaxed);
                    line.push_str(&format!(
                        " {site} {} ({pending} pending)",
                        if up { "connected" } else { "OFFLINE" }
                    ));
                }
                println!("{line}");
            }
        }
    }
    println!("\n== stopping");
    let _ = stop.send(true);
    for f in feeders {
        let _ = f.await;
    }
    for e in edges {
        e.stop().await?;
    }
    hub.stop().await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&admin)
        .await
        .unwrap_or(0);
    println!("stopped cleanly; the hub holds {events} events");
    if std::env::var_os("MES_DEMO_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}
