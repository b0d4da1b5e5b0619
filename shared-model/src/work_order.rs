//! The work-order record and its ISA-95 job states.
//!
//! A work order is a shared record: HQ creates and releases it (or cancels it), the site starts,
//! pauses and completes it, and the two sides may do so while disconnected. The state machine
//! here is the single source of which transitions are legal; [`WorkOrder::validate`] bounds the
//! fields before a record is written; [`WorkOrder::invariant_violations`] and
//! [`concurrent_state_conflict`] find the business-level contradictions that a field-by-field
//! merge of two replicas can produce, so the sync layer can flag them for a person instead of
//! silently picking a winner.
//!
//! The enums and structs are on the wire (postcard) and in the database, so variants and fields
//! are append-only: never reorder or remove them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{Problem, ValidationError, check_len, err};
use crate::ids::{CODE_BYTES_MAX, MaterialId, SiteId, WorkOrderId};
use crate::timestamp::Timestamp;

/// Largest planned quantity of one order. Real orders are in the thousands; ten million is a
/// typo (or a unit mix-up) in the ERP interface.
pub const PLANNED_QUANTITY_MAX: u32 = 10_000_000;
/// Longest ERP reference: SAP order numbers are 12 characters, others longer, none near 64.
pub const ERP_REF_BYTES_MAX: usize = 64;
/// Longest free-text note on an order (shift hand-over remarks accumulate here).
pub const NOTES_BYTES_MAX: usize = 4_000;
/// Lowest priority; 0 is the most urgent.
pub const PRIORITY_MAX: u8 = 9;
/// Most routing operations one order may carry; real routings have a handful.
pub const OPERATIONS_MAX: usize = 256;
/// Longest operation code or work-center class, the same bound as textual identifiers.
pub const OPERATION_TEXT_BYTES_MAX: usize = CODE_BYTES_MAX;

/// The ISA-95 / OPC UA job-control state of a work order (OPC 10031-4 names, without the
/// sub-states nobody on a shop floor uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkOrderState {
    /// Created but not released to the floor (material or tooling not confirmed yet).
    NotAllowedToStart,
    /// Released: it shows up in the terminal's up-next queue.
    AllowedToStart,
    Running,
    /// Paused by the operator (end of shift, waiting for material).
    Interrupted,
    /// Completed normally. Terminal.
    Ended,
    /// Cancelled, by HQ or on the floor. Terminal.
    Aborted,
}

// The stable name used in JSON, SQL and metrics labels (same as the serde name); `Display`
// below is the human wording for messages.
crate::named_enum!(WorkOrderState, "work-order state", {
    NotAllowedToStart => "not_allowed_to_start",
    AllowedToStart => "allowed_to_start",
    Running => "running",
    Interrupted => "interrupted",
    Ended => "ended",
    Aborted => "aborted",
});

impl WorkOrderState {
    /// Ended and Aborted accept no further action: a completed order is reopened by creating a
    /// new one, so reports never see an order's end move.
    pub fn is_terminal(self) -> bool {
        matches!(self, WorkOrderState::Ended | WorkOrderState::Aborted)
    }

    /// The state after `action`, or why the action is not allowed in this state.
    pub fn apply(self, action: WorkOrderAction) -> Result<WorkOrderState, TransitionError> {
        use WorkOrderAction as A;
        use WorkOrderState as S;
        // Matched on the action, which is exhaustive: a new action is a compile error until its
        // rule is written here. A new state is allowed by no rule until it is listed, so it
        // fails safe (refused), and the every-pair table test names the gap.
        let (from_states, to): (&[S], S) = match action {
            A::Release => (&[S::NotAllowedToStart], S::AllowedToStart),
            A::Unrelease => (&[S::AllowedToStart], S::NotAllowedToStart),
            A::Start => (&[S::AllowedToStart], S::Running),
            A::Pause => (&[S::Running], S::Interrupted),
            A::Resume => (&[S::Interrupted], S::Running),
            // Completing from Interrupted is allowed because the last parts are often booked
            // after the operator paused the order at the end of a shift.
            A::Complete => (&[S::Running, S::Interrupted], S::Ended),
            A::Abort => (
                &[
                    S::NotAllowedToStart,
                    S::AllowedToStart,
                    S::Running,
                    S::Interrupted,
                ],
                S::Aborted,
            ),
        };
        if from_states.contains(&self) {
            // Ended and Aborted are final: reports rely on an order's end never moving.
            debug_assert!(
                !self.is_terminal(),
                "{self:?} is terminal but allows {action:?}"
            );
            Ok(to)
        } else {
            Err(TransitionError { from: self, action })
        }
    }
}

