//! Machine data through a real MQTT broker (Debian's Mosquitto on 127.0.0.1:1883, which
//! `.ci/run` starts where none answers), published by Mosquitto's own `mosquitto_pub`: the edge
//! agent subscribes, maps and stores, and acknowledges only what it committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::connectors::{
    BROKER, EdgeProcess, block_on, broker_answers, connectors, data_dir, get_json, publish, reload,
    run_config, start_order, stored, unique, until, until_stored,
};
use system_tests::edge::api_key;

/// How long a value may take from the broker to the edge's store.
const LIMIT: Duration = Duration::from_secs(20);

fn config_text(prefix: &str, extra_tag: &str) -> String {
    format!(
        r#"
site = "SITE_001"

[[connector]]
name = "line1"
kind = "mqtt"
url = "mqtt://{BROKER}"
client_id = "{prefix}"

[[connector.tag]]
name = "press.good"
map = "counter"
equipment = "PRESS-01"
topic = "{prefix}/press"
path = "good"
modulus = 65536

[[connector.tag]]
name = "press.state"
map = "state"
equipment = "PRESS-01"
topic = "{prefix}/press"
path = "state"
states = {{ "1" = "running", "2" = "down" }}

[[connector.tag]]
name = "press.diameter"
map = "sample"
equipment = "PRESS-01"
topic = "{prefix}/sample"
path = "v"
timestamp_path = "ts"
characteristic = "DIA"

[[connector.write]]
equipment = "PRESS-01"
topic = "{prefix}/orders"
{extra_tag}
"#
    )
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`publish`] off the async runtime.
async fn publish_from_task(topic: String, lines: Vec<String>) {
    tokio::task::spawn_blocking(move || publish(&topic, &lines))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_values_become_events_and_a_bad_reload_keeps_the_running_connectors() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    broker_answers();
    let prefix = unique("mes-edge-test");
    let dir = data_dir("connectors-mqtt");
    let file = dir.join("edge.toml");
    std::fs::write(&file, config_text(&prefix, "")).unwrap();
    let key = api_key(&dir, "integration");
    let edge = edge_agent::server::start(run_config(&dir, &file))
        .await
        .unwrap();
    let base = format!("http://{}", edge.http_addr);
    let c = connectors(&base, &key).await;
    assert_eq!(c["connectors"][0]["name"], "line1");
    tokio::time::timeout(Duration::from_secs(20), async {
        while connectors(&base, &key).await["connectors"][0]["link"] != "up" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the connector's link is up within 20 s");

    // A counter from 65,000 over the 16-bit rollover to 464 is 1,000 parts (the first reading
    // is the baseline); the state changes twice; three samples with their own timestamps.
    let mut lines: Vec<String> = (0..=10)
        .map(|i| {
            format!(
                r#"{{"good": {}, "state": {}}}"#,
                (65_000 + i * 100) % 65_536,
                if i < 6 { 1 } else { 2 }
            )
        })
        .collect();
    lines.push("not json at all".into());
    publish_from_task(format!("{prefix}/press"), lines).await;
    publish_from_task(
        format!("{prefix}/sample"),
        (0..3)
            .map(|i| format!(r#"{{"v": 10.0{i}, "ts": "2026-11-02T08:00:0{i}Z"}}"#))
            .collect(),
    )
    .await;
    until_stored(&dir, LIMIT, "all values stored", |s| {
        (s.good, s.states.len(), s.samples.len()) == (1_000, 2, 3)
    })
    .await;
    let c = &connectors(&base, &key).await["connectors"][0];
    assert_eq!(c["link"], "up");
    assert_eq!(c["messages"], 15, "{c}");
    assert_eq!(c["events"], 10 + 2 + 3, "{c}");
    assert_eq!(c["equipment"], serde_json::json!(["PRESS-01"]), "{c}");
    assert_eq!(
        c["dropped"], 1,
        "the message that is not JSON matched no field: {c}"
    );
    let metrics = system_tests::connectors::get_text(&format!("{base}/metrics"), &key).await;
    assert!(
        metrics.contains("edge_connector_up{connector=\"line1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edge_connector_events_total{connector=\"line1\"} 15"),
        "{metrics}"
    );

    // Down to the machine: starting an order on PRESS-01 publishes its id, material and
    // quantity on the write topic (read back with Mosquitto's own client).
    let orders_topic = format!("{prefix}/orders");
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "20",
            "-t",
            &orders_topic,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = start_order(&base, &key, "PRESS-01", 250).await;
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap())
        .await
        .unwrap();
    let written: Value = serde_json::from_slice(&out.stdout).expect("the order message");
    assert_eq!(written["order_id"], id.as_str());
    assert_eq!(written["material"], "BRACKET-7");
    assert_eq!(written["planned_quantity"], 250);
    let c = &connectors(&base, &key).await["connectors"][0];
    assert_eq!(c["writes"][0]["work_order"], id.as_str(), "{c}");
    assert_eq!(c["writes"][0]["ok"], true, "{c}");
    // Counts from now on go to the running order.
    publish_from_task(
        format!("{prefix}/press"),
        vec![r#"{"good": 500, "state": 1}"#.to_owned()],
    )
    .await;
    until_stored(&dir, LIMIT, "the count of the running order", |s| {
        s.good == 1_036
    })
    .await;
    let o = get_json(format!("{base}/api/v1/terminal?work_unit=PRESS-01"), &key).await;
    assert_eq!(o["active"]["good"], 36, "{o}");
    assert_eq!(o["machine_links"][0]["link"], "up", "{o}");

    // A bad file is refused with its line; the running connector keeps counting.
    let bad = config_text(
        &prefix,
        "[[connector.tag]]\nname = \"bad\"\nmap = \"counter\"\nequipment = \"NO-SUCH\"\ntopic = \"x\"\n",
    );
    let bad_line = bad.lines().position(|l| l == "name = \"bad\"").unwrap(); // 0-based: the table's header
    std::fs::write(&file, &bad).unwrap();
    let (status, body) = reload(&base, &key).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "invalid_config", "{body}");
    assert_eq!(body["error"]["details"][0]["line"], bad_line, "{body}");
    assert!(
        body["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("NO-SUCH"),
        "{body}"
    );
    publish_from_task(
        format!("{prefix}/press"),
        vec![r#"{"good": 600, "state": 2}"#.to_owned()],
    )
    .await;
    until_stored(&dir, LIMIT, "the count after the refused reload", |s| {
        s.good == 1_136
    })
    .await;

    // A good file replaces the set: the connector's tags changed, so it restarts.
    std::fs::write(&file, config_text(&prefix, "")).unwrap();
    let (status, r) = reload(&base, &key).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["reloaded"]["unchanged"][0], "line1", "{r}");
    edge.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The issue's check: QoS 1 with the edge killed (SIGKILL) at random moments between receive
/// and commit and between commit and acknowledgement: the broker redelivers, and each message
/// is stored exactly once.
#[test]
fn qos1_with_the_edge_killed_stores_each_message_once() {
    broker_answers();
    let prefix = unique("mes-edge-kill");
    let dir = data_dir("connectors-kill");
    let file = dir.join("edge.toml");
    // A counter without timestamps beside the samples: an old counter value used again would
    // read as a reset or a rollover, so only recognising the redelivery keeps it exact.
    let counter = format!(
        "[[connector.tag]]\nname = \"line.count\"\nmap = \"counter\"\nequipment = \"PRESS-01\"\ntopic = \"{prefix}/sample\"\npath = \"n\"\nmodulus = 65536\n"
    );
    std::fs::write(&file, config_text(&prefix, &counter)).unwrap();
    let start = || EdgeProcess::start(&dir, &file);
    // The first start makes the broker's persistent session; from then on it keeps messages
    // for the client id while the edge is down.
    let mut edge = start();
    std::thread::sleep(Duration::from_secs(2));
    const N: usize = 600;
    let samples: Vec<String> = (0..N)
        .map(|i| {
            format!(
                r#"{{"v": {}.5, "ts": {}, "n": {}}}"#,
                i % 7,
                1_793_000_000_000u64 + i as u64,
                i + 1
            )
        })
        .collect();
    let topic = format!("{prefix}/sample");
    let publisher = std::thread::spawn(move || {
        for chunk in samples.chunks(50) {
            publish(&topic, chunk);
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    let mut rng = system_tests::rng::Rng::new(0x9051_4b11);
    let mut kills = 0;
    while !publisher.is_finished() || kills < 3 {
        std::thread::sleep(Duration::from_millis(rng.between(50, 450)));
        edge.kill9();
        kills += 1;
        edge = start();
        if kills > 20 {
            break;
        }
    }
    publisher.join().unwrap();
    let d = dir.clone();
    wait_until(Duration::from_secs(60), "every sample stored", || {
        let s = stored(&d);
        s.samples.len() >= N && s.good >= N as u64 - 1
    });
    std::thread::sleep(Duration::from_secs(2));
    let s = stored(&dir);
    let (good, samples) = (s.good, s.samples.len());
    assert_eq!(samples, N, "each sample once, after {kills} kills");
    // The first value is the counter's baseline.
    assert_eq!(good, N as u64 - 1, "the counter exact, after {kills} kills");
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second connector, appended to [`config_text`]'s file: a scrap counter of its own topic.
fn second_connector(prefix: &str) -> String {
    format!(
        "[[connector]]\nname = \"line2\"\nkind = \"mqtt\"\nurl = \"mqtt://{BROKER}\"\nclient_id = \"{prefix}-2\"\n\n[[connector.tag]]\nname = \"press.scrap\"\nmap = \"counter\"\ncounts = \"scrap\"\nequipment = \"PRESS-01\"\ntopic = \"{prefix}/scrap\"\npath = \"n\"\nmodulus = 65536\n"
    )
}

/// The issue's reload on SIGHUP, with the edge agent as a process (`run --config FILE`): a
/// file with a new connector and `kill -HUP` make it run and count; a bad file and `kill -HUP`
/// are refused in the log with the line, and both running connectors keep counting.
#[test]
fn sighup_starts_a_new_connector_and_refuses_a_bad_file() {
    broker_answers();
    let prefix = unique("mes-edge-hup");
    let dir = data_dir("connectors-hup");
    let file = dir.join("edge.toml");
    std::fs::write(&file, config_text(&prefix, "")).unwrap();
    let key = api_key(&dir, "integration");
    let edge = EdgeProcess::start(&dir, &file);
    let links = |n: usize| {
        let (base, key) = (edge.base.clone(), key.clone());
        block_on(until(
            LIMIT,
            &format!("{n} connectors up"),
            async || connectors(&base, &key).await["connectors"].clone(),
            move |c| {
                c.as_array()
                    .is_some_and(|c| c.len() == n && c.iter().all(|c| c["link"] == "up"))
            },
        ))
    };
    links(1);
    let press = format!("{prefix}/press");
    let scrap = format!("{prefix}/scrap");
    // 100 is the baseline: 30 parts.
    publish(
        &press,
        &[r#"{"good": 100}"#.into(), r#"{"good": 130}"#.into()],
    );
    block_on(until_stored(&dir, LIMIT, "line1's count", |s| s.good == 30));

    // The new connector runs after SIGHUP; its first reading is its baseline.
    std::fs::write(&file, config_text(&prefix, &second_connector(&prefix))).unwrap();
    edge.proc.signal("HUP");
    let c = links(2);
    assert_eq!(c[1]["name"], "line2", "{c:?}");
    publish(&scrap, &[r#"{"n": 5}"#.into(), r#"{"n": 12}"#.into()]);
    block_on(until_stored(&dir, LIMIT, "line2's scrap", |s| {
        (s.good, s.scrap) == (30, 7)
    }));

    // A bad file: refused with its line in the log; both connectors go on.
    let bad = config_text(
        &prefix,
        &format!(
            "{}\n[[connector.tag]]\nname = \"bad\"\nmap = \"counter\"\nequipment = \"NO-SUCH\"\ntopic = \"x\"\n",
            second_connector(&prefix)
        ),
    );
    // 0-based index of the name: the 1-based line of the table's header.
    let bad_line = bad.lines().position(|l| l == "name = \"bad\"").unwrap();
    std::fs::write(&file, &bad).unwrap();
    edge.proc.signal("HUP");
    let log = dir.join("edge.log");
    wait_until(LIMIT, "the refused reload in the log", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("connector reload refused")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let refused = text
        .lines()
        .find(|l| l.contains("connector reload refused"))
        .unwrap();
    assert!(
        refused.contains(&format!("line {bad_line}: ")) && refused.contains("NO-SUCH"),
        "{refused}"
    );
    publish(&press, &[r#"{"good": 150}"#.into()]);
    publish(&scrap, &[r#"{"n": 15}"#.into()]);
    block_on(until_stored(&dir, LIMIT, "both still counting", |s| {
        (s.good, s.scrap) == (50, 10)
    }));
    let c = links(2);
    assert_eq!(c[0]["name"], "line1", "{c:?}");
    assert_eq!(c[1]["name"], "line2", "{c:?}");
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
}
