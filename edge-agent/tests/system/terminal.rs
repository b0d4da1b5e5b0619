//! The operator terminal's access rules and API, against the real binary: only `/health`, the
//! page and the badge login are open; a badge session records as its operator; a correction
//! needs a supervisor's PIN, which is set with the CLI, stored hashed and locked after wrong
//! tries; a repeated tap is answered once; the terminal's view shows the order's totals
//! after corrections. (The same page in a real browser: tests/tests/edge/terminal.rs.)

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use crate::support::{
    Harness, SITE, STARTUP_TIMEOUT, bin, event_ids, open_db_read_only, production_count, refused,
};

const TERMINAL_VIEW: &str = "/api/v1/terminal?work_unit=PRESS-01";

/// `edge-agent supervisor-pin set`, the PIN on standard input: (success, stderr).
pub(crate) fn set_pin(h: &Harness, badge: &str, pin: &str) -> (bool, String) {
    let mut child = Command::new(bin())
        .args([
            "supervisor-pin",
            "set",
            "--site",
            SITE,
            "--badge",
            badge,
            "--data-dir",
        ])
        .arg(h.data.db_path().parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edge-agent supervisor-pin set");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{pin}\n").as_bytes())
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        assert!(
            started.elapsed() < STARTUP_TIMEOUT,
            "supervisor-pin set hangs"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A browser-like client without the API key: only cookies and the terminal header.
pub(crate) struct Person {
    http: reqwest::Client,
    pub(crate) cookie: Option<String>,
}

impl Person {
    pub(crate) fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
            cookie: None,
        }
    }

    pub(crate) async fn send(
        &mut self,
        h: &Harness,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let url = h.url(path);
        let mut req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url),
        };
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        if let Some(set) = r.headers().get(SET_COOKIE) {
            let set = set.to_str().unwrap().to_owned();
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Strict"),
                "{set}"
            );
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = if pair.ends_with('=') {
                None
            } else {
                Some(pair)
            };
        }
        let v = if status == StatusCode::NO_CONTENT {
            Value::Null
        } else {
            r.json().await.unwrap_or(Value::Null)
        };
        (status, v)
    }

    /// A terminal's changing request: with the `X-MES-Terminal` header.
    pub(crate) async fn post(
        &mut self,
        h: &Harness,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.send(h, "POST", path, Some(body), &[("x-mes-terminal", "1")])
            .await
    }

    /// A terminal's `DELETE` (a logout, a supervisor stepping away): with the header too.
    pub(crate) async fn delete(&mut self, h: &Harness, path: &str) -> (StatusCode, Value) {
        self.send(h, "DELETE", path, None, &[("x-mes-terminal", "1")])
            .await
    }

    /// Logs in with `badge` (no terminal header needed).
    pub(crate) async fn login(&mut self, h: &Harness, badge: &str) -> (StatusCode, Value) {
        let body = json!({ "badge": badge });
        self.send(h, "POST", "/api/v1/session", Some(body), &[])
            .await
    }

    /// Raises the session with a supervisor's `badge` and `pin`.
    pub(crate) async fn raise(
        &mut self,
        h: &Harness,
        badge: &str,
        pin: &str,
    ) -> (StatusCode, Value) {
        let body = json!({ "badge": badge, "pin": pin });
        self.post(h, "/api/v1/session/supervisor", body).await
    }
}