/// Human-readable words for messages ("not allowed to start"); use [`WorkOrderState::as_str`]
/// for anything a program reads.
impl fmt::Display for WorkOrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkOrderState::NotAllowedToStart => "not allowed to start",
            WorkOrderState::AllowedToStart => "allowed to start",
            WorkOrderState::Running => "running",
            WorkOrderState::Interrupted => "interrupted",
            WorkOrderState::Ended => "ended",
            WorkOrderState::Aborted => "aborted",
        })
    }
}

/// What a person (operator, planner, ERP interface) asks of a work order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkOrderAction {
    Release,
    Start,
    Pause,
    Resume,
    Complete,
    Abort,
    Unrelease,
}

crate::named_enum!(WorkOrderAction, "work-order action", display {
    Release => "release",
    Start => "start",
    Pause => "pause",
    Resume => "resume",
    Complete => "complete",
    Abort => "abort",
    Unrelease => "unrelease",
});

/// An action that the state machine does not allow in the order's current state. An operating
/// error (a stale terminal, a double tap), not a bug: the API answers 409 with this message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a work order that is {from}")]
pub struct TransitionError {
    pub from: WorkOrderState,
    pub action: WorkOrderAction,
}

/// Progress of one routing operation, snapshotted from the routing at release so that a later
/// routing change at HQ does not rewrite a running order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationProgress {
    /// Position in the routing; strictly increasing within an order.
    pub seq: u32,
    pub operation_code: String,
    pub work_center_class: String,
    pub ideal_cycle_time_ms: u64,
    pub good: u64,
    pub scrap: u64,
    pub done: bool,
}

/// A production order, shared between HQ and the site that runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrder {
    pub id: WorkOrderId,
    pub site_id: SiteId,
    pub erp_ref: Option<String>,
    pub material: MaterialId,
    pub routing_version: u32,
    pub planned_quantity: u32,
    pub due: Option<Timestamp>,
    /// 0 is the most urgent, [`PRIORITY_MAX`] the least.
    pub priority: u8,
    pub state: WorkOrderState,
    pub actual_start: Option<Timestamp>,
    pub actual_end: Option<Timestamp>,
    pub operations: Vec<OperationProgress>,
    pub notes: String,
    /// Good units of the finished product (the last operation's output).
    pub good_count: u64,
    pub scrap_count: u64,
}

impl WorkOrder {
    /// A new order as released to the floor: allowed to start, nothing produced yet, default
    /// priority 5 and routing version 1. Callers set the optional fields they have.
    pub fn released(
        id: WorkOrderId,
        site_id: SiteId,
        material: MaterialId,
        planned_quantity: u32,
    ) -> Self {
        Self {
            id,
            site_id,
            erp_ref: None,
            material,
            routing_version: 1,
            planned_quantity,
            due: None,
            priority: 5,
            state: WorkOrderState::AllowedToStart,
            actual_start: None,
            actual_end: None,
            operations: Vec::new(),
            notes: String::new(),
            good_count: 0,
            scrap_count: 0,
        }
    }

