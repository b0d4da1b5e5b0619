//! Property tests.
//!
//! * Any message encodes and decodes back to itself.
//! * Arbitrary bytes never panic the decoder (as a whole frame, or as a stream in arbitrary
//!   chunks), and never panic a session in any state.
//! * An edge and a hub exchanging over pipes that chunk bytes arbitrarily, with connections
//!   dropped at random moments, converge: every event reaches the hub exactly once, the
//!   edge's outbox drains, both hold the same record changes, and the edge holds the newest
//!   master data and the hub's down cursor; after a repair, changes either side lost track
//!   of are on both sides too.

use std::time::Duration;

use proptest::prelude::*;
use shared_model::event::{
    ClockAction, Correction, EquipmentStateChange, MachineState, MaterialMovement, OperatorClock,
    ProductionCount, QualitySample, Replacement,
};
use shared_model::master::{MasterKind, MasterRecord, Material, Tracking};
use shared_model::{
    BadgeId, CharacteristicId, EquipmentId, Event, EventBody, EventId, LotId, MaterialId,
    ReasonCodeId, SiteId, Timestamp, WorkOrderId,
};
use sync_protocol::frame::{self, FrameDecoder};
use sync_protocol::message::*;
use sync_protocol::session::{EdgeSession, HubSession, Limits, SessionConfig};

use crate::harness::Loopback;
use crate::samples::{T0, all_messages, site};

fn code() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}"
}

fn finite() -> impl Strategy<Value = f64> {
    -1e9f64..1e9
}

fn ts() -> impl Strategy<Value = Timestamp> {
    any::<i64>().prop_map(Timestamp::from_micros)
}

fn production() -> impl Strategy<Value = ProductionCount> {
    (
        code(),
        proptest::option::of(code()),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(code()),
    )
        .prop_map(|(e, wo, good, scrap, rework, reason)| ProductionCount {
            equipment: EquipmentId::new(e).unwrap(),
            work_order: wo.map(|w| WorkOrderId::new(w).unwrap()),
            good,
            scrap,
            rework,
            scrap_reason: reason.map(|r| ReasonCodeId::new(r).unwrap()),
        })
}

fn movement() -> impl Strategy<Value = MaterialMovement> {
    (code(), code(), finite(), proptest::option::of(code())).prop_map(|(l, m, q, e)| {
        MaterialMovement {
            lot: LotId::new(l).unwrap(),
            material: MaterialId::new(m).unwrap(),
            quantity: q,
            work_order: None,
            equipment: e.map(|e| EquipmentId::new(e).unwrap()),
        }
    })
}

fn plain_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        production().prop_map(EventBody::ProductionCount),
        (code(), 0..5u8, proptest::option::of(code())).prop_map(|(e, s, r)| {
            EventBody::EquipmentState(EquipmentStateChange {
                equipment: EquipmentId::new(e).unwrap(),
                state: [
                    MachineState::Running,
                    MachineState::Idle,
                    MachineState::Down,
                    MachineState::Setup,
                    MachineState::PlannedStop,
                ][s as usize],
                reason: r.map(|r| ReasonCodeId::new(r).unwrap()),
            })
        }),
        (
            code(),
            finite(),
            proptest::option::of(finite()),
            any::<bool>()
        )
            .prop_map(|(c, v, l, pass)| EventBody::QualitySample(QualitySample {
                equipment: None,
                work_order: None,
                lot: None,
                characteristic: CharacteristicId::new(c).unwrap(),
                value: v,
                lower_limit: l,
                upper_limit: None,
                pass,
            })),
        movement().prop_map(EventBody::MaterialConsumed),
        movement().prop_map(EventBody::MaterialProduced),
        (code(), any::<bool>()).prop_map(|(b, inn)| EventBody::OperatorClock(OperatorClock {
            badge: BadgeId::new(b).unwrap(),
            action: if inn {
                ClockAction::In
            } else {
                ClockAction::Out
            },
            equipment: None,
        })),
    ]
}

