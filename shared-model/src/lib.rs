//! The MES domain: identifiers, append-only events, the work-order record with its ISA-95
//! states, HQ master data and KPI arithmetic.
//!
//! This crate does no I/O and never reads the clock or an RNG; everything time- or
//! randomness-dependent takes it as a parameter. The layering test in `system-tests` keeps it
//! that way.

pub mod event;
pub mod ids;
pub mod kpi;
pub mod master;
pub mod names;
pub mod timestamp;
pub mod work_order;

pub use event::{Event, EventBody, EventKind, Problem, ValidationError};
pub use ids::{
    BadgeId, CharacteristicId, EquipmentId, EventId, IdError, LotId, MaterialId, ReasonCodeId,
    SiteId, WorkOrderId,
};
pub use names::UnknownName;
pub use timestamp::Timestamp;
