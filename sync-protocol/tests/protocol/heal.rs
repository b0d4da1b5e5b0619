//! Healing a hub that went back in time: the edge finds what the hub lost by comparing
//! summaries top-down and sends exactly that; what its retention already pruned is reported,
//! never silently missing.

use std::collections::BTreeSet;

use shared_model::{Event, EventId, Timestamp};
use sync_protocol::gap::HOUR_MICROS;
use sync_protocol::message::HubGeneration;
use sync_protocol::session::SessionConfig;

use crate::harness::Loopback;
use crate::samples::{T0, all_event_bodies, event, site};

const EVENTS: u64 = 5_000;
/// One event every 52 s: 5,000 events over about 72 hours.
const EVERY_MICROS: i64 = 52_000_000;

fn generation(number: u32, timeline: u32) -> HubGeneration {
    HubGeneration {
        number,
        system_id: 7_441_234_567_890_123_456,
        timeline,
        restore_point: None,
    }
}

/// Hours after the first recording; the hub's clock (T0) is past the last one, since a hub
/// refuses events from its future.
fn at(hours: i64) -> Timestamp {
    T0.saturating_add_micros((hours - 80) * HOUR_MICROS)
}

fn recorded(n: u64) -> Event {
    let mut e = event(n, all_event_bodies().remove(0));
    e.recorded_at = at(0).saturating_add_micros(n as i64 * EVERY_MICROS);
    e.occurred_at = e.recorded_at;
    e
}

fn ids_recorded(from: Timestamp, to: Timestamp) -> BTreeSet<EventId> {
    (1..=EVENTS)
        .map(recorded)
        .filter(|e| from <= e.recorded_at && e.recorded_at < to)
        .map(|e| e.event_id)
        .collect()
}

fn hub_ids(lb: &Loopback) -> BTreeSet<EventId> {
    lb.hub_store
        .events(&site())
        .iter()
        .map(|e| e.event_id)
        .collect()
}

/// An edge that synced everything under generation 1.
fn synced() -> Loopback {
    let mut lb = Loopback::new(SessionConfig::default());
    lb.hub_store.set_generation(Some(generation(1, 1)));
    for n in 1..=EVENTS {
        lb.edge_store.record_event(recorded(n));
    }
    lb.settle();
    assert_eq!(lb.hub_store.events(&site()).len() as u64, EVENTS);
    assert_eq!(lb.edge_store.pending(), 0);
    lb
}

#[test]
fn a_restored_hub_gets_back_exactly_what_it_lost_and_the_pruned_loss_is_reported() {
    let mut lb = synced();
    // The edge's retention forgot what was recorded in the first 24 hours...
    let pruned = lb.edge_store.prune_acked_before(at(24));
    assert_eq!(pruned, ids_recorded(at(-1), at(24)).len());
    // ...and the hub is restored to hour 12: it lost hours 12 to 72.
    let lost = lb.hub_store.lose_events_recorded_since(&site(), at(12));
    let healable = ids_recorded(at(24), at(100));
    let gone = ids_recorded(at(12), at(24));
    assert_eq!(lost, healable.len() + gone.len());

    lb.hub_store.set_generation(Some(generation(2, 2)));
    lb.reconnect();
    lb.settle();

    let hub = hub_ids(&lb);
    assert!(healable.is_subset(&hub), "every held event is back");
    assert!(gone.is_disjoint(&hub), "pruned events cannot come back");
    assert_eq!(
        hub.len() as u64,
        EVENTS - gone.len() as u64,
        "nothing twice"
    );

    let reports = lb.edge_store.heal_reports();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.generation, 2);
    assert_eq!(r.resent, healable.len() as u64);
    let unrecoverable: u64 = r.unrecoverable.iter().map(|u| u.events).sum();
    assert_eq!(unrecoverable, gone.len() as u64, "{:?}", r.unrecoverable);
    // Named to the hour (retention remembers pruned events per hour of recording).
    let lost_hours = sync_protocol::gap::window(at(12), at(24));
    for u in &r.unrecoverable {
        assert!(
            u.span.from >= lost_hours.from && u.span.to <= lost_hours.to,
            "{u:?} outside {lost_hours:?}"
        );
    }
    assert_eq!(
        lb.hub_store.heal_reports(&site()),
        reports,
        "the hub keeps it"
    );
    // Finding the gap cost far less than sending every event again would.
    let everything = EVENTS * 60;
    assert!(r.search_bytes < everything, "{} bytes", r.search_bytes);

    // The next session knows this generation: no second heal.
    lb.reconnect();
    lb.settle();
    assert_eq!(lb.edge_store.heal_reports().len(), 1);
}

#[test]
fn a_hub_that_lost_nothing_costs_one_round_trip() {
    let mut lb = synced();
    lb.hub_store.set_generation(Some(generation(2, 2)));
    lb.reconnect();
    lb.settle();
    let r = &lb.edge_store.heal_reports()[0];
    assert_eq!((r.resent, r.unrecoverable.len()), (0, 0));
    assert_eq!(r.spans_compared, 1, "equal at the top: nothing to split");
    assert_eq!(r.id_pages, 0);
}

#[test]
fn a_heal_cut_short_starts_again_and_finishes() {
    let mut lb = synced();
    lb.hub_store.lose_events_recorded_since(&site(), at(30));
    lb.hub_store.set_generation(Some(generation(2, 2)));
    lb.reconnect();
    // A few exchanges only: the heal is under way when the link drops.
    for _ in 0..3 {
        lb.drive();
        lb.deliver(usize::MAX);
    }
    assert!(lb.edge.heal_in_progress());
    lb.reconnect();
    lb.settle();
    assert_eq!(hub_ids(&lb).len() as u64, EVENTS);
    let reports = lb.edge_store.heal_reports();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].unrecoverable.is_empty());
}

#[test]
fn a_first_contact_or_the_same_generation_starts_no_heal() {
    let mut lb = synced();
    lb.hub_store.lose_events_recorded_since(&site(), at(30));
    lb.reconnect();
    lb.settle();
    assert!(lb.edge_store.heal_reports().is_empty());
    // A hub that names no generation (an older hub) never starts one either.
    lb.hub_store.set_generation(None);
    lb.reconnect();
    lb.settle();
    assert!(lb.edge_store.heal_reports().is_empty());
}
