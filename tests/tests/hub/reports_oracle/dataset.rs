//! The random cases: the test's own master data (sites in two time zones, presses, routings,
//! orders, reasons, a shift calendar) and the events of a case, generated from a seed and cut
//! into batches with re-sends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared_model::event::{
    Correction, EquipmentStateChange, MachineState, MaterialMovement, ProductionCount, Replacement,
};
use shared_model::{
    EquipmentId, Event, EventBody, EventId, LotId, MaterialId, ReasonCodeId, SiteId, WorkOrderId,
};
use system_tests::hq::t;
use system_tests::rng::Rng;

pub(super) const SITES: [(&str, &str); 2] =
    [("SITE_A", "Europe/Berlin"), ("SITE_K", "Asia/Kolkata")];
pub(super) const PRESSES: [&str; 3] = ["PRESS-01", "PRESS-02", "PRESS-03"];
/// The equipment master: (id, work centre, class). PRESS-03 is not in it.
pub(super) const EQUIPMENT: [(&str, &str, &str); 2] = [
    ("PRESS-01", "WC-PRESS", "press"),
    ("PRESS-02", "WC-LASER", "laser"),
];
/// Routing steps: (material, version, seq, work-centre class, ideal cycle ms).
pub(super) const ROUTINGS: [(&str, u32, u32, &str, u64); 5] = [
    ("BRACKET", 1, 10, "press", 1500),
    ("BRACKET", 1, 20, "laser", 2500),
    ("BRACKET", 2, 5, "press", 700),
    ("HINGE", 1, 10, "weld", 4000),
    ("HINGE", 1, 20, "press", 3000),
];
/// Orders released at every site: (suffix, material). `WO-3` is named by events but never
/// released (no product, no ideal time).
pub(super) const ORDERS: [(&str, &str); 2] = [("WO-1", "BRACKET"), ("WO-2", "HINGE")];
/// The reason master: (code, name, loss category, counts against availability). `MYSTERY`
/// (used by events) is not in it.
pub(super) const REASON_MASTER: [(&str, &str, &str, bool); 4] = [
    ("JAM", "Jam", "unplanned", true),
    ("WAIT", "Waiting", "unplanned", true),
    ("BREAK", "Break", "planned", false),
    ("ADJUST", "Adjustment", "speed", false),
];
const STATES: [MachineState; 5] = [
    MachineState::Running,
    MachineState::Idle,
    MachineState::Down,
    MachineState::Setup,
    MachineState::PlannedStop,
];
const REASONS: [Option<&str>; 6] = [
    None,
    Some("JAM"),
    Some("WAIT"),
    Some("BREAK"),
    Some("ADJUST"),
    Some("MYSTERY"),
];
const SCRAP_REASONS: [Option<&str>; 3] = [None, Some("BURR"), Some("CRACK")];
/// The window events fall in: 2026-11-02T00:00Z plus up to three days.
const WINDOW_START: &str = "2026-11-02T00:00:00Z";
const WINDOW_MINUTES: u64 = 3 * 24 * 60;
/// Kolkata's shifts on 2026-11-02..04 (UTC): (name, start, end, break start, break end) as
/// hh:mm on the day; `N` runs 19:30–23:30 UTC = 01:00–05:00 local on the next local date.
pub(super) const K_SHIFTS: [(&str, &str, &str, &str, &str); 3] = [
    ("A", "00:30", "08:30", "04:30", "04:50"),
    ("B", "08:30", "16:30", "12:30", "12:50"),
    ("N", "19:30", "23:30", "21:00", "21:15"),
];

/// The ideal cycle time (ms) of `material` on `equipment`, by the contract's rule: the step
/// whose class is the equipment's (lowest version, then seq), else the material's first step.
pub(super) fn ideal_ms(material: &str, equipment: &str) -> u64 {
    let class = EQUIPMENT.iter().find(|e| e.0 == equipment).map(|e| e.2);
    let mut steps: Vec<_> = ROUTINGS.iter().filter(|r| r.0 == material).collect();
    steps.sort_by_key(|r| (r.1, r.2));
    steps
        .iter()
        .find(|r| Some(r.3) == class)
        .or(steps.first())
        .map_or(0, |r| r.4)
}