fn body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        4 => plain_body(),
        1 => (any::<u64>(), proptest::option::of(production()), ".{0,40}").prop_map(
            |(n, r, note)| EventBody::Correction(Correction {
                corrects: EventId::from_parts(n >> 16, [n as u8; 10]),
                replacement: r.map(Replacement::ProductionCount),
                note,
            })
        ),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<u64>(),
        any::<[u8; 10]>(),
        ts(),
        ts(),
        proptest::option::of(code()),
        body(),
    )
        .prop_map(|(ms, rnd, occurred_at, recorded_at, op, body)| Event {
            event_id: EventId::from_parts(ms >> 16, rnd),
            site_id: SiteId::new("SITE_001").unwrap(),
            occurred_at,
            recorded_at,
            operator: op.map(|o| BadgeId::new(o).unwrap()),
            body,
        })
}

fn record_change() -> impl Strategy<Value = RecordChange> {
    (
        0..3u8,
        code(),
        proptest::collection::vec(any::<u8>(), 1..64),
    )
        .prop_map(|(k, id, bytes)| {
            let kind = [
                RecordKind::WorkOrder,
                RecordKind::NonConformance,
                RecordKind::LotHold,
            ][k as usize];
            RecordChange::new(RecordId::new(kind, id).unwrap(), bytes).unwrap()
        })
}

