//! Append-only facts: production counts, equipment states, quality samples, material movements,
//! operator clocking and corrections.
//!
//! Facts never change once recorded, so they need no CRDT: delivery is at-least-once and apply
//! is idempotent on [`EventId`]. A correction is a new event that references the one it
//! corrects. These types are on the wire (postcard), so fields and variants are append-only:
//! never reorder or remove them (see `docs/protocol.md`).

use serde::{Deserialize, Serialize};

use crate::ids::{
    BadgeId, CharacteristicId, EquipmentId, EventId, LotId, MaterialId, ReasonCodeId, SiteId,
    WorkOrderId,
};
use crate::timestamp::{TIMESTAMP_MIN, Timestamp};

/// Largest count one event may carry. A unit makes ~1,500 cycles a shift; a million in one
/// event is a bug in the sender, not production.
pub const COUNT_MAX: u32 = 1_000_000;
/// Largest material quantity in one event, in the material's unit.
pub const QUANTITY_MAX: f64 = 1e9;
/// Largest absolute measured value of a quality sample.
pub const MEASUREMENT_ABS_MAX: f64 = 1e12;
/// How far `occurred_at` may lie ahead of the validating clock: edge clocks drift, PLC clocks
/// more so, but an event from next week is an error.
pub const FUTURE_SKEW_MICROS_MAX: i64 = 5 * 60 * 1_000_000;
/// How far ahead of the hub's clock an event's times may be when the hub receives it: wide
/// enough for an edge whose clock drifted for days offline, narrow enough that a broken clock
/// (or a hostile peer) cannot file events decades ahead.
pub const HUB_FUTURE_SKEW_MICROS_MAX: i64 = 24 * 3600 * 1_000_000;
/// Longest free-text note (corrections).
pub const NOTE_BYTES_MAX: usize = 1_000;

/// One fact recorded at a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: EventId,
    pub site_id: SiteId,
    /// When it happened, by the edge's (or the machine's) clock.
    pub occurred_at: Timestamp,
    /// When the edge agent durably recorded it.
    pub recorded_at: Timestamp,
    pub operator: Option<BadgeId>,
    pub body: EventBody,
}

/// What happened. Externally tagged, because postcard cannot encode internally tagged enums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventBody {
    ProductionCount(ProductionCount),
    EquipmentState(EquipmentStateChange),
    QualitySample(QualitySample),
    MaterialConsumed(MaterialMovement),
    MaterialProduced(MaterialMovement),
    Correction(Correction),
    OperatorClock(OperatorClock),
}

/// The event type names used by the HTTP API's `type` field and by metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ProductionCount,
    EquipmentState,
    QualitySample,
    MaterialConsumed,
    MaterialProduced,
    Correction,
    OperatorClock,
}

