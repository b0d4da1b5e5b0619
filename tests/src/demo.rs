//! The whole system on one machine with a simulated press line: what `mes-demo` runs, and what
//! the end-to-end test runs with a seed and a history only.
//!
//! A fresh database, the hub, one edge agent per site (real QUIC with mutual TLS on loopback),
//! and per site two presses whose PLCs the edges read through their machine connectors:
//! PRESS-01 publishes JSON on an MQTT broker, PRESS-03 is an OPC UA server's variables.
//! PRESS-02 is left to people at the operator terminal. The line starts `history_hours` back
//! (on an hour boundary, where the hub's hourly buckets begin) so the first look at the
//! dashboard shows a morning of production, then runs live.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use central_hub::db::sites::add_site;
use central_hub::pki::Ca;
use central_hub::serve::{self, ServeConfig};
use edge_agent::config::RunConfig;
use edge_agent::connectors::health::Link;
use shared_model::SiteId;

use crate::line::outputs::{self, MqttOut, UaServer};
use crate::line::{Press, PressSpec, Snapshot, Tally};

/// Badges of the demo's people at every site, and the supervisor's PIN.
pub const OPERATOR_BADGE: &str = "1001";
pub const SUPERVISOR_BADGE: &str = "9001";
pub const SUPERVISOR_PIN: &str = "1234";
/// The routing's ideal cycle time of BRACKET-7 on a press.
pub const IDEAL_CYCLE_MS: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct Site {
    pub id: &'static str,
    pub name: &'static str,
    pub region: &'static str,
    pub tz: &'static str,
}

pub const SITES: [Site; 3] = [
    Site {
        id: "SITE_001",
        name: "Plant Lyon",
        region: "EU",
        tz: "Europe/Paris",
    },
    Site {
        id: "SITE_002",
        name: "Plant Porto",
        region: "EU",
        tz: "Europe/Lisbon",
    },
    Site {
        id: "SITE_003",
        name: "Plant Monterrey",
        region: "NA",
        tz: "America/Monterrey",
    },
];

/// Where the line's MQTT messages go.
#[derive(Debug, Clone)]
pub enum Broker {
    /// rumqttd inside this process: the demo needs nothing but Rust and PostgreSQL.
    Embedded,
    /// A broker that runs already (Mosquitto in the tests).
    At { host: String, port: u16 },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub sites: Vec<Site>,
    pub broker: Broker,
    /// Hours of production before now (the first starts on an hour boundary), at least 1.
    pub history_hours: u32,
    pub seed: u64,
    /// Names the run on a shared broker (client ids, topics).
    pub run: String,
}

pub fn master_data(site: &str) -> String {
    format!(
        r#"{{
  "materials": [{{"id": "BRACKET-7", "name": "Bracket", "unit": "pcs", "tracking": "lot"}},
                {{"id": "STEEL-S235", "name": "Steel sheet S235", "unit": "kg", "tracking": "lot"}}],
  "routings": [{{"material": "BRACKET-7", "version": 1, "seq": 10, "operation_code": "PRESS",
                 "work_center_class": "press", "ideal_cycle_time_ms": {IDEAL_CYCLE_MS}, "setup_time_ms": 0}}],
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
                {{"id": "PRESS-02", "parent": "WC-PRESSES", "level": "work_unit", "name": "Press 2", "class": "press"}},
                {{"id": "PRESS-03", "parent": "WC-PRESSES", "level": "work_unit", "name": "Press 3", "class": "press"}}],
  "personnel": [{{"badge": "{OPERATOR_BADGE}", "site_id": "{site}", "name": "Demo Operator", "role": "operator"}},
                {{"badge": "{SUPERVISOR_BADGE}", "site_id": "{site}", "name": "Demo Supervisor", "role": "supervisor"}}],
  "inspection_plans": [{{"material": "BRACKET-7", "characteristic": "hole_diameter", "unit": "mm",
                         "lower_limit": 7.9, "upper_limit": 8.1, "sample_every": 500}}]
}}"#
    )
}

/// An edge agent of the demo and how to reach it.
pub struct Edge {
    pub site: String,
    pub base: String,
    pub key: String,
    pub running: edge_agent::server::Running,
}

/// How a press is wired: its MQTT topic, or its key on the OPC UA server.
enum Wire {
    Mqtt(String),
    OpcUa(String),
}

/// One simulated press and where its PLC shows its values.
pub struct LinePress {
    pub site: String,
    pub press: Press,
    wire: Wire,
}

/// The simulated line of every site.
pub struct Line {
    pub presses: Vec<LinePress>,
    mqtt: MqttOut,
    ua: UaServer,
}

impl Line {
    async fn show(&mut self, i: usize, s: &Snapshot) -> anyhow::Result<()> {
        match &self.presses[i].wire {
            Wire::Mqtt(topic) => self.mqtt.publish(topic, s).await,
            Wire::OpcUa(key) => self.ua.set(key, s),
        }
    }

