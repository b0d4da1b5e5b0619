//! What a batch changes in the rollups, decided without a database: the *facts* (what one
//! event, or the replacement of the correction that won for it, contributes) to add and to
//! remove. A correction removes the corrected event's facts and adds its replacement's at the
//! corrected event's time; the latest-issued correction wins, whatever the arrival order
//! (`shared_model::event::correction_supersedes`, the edge's rule too); a
//! correction of a correction has no effect (`docs/reports.md`).
//!
//! [`plan`] is a pure function of the batch and of what the database already knew
//! ([`Known`]); `super::apply` loads that and writes the result.

use std::collections::{BTreeMap, HashMap, HashSet};

use shared_model::event::{MaterialMovement, ProductionCount, Replacement};
use shared_model::event::{correction_supersedes, winning_correction};
use shared_model::{Event, EventBody, EventId, Timestamp};
use uuid::Uuid;

/// Which way a material movement went, as the `lot_movements.direction` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Consumed,
    Produced,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Consumed => "consumed",
            Direction::Produced => "produced",
        }
    }
}

/// What one fact contributes.
#[derive(Debug, Clone, PartialEq)]
pub enum FactBody {
    Production(ProductionCount),
    State {
        equipment: String,
        state: &'static str,
        reason: Option<String>,
    },
    Lot {
        direction: Direction,
        movement: MaterialMovement,
    },
}

/// One event's contribution, under the id and time it counts at.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub id: Uuid,
    pub at: Timestamp,
    pub body: FactBody,
}

/// A replacement's facts take the corrected event's place: its time *and* its id, which orders
/// simultaneous state changes and names the fact when a later correction swaps it again.
fn facts_of_replacement(id: Uuid, at: Timestamp, r: &Replacement) -> Option<Fact> {
    facts_of_body(id, at, &r.to_body())
}

/// The facts of an event body; kinds that feed no rollup have none.
fn facts_of_body(id: Uuid, at: Timestamp, body: &EventBody) -> Option<Fact> {
    let body = match body {
        EventBody::ProductionCount(p) => FactBody::Production(p.clone()),
        EventBody::EquipmentState(s) => FactBody::State {
            equipment: s.equipment.to_string(),
            state: s.state.as_str(),
            reason: s.reason.as_ref().map(|r| r.to_string()),
        },
        EventBody::MaterialConsumed(m) => FactBody::Lot {
            direction: Direction::Consumed,
            movement: m.clone(),
        },
        EventBody::MaterialProduced(m) => FactBody::Lot {
            direction: Direction::Produced,
            movement: m.clone(),
        },
        EventBody::QualitySample(_) | EventBody::OperatorClock(_) | EventBody::Correction(_) => {
            return None;
        }
    };
    Some(Fact { id, at, body })
}

/// The batch's new corrections, by the event they correct.
pub fn corrections_by_target<'a>(
    batch: &'a [Event],
    inserted: &HashSet<Uuid>,
) -> BTreeMap<Uuid, Vec<&'a Event>> {
    let mut by_target: BTreeMap<Uuid, Vec<&Event>> = BTreeMap::new();
    for e in batch {
        if let EventBody::Correction(c) = &e.body
            && inserted.contains(e.event_id.as_uuid())
        {
            by_target.entry(*c.corrects.as_uuid()).or_default().push(e);
        }
    }
    by_target
}

/// What the database knew when the batch arrived, as far as the batch's corrections need it.
#[derive(Debug, Default)]
pub struct Known {
    /// Event → the winning correction stored *before* this batch's corrections were recorded
    /// (for the events this batch corrects, and for `corrected`).
    pub prior_winners: HashMap<Uuid, EventId>,
    /// Event that arrived after its corrections → the winning correction *including* this
    /// batch's.
    pub late_winners: HashMap<Uuid, EventId>,
    /// Stored events by id: the corrected events and the winning corrections named above.
    pub events: HashMap<Uuid, Event>,
}

