//! `sim`: runs the deterministic simulator over many seeds and prints the figures.
//!
//! ```text
//! cargo run --release -p system-tests --bin sim -- --seeds 10000 [--mode safety|liveness|both]
//!                                                  [--bug ack-before-commit] [--seed N]
//! ```
//! Exits 1 when any seed fails, naming it (replay with `--seed N`, or `SEED=N` in the test).

use std::time::Instant;

use system_tests::sim::{Bug, Mode, SimConfig, Totals, run};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let count: u64 = value("--seeds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let modes = match value("--mode").as_deref() {
        Some("safety") => vec![Mode::Safety],
        Some("liveness") => vec![Mode::Liveness],
        _ => vec![Mode::Safety, Mode::Liveness],
    };
    let bug = match value("--bug").as_deref() {
        Some("ack-before-commit") => Some(Bug::AckBeforeCommit),
        Some(other) => {
            eprintln!("unknown --bug {other}; known: ack-before-commit");
            return std::process::ExitCode::FAILURE;
        }
        None => None,
    };
    let one: Option<u64> = value("--seed").and_then(|v| v.parse().ok());
    let mut failed = false;
    for mode in modes {
        let started = Instant::now();
        let mut totals = Totals::default();
        let seeds: Vec<u64> = match one {
            Some(s) => vec![s],
            None => system_tests::sim::seeds(mode, count),
        };
        for (i, seed) in seeds.iter().enumerate() {
            let mut cfg = SimConfig::new(*seed, mode);
            cfg.bug = bug;
            let o = run(&cfg);
            if !o.ok() {
                eprintln!(
                    "seed {seed} ({mode:?}) failed: {} lost, {} duplicated, {} misplaced, diverged {:?}",
                    o.lost.len(),
                    o.duplicated.len(),
                    o.misplaced.len(),
                    o.diverged
                );
            }
            totals.add(&o);
            if (i + 1) % 1000 == 0 {
                eprintln!("  {mode:?}: {} of {} seeds", i + 1, seeds.len());
            }
        }
        println!(
            "== {mode:?} mode{} — {:.1} s\n{}",
            bug.map(|b| format!(" with bug {b:?}")).unwrap_or_default(),
            started.elapsed().as_secs_f64(),
            totals.report()
        );
        if !totals.failures.is_empty() {
            println!("failing seeds: {:?}", totals.failures);
            failed = true;
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
