//! Session behaviour: the happy path with small limits, and a data-driven table of peer
//! misbehaviour where each case must end the session with the expected error code, tell the
//! peer in an error frame, and never panic.

use std::time::Duration;

use shared_model::EventBody;
use shared_model::event::QualitySample;
use sync_protocol::frame;
use sync_protocol::message::*;
use sync_protocol::session::{
    CloseReason, EdgeEvent, EdgeSession, HubEvent, HubSession, Limits, SessionConfig,
};

use crate::harness::Loopback;
use crate::samples::{T0, all_event_bodies, change, event, site};

fn small_limits() -> SessionConfig {
    SessionConfig {
        limits: Limits {
            batch_items_max: 3,
            inflight_batches_max: 2,
            heads_page_max: 2,
            frame_bytes_max: 4_096,
            ..Limits::default()
        },
        ..SessionConfig::default()
    }
}

fn encode(m: Message) -> Vec<u8> {
    frame::encode(&m, frame::FRAME_BODY_BYTES_MAX_DEFAULT).unwrap()
}

fn hello() -> Vec<u8> {
    encode(Message::Hello(Hello {
        protocol_version: 1,
        agent_version: "test".into(),
        capabilities: capability::ALL_V1,
        down_cursor: 0,
    }))
}

fn batch(last_seq: u64, events: Vec<shared_model::Event>) -> Vec<u8> {
    encode(Message::EventBatch(EventBatch { last_seq, events }))
}

fn one_event(n: u64) -> Vec<shared_model::Event> {
    vec![event(n, all_event_bodies().remove(0))]
}

/// Frames the hub sends, decoded.
fn hub_output(hub: &mut HubSession) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(f) = hub.poll_transmit() {
        out.push(frame::decode(&f, frame::FRAME_BODY_BYTES_MAX_DEFAULT).unwrap());
    }
    out
}

fn edge_output(edge: &mut EdgeSession) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(f) = edge.poll_transmit() {
        out.push(frame::decode(&f, frame::FRAME_BODY_BYTES_MAX_DEFAULT).unwrap());
    }
    out
}

fn renew_request() -> Vec<u8> {
    encode(Message::CertRenewRequest(CertRenewRequest {
        csr_pem: crate::samples::CSR_PEM.into(),
    }))
}

fn renew_refused(message: &str) -> Vec<u8> {
    encode(Message::CertRenewResponse(CertRenewResponse {
        outcome: RenewOutcome::Refused {
            message: message.into(),
        },
    }))
}

/// An encoded welcome of `protocol_version`, without capabilities and with every limit 1.
fn tiny_welcome(protocol_version: u16) -> Vec<u8> {
    encode(Message::Welcome(Welcome {
        protocol_version,
        capabilities: 0,
        site_id: site(),
        hub_time: T0,
        batch_items_max: 1,
        inflight_batches_max: 1,
        frame_bytes_max: 1,
    }))
}

/// Moves every frame queued at the edge into the hub, and back.
fn exchange(lb: &mut Loopback) {
    sync_protocol::memory::exchange_frames(&mut lb.edge, &mut lb.hub, lb.now);
}

