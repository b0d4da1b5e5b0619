//! The issue's counter exactness check: a 16-bit PLC counter makes 1,000,000 parts in random
//! steps (each below the tag's `max_step`), rolling over 65,536 about fifteen times, and is
//! reset once; its readings go to Mosquitto at QoS 1 (`mosquitto_pub`) while the edge agent,
//! a real process with a persistent session, is killed with SIGKILL at random moments and
//! restarted, and its connector is made to reconnect by reloads of a changed file. At the end
//! the good parts the edge stored are exactly the increments minus what the PLC counted
//! between its last reading and the reset — which the test knows, and which the edge reports
//! as a notice with the values it saw.
//!
//! The data come from a seeded generator (`CONNECTORS_SEED`, printed); the moments of the
//! kills are drawn from it too, though where they land depends on the machine's timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use system_tests::connectors::{
    BROKER, EdgeProcess, Publisher, block_on, broker_answers, connector, data_dir, reload, stored,
    unique, until, until_stored,
};
use system_tests::edge::api_key;
use system_tests::rng::Rng;

const INCREMENTS: u64 = 1_000_000;
const MODULUS: u64 = 65_536;
const MAX_STEP: u64 = 1_000;
/// Messages published per pause, and the pause: about 100 messages a second.
const CHUNK: usize = 20;
const PAUSE: Duration = Duration::from_millis(200);

fn config_text(prefix: &str, keep_alive_secs: u64) -> String {
    format!(
        r#"
site = "SITE_001"

[[connector]]
name = "line1"
kind = "mqtt"
url = "mqtt://{BROKER}"
client_id = "{prefix}"
keep_alive_secs = {keep_alive_secs}

[[connector.tag]]
name = "press.good"
map = "counter"
equipment = "PRESS-01"
topic = "{prefix}/count"
path = "n"
modulus = {MODULUS}
max_step = {MAX_STEP}
"#
    )
}

/// What the PLC did: the readings it published, and its one reset.
#[derive(Debug)]
struct Plan {
    /// JSON payloads, in order; the first is the edge's baseline.
    lines: Vec<String>,
    /// The reading before the reset and the first one after it.
    reset_from: u64,
    reset_to: u64,
    /// Counted by the PLC after `reset_from` was read and before the reset: lost with it.
    discarded: u64,
}

