//! Fixtures for tests on a real store file: a temporary directory, a store with a little
//! master data, and events. Shared by the store's, the records' and the sync adapter's tests.

use std::path::PathBuf;
use std::sync::Arc;

use shared_model::event::ProductionCount;
use shared_model::{EquipmentId, Event, EventBody, EventId, SiteId, Timestamp};

use super::{EventsOutcome, Store, insert_events, open_write_connection};
use crate::metrics::Metrics;

pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "edge-store-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) const T0: Timestamp = Timestamp::from_millis(1_795_000_000_000);

pub(crate) fn site() -> SiteId {
    SiteId::new("SITE_001").unwrap()
}

/// The site, its press and one material.
const MASTER: &str = r#"{
  "equipment": [{"id": "SITE_001", "parent": null, "level": "site", "name": "Plant", "class": "site"},
                {"id": "PRESS-01", "parent": "SITE_001", "level": "work_unit", "name": "Press", "class": "press"}],
  "materials": [{"id": "BRACKET-7", "name": "Bracket", "unit": "pcs", "tracking": "lot"}]
}"#;

/// A store in a new temporary directory (named after `name`) with [`MASTER`] imported; the
/// directory goes when the returned [`TempDir`] is dropped.
pub(crate) fn open(name: &str) -> (TempDir, Store) {
    let dir = TempDir::new(name);
    let store = Store::open(&dir.0, site(), Arc::new(Metrics::default())).unwrap();
    let md: shared_model::master::MasterFile = serde_json::from_str(MASTER).unwrap();
    let mut conn = open_write_connection(store.path()).unwrap();
    super::master::import(&mut conn, &md.into_records()).unwrap();
    (dir, store)
}

pub(crate) fn event(n: u64, recorded_at: Timestamp) -> Event {
    Event {
        event_id: EventId::from_parts(1_795_000_000_000 + n, [n as u8; 10]),
        site_id: site(),
        occurred_at: recorded_at,
        recorded_at,
        operator: None,
        body: EventBody::ProductionCount(ProductionCount::good(
            EquipmentId::new("PRESS-01").unwrap(),
            1,
        )),
    }
}

pub(crate) async fn store_events(store: &Store, events: Vec<Event>) -> EventsOutcome {
    store
        .write(move |c| insert_events(c, &events, None, 0, |_| String::new()))
        .await
        .unwrap()
}

pub(crate) fn count_events(store: &Store) -> i64 {
    let c = rusqlite::Connection::open(store.path()).unwrap();
    c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap()
}
