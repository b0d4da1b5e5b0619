//! `bench-connectors`: the machine connectors under a sustained load of tag changes.
//!
//! Starts the release `edge-agent` as its own process, on a fresh data directory with
//! `--machines` machines in its master data and a config of two connectors:
//! - MQTT on Mosquitto (127.0.0.1:1883): five tags per machine on the machine's topic — two
//!   good counters (`good_a`, `good_b`), a scrap counter, a state (1 running / 2 down) and a
//!   diameter sample — so 500 tags for 100 machines;
//! - OPC UA on a real asyncua server (`tests/peers/opcua/load.py`): `--opcua-tags` UInt32
//!   counters with monitored items, sampled every `--sampling-ms` (default 20; the edge
//!   publishes its subscription as often as its fastest tag samples).
//!
//! Phases, each open loop at a fixed rate (the publisher schedules change k at start + k/rate
//! whatever came back before; QoS 1): MQTT alone at `--mqtt-rate` over all its tags round robin,
//! OPC UA alone at `--opcua-rate`, then both at once. Every change makes exactly one event (a
//! counter +1, a state that toggles, a new sample), so after each phase the events stored are
//! checked against the changes sent: counted parts against increments, states and samples
//! against changes.
//!
//! Each change carries its scheduled wall-clock time as the machine's timestamp (the JSON
//! `ts`, the OPC UA source timestamp), which the edge stores as `occurred_at`. Two latencies:
//! `recorded_at − occurred_at` from the edge's SQLite (the edge's clock when it hands the
//! readings to its store, before the commit), and publish → visible in SQLite, from a reader
//! that polls the edge's file every 5 ms for newly committed rows (so that one includes the
//! commit, with up to 5 ms of polling added). Same machine, same clock.
//!
//! The edge's RSS comes from /proc/PID/status (VmRSS sampled each second, VmHWM the peak),
//! its CPU from /proc/PID/stat (utime + stime). The load generators (this program, Mosquitto,
//! the Python server) share the machine's cores with the edge.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use shared_model::Timestamp;
use system_tests::benchout::figure;
use system_tests::connectors::{
    BROKER, Peer, Stored, connectors, free_port, stored, unique, until,
};
use system_tests::procs::{Proc, cpu_seconds, repo_root, rss_mb};

/// Fields of a machine's MQTT topic, one tag each; `scrap` counts scrap.
const MQTT_FIELDS: [&str; 5] = ["good_a", "good_b", "scrap", "state", "dia"];
/// How long the edge may take to store what a phase sent, after the phase.
const DRAIN_MAX: Duration = Duration::from_secs(120);
/// How often the commit observer looks for new rows.
const OBSERVE_EVERY: Duration = Duration::from_millis(5);

struct Args {
    agent: PathBuf,
    seconds: u64,
    machines: usize,
    mqtt_rate: u64,
    opcua_rate: u64,
    opcua_tags: usize,
    both: bool,
    /// The edge's MQTT protocol: "3.1.1" or "5".
    mqtt_protocol: String,
    /// The MQTT broker (host:port), Mosquitto of the tests by default.
    broker: String,
    /// The OPC UA tags' sampling interval, which is also the subscription's publishing
    /// interval: a change waits up to this long in the server before it is sent.
    sampling_ms: u64,
}

fn args() -> anyhow::Result<Args> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let mut a = Args {
        agent: target.join("release/edge-agent"),
        seconds: 60,
        machines: 100,
        mqtt_rate: 5_000,
        opcua_rate: 1_000,
        opcua_tags: 100,
        both: true,
        mqtt_protocol: "3.1.1".to_owned(),
        broker: BROKER.to_owned(),
        sampling_ms: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agent" => a.agent = value.into(),
            "--seconds" => a.seconds = value.parse()?,
            "--machines" => a.machines = value.parse()?,
            "--mqtt-rate" => a.mqtt_rate = value.parse()?,
            "--opcua-rate" => a.opcua_rate = value.parse()?,
            "--opcua-tags" => a.opcua_tags = value.parse()?,
            "--both" => a.both = value.parse()?,
            "--mqtt-protocol" => a.mqtt_protocol = value,
            "--broker" => a.broker = value,
            "--sampling-ms" => a.sampling_ms = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.machines == 0 || a.opcua_tags == 0 || a.mqtt_rate == 0 || a.opcua_rate == 0 {
        bail!("machines, tags and rates must be at least 1");
    }
    Ok(a)
}

