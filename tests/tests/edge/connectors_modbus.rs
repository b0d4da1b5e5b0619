//! Machine data through Modbus TCP from a real server: pymodbus's (PyPI `pymodbus`, which
//! `.ci/run` installs where missing), started by `tests/peers/modbus/server.py` on a free port
//! and driven through its stdin. The edge polls it, maps and stores; an order started on the
//! press is written to its holding registers (function 16), read back through the server's
//! own datastore.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shared_model::event::MachineState;
use system_tests::connectors::{
    Peer, all_up, connector, connector_with_write, connectors, data_dir, free_port, run_config,
    start_order, stored, until, write_of,
};
use system_tests::edge::api_key;

/// The pymodbus server on `port`, killed when dropped.
fn start_peer(port: u16) -> Peer {
    let ok = Command::new("python3")
        .args(["-c", "import pymodbus"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import pymodbus: `pip install pymodbus` (.ci/run does where it is missing)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/modbus/server.py");
    let mut peer = Peer::spawn(
        Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            // pymodbus warns about its deprecated datastore on stderr; the test's output
            // keeps it.
            .stderr(Stdio::inherit()),
        "Modbus peer",
    );
    assert_eq!(
        peer.line(Duration::from_secs(30)).trim(),
        format!("listening {port}"),
        "the peer's first line"
    );
    peer
}

fn config_text(port: u16) -> String {
    format!(
        r#"
site = "SITE_001"

[[connector]]
name = "plc1"
kind = "modbus"
address = "127.0.0.1:{port}"
unit_id = 1
poll_ms = 50

[[connector.tag]]
name = "press.good"
map = "counter"
equipment = "PRESS-01"
register = "holding:0"
modulus = 65536

[[connector.tag]]
name = "press.state"
map = "state"
equipment = "PRESS-01"
register = "holding:1"
states = {{ "1" = "running", "2" = "down" }}

[[connector.tag]]
name = "press.scrap"
map = "counter"
counts = "scrap"
equipment = "PRESS-01"
register = "holding:2"
data_type = "u32"
word_order = "little"

[[connector.tag]]
name = "press.diameter"
map = "sample"
equipment = "PRESS-01"
register = "input:10"
data_type = "f32"
characteristic = "DIA"

[[connector.tag]]
name = "press.unmapped"
map = "sample"
equipment = "PRESS-01"
register = "input:5000"
characteristic = "DIA"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_counters_stay_exact_across_rollover_and_a_server_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let peer = start_peer(port);
    let peer = std::sync::Arc::new(std::sync::Mutex::new(peer));
    // Commands block until the peer answers (a count takes its time): off the runtime.
    let cmd = |c: &str| {
        let peer = peer.clone();
        let c = c.to_owned();
        async move {
            tokio::task::spawn_blocking(move || peer.lock().unwrap().command(&c, "ok"))
                .await
                .unwrap()
        }
    };
    // A 16-bit counter 100 below its rollover, running, a 32-bit scrap counter whose low word
    // comes first, a diameter of 10.1 (f32 0x4121999A).
    cmd("set holding 0 65500 1 65534 0").await;
    cmd("set input 10 16673 39322").await;

    let dir = data_dir("connectors-modbus");
    let file = dir.join("edge.toml");
    std::fs::write(&file, config_text(port)).unwrap();
    let key = api_key(&dir, "integration");
    let edge = edge_agent::server::start(run_config(&dir, &file))
        .await
        .unwrap();
    let base = format!("http://{}", edge.http_addr);
    let s = 20;
    let limit = Duration::from_secs(s);
    until(
        limit,
        "the link up",
        async || connector(&base, &key).await,
        |c| c["link"] == "up",
    )
    .await;
    // The first poll is the counters' baseline: nothing counted, the state recorded.
    let d = dir.clone();
    until(
        limit,
        "the first poll stored",
        async || stored(&d),
        |s| s.states == [MachineState::Running] && s.samples == [10.1],
    )
    .await;
    assert_eq!(stored(&dir).good, 0);

    // 100 parts, one every 5 ms, across 65535 → 0 while the edge polls every 50 ms.
    cmd("count 0 100 5").await;
    // 0x0000FFFE → 0x00010005: 7 scrap across the low word's carry.
    cmd("set holding 2 5 1").await;
    cmd("set holding 1 2").await;
    let got = until(
        limit,
        "the counts and the new state",
        async || stored(&d),
        |s| s.good >= 100 && s.scrap >= 7 && s.states.len() >= 2,
    )
    .await;
    assert_eq!(
        (got.good, got.scrap, got.states.as_slice()),
        (100, 7, &[MachineState::Running, MachineState::Down][..])
    );
    let c = connector(&base, &key).await;
    assert_eq!(c["rejected"], 0, "{c}");
    assert_eq!(c["reconnects"], 0, "{c}");
    // An address the server does not map is its exception answer, every poll: the link stays
    // up, the tag gives nothing and the error says where.
    assert!(c["dropped"].as_u64().unwrap() >= 1, "{c}");
    assert!(
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("input:5000..5000")),
        "{c}"
    );
    assert_eq!(
        got.samples,
        [10.1],
        "an unchanged sample is not sampled again"
    );

    // The server goes away: the link is down and the press's state unknown.
    cmd("stop").await;
    let c = until(
        limit,
        "the link down",
        async || connector(&base, &key).await,
        |c| c["link"] == "down",
    )
    .await;
    assert!(c["last_error"].as_str().is_some(), "{c}");
    let got = until(
        limit,
        "the unknown state",
        async || stored(&d),
        |s| s.states.last() == Some(&MachineState::Unknown),
    )
    .await;
    assert_eq!(
        got.states,
        [
            MachineState::Running,
            MachineState::Down,
            MachineState::Unknown
        ]
    );
    // The PLC counts on while the edge cannot read it (50 parts), then comes back with what
    // it counted.
    cmd("count 0 50 1").await;
    cmd("start").await;
    let c = until(
        Duration::from_secs(45),
        "the link up again",
        async || connector(&base, &key).await,
        |c| c["link"] == "up",
    )
    .await;
    assert!(c["reconnects"].as_u64().unwrap() >= 1, "{c}");
    let got = until(
        limit,
        "the count after the restart",
        async || stored(&d),
        |s| s.good >= 150 && s.states.len() >= 4,
    )
    .await;
    assert_eq!(got.good, 150, "{got:?}");
    // The state read after the link returned is recorded though it did not change.
    assert_eq!(got.states[3], MachineState::Down, "{got:?}");
    cmd("count 0 30 5").await;
    let got = until(limit, "counting on", async || stored(&d), |s| s.good >= 180).await;
    assert_eq!((got.good, got.scrap), (180, 7), "{got:?}");
    let c = connector(&base, &key).await;
    assert_eq!(c["rejected"], 0, "{c}");

    edge.stop().await.unwrap();
    // The peer is killed when dropped.
    let _ = std::fs::remove_dir_all(&dir);
}

/// An order started on PRESS-01 reaches the PLC: its id and material as ASCII (two characters
/// a register, high byte first, zero-padded), its quantity as a u32 whose low word comes
/// first, all in one request since the registers are adjacent. A second connector writing to
/// an address the server does not map gets its exception answer as a failed write; with the
/// server gone, a write fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_an_order_started_is_written_to_holding_registers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let peer = std::sync::Arc::new(std::sync::Mutex::new(start_peer(port)));
    // Commands answer with one line: the caller reads it.
    let ask = |c: &str| {
        let peer = peer.clone();
        let c = c.to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut p = peer.lock().unwrap();
                p.send_line(&c);
                p.line(Duration::from_secs(20))
            })
            .await
            .unwrap()
        }
    };
    let dir = data_dir("connectors-modbus-write");
    let file = dir.join("edge.toml");
    // Two connectors of the same PLC, each with a state tag (so its link shows) and a write.
    let address = format!("address = \"127.0.0.1:{port}\"\npoll_ms = 50");
    let connector_text = |name: &str, write: &str| {
        connector_with_write(name, "modbus", &address, "register = \"holding:1\"", write)
    };
    let text = format!(
        "site = \"SITE_001\"\n{}{}",
        connector_text(
            "plc1",
            r#"order_id_register = "holding:100"
order_id_len = 16
material_register = "holding:116"
material_len = 8
quantity_register = "holding:124"
quantity_type = "u32"
word_order = "little""#,
        ),
        connector_text(
            "plc-unmapped",
            "quantity_register = \"holding:5000\"\nquantity_type = \"u32\"",
        ),
    );
    std::fs::write(&file, text).unwrap();
    let key = api_key(&dir, "integration");
    let edge = edge_agent::server::start(run_config(&dir, &file))
        .await
        .unwrap();
    let base = format!("http://{}", edge.http_addr);
    let limit = Duration::from_secs(20);
    until(
        limit,
        "both links up",
        async || all_up(&base, &key, 2).await,
        |up| *up,
    )
    .await;

    let id = start_order(&base, &key, "PRESS-01", 70_000).await;
    let w = write_of(&base, &key, "plc1", &id, limit).await;
    assert_eq!(w["ok"], true, "{w}");
    assert_eq!(w["equipment"], "PRESS-01", "{w}");
    assert_eq!(ask("text 100 16").await, format!("text {id}"));
    assert_eq!(ask("text 116 8").await, "text BRACKET-7");
    // 70,000 = 0x0001_1170: the low word first.
    assert_eq!(ask("get 124 2").await, "values 4464 1");
    // The register after the id's 16 is the material's: the padding stayed inside.
    assert_eq!(ask("get 115 1").await, "values 0");

    // The exception answer of an address the server does not map is the write's error; the
    // link stays up.
    let w = write_of(&base, &key, "plc-unmapped", &id, limit).await;
    assert_eq!(w["ok"], false, "{w}");
    let error = w["error"].as_str().unwrap();
    assert!(
        error.contains("holding:5000") && error.to_lowercase().contains("illegal data address"),
        "{w}"
    );
    let c = connectors(&base, &key).await;
    assert!(
        c["connectors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["link"] == "up"),
        "{c}"
    );

    // The server gone: an order started now fails at once, and says why.
    assert_eq!(ask("stop").await, "ok");
    until(
        limit,
        "the link down",
        async || connector(&base, &key).await,
        |c| c["link"] == "down" || c["link"] == "connecting",
    )
    .await;
    let id2 = start_order(&base, &key, "PRESS-01", 10).await;
    let w = write_of(&base, &key, "plc1", &id2, Duration::from_secs(3)).await;
    assert_eq!(w["ok"], false, "{w}");
    assert!(
        w["error"].as_str().is_some_and(|e| e.contains("down")),
        "{w}"
    );
    // The terminal has it for the station's banner.
    let t = system_tests::connectors::get_json(
        format!("{base}/api/v1/terminal?work_unit=PRESS-01"),
        &key,
    )
    .await;
    let link = t["machine_links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["connector"] == "plc1")
        .unwrap_or_else(|| panic!("{t}"));
    assert_eq!(link["last_write"]["work_order"], id2.as_str(), "{t}");
    assert_eq!(link["last_write"]["ok"], false, "{t}");

    edge.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
