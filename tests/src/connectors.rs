//! Fixtures of the machine-connector tests (`tests/tests/edge/connectors*.rs`): an edge data
//! directory with the test master data and its run configuration, what the edge stored, its
//! connectors' health, waiting, and a peer process (a protocol server or client the project
//! did not write) driven line by line over its stdin and stdout.

// Test fixtures: a failed set-up step stops the test with its message.
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

use crate::edge::MASTER;
use crate::procs::{Proc, workspace_bin};

/// The MQTT broker of the tests (Mosquitto; `.ci/run` starts one where none answers).
pub const BROKER: &str = "127.0.0.1:1883";

/// Fails the test with how to start a broker when none answers.
pub fn broker_answers() {
    assert!(
        std::net::TcpStream::connect_timeout(&BROKER.parse().unwrap(), Duration::from_secs(2))
            .is_ok(),
        "no MQTT broker on {BROKER}: start Mosquitto (`mosquitto -d -c /etc/mosquitto/mosquitto.conf`; .ci/run does)"
    );
}

/// Mosquitto's own publisher (`mosquitto_pub -l`, QoS 1) kept running: each line written is
/// one message, in order. Finishing closes its input and waits until the broker has them all.
#[derive(Debug)]
pub struct Publisher {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Publisher {
    pub fn start(topic: &str) -> Publisher {
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-q",
                "1",
                "-t",
                topic,
                "-l",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("running mosquitto_pub (Debian's mosquitto-clients)");
        let stdin = child.stdin.take();
        Publisher { child, stdin }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success(), "mosquitto_pub failed");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Publishes each line as one message at QoS 1 with Mosquitto's client.
pub fn publish(topic: &str, lines: &[String]) {
    let mut p = Publisher::start(topic);
    for l in lines {
        p.send(l);
    }
    p.finish();
}

/// The edge agent as a real process (`edge-agent run --config file`, its log in
/// `dir/edge.log`), started and listening; SIGKILLed when dropped.
#[derive(Debug)]
pub struct EdgeProcess {
    pub proc: Proc,
    /// `http://127.0.0.1:port`.
    pub base: String,
}

impl EdgeProcess {
    pub fn start(dir: &Path, file: &Path) -> EdgeProcess {
        let bin = workspace_bin("edge-agent", "edge-agent");
        let mut proc = Proc::start_logging(
            Command::new(&bin).args([
                "run",
                "--config",
                file.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--http-listen",
                "127.0.0.1:0",
            ]),
            &dir.join("edge.log"),
        );
        let line = proc.wait_for_line("edge-agent listening on", Duration::from_secs(30));
        let base = line
            .trim_start_matches("edge-agent listening on")
            .trim()
            .to_owned();
        EdgeProcess { proc, base }
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(self) {
        self.proc.kill9();
    }
}

/// `POST /api/v1/connectors/reload`: the status and the JSON answer.
pub async fn reload(base: &str, key: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/connectors/reload"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A name no other test run shares (topics, client ids, groups on the shared broker).
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    )
}

/// A free TCP port on loopback for a peer server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh edge data directory holding [`MASTER`].
pub fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let md: edge_agent::master::MasterFile = serde_json::from_str(MASTER).unwrap();
    let mut conn =
        edge_agent::store::open_write_connection(&dir.join(edge_agent::store::DB_FILE)).unwrap();
    edge_agent::master::import(&mut conn, &md.into_records()).unwrap();
    dir
}

/// A standalone SITE_001 edge on `dir` with the connectors of `file`.
pub fn run_config(dir: &Path, file: &Path) -> RunConfig {
    RunConfig {
        site: SiteId::new("SITE_001").unwrap(),
        data_dir: dir.to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        hub: None,
        retention_days: 30,
        tls_dir: dir.join("tls"),
        config_file: Some(file.to_owned()),
    }
}

/// What the edge stored, read from its SQLite file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stored {
    pub good: u64,
    pub scrap: u64,
    /// In the order they happened.
    pub states: Vec<MachineState>,
    pub samples: Vec<f64>,
}