/// The facts a batch adds to and removes from the rollups.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub adds: Vec<Fact>,
    pub removes: Vec<Fact>,
}

/// Decides what a batch whose rows were just inserted changes in the rollups. `inserted` holds
/// the ids of the batch's new events that are not plain production counts (those were rolled
/// up by the ingest already); `corrected` the ids of new events for which corrections had
/// arrived earlier.
pub fn plan(
    batch: &[Event],
    inserted: &HashSet<Uuid>,
    corrected: &HashSet<Uuid>,
    known: &Known,
) -> Plan {
    let by_target = corrections_by_target(batch, inserted);
    let batch_by_id: HashMap<Uuid, &Event> =
        batch.iter().map(|e| (*e.event_id.as_uuid(), e)).collect();
    let find = |id: &Uuid| {
        known
            .events
            .get(id)
            .or_else(|| batch_by_id.get(id).copied())
    };
    let mut plan = Plan::default();
    plain_events(batch, inserted, corrected, &by_target, &mut plan);
    late_events(corrected, known, &batch_by_id, &find, &mut plan);
    corrections_of_known(&by_target, inserted, corrected, known, &find, &mut plan);
    plan
}

fn replacement_of(c: &Event) -> Option<Replacement> {
    match &c.body {
        EventBody::Correction(c) => c.replacement.clone(),
        EventBody::ProductionCount(_)
        | EventBody::EquipmentState(_)
        | EventBody::QualitySample(_)
        | EventBody::MaterialConsumed(_)
        | EventBody::MaterialProduced(_)
        | EventBody::OperatorClock(_) => None,
    }
}

/// Plain new events: their own facts (production counts were rolled up by the ingest
/// already), unless a correction came first: an earlier one (the winner stands in,
/// [`late_events`]) or one in this batch ([`corrections_of_known`] swaps the facts).
fn plain_events(
    batch: &[Event],
    inserted: &HashSet<Uuid>,
    corrected: &HashSet<Uuid>,
    by_target: &BTreeMap<Uuid, Vec<&Event>>,
    plan: &mut Plan,
) {
    for e in batch {
        let id = *e.event_id.as_uuid();
        if !inserted.contains(&id) || corrected.contains(&id) || by_target.contains_key(&id) {
            continue;
        }
        if let Some(f) = facts_of_body(id, e.occurred_at, &e.body)
            && !matches!(f.body, FactBody::Production(_))
        {
            plan.adds.push(f);
        }
    }
}

/// Events that arrived after their corrections: the winning replacement stands in.
fn late_events<'a>(
    corrected: &HashSet<Uuid>,
    known: &'a Known,
    batch_by_id: &HashMap<Uuid, &'a Event>,
    find: &impl Fn(&Uuid) -> Option<&'a Event>,
    plan: &mut Plan,
) {
    for x in corrected {
        let Some(e) = batch_by_id.get(x) else {
            continue;
        };
        if matches!(e.body, EventBody::Correction(_)) {
            continue; // corrections of corrections have no effect
        }
        if let Some(w) = known.late_winners.get(x)
            && let Some(wc) = find(w.as_uuid())
            && let Some(r) = replacement_of(wc)
            && let Some(f) = facts_of_replacement(*x, e.occurred_at, &r)
        {
            plan.adds.push(f);
        }
    }
}