crate::named_enum!(EventKind, "event type", display {
    ProductionCount => "production_count",
    EquipmentState => "equipment_state",
    QualitySample => "quality_sample",
    MaterialConsumed => "material_consumed",
    MaterialProduced => "material_produced",
    Correction => "correction",
    OperatorClock => "operator_clock",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductionCount {
    pub equipment: EquipmentId,
    pub work_order: Option<WorkOrderId>,
    pub good: u32,
    pub scrap: u32,
    pub rework: u32,
    pub scrap_reason: Option<ReasonCodeId>,
}

impl ProductionCount {
    /// `good` good parts on `equipment`: no scrap, no rework, no work order.
    pub fn good(equipment: EquipmentId, good: u32) -> Self {
        Self {
            equipment,
            work_order: None,
            good,
            scrap: 0,
            rework: 0,
            scrap_reason: None,
        }
    }
}

/// The state of a piece of equipment, as shown on the terminal and summed for availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Running,
    Idle,
    Down,
    Setup,
    PlannedStop,
    /// Nobody knows: the machine's link is down (a connector lost it, a Sparkplug node died).
    /// Counted as neither running nor a planned stop, so lost time stays visible until a
    /// correction says what it was. Last, so the wire's variant numbers of the others stand.
    Unknown,
}

// The name used in JSON, metrics and the hub's rollups.
crate::named_enum!(MachineState, "machine state", display {
    Running => "running",
    Idle => "idle",
    Down => "down",
    Setup => "setup",
    PlannedStop => "planned_stop",
    Unknown => "unknown",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EquipmentStateChange {
    pub equipment: EquipmentId,
    pub state: MachineState,
    /// Often assigned after the fact by a correction, so optional here.
    pub reason: Option<ReasonCodeId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualitySample {
    pub equipment: Option<EquipmentId>,
    pub work_order: Option<WorkOrderId>,
    pub lot: Option<LotId>,
    pub characteristic: CharacteristicId,
    pub value: f64,
    pub lower_limit: Option<f64>,
    pub upper_limit: Option<f64>,
    pub pass: bool,
}

/// Material consumed from or produced into a lot: the edges of lot genealogy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaterialMovement {
    pub lot: LotId,
    pub material: MaterialId,
    pub quantity: f64,
    pub work_order: Option<WorkOrderId>,
    pub equipment: Option<EquipmentId>,
}

/// A correction voids the event it references and, optionally, states what should have been
/// recorded instead. Reports apply corrections; the corrected event stays as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    pub corrects: EventId,
    pub replacement: Option<Replacement>,
    pub note: String,
}

/// Precedence of corrections, "latest correction wins": whether correction `candidate` takes
/// the place of `standing` as the correction in force for the event both correct.
///
/// The later-issued correction wins, whatever order they arrive in, so an edge and the hub that
/// saw the corrections in different orders agree. An event id is a UUIDv7, so "later" is the
/// greater id: its leading 48 bits are the creating clock's milliseconds, and two corrections
/// in the same millisecond are ordered by their random bits (arbitrary, but the same everywhere).
/// The comparison is the UUID's byte order, which is also PostgreSQL's `uuid` order and the order
/// of the lowercase hyphenated text the edge stores (a test checks both), so a stored id may be
/// compared in any of those forms. Equal ids are the same correction: it does not supersede
/// itself.
pub fn correction_supersedes(candidate: EventId, standing: EventId) -> bool {
    candidate > standing
}

/// The correction in force among several of the same event (see [`correction_supersedes`]);
/// `None` for none.
pub fn winning_correction(ids: impl IntoIterator<Item = EventId>) -> Option<EventId> {
    ids.into_iter().reduce(|standing, candidate| {
        if correction_supersedes(candidate, standing) {
            candidate
        } else {
            standing
        }
    })
}

/// What a correction says should have been recorded. Deliberately not [`EventBody`]: a
/// replacement cannot itself be a correction, so the type is not recursive and a hostile frame
/// cannot nest corrections deep enough to exhaust the decoder's stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replacement {
    ProductionCount(ProductionCount),
    EquipmentState(EquipmentStateChange),
    QualitySample(QualitySample),
    MaterialConsumed(MaterialMovement),
    MaterialProduced(MaterialMovement),
    OperatorClock(OperatorClock),
}

impl Replacement {
    /// The replacement as the body of an ordinary event.
    pub fn to_body(&self) -> EventBody {
        match self.clone() {
            Replacement::ProductionCount(b) => EventBody::ProductionCount(b),
            Replacement::EquipmentState(b) => EventBody::EquipmentState(b),
            Replacement::QualitySample(b) => EventBody::QualitySample(b),
            Replacement::MaterialConsumed(b) => EventBody::MaterialConsumed(b),
            Replacement::MaterialProduced(b) => EventBody::MaterialProduced(b),
            Replacement::OperatorClock(b) => EventBody::OperatorClock(b),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockAction {
    In,
    Out,
}

crate::named_enum!(ClockAction, "clock action", display { In => "in", Out => "out" });

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorClock {
    pub badge: BadgeId,
    pub action: ClockAction,
    pub equipment: Option<EquipmentId>,
}

/// Why a value was refused, and which field. `field` is a JSON-pointer-like path
/// (`body.good`) that the HTTP API returns so the sender can fix the right thing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    pub field: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("{value} is more than the maximum {max}")]
    TooLarge { value: f64, max: f64 },
    #[error("must be greater than zero")]
    NotPositive,
    #[error("is not a finite number")]
    NotFinite,
    #[error("is {ahead_secs} s in the future (at most {max_secs} s allowed)")]
    InFuture { ahead_secs: i64, max_secs: i64 },
    #[error("is before 2000-01-01, the earliest accepted time")]
    TooOld,
    #[error(
        "is {ahead_secs} s ahead of the hub's clock, at most {max_secs} s are accepted: check the edge's clock"
    )]
    AheadOfHub { ahead_secs: i64, max_secs: i64 },
    #[error("is {len} bytes long, the maximum is {max}")]
    TooLong { len: usize, max: usize },
    #[error("{0}")]
    Inconsistent(&'static str),
}

pub(crate) fn err(field: impl Into<String>, problem: Problem) -> ValidationError {
    ValidationError {
        field: field.into(),
        problem,
    }
}

/// Refuses a text or list of `len` bytes or items longer than `max`.
pub(crate) fn check_len(
    field: impl Into<String>,
    len: usize,
    max: usize,
) -> Result<(), ValidationError> {
    if len > max {
        return Err(err(field, Problem::TooLong { len, max }));
    }
    Ok(())
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }

    /// Full validation at the point of entry (the edge API): structure, plus `occurred_at` and
    /// `recorded_at` no further than [`FUTURE_SKEW_MICROS_MAX`] ahead of `now`.
    pub fn validate(&self, now: Timestamp) -> Result<(), ValidationError> {
        // The clock check comes first: "6 minutes in the future" is the message a sender with
        // a drifting clock needs, not the structural "later than recorded_at" it implies.
        self.check_not_ahead(now, false)?;
        self.validate_structure()
    }

    /// Validation at the hub: structure, plus `occurred_at` and `recorded_at` no further than
    /// [`HUB_FUTURE_SKEW_MICROS_MAX`] ahead of the hub's clock. The edge accepted the event
    /// within [`FUTURE_SKEW_MICROS_MAX`] of its own clock, so only an edge clock more than a
    /// day fast (or a hostile peer) meets this refusal; older times are kept (a month before
    /// the site's partitions lands in DEFAULT and is moved into its own partition later).
    pub fn validate_at_hub(&self, hub_now: Timestamp) -> Result<(), ValidationError> {
        self.check_not_ahead(hub_now, true)?;
        self.validate_structure()
    }

    /// Refuses `occurred_at` or `recorded_at` ahead of `now` by more than the edge's
    /// [`FUTURE_SKEW_MICROS_MAX`] or, `at_hub`, the hub's [`HUB_FUTURE_SKEW_MICROS_MAX`].
    fn check_not_ahead(&self, now: Timestamp, at_hub: bool) -> Result<(), ValidationError> {
        let max_micros = if at_hub {
            HUB_FUTURE_SKEW_MICROS_MAX
        } else {
            FUTURE_SKEW_MICROS_MAX
        };
        for (field, t) in [
            ("occurred_at", self.occurred_at),
            ("recorded_at", self.recorded_at),
        ] {
            let ahead = t.micros_since(now);
            if ahead > max_micros {
                let (ahead_secs, max_secs) = (ahead / 1_000_000, max_micros / 1_000_000);
                let problem = if at_hub {
                    Problem::AheadOfHub {
                        ahead_secs,
                        max_secs,
                    }
                } else {
                    Problem::InFuture {
                        ahead_secs,
                        max_secs,
                    }
                };
                return Err(err(field, problem));
            }
        }
        Ok(())
    }

    /// Validation that does not depend on a clock (also part of [`Event::validate_at_hub`]).
    pub fn validate_structure(&self) -> Result<(), ValidationError> {
        for (field, t) in [
            ("occurred_at", self.occurred_at),
            ("recorded_at", self.recorded_at),
        ] {
            if t < TIMESTAMP_MIN {
                return Err(err(field, Problem::TooOld));
            }
        }
        if self.occurred_at.micros_since(self.recorded_at) > FUTURE_SKEW_MICROS_MAX {
            return Err(err(
                "occurred_at",
                Problem::Inconsistent("is later than recorded_at"),
            ));
        }
        self.body.validate("body")
    }
}

impl EventBody {
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::ProductionCount(_) => EventKind::ProductionCount,
            EventBody::EquipmentState(_) => EventKind::EquipmentState,
            EventBody::QualitySample(_) => EventKind::QualitySample,
            EventBody::MaterialConsumed(_) => EventKind::MaterialConsumed,
            EventBody::MaterialProduced(_) => EventKind::MaterialProduced,
            EventBody::Correction(_) => EventKind::Correction,
            EventBody::OperatorClock(_) => EventKind::OperatorClock,
        }
    }

    fn validate(&self, at: &str) -> Result<(), ValidationError> {
        match self {
            EventBody::ProductionCount(p) => {
                for (name, v) in [("good", p.good), ("scrap", p.scrap), ("rework", p.rework)] {
                    if v > COUNT_MAX {
                        return Err(err(
                            format!("{at}.{name}"),
                            Problem::TooLarge {
                                value: f64::from(v),
                                max: f64::from(COUNT_MAX),
                            },
                        ));
                    }
                }
                if p.good == 0 && p.scrap == 0 && p.rework == 0 {
                    return Err(err(format!("{at}.good"), Problem::NotPositive));
                }
                if p.scrap == 0 && p.scrap_reason.is_some() {
                    return Err(err(
                        format!("{at}.scrap_reason"),
                        Problem::Inconsistent("is set but scrap is zero"),
                    ));
                }
                Ok(())
            }
            EventBody::EquipmentState(_) | EventBody::OperatorClock(_) => Ok(()),
            EventBody::QualitySample(q) => {
                let at_value = format!("{at}.value");
                check_finite(&at_value, q.value)?;
                if q.value.abs() > MEASUREMENT_ABS_MAX {
                    return Err(err(
                        at_value,
                        Problem::TooLarge {
                            value: q.value.abs(),
                            max: MEASUREMENT_ABS_MAX,
                        },
                    ));
                }
                if let Some(l) = q.lower_limit {
                    check_finite(&format!("{at}.lower_limit"), l)?;
                }
                if let Some(u) = q.upper_limit {
                    check_finite(&format!("{at}.upper_limit"), u)?;
                }
                if let (Some(l), Some(u)) = (q.lower_limit, q.upper_limit)
                    && l > u
                {
                    return Err(err(
                        format!("{at}.lower_limit"),
                        Problem::Inconsistent("is above upper_limit"),
                    ));
                }
                if q.lower_limit.is_some() || q.upper_limit.is_some() {
                    let within = q.lower_limit.is_none_or(|l| q.value >= l)
                        && q.upper_limit.is_none_or(|u| q.value <= u);
                    if within != q.pass {
                        return Err(err(
                            format!("{at}.pass"),
                            Problem::Inconsistent("contradicts the value and its limits"),
                        ));
                    }
                }
                Ok(())
            }
            EventBody::MaterialConsumed(m) | EventBody::MaterialProduced(m) => {
                let field = format!("{at}.quantity");
                check_finite(&field, m.quantity)?;
                if m.quantity <= 0.0 {
                    return Err(err(field, Problem::NotPositive));
                }
                if m.quantity > QUANTITY_MAX {
                    return Err(err(
                        field,
                        Problem::TooLarge {
                            value: m.quantity,
                            max: QUANTITY_MAX,
                        },
                    ));
                }
                Ok(())
            }
            EventBody::Correction(c) => {
                check_len(format!("{at}.note"), c.note.len(), NOTE_BYTES_MAX)?;
                match &c.replacement {
                    None => Ok(()),
                    Some(r) => r.to_body().validate(&format!("{at}.replacement")),
                }
            }
        }
    }
}