fn down_item() -> impl Strategy<Value = DownItem> {
    prop_oneof![
        record_change().prop_map(DownItem::RecordChange),
        (any::<u64>(), code(), ".{1,20}").prop_map(|(version, id, name)| {
            DownItem::MasterUpsert {
                version,
                record: MasterRecord::Material(Material {
                    id: MaterialId::new(id).unwrap(),
                    name,
                    unit: "pcs".into(),
                    tracking: Tracking::Serial,
                }),
            }
        }),
        (any::<u64>(), ".{0,20}").prop_map(|(version, key)| DownItem::MasterDelete {
            version,
            kind: MasterKind::Equipment,
            key,
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u16>(), ".{0,30}", any::<u64>(), any::<u64>()).prop_map(|(v, a, c, d)| {
            Message::Hello(Hello {
                protocol_version: v,
                agent_version: a,
                capabilities: c,
                down_cursor: d,
            })
        }),
        (any::<u64>(), ts(), any::<u32>()).prop_map(|(c, t, n)| Message::Welcome(Welcome {
            protocol_version: 1,
            capabilities: c,
            site_id: site(),
            hub_time: t,
            batch_items_max: n,
            inflight_batches_max: n / 2,
            frame_bytes_max: n / 3,
        })),
        (any::<u64>(), proptest::collection::vec(event(), 0..8)).prop_map(|(s, events)| {
            Message::EventBatch(EventBatch {
                last_seq: s,
                events,
            })
        }),
        (
            any::<u64>(),
            proptest::collection::vec(record_change(), 0..8)
        )
            .prop_map(|(s, changes)| Message::RecordChanges(RecordChanges {
                last_seq: s,
                changes
            })),
        any::<u64>().prop_map(|s| Message::Ack(Ack { up_to_seq: s })),
        (any::<u64>(), proptest::collection::vec(down_item(), 0..8))
            .prop_map(|(cursor, items)| Message::DownBatch(DownBatch { cursor, items })),
        any::<u64>().prop_map(|c| Message::DownAck(DownAck { cursor: c })),
        (
            proptest::collection::vec(
                (
                    record_change(),
                    proptest::collection::vec(any::<[u8; 32]>(), 0..4)
                ),
                0..6
            ),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(rs, last_page, reply)| Message::HeadsSummary(HeadsSummary {
                    records: rs
                        .into_iter()
                        .map(|(c, heads)| RecordHeads {
                            record: c.record,
                            heads
                        })
                        .collect(),
                    last_page,
                    reply,
                })
            ),
        proptest::collection::vec(record_change(), 0..8)
            .prop_map(|changes| Message::RepairChanges(RepairChanges { changes })),
        (any::<u16>(), ".{0,60}")
            .prop_map(|(c, m)| Message::Error(ErrorFrame::new(ErrorCode::from_u16(c), m))),
        any::<u64>().prop_map(|n| Message::Ping(Ping { nonce: n })),
        any::<u64>().prop_map(|n| Message::Pong(Pong { nonce: n })),
    ]
}

/// Valid frames cut and mutated, plus plain noise: inputs that reach deep into the decoder.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        0..all_messages().len(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<usize>(),
    )
        .prop_map(|(i, flips, cut)| {
            let mut f =
                frame::encode(&all_messages()[i].1, frame::FRAME_BODY_BYTES_MAX_DEFAULT).unwrap();
            for (pos, b) in flips {
                let len = f.len();
                f[pos % len] ^= b;
            }
            let keep = cut % (f.len() + 1);
            f.truncate(keep.max(6));
            f
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), mutated]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn messages_round_trip(m in message()) {
        let f = frame::encode(&m, frame::FRAME_BODY_BYTES_MAX_DEFAULT).unwrap();
        let back = frame::decode(&f, frame::FRAME_BODY_BYTES_MAX_DEFAULT).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn decoder_never_panics(bytes in hostile_bytes(), chunk in 1usize..64) {
        let _ = frame::decode(&bytes, 1 << 16);
        let mut d = FrameDecoder::new(1 << 16);
        for c in bytes.chunks(chunk) {
            d.push(c);
            // Drain until it wants more or fails; a failure is final.
            while let Ok(Some(_)) = d.next_message() {}
        }
    }

    #[test]
    fn sessions_never_panic_on_hostile_input(
        frames in proptest::collection::vec(hostile_bytes(), 1..6),
        established in any::<bool>(),
    ) {
        let cfg = SessionConfig::default();
        let mut hub = HubSession::new(cfg.clone(), site(), T0, Duration::ZERO);
        let mut edge = EdgeSession::new(cfg, 0, Duration::ZERO);
        if established {
            let hello = edge.poll_transmit().unwrap();
            hub.handle_frame(Duration::ZERO, &hello);
            let welcome = hub.poll_transmit().unwrap();
            edge.handle_frame(Duration::ZERO, &welcome);
        }
        for f in &frames {
            hub.handle_stream_bytes(Duration::ZERO, f);
            edge.handle_frame(Duration::ZERO, f);
            while hub.poll_event().is_some() {}
            while edge.poll_event().is_some() {}
            while hub.poll_transmit().is_some() {}
            while edge.poll_transmit().is_some() {}
        }
    }
}

