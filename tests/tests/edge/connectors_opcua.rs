//! Machine data from a real OPC UA server: FreeOpcUa's `asyncua` (PyPI), run by
//! `tests/peers/opcua/server.py` on a free port. The edge subscribes (monitored items, no
//! polling), maps and stores; a killed and restarted server takes the link down and up again,
//! the machine's state is unknown meanwhile, and counting resumes exactly. An order started on
//! the press is written to the server's nodes in one Write call, which the server prints.

// Test support: a failed setup step should stop the test with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shared_model::event::MachineState;
use system_tests::connectors::{
    Peer, all_up, blocking, connector, connector_with_write, data_dir, free_port, run_config,
    start_order, stored, until_stored, wait_for, write_of,
};
use system_tests::edge::api_key;

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/opcua/server.py")
}

/// The asyncua server on `port` with these starting values, driven through its stdin.
fn start_peer(port: u16, counter: u32, state: i32, measure: f64) -> Peer {
    start_peer_with(port, counter, state, measure, &[])
}

fn start_peer_with(port: u16, counter: u32, state: i32, measure: f64, extra: &[&str]) -> Peer {
    let mut p = Peer::spawn(
        Command::new("python3")
            .arg(peer_script())
            .args([
                "--port",
                &port.to_string(),
                "--counter",
                &counter.to_string(),
                "--state",
                &state.to_string(),
                "--measure",
                &measure.to_string(),
            ])
            .args(extra)
            .stderr(Stdio::null()),
        "OPC UA peer (PyPI asyncua: `python3 -c \"import asyncua\"`)",
    );
    let first = p.line(Duration::from_secs(30));
    assert!(
        !first.starts_with("MISSING"),
        "the OPC UA peer needs PyPI's asyncua: `pip install asyncua` (.ci/run does): {first}"
    );
    assert!(first.starts_with("READY"), "peer: {first}");
    p
}

/// Sends a command and waits until the server carried it out.
fn send(peer: &mut Peer, cmd: &str) {
    peer.command(cmd, &format!("OK {cmd}"));
}

