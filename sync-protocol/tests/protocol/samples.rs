//! Fixed sample values of every wire type, used by the golden fixtures and the session tests.

use shared_model::event::{
    ClockAction, Correction, EquipmentStateChange, MachineState, MaterialMovement, OperatorClock,
    ProductionCount, QualitySample, Replacement,
};
use shared_model::master::{
    Break, Equipment, EquipmentLevel, LossCategory, MasterKind, MasterRecord, Material, ReasonCode,
    RoutingStep, ShiftCalendar, ShiftInstance, Tracking,
};
use shared_model::{
    BadgeId, CharacteristicId, EquipmentId, Event, EventBody, EventId, LotId, MaterialId,
    ReasonCodeId, SiteId, Timestamp, WorkOrderId,
};
use sync_protocol::gap::{Span, Summary};
use sync_protocol::message::*;

pub(crate) const T0: Timestamp = Timestamp::from_millis(1_795_000_000_000);

/// A span of recording times from T0 + `from` to T0 + `to` microseconds.
pub(crate) fn span(from: i64, to: i64) -> Span {
    Span {
        from: T0.saturating_add_micros(from),
        to: T0.saturating_add_micros(to),
    }
}

pub(crate) fn site() -> SiteId {
    SiteId::new("SITE_001").unwrap()
}

pub(crate) fn event_id(n: u64) -> EventId {
    EventId::from_parts(1_795_000_000_000 + n, [n as u8; 10])
}

pub(crate) fn event(n: u64, body: EventBody) -> Event {
    Event {
        event_id: event_id(n),
        site_id: site(),
        occurred_at: T0,
        recorded_at: T0.saturating_add_micros(1_500),
        operator: Some(BadgeId::new("B-0042").unwrap()),
        body,
    }
}

pub(crate) fn count(good: u32, scrap: u32) -> ProductionCount {
    ProductionCount {
        equipment: EquipmentId::new("PRESS-01").unwrap(),
        work_order: Some(WorkOrderId::new("SITE_001-WO-000123").unwrap()),
        good,
        scrap,
        rework: 0,
        scrap_reason: (scrap > 0).then(|| ReasonCodeId::new("SCRAP.BURR").unwrap()),
    }
}

/// One event of every kind.
pub(crate) fn all_event_bodies() -> Vec<EventBody> {
    let movement = MaterialMovement {
        lot: LotId::new("LOT-2026-0001").unwrap(),
        material: MaterialId::new("STEEL-S235").unwrap(),
        quantity: 12.5,
        work_order: Some(WorkOrderId::new("SITE_001-WO-000123").unwrap()),
        equipment: None,
    };
    vec![
        EventBody::ProductionCount(count(120, 3)),
        EventBody::EquipmentState(EquipmentStateChange {
            equipment: EquipmentId::new("PRESS-01").unwrap(),
            state: MachineState::Down,
            reason: Some(ReasonCodeId::new("DOWN.JAM").unwrap()),
        }),
        EventBody::QualitySample(QualitySample {
            equipment: Some(EquipmentId::new("PRESS-01").unwrap()),
            work_order: None,
            lot: None,
            characteristic: CharacteristicId::new("diameter_mm").unwrap(),
            value: 10.02,
            lower_limit: Some(9.95),
            upper_limit: Some(10.05),
            pass: true,
        }),
        EventBody::MaterialConsumed(movement.clone()),
        EventBody::MaterialProduced(MaterialMovement {
            lot: LotId::new("LOT-2026-0002").unwrap(),
            ..movement
        }),
        EventBody::Correction(Correction {
            corrects: event_id(1),
            replacement: Some(Replacement::ProductionCount(count(118, 5))),
            note: "recount at shift end".into(),
        }),
        EventBody::OperatorClock(OperatorClock {
            badge: BadgeId::new("B-0042").unwrap(),
            action: ClockAction::In,
            equipment: None,
        }),
    ]
}

pub(crate) fn record(n: u32) -> RecordId {
    RecordId::new(RecordKind::WorkOrder, format!("SITE_001-WO-{n:06}")).unwrap()
}