/// Renewal rides on an established session: the CSR goes up, the hub's driver hands it to
/// its caller (who signs it), the certificate comes down to the edge's caller, and the
/// session carries on syncing. One renewal per session, asked by the edge only.
#[test]
fn a_certificate_is_renewed_over_the_session_and_sync_goes_on() {
    use sync_protocol::session::SessionError;
    let mut lb = Loopback::new(small_limits());
    assert!(!lb.edge.can_renew(), "not before the welcome");
    assert_eq!(
        lb.edge
            .request_renewal(lb.now, crate::samples::CSR_PEM.into()),
        Err(SessionError::RenewalUnavailable)
    );
    lb.settle();
    assert!(lb.edge.can_renew());
    lb.edge
        .request_renewal(lb.now, crate::samples::CSR_PEM.into())
        .unwrap();
    assert!(!lb.edge.can_renew());
    assert_eq!(
        lb.edge
            .request_renewal(lb.now, crate::samples::CSR_PEM.into()),
        Err(SessionError::RenewalUnavailable),
        "one per session"
    );
    // Nothing answers a renewal nobody asked for.
    assert_eq!(
        lb.hub.send_renewal(
            lb.now,
            RenewOutcome::Refused {
                message: "x".into()
            }
        ),
        Err(SessionError::NotRequested)
    );
    exchange(&mut lb);
    let report = lb.drive_hub().unwrap();
    assert_eq!(
        report.renewal_request.as_deref(),
        Some(crate::samples::CSR_PEM)
    );
    let issued = RenewOutcome::Issued {
        certificate_pem: "CERT".into(),
    };
    lb.hub.send_renewal(lb.now, issued.clone()).unwrap();
    assert_eq!(
        lb.hub.send_renewal(lb.now, issued.clone()),
        Err(SessionError::NotRequested)
    );
    exchange(&mut lb);
    let report = lb.drive_edge().unwrap();
    assert_eq!(report.renewal, Some(issued));
    // The session is as it was: events recorded now still reach the hub.
    for n in 1..=5 {
        lb.edge_store
            .record_event(event(n, all_event_bodies().remove(0)));
    }
    lb.edge.outbox_grew();
    lb.settle();
    assert!(lb.edge.is_established() && lb.hub.is_established());
    assert_eq!(lb.hub_store.events(&site()).len(), 5);
    // A long refusal is cut to an error message's length, not sent whole.
    let mut lb = Loopback::new(SessionConfig::default());
    lb.settle();
    lb.edge.request_renewal(lb.now, "csr".into()).unwrap();
    exchange(&mut lb);
    let _ = lb.drive_hub().unwrap();
    lb.hub
        .send_renewal(
            lb.now,
            RenewOutcome::Refused {
                message: "é".repeat(5_000),
            },
        )
        .unwrap();
    exchange(&mut lb);
    let report = lb.drive_edge().unwrap();
    match report.renewal {
        Some(RenewOutcome::Refused { message }) => {
            assert!(message.len() <= ERROR_MESSAGE_BYTES_MAX && !message.is_empty())
        }
        other => panic!("{other:?}"),
    }
}

/// A CSR over `CERT_PEM_BYTES_MAX` is refused by the hub even when the frame limit allows
/// it, and the edge does not send one.
#[test]
fn an_oversized_renewal_request_closes_the_session() {
    let mut lb = Loopback::new(SessionConfig::default());
    lb.settle();
    let huge = "A".repeat(CERT_PEM_BYTES_MAX + 1);
    assert!(lb.edge.request_renewal(lb.now, huge.clone()).is_err());
    lb.hub.handle_frame(
        lb.now,
        &encode(Message::CertRenewRequest(CertRenewRequest {
            csr_pem: huge,
        })),
    );
    assert_eq!(
        lb.hub.close_reason().map(CloseReason::code),
        Some(ErrorCode::LimitExceeded)
    );
}

#[test]
fn events_flow_in_windowed_batches_and_are_acked_after_commit() {
    let mut lb = Loopback::new(small_limits());
    for n in 1..=20 {
        lb.edge_store
            .record_event(event(n, all_event_bodies().remove(0)));
    }
    lb.edge_store.record_change(change(1, b"c1"));
    lb.edge_store
        .record_event(event(21, all_event_bodies().remove(1)));
    lb.settle();
    assert!(lb.edge.is_established() && lb.hub.is_established());
    assert_eq!(lb.hub_store.events(&site()).len(), 21);
    assert_eq!(lb.edge_store.pending(), 0, "everything acked");
    assert_eq!(
        lb.hub_store.record_hashes(&site()),
        lb.edge_store.record_hashes()
    );
}