    /// Applies `action` at `now`: the first Start sets `actual_start`, Complete and Abort set
    /// `actual_end`. On error the record is left untouched.
    pub fn transition(
        &mut self,
        action: WorkOrderAction,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        let next = self.state.apply(action)?;
        match action {
            // Start is only legal once per order, but a merged record may already carry a start
            // from the other replica; the earliest recorded start stays.
            WorkOrderAction::Start if self.actual_start.is_none() => self.actual_start = Some(now),
            WorkOrderAction::Complete | WorkOrderAction::Abort => self.actual_end = Some(now),
            WorkOrderAction::Start
            | WorkOrderAction::Release
            | WorkOrderAction::Unrelease
            | WorkOrderAction::Pause
            | WorkOrderAction::Resume => {}
        }
        self.state = next;
        // Reports read an ended or aborted order's end time; a terminal state without one
        // would drop the order from on-time delivery.
        debug_assert!(
            !self.state.is_terminal() || self.actual_end.is_some(),
            "{:?} without an end time",
            self.state
        );
        Ok(())
    }

    /// Bounds every field before the record is written (and after it is read). The consistency
    /// of state and timestamps is deliberately not checked here: a merge of two replicas can
    /// produce such a record, and it must be stored and flagged (see
    /// [`WorkOrder::invariant_violations`]), not refused.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.planned_quantity == 0 {
            return Err(err("planned_quantity", Problem::NotPositive));
        }
        if self.planned_quantity > PLANNED_QUANTITY_MAX {
            return Err(err(
                "planned_quantity",
                Problem::TooLarge {
                    value: f64::from(self.planned_quantity),
                    max: f64::from(PLANNED_QUANTITY_MAX),
                },
            ));
        }
        if let Some(erp_ref) = &self.erp_ref {
            check_len("erp_ref", erp_ref.len(), ERP_REF_BYTES_MAX)?;
        }
        check_len("notes", self.notes.len(), NOTES_BYTES_MAX)?;
        if self.priority > PRIORITY_MAX {
            return Err(err(
                "priority",
                Problem::TooLarge {
                    value: f64::from(self.priority),
                    max: f64::from(PRIORITY_MAX),
                },
            ));
        }
        check_len("operations", self.operations.len(), OPERATIONS_MAX)?;
        let mut previous_seq: Option<u32> = None;
        for (i, op) in self.operations.iter().enumerate() {
            if previous_seq.is_some_and(|p| op.seq <= p) {
                return Err(err(
                    format!("operations[{i}].seq"),
                    Problem::Inconsistent("is not greater than the previous operation's seq"),
                ));
            }
            previous_seq = Some(op.seq);
            check_len(
                format!("operations[{i}].operation_code"),
                op.operation_code.len(),
                OPERATION_TEXT_BYTES_MAX,
            )?;
            check_len(
                format!("operations[{i}].work_center_class"),
                op.work_center_class.len(),
                OPERATION_TEXT_BYTES_MAX,
            )?;
        }
        Ok(())
    }

    /// Business invariants that a merged record may break, in a stable order. An empty list
    /// means the record is consistent. These are findings for a person to resolve, not errors:
    /// the record is kept as merged.
    pub fn invariant_violations(&self) -> Vec<InvariantViolation> {
        let mut found = Vec::new();
        if self.state.is_terminal() && self.actual_end.is_none() {
            found.push(InvariantViolation::MissingEnd { state: self.state });
        }
        // An order aborted before it was started legitimately has no start.
        let must_have_started = matches!(
            self.state,
            WorkOrderState::Running | WorkOrderState::Interrupted | WorkOrderState::Ended
        );
        if must_have_started && self.actual_start.is_none() {
            found.push(InvariantViolation::MissingStart { state: self.state });
        }
        if let (Some(start), Some(end)) = (self.actual_start, self.actual_end)
            && end < start
        {
            found.push(InvariantViolation::EndBeforeStart { start, end });
        }
        // Some overrun is normal (full containers, yield allowances); more than double the plan
        // is the signature of the same counts applied twice, e.g. once per replica.
        if self.good_count > u64::from(self.planned_quantity) * 2 {
            found.push(InvariantViolation::Overproduction {
                good_count: self.good_count,
                planned_quantity: self.planned_quantity,
            });
        }
        found
    }
}

/// A business invariant a work order breaks, typically after a merge of two replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvariantViolation {
    /// Ended or Aborted, but no `actual_end`.
    MissingEnd { state: WorkOrderState },
    /// Running, Interrupted or Ended, but no `actual_start`.
    MissingStart { state: WorkOrderState },
    /// `actual_end` lies before `actual_start`.
    EndBeforeStart { start: Timestamp, end: Timestamp },
    /// More than twice the planned quantity counted good.
    Overproduction {
        good_count: u64,
        planned_quantity: u32,
    },
}