/// Corrections of events already known (stored, or earlier in this batch): swap the old
/// effective fact for the new winner's.
fn corrections_of_known<'a>(
    by_target: &BTreeMap<Uuid, Vec<&Event>>,
    inserted: &HashSet<Uuid>,
    corrected: &HashSet<Uuid>,
    known: &Known,
    find: &impl Fn(&Uuid) -> Option<&'a Event>,
    plan: &mut Plan,
) {
    for (x, cs) in by_target {
        if corrected.contains(x) {
            // Handled by late_events (the corrected event came in this very batch after them).
            continue;
        }
        let Some(target) = find(x) else {
            continue; // not here yet: applied when it arrives
        };
        if matches!(target.body, EventBody::Correction(_)) {
            continue; // corrections of corrections have no effect
        }
        let prev = known.prior_winners.get(x).copied();
        let Some(best_new) = winning_correction(cs.iter().map(|c| c.event_id)) else {
            continue;
        };
        if prev.is_some_and(|p| !correction_supersedes(best_new, p)) {
            continue; // an earlier-arrived, later-issued correction still wins
        }
        let at = target.occurred_at;
        match prev {
            Some(p) => {
                if let Some(pc) = find(p.as_uuid())
                    && let Some(r) = replacement_of(pc)
                    && let Some(f) = facts_of_replacement(*x, at, &r)
                {
                    plan.removes.push(f);
                }
            }
            None => {
                // A non-production event of this very batch never had its facts added.
                let added =
                    !inserted.contains(x) || matches!(target.body, EventBody::ProductionCount(_));
                if added && let Some(f) = facts_of_body(*x, at, &target.body) {
                    plan.removes.push(f);
                }
            }
        }
        if let Some(wc) = find(best_new.as_uuid())
            && let Some(r) = replacement_of(wc)
            && let Some(f) = facts_of_replacement(*x, at, &r)
        {
            plan.adds.push(f);
        }
    }
}

/// The correction rules without PostgreSQL: each case is a batch, what the database knew
/// before it, and the facts the rollups must add and remove.
#[cfg(test)]
mod tests {
    use shared_model::event::{Correction, EquipmentStateChange, MachineState};
    use shared_model::{EquipmentId, EventId, SiteId};

    use super::*;

    /// An event whose id carries `n` as its creation time: ids order as `n` does.
    fn event(n: u64, body: EventBody) -> Event {
        Event {
            event_id: EventId::from_parts(1_700_000_000_000 + n, [0; 10]),
            site_id: SiteId::new("S1").unwrap(),
            occurred_at: Timestamp::from_micros(n as i64 * 1_000_000),
            recorded_at: Timestamp::from_micros(n as i64 * 1_000_000),
            operator: None,
            body,
        }
    }

    fn count(good: u32) -> ProductionCount {
        ProductionCount {
            equipment: EquipmentId::new("E1").unwrap(),
            work_order: None,
            good,
            scrap: 0,
            rework: 0,
            scrap_reason: None,
        }
    }

    fn state(s: MachineState) -> EquipmentStateChange {
        EquipmentStateChange {
            equipment: EquipmentId::new("E1").unwrap(),
            state: s,
            reason: None,
        }
    }

    fn correction(n: u64, target: &Event, good: u32) -> Event {
        event(
            n,
            EventBody::Correction(Correction {
                corrects: target.event_id,
                replacement: Some(Replacement::ProductionCount(count(good))),
                note: String::new(),
            }),
        )
    }

    fn id(e: &Event) -> Uuid {
        *e.event_id.as_uuid()
    }

    /// Good counts of the production facts, with the id and time they count under.
    fn goods(facts: &[Fact]) -> Vec<(Uuid, i64, u32)> {
        facts
            .iter()
            .filter_map(|f| match &f.body {
                FactBody::Production(p) => Some((f.id, f.at.as_micros(), p.good)),
                FactBody::State { .. } | FactBody::Lot { .. } => None,
            })
            .collect()
    }

    fn new_ids(events: &[&Event]) -> HashSet<Uuid> {
        events.iter().map(|e| id(e)).collect()
    }

    /// The plan for a batch of new events, `late` among them arriving after their corrections.
    fn plan_of(batch: &[&Event], late: &[&Event], known: &Known) -> Plan {
        let owned: Vec<Event> = batch.iter().map(|e| (*e).clone()).collect();
        plan(&owned, &new_ids(batch), &new_ids(late), known)
    }

