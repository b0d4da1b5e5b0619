//! Golden byte fixtures: the encoding of every v1 message is pinned in
//! `tests/golden/v1/<name>.hex`. A change to a wire type that alters bytes fails here, which
//! is the point: it needs a new message type or a new protocol version, not a silent edit.
//! `GOLDEN_BLESS=1 cargo test -p sync-protocol` writes missing fixtures (never overwrites).

use std::collections::BTreeSet;
use std::path::PathBuf;

use sync_protocol::frame;
use sync_protocol::message::MessageType;

use crate::samples::all_messages;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

fn to_hex(bytes: &[u8]) -> String {
    // 32 bytes per line keeps diffs of a changed fixture readable.
    bytes
        .chunks(32)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn from_hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

#[test]
fn every_message_matches_its_fixture() {
    let bless = std::env::var_os("GOLDEN_BLESS").is_some();
    let mut covered = BTreeSet::new();
    for (name, message) in all_messages() {
        covered.insert(message.message_type());
        let encoded = frame::encode(&message, frame::FRAME_BODY_BYTES_MAX_DEFAULT).unwrap();
        let path = fixture_dir().join(format!("{name}.hex"));
        if !path.exists() && bless {
            std::fs::create_dir_all(fixture_dir()).unwrap();
            std::fs::write(&path, to_hex(&encoded)).unwrap();
        }
        let fixture = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (GOLDEN_BLESS=1 writes a missing fixture)",
                path.display()
            )
        });
        let fixture = from_hex(&fixture);
        // Decoding the fixture gives the sample back: old bytes stay readable...
        let decoded = frame::decode(&fixture, frame::FRAME_BODY_BYTES_MAX_DEFAULT)
            .unwrap_or_else(|e| panic!("{name}: fixture does not decode: {e}"));
        assert_eq!(
            decoded, message,
            "{name}: fixture decodes to something else"
        );
        // ...and encoding the sample gives the fixture: the format did not drift.
        assert_eq!(
            to_hex(&encoded),
            to_hex(&fixture),
            "{name}: encoding drifted"
        );
    }
    let all: BTreeSet<MessageType> = MessageType::ALL.into_iter().collect();
    assert_eq!(covered, all, "a message type has no golden fixture");
}

/// The header of every fixture names its type with the number the spec gives it.
#[test]
fn type_numbers_are_stable() {
    let expected = [
        (MessageType::Hello, 0x0001),
        (MessageType::Welcome, 0x0002),
        (MessageType::EventBatch, 0x0010),
        (MessageType::RecordChanges, 0x0011),
        (MessageType::Ack, 0x0012),
        (MessageType::DownBatch, 0x0020),
        (MessageType::DownAck, 0x0021),
        (MessageType::HeadsSummary, 0x0030),
        (MessageType::RepairChanges, 0x0031),
        (MessageType::EdgeStatus, 0x0040),
        (MessageType::CertRenewRequest, 0x0050),
        (MessageType::CertRenewResponse, 0x0051),
        (MessageType::HubGeneration, 0x0060),
        (MessageType::GapQuery, 0x0061),
        (MessageType::GapSummaries, 0x0062),
        (MessageType::GapIdsQuery, 0x0063),
        (MessageType::GapIds, 0x0064),
        (MessageType::HealReport, 0x0065),
        (MessageType::Error, 0x00F0),
        (MessageType::Ping, 0x00F1),
        (MessageType::Pong, 0x00F2),
    ];
    assert_eq!(expected.len(), MessageType::ALL.len());
    for (ty, n) in expected {
        assert_eq!(ty as u16, n, "{ty:?}");
        assert_eq!(MessageType::from_u16(n), Some(ty));
    }
}
