//! The README's run command works: `mes-demo` starts the hub and three edge agents, sample
//! production reaches the hub from all three sites, and Ctrl-C (SIGINT) stops everything
//! cleanly with exit status 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn the_demo_runs_all_three_sites_and_stops_on_ctrl_c() {
    let _alone = system_tests::procs::whole_system();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mes-demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mes-demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let all_connected = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.starts_with("hub holds")
                    && !line.starts_with("hub holds 0 ")
                    && line.matches(" connected ").count() == 3;
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline + Duration::from_secs(20) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    seen.extend(rx.try_iter());
    let output = seen.join("\n");
    assert!(all_connected, "the three sites never all synced:\n{output}");
    assert!(
        output.contains("http://127.0.0.1:"),
        "no URLs printed:\n{output}"
    );
    assert!(
        output.contains("stopped cleanly"),
        "no clean stop:\n{output}"
    );
    assert_eq!(
        status.map(|s| s.success()),
        Some(true),
        "exit status:\n{output}"
    );
}