#[test]
fn nothing_is_acked_before_the_hub_store_commits() {
    let mut lb = Loopback::new(small_limits());
    lb.edge_store
        .record_event(event(1, all_event_bodies().remove(0)));
    lb.drive(); // hello
    lb.deliver(usize::MAX);
    lb.drive(); // welcome
    lb.deliver(usize::MAX);
    lb.drive(); // edge sends the batch
    lb.deliver(usize::MAX);
    // The hub's store fails the ingest: the session closes, nothing is acked.
    lb.hub_store.fail_next_call();
    let r = lb.drive_hub();
    assert!(r.is_err());
    assert!(lb.hub.is_closed());
    let out = hub_output(&mut lb.hub);
    assert!(
        out.iter().all(|m| !matches!(m, Message::Ack(_))),
        "acked without commit: {out:?}"
    );
    assert_eq!(lb.edge_store.pending(), 1);
    // After reconnecting the event arrives exactly once.
    lb.reconnect();
    lb.settle();
    assert_eq!(lb.hub_store.events(&site()).len(), 1);
    assert_eq!(lb.edge_store.pending(), 0);
}

#[test]
fn keepalive_and_idle_timeout() {
    let cfg = SessionConfig::default();
    let mut lb = Loopback::new(cfg.clone());
    lb.settle();
    assert!(lb.edge.is_established());
    // After the ping interval with nothing sent, the edge pings.
    lb.now += cfg.limits.ping_interval;
    assert!(lb.edge.poll_timeout().unwrap() <= lb.now);
    lb.edge.handle_timeout(lb.now);
    let pings = edge_output(&mut lb.edge);
    assert!(matches!(pings.as_slice(), [Message::Ping(_)]), "{pings:?}");
    // The hub, hearing nothing for the idle timeout, closes with Timeout.
    lb.now += cfg.limits.idle_timeout;
    lb.hub.handle_timeout(lb.now);
    assert_eq!(
        lb.hub.close_reason().map(CloseReason::code),
        Some(ErrorCode::Timeout)
    );
}

#[test]
fn edge_handshake_times_out() {
    let cfg = SessionConfig::default();
    let mut edge = EdgeSession::new(cfg.clone(), 0, Duration::ZERO);
    edge.handle_timeout(cfg.limits.handshake_timeout);
    assert_eq!(
        edge.close_reason().map(CloseReason::code),
        Some(ErrorCode::Timeout)
    );
    assert!(matches!(edge.poll_event(), Some(EdgeEvent::Closed(_))));
}

/// A case of hub-side misbehaviour: frames the edge "sends" after its hello, and the code the
/// hub must close with.
struct HubCase {
    name: &'static str,
    frames: Vec<Vec<u8>>,
    /// Calls `committed` for nothing; frames are sent without acks in between.
    expected: ErrorCode,
}

fn bad_sample() -> shared_model::Event {
    event(
        9,
        EventBody::QualitySample(QualitySample {
            equipment: None,
            work_order: None,
            lot: None,
            characteristic: shared_model::CharacteristicId::new("x").unwrap(),
            value: f64::NAN,
            lower_limit: None,
            upper_limit: None,
            pass: true,
        }),
    )
}

/// An event dated `secs` after the hub's clock ([`T0`]).
fn ahead_of_hub(secs: i64) -> shared_model::Event {
    let mut e = one_event(7).remove(0);
    e.occurred_at = T0.saturating_add_micros(secs * 1_000_000);
    e.recorded_at = e.occurred_at;
    e
}

/// An edge clock up to a day fast still syncs (the edge accepted the event by its own clock),
/// and the hub's clock moves on with the session: a day after the session began, events of
/// that day are not "ahead".
#[test]
fn events_within_a_day_of_the_hubs_clock_are_taken() {
    let mut hub = HubSession::new(small_limits(), site(), T0, Duration::ZERO);
    hub.handle_frame(Duration::ZERO, &hello());
    hub.handle_frame(Duration::ZERO, &batch(1, vec![ahead_of_hub(23 * 3600)]));
    let later = Duration::from_secs(2 * 86_400);
    hub.handle_frame(later, &batch(2, vec![ahead_of_hub(2 * 86_400 + 3600)]));
    assert_eq!(hub.close_reason(), None);
    let mut batches = 0;
    while let Some(e) = hub.poll_event() {
        if matches!(e, HubEvent::Events { .. }) {
            batches += 1;
        }
    }
    assert_eq!(batches, 2);
}

