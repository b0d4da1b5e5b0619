//! The HQ side of the system tests: a migrated database with sites in their time zones, the
//! hub on it, tokens, HQ master data through the API, and events through the real ingest path;
//! the domain's worked OEE example as a ready dataset. Used by the reporting and dashboard tests.

// Test support: a failed setup step should stop the test with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use central_hub::db::sites::add_site;
use central_hub::ingest::PgHubStore;
use central_hub::serve::{self, ReportSettings, ServeConfig};
use serde_json::{Value, json};
use shared_model::event::{
    Correction, EquipmentStateChange, MachineState, MaterialMovement, ProductionCount, Replacement,
};
use shared_model::{
    EquipmentId, Event, EventBody, EventId, LotId, MaterialId, ReasonCodeId, SiteId, Timestamp,
    WorkOrderId,
};
use sqlx::PgPool;
use sync_protocol::store::HubStore;

/// The process's TLS crypto provider (ring), once; every test that starts a hub or an edge
/// calls it first.
pub fn init() {
    // Err only means a provider is installed already: the same one, by an earlier test.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// [`init`], and logs at `warn` (or `RUST_LOG`) into the test's captured output. The first
/// call in a test binary sets the subscriber; later ones find it set.
pub fn init_logs() {
    init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh directory under the system's temporary directory, named after `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mes-test-{name}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A hub's settings for a test: `db` through the hub role with the reporting connection,
/// QUIC and HTTP on free loopback ports, state (CA, site bundles) in `state_dir`, no
/// enrollment or metrics listener, default report settings. Tests change what they need
/// with `ServeConfig { field, ..serve_config(..) }`.
pub fn serve_config(db: &crate::pg::TestDb, state_dir: &Path) -> ServeConfig {
    ServeConfig {
        db: Default::default(),
        database_url: db.hub_url.clone(),
        read_database_url: Some(db.reporting_url.clone()),
        quic_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.to_owned(),
        server_names: vec!["127.0.0.1".into()],
        enroll_listen: None,
        metrics_listen: None,
        reports: ReportSettings::default(),
    }
}

/// The default report settings but for the rate limit: `per_second` requests a second per token.
pub fn rate_limit(per_second: u32) -> ReportSettings {
    ReportSettings {
        rate_limit_per_second: per_second,
        ..ReportSettings::default()
    }
}

/// The body of `request`'s answer as text, whatever its status.
pub async fn text_of(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// The `Content-Type` of `response` (empty when it has none).
pub fn content_type(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("content-type")
        .map_or("", |v| v.to_str().unwrap())
}

/// The body of `request`'s answer as JSON, whatever its status.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[derive(Debug)]
pub struct Hq {
    pub db: crate::pg::TestDb,
    pub admin: PgPool,
    pub store: PgHubStore,
    pub state_dir: PathBuf,
}

pub async fn hq(name: &str, sites: &[(&str, &str)]) -> Hq {
    init();
    let db = crate::pg::server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    for (s, tz) in sites {
        add_site(&admin, &SiteId::new(*s).unwrap(), "Plant", "EU", tz)
            .await
            .unwrap();
    }
    let store = PgHubStore::new(central_hub::db::connect(&db.hub_url).await.unwrap());
    Hq {
        db,
        admin,
        store,
        state_dir: temp_dir(name),
    }
}

impl Hq {
    pub async fn hub(&self, reports: ReportSettings) -> serve::Running {
        serve::start(ServeConfig {
            reports,
            ..serve_config(&self.db, &self.state_dir)
        })
        .await
        .unwrap()
    }

    /// [`Hq::hub`], its HTTP API's base URL, and a client for it.
    pub async fn serve(
        &self,
        reports: ReportSettings,
    ) -> (serve::Running, String, reqwest::Client) {
        let hub = self.hub(reports).await;
        let base = format!("http://{}", hub.http_addr);
        (hub, base, reqwest::Client::new())
    }

    pub async fn token(&self, scope: &str, site: Option<&str>) -> String {
        let site = site.map(|s| SiteId::new(s).unwrap());
        central_hub::api::create_token(&self.admin, "test", scope, site.as_ref())
            .await
            .unwrap()
    }
}

pub fn t(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

pub fn event(site: &SiteId, n: u64, at: Timestamp, body: EventBody) -> Event {
    Event {
        event_id: EventId::from_parts(1_790_000_000_000 + n, [(n % 200) as u8; 10]),
        site_id: site.clone(),
        occurred_at: at,
        recorded_at: at,
        operator: None,
        body,
    }
}

pub fn state(eq: &str, s: MachineState, reason: Option<&str>) -> EventBody {
    EventBody::EquipmentState(EquipmentStateChange {
        equipment: EquipmentId::new(eq).unwrap(),
        state: s,
        reason: reason.map(|r| ReasonCodeId::new(r).unwrap()),
    })
}

/// State events of equipment `eq` at `site`, numbered from `first`: at each instant (RFC 3339)
/// the state it enters, with its reason.
pub fn timeline(
    site: &SiteId,
    first: u64,
    eq: &str,
    changes: &[(&str, MachineState, Option<&str>)],
) -> Vec<Event> {
    (first..)
        .zip(changes)
        .map(|(n, &(at, s, reason))| event(site, n, t(at), state(eq, s, reason)))
        .collect()
}

/// Events of `site` numbered from `first`: at each instant (RFC 3339) its body.
pub fn events_at(site: &SiteId, first: u64, bodies: &[(&str, EventBody)]) -> Vec<Event> {
    (first..)
        .zip(bodies)
        .map(|(n, (at, body))| event(site, n, t(at), body.clone()))
        .collect()
}

/// A material movement of `quantity` of `lot` (of `material`) by work order `order`: consumed
/// by it, or else produced.
pub fn movement(
    consumed: bool,
    lot: &str,
    material: &str,
    quantity: f64,
    order: &str,
) -> EventBody {
    let m = MaterialMovement {
        lot: LotId::new(lot).unwrap(),
        material: MaterialId::new(material).unwrap(),
        quantity,
        work_order: Some(WorkOrderId::new(order).unwrap()),
        equipment: None,
    };
    if consumed {
        EventBody::MaterialConsumed(m)
    } else {
        EventBody::MaterialProduced(m)
    }
}

/// The body of a correction of event `of` with `note`: its replacement `body`, or a void
/// without one.
pub fn correction(of: EventId, body: Option<EventBody>, note: &str) -> EventBody {
    EventBody::Correction(Correction {
        corrects: of,
        replacement: body.map(replacement),
        note: note.into(),
    })
}

/// `body` as the replacement of a corrected event (counts, states and material movements).
pub fn replacement(body: EventBody) -> Replacement {
    match body {
        EventBody::ProductionCount(b) => Replacement::ProductionCount(b),
        EventBody::EquipmentState(b) => Replacement::EquipmentState(b),
        EventBody::MaterialConsumed(b) => Replacement::MaterialConsumed(b),
        EventBody::MaterialProduced(b) => Replacement::MaterialProduced(b),
        other => panic!("no replacement of this kind in the tests: {other:?}"),
    }
}

/// `times` events of `site` with the same `body`, numbered from `first`, one every `minutes`
/// from `start` (RFC 3339).
pub fn every(
    site: &SiteId,
    first: u64,
    start: &str,
    minutes: i64,
    times: u64,
    body: &EventBody,
) -> Vec<Event> {
    (0..times)
        .map(|i| {
            let at = t(start).saturating_add_micros(i as i64 * minutes * 60_000_000);
            event(site, first + i, at, body.clone())
        })
        .collect()
}

pub fn count(eq: &str, wo: &str, good: u32, scrap: u32) -> EventBody {
    EventBody::ProductionCount(ProductionCount {
        equipment: EquipmentId::new(eq).unwrap(),
        work_order: Some(WorkOrderId::new(wo).unwrap()),
        good,
        scrap,
        rework: 0,
        scrap_reason: (scrap > 0).then(|| ReasonCodeId::new("SCRAP.BURR").unwrap()),
    })
}

/// [`Api::get`] with `token`.
pub async fn get(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    Api::new(http, base, token).get(path).await
}

/// One caller of a hub's HTTP API: a client, the API's base URL and the caller's bearer token.
#[derive(Clone, Debug)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn new(http: &reqwest::Client, base: &str, token: &str) -> Api {
        Api {
            http: http.clone(),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    /// The hub's answer to `GET path`.
    pub async fn response(&self, path: &str) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        self.http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// The hub's answer to `method path` with the JSON `body`.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        let request = self.http.request(method, url).json(body);
        request.bearer_auth(&self.token).send().await.unwrap()
    }

    /// `GET /api/v1/reports/{query}`, a bad one: asserts a `400` whose error names `field`;
    /// returns the error.
    pub async fn bad_parameter(&self, query: &str, field: &str) -> Value {
        let (status, v, _) = self.get(&format!("/api/v1/reports/{query}")).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["error"]["field"], field, "{query}: {v}");
        v["error"].clone()
    }

    /// `GET path`: the status, the body (JSON, or its text as a JSON string) and the headers.
    pub async fn get(&self, path: &str) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = self.response(path).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, v, headers)
    }

    /// The body of the answer to `path` (JSON, or its text as a JSON string), whatever its status.
    pub async fn json(&self, path: &str) -> Value {
        self.get(path).await.1
    }
}