pub(crate) fn change(n: u32, bytes: &[u8]) -> RecordChange {
    RecordChange::new(record(n), bytes.to_vec()).unwrap()
}

/// One master record of every kind.
pub(crate) fn all_master_records() -> Vec<MasterRecord> {
    vec![
        MasterRecord::Material(Material {
            id: MaterialId::new("STEEL-S235").unwrap(),
            name: "Steel S235 sheet".into(),
            unit: "kg".into(),
            tracking: Tracking::Lot,
        }),
        MasterRecord::RoutingStep(RoutingStep {
            material: MaterialId::new("BRACKET-7").unwrap(),
            version: 3,
            seq: 10,
            operation_code: "PRESS".into(),
            work_center_class: "press".into(),
            ideal_cycle_time_ms: 2_000,
            setup_time_ms: 900_000,
        }),
        MasterRecord::ReasonCode(ReasonCode {
            code: ReasonCodeId::new("DOWN.JAM").unwrap(),
            parent: Some(ReasonCodeId::new("DOWN").unwrap()),
            name: "Material jam".into(),
            loss_category: LossCategory::Unplanned,
            counts_against_availability: true,
        }),
        MasterRecord::Equipment(Equipment {
            id: EquipmentId::new("PRESS-01").unwrap(),
            parent: Some(EquipmentId::new("WC-PRESSES").unwrap()),
            level: EquipmentLevel::WorkUnit,
            name: "Press 1".into(),
            class: "press".into(),
        }),
        MasterRecord::ShiftCalendar(ShiftCalendar {
            site_id: site(),
            name: "3x8".into(),
            shifts: vec![ShiftInstance {
                name: "early".into(),
                start: T0,
                end: T0.saturating_add_micros(8 * 3_600_000_000),
                planned_breaks: vec![Break {
                    start: T0.saturating_add_micros(4 * 3_600_000_000),
                    end: T0.saturating_add_micros(4 * 3_600_000_000 + 1_800_000_000),
                }],
            }],
        }),
    ]
}

/// A certificate signing request as the edge sends it (shortened: the protocol does not parse
/// it, the hub does).
pub(crate) const CSR_PEM: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIHKMHICAQAwADBZMBMGByqGSM49AgEG\n-----END CERTIFICATE REQUEST-----\n";

/// The capability set the v1 fixtures were written with. Fixtures never change, so samples
/// name their values instead of following `ALL_V1` as it grows.
const FIXTURE_CAPABILITIES: u64 =
    capability::EVENTS | capability::RECORD_CHANGES | capability::DOWN_SYNC | capability::REPAIR;