fn check_finite(field: &str, v: f64) -> Result<(), ValidationError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(err(field, Problem::NotFinite))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_795_000_000_000);

    fn event(body: EventBody) -> Event {
        Event {
            event_id: EventId::from_parts(1_795_000_000_000, [7; 10]),
            site_id: SiteId::new("SITE_001").unwrap(),
            occurred_at: NOW,
            recorded_at: NOW,
            operator: None,
            body,
        }
    }

    fn count(good: u32, scrap: u32) -> EventBody {
        EventBody::ProductionCount(ProductionCount {
            equipment: EquipmentId::new("WU-1").unwrap(),
            work_order: None,
            good,
            scrap,
            rework: 0,
            scrap_reason: None,
        })
    }

    fn sample(value: f64, lo: Option<f64>, hi: Option<f64>, pass: bool) -> EventBody {
        EventBody::QualitySample(QualitySample {
            equipment: None,
            work_order: None,
            lot: None,
            characteristic: CharacteristicId::new("diameter_mm").unwrap(),
            value,
            lower_limit: lo,
            upper_limit: hi,
            pass,
        })
    }

    fn replacement(body: EventBody) -> Replacement {
        match body {
            EventBody::ProductionCount(p) => Replacement::ProductionCount(p),
            other => panic!("no replacement for {other:?}"),
        }
    }

    fn movement(quantity: f64) -> EventBody {
        EventBody::MaterialConsumed(MaterialMovement {
            lot: LotId::new("LOT-1").unwrap(),
            material: MaterialId::new("STEEL").unwrap(),
            quantity,
            work_order: None,
            equipment: None,
        })
    }

    /// Data-driven: each body, and the field the error must name (or `None` when valid).
    #[test]
    fn body_validation_table() {
        let cases: Vec<(EventBody, Option<&str>)> = vec![
            (count(10, 1), None),
            (count(0, 0), Some("body.good")),
            (count(COUNT_MAX + 1, 0), Some("body.good")),
            (count(1, COUNT_MAX + 1), Some("body.scrap")),
            (sample(10.0, Some(9.0), Some(11.0), true), None),
            (sample(12.0, Some(9.0), Some(11.0), false), None),
            (sample(12.0, Some(9.0), Some(11.0), true), Some("body.pass")),
            (sample(f64::NAN, None, None, true), Some("body.value")),
            (sample(f64::INFINITY, None, None, true), Some("body.value")),
            (
                sample(1.0, Some(f64::NAN), None, true),
                Some("body.lower_limit"),
            ),
            (
                sample(1.0, Some(2.0), Some(1.0), false),
                Some("body.lower_limit"),
            ),
            (sample(1e13, None, None, true), Some("body.value")),
            (movement(5.5), None),
            (movement(0.0), Some("body.quantity")),
            (movement(-1.0), Some("body.quantity")),
            (movement(f64::NAN), Some("body.quantity")),
            (movement(2e9), Some("body.quantity")),
            (
                EventBody::Correction(Correction {
                    corrects: EventId::from_parts(1, [0; 10]),
                    replacement: Some(replacement(count(9, 1))),
                    note: "miscount".into(),
                }),
                None,
            ),
            (
                EventBody::Correction(Correction {
                    corrects: EventId::from_parts(1, [0; 10]),
                    replacement: Some(replacement(count(0, 0))),
                    note: String::new(),
                }),
                Some("body.replacement.good"),
            ),
            (
                EventBody::Correction(Correction {
                    corrects: EventId::from_parts(1, [0; 10]),
                    replacement: None,
                    note: "x".repeat(NOTE_BYTES_MAX + 1),
                }),
                Some("body.note"),
            ),
        ];
        for (body, expected) in cases {
            let result = event(body.clone()).validate(NOW);
            match expected {
                None => assert!(result.is_ok(), "{body:?} refused: {result:?}"),
                Some(field) => {
                    let e = result.expect_err(&format!("{body:?} accepted"));
                    assert_eq!(e.field, field, "{body:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn timestamps_are_checked() {
        let mut e = event(count(1, 0));
        e.occurred_at = NOW.saturating_add_micros(FUTURE_SKEW_MICROS_MAX + 1_000_000);
        e.recorded_at = e.occurred_at;
        let v = e.validate(NOW).unwrap_err();
        assert_eq!(v.field, "occurred_at");
        assert!(matches!(v.problem, Problem::InFuture { .. }));
        // The hub's clock-free validation accepts the same event.
        assert!(e.validate_structure().is_ok());

        let mut old = event(count(1, 0));
        old.occurred_at = Timestamp::from_millis(0);
        assert_eq!(old.validate(NOW).unwrap_err().field, "occurred_at");

        let mut late = event(count(1, 0));
        late.occurred_at = NOW.saturating_add_micros(FUTURE_SKEW_MICROS_MAX + 1);
        assert_eq!(late.validate_structure().unwrap_err().field, "occurred_at");
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        crate::names::tests::round_trips(&EventKind::ALL, EventKind::as_str, true);
        assert_eq!(EventKind::parse("bogus"), None);
    }
}

#[cfg(test)]
mod correction_precedence {
    //! "Latest correction wins" in every form an id is compared in: as an [`EventId`], as the
    //! UUID's bytes (PostgreSQL's `uuid` order) and as the lowercase hyphenated text the edge
    //! stores. The property test proves the three orders agree for any two UUIDv7s, which is
    //! what lets the edge and the hub apply the same rule.

    use super::*;
    use proptest::prelude::*;

    fn id(millis: u64, random: u8) -> EventId {
        EventId::from_parts(millis, [random; 10])
    }

    #[test]
    fn the_later_issued_correction_wins_in_any_arrival_order() {
        let (early, late) = (id(1_000, 0xff), id(1_001, 0x00));
        assert!(correction_supersedes(late, early));
        assert!(!correction_supersedes(early, late));
        assert!(!correction_supersedes(late, late), "not over itself");
        assert_eq!(winning_correction([early, late]), Some(late));
        assert_eq!(winning_correction([late, early]), Some(late));
        // Same millisecond: the random bits decide, the same way everywhere.
        let (a, b) = (id(1_000, 1), id(1_000, 2));
        assert_eq!(winning_correction([a, b]), Some(b));
        assert_eq!(winning_correction([b, a]), Some(b));
        assert_eq!(winning_correction([]), None);
    }

    proptest! {
        #[test]
        fn id_bytes_and_text_order_agree(
            ma in 0u64..(1 << 48), ra in any::<[u8; 10]>(),
            mb in 0u64..(1 << 48), rb in any::<[u8; 10]>(),
        ) {
            let (a, b) = (EventId::from_parts(ma, ra), EventId::from_parts(mb, rb));
            let by_id = a.cmp(&b);
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), by_id);
            prop_assert_eq!(a.to_string().cmp(&b.to_string()), by_id);
            prop_assert_eq!(correction_supersedes(a, b), by_id == std::cmp::Ordering::Greater);
        }
    }
}
