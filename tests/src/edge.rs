//! The edge side of the system tests: an edge agent's configuration on a fresh data
//! directory, with the master data the tests' events refer to already imported.

// Test support: a failed setup step should stop the test with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use edge_agent::config::RunConfig;
use shared_model::event::ProductionCount;
use shared_model::{EquipmentId, Event, EventBody, EventId, SiteId, Timestamp};

/// A material and one press: what the tests' production counts and releases name.
pub const MASTER: &str = r#"{
  "materials": [{"id": "BRACKET-7", "name": "Bracket", "unit": "pcs", "tracking": "lot"}],
  "equipment": [{"id": "PRESS-01", "parent": "PLANT", "level": "work_unit", "name": "Press", "class": "press"}]
}"#;

/// `edge-agent run` settings for `site` syncing with `hub` (QUIC address) with the TLS files
/// in `tls_dir`; the data directory is created and [`MASTER`] imported into its store.
pub fn edge_config(site: &str, data_dir: &Path, hub: &str, tls_dir: &Path) -> RunConfig {
    std::fs::create_dir_all(data_dir).unwrap();
    let md: edge_agent::master::MasterFile = serde_json::from_str(MASTER).unwrap();
    let mut conn =
        edge_agent::store::open_write_connection(&data_dir.join(edge_agent::store::DB_FILE))
            .unwrap();
    edge_agent::master::import(&mut conn, &md.into_records()).unwrap();
    RunConfig {
        site: SiteId::new(site).unwrap(),
        data_dir: data_dir.to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        hub: Some(hub.to_owned()),
        retention_days: 30,
        tls_dir: tls_dir.to_owned(),
        config_file: None,
    }
}

/// A fresh API key of the edge whose data directory is `data_dir` (written to its store as
/// `edge-agent api-key create` would).
pub fn api_key(data_dir: &Path, name: &str) -> String {
    let conn = edge_agent::store::open_write_connection(&data_dir.join(edge_agent::store::DB_FILE))
        .unwrap();
    edge_agent::store::keys::create(&conn, name, 0).unwrap()
}

/// Production count number `n` of `site`: one good part on PRESS-01 at `at`. Its id's time
/// part is `id_ms + n` and its random part `n % 251` repeated, so a test's ids are distinct,
/// ordered by `n`, and apart from another test's with another `id_ms`.
pub fn good_part(site: &SiteId, id_ms: u64, n: u64, at: Timestamp) -> Event {
    Event {
        event_id: EventId::from_parts(id_ms + n, [(n % 251) as u8; 10]),
        site_id: site.clone(),
        occurred_at: at,
        recorded_at: at,
        operator: None,
        body: EventBody::ProductionCount(ProductionCount {
            equipment: EquipmentId::new("PRESS-01").unwrap(),
            work_order: None,
            good: 1,
            scrap: 0,
            rework: 0,
            scrap_reason: None,
        }),
    }
}

/// [`good_part`] number `n` for every `n` of `ns`, one millisecond apart from
/// 2026-11-20T08:00:00Z (`n` ms after it).
pub fn good_parts(site: &SiteId, id_ms: u64, ns: std::ops::Range<u64>) -> Vec<Event> {
    let start = Timestamp::parse_rfc3339("2026-11-20T08:00:00Z").unwrap();
    ns.map(|n| good_part(site, id_ms, n, start.saturating_add_micros(n as i64 * 1000)))
        .collect()
}

/// Writes `events` to the running edge's store as if recorded at the site (into the outbox)
/// and wakes its sync, as the HTTP API does after a write.
pub async fn record(edge: &edge_agent::server::Running, events: Vec<Event>) {
    edge.state
        .store
        .write(move |c| edge_agent::store::insert_events_for_tests(c, &events))
        .await
        .unwrap();
    edge.state.notify_outbox();
}

/// An enrollment token for `site` from the hub whose CA is in `state_dir`, valid for an hour
/// (what `central-hub site token` prints).
pub async fn enrollment_token(admin: &sqlx::PgPool, state_dir: &Path, site: &str) -> String {
    let ca = central_hub::pki::Ca::load_or_create(state_dir).unwrap();
    central_hub::enroll::create_token(
        admin,
        &ca,
        &SiteId::new(site).unwrap(),
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap()
    .to_string()
}

/// The field installer's options for a box enrolling at `enroll_addr` with `token` into
/// `prefix`: its API on a free loopback port, the hub's QUIC address from enrollment, a 1 MiB
/// free-space floor, no clock offset, and the service started.
pub fn install_options(
    enroll_addr: String,
    token: String,
    prefix: &Path,
) -> edge_agent::install::InstallOptions {
    edge_agent::install::InstallOptions {
        hub: enroll_addr,
        token,
        prefix: prefix.to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        hub_quic: None,
        min_free_bytes: 1 << 20,
        clock_offset_micros: 0,
        start_service: true,
    }
}

/// The work order `id` as the running edge's store has it, if it has it.
pub async fn order_at(
    edge: &edge_agent::server::Running,
    id: &str,
) -> Option<edge_agent::records::WorkOrderView> {
    let id = id.to_owned();
    let read = move |c: &rusqlite::Connection| edge_agent::records::get(c, &id);
    edge.state.store.read(read).await.unwrap()
}

/// Whether the running edge has no repair pending (a restored store asks the hub for one on
/// its next connection).
pub async fn repaired(edge: &edge_agent::server::Running) -> bool {
    let pending = edge.state.store.meta("repair_pending").await.unwrap();
    pending.is_none()
}

/// Work order `id` of `site` for `quantity` BRACKET-7, released and on no work unit yet.
pub fn released(id: &str, site: &SiteId, quantity: u32) -> edge_agent::records::WorkOrderView {
    edge_agent::records::WorkOrderView {
        order: shared_model::work_order::WorkOrder::released(
            shared_model::WorkOrderId::new(id).unwrap(),
            site.clone(),
            shared_model::MaterialId::new("BRACKET-7").unwrap(),
            quantity,
        ),
        work_unit: None,
    }
}