    /// Runs every press up to `until_ms`, showing a snapshot at each state change and every
    /// `every_s` seconds. OPC UA changes go at a pace the server's queues hold (each monitored
    /// item keeps `queue_size` = 1,000 changes between two publishes, every 100 ms).
    pub async fn run_to(&mut self, until_ms: i64, every_s: u64) -> anyhow::Result<()> {
        for i in 0..self.presses.len() {
            let snaps = self.presses[i].press.advance(until_ms, every_s);
            let paced = matches!(self.presses[i].wire, Wire::OpcUa(_));
            for (n, s) in snaps.iter().enumerate() {
                self.show(i, s).await?;
                // 50 changes per 100 ms: a few publishing intervals' worth, far below the
                // queue.
                if paced && n % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(())
    }

    /// Ends every stop going on, so the last interval of each press is running.
    pub async fn end_stops(&mut self) -> anyhow::Result<()> {
        for i in 0..self.presses.len() {
            if let Some(s) = self.presses[i].press.end_stop() {
                self.show(i, &s).await?;
            }
        }
        Ok(())
    }

    /// Waits until the broker holds every MQTT message sent.
    pub async fn flushed(&self) -> anyhow::Result<()> {
        self.mqtt.flushed(Duration::from_secs(30)).await
    }

    /// What each press did: (site, equipment, tally).
    pub fn tallies(&self) -> Vec<(String, String, Tally)> {
        self.presses
            .iter()
            .map(|p| {
                (
                    p.site.clone(),
                    p.press.spec.equipment.clone(),
                    p.press.tally(),
                )
            })
            .collect()
    }

    /// Runs live, a step a second, until `stop` turns true.
    pub async fn live(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if let Err(e) = self.run_to(now_ms(), 5).await {
                eprintln!("the simulated line: {e:#}");
            }
        }
        self.ua.stop();
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The system running.
pub struct Demo {
    pub db: crate::pg::TestDb,
    pub admin: sqlx::PgPool,
    pub hub: serve::Running,
    pub hq_token: String,
    pub edges: Vec<Edge>,
    /// The line, its history shown and every stop ended; [`Line::live`] runs it on.
    pub line: Line,
    /// The broker's address as the edges reach it.
    pub broker: String,
    pub opcua: String,
    /// When the line started (Unix milliseconds, an hour boundary).
    pub start_ms: i64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts everything and shows the line's history; returns once the history is at the
/// broker and the OPC UA server (the edges may still be reading it).
pub async fn start(o: Options) -> anyhow::Result<Demo> {
    std::fs::create_dir_all(&o.root).with_context(|| format!("creating {}", o.root.display()))?;
    let db = crate::pg::server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url)
        .await
        .context("connecting as the owner")?;
    let state_dir = o.root.join("hub");
    let ca = Ca::load_or_create(&state_dir)?;
    let mut ids = Vec::new();
    for s in &o.sites {
        let id = SiteId::new(s.id)?;
        add_site(&admin, &id, s.name, s.region, s.tz).await?;
        ca.write_site_bundle(&id, &state_dir.join("sites").join(s.id))?;
        ids.push(id);
    }
    // HQ's master data (routings with ideal cycle times, reasons, equipment) at the hub, for
    // the reports; the same file goes to each edge below.
    let md: shared_model::master::MasterFile = serde_json::from_str(&master_data(o.sites[0].id))?;
    central_hub::db::master::publish(&admin, &ids, &md.into_records()).await?;
    let hq_token =
        central_hub::api::create_token(&admin, "demo dashboard", "hq:read", None).await?;
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

    // The line's peers.
    let (host, port) = match &o.broker {
        Broker::Embedded => {
            let port = free_port()?;
            outputs::embedded_broker(port)?;
            ("127.0.0.1".to_owned(), port)
        }
        Broker::At { host, port } => (host.clone(), *port),
    };
    let ua = UaServer::start(free_port()?, &o.root.join("opcua-pki")).await?;
    let mqtt = MqttOut::connect(&host, port, &format!("mes-demo-line-{}", o.run));

    // The line starts on an hour boundary, `history_hours` back.
    let hour = 3_600_000;
    let start_ms = (now_ms() / hour - i64::from(o.history_hours.max(1)) + 1) * hour;
    let mut presses = Vec::new();
    let mut edges = Vec::new();
    for (n, s) in o.sites.iter().enumerate() {
        let n = n as u64;
        let topic = format!("plant/{}/{}/press1", o.run, s.id);
        let key = format!("{}.Press3", s.id);
        let p1 = Press::new(
            PressSpec::typical("PRESS-01", IDEAL_CYCLE_MS, 2 * n),
            o.seed.wrapping_add(2 * n),
            start_ms,
        );
        let p3 = Press::new(
            PressSpec::typical("PRESS-03", IDEAL_CYCLE_MS, 2 * n + 1),
            o.seed.wrapping_add(2 * n + 1),
            start_ms,
        );
        ua.add_press(&key, &p3.snapshot())?;
        let config = format!(
            "[[connector]]\nname = \"line-mqtt\"\nkind = \"mqtt\"\nurl = \"mqtt://{host}:{port}\"\n\
             client_id = \"mes-demo-{}-{}\"\n{}\n[[connector.write]]\nequipment = \"PRESS-01\"\n\
             topic = \"{topic}/order\"\n{}",
            o.run,
            s.id,
            outputs::mqtt_tags("press1", "PRESS-01", &topic),
            ua.connector("press3-opcua", &key, "PRESS-03"),
        );
        edges.push(start_edge(&o, &state_dir, &hub, s, &config).await?);
        presses.push(LinePress {
            site: s.id.to_owned(),
            press: p1,
            wire: Wire::Mqtt(topic),
        });
        presses.push(LinePress {
            site: s.id.to_owned(),
            press: p3,
            wire: Wire::OpcUa(key),
        });
    }
    let mut line = Line { presses, mqtt, ua };
    // The MQTT presses' first values: the counters' baselines and the running state at the
    // line's start (the OPC UA presses hold theirs already).
    for i in 0..line.presses.len() {
        if matches!(line.presses[i].wire, Wire::Mqtt(_)) {
            let s = line.presses[i].press.snapshot();
            line.show(i, &s).await?;
        }
    }
    line.run_to(now_ms(), 30).await?;
    line.end_stops().await?;
    line.flushed().await?;
    let opcua = format!("opc.tcp://127.0.0.1:{}/", line.ua.port);
    Ok(Demo {
        db,
        admin,
        hub,
        hq_token,
        edges,
        line,
        broker: format!("mqtt://{host}:{port}"),
        opcua,
        start_ms,
    })
}

/// Starts a site's edge agent with its connectors, waits until they read the machines, and
/// starts the presses' orders (as an operator would at the terminal) and releases the orders
/// people work at PRESS-02.
async fn start_edge(
    o: &Options,
    state_dir: &std::path::Path,
    hub: &serve::Running,
    s: &Site,
    connectors: &str,
) -> anyhow::Result<Edge> {
    let data_dir = o.root.join(s.id.to_lowercase());
    std::fs::create_dir_all(&data_dir)?;
    let md_path = data_dir.join("master-data.json");
    std::fs::write(&md_path, master_data(s.id))?;
    let records = edge_agent::master::read_file(&md_path)?;
    let mut conn =
        edge_agent::store::open_write_connection(&data_dir.join(edge_agent::store::DB_FILE))?;
    edge_agent::master::import(&mut conn, &records)?;
    let key = edge_agent::store::keys::create(&conn, "demo", 0)?;
    edge_agent::store::people::set_pin(
        &conn,
        &SiteId::new(s.id)?,
        &shared_model::BadgeId::new(SUPERVISOR_BADGE)?,
        SUPERVISOR_PIN,
        0,
    )?;
    drop(conn);
    let config_file = data_dir.join("edge.toml");
    std::fs::write(&config_file, connectors)?;
    let running = edge_agent::server::start(RunConfig {
        site: SiteId::new(s.id)?,
        data_dir: data_dir.clone(),
        http_listen: "127.0.0.1:0".parse()?,
        hub: Some(hub.quic_addr.to_string()),
        retention_days: 30,
        tls_dir: state_dir.join("sites").join(s.id),
        config_file: Some(config_file),
    })
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let links = running.state.connectors.snapshots();
        if !links.is_empty() && links.iter().all(|c| c.link == Link::Up) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{}: the machine connectors did not come up: {links:?}",
                s.id
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = format!("http://{}", running.http_addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let post = |path: String, body: Option<serde_json::Value>| {
        let (http, base, key) = (&http, &base, &key);
        async move {
            let mut r = http.post(format!("{base}{path}")).bearer_auth(key);
            if let Some(body) = body {
                r = r.json(&body);
            }
            let r = r.send().await?;
            if !r.status().is_success() {
                bail!("{path}: {}", r.text().await.unwrap_or_default());
            }
            anyhow::Ok(())
        }
    };
    for (n, press) in [(1, "PRESS-01"), (2, "PRESS-03")] {
        let id = format!("{}-WO-000{n}", s.id);
        post(
            "/api/v1/work-orders".into(),
            Some(
                serde_json::json!({"id": id, "material": "BRACKET-7", "planned_quantity": 60_000,
                                    "work_unit": press}),
            ),
        )
        .await?;
        post(format!("/api/v1/work-orders/{id}/start"), None).await?;
    }
    for (n, qty) in [(1, 120), (2, 80), (3, 200)] {
        post(
            "/api/v1/work-orders".into(),
            Some(serde_json::json!({"id": format!("{}-WO-T{n}", s.id), "material": "BRACKET-7",
                                    "planned_quantity": qty, "priority": n, "work_unit": "PRESS-02"})),
        )
        .await?;
    }
    Ok(Edge {
        site: s.id.to_owned(),
        base,
        key,
        running,
    })
}

opaque_debug!(Edge, LinePress, Line, Demo);