fn plan(rng: &mut Rng) -> Plan {
    let reading = |v: u64| format!(r#"{{"n": {v}}}"#);
    let mut value = rng.below(MODULUS);
    let mut lines = vec![reading(value)];
    let mut counted = 0u64;
    let reset_after = rng.between(INCREMENTS / 4, INCREMENTS * 3 / 4);
    let mut reset = None;
    while counted < INCREMENTS {
        let step = rng.between(1, MAX_STEP - 1).min(INCREMENTS - counted);
        // The reset comes where the last reading is well away from both ends, so that it
        // cannot be read as a rollover (a unit test pins that case) nor as counting up.
        if reset.is_none()
            && counted >= reset_after
            && value > MAX_STEP
            && value < MODULUS - MAX_STEP
            && INCREMENTS - counted > 2 * MAX_STEP
        {
            let discarded = step;
            let after = rng.between(1, MAX_STEP - 1);
            counted += discarded + after;
            reset = Some((value, after, discarded));
            value = after;
        } else {
            counted += step;
            value = (value + step) % MODULUS;
        }
        lines.push(reading(value));
    }
    let (reset_from, reset_to, discarded) = reset.expect("the plan has its reset");
    assert_eq!(counted, INCREMENTS);
    Plan {
        lines,
        reset_from,
        reset_to,
        discarded,
    }
}

/// Starts the edge and waits until its connector's link is up.
fn start(dir: &Path, file: &Path, key: &str) -> EdgeProcess {
    let edge = EdgeProcess::start(dir, file);
    block_on(until(
        Duration::from_secs(20),
        "the connector's link up",
        async || connector(&edge.base, key).await["link"].clone(),
        |l| l == "up",
    ));
    edge
}

#[test]
fn a_16_bit_counter_is_exact_across_rollovers_a_reset_reconnects_and_kills() {
    broker_answers();
    let seed: u64 = std::env::var("CONNECTORS_SEED")
        .map(|s| s.parse().expect("CONNECTORS_SEED is a number"))
        .unwrap_or(0x21_e7ac7);
    println!("counter exactness seed {seed} (replay with CONNECTORS_SEED={seed})");
    let mut rng = Rng::new(seed);
    let plan = plan(&mut rng);
    let expected = INCREMENTS - plan.discarded;
    println!(
        "{} readings, reset from {} to {}, {} discarded",
        plan.lines.len(),
        plan.reset_from,
        plan.reset_to,
        plan.discarded
    );

    let prefix = unique("mes-edge-exact");
    let dir = data_dir("connectors-exact");
    let file = dir.join("edge.toml");
    let mut keep_alive = 30;
    std::fs::write(&file, config_text(&prefix, keep_alive)).unwrap();
    let key = api_key(&dir, "integration");
    // The first start makes the broker's persistent session: from then on it keeps what
    // arrives for the client id while the edge is dead.
    let mut edge = start(&dir, &file, &key);
    let topic = format!("{prefix}/count");
    let mut publisher = Publisher::start(&topic);
    publisher.send(&plan.lines[0]);
    block_on(until(
        Duration::from_secs(20),
        "the baseline reading received",
        async || connector(&edge.base, &key).await["messages"].as_u64(),
        |m| m.unwrap_or(0) >= 1,
    ));

    // The publisher keeps its pace in its own thread; the kills and reloads come at moments
    // drawn over the time it takes.
    let rest: Vec<String> = plan.lines[1..].to_vec();
    let publishing = PAUSE * (rest.len() / CHUNK) as u32;
    let publisher = std::thread::spawn(move || {
        for chunk in rest.chunks(CHUNK) {
            for l in chunk {
                publisher.send(l);
            }
            std::thread::sleep(PAUSE);
        }
        publisher.finish();
    });
    let kills = rng.between(3, 5);
    let window = publishing.as_millis() as u64;
    // (when, whether a kill or else a reload)
    let mut moments: Vec<(u64, bool)> = (0..kills + 2)
        .map(|i| (rng.below(window), i < kills))
        .collect();
    moments.sort_unstable();
    let began = Instant::now();
    let (mut killed, mut reloaded) = (0, 0);
    for (at, kill) in moments {
        let at = Duration::from_millis(at);
        std::thread::sleep(at.saturating_sub(began.elapsed()));
        if kill {
            edge.kill9();
            killed += 1;
            // Dead for a while: the broker keeps what arrives meanwhile.
            std::thread::sleep(Duration::from_millis(rng.below(1_000)));
            edge = start(&dir, &file, &key);
        } else {
            // A changed table restarts the connector: its client disconnects and connects
            // again on the same persistent session.
            keep_alive += 1;
            std::fs::write(&file, config_text(&prefix, keep_alive)).unwrap();
            let (status, r) = block_on(reload(&edge.base, &key));
            assert_eq!(status, 200, "{r}");
            assert_eq!(r["reloaded"]["started"][0], "line1", "{r}");
            reloaded += 1;
        }
    }
    publisher.join().unwrap();
    println!(
        "published in {:?}, {killed} kills, {reloaded} reloads",
        began.elapsed()
    );

    block_on(until_stored(
        &dir,
        Duration::from_secs(90),
        "every delta stored",
        |s| s.good >= expected,
    ));
    // Nothing more comes after a while: no delta was counted twice.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        stored(&dir).good,
        expected,
        "Σ stored good = {INCREMENTS} increments − {} discarded by the reset (seed {seed}, {killed} kills)",
        plan.discarded
    );
    let c = block_on(connector(&edge.base, &key));
    let notices = c["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 1, "one reset, one notice: {c}");
    let message = notices[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "counter reset from {} to {}: {} counted since the reset",
            plan.reset_from, plan.reset_to, plan.reset_to
        )),
        "{message}"
    );
    assert_eq!(notices[0]["tag"], "press.good", "{c}");
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
}
