//! The operator terminal in a real headless Chromium (WebDriver), against a real edge agent
//! (the `edge-agent run` code on a real socket and a real SQLite file) whose hub does not
//! answer: the floor keeps working with the WAN down, and the banner says so.
//!
//! * `operator_flow_in_chromium`: badge login → start an order → record 10 good and 2 scrap
//!   with a reason, with a rapid double tap on "Record" → downtime with a reason from the
//!   two-level tree → running again → a quality sample judged against its limits → complete;
//!   then the JSON API and the SQLite file must hold exactly those events, once each. Along
//!   the way: the offline banner, colour only for the abnormal machine state, German.
//! * `barcode_flow_with_the_keyboard_only`: no clicks at all: badge, order and lot come from
//!   a "scanner" (keys ending in Enter), the quantity is typed; then a supervisor (badge and
//!   PIN) corrects a count, after a wrong PIN is told in words; settles a conflict with HQ;
//!   and when the agent itself stops, the page says so.
//!
//! Screenshots of the main screens go to `target/test-artifacts/terminal-*.png`
//! (`UPDATE_SCREENSHOTS=1` refreshes the copies in `docs/screenshots/` the README links).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use edge_agent::config::RunConfig;
use edge_agent::server::{self, Running};
use edge_agent::store::{self, keys, people};
use serde_json::{Value, json};
use shared_model::{BadgeId, SiteId};
use system_tests::browser::Browser;
use system_tests::hq::{init, temp_dir};

const SITE: &str = "SITE_001";
const OPERATOR: &str = "B1001";
const SUPERVISOR: &str = "S2001";
const PIN: &str = "4711";
const ENTER: &str = "\u{E007}";

/// A real edge agent with the example master data (personnel and an inspection plan
/// included), a supervisor PIN, an API key for the checks, two released orders on PRESS-01,
/// and a hub address where nothing answers.
struct Terminal {
    running: Option<Running>,
    base: String,
    key: String,
    db: PathBuf,
    http: reqwest::Client,
    dir: PathBuf,
}