#[test]
fn hub_rejects_misbehaving_edges() {
    let mut foreign = one_event(1);
    foreign[0].site_id = shared_model::SiteId::new("SITE_002").unwrap();
    let mut oversized = vec![0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x10];
    oversized.extend_from_slice(&[0; 16]);
    let cases = vec![
        HubCase {
            name: "events before hello",
            frames: vec![batch(1, one_event(1))],
            expected: ErrorCode::UnexpectedMessage,
        },
        HubCase {
            name: "wrong protocol version",
            frames: vec![encode(Message::Hello(Hello {
                protocol_version: 2,
                agent_version: "future".into(),
                capabilities: 0,
                down_cursor: 0,
            }))],
            expected: ErrorCode::UnsupportedVersion,
        },
        HubCase {
            name: "second hello",
            frames: vec![hello(), hello()],
            expected: ErrorCode::UnexpectedMessage,
        },
        HubCase {
            name: "event of another site",
            frames: vec![hello(), batch(1, foreign)],
            expected: ErrorCode::SiteMismatch,
        },
        HubCase {
            name: "invalid event",
            frames: vec![hello(), batch(1, vec![bad_sample()])],
            expected: ErrorCode::InvalidEvent,
        },
        HubCase {
            name: "event more than a day ahead of the hub",
            frames: vec![hello(), batch(1, vec![ahead_of_hub(25 * 3600)])],
            expected: ErrorCode::InvalidEvent,
        },
        HubCase {
            name: "event decades ahead (never stored as 1970)",
            frames: vec![hello(), batch(1, vec![ahead_of_hub(40 * 365 * 86_400)])],
            expected: ErrorCode::InvalidEvent,
        },
        HubCase {
            name: "sequence going backwards",
            frames: vec![hello(), batch(5, one_event(1)), batch(5, one_event(2))],
            expected: ErrorCode::SequenceViolation,
        },
        HubCase {
            name: "empty batch",
            frames: vec![hello(), batch(1, vec![])],
            expected: ErrorCode::LimitExceeded,
        },
        HubCase {
            name: "window exceeded",
            frames: vec![
                hello(),
                batch(1, one_event(1)),
                batch(2, one_event(2)),
                batch(3, one_event(3)),
            ],
            expected: ErrorCode::WindowExceeded,
        },
        HubCase {
            name: "oversized frame header",
            frames: vec![hello(), oversized],
            expected: ErrorCode::FrameTooLarge,
        },
        HubCase {
            name: "unknown message type",
            frames: vec![hello(), vec![0, 0, 0, 0, 0x7F, 0x7F]],
            expected: ErrorCode::UnknownMessageType,
        },
        HubCase {
            name: "garbage body",
            frames: vec![hello(), vec![0, 0, 0, 3, 0x00, 0x10, 0xFF, 0xFF, 0xFF]],
            expected: ErrorCode::MalformedFrame,
        },
        HubCase {
            name: "welcome sent to the hub",
            frames: vec![hello(), tiny_welcome(1)],
            expected: ErrorCode::UnexpectedMessage,
        },
        HubCase {
            name: "renewal request before hello",
            frames: vec![renew_request()],
            expected: ErrorCode::UnexpectedMessage,
        },
        HubCase {
            name: "second renewal request on one session",
            frames: vec![hello(), renew_request(), renew_request()],
            expected: ErrorCode::LimitExceeded,
        },
        HubCase {
            name: "renewal request without the capability",
            frames: vec![
                encode(Message::Hello(Hello {
                    protocol_version: 1,
                    agent_version: "old".into(),
                    capabilities: capability::ALL_V1 & !capability::RENEW,
                    down_cursor: 0,
                })),
                renew_request(),
            ],
            expected: ErrorCode::UnexpectedMessage,
        },
        HubCase {
            name: "renewal answer sent to the hub",
            frames: vec![hello(), renew_refused("no")],
            expected: ErrorCode::UnexpectedMessage,
        },
        HubCase {
            name: "down ack for nothing sent",
            frames: vec![hello(), encode(Message::DownAck(DownAck { cursor: 99 }))],
            expected: ErrorCode::SequenceViolation,
        },
    ];
    for case in cases {
        for whole_frames in [true, false] {
            let mut hub = HubSession::new(small_limits(), site(), T0, Duration::ZERO);
            for f in &case.frames {
                if whole_frames {
                    hub.handle_frame(Duration::ZERO, f);
                } else {
                    // Byte by byte through the stream decoder.
                    for b in f {
                        hub.handle_stream_bytes(Duration::ZERO, std::slice::from_ref(b));
                    }
                }
            }
            assert_eq!(
                hub.close_reason().map(CloseReason::code),
                Some(case.expected),
                "{} (whole frames: {whole_frames})",
                case.name
            );
            // The peer is told, in an error frame that is the last thing sent.
            let out = hub_output(&mut hub);
            match out.last() {
                Some(Message::Error(e)) => assert_eq!(e.code, case.expected, "{}", case.name),
                other => panic!("{}: last frame {other:?}", case.name),
            }
            // Nothing after the close reaches the store, and input is ignored without panic.
            let mut events = Vec::new();
            while let Some(e) = hub.poll_event() {
                events.push(e);
            }
            assert!(
                matches!(events.last(), Some(HubEvent::Closed(_))),
                "{}: {events:?}",
                case.name
            );
            hub.handle_frame(Duration::ZERO, &hello());
            assert!(hub.poll_event().is_none());
        }
    }
}