#[tokio::test]
async fn only_health_the_page_and_the_login_are_open() {
    let h = Harness::start("terminal-open");
    let anon = reqwest::Client::new();
    for path in [
        "/health",
        "/",
        "/assets/app.js",
        "/assets/app.css",
        "/assets/i18n/de.json",
    ] {
        let r = anon.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let page = anon.get(h.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let gets = [
        "/metrics",
        "/api/v1/sync/status",
        "/api/v1/conflicts",
        "/api/v1/terminal?work_unit=PRESS-01",
        "/api/v1/master-data/equipment",
        "/api/v1/work-orders",
        "/api/v1/events",
        "/api/v1/session",
    ];
    for path in gets {
        let r = anon.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "GET {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], json!("unauthorized"), "GET {path}: {v}");
    }
    for path in [
        "/api/v1/events",
        "/api/v1/work-orders",
        "/api/v1/work-orders/SITE_001-WO-1/start",
        "/api/v1/session/supervisor",
        "/api/v1/conflicts/1/resolve",
    ] {
        let r = anon
            .post(h.url(path))
            .json(&production_count(1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "POST {path}");
    }
    // A made-up session cookie is no session.
    let r = anon
        .get(h.url("/api/v1/terminal?work_unit=PRESS-01"))
        .header(COOKIE, "mes_session=0123456789abcdef")
        .send()
        .await
        .unwrap();
    refused(r, StatusCode::UNAUTHORIZED, "session_ended").await;
    assert_eq!(h.events_in_db(), 0);
}

#[tokio::test]
async fn a_badge_session_records_as_its_operator() {
    let h = Harness::start("terminal-session");
    let mut p = Person::new();
    let (s, v) = p.login(&h, "NOBODY").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"]["code"], json!("unknown_badge"));
    assert!(v["error"]["message"].as_str().unwrap().contains("NOBODY"));
    let (s, v) = p.login(&h, "B1").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], json!("Olga Operator"));
    // The role is not shown: a login must not tell who is a supervisor.
    assert!(v.get("role").is_none(), "{v}");
    assert!(p.cookie.is_some());
    let metrics = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("edge_terminal_sessions 1"), "{metrics}");

    // A changing request without the terminal header is refused (cross-site forms cannot
    // set it), and stores nothing.
    let (s, v) = p
        .send(&h, "POST", "/api/v1/events", Some(production_count(3)), &[])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(h.events_in_db(), 0);

    // The operator is the badge's, whatever the body claims.
    let mut body = production_count(3);
    body["operator"] = json!("SOMEONE-ELSE");
    let (s, v) = p.post(&h, "/api/v1/events", body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = event_ids(&v)[0].clone();
    let (_, listed) = p
        .send(&h, "GET", "/api/v1/events?type=production_count", None, &[])
        .await;
    assert_eq!(listed["events"][0]["event_id"], json!(id));
    assert_eq!(listed["events"][0]["operator"], json!("B1"));

    // A correction needs a supervisor.
    let (s, v) = p
        .post(
            &h,
            "/api/v1/events",
            json!({"type": "correction", "corrects": id, "note": "miscounted"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], json!("supervisor_required"));
    assert_eq!(h.events_in_db(), 1);

    // Pick lists, but not the personnel list.
    let (s, v) = p
        .send(&h, "GET", "/api/v1/master-data/reason-codes", None, &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["records"].as_array().unwrap().len(), 3, "{v}");
    let (s, _) = p
        .send(&h, "GET", "/api/v1/master-data/personnel", None, &[])
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Bad query strings and ids are JSON errors, not plain-text rejections.
    for (path, status, code) in [
        ("/api/v1/terminal", StatusCode::BAD_REQUEST, "invalid_query"),
        (
            "/api/v1/events?limit=many",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/api/v1/terminal?work_unit=NOPE",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
        ),
    ] {
        let (s, v) = p.send(&h, "GET", path, None, &[]).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {v}"
        );
    }
    let (s, v) = p
        .post(
            &h,
            "/api/v1/conflicts/abc/resolve",
            json!({"state": "ended"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Logging out ends the session.
    let (s, _) = p.delete(&h, "/api/v1/session").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = p.send(&h, "GET", "/api/v1/session", None, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A person of another site is not known here.
    let (s, _) = p.login(&h, "X9").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn supervisor_pins_are_hashed_checked_and_locked() {
    let h = Harness::start("terminal-pin");
    // The CLI refuses what is not a PIN, and badges that are not supervisors.
    let (ok, err) = set_pin(&h, "S1", "12");
    assert!(!ok && err.contains("4 to 12 digits"), "{err}");
    let (ok, err) = set_pin(&h, "B1", "4711");
    assert!(!ok && err.contains("not a supervisor"), "{err}");
    let (ok, err) = set_pin(&h, "S1", "4711");
    assert!(ok, "{err}");
    let (ok, err) = set_pin(&h, "S2", "93105");
    assert!(ok, "{err}");
    // Stored as a salted hash: not the PIN, and two PINs have different salts.
    {
        let db = open_db_read_only(&h.data.db_path());
        let rows: Vec<(String, Vec<u8>, Vec<u8>, i64)> = db
            .prepare("SELECT badge, salt, hash, iterations FROM pins ORDER BY badge")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        for (_, salt, hash, n) in &rows {
            assert_eq!((salt.len(), hash.len()), (16, 32));
            assert!(*n >= 100_000);
            assert!(!hash.windows(4).any(|w| w == b"4711"));
        }
        assert_ne!(rows[0].1, rows[1].1);
    }

    let mut p = Person::new();
    let (s, _) = p.login(&h, "B1").await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, v) = p.post(&h, "/api/v1/events", production_count(5)).await;
    let counted = event_ids(&v)[0].clone();

    // Five wrong PINs lock S1; then even the right one is refused for a while.
    for i in 1..=5 {
        let (s, v) = p.raise(&h, "S1", "0000").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "try {i}: {v}");
        assert_eq!(v["error"]["code"], json!("wrong_pin"));
    }
    let (s, v) = p.raise(&h, "S1", "4711").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], json!("pin_locked"));
    // An operator's badge is no supervisor, whatever the PIN.
    let (s, _) = p.raise(&h, "B1", "4711").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // S2 with the right PIN raises the session; the correction is S2's.
    let (s, v) = p.raise(&h, "S2", "93105").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["supervisor"]["badge"], json!("S2"));
    let (s, v) = p
        .post(
            &h,
            "/api/v1/events",
            json!({"type": "correction", "corrects": counted, "note": "was 4",
                   "replacement": {"type": "production_count", "equipment": "PRESS-01", "good": 4}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, listed) = p
        .send(&h, "GET", "/api/v1/events?type=correction", None, &[])
        .await;
    assert_eq!(listed["events"][0]["operator"], json!("S2"));
    let (_, listed) = p
        .send(&h, "GET", "/api/v1/events?type=production_count", None, &[])
        .await;
    assert_eq!(
        listed["events"][0]["in_force"]["good"],
        json!(4),
        "{listed}"
    );
    // When the supervisor steps away, corrections are refused again.
    let (s, _) = p.delete(&h, "/api/v1/session/supervisor").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = p
        .post(
            &h,
            "/api/v1/events",
            json!({"type": "correction", "corrects": counted}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_repeated_tap_is_answered_once_and_totals_follow_corrections() {
    let h = Harness::start("terminal-idem");
    let (s, v) = h
        .post(
            "/api/v1/work-orders",
            &json!({"id": "SITE_001-WO-7", "material": "BRACKET-7", "planned_quantity": 40,
                    "work_unit": "PRESS-01"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The same start twice with one key: the same answer twice, not a 409 the second time.
    let start = || {
        h.client
            .post(h.url("/api/v1/work-orders/SITE_001-WO-7/start"))
            .header("idempotency-key", "tap-1")
            .json(&json!({"work_unit": "PRESS-01"}))
            .send()
    };
    let first = start().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let second = start().await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first["state"], json!("running"));
    // Without a key, a second start is the illegal transition it is.
    let (s, _) = h
        .post("/api/v1/work-orders/SITE_001-WO-7/start", &json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    let count = |good: u32, scrap: u32| {
        let mut c = json!({"type": "production_count", "equipment": "PRESS-01",
                           "work_order": "SITE_001-WO-7", "good": good, "scrap": scrap});
        if scrap > 0 {
            c["scrap_reason"] = json!("SCRAP.BURR");
        }
        c
    };
    let (s, v) = h.post_events(&count(5, 1)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let first_count = event_ids(&v)[0].clone();
    let (s, v) = h.post_events(&count(3, 0)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let v = h.get(TERMINAL_VIEW).await.1;
    assert_eq!(v["active"]["id"], json!("SITE_001-WO-7"), "{v}");
    assert_eq!(
        (v["active"]["good"].clone(), v["active"]["scrap"].clone()),
        (json!(8), json!(1))
    );
    // Two corrections of the same count: the later one stands.
    for good in [2, 1] {
        let (s, v) = h
            .post_events(&json!({"type": "correction", "corrects": first_count,
                                 "replacement": {"type": "production_count", "equipment": "PRESS-01",
                                                 "work_order": "SITE_001-WO-7", "good": good}}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let v = h.get(TERMINAL_VIEW).await.1;
    assert_eq!(
        (v["active"]["good"].clone(), v["active"]["scrap"].clone()),
        (json!(4), json!(0))
    );
    // Completing carries the totals into the shared record.
    let (s, v) = h
        .post("/api/v1/work-orders/SITE_001-WO-7/complete", &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["good_count"].clone(), v["scrap_count"].clone()),
        (json!(4), json!(0))
    );
    let v = h.get(TERMINAL_VIEW).await.1;
    assert_eq!(v["active"], Value::Null);
    assert_eq!(v["sync"]["hub_configured"], json!(false));
}
