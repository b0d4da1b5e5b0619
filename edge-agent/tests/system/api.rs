//! The local HTTP API over real HTTP, checked against `docs/edge-api.md`.
//!
//! Each test starts its own agent on a fresh data directory (see `support`). Answers are
//! checked for status and JSON body, and what was stored is checked in the SQLite file itself,
//! so "stores nothing" and "stored once" are facts about the database, not about the answer.
//! Bad inputs are one data-driven table: every row is sent to the same agent and must give its
//! status, error code and field while leaving the events table exactly as it was.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    Harness, SITE, anonymous_client, error_parts, event_ids, json_response, production_count,
    unpooled_client,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_open_and_every_other_route_needs_a_key() {
    let h = Harness::start("auth");
    let anon = anonymous_client();

    let resp = anon.get(h.url("/health")).send().await.unwrap();
    let (status, body) = json_response(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));

    let routes: [(&str, &str); 6] = [
        ("GET", "/metrics"),
        ("GET", "/api/v1/sync/status"),
        ("POST", "/api/v1/events"),
        ("GET", "/api/v1/work-orders"),
        ("POST", "/api/v1/work-orders"),
        ("GET", "/api/v1/work-orders/WO-1"),
    ];
    let wrong_key = crate::support::client("not-a-key");
    for (method, path) in routes {
        for (who, client) in [("no key", &anon), ("unknown key", &wrong_key)] {
            let req = match method {
                "GET" => client.get(h.url(path)),
                _ => client.post(h.url(path)).json(&production_count(1)),
            };
            let (status, body) = json_response(req.send().await.unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {who}: {body}"
            );
            assert_eq!(
                error_parts(&body).0,
                "unauthorized",
                "{method} {path} with {who}: {body}"
            );
        }
    }
    assert_eq!(h.events_in_db(), 0, "an unauthorized POST stored an event");

    // With a key, an unknown path is a JSON 404.
    let (status, body) = h.get("/api/v1/no-such-route").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_parts(&body).0, "not_found", "{body}");

    // The key is accepted in either header.
    let resp = anon
        .get(h.url("/api/v1/sync/status"))
        .header("X-Api-Key", h.data.key())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "X-Api-Key is not accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_committed_and_answered_with_their_ids_in_order() {
    let h = Harness::start("events");

    // One event: one id, and one row.
    let (status, body) = h.post_events(&production_count(5)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let single = event_ids(&body);
    assert_eq!(single.len(), 1, "{body}");
    let id = Uuid::parse_str(&single[0]).unwrap_or_else(|e| panic!("{body}: {e}"));
    assert_eq!(id.get_version_num(), 7, "generated ids are UUIDv7: {body}");
    assert_eq!(h.events_in_db(), 1);

    // A batch of three with client-chosen ids of different types: ids come back in order.
    let chosen: Vec<String> = (0..3).map(|_| Uuid::now_v7().to_string()).collect();
    let batch = json!({"events": [
        {"type": "equipment_state", "equipment": "PRESS-01", "state": "down",
         "reason": "DOWN.JAM", "event_id": chosen[0]},
        {"type": "production_count", "equipment": "PRESS-02", "good": 10, "scrap": 1,
         "scrap_reason": "SCRAP.BURR", "event_id": chosen[1]},
        {"type": "quality_sample", "characteristic": "diameter_mm", "value": 12.02,
         "lower_limit": 11.9, "upper_limit": 12.1, "equipment": "PRESS-01",
         "event_id": chosen[2], "occurred_at": "2025-01-15T08:00:00Z", "operator": "B-1001"}
    ]});
    let (status, body) = h.post_events(&batch).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(event_ids(&body), chosen, "ids not in request order: {body}");
    assert_eq!(h.events_in_db(), 4);

    // A batch without client ids: three fresh, distinct ids.
    let (status, body) = h
        .post_events(&json!({"events": [
            {"type": "material_consumed", "lot": "LOT-S235-1", "material": "STEEL-S235",
             "quantity": 12.5, "equipment": "PRESS-01"},
            {"type": "material_produced", "lot": "LOT-BR-1", "material": "BRACKET-7",
             "quantity": 100},
            {"type": "operator_clock", "badge": "B-1001", "action": "in", "equipment": "PRESS-01"}
        ]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let fresh: HashSet<String> = event_ids(&body).into_iter().collect();
    assert_eq!(fresh.len(), 3, "{body}");
    assert!(!fresh.contains(&single[0]));
    assert_eq!(h.events_in_db(), 7);

    let status = h.sync_status().await;
    assert_eq!(status["site_id"], SITE, "{status}");
    assert_eq!(status["connected"], false, "{status}");
    assert_eq!(status["pending_events"], 7, "{status}");
    assert!(status["pending_changes"].is_u64(), "{status}");
    assert!(
        status.get("last_sync_at").is_some_and(Value::is_null),
        "{status}"
    );

    let resp = h.client.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for name in [
        "edge_http_requests_total",
        "edge_http_request_duration_seconds",
        "edge_outbox_pending",
        "edge_commit_batch_size",
        "edge_events_stored_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
}

/// One row of the bad-input table.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    expected_status: u16,
    expected_code: &'static str,
    expected_field: Option<&'static str>,
}

const JSON: Option<&str> = Some("application/json");

fn case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    expected_status: u16,
    expected_code: &'static str,
    expected_field: Option<&'static str>,
) -> Case {
    Case {
        name,
        body: body.into(),
        content_type: JSON,
        expected_status,
        expected_code,
        expected_field,
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn bad_inputs() -> Vec<Case> {
    let good = production_count(1);
    let mut thousand_and_one = Vec::new();
    thousand_and_one.resize(1001, good.clone());
    // A syntactically fine, otherwise valid event padded past 1 MiB.
    let huge = json!({"type": "quality_sample", "characteristic": "diameter_mm", "value": 1.0,
                      "lot": "L".repeat((1 << 20) + 1024)});
    vec![
        case(
            "malformed json",
            r#"{"type": "production_count", "#,
            400,
            "malformed_json",
            None,
        ),
        case("not json at all", "good=5", 400, "malformed_json", None),
        case("empty body", "", 400, "malformed_json", None),
        case("array at top level", "[1, 2]", 400, "malformed_json", None),
        case(
            "array of events at top level",
            json_bytes(&json!([good])),
            400,
            "malformed_json",
            None,
        ),
        case("number at top level", "42", 400, "malformed_json", None),
        case(
            "string at top level",
            r#""production_count""#,
            400,
            "malformed_json",
            None,
        ),
        case(
            "unknown type",
            r#"{"type": "teleport", "equipment": "PRESS-01"}"#,
            422,
            "unknown_type",
            Some("type"),
        ),
        case(
            "missing equipment",
            r#"{"type": "production_count", "good": 1}"#,
            422,
            "invalid_field",
            Some("equipment"),
        ),
        case(
            "negative good",
            r#"{"type": "production_count", "equipment": "PRESS-01", "good": -1}"#,
            422,
            "invalid_field",
            Some("good"),
        ),
        case(
            "good over the maximum",
            r#"{"type": "production_count", "equipment": "PRESS-01", "good": 2000000}"#,
            422,
            "invalid_field",
            Some("good"),
        ),
        case(
            "good of the wrong type",
            r#"{"type": "production_count", "equipment": "PRESS-01", "good": "five"}"#,
            422,
            "invalid_field",
            Some("good"),
        ),
        case(
            "quality value not a number",
            r#"{"type": "quality_sample", "characteristic": "diameter_mm", "value": "abc"}"#,
            422,
            "invalid_field",
            Some("value"),
        ),
        case(
            "unknown machine state",
            r#"{"type": "equipment_state", "equipment": "PRESS-01", "state": "exploded"}"#,
            422,
            "invalid_field",
            Some("state"),
        ),
        case(
            "occurred_at far in the future",
            r#"{"type": "production_count", "equipment": "PRESS-01", "good": 1,
                "occurred_at": "2099-01-01T00:00:00Z"}"#,
            422,
            "invalid_field",
            Some("occurred_at"),
        ),
        case(
            "occurred_at not a date",
            r#"{"type": "production_count", "equipment": "PRESS-01", "good": 1,
                "occurred_at": "yesterday at noon"}"#,
            422,
            "invalid_field",
            Some("occurred_at"),
        ),
        case(
            "event_id not a uuid",
            r#"{"type": "production_count", "equipment": "PRESS-01", "good": 1,
                "event_id": "not-a-uuid"}"#,
            422,
            "invalid_field",
            Some("event_id"),
        ),
        case(
            "unknown equipment",
            r#"{"type": "production_count", "equipment": "NOPE", "good": 1}"#,
            422,
            "unknown_reference",
            Some("equipment"),
        ),
        case(
            "unknown work order",
            r#"{"type": "production_count", "equipment": "PRESS-01", "good": 1,
                "work_order": "WO-DOES-NOT-EXIST"}"#,
            422,
            "unknown_reference",
            Some("work_order"),
        ),
        case(
            "unknown reason code",
            r#"{"type": "equipment_state", "equipment": "PRESS-01", "state": "down",
                "reason": "DOWN.NOPE"}"#,
            422,
            "unknown_reference",
            Some("reason"),
        ),
        case(
            "unknown material",
            r#"{"type": "material_consumed", "lot": "LOT-1", "material": "UNOBTAINIUM",
                "quantity": 1}"#,
            422,
            "unknown_reference",
            Some("material"),
        ),
        case(
            "batch whose second event is invalid",
            json_bytes(&json!({"events": [
                good,
                {"type": "production_count", "equipment": "PRESS-01", "good": 2000000},
                good
            ]})),
            422,
            "invalid_field",
            Some("events[1].good"),
        ),
        case(
            "batch whose second event names unknown equipment",
            json_bytes(&json!({"events": [
                good,
                {"type": "production_count", "equipment": "NOPE", "good": 1}
            ]})),
            422,
            "unknown_reference",
            Some("events[1].equipment"),
        ),
        case(
            "1001 events",
            json_bytes(&json!({"events": thousand_and_one})),
            413,
            "too_many_events",
            None,
        ),
        case(
            "body over 1 MiB",
            json_bytes(&huge),
            413,
            "body_too_large",
            None,
        ),
        Case {
            name: "text/plain content type",
            body: json_bytes(&good),
            content_type: Some("text/plain"),
            expected_status: 415,
            expected_code: "unsupported_media_type",
            expected_field: None,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_rejected_with_the_documented_error_and_store_nothing() {
    let h = Harness::start("bad-inputs");
    // One stored event first, so "nothing stored" is checked against a non-empty table.
    let (status, body) = h.post_events(&production_count(1)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Each row on its own connection: the oversized body's row must not decide the next row
    // (connection reuse after a refusal has its own test below).
    let client = unpooled_client(h.data.key());
    let mut failures = Vec::new();
    for c in bad_inputs() {
        let before = h.events_in_db();
        let mut req = client.post(h.url("/api/v1/events")).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: request failed: {e}", c.name));
                continue;
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let after = h.events_in_db();
        let mut problems = Vec::new();
        if status.as_u16() != c.expected_status {
            problems.push(format!("status {status}, expected {}", c.expected_status));
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(body) if body.get("error").is_some() => {
                let err = &body["error"];
                if err["code"] != c.expected_code {
                    problems.push(format!(
                        "code {}, expected {}",
                        err["code"], c.expected_code
                    ));
                }
                if err["message"].as_str().is_none_or(str::is_empty) {
                    problems.push("no message".to_owned());
                }
                if let Some(field) = c.expected_field
                    && err["field"] != field
                {
                    problems.push(format!("field {}, expected {field:?}", err["field"]));
                }
            }
            _ => problems.push("body is not a JSON error".to_owned()),
        }
        if after != before {
            problems.push(format!("events went from {before} to {after}"));
        }
        if !problems.is_empty() {
            let shown: String = text.chars().take(300).collect();
            failures.push(format!(
                "{}: {} (body {shown:?})",
                c.name,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the bad-input cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(h.events_in_db(), 1, "a rejected request stored something");
    assert_eq!(h.sync_status().await["pending_events"], 1);
}

/// Reads one HTTP/1.1 response with a `content-length`: `(status, lower-cased head, body)`.
fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((status, head, body))
}

#[test]
fn a_refused_oversized_body_leaves_a_kept_alive_connection_usable_or_says_close() {
    // Gateways keep connections alive. A server that answers 413 without reading the body
    // may close the connection, but then it must say so (`Connection: close`); otherwise the
    // client reuses the connection and its next request fails. Checked on a raw socket so
    // the outcome does not depend on a client's pool timing: send the whole oversized request,
    // read the answer, and, unless it announced the close, send a second request on the same
    // socket and expect it answered.
    let h = Harness::start("keep-alive-413");
    let addr = h.url("").trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let mut body = br#"{"type": "production_count", "equipment": "PRESS-01", "good": 1}"#.to_vec();
    body.resize((1 << 20) + 4096, b' ');
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        h.data.key(),
        body.len()
    );
    // Written from another thread: a server that neither reads nor closes must not block the
    // reader. Write errors are expected when the server closes; the answer is what counts.
    let mut writer_stream = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        writer_stream.write_all(head.as_bytes())?;
        writer_stream.write_all(&body)
    });
    let first = read_response(&mut stream);
    let wrote = writer.join().unwrap();
    let (status, head, text) =
        first.unwrap_or_else(|e| panic!("no answer to an oversized body ({e}); write: {wrote:?}"));
    assert_eq!(status, 413, "{head}{}", String::from_utf8_lossy(&text));
    if head.lines().any(|l| l.trim() == "connection: close") {
        return;
    }

    let second = stream
        .write_all(
            format!(
                "GET /health HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
                h.data.key()
            )
            .as_bytes(),
        )
        .and_then(|()| read_response(&mut stream));
    match second {
        Ok((200, _, _)) => {}
        other => panic!(
            "the 413 answer kept the connection open (no `Connection: close`), but the next \
             request on it failed: {other:?}\nfirst answer:\n{head}{}",
            String::from_utf8_lossy(&text)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_returns_the_first_answer_and_stores_nothing() {
    let h = Harness::start("idempotency");
    let body = json!({"events": [production_count(3), production_count(4)]});
    let send = |body: Value| {
        let req = h
            .client
            .post(h.url("/api/v1/events"))
            .header("Idempotency-Key", "k1")
            .json(&body);
        async move { json_response(req.send().await.unwrap()).await }
    };

    let (s1, b1) = send(body.clone()).await;
    assert_eq!(s1, StatusCode::CREATED, "{b1}");
    let (s2, b2) = send(body.clone()).await;
    assert_eq!(s2, StatusCode::CREATED, "{b2}");
    assert_eq!(event_ids(&b1).len(), 2);
    assert_eq!(event_ids(&b1), event_ids(&b2), "the retry got other ids");
    assert_eq!(h.events_in_db(), 2, "the retry stored its events again");

    // The key, not the body, identifies the request: a third send under the same key with a
    // different body still gets the first answer and stores nothing.
    let (s3, b3) = send(json!(production_count(99))).await;
    assert_eq!(s3, StatusCode::CREATED, "{b3}");
    assert_eq!(event_ids(&b3), event_ids(&b1), "{b3}");
    assert_eq!(h.events_in_db(), 2);

    // Another key is another request.
    let (s4, b4) = json_response(
        h.client
            .post(h.url("/api/v1/events"))
            .header("Idempotency-Key", "k2")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s4, StatusCode::CREATED, "{b4}");
    assert_ne!(event_ids(&b4), event_ids(&b1));
    assert_eq!(h.events_in_db(), 4);
    assert_eq!(h.sync_status().await["pending_events"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_under_one_idempotency_key_store_once() {
    // A gateway that times out and retries can have the first attempt still in flight: the
    // key must hold for requests that overlap, not only for ones that follow each other.
    const ATTEMPTS: usize = 16;
    let h = Harness::start("idempotency-race");
    let body = json!({"events": [production_count(1), production_count(2)]});
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ATTEMPTS {
        let req = h
            .client
            .post(h.url("/api/v1/events"))
            .header("Idempotency-Key", "race-1")
            .json(&body);
        tasks.spawn(async move { json_response(req.send().await.unwrap()).await });
    }
    let answers = tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
        .await
        .expect("retries did not finish within 60 s");
    let mut distinct = HashSet::new();
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        distinct.insert(event_ids(body));
    }
    assert_eq!(
        distinct.len(),
        1,
        "overlapping retries got different ids: {distinct:?}"
    );
    assert_eq!(
        h.events_in_db(),
        2,
        "overlapping retries stored the batch more than once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_event_id_is_stored_once() {
    let h = Harness::start("resent-id");
    let id = Uuid::now_v7().to_string();
    let mut event = production_count(7);
    event["event_id"] = json!(id);

    for attempt in 0..2 {
        let (status, body) = h.post_events(&event).await;
        assert_eq!(status, StatusCode::CREATED, "attempt {attempt}: {body}");
        assert_eq!(event_ids(&body), vec![id.clone()], "attempt {attempt}");
    }
    assert_eq!(h.events_in_db(), 1, "a resent event_id was stored twice");

    // In a batch beside a new event, only the new one is added.
    let new_id = Uuid::now_v7().to_string();
    let mut other = production_count(8);
    other["event_id"] = json!(new_id);
    let (status, body) = h.post_events(&json!({"events": [event, other]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(event_ids(&body), vec![id, new_id]);
    assert_eq!(h.events_in_db(), 2);
    assert_eq!(h.sync_status().await["pending_events"], 2);
}

/// `POST /api/v1/work-orders/{id}/{action}` with an optional body.
async fn transition(
    h: &Harness,
    id: &str,
    action: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = h
        .client
        .post(h.url(&format!("/api/v1/work-orders/{id}/{action}")));
    if let Some(body) = body {
        req = req.json(&body);
    }
    json_response(req.send().await.unwrap()).await
}

fn pending_changes(status: &Value) -> u64 {
    status["pending_changes"]
        .as_u64()
        .unwrap_or_else(|| panic!("pending_changes is not a count: {status}"))
}

fn order_ids(list: &Value) -> Vec<String> {
    list["work_orders"]
        .as_array()
        .unwrap_or_else(|| panic!("not a work order list: {list}"))
        .iter()
        .map(|o| o["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `POST /api/v1/work-orders` with `body`.
async fn create_order(h: &Harness, body: Value) -> (StatusCode, Value) {
    h.post("/api/v1/work-orders", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_orders_follow_the_isa95_state_rules() {
    let h = Harness::start("work-orders");
    let changes_at_start = pending_changes(&h.sync_status().await);

    let (status, wo) = create_order(
        &h,
        json!({"id": "SITE_001-WO-1001", "material": "BRACKET-7", "planned_quantity": 500,
                    "priority": 3, "work_unit": "PRESS-01", "erp_ref": "4500001234",
                    "due": "2030-06-01T14:00:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{wo}");
    assert_eq!(wo["id"], "SITE_001-WO-1001", "{wo}");
    assert_eq!(wo["site_id"], SITE, "{wo}");
    assert_eq!(wo["material"], "BRACKET-7", "{wo}");
    assert_eq!(wo["planned_quantity"], 500, "{wo}");
    assert_eq!(wo["priority"], 3, "{wo}");
    assert_eq!(wo["routing_version"], 1, "{wo}");
    assert_eq!(wo["state"], "allowed_to_start", "{wo}");
    assert!(wo["actual_start"].is_null(), "{wo}");
    // The routing of BRACKET-7 v1 is snapshotted into the order at creation.
    assert_eq!(wo["operations"][0]["operation_code"], "PRESS", "{wo}");
    assert_eq!(wo["operations"][0]["ideal_cycle_time_ms"], 2000, "{wo}");
    let mut changes = pending_changes(&h.sync_status().await);
    assert!(
        changes > changes_at_start,
        "creating an order added no pending change"
    );

    // Duplicate id, unknown material: refused, and no change recorded.
    let (status, body) = create_order(
        &h,
        json!({"id": "SITE_001-WO-1001", "material": "BRACKET-7", "planned_quantity": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_parts(&body).0, "conflict", "{body}");
    // Another site's key space: refused on the id.
    let (status, body) = create_order(
        &h,
        json!({"id": "SITE_002-WO-1", "material": "BRACKET-7", "planned_quantity": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "id", "{body}");
    let (status, body) = create_order(
        &h,
        json!({"material": "UNOBTAINIUM", "planned_quantity": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        error_parts(&body),
        ("unknown_reference".to_owned(), Some("material".to_owned())),
        "{body}"
    );
    assert_eq!(pending_changes(&h.sync_status().await), changes);

    // Without an id one is generated, site-prefixed; defaults apply.
    let (status, generated) = create_order(
        &h,
        json!({"material": "BRACKET-7", "planned_quantity": 20, "work_unit": "PRESS-02"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{generated}");
    let generated_id = generated["id"].as_str().unwrap().to_owned();
    assert!(generated_id.starts_with("SITE_001-WO-"), "{generated}");
    assert_eq!(generated["priority"], 5, "{generated}");
    assert_eq!(generated["routing_version"], 1, "{generated}");
    assert_eq!(generated["state"], "allowed_to_start", "{generated}");

    let (status, got) = h.get("/api/v1/work-orders/SITE_001-WO-1001").await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["id"], "SITE_001-WO-1001");
    assert_eq!(got["state"], "allowed_to_start");
    let (status, body) = h.get("/api/v1/work-orders/WO-NOPE").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_parts(&body).0, "not_found", "{body}");

    // Listing: ordered by priority, filtered by status and work unit, limited.
    let (status, list) = h.get("/api/v1/work-orders?status=allowed_to_start").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        order_ids(&list),
        vec!["SITE_001-WO-1001".to_owned(), generated_id.clone()]
    );
    let (_, list) = h.get("/api/v1/work-orders?work_unit=PRESS-02").await;
    assert_eq!(order_ids(&list), vec![generated_id.clone()]);
    let (_, list) = h.get("/api/v1/work-orders?limit=1").await;
    assert_eq!(order_ids(&list), vec!["SITE_001-WO-1001".to_owned()]);

    // An event may now name the order.
    let (status, body) = h
        .post_events(&json!({"type": "production_count", "equipment": "PRESS-01",
                              "work_order": "SITE_001-WO-1001", "good": 5}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // start -> running; start again is illegal.
    let (status, wo) = transition(
        &h,
        "SITE_001-WO-1001",
        "start",
        Some(json!({"work_unit": "PRESS-01"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{wo}");
    assert_eq!(wo["state"], "running", "{wo}");
    assert!(!wo["actual_start"].is_null(), "{wo}");
    let next = pending_changes(&h.sync_status().await);
    assert!(next > changes, "start added no pending change");
    changes = next;

    let (status, list) = h.get("/api/v1/work-orders?status=running").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(order_ids(&list), vec!["SITE_001-WO-1001".to_owned()]);
    let (_, list) = h.get("/api/v1/work-orders?status=allowed_to_start").await;
    assert_eq!(order_ids(&list), vec![generated_id.clone()]);

    let (status, body) = transition(&h, "SITE_001-WO-1001", "start", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_parts(&body).0, "illegal_transition", "{body}");
    assert_eq!(
        pending_changes(&h.sync_status().await),
        changes,
        "a refused transition recorded a change"
    );

    // pause -> interrupted, resume -> running, complete -> ended; all without a body.
    for (action, state) in [
        ("pause", "interrupted"),
        ("resume", "running"),
        ("complete", "ended"),
    ] {
        let (status, wo) = transition(&h, "SITE_001-WO-1001", action, None).await;
        assert_eq!(status, StatusCode::OK, "{action}: {wo}");
        assert_eq!(wo["state"], state, "{action}: {wo}");
        let next = pending_changes(&h.sync_status().await);
        assert!(next > changes, "{action} added no pending change");
        changes = next;
    }
    let (_, wo) = h.get("/api/v1/work-orders/SITE_001-WO-1001").await;
    assert_eq!(wo["state"], "ended", "{wo}");
    assert!(!wo["actual_end"].is_null(), "{wo}");

    for action in ["pause", "resume", "start", "complete"] {
        let (status, body) = transition(&h, "SITE_001-WO-1001", action, None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{action} after ended: {body}");
        assert_eq!(error_parts(&body).0, "illegal_transition", "{body}");
    }
    let (status, body) = transition(&h, "WO-NOPE", "start", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(pending_changes(&h.sync_status().await), changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_each_get_their_own_committed_ids() {
    const TASKS: usize = 50;
    const EVENTS_PER_TASK: usize = 20;
    let h = Harness::start("concurrency");

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let client = h.client.clone();
        let url = h.url("/api/v1/events");
        tasks.spawn(async move {
            let mut ids = Vec::with_capacity(EVENTS_PER_TASK);
            for i in 0..EVENTS_PER_TASK {
                // Counts start at 1: a production count of all zeros is invalid.
                let good = u32::try_from(t * 100 + i + 1).unwrap();
                let resp = client.post(&url).json(&production_count(good)).send().await;
                let (status, body) = json_response(resp.expect("post event")).await;
                assert_eq!(status, StatusCode::CREATED, "task {t} event {i}: {body}");
                let got = event_ids(&body);
                assert_eq!(got.len(), 1, "{body}");
                ids.extend(got);
            }
            ids
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(120), tasks.join_all())
        .await
        .expect("1000 posts did not finish within 120 s");

    let ids: HashSet<String> = all.into_iter().flatten().collect();
    assert_eq!(ids.len(), TASKS * EVENTS_PER_TASK, "ids were not distinct");
    let rows = h.events_in_db();
    assert_eq!(usize::try_from(rows).unwrap(), TASKS * EVENTS_PER_TASK);
    assert_eq!(
        h.sync_status().await["pending_events"],
        TASKS * EVENTS_PER_TASK
    );
}
