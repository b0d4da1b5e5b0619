//! The field commands of the binary itself: a failing `install` exits non-zero with its
//! reason in words, `doctor` exits non-zero on a broken configuration and prints JSON with
//! `--json`, and `backup` / `restore` work on a running (and then stopped) agent. The
//! installer against a real hub: tests/tests/edge/install.rs.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Harness, TempDir, bin, production_count};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("EDGE_CONFIG")
        .env_remove("EDGE_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run edge-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `edge-agent install --hub HUB --token TOKEN --prefix PREFIX`.
fn install(hub: &str, token: &str, prefix: &Path) -> (i32, String, String) {
    let prefix = prefix.to_str().unwrap();
    run(&[
        "install", "--hub", hub, "--token", token, "--prefix", prefix,
    ])
}

/// `edge-agent restore --data-dir DATA --from FROM`.
fn restore(data: &Path, from: &Path) -> (i32, String, String) {
    let (data, from) = (data.to_str().unwrap(), from.to_str().unwrap());
    run(&["restore", "--data-dir", data, "--from", from])
}

#[test]
fn install_and_doctor_fail_with_a_reason_and_a_non_zero_exit() {
    let tmp = TempDir::new("cli-install");
    let prefix = tmp.path().join("root");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let token = format!("mesenroll1.{}.{}", "ab".repeat(16), "cd".repeat(32));
    let (code, _, err) = install(&closed.to_string(), &token, &prefix);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("[3/9] Contacting the hub"),
        "progress shown: {err}"
    );
    assert!(
        err.contains("cannot reach the hub") && err.contains("connection refused"),
        "{err}"
    );
    let (code, _, err) = install("x:1", "nonsense", &prefix);
    assert_eq!(code, 1);
    assert!(err.contains("not an enrollment token"), "{err}");

    // Doctor on a configuration that does not parse.
    let config = tmp.path().join("edge.toml");
    std::fs::write(&config, "site = \"SITE_001\"\nbogus = 1\n").unwrap();
    let (code, out, _) = run(&["doctor", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL config") && out.contains("bogus"),
        "{out}"
    );
    let (code, out, _) = run(&["doctor", "--json", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["checks"][0]["status"], "fail");
    assert!(
        v["checks"][0]["remedy"]
            .as_str()
            .unwrap()
            .contains("install")
    );
}

#[tokio::test]
async fn backup_while_running_and_restore_once_stopped() {
    let h = Harness::start("cli-backup");
    for n in 1..=5 {
        let (s, _) = h.post_events(&production_count(n)).await;
        assert_eq!(s, 201);
    }
    let data = h.data.db_path().parent().unwrap().to_owned();
    let out = data.parent().unwrap().join("edge-backup.db");
    let (code, stdout, err) = run(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("5 events"), "{stdout}");
    // The running agent holds its lock: restore refuses.
    let (code, _, err) = restore(&data, &out);
    assert_eq!(code, 1);
    assert!(err.contains("stop it first"), "{err}");
    // More events, then the agent dies; the box is restored to the backup.
    let (s, _) = h.post_events(&production_count(6)).await;
    assert_eq!(s, 201);
    let Harness {
        agent, data: dir, ..
    } = h;
    drop(agent);
    // A file that is no backup is refused before anything is touched.
    let junk = data.parent().unwrap().join("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    let (code, _, err) = restore(&data, &junk);
    assert_eq!(code, 1);
    assert!(err.contains("not a usable backup"), "{err}");
    assert_eq!(crate::support::events_count(&dir.db_path()), 6);
    let (code, stdout, err) = restore(&data, &out);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("restored 5 events"), "{stdout}");
    assert!(stdout.contains("replaced store is kept"), "{stdout}");
    assert_eq!(crate::support::events_count(&dir.db_path()), 5);
    // The restored store starts, and is marked for repair on its next connection.
    let agent = dir.start();
    let conn = crate::support::open_db_read_only(&dir.db_path());
    let mark: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'repair_pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mark, "1");
    drop(agent);
}
