//! `mes-demo`: the whole system on one machine, for a first look.
//!
//! Uses `DATABASE_URL`, or PostgreSQL on 127.0.0.1:5432, or starts a private cluster; creates
//! a fresh database, migrates it, registers three sites, starts the hub and three edge agents
//! (real QUIC with mutual TLS on loopback) and a simulated press line per site that the edges
//! read through their machine connectors (MQTT on an embedded broker, OPC UA), prints the
//! URLs, and stops everything cleanly on Ctrl-C. The setup is `system_tests::demo`, which the
//! end-to-end test runs too.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use system_tests::demo::{
    self, Broker, OPERATOR_BADGE, Options, SITES, SUPERVISOR_BADGE, SUPERVISOR_PIN,
};

/// Hours of production the line shows at once (from an hour boundary), before it runs live.
const HISTORY_HOURS: u32 = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The OPC UA library logs its own reconnects as errors (and the embedded broker the
    // readiness probe); the connectors report the link's
    // state themselves (API, metrics, terminal).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,opcua_core=off,opcua_crypto=off,opcua_client=off,opcua_server=off,rumqttd=off",
                    )
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let root: PathBuf = std::env::var_os("MES_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("mes-demo-{}", std::process::id())));
    println!("== starting PostgreSQL, the hub, three edge agents and their press lines");
    println!("   ({HISTORY_HOURS} hours of production go through the machine connectors first)");
    let d = demo::start(Options {
        root: root.clone(),
        sites: SITES.to_vec(),
        broker: Broker::Embedded,
        history_hours: HISTORY_HOURS,
        seed: 2026,
        run: std::process::id().to_string(),
    })
    .await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (broker, opcua, hq_token) = (d.broker.clone(), d.opcua.clone(), d.hq_token.clone());
    let live = tokio::spawn(d.line.live(stop_rx));
    println!();
    println!(
        "The system is running. Each site's presses feed its edge through the machine connectors:"
    );
    println!(
        "  PRESS-01 publishes JSON on the MQTT broker {broker}; PRESS-03 is read from the OPC UA server {opcua};"
    );
    println!("  PRESS-02 is for people at the operator terminal (three orders are waiting there).");
    println!(
        "Edge agents (operator terminal in a browser; machines send the key as 'Authorization: Bearer KEY'):"
    );
    for (e, s) in d.edges.iter().zip(SITES) {
        println!(
            "  {} ({}): operator terminal {}/#station=PRESS-02 (machine-fed: #station=PRESS-01)   API key: {}",
            s.id, s.name, e.base, e.key
        );
    }
    println!(
        "  terminal badges: {OPERATOR_BADGE} (operator), {SUPERVISOR_BADGE} (supervisor, PIN {SUPERVISOR_PIN})"
    );
    println!("  e.g. curl -H 'Authorization: Bearer KEY' http://.../api/v1/connectors");
    println!(
        "Hub: sync on quic://{}, health http://{}/health, metrics http://{}/metrics",
        d.hub.quic_addr, d.hub.http_addr, d.hub.http_addr
    );
    println!(
        "HQ dashboard: http://{}/#token={hq_token}   (reports: http://{}/api/v1/openapi.json)",
        d.hub.http_addr, d.hub.http_addr
    );
    println!("PostgreSQL database (owner URL): {}", d.db.admin_url);
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
                    .fetch_one(&d.admin)
                    .await
                    .unwrap_or(-1);
                let mut line = format!("hub holds {at_hub} events;");
                for e in &d.edges {
                    let pending = e.running.state.store.pending().await.map(|p| p.events).unwrap_or(0);
                    let up = e.running.state.connected.load(std::sync::atomic::Ordering::Relaxed);
                    let links = e.running.state.connectors.snapshots();
                    let machines = links.iter().filter(|c| c.link == edge_agent::connectors::health::Link::Up).count();
                    line.push_str(&format!(
                        " {} {} ({pending} pending, machine links {machines}/{})",
                        e.site,
                        if up { "connected" } else { "OFFLINE" },
                        links.len()
                    ));
                }
                println!("{line}");
            }
        }
    }
    println!("\n== stopping");
    let _ = stop.send(true);
    let _ = live.await;
    for e in d.edges {
        e.running.stop().await?;
    }
    d.hub.stop().await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&d.admin)
        .await
        .unwrap_or(0);
    println!("stopped cleanly; the hub holds {events} events");
    if std::env::var_os("MES_DEMO_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}
