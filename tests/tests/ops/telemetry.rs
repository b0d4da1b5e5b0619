//! The `central-hub` binary's logs and traces: JSON log lines on stderr with
//! `HUB_LOG_FORMAT=json`, and spans posted over OTLP/HTTP (protobuf) to a collector at the
//! configured sampling ratio: all of them at 1.0, none at 0.0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use system_tests::procs::{Proc, workspace_bin};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the fake collector received: one (path, content type, body) per request.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP receiver: HTTP/1.1 requests with a Content-Length, answered 200 with an
/// empty protobuf `ExportTraceServiceResponse`.
async fn collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let store = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let path = head
                        .lines()
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("")
                        .to_owned();
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    store
                        .lock()
                        .unwrap()
                        .push((path, header("content-type"), body));
                    buf.drain(..end + 4 + len);
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                        )
                        .await;
                }
            });
        }
    });
    (url, got)
}

/// Runs `central-hub serve` with JSON logs and tracing to `collector` at `ratio`, sends 25
/// requests, stops it with SIGTERM; returns its log lines.
async fn run_hub(db: &system_tests::pg::TestDb, collector: &str, ratio: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("mes-telemetry-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("stderr.log");
    let bin = workspace_bin("central-hub", "central-hub");
    let mut hub = Proc::start_logging(
        Command::new(bin)
            .arg("serve")
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--enroll-listen", "127.0.0.1:0"])
            .env("DATABASE_URL", &db.hub_url)
            .env("READ_DATABASE_URL", &db.reporting_url)
            .env("HUB_STATE_DIR", dir.join("state"))
            .env("HUB_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
            .env("OTEL_TRACES_SAMPLER_ARG", ratio)
            .env("OTEL_SERVICE_NAME", "central-hub-under-test"),
        &log,
    );
    let line = hub.wait_for_line("central-hub sync on", Duration::from_secs(60));
    let http = line.rsplit("http://").next().unwrap().trim().to_owned();
    let client = reqwest::Client::new();
    for i in 0..25 {
        let path = if i % 2 == 0 {
            "/health"
        } else {
            "/api/v1/sites"
        };
        client
            .get(format!("http://{http}{path}"))
            .send()
            .await
            .unwrap();
    }
    let status = tokio::task::spawn_blocking(move || hub.terminate(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "central-hub exited with {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    text.lines().map(str::to_owned).collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_otlp_traces_at_the_configured_ratio() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = system_tests::pg::server().await.fresh_database().await;
    db.migrate().await;

    let (url, got) = collector().await;
    let lines = run_hub(&db, &url, "1.0").await;
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("hub started")),
        "the start line is logged: {lines:?}"
    );
    let received = got.lock().unwrap().clone();
    assert!(!received.is_empty(), "no OTLP export at ratio 1.0");
    for (path, ctype, _) in &received {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ctype, "application/x-protobuf");
    }
    let all: Vec<u8> = received.iter().flat_map(|(_, _, b)| b.clone()).collect();
    assert!(
        contains(&all, "central-hub-under-test"),
        "service name in the resource"
    );
    assert!(contains(&all, "http_request"), "the request spans");
    assert!(contains(&all, "/api/v1/sites"), "the route attribute");
    eprintln!(
        "ratio 1.0: {} OTLP requests, {} bytes",
        received.len(),
        all.len()
    );

    let (url, got) = collector().await;
    let _ = run_hub(&db, &url, "0.0").await;
    let spans: usize = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, b)| contains(b, "http_request"))
        .count();
    assert_eq!(spans, 0, "ratio 0.0 must send no request spans");
}