/// One step of the convergence scenario.
#[derive(Debug, Clone)]
enum Op {
    EdgeEvent,
    EdgeChange(u8, u8),
    HubChange(u8, u8),
    HubMaster(u8),
    Deliver(usize),
    Drive,
    Reconnect,
    NotifyHub,
    /// A change one side has without the other being told (an edge restored from an old
    /// backup, a hub restored differently); only repair can heal it.
    EdgeLost(u8, u8),
    HubLost(u8, u8),
    Repair,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::EdgeEvent),
        2 => (0..6u8, any::<u8>()).prop_map(|(r, b)| Op::EdgeChange(r, b)),
        2 => (0..6u8, any::<u8>()).prop_map(|(r, b)| Op::HubChange(r, b)),
        1 => (0..4u8).prop_map(Op::HubMaster),
        6 => (1usize..400).prop_map(Op::Deliver),
        4 => Just(Op::Drive),
        1 => Just(Op::Reconnect),
        1 => Just(Op::NotifyHub),
        1 => (0..8u8, any::<u8>()).prop_map(|(r, b)| Op::EdgeLost(r, b)),
        1 => (0..8u8, any::<u8>()).prop_map(|(r, b)| Op::HubLost(r, b)),
        1 => Just(Op::Repair),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn sessions_converge_over_chunked_pipes_with_reconnects(
        ops in proptest::collection::vec(op(), 1..120),
        small in any::<bool>(),
    ) {
        let limits = if small {
            Limits { batch_items_max: 2, inflight_batches_max: 2, frame_bytes_max: 2_048, ..Limits::default() }
        } else {
            Limits::default()
        };
        let mut lb = Loopback::new(SessionConfig { limits, ..SessionConfig::default() });
        let mut n_events = 0u64;
        let mut master_version = 0u64;
        for op in ops {
            match op {
                Op::EdgeEvent => {
                    n_events += 1;
                    let body = crate::samples::all_event_bodies().remove((n_events % 7) as usize);
                    lb.edge_store.record_event(crate::samples::event(n_events, body));
                    lb.edge.outbox_grew();
                }
                Op::EdgeChange(r, b) => {
                    lb.edge_store.record_change(crate::samples::change(u32::from(r), &[b'e', b, n_events as u8]));
                    lb.edge.outbox_grew();
                }
                Op::HubChange(r, b) => {
                    lb.hub_store.publish(&site(), DownItem::RecordChange(
                        crate::samples::change(u32::from(r), &[b'h', b, master_version as u8])));
                }
                Op::HubMaster(k) => {
                    master_version += 1;
                    let record = MasterRecord::Material(Material {
                        id: MaterialId::new(format!("M{k}")).unwrap(),
                        name: format!("v{master_version}"),
                        unit: "pcs".into(),
                        tracking: Tracking::None,
                    });
                    lb.hub_store.publish(&site(), DownItem::MasterUpsert { version: master_version, record });
                }
                Op::Deliver(n) => lb.deliver(n),
                Op::Drive => lb.drive(),
                Op::Reconnect => lb.reconnect(),
                Op::NotifyHub => lb.hub.down_available(),
                Op::EdgeLost(r, b) => lb
                    .edge_store
                    .apply_change_without_outbox(&crate::samples::change(u32::from(r), &[b'x', b])),
                Op::HubLost(r, b) => lb.hub_store.apply_change_without_publish(
                    &site(),
                    &crate::samples::change(u32::from(r), &[b'y', b]),
                ),
                Op::Repair => lb.edge.start_repair(),
            }
            lb.now += Duration::from_millis(10);
        }
        // Connectivity returns for good: a fresh connection and the network drains.
        lb.reconnect();
        lb.settle();
        lb.edge.start_repair();
        lb.settle();
        prop_assert!(lb.edge.is_established());
        prop_assert!(!lb.edge.repair_in_progress());
        prop_assert_eq!(lb.edge_store.pending(), 0);
        let mut at_hub: Vec<EventId> = lb.hub_store.events(&site()).iter().map(|e| e.event_id).collect();
        let mut at_edge: Vec<EventId> = lb.edge_store.events().iter().map(|e| e.event_id).collect();
        at_hub.sort();
        at_edge.sort();
        prop_assert_eq!(at_hub.len() as u64, n_events);
        prop_assert_eq!(at_hub, at_edge);
        prop_assert_eq!(lb.edge_store.record_hashes(), lb.hub_store.record_hashes(&site()));
        prop_assert_eq!(lb.edge_store.current_down_cursor(), lb.hub_store.down_head(&site()));
        prop_assert_eq!(lb.hub_store.down_acked(&site()), lb.hub_store.down_head(&site()));
        // The edge holds the newest version of every material HQ published.
        for ((kind, key), (version, record)) in lb.edge_store.master() {
            prop_assert_eq!(kind, MasterKind::Material);
            let Some(MasterRecord::Material(m)) = record else { panic!("{key} deleted") };
            prop_assert_eq!(m.name, format!("v{version}"));
        }
    }
}