impl InvariantViolation {
    /// A lowercase sentence for the supervisor's conflict list and the logs.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvariantViolation::MissingEnd { state } => {
                write!(f, "the work order is {state} but has no actual end")
            }
            InvariantViolation::MissingStart { state } => {
                write!(f, "the work order is {state} but has no actual start")
            }
            InvariantViolation::EndBeforeStart { start, end } => {
                write!(
                    f,
                    "the work order ended at {end}, before it started at {start}"
                )
            }
            InvariantViolation::Overproduction {
                good_count,
                planned_quantity,
            } => write!(
                f,
                "{good_count} good units counted against a plan of {planned_quantity}, more than double"
            ),
        }
    }
}

/// Whether the states two replicas reached independently (since their last common version)
/// contradict each other, so a person must decide.
///
/// A single merged record cannot show this: once "HQ cancelled what the site completed" is
/// merged, one of the two states has already won. The sync layer therefore calls this with
/// both sides' states before merging. It is a conflict when both sides ended the order
/// differently (Ended vs Aborted), or when one side aborted it while the other had put it into
/// production (Running, Interrupted or Ended): parts were made, or are being made, for an
/// order that is cancelled. Aborting an order the site had not started yet is not a conflict;
/// the abort simply wins.
pub fn concurrent_state_conflict(ours: WorkOrderState, theirs: WorkOrderState) -> bool {
    use WorkOrderState as S;
    let progressed = |s: WorkOrderState| matches!(s, S::Running | S::Interrupted | S::Ended);
    let both_terminal_and_differ = ours.is_terminal() && theirs.is_terminal() && ours != theirs;
    let abort_against_progress =
        (ours == S::Aborted && progressed(theirs)) || (theirs == S::Aborted && progressed(ours));
    both_terminal_and_differ || abort_against_progress
}

#[cfg(test)]
mod tests {
    //! These tests prove the work-order state machine against an explicit table of all 42
    //! (state, action) pairs, written out independently of `apply`, and check the error message
    //! wording. They then show that `transition` stamps `actual_start` and `actual_end` at the
    //! right actions and leaves the record untouched on error, that `validate` names the right
    //! field for each bound (a table of single-field edits of a valid order), that
    //! `invariant_violations` flags each contradiction a merge can produce, and that
    //! `concurrent_state_conflict` is symmetric and flags exactly the documented pairs.

    use std::collections::HashSet;

    use super::*;
    use WorkOrderAction as A;
    use WorkOrderState as S;

    const T0: Timestamp = Timestamp::from_millis(1_795_000_000_000);

    fn at(minutes: i64) -> Timestamp {
        T0.saturating_add_micros(minutes * 60_000_000)
    }

    fn order() -> WorkOrder {
        WorkOrder {
            erp_ref: Some("4500012345".into()),
            routing_version: 3,
            due: Some(at(8 * 60)),
            state: S::NotAllowedToStart,
            operations: vec![
                operation(10, "TURN"),
                operation(20, "MILL"),
                operation(30, "INSPECT"),
            ],
            ..WorkOrder::released(
                WorkOrderId::new("SITE_001-WO-000123").unwrap(),
                SiteId::new("SITE_001").unwrap(),
                MaterialId::new("PN-1001").unwrap(),
                500,
            )
        }
    }

    fn operation(seq: u32, code: &str) -> OperationProgress {
        OperationProgress {
            seq,
            operation_code: code.into(),
            work_center_class: "CNC".into(),
            ideal_cycle_time_ms: 2_000,
            good: 0,
            scrap: 0,
            done: false,
        }
    }