fn machine(i: usize) -> String {
    format!("M-{:03}", i + 1)
}

fn wall_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn master_data(path: &Path, machines: usize) -> anyhow::Result<()> {
    let mut equipment = vec![
        r#"{"id":"SITE_001","parent":null,"level":"site","name":"Plant","class":"site"}"#
            .to_owned(),
    ];
    for i in 0..machines {
        equipment.push(format!(
            r#"{{"id":"{}","parent":"SITE_001","level":"work_unit","name":"Machine {i}","class":"press"}}"#,
            machine(i)
        ));
    }
    std::fs::write(
        path,
        format!(r#"{{"equipment":[{}]}}"#, equipment.join(",")),
    )?;
    Ok(())
}

fn config_text(prefix: &str, a: &Args, ua_port: u16) -> String {
    let (machines, ua_tags, protocol, broker) =
        (a.machines, a.opcua_tags, &a.mqtt_protocol, &a.broker);
    let mut s = format!(
        "site = \"SITE_001\"\n\n[[connector]]\nname = \"bench-mqtt\"\nkind = \"mqtt\"\nurl = \"mqtt://{broker}\"\nprotocol = \"{protocol}\"\nclient_id = \"{prefix}\"\n"
    );
    for m in 0..machines {
        for f in MQTT_FIELDS {
            let map = match f {
                "state" => "map = \"state\"\nstates = { \"1\" = \"running\", \"2\" = \"down\" }\n",
                "dia" => "map = \"sample\"\ncharacteristic = \"DIA\"\n",
                "scrap" => "map = \"counter\"\ncounts = \"scrap\"\n",
                _ => "map = \"counter\"\n",
            };
            s.push_str(&format!(
                "\n[[connector.tag]]\nname = \"m{m}.{f}\"\nequipment = \"{}\"\ntopic = \"{prefix}/m{m}\"\npath = \"{f}\"\ntimestamp_path = \"ts\"\n{map}",
                machine(m)
            ));
        }
    }
    s.push_str(&format!(
        "\n[[connector]]\nname = \"bench-ua\"\nkind = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{ua_port}/mes/\"\n"
    ));
    for i in 0..ua_tags {
        s.push_str(&format!(
            "\n[[connector.tag]]\nname = \"ua.c{i}\"\nmap = \"counter\"\nequipment = \"{}\"\nnode = \"ns=2;s=Load.C{i}\"\nsampling_ms = {}\n",
            machine(i % machines),
            a.sampling_ms
        ));
    }
    s
}

/// The MQTT side of the load: one value per tag, changed one tag at a time.
struct MqttLoad {
    prefix: String,
    machines: usize,
    /// Per tag (machine × field): the counter, the state code or the sample's step.
    values: Vec<u64>,
}

impl MqttLoad {
    fn tags(&self) -> usize {
        self.machines * MQTT_FIELDS.len()
    }

    /// Topic and payload of tag `t`'s current value at machine time `at`.
    fn message(&self, t: usize, at: Timestamp) -> (String, String) {
        let field = MQTT_FIELDS[t % MQTT_FIELDS.len()];
        let v = self.values[t];
        let value = match field {
            "state" => (v % 2 + 1).to_string(),
            "dia" => format!("{:.3}", 10.0 + (v % 100) as f64 / 1000.0),
            _ => v.to_string(),
        };
        (
            format!("{}/m{}", self.prefix, t / MQTT_FIELDS.len()),
            format!(r#"{{"{field}":{value},"ts":"{}"}}"#, at.to_rfc3339()),
        )
    }
}

/// A publisher session on the broker; its event loop runs in a task counting PUBACKs.
struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(broker: &str) -> anyhow::Result<Self> {
        let (host, port) = broker.split_once(':').context("broker address")?;
        let mut o = MqttOptions::new(unique("bench-pub"), host, port.parse()?);
        o.set_keep_alive(Duration::from_secs(30))
            .set_inflight(1_000)
            .set_request_channel_capacity(10_000);
        let (client, mut events) = AsyncClient::new(o, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut errors = 0u32;
            while !s.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => {
                        errors += 1;
                        eprintln!("publisher: {e}");
                        if errors > 20 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(Self {
            client,
            acked,
            stop,
            task,
        })
    }

    async fn publish(&self, topic: String, payload: String) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .context("publishing")
    }

    /// Waits (bounded) until the broker acknowledged `n` messages in all.
    async fn acked(&self, n: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        while self.acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.acked.load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect().await;
        let _ = self.task.await;
    }
}

/// What an open-loop generator did.
struct Sent {
    changes: u64,
    seconds: f64,
    /// How far behind its schedule the latest publish was, ms.
    late_max_ms: f64,
}

/// Publishes `rate` changes per second for `seconds`, round robin over the tags: change k is
/// due at start + k/rate and carries that time as its machine time.
async fn mqtt_phase(
    publisher: &Publisher,
    load: &mut MqttLoad,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Sent> {
    let total = rate * seconds;
    let period_us = 1e6 / rate as f64;
    let start = Instant::now();
    let start_wall = wall_micros();
    let mut late_max = Duration::ZERO;
    for k in 0..total {
        let offset = Duration::from_micros((k as f64 * period_us) as u64);
        let due = start + offset;
        tokio::time::sleep_until(due.into()).await;
        late_max = late_max.max(due.elapsed());
        let t = (k as usize) % load.tags();
        load.values[t] += 1;
        let at = Timestamp::from_micros(start_wall + offset.as_micros() as i64);
        let (topic, payload) = load.message(t, at);
        publisher.publish(topic, payload).await?;
    }
    Ok(Sent {
        changes: total,
        seconds: start.elapsed().as_secs_f64(),
        late_max_ms: late_max.as_secs_f64() * 1e3,
    })
}

/// Asks the OPC UA load server for `rate` changes per second for `seconds`.
fn opcua_phase(peer: &mut Peer, rate: u64, seconds: u64) -> anyhow::Result<Sent> {
    peer.send_line(&format!("run {rate} {seconds}"));
    let done = peer.expect("DONE", Duration::from_secs(seconds * 3 + 60));
    let field = |key: &str| -> anyhow::Result<f64> {
        done.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .with_context(|| format!("{key} in {done:?}"))?
            .parse::<f64>()
            .with_context(|| format!("{key} in {done:?}"))
    };
    Ok(Sent {
        changes: field("changes=")? as u64,
        seconds: field("seconds=")?,
        late_max_ms: field("late_max_ms=")?,
    })
}

/// Reads the edge's SQLite file every [`OBSERVE_EVERY`] and notes, for each newly committed
/// event, when it became visible (µs, wall clock) beside its `occurred_at`.
struct Observer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<(i64, i64)>>>,
}

impl Observer {
    fn start(db: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let c = rusqlite::Connection::open_with_flags(
                db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let mut last: i64 = c.query_row(
                "SELECT coalesce(max(recorded_at), 0) FROM events WHERE acked = 0",
                [],
                |r| r.get(0),
            )?;
            let mut seen = Vec::new();
            let mut q = c.prepare(
                "SELECT occurred_at, recorded_at FROM events WHERE acked = 0 AND recorded_at > ?1",
            )?;
            while !s.load(Ordering::Relaxed) {
                let rows: Vec<(i64, i64)> = q
                    .query_map([last], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let now = wall_micros();
                for (occurred, recorded) in rows {
                    last = last.max(recorded);
                    seen.push((occurred, now));
                }
                std::thread::sleep(OBSERVE_EVERY);
            }
            Ok(seen)
        });
        Self { stop, thread }
    }

    fn finish(self) -> anyhow::Result<Vec<(i64, i64)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the observer panicked"))?
    }
}

fn percentile_ms(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// p50, p99, max in ms.
fn spread(mut us: Vec<i64>) -> [f64; 3] {
    us.sort_unstable();
    [
        percentile_ms(&us, 0.50),
        percentile_ms(&us, 0.99),
        us.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
    ]
}

/// The events whose machine time is in `[from, to)`: (occurred_at, recorded_at), µs.
fn events_between(db: &Path, from: i64, to: i64) -> anyhow::Result<Vec<(i64, i64)>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut q = c.prepare(
        "SELECT occurred_at, recorded_at FROM events WHERE occurred_at >= ?1 AND occurred_at < ?2",
    )?;
    let rows = q
        .query_map([from, to], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// What should be stored after a phase, beyond what was before it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Expected {
    good: u64,
    scrap: u64,
    states: usize,
    samples: usize,
}

impl Expected {
    fn of(s: &Stored) -> Self {
        Self {
            good: s.good,
            scrap: s.scrap,
            states: s.states.len(),
            samples: s.samples.len(),
        }
    }

    fn plus(self, o: Expected) -> Self {
        Self {
            good: self.good + o.good,
            scrap: self.scrap + o.scrap,
            states: self.states + o.states,
            samples: self.samples + o.samples,
        }
    }

    /// What `changes` round-robin MQTT changes from change number `first` on should add.
    fn mqtt(first: u64, changes: u64) -> Self {
        let mut e = Self::default();
        for k in first..first + changes {
            match MQTT_FIELDS[(k % MQTT_FIELDS.len() as u64) as usize] {
                "scrap" => e.scrap += 1,
                "state" => e.states += 1,
                "dia" => e.samples += 1,
                _ => e.good += 1,
            }
        }
        e
    }
}

fn event_count(db: &Path) -> anyhow::Result<u64> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(c.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
}

/// Waits (at most [`DRAIN_MAX`]) until the edge stored `events` events in all (a cheap count
/// polled), then returns what it stored (decoding every event once).
async fn drained(dir: &Path, events: u64) -> anyhow::Result<Expected> {
    let db = dir.join(edge_agent::store::DB_FILE);
    let deadline = Instant::now() + DRAIN_MAX;
    while event_count(&db)? < events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Expected::of(&stored(dir)))
}

/// Samples the edge's VmRSS each second until stopped; returns the samples.
fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut v = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            v.push(rss_mb(pid).0);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        v
    })
}