async fn terminal(name: &str) -> Terminal {
    init();
    let dir = temp_dir(name);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let site = SiteId::new(SITE).unwrap();
    let key = {
        let mut conn = store::open_write_connection(&data.join(store::DB_FILE)).unwrap();
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/master-data.json");
        let records = edge_agent::master::read_file(&file).unwrap();
        edge_agent::master::import(&mut conn, &records).unwrap();
        people::set_pin(&conn, &site, &BadgeId::new(SUPERVISOR).unwrap(), PIN, 0).unwrap();
        keys::create(&conn, "terminal-test", 0).unwrap()
    };
    // Real enrollment files, but the hub's port is closed: the agent is offline from the start.
    let ca = central_hub::pki::Ca::load_or_create(&dir.join("hub")).unwrap();
    ca.write_site_bundle(&site, &data.join("tls")).unwrap();
    let closed_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let running = server::start(RunConfig {
        site,
        data_dir: data.clone(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        hub: Some(format!("127.0.0.1:{closed_port}")),
        retention_days: 30,
        tls_dir: data.join("tls"),
        config_file: None,
    })
    .await
    .unwrap();
    let t = Terminal {
        base: format!("http://{}", running.http_addr),
        running: Some(running),
        key,
        db: data.join(store::DB_FILE),
        http: reqwest::Client::new(),
        dir,
    };
    for (id, qty, priority) in [("SITE_001-WO-1", 100, 1), ("SITE_001-WO-2", 50, 2)] {
        let (status, body) = t
            .call(
                "POST",
                "/api/v1/work-orders",
                Some(
                    json!({"id": id, "material": "BRACKET-7", "planned_quantity": qty,
                            "priority": priority, "work_unit": "PRESS-01"}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    t
}

impl Terminal {
    /// A request with the API key, as a line gateway would make it.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        };
        let req = req.bearer_auth(&self.key);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn events(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .call("GET", &format!("/api/v1/events?limit=100&{query}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().unwrap().clone()
    }

    /// `SELECT kind, count(*)` over the real SQLite file, opened read-only beside the agent.
    fn kinds_in_sqlite(&self) -> Vec<(String, i64)> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = conn
            .prepare("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn text(b: &Browser, testid: &str) -> String {
    b.js(&format!(
        "const e = document.querySelector('[data-testid=\"{testid}\"]'); return e ? e.textContent : null;"
    ))
    .await
    .as_str()
    .unwrap_or_else(|| panic!("no element data-testid={testid}"))
    .to_owned()
}

async fn click(b: &Browser, testid: &str) {
    b.click(&format!("[data-testid=\"{testid}\"]")).await;
}

/// Waits for the page's next refresh after the current one, so what is read is fresh.
async fn next_refresh(b: &Browser) {
    let seen = b.refreshes().await;
    b.wait_until(
        &format!("Number(document.body.dataset.refreshes || 0) > {seen}"),
        "the next refresh",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_flow_in_chromium() {
    let t = terminal("terminal-flow").await;
    let b = Browser::start().await;
    b.goto(&format!("{}/#station=PRESS-01", t.base)).await;
    b.wait_until("document.body.dataset.ready === '1'", "the page to load")
        .await;
    b.wait_until(
        "!document.getElementById('login-screen').hidden",
        "the login screen",
    )
    .await;
    b.keep_screenshot("terminal-login").await;

    // An unknown badge is told in words, and nothing opens.
    b.type_into("#badge", &format!("NOBODY{ENTER}")).await;
    b.wait_until(
        "!document.getElementById('error').hidden",
        "the unknown-badge error",
    )
    .await;
    let error = text(&b, "error").await;
    assert!(error.contains("not registered"), "{error}");

    // Badge login: the scanner types the badge and Enter.
    b.js("document.getElementById('badge').value = '';").await;
    b.type_into("#badge", &format!("{OPERATOR}{ENTER}")).await;
    b.wait_until(
        "!document.getElementById('work-screen').hidden && document.querySelector('[data-testid=\"start-SITE_001-WO-1\"]')",
        "the work screen with the queue",
    )
    .await;
    assert!(text(&b, "who").await.contains("Anna Weber"));
    assert!(text(&b, "station").await.contains("PRESS-01"));
    // The hub is unreachable: the page works and the banner says so.
    let banner = text(&b, "sync").await;
    assert!(banner.starts_with("Offline – saved locally"), "{banner}");
    b.keep_screenshot("terminal-queue").await;

    // Start the first order.
    click(&b, "start-SITE_001-WO-1").await;
    b.wait_until(
        "document.querySelector('[data-testid=\"order-state\"]').dataset.state === 'running'",
        "the order to run",
    )
    .await;
    assert_eq!(text(&b, "order-id").await, "SITE_001-WO-1");
    assert_eq!(text(&b, "order-target").await, "100");

    // Record 10 good and 2 scrap with a reason, on the pad, and tap Record twice quickly.
    click(&b, "btn-record").await;
    b.wait_until(
        "!document.getElementById('overlay').hidden",
        "the record dialog",
    )
    .await;
    click(&b, "pad-1").await;
    click(&b, "pad-0").await;
    click(&b, "scrap").await;
    click(&b, "pad-2").await;
    click(&b, "scrap-reason-SCRAP.BURR").await;
    b.keep_screenshot("terminal-record").await;
    b.js("const ok = document.getElementById('dialog-ok'); ok.click(); ok.click();")
        .await;
    b.wait_until(
        "document.getElementById('overlay').hidden && document.querySelector('[data-testid=\"order-good\"]').textContent === '10'",
        "the counts to show",
    )
    .await;
    assert_eq!(text(&b, "order-scrap").await, "2");
    assert_eq!(
        b.js("return document.querySelector('[data-testid=\"order-progress\"]').dataset.percent;")
            .await,
        json!("10")
    );

    // Downtime: group, then reason, from the two-level tree. The state turns red.
    click(&b, "btn-downtime").await;
    click(&b, "reason-group-DOWN").await;
    click(&b, "reason-DOWN.JAM").await;
    b.wait_until(
        "document.querySelector('[data-testid=\"machine-state\"]').dataset.state === 'down'",
        "the machine to show down",
    )
    .await;
    let machine = text(&b, "machine-state").await;
    assert!(
        machine.contains("Down") && machine.contains("Material jam"),
        "{machine}"
    );
    let class = b
        .js("return document.querySelector('[data-testid=\"machine-state\"]').className;")
        .await;
    assert!(class.as_str().unwrap().contains("abnormal"), "{class}");
    b.keep_screenshot("terminal-downtime").await;
    click(&b, "btn-running").await;
    b.wait_until(
        "document.querySelector('[data-testid=\"machine-state\"]').dataset.state === 'running'",
        "the machine to run again",
    )
    .await;
    let class = b
        .js("return document.querySelector('[data-testid=\"machine-state\"]').className;")
        .await;
    assert!(
        !class.as_str().unwrap().contains("abnormal"),
        "running is grey: {class}"
    );

    // A quality sample: 8.05 mm against 7.9–8.1 passes; the verdict shows before saving.
    click(&b, "btn-quality").await;
    for k in ["8", "dot", "0", "5"] {
        click(&b, &format!("pad-{k}")).await;
    }
    let verdict = text(&b, "quality-verdict").await;
    assert!(verdict.starts_with("PASS"), "{verdict}");
    assert!(text(&b, "quality-limits").await.contains("7.9 to 8.1 mm"));
    // 8.2 would fail: the screen says so before anything is stored.
    click(&b, "pad-back").await;
    click(&b, "pad-back").await;
    click(&b, "pad-2").await;
    assert!(text(&b, "quality-verdict").await.starts_with("FAIL"));
    click(&b, "pad-back").await;
    click(&b, "pad-0").await;
    click(&b, "pad-5").await;
    b.keep_screenshot("terminal-quality").await;
    click(&b, "dialog-ok").await;
    b.wait_until(
        "document.getElementById('overlay').hidden",
        "the sample to be saved",
    )
    .await;

    // Complete, confirmed in a dialog.
    click(&b, "btn-complete").await;
    click(&b, "dialog-ok").await;
    b.wait_until(
        "!document.querySelector('[data-testid=\"no-order\"]').hidden",
        "the order to be completed",
    )
    .await;
    next_refresh(&b).await;
    let banner = text(&b, "sync").await;
    let pending: u64 = b
        .js("return document.getElementById('sync').dataset.pending;")
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        pending >= 5,
        "events and order changes wait for the hub: {banner}"
    );
    assert!(banner.contains(&format!("{pending} pending")), "{banner}");

    // German, switched on this terminal.
    click(&b, "btn-supervisor").await; // any dialog would do; cancel it again
    click(&b, "dialog-cancel").await;
    b.click("#lang-de").await;
    b.wait_until("document.documentElement.lang === 'de'", "German")
        .await;
    next_refresh(&b).await;
    assert!(
        text(&b, "sync")
            .await
            .starts_with("Offline – lokal gespeichert")
    );
    assert_eq!(
        b.js("return document.getElementById('btn-record').textContent;")
            .await,
        json!("Menge melden")
    );
    b.keep_screenshot("terminal-de").await;
    b.click("#lang-en").await;

    // Exactly those events, once each: through the JSON API ...
    let order = t.events("work_order=SITE_001-WO-1").await;
    let counts: Vec<&Value> = order
        .iter()
        .filter(|e| e["type"] == "production_count")
        .collect();
    assert_eq!(
        counts.len(),
        1,
        "one count despite the double tap: {order:?}"
    );
    let p = &counts[0]["body"]["production_count"];
    assert_eq!(
        (&p["good"], &p["scrap"], &p["scrap_reason"], &p["equipment"]),
        (
            &json!(10),
            &json!(2),
            &json!("SCRAP.BURR"),
            &json!("PRESS-01")
        )
    );
    assert_eq!(counts[0]["operator"], json!(OPERATOR));
    let samples: Vec<&Value> = order
        .iter()
        .filter(|e| e["type"] == "quality_sample")
        .collect();
    assert_eq!(samples.len(), 1, "{order:?}");
    let q = &samples[0]["body"]["quality_sample"];
    assert_eq!(q["characteristic"], json!("hole_diameter"));
    assert!((q["value"].as_f64().unwrap() - 8.05).abs() < 1e-9, "{q}");
    assert_eq!(q["pass"], json!(true));
    let states = t.events("equipment=PRESS-01&type=equipment_state").await;
    let seen: Vec<(Value, Value)> = states
        .iter()
        .rev()
        .map(|e| {
            let s = &e["body"]["equipment_state"];
            (s["state"].clone(), s["reason"].clone())
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (json!("down"), json!("DOWN.JAM")),
            (json!("running"), Value::Null)
        ]
    );
    let (_, wo) = t
        .call("GET", "/api/v1/work-orders/SITE_001-WO-1", None)
        .await;
    assert_eq!(wo["state"], json!("ended"), "{wo}");
    assert_eq!(
        (wo["good_count"].clone(), wo["scrap_count"].clone()),
        (json!(10), json!(2))
    );
    // ... and in the SQLite file.
    assert_eq!(
        t.kinds_in_sqlite(),
        vec![
            ("equipment_state".to_owned(), 2),
            ("production_count".to_owned(), 1),
            ("quality_sample".to_owned(), 1),
        ]
    );
    drop(b);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barcode_flow_with_the_keyboard_only() {
    let t = terminal("terminal-keys").await;
    // WO-2 as released, for HQ's concurrent edit below.
    let released_doc: Vec<u8> = rusqlite::Connection::open(&t.db)
        .unwrap()
        .query_row(
            "SELECT doc FROM records WHERE record_id = 'SITE_001-WO-2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let b = Browser::start().await;
    b.goto(&format!("{}/#station=PRESS-01", t.base)).await;
    b.wait_until(
        "document.body.dataset.ready === '1' && document.activeElement.id === 'badge'",
        "the badge field to have the focus",
    )
    .await;
    // Badge, then the order's barcode, then a lot's barcode and its quantity: keys only.
    b.keys(&format!("{OPERATOR}{ENTER}")).await;
    b.wait_until(
        "!document.getElementById('work-screen').hidden && document.activeElement.id === 'scan'",
        "the scan field to have the focus",
    )
    .await;
    b.keys(&format!("SITE_001-WO-2{ENTER}")).await;
    b.wait_until(
        "document.querySelector('[data-testid=\"order-id\"]').textContent === 'SITE_001-WO-2'",
        "the scanned order to start",
    )
    .await;
    b.wait_until(
        "document.activeElement.id === 'scan'",
        "the focus back on the scan field",
    )
    .await;
    b.keys(&format!("LOT-STEEL-42{ENTER}")).await;
    b.wait_until(
        "!document.getElementById('overlay').hidden && document.activeElement.dataset.testid === 'lot-quantity'",
        "the lot dialog asking for the quantity",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('[data-testid=\"lot-id\"]').value;")
            .await,
        json!("LOT-STEEL-42")
    );
    b.keep_screenshot("terminal-lot").await;
    b.keys(&format!("12.5{ENTER}")).await;
    b.wait_until(
        "document.getElementById('overlay').hidden",
        "the lot to be booked",
    )
    .await;
    let moves = t
        .events("work_order=SITE_001-WO-2&type=material_consumed")
        .await;
    assert_eq!(moves.len(), 1, "{moves:?}");
    let m = &moves[0]["body"]["material_consumed"];
    assert_eq!(
        (&m["lot"], &m["material"], &m["quantity"]),
        (&json!("LOT-STEEL-42"), &json!("STEEL-S235"), &json!(12.5))
    );
    assert_eq!(moves[0]["operator"], json!(OPERATOR));

    // A count, then a supervisor's correction of it; a wrong PIN first, told in words.
    let (status, body) = t
        .call(
            "POST",
            "/api/v1/events",
            Some(json!({"type": "production_count", "equipment": "PRESS-01",
                        "work_order": "SITE_001-WO-2", "good": 7})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let counted = body["event_ids"][0].as_str().unwrap().to_owned();
    b.js("document.getElementById('btn-supervisor').focus();")
        .await;
    b.keys(ENTER).await;
    b.wait_until(
        "document.activeElement.dataset.testid === 'supervisor-badge'",
        "the supervisor dialog",
    )
    .await;
    b.keys(&format!("{SUPERVISOR}{ENTER}0000{ENTER}")).await;
    b.wait_until(
        "!document.querySelector('[data-testid=\"dialog-error\"]').hidden",
        "the wrong-PIN message",
    )
    .await;
    let error = text(&b, "dialog-error").await;
    assert!(error.contains("PIN wrong"), "{error}");
    b.js("document.querySelector('[data-testid=\"supervisor-pin\"]').value = ''; document.querySelector('[data-testid=\"supervisor-pin\"]').focus();").await;
    b.keys(&format!("{PIN}{ENTER}")).await;
    b.wait_until(
        &format!("document.querySelector('[data-testid=\"correct-{counted}\"]')"),
        "the supervisor panel with the count",
    )
    .await;
    b.js(&format!(
        "document.querySelector('[data-testid=\"correct-{counted}\"]').focus();"
    ))
    .await;
    b.keys(ENTER).await;
    b.wait_until(
        "document.activeElement.dataset.testid === 'correct-good'",
        "the correction dialog",
    )
    .await;
    // Replace 7 with 6: select all, type, Enter.
    b.js("document.activeElement.select();").await;
    b.keys(&format!("6{ENTER}")).await;
    b.wait_until(
        "document.getElementById('overlay').hidden && document.querySelector('[data-testid=\"order-good\"]').textContent === '6'",
        "the corrected total",
    )
    .await;
    b.keep_screenshot("terminal-supervisor").await;
    let corrections = t.events("type=correction").await;
    assert_eq!(corrections.len(), 1, "{corrections:?}");
    assert_eq!(corrections[0]["operator"], json!(SUPERVISOR));
    let c = &corrections[0]["body"]["correction"];
    assert_eq!(c["corrects"], json!(counted));
    assert_eq!(c["replacement"]["production_count"]["good"], json!(6));
    let counts = t.events("type=production_count").await;
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0]["in_force"]["good"], json!(6), "{}", counts[0]);

    // HQ cancelled WO-2 while the site ran it: the merge is a conflict, announced on the
    // Supervisor button and settled by the supervisor keeping "running".
    let mut hq = automerge::AutoCommit::load(&released_doc)
        .unwrap()
        .with_actor(automerge::ActorId::random());
    automerge::transaction::Transactable::put(&mut hq, automerge::ROOT, "state", "aborted")
        .unwrap();
    hq.commit();
    let change = sync_protocol::message::RecordChange::new(
        sync_protocol::message::RecordId::work_order(
            &shared_model::WorkOrderId::new("SITE_001-WO-2").unwrap(),
        ),
        hq.get_last_local_change().unwrap().raw_bytes().to_vec(),
    )
    .unwrap();
    t.running
        .as_ref()
        .unwrap()
        .state
        .store
        .write(move |c| edge_agent::records::apply_remote(c, &[change]))
        .await
        .unwrap();
    b.wait_until(
        "document.getElementById('btn-supervisor').dataset.conflicts === '1' && document.querySelector('[data-testid^=\"resolve-\"][data-testid$=\"-running\"]')",
        "the conflict on the Supervisor button and in the panel",
    )
    .await;
    assert!(text(&b, "btn-supervisor").await.contains("conflicts: 1"));
    b.keep_screenshot("terminal-conflict").await;
    b.click("[data-testid^=\"resolve-\"][data-testid$=\"-running\"]")
        .await;
    b.wait_until(
        "document.getElementById('btn-supervisor').dataset.conflicts === '0'",
        "the conflict to be settled",
    )
    .await;
    let (_, conflicts) = t.call("GET", "/api/v1/conflicts", None).await;
    assert_eq!(conflicts["conflicts"], json!([]));
    let (_, wo) = t
        .call("GET", "/api/v1/work-orders/SITE_001-WO-2", None)
        .await;
    assert_eq!(wo["state"], json!("running"), "{wo}");

    // The agent itself goes away: the page says in words that nothing can be saved.
    let mut t = t;
    t.running.take().unwrap().stop().await.unwrap();
    b.wait_until(
        "document.getElementById('sync').dataset.state === 'unreachable' && !document.getElementById('error').hidden",
        "the page to tell that the edge agent is gone",
    )
    .await;
    assert!(
        text(&b, "sync")
            .await
            .contains("No connection to the edge agent")
    );
    assert!(text(&b, "error").await.contains("does not answer"));
    drop(b);
    t.stop().await;
}
