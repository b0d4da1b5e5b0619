//! Start-up against a PostgreSQL that is not there fails at once and names the cause: the
//! pool connect helper (`central_hub::db::connect`, used by `serve` and by every command)
//! and the `migrate` command are pointed at a closed port on loopback, and must give up in
//! well under the pool's ten-second acquire timeout with "refused" and the address in the
//! error, not "pool timed out".

use std::time::{Duration, Instant};

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let port = l.local_addr().expect("the bound address").port();
    drop(l);
    port
}

const QUICK: Duration = Duration::from_secs(2);

#[tokio::test]
async fn connect_to_a_closed_port_fails_at_once_with_the_cause() {
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/mes");
    let started = Instant::now();
    let err = central_hub::db::connect(&url)
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    let text = err.to_string();
    assert!(took < QUICK, "took {took:?}: {text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
}

#[test]
fn migrate_against_a_closed_port_fails_at_once_with_the_cause() {
    let port = closed_port();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_central-hub"))
        .args([
            "migrate",
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:{port}/mes"),
        ])
        .env_remove("DATABASE_URL")
        .output()
        .expect("the central-hub binary runs");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(took < QUICK, "took {took:?}: {stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
}
