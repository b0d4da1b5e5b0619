//! The benchmark suite still runs end to end in its quick mode (`bench quick`: every suite
//! with tiny sizes, one run each: the edge API against raw SQLite, sync with a 5,000-event
//! backlog, reports over 50,000 events at 200 connections, binary sizes). A smoke test of the
//! tools, not of their figures: timings are asserted nowhere, only that every suite ran,
//! reported its figures and lost nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_benchmark_suite_runs_in_quick_mode() {
    let _alone = system_tests::procs::whole_system();
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("quick")
        .output()
        .expect("starting bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench quick failed:\n{stdout}\n{stderr}"
    );
    // The document's table, printed instead of written in quick mode.
    for row in [
        "| edge API p99, 200 clients at 6,000 events/s (open loop) |",
        "| 7-day backlog (500k events) drain, two other sites live |",
        "| live sites' edge → hub p99 during the drain |",
        "| reporting API throughput |",
        "| stripped `edge-agent` |",
    ] {
        assert!(stdout.contains(row), "no row {row:?}:\n{stdout}");
    }
    for zero in [
        "| acknowledged but not stored | 0.00 | 0.00 | 0.00 |",
        "| failed requests | 0.00 | 0.00 | 0.00 |",
    ] {
        assert!(stdout.contains(zero), "expected {zero:?}:\n{stdout}");
    }
}