pub(super) fn wo(site: &str, rng: &mut Rng) -> Option<WorkOrderId> {
    let n = match rng.below(12) {
        0 | 1 => return None,
        2 => 3,
        x => x % 2 + 1,
    };
    Some(WorkOrderId::new(format!("{site}-WO-{n}")).unwrap())
}

/// One random case: the events of both sites, in generation order.
pub(super) fn generate(rng: &mut Rng) -> Vec<Event> {
    let start = t(WINDOW_START);
    let mut out: Vec<Event> = Vec::new();
    let mut n: u64 = 0;
    for (site, _) in SITES {
        let sid = SiteId::new(site).unwrap();
        let mut mk = |rng: &mut Rng, minute: u64, second: u64, body: EventBody| {
            n += 1;
            let at = start.saturating_add_micros(((minute * 60 + second) * 1_000_000) as i64);
            // Ids grow with generation order (their time part), like real UUIDv7s.
            let id = EventId::from_parts(1_795_000_000_000 + n * 1000, {
                let mut r = [0u8; 10];
                r[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
                r
            });
            Event {
                event_id: id,
                site_id: sid.clone(),
                occurred_at: at,
                recorded_at: at,
                operator: None,
                body,
            }
        };
        for (p, press) in PRESSES.iter().enumerate() {
            let changes = 3 + rng.below(14);
            let mut minute = rng.below(600);
            for c in 0..changes {
                let second = (p as u64 * 17 + c) % 60;
                // Sometimes two changes at the same instant (ordered by event id).
                let same_instant = 1 + u64::from(rng.below(8) == 0);
                for _ in 0..same_instant {
                    let st = *rng.pick(&STATES);
                    let reason = if st == MachineState::Running {
                        None
                    } else {
                        *rng.pick(&REASONS)
                    };
                    let body = EventBody::EquipmentState(EquipmentStateChange {
                        equipment: EquipmentId::new(*press).unwrap(),
                        state: st,
                        reason: reason.map(|r| ReasonCodeId::new(r).unwrap()),
                    });
                    out.push(mk(rng, minute, second, body));
                }
                // Mostly hours apart, sometimes a short (small) stop.
                minute += if rng.below(4) == 0 {
                    1
                } else {
                    20 + rng.below(300)
                };
                if minute >= WINDOW_MINUTES {
                    break;
                }
            }
            for _ in 0..(5 + rng.below(25)) {
                let scrap = rng.below(4) as u32;
                let body = EventBody::ProductionCount(ProductionCount {
                    equipment: EquipmentId::new(*press).unwrap(),
                    work_order: wo(site, rng),
                    good: rng.below(300) as u32,
                    scrap,
                    rework: 0,
                    scrap_reason: if scrap > 0 {
                        rng.pick(&SCRAP_REASONS)
                            .map(|r| ReasonCodeId::new(r).unwrap())
                    } else {
                        None
                    },
                });
                let (minute, second) = (rng.below(WINDOW_MINUTES), rng.below(60));
                out.push(mk(rng, minute, second, body));
            }
        }
        for l in 0..3u64 {
            let body = EventBody::MaterialConsumed(MaterialMovement {
                lot: LotId::new(format!("{site}-RAW-{l}")).unwrap(),
                material: MaterialId::new("STEEL").unwrap(),
                quantity: 10.0 + l as f64,
                work_order: wo(site, rng),
                equipment: None,
            });
            let (minute, second) = (rng.below(WINDOW_MINUTES), rng.below(60));
            out.push(mk(rng, minute, second, body));
        }
    }
    // Corrections: of random earlier facts (production and state; some twice, some voiding,
    // some moving a count to other equipment or order), of earlier corrections, and of events
    // that never arrive.
    let facts: Vec<Event> = out
        .iter()
        .filter(|e| {
            matches!(
                e.body,
                EventBody::ProductionCount(_) | EventBody::EquipmentState(_)
            )
        })
        .cloned()
        .collect();
    let mut corrections: Vec<Event> = Vec::new();
    let count = 3 + rng.below(12);
    for i in 0..count {
        let roll = rng.below(10);
        let (site_id, corrects, replacement) = if roll == 0 && !corrections.is_empty() {
            let c = rng.pick(&corrections).clone();
            let x = rng.pick(&facts).clone();
            let r = match x.body {
                EventBody::ProductionCount(p) => Some(Replacement::ProductionCount(p)),
                _ => None,
            };
            (c.site_id, c.event_id, r)
        } else if roll == 1 {
            let x = rng.pick(&facts).clone();
            let ghost = EventId::from_parts(1_795_500_000_000 + i, [0xEE; 10]);
            let r = match x.body {
                EventBody::ProductionCount(p) => Some(Replacement::ProductionCount(p)),
                _ => None,
            };
            (x.site_id, ghost, r)
        } else {
            let x = rng.pick(&facts).clone();
            let r = match (&x.body, rng.below(4)) {
                (_, 0) => None,
                (EventBody::ProductionCount(p), 1) => {
                    Some(Replacement::ProductionCount(ProductionCount {
                        equipment: EquipmentId::new(*rng.pick(&PRESSES)).unwrap(),
                        work_order: wo(x.site_id.as_str(), rng),
                        ..p.clone()
                    }))
                }
                // Rarely, a replacement of another kind: the count was really a stop.
                (EventBody::ProductionCount(p), 2) if rng.below(3) == 0 => {
                    Some(Replacement::EquipmentState(EquipmentStateChange {
                        equipment: p.equipment.clone(),
                        state: MachineState::Down,
                        reason: Some(ReasonCodeId::new("WAIT").unwrap()),
                    }))
                }
                (EventBody::ProductionCount(p), _) => {
                    Some(Replacement::ProductionCount(ProductionCount {
                        good: rng.below(50) as u32,
                        scrap: rng.below(3) as u32,
                        scrap_reason: Some(ReasonCodeId::new("CRACK").unwrap()),
                        ..p.clone()
                    }))
                }
                // A state change booked on the wrong equipment.
                (EventBody::EquipmentState(s), 1) => {
                    Some(Replacement::EquipmentState(EquipmentStateChange {
                        equipment: EquipmentId::new(*rng.pick(&PRESSES)).unwrap(),
                        ..s.clone()
                    }))
                }
                (EventBody::EquipmentState(s), _) => {
                    let st = *rng.pick(&STATES);
                    Some(Replacement::EquipmentState(EquipmentStateChange {
                        state: st,
                        reason: (st != MachineState::Running)
                            .then(|| ReasonCodeId::new("JAM").unwrap()),
                        ..s.clone()
                    }))
                }
                _ => None,
            };
            (x.site_id, x.event_id, r)
        };
        let id = EventId::from_parts(1_796_000_000_000 + i * 1000, {
            let mut r = [0u8; 10];
            r[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
            r
        });
        corrections.push(Event {
            event_id: id,
            site_id,
            occurred_at: t("2026-11-06T00:00:00Z"),
            recorded_at: t("2026-11-06T00:00:00Z"),
            operator: None,
            body: EventBody::Correction(Correction {
                corrects,
                replacement,
                note: "oracle".into(),
            }),
        });
    }
    out.extend(corrections);
    out
}

/// Shuffles and splits one site's events into batches, re-sending some.
pub(super) fn batches(rng: &mut Rng, events: &[Event]) -> Vec<Vec<Event>> {
    let mut shuffled = events.to_vec();
    for i in (1..shuffled.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        shuffled.swap(i, j);
    }
    let mut out = Vec::new();
    let mut rest = &shuffled[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(40) as usize).min(rest.len());
        out.push(rest[..n].to_vec());
        if rng.below(4) == 0 {
            out.push(rest[..n / 2].to_vec()); // a re-send
        }
        rest = &rest[n..];
    }
    out
}
