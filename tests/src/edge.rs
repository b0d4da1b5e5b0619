//! The edge side of the system tests: an edge agent's configuration on a fresh data
//! directory, with the master data the tests' events refer to already imported.

// Test support: a failed setup step should stop the test with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use edge_agent::config::RunConfig;
use shared_model::SiteId;

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
    }
}
