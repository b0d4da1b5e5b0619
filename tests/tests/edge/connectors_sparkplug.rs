//! Sparkplug B through a real broker (Mosquitto on 127.0.0.1:1883, which `.ci/run` starts
//! where none answers) with an edge node that is not ours: Eclipse Tahu's npm client
//! (`tests/peers/sparkplug/edge-node.js`, installed by `npm ci` there). The edge agent is the
//! host application: births give it aliases, data by alias becomes events, a gap in `seq`
//! makes it ask the node for a rebirth, the node's death makes the machine's state unknown,
//! and its own STATE is retained on the broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use edge_agent::config::RunConfig;
use serde_json::Value;
use shared_model::event::MachineState;
use shared_model::{EventBody, SiteId};
use system_tests::edge::{MASTER, api_key};

const BROKER: &str = "127.0.0.1:1883";

fn broker_answers() {
    assert!(
        std::net::TcpStream::connect_timeout(&BROKER.parse().unwrap(), Duration::from_secs(2))
            .is_ok(),
        "no MQTT broker on {BROKER}: start Mosquitto (`mosquitto -d -c /etc/mosquitto/mosquitto.conf`; .ci/run does)"
    );
}

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

/// Names no other test run shares on the shared broker.
fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    )
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let md: edge_agent::master::MasterFile = serde_json::from_str(MASTER).unwrap();
    let mut conn =
        edge_agent::store::open_write_connection(&dir.join(edge_agent::store::DB_FILE)).unwrap();
    edge_agent::master::import(&mut conn, &md.into_records()).unwrap();
    dir
}

/// (good parts, the equipment states in order) stored in the edge's SQLite file.
fn stored(dir: &Path) -> (u64, Vec<MachineState>) {
    let c = rusqlite::Connection::open_with_flags(
        dir.join(edge_agent::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = c
        .prepare("SELECT body FROM events ORDER BY occurred_at, recorded_at")
        .unwrap();
    let (mut good, mut states) = (0, Vec::new());
    for body in stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(Result::unwrap)
    {
        match edge_agent::store::decode_event(&body).unwrap().body {
            EventBody::ProductionCount(p) => good += u64::from(p.good),
            EventBody::EquipmentState(s) => states.push(s.state),
            _ => {}
        }
    }
    (good, states)
}

async fn wait_stored(dir: &Path, what: &str, f: impl Fn(&(u64, Vec<MachineState>)) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stored(dir);
        if f(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 20 s: stored {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connectors(base: &str, key: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/connectors"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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

/// The Tahu edge node: commands in on stdin, what happened out on stdout, line by line.
struct Node {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Node {
    fn start(group: &str, node: &str, device: &str) -> Self {
        let mut child = Command::new("node")
            .arg(peer_dir().join("edge-node.js"))
            .args([&format!("mqtt://{BROKER}"), group, node, device])
            .current_dir(peer_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running node (Node.js) for the Tahu edge node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for a line that starts with `prefix`; returns it.
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("the edge node said no \"{prefix}…\" within 20 s: {e}"),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
"#
        ),
    )
    .unwrap();
    let key = api_key(&dir, "integration");
    let edge = edge_agent::server::start(RunConfig {
        site: SiteId::new("SITE_001").unwrap(),
        data_dir: dir.clone(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        hub: None,
        retention_days: 30,
        tls_dir: dir.join("tls"),
        config_file: Some(file.clone()),
    })
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
    let mut node = Node::start(&group, "Line1", "Press1");
    node.expect("birth");
    wait_stored(&dir, "the birth's state", |s| {
        s.1 == [MachineState::Running]
    })
    .await;
    assert_eq!(stored(&dir).0, 0, "a birth's counter is the baseline");

    // Data by alias only: 1000 -> 1005 is five parts; state 2 is down.
    node.send(serde_json::json!({"ddata": {"good": 1005}}));
    node.expect("sent ddata");
    node.send(serde_json::json!({"ddata": {"state": 2}}));
    node.expect("sent ddata");
    wait_stored(&dir, "data resolved by alias", |s| {
        s.0 == 5 && s.1 == [MachineState::Running, MachineState::Down]
    })
    .await;

    // A seq number lost: the edge asks the node for a rebirth (an NCMD the Tahu client
    // receives), and the node publishes its births again.
    node.send(serde_json::json!({"gap": true}));
    node.expect("gap");
    node.send(serde_json::json!({"ddata": {"good": 1010}}));
    let ncmd = node.expect("ncmd");
    assert!(ncmd.contains("Node Control/Rebirth=true"), "{ncmd}");
    node.expect("birth");
    wait_stored(&dir, "the gap's data counted", |s| s.0 == 10).await;
    // After the rebirth data is in sequence again and resolves with the new aliases.
    node.send(serde_json::json!({"ddata": {"good": 1012}}));
    node.expect("sent ddata");
    wait_stored(&dir, "data after the rebirth", |s| s.0 == 12).await;

    // The node's death (its bdSeq matches the birth's): the press's state is unknown.
    node.send(serde_json::json!({"death": true}));
    node.expect("death");
    wait_stored(&dir, "the death's unknown state", |s| {
        s.1.last() == Some(&MachineState::Unknown)
    })
    .await;
    assert_eq!(stored(&dir).0, 12, "nothing counted twice");

    let c = &connectors(&base, &key).await["connectors"][0];
    assert_eq!(c["kind"], "sparkplug", "{c}");
    assert_eq!(c["link"], "up", "{c}");
    assert_eq!(c["rejected"], 0, "{c}");
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