struct Phase {
    key: &'static str,
    name: &'static str,
    offered: u64,
    sent: Sent,
    expected: Expected,
    got: Expected,
    events: usize,
    stored_seconds: f64,
    recorded: [f64; 3],
    visible: [f64; 3],
    visible_count: usize,
    cpu_s: f64,
    rss_steady: f64,
    hwm: f64,
}

impl Phase {
    fn print(&self) {
        let k = self.key;
        let achieved = self.sent.changes as f64 / self.sent.seconds;
        let stored_rate = self.events as f64 / self.stored_seconds;
        let cpu_per_1000 = self.cpu_s / (self.sent.changes as f64 / 1000.0);
        println!(
            "{}: offered {} changes/s, achieved {achieved:.0}/s ({} changes in {:.2} s, latest {:.1} ms behind schedule)",
            self.name, self.offered, self.sent.changes, self.sent.seconds, self.sent.late_max_ms
        );
        println!(
            "  events stored {} ({stored_rate:.0}/s over {:.2} s from the phase's start to the last stored); expected {:?}, stored {:?} -> {}",
            self.events,
            self.stored_seconds,
            self.expected,
            self.got,
            if self.expected == self.got {
                "exact"
            } else {
                "MISMATCH"
            }
        );
        println!(
            "  publish -> recorded_at: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.recorded[0], self.recorded[1], self.recorded[2]
        );
        println!(
            "  publish -> visible in SQLite (polled every {} ms, {} events seen): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            OBSERVE_EVERY.as_millis(),
            self.visible_count,
            self.visible[0],
            self.visible[1],
            self.visible[2]
        );
        println!(
            "  edge CPU {:.2} s (phase and drain) = {cpu_per_1000:.3} CPU-s per 1,000 changes ({:.1}% of one core per 1,000 changes/s); RSS steady {:.1} MB, peak (VmHWM) {:.1} MB",
            self.cpu_s,
            cpu_per_1000 * 100.0,
            self.rss_steady,
            self.hwm
        );
        figure(
            &format!("connectors.{k}_offered_per_s"),
            self.offered as f64,
            "changes/s",
        );
        figure(
            &format!("connectors.{k}_achieved_per_s"),
            achieved,
            "changes/s",
        );
        figure(
            &format!("connectors.{k}_stored_per_s"),
            stored_rate,
            "events/s",
        );
        figure(
            &format!("connectors.{k}_exact"),
            f64::from(u8::from(self.expected == self.got)),
            "bool",
        );
        figure(
            &format!("connectors.{k}_recorded_p50_ms"),
            self.recorded[0],
            "ms",
        );
        figure(
            &format!("connectors.{k}_recorded_p99_ms"),
            self.recorded[1],
            "ms",
        );
        figure(
            &format!("connectors.{k}_recorded_max_ms"),
            self.recorded[2],
            "ms",
        );
        figure(
            &format!("connectors.{k}_visible_p50_ms"),
            self.visible[0],
            "ms",
        );
        figure(
            &format!("connectors.{k}_visible_p99_ms"),
            self.visible[1],
            "ms",
        );
        figure(
            &format!("connectors.{k}_visible_max_ms"),
            self.visible[2],
            "ms",
        );
        figure(&format!("connectors.{k}_cpu_s_per_1000"), cpu_per_1000, "s");
        figure(&format!("connectors.{k}_rss_mb"), self.rss_steady, "MB");
        figure(&format!("connectors.{k}_rss_peak_mb"), self.hwm, "MB");
    }
}

