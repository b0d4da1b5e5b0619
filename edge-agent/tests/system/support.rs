//! The harness: temporary data directories, the real `edge-agent` process, an HTTP client
//! carrying the API key, and read-only access to the agent's SQLite file.
//!
//! A data directory is prepared the way an operator would prepare one, with the binary's own
//! `api-key create` and `import-master-data` subcommands. The agent is started with
//! `--http-listen 127.0.0.1:0` and its address is taken from the one line `run` prints on
//! stdout; a process that never prints it fails the test with its stderr. Every process the
//! harness starts is bounded in time and killed when its handle is dropped, so a failing test
//! leaves nothing running.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

/// The site every test agent runs as.
pub(crate) const SITE: &str = "SITE_001";
/// How long `run` may take to print its listening line, and a CLI subcommand to finish.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound of any single HTTP request a test makes.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The prefix of the one line `edge-agent run` prints once it serves.
const LISTENING_PREFIX: &str = "edge-agent listening on ";

/// A directory under the system temp dir with a name no other test (or test run) uses,
/// removed with everything in it when dropped.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(label: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "edge-agent-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edge-agent")
}

/// The master data every test agent knows: two materials, a site with two presses, and a small
/// reason tree (a downtime parent with a leaf, and a quality reason), an operator and two
/// supervisors of this site and a person of another site.
pub(crate) fn master_data() -> Value {
    json!({
        "materials": [
            {"id": "BRACKET-7", "name": "Bracket", "unit": "pcs", "tracking": "lot"},
            {"id": "STEEL-S235", "name": "Steel coil S235", "unit": "kg", "tracking": "lot"}
        ],
        "routings": [
            {"material": "BRACKET-7", "version": 1, "seq": 10, "operation_code": "PRESS",
             "work_center_class": "press", "ideal_cycle_time_ms": 2000, "setup_time_ms": 0}
        ],
        "reason_codes": [
            {"code": "DOWN", "parent": null, "name": "Down", "loss_category": "unplanned",
             "counts_against_availability": true},
            {"code": "DOWN.JAM", "parent": "DOWN", "name": "Jam", "loss_category": "unplanned",
             "counts_against_availability": true},
            {"code": "SCRAP.BURR", "parent": null, "name": "Burr", "loss_category": "quality",
             "counts_against_availability": false}
        ],
        "equipment": [
            {"id": "SITE_001", "parent": null, "level": "site", "name": "Plant", "class": "site"},
            {"id": "PRESS-01", "parent": "SITE_001", "level": "work_unit", "name": "Press 1",
             "class": "press"},
            {"id": "PRESS-02", "parent": "SITE_001", "level": "work_unit", "name": "Press 2",
             "class": "press"}
        ],
        "shift_calendars": [],
        "personnel": [
            {"badge": "B1", "site_id": "SITE_001", "name": "Olga Operator", "role": "operator"},
            {"badge": "S1", "site_id": "SITE_001", "name": "Sam Supervisor", "role": "supervisor"},
            {"badge": "S2", "site_id": "SITE_001", "name": "Sue Supervisor", "role": "supervisor"},
            {"badge": "X9", "site_id": "SITE_002", "name": "Elsewhere", "role": "supervisor"}
        ]
    })
}

/// Runs one CLI subcommand to completion within [`STARTUP_TIMEOUT`] and returns its stdout;
/// a non-zero exit or a timeout fails the test with the subcommand's stderr.
pub(crate) fn run_cli<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let mut child = Command::new(bin())
        .args(&args)
        .spawn_edge("spawn edge-agent");
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let status = wait_bounded(&mut child, STARTUP_TIMEOUT);
    let out = stdout.join().expect("stdout reader");
    let err = stderr.join().expect("stderr reader");
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("edge-agent {args:?} exited with {s}\nstdout: {out}\nstderr: {err}"),
        None => panic!("edge-agent {args:?} did not finish in {STARTUP_TIMEOUT:?}\nstderr: {err}"),
    }
}

/// Removes the `EDGE_*` variables a developer's shell may set, so that only the flags a test
/// passes configure the agent.
/// `spawn_edge` starts the agent that way, stdin closed and its output piped.
trait EnvClearEdge {
    fn env_clear_edge(&mut self) -> &mut Self;
    fn spawn_edge(&mut self, what: &str) -> Child;
}

