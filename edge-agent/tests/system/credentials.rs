//! Credentials at the edge: an API key revoked with the CLI while the agent runs stops working
//! within 2 s; supervisor PINs resist guessing: wrong PINs are counted per badge in the store
//! (a restart or a flood of made-up badges does not clear a lock), locks grow longer (with an
//! injected clock), and neither the login nor the PIN check tells a supervisor's badge from an
//! operator's (same answers, same locks, same time).

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use edge_agent::api::{AppState, Clock};
use reqwest::StatusCode;
use reqwest::header::COOKIE;
use serde_json::{Value, json};
use shared_model::{BadgeId, SiteId, Timestamp};

use crate::support::{
    Harness, SITE, TempDir, anonymous_client, bin, client, master_data, open_db_read_only, refused,
    run_cli, session_cookie,
};
use crate::terminal::{Person, set_pin};

/// What the issue demands of a revocation, and what the agent promises (its key cache).
const REVOKED_WITHIN: Duration = Duration::from_secs(5);
const KEY_RECHECK: Duration = Duration::from_secs(2);

/// `edge-agent ARGS`: (success, stdout, stderr).
fn cli(args: &[&OsStr]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run edge-agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn data_dir(h: &Harness) -> std::path::PathBuf {
    h.data.db_path().parent().unwrap().to_path_buf()
}

fn create_key(h: &Harness, name: &str) -> String {
    let dir = data_dir(h);
    run_cli([
        OsStr::new("api-key"),
        OsStr::new("create"),
        OsStr::new("--data-dir"),
        dir.as_os_str(),
        OsStr::new("--name"),
        OsStr::new(name),
    ])
    .trim()
    .to_owned()
}

fn key_cli(h: &Harness, command: &str, name: Option<&str>) -> (bool, String, String) {
    let dir = data_dir(h);
    let mut args = vec![OsStr::new("api-key"), OsStr::new(command)];
    if let Some(n) = name {
        args.push(OsStr::new(n));
    }
    args.extend([OsStr::new("--data-dir"), dir.as_os_str()]);
    cli(&args)
}

async fn status_with(h: &Harness, key: &str) -> StatusCode {
    client(key)
        .get(h.url("/api/v1/sync/status"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_key_revoked_with_the_cli_is_refused_by_the_running_agent_within_2_s() {
    let h = Harness::start("cred-revoke");
    // Keys made while the agent runs, as a field engineer would on the box.
    let gateway = create_key(&h, "gateway-7");
    let plc = create_key(&h, "plc-3");
    assert_eq!(status_with(&h, &gateway).await, StatusCode::OK);
    assert_eq!(status_with(&h, &plc).await, StatusCode::OK);

    // The worst case: a key seen valid just before its revocation and not used since.
    let (ok, out, err) = key_cli(&h, "revoke", Some("plc-3"));
    assert!(ok, "revoke failed: {out} {err}");
    let revoked = Instant::now();
    tokio::time::sleep(KEY_RECHECK + Duration::from_millis(50)).await;
    assert_eq!(
        status_with(&h, &plc).await,
        StatusCode::UNAUTHORIZED,
        "a revoked key still worked {:?} after `api-key revoke`",
        revoked.elapsed()
    );

    // A key in constant use (a request every 10 ms): how long from the revocation (the
    // start of the CLI, before its commit) until the first refusal.
    let poller = {
        let (http, url) = (client(&gateway), h.url("/api/v1/sync/status"));
        tokio::spawn(async move {
            loop {
                let s = http.get(&url).send().await.unwrap().status();
                if s == StatusCode::UNAUTHORIZED {
                    return Instant::now();
                }
                assert_eq!(s, StatusCode::OK);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poller.is_finished());
    let revoked = Instant::now();
    let (ok, out, err) = key_cli(&h, "revoke", Some("gateway-7"));
    assert!(ok, "revoke failed: {out} {err}");
    let refused = tokio::time::timeout(REVOKED_WITHIN, poller)
        .await
        .expect("the revoked key still works after 5 s")
        .unwrap();
    let refused_after = refused - revoked;
    eprintln!(
        "FIGURE edge_key_revoked_refused_after_ms {}",
        refused_after.as_millis()
    );
    assert!(
        refused_after <= KEY_RECHECK + Duration::from_millis(500),
        "refused only after {refused_after:?}"
    );
    // Refused for good, and the other keys work on.
    for _ in 0..3 {
        assert_eq!(status_with(&h, &gateway).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(status_with(&h, h.data.key()).await, StatusCode::OK);

    // `list` shows every key, live or revoked, never the key itself.
    let (ok, out, err) = key_cli(&h, "list", None);
    assert!(ok, "list failed: {err}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    assert!(row("gateway-7").trim_end().ends_with('Z'), "{out}");
    assert!(row("plc-3").trim_end().ends_with('Z'), "{out}");
    assert!(row("tests").trim_end().ends_with(" -"), "{out}");
    assert!(
        !out.contains(&gateway) && !out.contains(&gateway[5..]),
        "{out}"
    );
    assert!(err.contains("3 key(s), 1 live"), "{err}");
    // Revoking what is not there (any more) is an error that says so.
    let (ok, _, err) = key_cli(&h, "revoke", Some("gateway-7"));
    assert!(!ok);
    assert!(err.contains("no live API key named \"gateway-7\""), "{err}");
}

async fn login(h: &Harness, p: &mut Person, badge: &str) -> Value {
    let (s, v) = p.login(h, badge).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

/// `n` wrong PINs for `badge`, each refused as wrong.
async fn wrong_pins(h: &Harness, p: &mut Person, badge: &str, n: usize) {
    for _ in 0..n {
        let (s, v) = p.raise(h, badge, "0000").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    }
}

#[tokio::test]
async fn wrong_pins_and_a_lock_survive_a_restart() {
    let mut h = Harness::start("cred-restart");
    assert!(set_pin(&h, "S1", "4711").0);
    assert!(set_pin(&h, "S2", "93105").0);
    let mut p = Person::new();
    login(&h, &mut p, "B1").await;
    wrong_pins(&h, &mut p, "S1", 5).await;
    wrong_pins(&h, &mut p, "S2", 3).await;
    let (s, v) = p.raise(&h, "S1", "4711").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");

    h.agent.kill();
    h.agent = h.data.start();
    let mut p = Person::new();
    login(&h, &mut p, "B1").await;
    // Still locked, with the time left.
    let (s, v) = p.raise(&h, "S1", "4711").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], json!("pin_locked"));
    let left = v["error"]["retry_after_seconds"].as_u64().unwrap();
    assert!((1..=300).contains(&left), "{v}");
    // S2's three wrong PINs were kept too: two more lock it.
    let (s, v) = p.raise(&h, "S2", "0000").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(1 tries left)"),
        "{v}"
    );
    let (_, v) = p.raise(&h, "S2", "0000").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked for 5 min"),
        "{v}"
    );
    assert_eq!(
        p.raise(&h, "S2", "93105").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_flood_of_made_up_badges_leaves_the_target_locked() {
    let h = Harness::start("cred-flood");
    assert!(set_pin(&h, "S1", "4711").0);
    let mut p = Person::new();
    login(&h, &mut p, "B1").await;
    wrong_pins(&h, &mut p, "S1", 5).await;
    assert_eq!(
        p.raise(&h, "S1", "4711").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // More made-up badges than any in-memory table of failures would keep.
    const FLOOD: usize = 12_000;
    const IN_FLIGHT: usize = 32;
    let cookie = p.cookie.clone().unwrap();
    let http = reqwest::Client::new();
    let url = h.url("/api/v1/session/supervisor");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..IN_FLIGHT {
        let (http, url, cookie) = (http.clone(), url.clone(), cookie.clone());
        tasks.spawn(async move {
            let mut i = worker;
            while i < FLOOD {
                let r = http
                    .post(&url)
                    .header(COOKIE, &cookie)
                    .header("x-mes-terminal", "1")
                    .json(&json!({"badge": format!("FLOOD-{i}"), "pin": "0000"}))
                    .send()
                    .await
                    .unwrap();
                refused(r, StatusCode::UNAUTHORIZED, "wrong_pin").await;
                i += IN_FLIGHT;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eprintln!(
        "FIGURE edge_pin_flood_made_up_badges {FLOOD} in {} ms",
        started.elapsed().as_millis()
    );

    let (s, v) = p.raise(&h, "S1", "4711").await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "the flood unlocked S1: {v}"
    );
    // Made-up badges left no rows: the table holds the personnel's badges only.
    let rows: i64 = open_db_read_only(&h.data.db_path())
        .query_row("SELECT count(*) FROM pin_failures", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

/// A clock the test moves.
#[derive(Debug)]
struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::SeqCst))
    }
}

impl TestClock {
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_micros() as i64, Ordering::SeqCst);
    }
}

/// The agent's router in this process on a real socket, its store a real SQLite file with
/// [`master_data`] and the PINs given, its clock [`TestClock`].
struct InProcess {
    base: String,
    clock: Arc<TestClock>,
    http: reqwest::Client,
    cookie: std::sync::Mutex<String>,
    _server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl InProcess {
    async fn start(label: &str, pins: &[(&str, &str)]) -> Self {
        let dir = TempDir::new(label);
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let site = SiteId::new(SITE).unwrap();
        {
            let master = dir.path().join("master.json");
            std::fs::write(&master, master_data().to_string()).unwrap();
            let records = edge_agent::master::read_file(&master).unwrap();
            let mut conn =
                edge_agent::store::open_write_connection(&data.join(edge_agent::store::DB_FILE))
                    .unwrap();
            edge_agent::master::import(&mut conn, &records).unwrap();
            for (badge, pin) in pins {
                edge_agent::store::people::set_pin(
                    &conn,
                    &site,
                    &BadgeId::new(*badge).unwrap(),
                    pin,
                    0,
                )
                .unwrap();
            }
        }
        let store = edge_agent::store::Store::open(&data, site, Arc::default()).unwrap();
        // 2027-01-15T08:00:00Z; nothing depends on the date, only on the clock moving.
        let clock = Arc::new(TestClock(AtomicI64::new(1_800_000_000_000_000)));
        let state = AppState::new(store, clock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = edge_agent::api::router(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let edge = Self {
            base,
            clock,
            http: anonymous_client(),
            cookie: std::sync::Mutex::default(),
            _server: server,
            _dir: dir,
        };
        edge.start_session().await;
        edge
    }

    /// A badge login of the operator B1: the session the PIN checks are made from.
    async fn start_session(&self) {
        let r = self
            .http
            .post(format!("{}/api/v1/session", self.base))
            .json(&json!({"badge": "B1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        *self.cookie.lock().unwrap() = session_cookie(&r);
    }

    fn cookie(&self) -> String {
        self.cookie.lock().unwrap().clone()
    }

    async fn raise(&self, badge: &str, pin: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/session/supervisor", self.base))
            .header(COOKIE, self.cookie())
            .header("x-mes-terminal", "1")
            .json(&json!({"badge": badge, "pin": pin}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let v: Value = r.json().await.unwrap();
        if let Some(retry) = retry {
            assert_eq!(
                json!(retry.parse::<u64>().unwrap()),
                v["error"]["retry_after_seconds"]
            );
        }
        (status, v)
    }

    async fn login(&self, badge: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/session", self.base))
            .json(&json!({"badge": badge}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// Five wrong PINs for `badge`, counted from zero; returns the last answer's message
    /// (the lock).
    async fn lock(&self, badge: &str) -> String {
        for i in 1..=4 {
            let (s, v) = self.raise(badge, "0000").await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "try {i}: {v}");
            let left = format!("({} tries left)", 5 - i);
            assert!(
                v["error"]["message"].as_str().unwrap().contains(&left),
                "try {i}: {v}"
            );
        }
        let (s, v) = self.raise(badge, "0000").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        v["error"]["message"].as_str().unwrap().to_owned()
    }

    /// Seconds the badge stays locked (`None`: not locked), asked with its right PIN,
    /// which must not unlock it.
    async fn locked_for(&self, badge: &str, right_pin: &str) -> Option<u64> {
        let (s, v) = self.raise(badge, right_pin).await;
        match s {
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(v["error"]["code"], json!("pin_locked"));
                Some(v["error"]["retry_after_seconds"].as_u64().unwrap())
            }
            StatusCode::OK => {
                // The right PIN raised the session: lower it again for the next check.
                let r = self
                    .http
                    .delete(format!("{}/api/v1/session/supervisor", self.base))
                    .header(COOKIE, self.cookie())
                    .header("x-mes-terminal", "1")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                None
            }
            other => panic!("{other}: {v}"),
        }
    }
}

#[tokio::test]
async fn locks_grow_longer_and_a_right_pin_or_a_quiet_day_starts_over() {
    let edge = InProcess::start("cred-escalate", &[("S1", "4711")]).await;
    let min = |m: u64| Duration::from_secs(m * 60);
    for (lock, minutes) in [5u64, 15, 60, 240, 240].into_iter().enumerate() {
        let message = edge.lock("S1").await;
        assert!(
            message.contains(&format!("locked for {minutes} min")),
            "lock {}: {message}",
            lock + 1
        );
        assert_eq!(edge.locked_for("S1", "4711").await, Some(minutes * 60));
        edge.clock.advance(min(minutes) - Duration::from_secs(1));
        assert_eq!(edge.locked_for("S1", "4711").await, Some(1));
        // Over: the next wrong PINs count from zero, toward a longer lock.
        edge.clock.advance(Duration::from_secs(1));
    }
    // A right PIN starts over: the next lock is 5 min again.
    assert_eq!(edge.locked_for("S1", "4711").await, None);
    assert!(edge.lock("S1").await.contains("locked for 5 min"));
    assert!(edge.locked_for("S1", "4711").await.is_some());
    // So does a day without a wrong PIN after a lock.
    edge.clock.advance(min(5) + Duration::from_secs(24 * 3600));
    edge.start_session().await;
    assert!(edge.lock("S1").await.contains("locked for 5 min"));
}

#[tokio::test]
async fn neither_the_login_nor_the_pin_check_tells_who_is_a_supervisor() {
    // S1 has a PIN, S2 is a supervisor without one, B1 an operator.
    let edge = InProcess::start("cred-reveal", &[("S1", "4711")]).await;
    for badge in ["B1", "S1"] {
        let (s, v) = edge.login(badge).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["badge", "name", "site_id", "supervisor"],
            "{badge}: {v}"
        );
    }
    // The same answers, word for word but the badge, try after try, up to the lock; the
    // badges take turns, so that other load slows them alike.
    let badges = ["S1", "S2", "B1"];
    let mut answers: Vec<Vec<(StatusCode, String)>> = vec![Vec::new(); 3];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    for _ in 0..6 {
        for (i, badge) in badges.iter().enumerate() {
            let started = Instant::now();
            let (s, v) = edge.raise(badge, "0000").await;
            times[i].push(started.elapsed());
            let mut e = v["error"].clone();
            e["message"] = json!(e["message"].as_str().unwrap().replace(badge, "BADGE"));
            if let Some(r) = e.get_mut("retry_after_seconds") {
                assert_eq!(*r, json!(300));
            }
            answers[i].push((s, e.to_string()));
        }
    }
    assert_eq!(
        answers[0], answers[1],
        "a supervisor without a PIN answers otherwise"
    );
    assert_eq!(answers[0], answers[2], "an operator answers otherwise");
    assert_eq!(
        answers[0][5].0,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        answers[0]
    );
    // The same work: a badge without a PIN runs PBKDF2 like a wrong PIN does. Compared are
    // the fastest of the four checked tries of each (the fifth locks, the sixth is refused
    // unchecked): the floor of the work, which other load can only raise.
    let floor = |t: &[Duration]| t[..4].iter().min().copied().unwrap();
    let (s1, s2, b1) = (floor(&times[0]), floor(&times[1]), floor(&times[2]));
    eprintln!(
        "FIGURE edge_pin_check_ms supervisor_wrong_pin {:.1} supervisor_without_pin {:.1} operator {:.1}",
        s1.as_secs_f64() * 1e3,
        s2.as_secs_f64() * 1e3,
        b1.as_secs_f64() * 1e3
    );
    assert!(
        s2 * 2 > s1 && b1 * 2 > s1,
        "a badge without a PIN answers faster: {s1:?} {s2:?} {b1:?}"
    );
    assert!(s1 * 2 > s2 && s1 * 2 > b1, "{s1:?} {s2:?} {b1:?}");
}
