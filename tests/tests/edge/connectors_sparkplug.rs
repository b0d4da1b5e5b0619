//! Sparkplug B through a real broker (Mosquitto on 127.0.0.1:1883, which `.ci/run` starts
//! where none answers) with an edge node that is not ours: Eclipse Tahu's npm client
//! (`tests/peers/sparkplug/edge-node.js`, installed by `npm ci` there). The edge agent is the
//! host application: births give it aliases, data by alias becomes events, a gap in `seq`
//! makes it ask the node for a rebirth, the node's death — its own NDEATH, or its will when it
//! is killed with SIGKILL — makes the machine's state unknown until it births again, and the
//! host's own STATE is retained on the broker. An order started on the press goes to the
//! device as a DCMD with the birth's aliases and types; to a dead node it fails as offline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use shared_model::event::MachineState;
use system_tests::connectors::{
    BROKER, Peer, broker_answers, connector, connectors, data_dir, get_json, run_config,
    start_order, stored, unique, until_stored, write_of,
};
use system_tests::edge::api_key;

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/sparkplug")
}

/// The Tahu packages are installed, or the test says how to install them (no silent skip).
fn peer_installed() {
    let dir = peer_dir();
    assert!(
        dir.join("node_modules/sparkplug-client/package.json")
            .exists(),
        "Eclipse Tahu's sparkplug-client is not installed in {}: run `npm ci` there (.ci/run does)",
        dir.display()
    );
}