    /// What the database knew: `events` stored, `prior` the winners stored before the batch.
    fn known(events: &[&Event], prior: &[(&Event, &Event)]) -> Known {
        Known {
            events: events.iter().map(|e| (id(e), (*e).clone())).collect(),
            prior_winners: prior.iter().map(|(x, w)| (id(x), w.event_id)).collect(),
            late_winners: HashMap::new(),
        }
    }

    #[test]
    fn a_correction_of_a_stored_count_swaps_its_facts() {
        let target = event(1, EventBody::ProductionCount(count(10)));
        let c = correction(5, &target, 7);
        let plan = plan_of(&[&c], &[], &known(&[&target], &[]));
        // Both under the corrected event's id and time.
        assert_eq!(goods(&plan.removes), [(id(&target), 1_000_000, 10)]);
        assert_eq!(goods(&plan.adds), [(id(&target), 1_000_000, 7)]);
    }

    #[test]
    fn the_latest_issued_correction_wins_whatever_the_arrival_order() {
        let target = event(1, EventBody::ProductionCount(count(10)));
        let later = correction(9, &target, 3);
        let earlier = correction(5, &target, 7);
        // The later-issued correction is stored already; the earlier-issued one arrives now.
        let p = plan_of(
            &[&earlier],
            &[],
            &known(&[&target, &later], &[(&target, &later)]),
        );
        assert_eq!(
            p,
            Plan::default(),
            "the stored, later-issued correction stands"
        );

        // The other way round: the stored winner is replaced by the later-issued newcomer.
        let p = plan_of(
            &[&later],
            &[],
            &known(&[&target, &earlier], &[(&target, &earlier)]),
        );
        assert_eq!(goods(&p.removes), [(id(&target), 1_000_000, 7)]);
        assert_eq!(goods(&p.adds), [(id(&target), 1_000_000, 3)]);
    }

    #[test]
    fn within_one_batch_the_latest_issued_of_several_corrections_wins() {
        let target = event(1, EventBody::ProductionCount(count(10)));
        let a = correction(5, &target, 7);
        let b = correction(8, &target, 2);
        let p = plan_of(&[&b, &a], &[], &known(&[&target], &[]));
        assert_eq!(goods(&p.adds), [(id(&target), 1_000_000, 2)]);
    }

    #[test]
    fn an_event_arriving_after_its_correction_counts_as_the_replacement() {
        let target = event(1, EventBody::EquipmentState(state(MachineState::Down)));
        let c = event(
            5,
            EventBody::Correction(Correction {
                corrects: target.event_id,
                replacement: Some(Replacement::EquipmentState(state(MachineState::Setup))),
                note: String::new(),
            }),
        );
        let mut known = known(&[&c], &[]);
        known.late_winners.insert(id(&target), c.event_id);
        let p = plan_of(&[&target], &[&target], &known);
        assert!(p.removes.is_empty());
        assert_eq!(p.adds.len(), 1);
        assert_eq!(p.adds[0].id, id(&target));
        assert!(matches!(
            p.adds[0].body,
            FactBody::State { state: "setup", .. }
        ));
    }

    #[test]
    fn a_correction_of_a_correction_has_no_effect() {
        let target = event(1, EventBody::ProductionCount(count(10)));
        let c1 = correction(5, &target, 7);
        let c2 = correction(9, &c1, 1);
        let p = plan_of(&[&c2], &[], &known(&[&c1], &[]));
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_correction_before_its_event_waits_and_plain_events_add_their_facts() {
        let missing = event(1, EventBody::ProductionCount(count(10)));
        let c = correction(5, &missing, 7);
        let s = event(2, EventBody::EquipmentState(state(MachineState::Idle)));
        let batch = [c.clone(), s.clone()];
        let p = plan(
            &batch,
            &new_ids(&[&c, &s]),
            &HashSet::new(),
            &Known::default(),
        );
        assert!(p.removes.is_empty());
        // Only the state change: the correction's target is not here yet.
        assert_eq!(p.adds.len(), 1);
        assert_eq!(p.adds[0].id, id(&s));
    }
}
