//! Master data owned by HQ and pushed down to sites: materials, routings with ideal cycle
//! times, the reason-code tree, the equipment hierarchy, shift calendars, personnel (badges of
//! operators and supervisors) and inspection plans (a characteristic's limits).
//!
//! Each record has a stable key within its kind, so a site can upsert or delete it on
//! down-sync without knowing anything else. These types travel on the wire: fields and
//! variants are append-only.

use serde::{Deserialize, Serialize};

use crate::event::{Problem, ValidationError, check_len, err};
use crate::ids::{BadgeId, CharacteristicId, EquipmentId, MaterialId, ReasonCodeId, SiteId};
use crate::timestamp::Timestamp;

/// Longest display name of any master record.
pub const NAME_BYTES_MAX: usize = 200;
/// Longest ideal cycle time accepted: a day per part is already a strange routing.
pub const CYCLE_TIME_MS_MAX: u64 = 24 * 3600 * 1000;
/// Most shift instances one calendar record may carry.
pub const SHIFTS_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasterKind {
    Material,
    RoutingStep,
    ReasonCode,
    Equipment,
    ShiftCalendar,
    Personnel,
    InspectionPlan,
}

// The name used in `PUT /api/v1/master-data/{kind}`, in import files and in the edge's
// `master` table. Deliberately not the serde name (these are URL segments).
crate::named_enum!(MasterKind, "master-data kind", display {
    Material => "materials",
    RoutingStep => "routings",
    ReasonCode => "reason-codes",
    Equipment => "equipment",
    ShiftCalendar => "shift-calendars",
    Personnel => "personnel",
    InspectionPlan => "inspection-plans",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tracking {
    None,
    Lot,
    Serial,
}

crate::named_enum!(Tracking, "tracking", display {
    None => "none",
    Lot => "lot",
    Serial => "serial",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Material {
    pub id: MaterialId,
    pub name: String,
    pub unit: String,
    pub tracking: Tracking,
}

/// One operation of a material's routing. Snapshotted into a work order at release, so a later
/// routing change does not rewrite history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingStep {
    pub material: MaterialId,
    pub version: u32,
    pub seq: u32,
    pub operation_code: String,
    pub work_center_class: String,
    pub ideal_cycle_time_ms: u64,
    pub setup_time_ms: u64,
}

/// Loss categories of the six-big-losses model; decides which OEE factor a stop lowers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossCategory {
    Planned,
    Unplanned,
    Changeover,
    Speed,
    SmallStop,
    Quality,
}

crate::named_enum!(LossCategory, "loss category", display {
    Planned => "planned",
    Unplanned => "unplanned",
    Changeover => "changeover",
    Speed => "speed",
    SmallStop => "small_stop",
    Quality => "quality",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasonCode {
    pub code: ReasonCodeId,
    /// Two-level tree: a leaf names its parent, a top-level reason has none.
    pub parent: Option<ReasonCodeId>,
    pub name: String,
    pub loss_category: LossCategory,
    /// Whether time under this reason lowers availability. Planned stops do not; they are
    /// taken out of planned production time instead.
    pub counts_against_availability: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EquipmentLevel {
    Site,
    Area,
    WorkCenter,
    WorkUnit,
}

crate::named_enum!(EquipmentLevel, "equipment level", display {
    Site => "site",
    Area => "area",
    WorkCenter => "work_center",
    WorkUnit => "work_unit",
});

impl EquipmentLevel {
    /// The level a child of this level must have, per ISA-95's role-based hierarchy.
    pub fn child(self) -> Option<EquipmentLevel> {
        match self {
            EquipmentLevel::Site => Some(EquipmentLevel::Area),
            EquipmentLevel::Area => Some(EquipmentLevel::WorkCenter),
            EquipmentLevel::WorkCenter => Some(EquipmentLevel::WorkUnit),
            EquipmentLevel::WorkUnit => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Equipment {
    pub id: EquipmentId,
    pub parent: Option<EquipmentId>,
    pub level: EquipmentLevel,
    pub name: String,
    pub class: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Break {
    pub start: Timestamp,
    pub end: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShiftInstance {
    pub name: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub planned_breaks: Vec<Break>,
}

impl ShiftInstance {
    /// Shift time minus planned breaks, in milliseconds: the planned production time of OEE.
    pub fn planned_production_time_ms(&self) -> u64 {
        let shift = self.end.micros_since(self.start).max(0);
        let breaks: i64 = self
            .planned_breaks
            .iter()
            .map(|b| b.end.micros_since(b.start).max(0))
            .sum();
        u64::try_from((shift - breaks).max(0) / 1000).unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShiftCalendar {
    pub site_id: SiteId,
    pub name: String,
    pub shifts: Vec<ShiftInstance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Operator,
    /// May also correct counts and settle conflicts, with a PIN set on the site's edge.
    Supervisor,
}

crate::named_enum!(Role, "role", display {
    Operator => "operator",
    Supervisor => "supervisor",
});

/// A person who may log in at a site's terminals by badge. Site-owned: sent to its site only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Personnel {
    /// What the badge's barcode or RFID reader types.
    pub badge: BadgeId,
    pub site_id: SiteId,
    pub name: String,
    pub role: Role,
    /// Work-center classes the person is qualified for; empty means no restriction.
    #[serde(default)]
    pub qualifications: Vec<String>,
}

/// What to measure on a material and its limits; the terminal judges samples against them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectionPlan {
    pub material: MaterialId,
    pub characteristic: CharacteristicId,
    pub unit: String,
    pub lower_limit: Option<f64>,
    pub upper_limit: Option<f64>,
    /// One sample every so many good parts, when the plan asks for a frequency.
    #[serde(default)]
    pub sample_every: Option<u32>,
}

/// Any master record, as it travels down to a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasterRecord {
    Material(Material),
    RoutingStep(RoutingStep),
    ReasonCode(ReasonCode),
    Equipment(Equipment),
    ShiftCalendar(ShiftCalendar),
    Personnel(Personnel),
    InspectionPlan(InspectionPlan),
}

/// A master-data file (`import-master-data` on the edge and the hub): every list optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterFile {
    pub materials: Vec<Material>,
    pub routings: Vec<RoutingStep>,
    pub reason_codes: Vec<ReasonCode>,
    pub equipment: Vec<Equipment>,
    pub shift_calendars: Vec<ShiftCalendar>,
    pub personnel: Vec<Personnel>,
    pub inspection_plans: Vec<InspectionPlan>,
}

impl MasterFile {
    pub fn into_records(self) -> Vec<MasterRecord> {
        let mut out = Vec::new();
        out.extend(self.materials.into_iter().map(MasterRecord::Material));
        out.extend(self.routings.into_iter().map(MasterRecord::RoutingStep));
        out.extend(self.reason_codes.into_iter().map(MasterRecord::ReasonCode));
        out.extend(self.equipment.into_iter().map(MasterRecord::Equipment));
        out.extend(
            self.shift_calendars
                .into_iter()
                .map(MasterRecord::ShiftCalendar),
        );
        out.extend(self.personnel.into_iter().map(MasterRecord::Personnel));
        out.extend(
            self.inspection_plans
                .into_iter()
                .map(MasterRecord::InspectionPlan),
        );
        out
    }
}

fn check_name(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.trim().is_empty() {
        return Err(err(field, Problem::Inconsistent("must not be empty")));
    }
    check_len(field, s.len(), NAME_BYTES_MAX)
}

impl MasterRecord {
    pub fn kind(&self) -> MasterKind {
        match self {
            MasterRecord::Material(_) => MasterKind::Material,
            MasterRecord::RoutingStep(_) => MasterKind::RoutingStep,
            MasterRecord::ReasonCode(_) => MasterKind::ReasonCode,
            MasterRecord::Equipment(_) => MasterKind::Equipment,
            MasterRecord::ShiftCalendar(_) => MasterKind::ShiftCalendar,
            MasterRecord::Personnel(_) => MasterKind::Personnel,
            MasterRecord::InspectionPlan(_) => MasterKind::InspectionPlan,
        }
    }

    /// The record's key within its kind: what a later version of it replaces.
    pub fn key(&self) -> String {
        match self {
            MasterRecord::Material(m) => m.id.to_string(),
            MasterRecord::RoutingStep(r) => format!("{}@{}#{}", r.material, r.version, r.seq),
            MasterRecord::ReasonCode(r) => r.code.to_string(),
            MasterRecord::Equipment(e) => e.id.to_string(),
            MasterRecord::ShiftCalendar(c) => format!("{}/{}", c.site_id, c.name),
            MasterRecord::Personnel(p) => personnel_key(&p.site_id, &p.badge),
            MasterRecord::InspectionPlan(p) => format!("{}#{}", p.material, p.characteristic),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            MasterRecord::Material(m) => {
                check_name("name", &m.name)?;
                check_name("unit", &m.unit)
            }
            MasterRecord::RoutingStep(r) => {
                check_name("operation_code", &r.operation_code)?;
                check_name("work_center_class", &r.work_center_class)?;
                if r.ideal_cycle_time_ms == 0 {
                    return Err(err("ideal_cycle_time_ms", Problem::NotPositive));
                }
                for (field, v) in [
                    ("ideal_cycle_time_ms", r.ideal_cycle_time_ms),
                    ("setup_time_ms", r.setup_time_ms),
                ] {
                    if v > CYCLE_TIME_MS_MAX {
                        return Err(err(
                            field,
                            Problem::TooLarge {
                                value: v as f64,
                                max: CYCLE_TIME_MS_MAX as f64,
                            },
                        ));
                    }
                }
                Ok(())
            }
            MasterRecord::ReasonCode(r) => {
                check_name("name", &r.name)?;
                if r.parent.as_ref() == Some(&r.code) {
                    return Err(err(
                        "parent",
                        Problem::Inconsistent("a reason cannot be its own parent"),
                    ));
                }
                if r.loss_category == LossCategory::Planned && r.counts_against_availability {
                    return Err(err(
                        "counts_against_availability",
                        Problem::Inconsistent("planned stops never count against availability"),
                    ));
                }
                Ok(())
            }
            MasterRecord::Equipment(e) => {
                check_name("name", &e.name)?;
                match (e.level, &e.parent) {
                    (EquipmentLevel::Site, Some(_)) => Err(err(
                        "parent",
                        Problem::Inconsistent("a site has no parent equipment"),
                    )),
                    (EquipmentLevel::Site, None) => Ok(()),
                    (
                        EquipmentLevel::Area
                        | EquipmentLevel::WorkCenter
                        | EquipmentLevel::WorkUnit,
                        None,
                    ) => Err(err(
                        "parent",
                        Problem::Inconsistent("only a site may have no parent"),
                    )),
                    (
                        EquipmentLevel::Area
                        | EquipmentLevel::WorkCenter
                        | EquipmentLevel::WorkUnit,
                        Some(p),
                    ) => {
                        if p == &e.id {
                            Err(err(
                                "parent",
                                Problem::Inconsistent("equipment cannot be its own parent"),
                            ))
                        } else {
                            Ok(())
                        }
                    }
                }
            }
            MasterRecord::ShiftCalendar(c) => {
                check_name("name", &c.name)?;
                check_len("shifts", c.shifts.len(), SHIFTS_MAX)?;
                for (i, s) in c.shifts.iter().enumerate() {
                    if s.end <= s.start {
                        return Err(err(
                            format!("shifts[{i}].end"),
                            Problem::Inconsistent("is not after start"),
                        ));
                    }
                    for (j, b) in s.planned_breaks.iter().enumerate() {
                        if b.start < s.start || b.end > s.end || b.end <= b.start {
                            return Err(err(
                                format!("shifts[{i}].planned_breaks[{j}]"),
                                Problem::Inconsistent("lies outside its shift or is empty"),
                            ));
                        }
                    }
                }
                Ok(())
            }
            MasterRecord::Personnel(p) => check_name("name", &p.name),
            MasterRecord::InspectionPlan(p) => {
                check_name("unit", &p.unit)?;
                for (field, v) in [
                    ("lower_limit", p.lower_limit),
                    ("upper_limit", p.upper_limit),
                ] {
                    if v.is_some_and(|v| !v.is_finite()) {
                        return Err(err(field, Problem::NotFinite));
                    }
                }
                if let (Some(l), Some(u)) = (p.lower_limit, p.upper_limit)
                    && l > u
                {
                    return Err(err(
                        "upper_limit",
                        Problem::Inconsistent("is below lower_limit"),
                    ));
                }
                if p.sample_every == Some(0) {
                    return Err(err("sample_every", Problem::NotPositive));
                }
                Ok(())
            }
        }
    }
}

/// The key of a person: badges are unique within a site.
pub fn personnel_key(site: &SiteId, badge: &BadgeId) -> String {
    format!("{site}/{badge}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> Timestamp {
        Timestamp::from_millis(1_795_000_000_000 + min * 60_000)
    }

    #[test]
    fn shift_planned_time_matches_the_worked_example() {
        // 480 min shift, one 30 min break: planned production time 450 min.
        let s = ShiftInstance {
            name: "early".into(),
            start: t(0),
            end: t(480),
            planned_breaks: vec![Break {
                start: t(240),
                end: t(270),
            }],
        };
        assert_eq!(s.planned_production_time_ms(), 450 * 60_000);
    }

    #[test]
    fn validation_table() {
        let reason = |parent: Option<&str>, cat, counts| {
            MasterRecord::ReasonCode(ReasonCode {
                code: ReasonCodeId::new("DOWN.JAM").unwrap(),
                parent: parent.map(|p| ReasonCodeId::new(p).unwrap()),
                name: "Jam".into(),
                loss_category: cat,
                counts_against_availability: counts,
            })
        };
        let equipment = |level, parent: Option<&str>| {
            MasterRecord::Equipment(Equipment {
                id: EquipmentId::new("WU-1").unwrap(),
                parent: parent.map(|p| EquipmentId::new(p).unwrap()),
                level,
                name: "Press 1".into(),
                class: "press".into(),
            })
        };
        let step = |ict| {
            MasterRecord::RoutingStep(RoutingStep {
                material: MaterialId::new("BRACKET").unwrap(),
                version: 1,
                seq: 10,
                operation_code: "PRESS".into(),
                work_center_class: "press".into(),
                ideal_cycle_time_ms: ict,
                setup_time_ms: 0,
            })
        };
        let cases: Vec<(MasterRecord, Option<&str>)> = vec![
            (reason(Some("DOWN"), LossCategory::Unplanned, true), None),
            (
                reason(Some("DOWN.JAM"), LossCategory::Unplanned, true),
                Some("parent"),
            ),
            (
                reason(None, LossCategory::Planned, true),
                Some("counts_against_availability"),
            ),
            (equipment(EquipmentLevel::WorkUnit, Some("WC-1")), None),
            (equipment(EquipmentLevel::WorkUnit, None), Some("parent")),
            (equipment(EquipmentLevel::Site, Some("X")), Some("parent")),
            (
                equipment(EquipmentLevel::Area, Some("WU-1")),
                Some("parent"),
            ),
            (step(2000), None),
            (step(0), Some("ideal_cycle_time_ms")),
            (step(CYCLE_TIME_MS_MAX + 1), Some("ideal_cycle_time_ms")),
            (
                MasterRecord::Material(Material {
                    id: MaterialId::new("M").unwrap(),
                    name: " ".into(),
                    unit: "pcs".into(),
                    tracking: Tracking::Lot,
                }),
                Some("name"),
            ),
            (
                MasterRecord::ShiftCalendar(ShiftCalendar {
                    site_id: SiteId::new("SITE_001").unwrap(),
                    name: "3x8".into(),
                    shifts: vec![ShiftInstance {
                        name: "night".into(),
                        start: t(0),
                        end: t(480),
                        planned_breaks: vec![Break {
                            start: t(470),
                            end: t(500),
                        }],
                    }],
                }),
                Some("shifts[0].planned_breaks[0]"),
            ),
        ];
        for (record, expected) in cases {
            match (record.validate(), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(field)) => assert_eq!(e.field, field, "{record:?}"),
                (got, want) => panic!("{record:?}: got {got:?}, want error on {want:?}"),
            }
        }
    }

    #[test]
    fn kinds_and_keys() {
        for k in MasterKind::ALL {
            assert_eq!(MasterKind::parse(k.as_str()), Some(k));
        }
        let r = MasterRecord::Material(Material {
            id: MaterialId::new("STEEL-1").unwrap(),
            name: "Steel".into(),
            unit: "kg".into(),
            tracking: Tracking::Lot,
        });
        assert_eq!(r.kind(), MasterKind::Material);
        assert_eq!(r.key(), "STEEL-1");
    }
}
