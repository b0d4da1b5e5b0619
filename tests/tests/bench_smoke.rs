//! The reporting benchmark still runs end to end (`bench-reports --quick`: a small dataset
//! through the ingest path, cold reports, 200 connections for 3 s). A smoke test of the tool,
//! not of its figures: timings are asserted nowhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn bench_reports_quick_mode_runs_without_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench-reports"))
        .arg("--quick")
        .output()
        .expect("starting bench-reports");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-reports failed:\n{stdout}\n{stderr}"
    );
    let load = stdout
        .lines()
        .find(|l| l.starts_with("load ("))
        .unwrap_or_else(|| panic!("no load figures:\n{stdout}"));
    assert!(!load.contains(": 0 requests"), "{load}");
    assert!(
        stdout.contains("errors by status (0 = connection): {}"),
        "requests failed:\n{stdout}"
    );
}
