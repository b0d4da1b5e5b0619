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