/// Releases a work order at `site` through the API (`POST .../work-orders` with `order` as
/// the body) and asserts that the hub created it.
pub async fn release_order(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    site: &str,
    order: &Value,
) {
    let path = format!("/api/v1/sites/{site}/work-orders");
    let api = Api::new(http, base, token);
    let r = api.send_json(reqwest::Method::POST, &path, order).await;
    let status = r.status().as_u16();
    assert_eq!(
        status,
        201,
        "release at {site}: {}",
        r.text().await.unwrap()
    );
}

pub async fn put_master(http: &reqwest::Client, base: &str, token: &str, kind: &str, body: Value) {
    let path = format!("/api/v1/master-data/{kind}");
    let api = Api::new(http, base, token);
    let r = api.send_json(reqwest::Method::PUT, &path, &body).await;
    assert_eq!(
        r.status().as_u16(),
        200,
        "{kind}: {}",
        r.text().await.unwrap()
    );
}

/// Puts the material master: each of `materials` (id, name) counted in pieces, tracked by lot.
pub async fn put_materials(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    materials: &[(&str, &str)],
) {
    let rows: Vec<Value> = materials
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name, "unit": "pcs", "tracking": "lot"}))
        .collect();
    put_master(http, base, token, "materials", json!(rows)).await;
}