struct Bench {
    dir: PathBuf,
    db: PathBuf,
    pid: u32,
    publisher: Publisher,
    mqtt: MqttLoad,
    /// MQTT changes sent so far (the round robin continues across phases).
    mqtt_sent: u64,
    peer: Option<Peer>,
}

impl Bench {
    /// One phase: MQTT at `mqtt_rate` and/or OPC UA at `ua_rate` changes/s for `seconds`.
    async fn phase(
        &mut self,
        key: &'static str,
        name: &'static str,
        mqtt_rate: u64,
        ua_rate: u64,
        seconds: u64,
    ) -> anyhow::Result<Phase> {
        let before = Expected::of(&stored(&self.dir));
        let events_before = event_count(&self.db)?;
        let cpu0 = cpu_seconds(self.pid);
        let observer = Observer::start(self.db.clone());
        let stop_rss = Arc::new(AtomicBool::new(false));
        let sampler = rss_sampler(self.pid, stop_rss.clone());
        let from = wall_micros();
        let started = Instant::now();
        let ua = if ua_rate > 0 {
            let mut peer = self.peer.take().context("no OPC UA peer")?;
            Some(tokio::task::spawn_blocking(move || {
                let r = opcua_phase(&mut peer, ua_rate, seconds);
                (peer, r)
            }))
        } else {
            None
        };
        let mqtt_sent = if mqtt_rate > 0 {
            Some(mqtt_phase(&self.publisher, &mut self.mqtt, mqtt_rate, seconds).await?)
        } else {
            None
        };
        let ua_sent = match ua {
            Some(t) => {
                let (peer, r) = t.await?;
                self.peer = Some(peer);
                Some(r?)
            }
            None => None,
        };
        let mut expected = before;
        if let Some(s) = &mqtt_sent {
            expected = expected.plus(Expected::mqtt(self.mqtt_sent, s.changes));
            self.mqtt_sent += s.changes;
        }
        if let Some(s) = &ua_sent {
            expected = expected.plus(Expected {
                good: s.changes,
                ..Expected::default()
            });
        }
        let got = drained(
            &self.dir,
            events_before
                + mqtt_sent.as_ref().map_or(0, |s| s.changes)
                + ua_sent.as_ref().map_or(0, |s| s.changes),
        )
        .await?;
        let cpu_s = cpu_seconds(self.pid) - cpu0;
        stop_rss.store(true, Ordering::Relaxed);
        let mut rss = sampler.await?;
        let (_, hwm) = rss_mb(self.pid);
        // Let the observer see the last commit.
        tokio::time::sleep(OBSERVE_EVERY * 4).await;
        let to = wall_micros();
        let visible: Vec<i64> = observer
            .finish()?
            .into_iter()
            .filter(|(o, _)| (from..to).contains(o))
            .map(|(o, seen)| seen - o)
            .collect();
        let events = events_between(&self.db, from, to)?;
        let last_stored = events.iter().map(|(_, r)| *r).max().unwrap_or(from);
        rss.sort_by(f64::total_cmp);
        let sent = match (mqtt_sent, ua_sent) {
            (Some(m), Some(u)) => Sent {
                changes: m.changes + u.changes,
                seconds: m.seconds.max(u.seconds),
                late_max_ms: m.late_max_ms.max(u.late_max_ms),
            },
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) => bail!("a phase without load"),
        };
        Ok(Phase {
            key,
            name,
            offered: mqtt_rate + ua_rate,
            sent,
            expected,
            got,
            events: events.len(),
            stored_seconds: ((last_stored - from) as f64 / 1e6)
                .max(started.elapsed().as_secs_f64().min(seconds as f64)),
            recorded: spread(events.iter().map(|(o, r)| r - o).collect()),
            visible_count: visible.len(),
            visible: spread(visible),
            cpu_s,
            rss_steady: rss.get(rss.len() / 2).copied().unwrap_or(f64::NAN),
            hwm,
        })
    }
}