impl EnvClearEdge for Command {
    fn env_clear_edge(&mut self) -> &mut Self {
        for var in [
            "EDGE_SITE",
            "EDGE_DATA_DIR",
            "EDGE_HTTP_LISTEN",
            "EDGE_HUB",
            "EDGE_RETENTION_DAYS",
            "EDGE_CONFIG",
        ] {
            self.env_remove(var);
        }
        self
    }

    fn spawn_edge(&mut self, what: &str) -> Child {
        self.env_clear_edge()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect(what)
    }
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` to exit, killing it if it is still running after `limit`. `None` means
/// it had to be killed.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A data directory prepared for `run`: an API key named `tests` and the master data of
/// [`master_data`] imported.
#[derive(Debug)]
pub(crate) struct DataDir {
    data: PathBuf,
    key: String,
    // Declared last so it is removed after everything else is done with the directory.
    _tmp: TempDir,
}

impl DataDir {
    pub(crate) fn prepare(label: &str) -> Self {
        let tmp = TempDir::new(label);
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).expect("create data dir");

        let key_out = run_cli([
            OsStr::new("api-key"),
            OsStr::new("create"),
            OsStr::new("--data-dir"),
            data.as_os_str(),
            OsStr::new("--name"),
            OsStr::new("tests"),
        ]);
        let key = key_out.trim().to_owned();
        assert!(
            !key.is_empty() && !key.contains(char::is_whitespace),
            "`api-key create` should print exactly the key on stdout, printed {key_out:?}"
        );

        let master = tmp.path().join("master.json");
        std::fs::write(&master, serde_json::to_vec_pretty(&master_data()).unwrap())
            .expect("write master data file");
        run_cli([
            OsStr::new("import-master-data"),
            master.as_os_str(),
            OsStr::new("--data-dir"),
            data.as_os_str(),
        ]);

        Self {
            data,
            key,
            _tmp: tmp,
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.data.join("edge.db")
    }

    pub(crate) fn start(&self) -> Agent {
        Agent::start(&self.data)
    }
}

/// A running `edge-agent run` process, SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Agent {
    child: Child,
    base_url: String,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts the agent on `data_dir` and waits (at most [`STARTUP_TIMEOUT`]) for its
    /// listening line.
    pub(crate) fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(bin())
            .arg("run")
            .arg("--site")
            .arg(SITE)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .spawn_edge("spawn edge-agent run");

        // Stderr is collected for the whole life of the process so a failure can show it.
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let sink = Arc::clone(&stderr);
            let pipe = child.stderr.take().expect("stderr piped");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        // Stdout is read to the end so the agent never blocks on a full pipe; lines go to the
        // starting thread until it has the one it waits for.
        let (tx, rx) = mpsc::channel::<String>();
        {
            let pipe = child.stdout.take().expect("stdout piped");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
        }

        let mut agent = Self {
            child,
            base_url: String::new(),
            stderr,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix(LISTENING_PREFIX) {
                        assert!(
                            url.starts_with("http://127.0.0.1:"),
                            "listening line names an unexpected address: {line:?}"
                        );
                        agent.base_url = url.trim_end_matches('/').to_owned();
                        return agent;
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    agent.kill();
                    let text = agent.stderr_text_after_exit();
                    panic!(
                        "edge-agent run did not print its listening line within {STARTUP_TIMEOUT:?}\n\
                         stdout: {seen:?}\nstderr:\n{text}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_bounded(&mut agent.child, Duration::from_secs(5));
                    // Give the stderr reader a moment to reach the end of the closed pipe.
                    let text = agent.stderr_text_after_exit();
                    panic!(
                        "edge-agent run exited ({status:?}) before printing its listening line\n\
                         stdout: {seen:?}\nstderr:\n{text}"
                    );
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// SIGKILL (what `Child::kill` sends on unix) and reap. Idempotent.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, the polite stop of the contract. `std` has no portable way to send it, so the
    /// `kill` utility does.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits at most `limit` for the process to exit by itself; `None` if it had to be killed.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_bounded(&mut self.child, limit)
    }

    /// What the agent wrote on stderr so far.
    pub(crate) fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stderr_text_after_exit(&self) -> String {
        // The reader thread ends at EOF, which follows the exit; poll for its last lines
        // for a bounded time rather than racing it.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.stderr_text();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.stderr_text();
            if now == last && !now.is_empty() {
                break;
            }
            last = now;
        }
        last
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// reqwest is compiled with `rustls-no-provider`; building a client panics unless a process
/// default crypto provider exists, even though the tests only speak plain HTTP.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with the crypto provider installed and the tests' request timeout.
fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT)
}

/// A client builder that sends `key` as a bearer token on every request.
fn keyed_builder(key: &str) -> reqwest::ClientBuilder {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).expect("key is a valid header value"),
    );
    builder().default_headers(headers)
}

/// A client that sends `key` as a bearer token on every request.
pub(crate) fn client(key: &str) -> reqwest::Client {
    keyed_builder(key).build().expect("build http client")
}

/// Like [`client`], but every request goes on a new connection, so one request's effect on
/// a kept-alive connection cannot leak into the next.
pub(crate) fn unpooled_client(key: &str) -> reqwest::Client {
    keyed_builder(key)
        .pool_max_idle_per_host(0)
        .build()
        .expect("build http client")
}

/// A client without any key.
pub(crate) fn anonymous_client() -> reqwest::Client {
    builder().build().expect("build http client")
}

/// Reads a response as `(status, JSON body)`; a body that is not JSON fails the test with
/// the text, since the contract says every answer of the API is JSON.
pub(crate) async fn json_response(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("read response body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status} response is not JSON ({e}): {text:?}"));
    (status, value)
}

/// The `name=value` of the session cookie a login answer sets, as a browser sends it back.
pub(crate) fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// Asserts that `resp` refused the request with `status` and the error `code`; returns the body.
pub(crate) async fn refused(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], json!(code), "{v}");
    v
}

/// Asserts the error body shape of the contract and returns `(code, field)`.
pub(crate) fn error_parts(body: &Value) -> (String, Option<String>) {
    let err = body
        .get("error")
        .unwrap_or_else(|| panic!("error body without \"error\": {body}"));
    let code = err["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a string code: {body}"))
        .to_owned();
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
    let field = err.get("field").and_then(Value::as_str).map(str::to_owned);
    (code, field)
}

/// One agent on a prepared data directory, with a keyed client: what most API tests need.
#[derive(Debug)]
pub(crate) struct Harness {
    // Field order is drop order: the process dies before its directory is removed.
    pub(crate) agent: Agent,
    pub(crate) client: reqwest::Client,
    pub(crate) data: DataDir,
}

impl Harness {
    pub(crate) fn start(label: &str) -> Self {
        let data = DataDir::prepare(label);
        let agent = data.start();
        let client = client(data.key());
        Self {
            agent,
            client,
            data,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        self.agent.url(path)
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nagent stderr:\n{}", self.stderr()));
        json_response(resp).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}\nagent stderr:\n{}", self.stderr()));
        json_response(resp).await
    }

    /// `POST /api/v1/events` with a JSON body; returns the status and body.
    pub(crate) async fn post_events(&self, body: &Value) -> (StatusCode, Value) {
        self.post("/api/v1/events", body).await
    }

    pub(crate) async fn sync_status(&self) -> Value {
        let (status, body) = self.get("/api/v1/sync/status").await;
        assert_eq!(status, StatusCode::OK, "sync status: {body}");
        body
    }

    pub(crate) fn events_in_db(&self) -> i64 {
        events_count(&self.data.db_path())
    }

    pub(crate) fn stderr(&self) -> String {
        self.agent.stderr_text()
    }
}

/// Opens the agent's database read-only, as a second process would while the agent runs.
pub(crate) fn open_db_read_only(path: &Path) -> Connection {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(10))
        .expect("set busy timeout");
    conn
}

/// `SELECT count(*) FROM events`.
pub(crate) fn events_count(db: &Path) -> i64 {
    open_db_read_only(db)
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count events")
}

/// The event ids of a `201` answer.
pub(crate) fn event_ids(body: &Value) -> Vec<String> {
    body["event_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("201 body without an event_ids array: {body}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("event id is not a string: {body}"))
                .to_owned()
        })
        .collect()
}

/// A valid `production_count` event on PRESS-01.
pub(crate) fn production_count(good: u32) -> Value {
    json!({"type": "production_count", "equipment": "PRESS-01", "good": good})
}
