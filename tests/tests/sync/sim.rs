//! The deterministic simulator (`system_tests::sim`) over many seeds: safety with faults all
//! along, liveness after the faults heal, the same seed replaying the same run, and a
//! deliberately broken hub (acking before commit) caught.
//!
//! `SEED=n cargo test -p system-tests --test sync sim::` replays one seed; `SIM_SEEDS=n` changes how
//! many run here (default 250 per mode, 500 in all). Ten thousand:
//! `cargo run --release -p system-tests --bin sim -- --seeds 10000`.

use std::time::Instant;

use system_tests::sim::{Bug, Mode, SimConfig, Totals, run, seeds};

fn count() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(250)
}

fn sweep(mode: Mode) {
    let started = Instant::now();
    let mut totals = Totals::default();
    for seed in seeds(mode, count()) {
        let o = run(&SimConfig::new(seed, mode));
        if !o.ok() {
            eprintln!(
                "seed {seed} failed ({mode:?}): lost {:?}, duplicated {:?}, misplaced {:?}, diverged {:?}\n  replay: SEED={seed} cargo test -p system-tests --test sync sim::",
                o.lost.iter().take(5).collect::<Vec<_>>(),
                o.duplicated.iter().take(5).collect::<Vec<_>>(),
                o.misplaced.iter().take(5).collect::<Vec<_>>(),
                o.diverged
            );
        }
        totals.add(&o);
    }
    println!(
        "simulator, {mode:?} mode ({:.1} s wall):\n{}",
        started.elapsed().as_secs_f64(),
        totals.report()
    );
    assert!(
        totals.failures.is_empty(),
        "failing seeds (replay with SEED=…): {:?}",
        totals.failures
    );
    assert!(totals.acknowledged > 0 && !totals.faults.is_empty());
}

#[test]
fn safety_with_faults_all_along() {
    sweep(Mode::Safety);
}

#[test]
fn liveness_after_the_faults_heal() {
    sweep(Mode::Liveness);
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 42, 0xC0FFEE] {
        let a = run(&SimConfig::new(seed, Mode::Liveness));
        let b = run(&SimConfig::new(seed, Mode::Liveness));
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.faults, b.faults);
        assert_eq!(a.acknowledged, b.acknowledged);
    }
    let a = run(&SimConfig::new(1, Mode::Liveness));
    let b = run(&SimConfig::new(2, Mode::Liveness));
    assert_ne!(a.trace_hash, b.trace_hash, "different seeds, same run");
}

/// The demonstration the reliability issue asks for: a hub that acknowledges events before
/// they are durable loses some of them when it crashes, and the checker names them.
#[test]
fn acking_before_commit_is_caught() {
    let mut caught = Vec::new();
    for seed in 0..100 {
        let mut cfg = SimConfig::new(seed, Mode::Safety);
        cfg.bug = Some(Bug::AckBeforeCommit);
        let o = run(&cfg);
        if !o.lost.is_empty() {
            caught.push((seed, o.lost.len()));
        }
    }
    println!(
        "ack-before-commit: {} of 100 seeds lose acknowledged events: {caught:?}",
        caught.len()
    );
    assert!(
        !caught.is_empty(),
        "the simulator did not catch a hub that acks before commit"
    );
}