#[test]
fn edge_rejects_misbehaving_hubs() {
    let welcome = encode(Message::Welcome(Welcome {
        protocol_version: 1,
        capabilities: capability::ALL_V1,
        site_id: site(),
        hub_time: T0,
        batch_items_max: 3,
        inflight_batches_max: 2,
        frame_bytes_max: 4096,
    }));
    let down = |cursor| {
        encode(Message::DownBatch(DownBatch {
            cursor,
            items: vec![DownItem::RecordChange(change(1, b"x"))],
        }))
    };
    let cases: Vec<(&str, Vec<Vec<u8>>, ErrorCode)> = vec![
        (
            "ack before welcome",
            vec![encode(Message::Ack(Ack { up_to_seq: 1 }))],
            ErrorCode::UnexpectedMessage,
        ),
        (
            "ack with nothing in flight",
            vec![welcome.clone(), encode(Message::Ack(Ack { up_to_seq: 1 }))],
            ErrorCode::SequenceViolation,
        ),
        (
            "down cursor not increasing",
            vec![welcome.clone(), down(5), down(5)],
            ErrorCode::SequenceViolation,
        ),
        (
            "down window exceeded",
            vec![welcome.clone(), down(1), down(2), down(3)],
            ErrorCode::WindowExceeded,
        ),
        (
            "newer protocol",
            vec![tiny_welcome(9)],
            ErrorCode::UnsupportedVersion,
        ),
        (
            "events sent to the edge",
            vec![welcome.clone(), batch(1, one_event(1))],
            ErrorCode::UnexpectedMessage,
        ),
        (
            "renewal answer nobody asked for",
            vec![welcome.clone(), renew_refused("unasked")],
            ErrorCode::UnexpectedMessage,
        ),
        (
            "renewal request sent to the edge",
            vec![welcome.clone(), renew_request()],
            ErrorCode::UnexpectedMessage,
        ),
    ];
    for (name, frames, expected) in cases {
        let mut edge = EdgeSession::new(small_limits(), 0, Duration::ZERO);
        for f in &frames {
            edge.handle_frame(Duration::ZERO, f);
        }
        assert_eq!(
            edge.close_reason().map(CloseReason::code),
            Some(expected),
            "{name}"
        );
        let out = edge_output(&mut edge);
        assert!(
            matches!(out.last(), Some(Message::Error(e)) if e.code == expected),
            "{name}: {out:?}"
        );
    }
}