fn config_text(port: u16) -> String {
    format!(
        r#"
site = "SITE_001"

[[connector]]
name = "press-ua"
kind = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/mes/"

[[connector.tag]]
name = "press.good"
map = "counter"
equipment = "PRESS-01"
node = "ns=2;s=Press1.Good"
sampling_ms = 50
queue_size = 1000

[[connector.tag]]
name = "press.state"
map = "state"
equipment = "PRESS-01"
node = "ns=2;s=Press1.State"
states = {{ "1" = "running", "2" = "down" }}

[[connector.tag]]
name = "press.diameter"
map = "sample"
equipment = "PRESS-01"
node = "ns=2;s=Press1.Diameter"
characteristic = "DIA"
deadband = 0.005
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_changes_become_events_and_a_server_restart_resumes_counting_exactly() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let peer = blocking(move || start_peer(port, 1_000, 1, 10.0)).await;
    let dir = data_dir("connectors-opcua");
    let file = dir.join("edge.toml");
    std::fs::write(&file, config_text(port)).unwrap();
    let key = api_key(&dir, "integration");
    let edge = edge_agent::server::start(run_config(&dir, &file))
        .await
        .unwrap();
    let base = format!("http://{}", edge.http_addr);
    wait_for(Duration::from_secs(30), "the link up", async || {
        connector(&base, &key).await["link"] == "up"
    })
    .await;
    assert_eq!(connector(&base, &key).await["kind"], "opcua");
    // The first values: the counter's baseline, the state (running), one sample.
    let d = dir.clone();
    wait_for(Duration::from_secs(20), "the first values", async || {
        let s = stored(&d);
        s.states == [MachineState::Running] && s.samples.len() == 1
    })
    .await;

    // 25 increments are 25 good parts; a state change is one equipment_state; a change of
    // the diameter below the deadband is not reported, one above it is.
    let peer = blocking(move || {
        let mut peer = peer;
        send(&mut peer, "count 25");
        send(&mut peer, "state 2");
        send(&mut peer, "measure 10.001");
        send(&mut peer, "measure 10.02");
        peer
    })
    .await;
    wait_for(
        Duration::from_secs(20),
        "25 parts, down, a sample",
        async || {
            let s = stored(&d);
            s.good == 25 && s.states.len() == 2 && s.samples.len() == 2
        },
    )
    .await;
    let s = stored(&dir);
    assert_eq!(s.states, [MachineState::Running, MachineState::Down]);

    // The server dies: the link goes down and the press's state becomes unknown.
    blocking(move || peer.kill()).await;
    wait_for(Duration::from_secs(30), "the link down", async || {
        let c = connector(&base, &key).await;
        c["link"] == "down" || c["link"] == "connecting"
    })
    .await;
    wait_for(Duration::from_secs(10), "the state unknown", async || {
        stored(&d).states.last() == Some(&MachineState::Unknown)
    })
    .await;
    let c = connector(&base, &key).await;
    assert!(
        c["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{c}"
    );

    // Restarted with the values it held: the link comes back, the state is recorded again
    // (the first value after a lost link), and counting resumes exactly.
    let mut peer = blocking(move || start_peer(port, 1_025, 2, 10.02)).await;
    wait_for(Duration::from_secs(60), "the link up again", async || {
        connector(&base, &key).await["link"] == "up"
    })
    .await;
    let c = connector(&base, &key).await;
    assert!(c["reconnects"].as_u64().unwrap() >= 1, "{c}");
    wait_for(
        Duration::from_secs(20),
        "the state known again",
        async || stored(&d).states.last() == Some(&MachineState::Down),
    )
    .await;
    peer = blocking(move || {
        send(&mut peer, "count 10");
        send(&mut peer, "state 1");
        peer
    })
    .await;
    until_stored(&dir, Duration::from_secs(20), "35 parts and running", |s| {
        s.good == 35 && s.states.last() == Some(&MachineState::Running)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = stored(&dir);
    assert_eq!(s.good, 35, "nothing counted twice across the restart");
    assert_eq!(
        s.states,
        [
            MachineState::Running,
            MachineState::Down,
            MachineState::Unknown,
            MachineState::Down,
            MachineState::Running
        ]
    );
    let c = connector(&base, &key).await;
    assert_eq!(c["link"], "up", "{c}");
    edge.stop().await.unwrap();
    blocking(move || peer.kill()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An order started on PRESS-01 reaches the server: the id and the material as String, the
/// planned quantity as Int32 (the default `quantity_type`), each written as the server prints
/// it. A second connector writing to a node the server lacks records the failed write with
/// the node and the name of the status the server answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_an_order_started_is_written_to_the_server_nodes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let mut peer = blocking(move || start_peer(port, 0, 1, 10.0)).await;
    let dir = data_dir("connectors-opcua-write");
    let file = dir.join("edge.toml");
    let endpoint = format!("endpoint = \"opc.tcp://127.0.0.1:{port}/mes/\"");
    let connector_text = |name: &str, write: &str| {
        connector_with_write(
            name,
            "opcua",
            &endpoint,
            "node = \"ns=2;s=Press1.State\"",
            write,
        )
    };
    let text = format!(
        "site = \"SITE_001\"\n{}{}",
        connector_text(
            "press-ua",
            "order_id_node = \"ns=2;s=Press1.OrderId\"\nmaterial_node = \"ns=2;s=Press1.Material\"\nquantity_node = \"ns=2;s=Press1.PlannedQty\""
        ),
        connector_text(
            "press-ua-missing",
            "order_id_node = \"ns=2;s=Press1.NoSuchNode\""
        ),
    );
    std::fs::write(&file, text).unwrap();
    let key = api_key(&dir, "integration");
    let edge = edge_agent::server::start(run_config(&dir, &file))
        .await
        .unwrap();
    let base = format!("http://{}", edge.http_addr);
    wait_for(Duration::from_secs(30), "both links up", async || {
        all_up(&base, &key, 2).await
    })
    .await;

    let id = start_order(&base, &key, "PRESS-01", 250).await;
    // Four values written: three by press-ua, one refused for press-ua-missing (in either
    // order, so all are collected first).
    // The server is killed only once the edge has its answers: the server prints a value
    // before its Write response reaches the edge.
    let (lines, peer) = blocking(move || {
        let lines: Vec<String> = (0..4)
            .map(|_| peer.expect("WROTE ", Duration::from_secs(20)))
            .collect();
        (lines, peer)
    })
    .await;
    for want in [
        format!("WROTE Press1.OrderId String {id} Good"),
        "WROTE Press1.Material String BRACKET-7 Good".to_owned(),
        "WROTE Press1.PlannedQty Int32 250 Good".to_owned(),
    ] {
        assert!(lines.contains(&want), "{want:?} not in {lines:?}");
    }
    // The server refuses the node it lacks (asyncua answers BadUserAccessDenied to an
    // anonymous client before it looks the node up): the write's error is that status.
    let refused = format!("WROTE Press1.NoSuchNode String {id} ");
    let status = lines
        .iter()
        .find_map(|l| l.strip_prefix(&refused))
        .unwrap_or_else(|| panic!("{refused:?} not in {lines:?}"));
    assert!(status.starts_with("Bad"), "{status}");
    let w = write_of(&base, &key, "press-ua", &id, Duration::from_secs(20)).await;
    assert_eq!(w["ok"], true, "{w}");
    let w = write_of(
        &base,
        &key,
        "press-ua-missing",
        &id,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(w["ok"], false, "{w}");
    let error = w["error"].as_str().unwrap();
    assert!(
        error.contains("Press1.NoSuchNode") && error.contains(status),
        "{w}"
    );
    edge.stop().await.unwrap();
    blocking(move || peer.kill()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Basic256Sha256 with SignAndEncrypt and with Sign: the edge's certificate and key from the
/// config, the server's certificate trusted because the config lists it; the server (asyncua)
/// trusts the edge's certificate from its own trust list. A server certificate not listed is
/// refused and the link stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_basic256sha256_sign_and_encrypt_with_trusted_certificates() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = data_dir("connectors-opcua");
    let certs = dir.join("certs");
    let c = certs.clone();
    let out = blocking(move || {
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/opcua/certs.py"))
            .arg(&c)
            .arg("urn:mes-edge:press-ua")
            .output()
            .expect("running python3")
    })
    .await;
    assert!(
        out.status.success(),
        "making certificates needs PyPI's asyncua (`pip install asyncua`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let (cert, key, trusted) = (
        certs.join("server.der"),
        certs.join("server-key.pem"),
        certs.join("trusted"),
    );
    let mut peer = blocking(move || {
        start_peer_with(
            port,
            7,
            1,
            10.0,
            &[
                "--security",
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "--trusted",
                trusted.to_str().unwrap(),
            ],
        )
    })
    .await;
    let file = dir.join("edge.toml");
    let secured = |mode: &str, trust: &str| {
        config_text(port).replace(
            "kind = \"opcua\"\n",
            &format!(
                "kind = \"opcua\"\nsecurity_policy = \"Basic256Sha256\"\nsecurity_mode = \"{mode}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\ntrusted_server_certificates = [{trust}]\n",
                certs.join("client.der").display(),
                certs.join("client-key.pem").display(),
            ),
        )
    };
    let server_cert = format!("\"{}\"", certs.join("server.der").display());
    std::fs::write(&file, secured("SignAndEncrypt", &server_cert)).unwrap();
    let key = api_key(&dir, "integration");
    let edge = edge_agent::server::start(run_config(&dir, &file))
        .await
        .unwrap();
    let base = format!("http://{}", edge.http_addr);
    wait_for(Duration::from_secs(30), "the secured link up", async || {
        connector(&base, &key).await["link"] == "up"
    })
    .await;
    let d = dir.clone();
    wait_for(Duration::from_secs(20), "the first state", async || {
        stored(&d).states.len() == 1
    })
    .await;
    peer = blocking(move || {
        send(&mut peer, "count 5");
        peer
    })
    .await;
    wait_for(
        Duration::from_secs(20),
        "5 parts over SignAndEncrypt",
        async || stored(&d).good == 5,
    )
    .await;

    // Sign only: the same server, the connector restarted by a reload.
    std::fs::write(&file, secured("Sign", &server_cert)).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/connectors/reload"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(Duration::from_secs(30), "the signed link up", async || {
        connector(&base, &key).await["link"] == "up"
    })
    .await;
    peer = blocking(move || {
        send(&mut peer, "count 3");
        peer
    })
    .await;
    wait_for(Duration::from_secs(20), "8 parts", async || {
        stored(&d).good == 8
    })
    .await;

    // The server's certificate not trusted: no session.
    std::fs::write(&file, secured("SignAndEncrypt", "")).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/connectors/reload"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c = connector(&base, &key).await;
    assert_ne!(
        c["link"], "up",
        "an untrusted server certificate is refused: {c}"
    );
    assert!(
        c["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{c}"
    );
    edge.stop().await.unwrap();
    blocking(move || peer.kill()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