    #[test]
    fn every_state_action_pair() {
        let x = None;
        let table: Vec<(S, A, Option<S>)> = vec![
            (S::NotAllowedToStart, A::Release, Some(S::AllowedToStart)),
            (S::NotAllowedToStart, A::Start, x),
            (S::NotAllowedToStart, A::Pause, x),
            (S::NotAllowedToStart, A::Resume, x),
            (S::NotAllowedToStart, A::Complete, x),
            (S::NotAllowedToStart, A::Abort, Some(S::Aborted)),
            (S::NotAllowedToStart, A::Unrelease, x),
            (S::AllowedToStart, A::Release, x),
            (S::AllowedToStart, A::Start, Some(S::Running)),
            (S::AllowedToStart, A::Pause, x),
            (S::AllowedToStart, A::Resume, x),
            (S::AllowedToStart, A::Complete, x),
            (S::AllowedToStart, A::Abort, Some(S::Aborted)),
            (S::AllowedToStart, A::Unrelease, Some(S::NotAllowedToStart)),
            (S::Running, A::Release, x),
            (S::Running, A::Start, x),
            (S::Running, A::Pause, Some(S::Interrupted)),
            (S::Running, A::Resume, x),
            (S::Running, A::Complete, Some(S::Ended)),
            (S::Running, A::Abort, Some(S::Aborted)),
            (S::Running, A::Unrelease, x),
            (S::Interrupted, A::Release, x),
            (S::Interrupted, A::Start, x),
            (S::Interrupted, A::Pause, x),
            (S::Interrupted, A::Resume, Some(S::Running)),
            (S::Interrupted, A::Complete, Some(S::Ended)),
            (S::Interrupted, A::Abort, Some(S::Aborted)),
            (S::Interrupted, A::Unrelease, x),
            (S::Ended, A::Release, x),
            (S::Ended, A::Start, x),
            (S::Ended, A::Pause, x),
            (S::Ended, A::Resume, x),
            (S::Ended, A::Complete, x),
            (S::Ended, A::Abort, x),
            (S::Ended, A::Unrelease, x),
            (S::Aborted, A::Release, x),
            (S::Aborted, A::Start, x),
            (S::Aborted, A::Pause, x),
            (S::Aborted, A::Resume, x),
            (S::Aborted, A::Complete, x),
            (S::Aborted, A::Abort, x),
            (S::Aborted, A::Unrelease, x),
        ];
        // The table covers every pair exactly once.
        let pairs: HashSet<(S, A)> = table.iter().map(|(s, a, _)| (*s, *a)).collect();
        assert_eq!(table.len(), S::ALL.len() * A::ALL.len());
        assert_eq!(pairs.len(), table.len());

        for (from, action, expected) in table {
            let result = from.apply(action);
            match expected {
                Some(to) => assert_eq!(result, Ok(to), "{from:?} {action:?}"),
                None => assert_eq!(result, Err(TransitionError { from, action })),
            }
            // Terminal states accept nothing.
            if from.is_terminal() {
                assert!(expected.is_none());
            }
        }
    }