/// The retained message on `topic`, read with Mosquitto's own client.
fn retained(topic: &str) -> Value {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .expect("running mosquitto_sub (Debian's mosquitto-clients)");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no retained JSON on {topic}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The Tahu edge node: commands in on stdin (JSON lines), what happened out on stdout.
/// Its counter starts at `good`.
fn start_node(group: &str, node: &str, device: &str, good: u32) -> Peer {
    Peer::spawn(
        Command::new("node")
            .arg(peer_dir().join("edge-node.js"))
            .args([
                &format!("mqtt://{BROKER}"),
                group,
                node,
                device,
                &good.to_string(),
            ])
            .current_dir(peer_dir()),
        "Tahu edge node (Node.js)",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_births_aliases_rebirth_on_a_gap_and_death_with_a_tahu_edge_node() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    broker_answers();
    peer_installed();
    let group = unique("mes-sp");
    let host_id = unique("mes-host");
    let dir = data_dir("connectors-sparkplug");
    let file = dir.join("edge.toml");
    std::fs::write(
        &file,
        format!(
            r#"
site = "SITE_001"

[[connector]]
name = "plant"
kind = "sparkplug"
url = "mqtt://{BROKER}"
client_id = "{host_id}"
group = "{group}"
host_id = "{host_id}"

[[connector.tag]]
name = "press.good"
map = "counter"
equipment = "PRESS-01"
node = "Line1"
device = "Press1"
metric = "Counters/Good"

[[connector.tag]]
name = "press.state"
map = "state"
equipment = "PRESS-01"
node = "Line1"
device = "Press1"
metric = "State"
states = {{ "1" = "running", "2" = "down" }}

[[connector.write]]
equipment = "PRESS-01"
node = "Line1"
device = "Press1"
order_id_metric = "Order/Id"
material_metric = "Order/Material"
quantity_metric = "Order/Quantity"
"#
        ),
    )
    .unwrap();
    let key = api_key(&dir, "integration");
    let edge = edge_agent::server::start(run_config(&dir, &file))
        .await
        .unwrap();
    let base = format!("http://{}", edge.http_addr);
    tokio::time::timeout(Duration::from_secs(20), async {
        while connectors(&base, &key).await["connectors"][0]["link"] != "up" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the connector's link is up within 20 s");

    // The host's STATE is retained online (Sparkplug 3.0 JSON).
    let state_topic = format!("spBv1.0/STATE/{host_id}");
    let t = state_topic.clone();
    let state = tokio::task::spawn_blocking(move || retained(&t))
        .await
        .unwrap();
    assert_eq!(state["online"], true, "{state}");
    assert!(
        state["timestamp"].as_i64().unwrap() > 1_700_000_000_000,
        "{state}"
    );

    // Births: the counter's value is its baseline, the state is recorded.
    let mut node = start_node(&group, "Line1", "Press1", 1000);
    node.expect("birth", Duration::from_secs(20));
    until_stored(&dir, Duration::from_secs(20), "the birth's state", |s| {
        s.states == [MachineState::Running]
    })
    .await;
    assert_eq!(stored(&dir).good, 0, "a birth's counter is the baseline");

    // Data by alias only: 1000 -> 1005 is five parts; state 2 is down.
    node.send_line(&serde_json::json!({"ddata": {"good": 1005}}).to_string());
    node.expect("sent ddata", Duration::from_secs(20));
    node.send_line(&serde_json::json!({"ddata": {"state": 2}}).to_string());
    node.expect("sent ddata", Duration::from_secs(20));
    until_stored(
        &dir,
        Duration::from_secs(20),
        "data resolved by alias",
        |s| s.good == 5 && s.states == [MachineState::Running, MachineState::Down],
    )
    .await;

    // A seq number lost: the edge asks the node for a rebirth (an NCMD the Tahu client
    // receives), and the node publishes its births again.
    node.send_line(&serde_json::json!({"gap": true}).to_string());
    node.expect("gap", Duration::from_secs(20));
    node.send_line(&serde_json::json!({"ddata": {"good": 1010}}).to_string());
    let ncmd = node.expect("ncmd", Duration::from_secs(20));
    assert!(ncmd.contains("Node Control/Rebirth=true"), "{ncmd}");
    node.expect("birth", Duration::from_secs(20));
    until_stored(
        &dir,
        Duration::from_secs(20),
        "the gap's data counted",
        |s| s.good == 10,
    )
    .await;
    // After the rebirth data is in sequence again and resolves with the new aliases.
    node.send_line(&serde_json::json!({"ddata": {"good": 1012}}).to_string());
    node.expect("sent ddata", Duration::from_secs(20));
    until_stored(
        &dir,
        Duration::from_secs(20),
        "data after the rebirth",
        |s| s.good == 12,
    )
    .await;

    // An order started on the press: one DCMD to the device, each metric by the alias its
    // DBIRTH gave and with the type it declared (the quantity an Int32).
    let id = start_order(&base, &key, "PRESS-01", 250).await;
    let dcmd = node.expect("dcmd", Duration::from_secs(20));
    assert_eq!(
        dcmd,
        format!(
            "dcmd Press1 #20:Order/Id:String={id} #21:Order/Material:String=BRACKET-7 #22:Order/Quantity:Int32=250"
        )
    );
    let w = write_of(&base, &key, "plant", &id, Duration::from_secs(20)).await;
    assert_eq!(w["ok"], true, "{w}");

    // The node's death (its bdSeq matches the birth's): the press's state is unknown.
    node.send_line(&serde_json::json!({"death": true}).to_string());
    node.expect("death", Duration::from_secs(20));
    until_stored(
        &dir,
        Duration::from_secs(20),
        "the death's unknown state",
        |s| s.states.last() == Some(&MachineState::Unknown),
    )
    .await;
    assert_eq!(stored(&dir).good, 12, "nothing counted twice");
    // A dead node gets no command: the write fails, saying so.
    let id = start_order(&base, &key, "PRESS-01", 10).await;
    let w = write_of(&base, &key, "plant", &id, Duration::from_secs(20)).await;
    assert_eq!(w["ok"], false, "{w}");
    assert!(
        w["error"].as_str().is_some_and(|e| e.contains("offline")),
        "{w}"
    );

    let c = &connectors(&base, &key).await["connectors"][0];
    assert_eq!(c["kind"], "sparkplug", "{c}");
    assert_eq!(c["link"], "up", "{c}");
    assert_eq!(c["rejected"], 0, "{c}");
    assert_eq!(c["last_error"], "edge node Line1 is offline", "{c}");
    drop(node);

    // The node back, then killed with SIGKILL: no NDEATH of its own, the broker sends its
    // will (an NDEATH with the birth's bdSeq) and the press is unknown again.
    use MachineState::{Down, Running, Unknown};
    let mut node = start_node(&group, "Line1", "Press1", 1012);
    node.expect("birth", Duration::from_secs(20));
    until_stored(
        &dir,
        Duration::from_secs(20),
        "the new birth's state",
        |s| s.states == [Running, Down, Unknown, Running],
    )
    .await;
    let before = connector(&base, &key).await;
    node.kill();
    until_stored(
        &dir,
        Duration::from_secs(20),
        "the will's unknown state",
        |s| s.states == [Running, Down, Unknown, Running, Unknown],
    )
    .await;
    let c = connector(&base, &key).await;
    assert_eq!(c["last_error"], "edge node Line1 is offline", "{c}");
    assert_ne!(
        c["last_error_at"], before["last_error_at"],
        "a new death: {c}"
    );
    assert_eq!(c["link"], "up", "the broker link is not the node's: {c}");
    let unit = format!("{base}/api/v1/terminal?work_unit=PRESS-01");
    let t = get_json(unit.clone(), &key).await;
    assert_eq!(t["equipment_state"]["state"], "unknown", "{t}");

    // Restarted, the node births again (its counter went on meanwhile) and the state is back.
    let mut node = start_node(&group, "Line1", "Press1", 1015);
    node.expect("birth", Duration::from_secs(20));
    until_stored(&dir, Duration::from_secs(20), "the state back", |s| {
        s.states == [Running, Down, Unknown, Running, Unknown, Running] && s.good == 15
    })
    .await;
    let t = get_json(unit, &key).await;
    assert_eq!(t["equipment_state"]["state"], "running", "{t}");
    drop(node);

    // Stopping the edge says so: the retained STATE is offline.
    edge.stop().await.unwrap();
    let t = state_topic.clone();
    let state = tokio::task::spawn_blocking(move || retained(&t))
        .await
        .unwrap();
    assert_eq!(state["online"], false, "{state}");
    // Leave the broker as it was: clear the retained message.
    let _ = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-t",
            &state_topic,
            "-r",
            "-n",
        ])
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}
