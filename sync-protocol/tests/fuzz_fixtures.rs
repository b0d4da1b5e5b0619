//! Replays the fuzzers' committed inputs (`fuzz/fixtures/<target>/`, crashers found by
//! `cargo +nightly fuzz run <target>` and kept) through the same entry points the fuzz targets
//! call, on stable: a fixed crasher stays fixed.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/fixtures")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).expect("a readable fixture");
        run(&data);
        n += 1;
    }
    n
}

#[test]
fn frame_decoder_fixtures() {
    replay("frame_decoder", sync_protocol::fuzzing::frame_decoder);
    // Hand-made edge cases: nothing, a header announcing 4 GiB, a header alone.
    for data in [
        &[][..],
        &[0xff, 0xff, 0xff, 0xff, 0, 1],
        &[0, 0, 0, 5, 0, 1],
    ] {
        sync_protocol::fuzzing::frame_decoder(data);
    }
}

#[test]
fn handshake_fixtures() {
    replay("handshake", sync_protocol::fuzzing::handshake);
    sync_protocol::fuzzing::handshake(&[0, 0, 0, 0, 0, 0]);
}

/// The first crasher: a 35-byte change that made automerge 0.12 panic inside
/// `apply_changes`; the hub and the edge now refuse it as a malformed change.
#[test]
fn change_ingest_fixtures() {
    let n = replay("change_ingest", sync_protocol::fuzzing::change_ingest);
    assert!(n >= 1, "the committed crasher is missing");
}

/// The hand-built bombs (`records::scan` builds them): 79-byte changes announcing 2^40
/// operations, or one operation with 2^40 predecessors. automerge 0.12 spun for hours on the
/// first (`Change::from_bytes`) and would have grown a vector until killed on the second; the
/// pre-scan refuses both as over a limit, well within 100 ms.
#[test]
fn change_bombs_are_refused_as_over_a_limit_within_100_ms() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fixtures/change_ingest");
    for name in ["bomb-ops-2e40", "bomb-preds-2e40"] {
        let data = std::fs::read(dir.join(name)).expect("the committed bomb");
        let started = std::time::Instant::now();
        let refused =
            sync_protocol::records::decode_untrusted(&data).expect_err("a bomb must be refused");
        let took = started.elapsed();
        assert!(refused.is_limit(), "{name}: {refused}");
        assert!(
            took < std::time::Duration::from_millis(100),
            "{name}: {took:?}"
        );
        println!("{name}: refused in {took:?}: {refused}");
    }
}