    #[test]
    fn error_messages_read_as_sentences() {
        let cases = [
            (
                S::Ended,
                A::Start,
                "cannot start a work order that is ended",
            ),
            (
                S::NotAllowedToStart,
                A::Pause,
                "cannot pause a work order that is not allowed to start",
            ),
            (
                S::Running,
                A::Unrelease,
                "cannot unrelease a work order that is running",
            ),
        ];
        for (from, action, message) in cases {
            assert_eq!(from.apply(action).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn names_round_trip() {
        crate::names::tests::round_trips(&S::ALL, S::as_str, true);
        crate::names::tests::round_trips(&A::ALL, A::as_str, true);
        assert_eq!(S::parse("Running"), None);
        assert_eq!(A::parse(""), None);
        let terminal: Vec<S> = S::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![S::Ended, S::Aborted]);
    }

    #[test]
    fn transition_stamps_start_and_end() {
        let mut wo = order();
        wo.transition(A::Release, at(0)).unwrap();
        assert_eq!((wo.actual_start, wo.actual_end), (None, None));
        wo.transition(A::Start, at(5)).unwrap();
        assert_eq!(wo.actual_start, Some(at(5)));
        wo.transition(A::Pause, at(60)).unwrap();
        wo.transition(A::Resume, at(90)).unwrap();
        assert_eq!(wo.actual_start, Some(at(5)), "resume is not a new start");
        wo.transition(A::Complete, at(240)).unwrap();
        assert_eq!(wo.state, S::Ended);
        assert_eq!(
            (wo.actual_start, wo.actual_end),
            (Some(at(5)), Some(at(240)))
        );
        assert!(wo.invariant_violations().is_empty());

        // A refused action changes nothing.
        let before = wo.clone();
        let e = wo.transition(A::Abort, at(300)).unwrap_err();
        assert_eq!(
            e,
            TransitionError {
                from: S::Ended,
                action: A::Abort
            }
        );
        assert_eq!(wo, before);

        // Aborting an order that never started ends it without a start.
        let mut cancelled = order();
        cancelled.transition(A::Abort, at(10)).unwrap();
        assert_eq!(cancelled.state, S::Aborted);
        assert_eq!(
            (cancelled.actual_start, cancelled.actual_end),
            (None, Some(at(10)))
        );
        assert!(cancelled.invariant_violations().is_empty());

        // A start that a merge already brought in is kept.
        let mut merged = order();
        merged.state = S::AllowedToStart;
        merged.actual_start = Some(at(1));
        merged.transition(A::Start, at(7)).unwrap();
        assert_eq!(merged.actual_start, Some(at(1)));
    }

    #[test]
    fn validation_table() {
        type Edit = fn(&mut WorkOrder);
        let cases: Vec<(&str, Edit, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            ("quantity 1", |w| w.planned_quantity = 1, None),
            (
                "quantity max",
                |w| w.planned_quantity = PLANNED_QUANTITY_MAX,
                None,
            ),
            (
                "quantity 0",
                |w| w.planned_quantity = 0,
                Some("planned_quantity"),
            ),
            (
                "quantity above max",
                |w| w.planned_quantity = PLANNED_QUANTITY_MAX + 1,
                Some("planned_quantity"),
            ),
            ("no erp ref", |w| w.erp_ref = None, None),
            ("erp ref 64", |w| w.erp_ref = Some("x".repeat(64)), None),
            (
                "erp ref 65",
                |w| w.erp_ref = Some("x".repeat(65)),
                Some("erp_ref"),
            ),
            ("notes max", |w| w.notes = "n".repeat(NOTES_BYTES_MAX), None),
            (
                "notes too long",
                |w| w.notes = "n".repeat(NOTES_BYTES_MAX + 1),
                Some("notes"),
            ),
            // Bytes, not characters: 2,001 two-byte characters are too long.
            (
                "notes multibyte",
                |w| w.notes = "é".repeat(2_001),
                Some("notes"),
            ),
            ("priority 0", |w| w.priority = 0, None),
            ("priority 9", |w| w.priority = 9, None),
            ("priority 10", |w| w.priority = 10, Some("priority")),
            ("no operations", |w| w.operations.clear(), None),
            (
                "duplicate seq",
                |w| w.operations[2].seq = 20,
                Some("operations[2].seq"),
            ),
            (
                "decreasing seq",
                |w| w.operations[1].seq = 5,
                Some("operations[1].seq"),
            ),
            (
                "operation code too long",
                |w| w.operations[0].operation_code = "c".repeat(OPERATION_TEXT_BYTES_MAX + 1),
                Some("operations[0].operation_code"),
            ),
            (
                "work center class too long",
                |w| w.operations[1].work_center_class = "c".repeat(OPERATION_TEXT_BYTES_MAX + 1),
                Some("operations[1].work_center_class"),
            ),
            (
                "too many operations",
                |w| {
                    w.operations = (0..=OPERATIONS_MAX as u32)
                        .map(|i| operation(i, "OP"))
                        .collect();
                },
                Some("operations"),
            ),
        ];
        for (name, edit, expected) in cases {
            let mut wo = order();
            edit(&mut wo);
            match (wo.validate(), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(field)) => assert_eq!(e.field, field, "{name}: {e}"),
                (result, expected) => panic!("{name}: got {result:?}, expected {expected:?}"),
            }
        }
        let e = WorkOrder {
            planned_quantity: 0,
            ..order()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.to_string(), "planned_quantity: must be greater than zero");
    }

    #[test]
    fn invariant_violations_after_a_merge() {
        let cases: Vec<(&str, WorkOrder, Vec<InvariantViolation>)> = vec![
            ("fresh order", order(), vec![]),
            (
                "aborted without end",
                WorkOrder {
                    state: S::Aborted,
                    ..order()
                },
                vec![InvariantViolation::MissingEnd { state: S::Aborted }],
            ),
            (
                "ended without start",
                WorkOrder {
                    state: S::Ended,
                    actual_end: Some(at(60)),
                    ..order()
                },
                vec![InvariantViolation::MissingStart { state: S::Ended }],
            ),
            (
                "ended without either",
                WorkOrder {
                    state: S::Ended,
                    ..order()
                },
                vec![
                    InvariantViolation::MissingEnd { state: S::Ended },
                    InvariantViolation::MissingStart { state: S::Ended },
                ],
            ),
            (
                "running without start",
                WorkOrder {
                    state: S::Running,
                    ..order()
                },
                vec![InvariantViolation::MissingStart { state: S::Running }],
            ),
            (
                "end before start",
                WorkOrder {
                    state: S::Ended,
                    actual_start: Some(at(60)),
                    actual_end: Some(at(10)),
                    ..order()
                },
                vec![InvariantViolation::EndBeforeStart {
                    start: at(60),
                    end: at(10),
                }],
            ),
            (
                "double the plan is still fine",
                WorkOrder {
                    good_count: 1_000,
                    ..order()
                },
                vec![],
            ),
            (
                "overproduction",
                WorkOrder {
                    good_count: 1_001,
                    ..order()
                },
                vec![InvariantViolation::Overproduction {
                    good_count: 1_001,
                    planned_quantity: 500,
                }],
            ),
        ];
        for (name, wo, expected) in cases {
            assert_eq!(wo.invariant_violations(), expected, "{name}");
        }
        assert_eq!(
            InvariantViolation::MissingEnd { state: S::Aborted }.describe(),
            "the work order is aborted but has no actual end"
        );
        assert_eq!(
            InvariantViolation::Overproduction {
                good_count: 1_001,
                planned_quantity: 500
            }
            .describe(),
            "1001 good units counted against a plan of 500, more than double"
        );
    }

    #[test]
    fn concurrent_state_conflicts() {
        let conflicts: HashSet<(S, S)> = [
            // HQ cancelled what the site completed.
            (S::Aborted, S::Ended),
            // HQ cancelled what the site is producing.
            (S::Aborted, S::Running),
            (S::Aborted, S::Interrupted),
        ]
        .into_iter()
        .flat_map(|(a, b)| [(a, b), (b, a)])
        .collect();
        for ours in S::ALL {
            for theirs in S::ALL {
                let expected = conflicts.contains(&(ours, theirs));
                assert_eq!(
                    concurrent_state_conflict(ours, theirs),
                    expected,
                    "{ours:?} vs {theirs:?}"
                );
            }
        }
        // Spelled out: cancelling an order the site has not started is not a conflict.
        assert!(!concurrent_state_conflict(S::Aborted, S::AllowedToStart));
        assert!(!concurrent_state_conflict(S::Aborted, S::Aborted));
        assert!(!concurrent_state_conflict(S::Ended, S::Running));
    }

    #[test]
    fn serde_round_trips() {
        let mut wo = order();
        wo.transition(A::Release, at(0)).unwrap();
        wo.transition(A::Start, at(1)).unwrap();
        wo.notes = "tool 4 worn, replace at next changeover".into();
        let json = serde_json::to_string(&wo).unwrap();
        assert!(json.contains("\"state\":\"running\""), "{json}");
        assert_eq!(serde_json::from_str::<WorkOrder>(&json).unwrap(), wo);
        let bytes = postcard::to_stdvec(&wo).unwrap();
        assert_eq!(postcard::from_bytes::<WorkOrder>(&bytes).unwrap(), wo);
    }
}