#[test]
fn remote_error_closes_without_answer() {
    let mut edge = EdgeSession::new(small_limits(), 0, Duration::ZERO);
    let _ = edge_output(&mut edge);
    edge.handle_frame(
        Duration::ZERO,
        &encode(Message::Error(ErrorFrame::new(
            ErrorCode::Unauthorized,
            "revoked",
        ))),
    );
    assert_eq!(
        edge.close_reason(),
        Some(&CloseReason::Remote {
            code: ErrorCode::Unauthorized,
            message: "revoked".into()
        })
    );
    assert!(edge_output(&mut edge).is_empty(), "no answer to an error");
}

#[test]
fn down_sync_and_master_data_reach_the_edge_and_are_acked() {
    let mut lb = Loopback::new(small_limits());
    for (i, record) in crate::samples::all_master_records().into_iter().enumerate() {
        lb.hub_store.publish(
            &site(),
            DownItem::MasterUpsert {
                version: i as u64 + 1,
                record,
            },
        );
    }
    for n in 0..7 {
        lb.hub_store
            .publish(&site(), DownItem::RecordChange(change(n, &[n as u8, 1])));
    }
    lb.settle();
    assert_eq!(lb.edge_store.master().len(), 5);
    assert_eq!(
        lb.edge_store.current_down_cursor(),
        lb.hub_store.down_head(&site())
    );
    assert_eq!(
        lb.hub_store.down_acked(&site()),
        lb.hub_store.down_head(&site())
    );
    // A release published while connected arrives after a notification.
    lb.hub_store
        .publish(&site(), DownItem::RecordChange(change(99, b"release")));
    lb.hub.down_available();
    lb.settle();
    assert_eq!(
        lb.edge_store.record_hashes(),
        lb.hub_store.record_hashes(&site())
    );
    assert_eq!(
        lb.edge_store.current_down_cursor(),
        lb.hub_store.down_head(&site())
    );
}

#[test]
fn repair_heals_divergent_copies_both_ways() {
    let mut lb = Loopback::new(small_limits());
    // The edge has changes the hub never got (lost outbox after a restore) and the hub has
    // changes that were never in the edge's down log position; five records so the heads go
    // out in several pages.
    for n in 0..5 {
        lb.edge_store
            .apply_change_without_outbox(&change(n, &[b'e', n as u8]));
        lb.hub_store
            .apply_change_without_publish(&site(), &change(n + 2, &[b'h', n as u8]));
    }
    lb.settle();
    assert_ne!(
        lb.edge_store.record_hashes(),
        lb.hub_store.record_hashes(&site())
    );
    lb.edge.start_repair();
    lb.settle();
    assert!(!lb.edge.repair_in_progress());
    assert_eq!(
        lb.edge_store.record_hashes(),
        lb.hub_store.record_hashes(&site())
    );
    assert_eq!(lb.edge_store.record_hashes().len(), 7);
}

#[test]
fn store_failure_on_the_edge_closes_and_loses_nothing() {
    let mut lb = Loopback::new(small_limits());
    lb.edge_store
        .record_event(event(1, all_event_bodies().remove(0)));
    lb.drive();
    lb.deliver(usize::MAX);
    lb.drive();
    lb.deliver(usize::MAX);
    lb.edge_store.fail_next_call();
    let r = lb.drive_edge();
    assert!(r.is_err());
    assert_eq!(
        lb.edge.close_reason().map(CloseReason::code),
        Some(ErrorCode::Internal)
    );
    lb.reconnect();
    lb.settle();
    assert_eq!(lb.hub_store.events(&site()).len(), 1);
    assert_eq!(lb.edge_store.pending(), 0);
}