fn start_peer(port: u16, tags: usize) -> anyhow::Result<Peer> {
    let script = repo_root().join("tests/peers/opcua/load.py");
    let mut p = Peer::spawn(
        Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--tags", &tags.to_string()])
            .stderr(Stdio::null()),
        "OPC UA load server (PyPI asyncua)",
    );
    let first = p.line(Duration::from_secs(60));
    if !first.starts_with("READY") {
        bail!(
            "the OPC UA load server: {first} (pip install -r tests/peers/opcua/requirements.txt)"
        );
    }
    Ok(p)
}

/// Waits (at most 60 s) until both connectors' links are up.
async fn connectors_up(base: &str, key: &str) {
    until(
        Duration::from_secs(60),
        "both connectors up",
        async || connectors(base, key).await,
        |v| {
            let all = v["connectors"].as_array().cloned().unwrap_or_default();
            all.len() == 2 && all.iter().all(|c| c["link"] == "up")
        },
    )
    .await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    if !a.agent.is_file() {
        bail!(
            "{} not found: build it with cargo build --release -p edge-agent",
            a.agent.display()
        );
    }
    if a.broker == BROKER {
        system_tests::connectors::broker_answers();
    }
    let dir = std::env::temp_dir().join(unique("bench-connectors"));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join(edge_agent::store::DB_FILE);
    let md = dir.join("md.json");
    master_data(&md, a.machines)?;
    let records = edge_agent::master::read_file(&md)?;
    edge_agent::master::import(
        &mut edge_agent::store::open_write_connection(&db)?,
        &records,
    )?;
    let key = system_tests::edge::api_key(&dir, "bench");
    let ua_port = free_port();
    let peer = tokio::task::spawn_blocking(move || start_peer(ua_port, a.opcua_tags)).await??;
    let prefix = unique("bench");
    let config = dir.join("edge.toml");
    std::fs::write(&config, config_text(&prefix, &a, ua_port))?;
    let mut edge = Proc::start_logging(
        Command::new(&a.agent)
            .args(["run", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn"),
        &dir.join("edge.log"),
    );
    let line = edge.wait_for_line("edge-agent listening on ", Duration::from_secs(60));
    let base = line
        .strip_prefix("edge-agent listening on ")
        .context("listening line")?
        .to_owned();
    let pid = edge.pid();
    connectors_up(&base, &key).await;
    let (rss_idle, _) = rss_mb(pid);
    let load = MqttLoad {
        prefix,
        machines: a.machines,
        values: vec![1_000; a.machines * MQTT_FIELDS.len()],
    };
    // Baselines: each tag's first value (a counter's first reading counts nothing; each
    // state and sample gives one event).
    let publisher = Publisher::start(&a.broker)?;
    for t in 0..load.tags() {
        let (topic, payload) = load.message(t, Timestamp::from_micros(wall_micros()));
        publisher.publish(topic, payload).await?;
    }
    let baseline = Expected {
        states: a.machines,
        samples: a.machines,
        ..Expected::default()
    };
    let got = drained(&dir, (2 * a.machines) as u64).await?;
    if got != baseline {
        bail!("baselines: expected {baseline:?}, stored {got:?}");
    }
    // The OPC UA subscription's first values (the baselines) arrive with the link.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut bench = Bench {
        dir: dir.clone(),
        db,
        pid,
        publisher,
        mqtt: load,
        mqtt_sent: 0,
        peer: Some(peer),
    };
    let tags_mqtt = a.machines * MQTT_FIELDS.len();
    println!(
        "edge pid {pid} at {base}: {tags_mqtt} MQTT tags ({} machines x good_a, good_b, scrap counters, state, sample) + {} OPC UA counters; RSS idle {rss_idle:.1} MB; {} s per phase",
        a.machines, a.opcua_tags, a.seconds
    );
    let mut phases = vec![
        bench
            .phase("mqtt", "A. MQTT alone", a.mqtt_rate, 0, a.seconds)
            .await?,
    ];
    phases[0].print();
    phases.push(
        bench
            .phase("opcua", "B. OPC UA alone", 0, a.opcua_rate, a.seconds)
            .await?,
    );
    phases[1].print();
    if a.both {
        phases.push(
            bench
                .phase(
                    "both",
                    "C. both at once",
                    a.mqtt_rate,
                    a.opcua_rate,
                    a.seconds,
                )
                .await?,
        );
        phases[2].print();
    }
    let acked = bench
        .publisher
        .acked(bench.mqtt_sent + tags_mqtt as u64, Duration::from_secs(10))
        .await;
    println!(
        "MQTT publishes acknowledged by the broker: {acked} of {}",
        bench.mqtt_sent + tags_mqtt as u64
    );
    let health: HashMap<String, serde_json::Value> = connectors(&base, &key).await["connectors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c["name"].as_str().unwrap_or("?").to_owned(), c))
        .collect();
    for (name, c) in &health {
        println!(
            "connector {name}: link {}, messages {}, events {}, rejected {}, dropped {}, reconnects {}, last_error {}",
            c["link"],
            c["messages"],
            c["events"],
            c["rejected"],
            c["dropped"],
            c["reconnects"],
            c["last_error"]
        );
    }
    bench.publisher.stop().await;
    if let Some(mut p) = bench.peer.take() {
        p.send_line("quit");
        p.kill();
    }
    let _ = edge.terminate(Duration::from_secs(30));
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nMeasured {} on {cores} cores shared by the edge, Mosquitto, this load generator and the Python OPC UA server; command: {}",
        String::from_utf8_lossy(&date.stdout).trim(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let _ = std::fs::remove_dir_all(&dir);
    if phases.iter().any(|p| p.expected != p.got) {
        bail!("some phase did not store exactly what it sent (see above)");
    }
    Ok(())
}