pub fn stored(dir: &Path) -> Stored {
    let c = rusqlite::Connection::open_with_flags(
        dir.join(edge_agent::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = c
        .prepare("SELECT body FROM events ORDER BY occurred_at, recorded_at, event_id")
        .unwrap();
    let mut out = Stored::default();
    for body in stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(Result::unwrap)
    {
        match edge_agent::store::decode_event(&body).unwrap().body {
            EventBody::ProductionCount(p) => {
                out.good += u64::from(p.good);
                out.scrap += u64::from(p.scrap);
            }
            EventBody::EquipmentState(s) => out.states.push(s.state),
            EventBody::QualitySample(s) => out.samples.push(s.value),
            _ => {}
        }
    }
    out
}

/// A GET answered with JSON, with the edge's API key.
pub async fn get_json(url: String, key: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A GET answered with text (`/metrics`), with the edge's API key.
pub async fn get_text(url: &str, key: &str) -> String {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `GET /api/v1/connectors`.
pub async fn connectors(base: &str, key: &str) -> Value {
    get_json(format!("{base}/api/v1/connectors"), key).await
}

/// The first connector of `GET /api/v1/connectors`.
pub async fn connector(base: &str, key: &str) -> Value {
    connectors(base, key).await["connectors"][0].clone()
}

/// A `[[connector]]` table `name` of `kind` (its own settings in `settings`) with a state tag
/// of PRESS-01 (1 running, 2 down; where it is read in `source`), so its link shows, and a
/// `[[connector.write]]` table of PRESS-01 with `write`'s fields.
pub fn connector_with_write(
    name: &str,
    kind: &str,
    settings: &str,
    source: &str,
    write: &str,
) -> String {
    format!(
        r#"
[[connector]]
name = "{name}"
kind = "{kind}"
{settings}

[[connector.tag]]
name = "press.state"
map = "state"
equipment = "PRESS-01"
{source}
states = {{ "1" = "running", "2" = "down" }}

[[connector.write]]
equipment = "PRESS-01"
{write}
"#
    )
}

/// Whether `GET /api/v1/connectors` lists `n` connectors, all up.
pub async fn all_up(base: &str, key: &str, n: usize) -> bool {
    connectors(base, key).await["connectors"]
        .as_array()
        .is_some_and(|a| a.len() == n && a.iter().all(|c| c["link"] == "up"))
}

/// Creates an order of `quantity` BRACKET-7 and starts it on `unit` through the API (what the
/// terminal's *Start* does); returns its id.
pub async fn start_order(base: &str, key: &str, unit: &str, quantity: u32) -> String {
    let http = reqwest::Client::new();
    let order: Value = crate::requests::send_json(
        http.post(format!("{base}/api/v1/work-orders")),
        key,
        &serde_json::json!({"material": "BRACKET-7", "planned_quantity": quantity}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    let started = crate::requests::send_json(
        http.post(format!("{base}/api/v1/work-orders/{id}/start")),
        key,
        &serde_json::json!({"work_unit": unit}),
    )
    .await;
    assert_eq!(started.status(), 200, "starting {id} on {unit}");
    id
}

/// How connector `name` wrote order `id` (`writes` of `GET /api/v1/connectors`: `ok`,
/// `error`), once it did (at most `limit`).
pub async fn write_of(base: &str, key: &str, name: &str, id: &str, limit: Duration) -> Value {
    until(
        limit,
        &format!("{name}'s write of {id} recorded"),
        async || {
            connectors(base, key).await["connectors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["name"] == name)
                .flat_map(|c| c["writes"].as_array().cloned().unwrap_or_default())
                .find(|w| w["work_order"] == id)
        },
        Option::is_some,
    )
    .await
    .unwrap_or_default()
}

/// Polls `get` every 50 ms until `ok` holds of its value (at most `limit`); returns the value.
pub async fn until<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    mut get: impl AsyncFnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let v = get().await;
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {limit:?}; last: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most `limit`) until `done` says so.
pub async fn wait_for(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    until(limit, what, async || done().await, |d| *d).await;
}

/// [`until`] on what the edge in `dir` stored.
pub async fn until_stored(
    dir: &Path,
    limit: Duration,
    what: &str,
    ok: impl Fn(&Stored) -> bool,
) -> Stored {
    until(limit, what, async || stored(dir), ok).await
}

/// Runs an async step of a synchronous test (one that drives processes) on a small runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    // The HTTP client needs the workspace's one TLS provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Runs a blocking step (a peer's command, a process) off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A peer process driven over stdin, its stdout read line by line; killed when dropped.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    what: &'static str,
}

impl Peer {
    /// Starts `cmd` with piped stdin and stdout (its stderr as the caller set it).
    pub fn spawn(cmd: &mut Command, what: &'static str) -> Peer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {what}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            stdin,
            lines,
            what,
        }
    }

    /// The next line it prints (at most `limit`).
    pub fn line(&mut self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(l) => l,
            Err(_) => panic!(
                "the {} said nothing within {limit:?} (exited: {:?})",
                self.what,
                self.child.try_wait()
            ),
        }
    }

    /// Sends one line, expecting no particular answer.
    pub fn send_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits (at most `limit`) for a line starting with `prefix`, passing over others;
    /// returns it.
    pub fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let l = self.line(deadline.saturating_duration_since(Instant::now()));
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    /// Sends one command line and checks the line that answers it.
    pub fn command(&mut self, cmd: &str, answer: &str) {
        self.send_line(cmd);
        // A command may take its time (a peer counting a thousand increments).
        let got = self.line(Duration::from_secs(120));
        assert_eq!(got, answer, "the {}'s answer to {cmd}", self.what);
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