/// A named sample of every message type (several for the ones with variants).
pub(crate) fn all_messages() -> Vec<(&'static str, Message)> {
    let events: Vec<Event> = all_event_bodies()
        .into_iter()
        .enumerate()
        .map(|(i, b)| event(i as u64 + 1, b))
        .collect();
    let mut down_items: Vec<DownItem> = vec![DownItem::RecordChange(change(
        7,
        b"\x85\x6f\x4a\x83hq-edit",
    ))];
    down_items.extend(
        all_master_records()
            .into_iter()
            .enumerate()
            .map(|(i, record)| DownItem::MasterUpsert {
                version: i as u64 + 1,
                record,
            }),
    );
    down_items.push(DownItem::MasterDelete {
        version: 9,
        kind: MasterKind::ReasonCode,
        key: "DOWN.OLD".into(),
    });
    vec![
        (
            "hello",
            Message::Hello(Hello {
                protocol_version: 1,
                agent_version: "edge-agent 0.1.0".into(),
                capabilities: FIXTURE_CAPABILITIES,
                down_cursor: 4_711,
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                protocol_version: 1,
                capabilities: FIXTURE_CAPABILITIES,
                site_id: site(),
                hub_time: T0,
                batch_items_max: 2_048,
                inflight_batches_max: 8,
                frame_bytes_max: 4 << 20,
            }),
        ),
        (
            "event_batch",
            Message::EventBatch(EventBatch {
                last_seq: 1_000_007,
                events,
            }),
        ),
        (
            "record_changes",
            Message::RecordChanges(RecordChanges {
                last_seq: 1_000_008,
                changes: vec![
                    change(1, b"\x85\x6f\x4a\x83site-edit"),
                    change(2, &[0, 1, 2, 255]),
                ],
            }),
        ),
        (
            "ack",
            Message::Ack(Ack {
                up_to_seq: 1_000_008,
            }),
        ),
        (
            "down_batch",
            Message::DownBatch(DownBatch {
                cursor: 90_001,
                items: down_items,
            }),
        ),
        ("down_ack", Message::DownAck(DownAck { cursor: 90_001 })),
        (
            "heads_summary",
            Message::HeadsSummary(HeadsSummary {
                records: vec![
                    RecordHeads {
                        record: record(1),
                        heads: vec![[0xAB; 32], [0x01; 32]],
                    },
                    RecordHeads {
                        record: RecordId::new(RecordKind::LotHold, "LOT-2026-0001").unwrap(),
                        heads: vec![],
                    },
                ],
                last_page: true,
                reply: false,
            }),
        ),
        (
            "repair_changes",
            Message::RepairChanges(RepairChanges {
                changes: vec![change(3, b"repair")],
            }),
        ),
        (
            "error",
            Message::Error(ErrorFrame::new(
                ErrorCode::SiteMismatch,
                "event claims site SITE_002 but the certificate is for SITE_001",
            )),
        ),
        (
            "edge_status",
            Message::EdgeStatus(EdgeStatus {
                pending_events: 512_000,
                pending_changes: 3,
                oldest_pending_at: Some(T0),
            }),
        ),
        (
            "cert_renew_request",
            Message::CertRenewRequest(CertRenewRequest {
                csr_pem: CSR_PEM.into(),
            }),
        ),
        (
            "cert_renew_response",
            Message::CertRenewResponse(CertRenewResponse {
                outcome: RenewOutcome::Issued {
                    certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIBnjCCAUSgAwIBAgIQ\n-----END CERTIFICATE-----\n".into(),
                },
            }),
        ),
        (
            "cert_renew_response_refused",
            Message::CertRenewResponse(CertRenewResponse {
                outcome: RenewOutcome::Refused {
                    message: "renewed 12 s ago; at most one renewal a minute".into(),
                },
            }),
        ),
        (
            "hub_generation",
            Message::HubGeneration(HubGeneration {
                number: 2,
                system_id: 7_441_234_567_890_123_456,
                timeline: 3,
                restore_point: Some(T0),
            }),
        ),
        (
            "gap_query",
            Message::GapQuery(GapQuery {
                spans: vec![span(0, 3_600_000_000), span(3_600_000_000, 7_200_000_000)],
            }),
        ),
        (
            "gap_summaries",
            Message::GapSummaries(GapSummaries {
                summaries: vec![
                    Summary {
                        events: 1_200,
                        digest: 0xf668_efff_0736_a189,
                    },
                    Summary::default(),
                ],
            }),
        ),
        (
            "gap_ids_query",
            Message::GapIdsQuery(GapIdsQuery {
                span: span(0, 3_600_000_000),
                after: Some(event_id(1)),
            }),
        ),
        (
            "gap_ids",
            Message::GapIds(GapIds {
                ids: vec![event_id(2), event_id(3)],
                more: true,
            }),
        ),
        (
            "heal_report",
            Message::HealReport(HealReport {
                generation: 2,
                resent: 1_234,
                unrecoverable: vec![Unrecoverable {
                    span: span(0, 3_600_000_000),
                    events: 17,
                }],
                search_bytes: 5_678,
                spans_compared: 48,
                id_pages: 3,
            }),
        ),
        ("ping", Message::Ping(Ping { nonce: 42 })),
        ("pong", Message::Pong(Pong { nonce: 42 })),
    ]
}