/// Asserts that `v` is an API error with `code` whose message says `words`.
pub fn assert_error(v: &Value, code: &str, words: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{v}");
}

/// The length of the array `key` of `v`; panics when it is not an array.
pub fn array_len(v: &Value, key: &str) -> usize {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no array {key} in {v}"))
        .len()
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-4
}

/// The worked example of domain.md at a Berlin plant on 2026-11-02 (UTC+01:00): shift 06:00 to
/// 14:00 local with a 30 min break, 45 min down on a jam, 10,800 parts of which 216 scrap at an
/// ideal 2.0 s: A 90.0 %, P 88.89 %, Q 98.0 %, OEE 78.4 %.
pub async fn seed_worked_example(h: &Hq, http: &reqwest::Client, base: &str, writer: &str) {
    let site = SiteId::new("SITE_A").unwrap();
    put_materials(http, base, writer, &[("BRACKET-7", "Bracket")]).await;
    put_master(
        http,
        base,
        writer,
        "routings",
        json!([
        {"material": "BRACKET-7", "version": 1, "seq": 10, "operation_code": "PRESS",
         "work_center_class": "press", "ideal_cycle_time_ms": 2000, "setup_time_ms": 0}]),
    )
    .await;
    put_master(http, base, writer, "equipment", json!([
        {"id": "PRESS-01", "parent": "WC-PRESSES", "level": "work_unit", "name": "Press 1", "class": "press"}])).await;
    put_master(http, base, writer, "reason-codes", json!([
        {"code": "DOWN.JAM", "parent": null, "name": "Material jam", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "SCRAP.BURR", "parent": null, "name": "Burr", "loss_category": "quality", "counts_against_availability": false}])).await;
    put_master(http, base, writer, "shift-calendars", json!([
        {"site_id": "SITE_A", "name": "main", "shifts": [
            {"name": "Early", "start": "2026-11-02T05:00:00Z", "end": "2026-11-02T13:00:00Z",
             "planned_breaks": [{"start": "2026-11-02T09:00:00Z", "end": "2026-11-02T09:30:00Z"}]}]}])).await;
    let order = json!({"id": "SITE_A-WO-1", "material": "BRACKET-7", "planned_quantity": 12000,
                       "due": "2026-11-02T13:00:00Z"});
    release_order(http, base, writer, "SITE_A", &order).await;

    let mut events = timeline(
        &site,
        1,
        "PRESS-01",
        &[
            ("2026-11-02T05:00:00Z", MachineState::Running, None),
            ("2026-11-02T07:00:00Z", MachineState::Down, Some("DOWN.JAM")),
            ("2026-11-02T07:45:00Z", MachineState::Running, None),
            // After the shift the press is stopped as planned; that time is outside PPT anyway.
            ("2026-11-02T13:00:00Z", MachineState::PlannedStop, None),
        ],
    );
    // 108 counts of 98 good + 2 scrap spread over the shift: 10,584 good, 216 scrap.
    events.extend(every(
        &site,
        100,
        "2026-11-02T05:00:00Z",
        4,
        108,
        &count("PRESS-01", "SITE_A-WO-1", 98, 2),
    ));
    // The order consumed a coil and produced a lot of brackets.
    events.extend(events_at(
        &site,
        300,
        &[
            (
                "2026-11-02T12:00:00Z",
                movement(true, "LOT-STEEL-1", "STEEL-S235", 250.5, "SITE_A-WO-1"),
            ),
            (
                "2026-11-02T12:00:00Z",
                movement(false, "LOT-FG-1", "BRACKET-7", 10_584.0, "SITE_A-WO-1"),
            ),
        ],
    ));
    // Two batches, the second re-sent: duplicates must not count twice.
    h.store.ingest_events(&site, &events[..60]).await.unwrap();
    h.store.ingest_events(&site, &events[40..]).await.unwrap();
}

/// Requests `path` until the hub answers it with `X-Cache: want` (bounded: 5 s); returns that
/// answer's body. Cache changes are asynchronous (a NOTIFY, a background refresh).
pub async fn wait_for_x_cache(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    want: &str,
) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (_, v, headers) = get(http, base, token, path).await;
        if headers["x-cache"] == want {
            return v;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{path} never answered with X-Cache: {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it holds, failing the test with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
