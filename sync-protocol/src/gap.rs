//! Finding the events a hub lost (after a restore or a failover) without sending them all.
//!
//! Both ends summarise a site's events over a span of **recording times** (`recorded_at`, the
//! edge's clock when it stored the event, which both ends hold and which the edge's retention
//! prunes by): how many, and the XOR of a 64-bit digest of each event id. Equal summaries mean
//! equal sets, up to a 2⁻⁶⁴ chance; unequal spans are split and compared again, top-down, until
//! a span is small enough to list the hub's ids, and the edge sends exactly the events the hub
//! lacks. The hub computes the same digest in SQL (`central_hub`'s gap queries), pinned to
//! [`event_digest`] by a test.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared_model::{EventId, Timestamp};

use crate::message::{GAP_SPANS_MAX, HEAL_UNRECOVERABLE_MAX, Unrecoverable};

/// One hour in microseconds: the edge remembers what its retention pruned per hour of recording
/// time, so spans that hold pruned events are never split below an hour.
pub const HOUR_MICROS: i64 = 3_600_000_000;

/// Children of a span that differs.
pub const FANOUT: usize = 16;
/// A differing span whose edge side holds at most this many events is listed, not split.
pub const LEAF_EVENTS_MAX: u64 = 512;

/// A half-open span of recording times, `from ≤ recorded_at < to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub from: Timestamp,
    pub to: Timestamp,
}

impl Span {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.from <= t && t < self.to
    }

    pub fn micros(&self) -> i64 {
        self.to.as_micros().saturating_sub(self.from.as_micros())
    }
}

/// How many events a span holds and the XOR of their [`event_digest`]s: adding an event and
/// combining two disjoint summaries commute, so either end can sum in any order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub events: u64,
    pub digest: u64,
}

impl Summary {
    pub fn add(&mut self, id: &EventId) {
        self.events += 1;
        self.digest ^= event_digest(id);
    }

    #[must_use]
    pub fn combine(self, other: Summary) -> Summary {
        Summary {
            events: self.events + other.events,
            digest: self.digest ^ other.digest,
        }
    }
}

impl<'a> FromIterator<&'a EventId> for Summary {
    fn from_iter<I: IntoIterator<Item = &'a EventId>>(ids: I) -> Self {
        let mut s = Summary::default();
        for id in ids {
            s.add(id);
        }
        s
    }
}

/// The edge's side of a span: the events it still holds, and those its retention pruned
/// (remembered per hour; counted in a span when the hour starts inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeSummary {
    pub held: Summary,
    pub pruned: Summary,
}

impl EdgeSummary {
    /// Everything the edge ever had in the span.
    pub fn total(&self) -> Summary {
        self.held.combine(self.pruned)
    }
}

/// The first 8 bytes, big-endian, of SHA-256 over the id's 16 bytes. In SQL:
/// `('x' || encode(substr(sha256(uuid_send(event_id)), 1, 8), 'hex'))::bit(64)::bigint`.
pub fn event_digest(id: &EventId) -> u64 {
    let hash = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

/// What the edge's heal wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Summarise these spans in the edge's store, then [`Planner::edge_summaries`].
    Summarise(Vec<Span>),
    /// Send the hub a gap query for these spans; its answer goes to [`Planner::hub_summaries`].
    AskHub(Vec<Span>),
    /// Send the hub a gap ids query; its page goes to [`Planner::hub_ids`].
    AskIds { span: Span, after: Option<EventId> },
    /// Compare the edge's ids of `span` in `(after, through]` with the hub's page and queue
    /// the missing ones; the counts go to [`Planner::leaf_page_done`].
    CompareIds {
        span: Span,
        after: Option<EventId>,
        through: Option<EventId>,
        hub_ids: Vec<EventId>,
    },
    /// Waiting for an answer.
    Wait,
    /// Every span is settled.
    Done,
}

/// A span listed id by id, page by page.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leaf {
    span: Span,
    edge: EdgeSummary,
    after: Option<EventId>,
    hub_seen: u64,
    held_seen: u64,
    missing: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    None,
    Summaries(Vec<Span>),
    Hub(Vec<(Span, EdgeSummary)>),
    Ids(Leaf),
    Compare(Leaf, bool),
}

/// The edge's side of a heal, pure: spans go down the tree where the two ends' summaries
/// differ, until they are small enough to list. The session feeds it answers and asks it for
/// the next step; nothing here does I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planner {
    todo: VecDeque<Span>,
    summarised: VecDeque<(Span, EdgeSummary)>,
    leaves: VecDeque<Leaf>,
    pending: Pending,
    pub resent: u64,
    pub unrecoverable: Vec<Unrecoverable>,
    pub spans_compared: u64,
    pub id_pages: u64,
}

/// The hub's answer does not fit the question.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0} answered without a question")]
    NotAsked(&'static str),
    #[error("{got} summaries for {asked} spans")]
    WrongCount { asked: usize, got: usize },
    #[error("event ids not ascending after the page's start")]
    NotAscending,
}

impl Planner {
    /// A heal over `window` (the edge's whole retention, hour-aligned), or nothing to do.
    pub fn new(window: Option<Span>) -> Planner {
        Planner {
            todo: window.filter(|w| w.micros() > 0).into_iter().collect(),
            summarised: VecDeque::new(),
            leaves: VecDeque::new(),
            pending: Pending::None,
            resent: 0,
            unrecoverable: Vec::new(),
            spans_compared: 0,
            id_pages: 0,
        }
    }

    /// The next thing to do; `Wait` while an answer is outstanding.
    pub fn next_step(&mut self) -> Step {
        if self.pending != Pending::None {
            return Step::Wait;
        }
        if !self.summarised.is_empty() {
            let batch: Vec<(Span, EdgeSummary)> = self.summarised.drain(..).collect();
            let spans = batch.iter().map(|(s, _)| *s).collect();
            self.pending = Pending::Hub(batch);
            return Step::AskHub(spans);
        }
        if !self.todo.is_empty() {
            let n = self.todo.len().min(GAP_SPANS_MAX);
            let spans: Vec<Span> = self.todo.drain(..n).collect();
            self.pending = Pending::Summaries(spans.clone());
            return Step::Summarise(spans);
        }
        if let Some(leaf) = self.leaves.pop_front() {
            let step = Step::AskIds {
                span: leaf.span,
                after: leaf.after,
            };
            self.pending = Pending::Ids(leaf);
            return step;
        }
        Step::Done
    }

    /// The edge's summaries of the spans of the last [`Step::Summarise`], in its order.
    pub fn edge_summaries(&mut self, summaries: Vec<EdgeSummary>) -> Result<(), PlanError> {
        let Pending::Summaries(spans) = std::mem::replace(&mut self.pending, Pending::None) else {
            return Err(PlanError::NotAsked("edge summaries"));
        };
        if spans.len() != summaries.len() {
            return Err(PlanError::WrongCount {
                asked: spans.len(),
                got: summaries.len(),
            });
        }
        for (span, edge) in spans.into_iter().zip(summaries) {
            if edge.total().events == 0 {
                // Nothing the edge ever had here: nothing to give, nothing lost.
                continue;
            }
            self.summarised.push_back((span, edge));
        }
        Ok(())
    }

    /// The hub's summaries of the spans of the last [`Step::AskHub`].
    pub fn hub_summaries(&mut self, summaries: &[Summary]) -> Result<(), PlanError> {
        let Pending::Hub(asked) = std::mem::replace(&mut self.pending, Pending::None) else {
            return Err(PlanError::NotAsked("gap summaries"));
        };
        if asked.len() != summaries.len() {
            return Err(PlanError::WrongCount {
                asked: asked.len(),
                got: summaries.len(),
            });
        }
        for ((span, edge), hub) in asked.into_iter().zip(summaries) {
            self.spans_compared += 1;
            self.settle(span, edge, *hub);
        }
        Ok(())
    }

    fn settle(&mut self, span: Span, edge: EdgeSummary, hub: Summary) {
        if edge.total() == hub {
            return;
        }
        if edge.held.events == 0 && span.micros() <= HOUR_MICROS {
            // All the edge had in this hour was pruned: what the hub lacks is gone, and
            // counted (named to the hour, as retention remembers it).
            let lost = edge.pruned.events.saturating_sub(hub.events);
            self.lost(span, lost);
            return;
        }
        let small = if edge.pruned.events == 0 {
            edge.held.events <= LEAF_EVENTS_MAX
        } else {
            span.micros() <= HOUR_MICROS
        };
        if small || span.micros() <= 1 {
            self.leaves.push_back(Leaf {
                span,
                edge,
                after: None,
                hub_seen: 0,
                held_seen: 0,
                missing: 0,
            });
        } else {
            self.todo.extend(split(span));
        }
    }

    fn lost(&mut self, span: Span, events: u64) {
        if events == 0 {
            return;
        }
        if self.unrecoverable.len() < HEAL_UNRECOVERABLE_MAX {
            self.unrecoverable.push(Unrecoverable { span, events });
        } else if let Some(last) = self.unrecoverable.last_mut() {
            // Over the limit: the last entry grows to cover the rest, so no loss goes untold.
            last.span.to = last.span.to.max(span.to);
            last.span.from = last.span.from.min(span.from);
            last.events += events;
        }
    }

    /// A page of the hub's ids for the leaf of the last [`Step::AskIds`]: returns the
    /// [`Step::CompareIds`] for the store.
    pub fn hub_ids(&mut self, ids: Vec<EventId>, more: bool) -> Result<Step, PlanError> {
        let Pending::Ids(mut leaf) = std::mem::replace(&mut self.pending, Pending::None) else {
            return Err(PlanError::NotAsked("gap ids"));
        };
        let ascending = ids.windows(2).all(|w| w[0] < w[1])
            && ids
                .first()
                .is_none_or(|first| leaf.after.is_none_or(|a| a < *first));
        if !ascending {
            return Err(PlanError::NotAscending);
        }
        self.id_pages += 1;
        leaf.hub_seen += ids.len() as u64;
        let through = if more { ids.last().copied() } else { None };
        let step = Step::CompareIds {
            span: leaf.span,
            after: leaf.after,
            through,
            hub_ids: ids,
        };
        // A `more` page with no ids would never advance: treat it as the last.
        let more = more && through.is_some();
        leaf.after = through;
        self.pending = Pending::Compare(leaf, more);
        Ok(step)
    }

    /// The store compared a page: `held` of its ids fell in the page's range, `missing` of
    /// them the hub lacked (and are queued again).
    pub fn leaf_page_done(&mut self, held: u64, missing: u64) -> Result<(), PlanError> {
        let Pending::Compare(mut leaf, more) = std::mem::replace(&mut self.pending, Pending::None)
        else {
            return Err(PlanError::NotAsked("id comparison"));
        };
        leaf.held_seen += held;
        leaf.missing += missing;
        self.resent += missing;
        if more {
            self.leaves.push_front(leaf);
        } else {
            // The hub's ids of the edge's held events are held − missing; the rest of the
            // hub's ids are pruned events it kept. Pruned events beyond those are lost.
            let held_at_hub = leaf.held_seen.saturating_sub(leaf.missing);
            let pruned_at_hub = leaf.hub_seen.saturating_sub(held_at_hub);
            let lost = leaf.edge.pruned.events.saturating_sub(pruned_at_hub);
            self.lost(leaf.span, lost);
        }
        Ok(())
    }

    pub fn unrecoverable_events(&self) -> u64 {
        self.unrecoverable.iter().map(|u| u.events).sum()
    }
}

/// Up to [`FANOUT`] children covering `span`: whole hours while the span is longer than an
/// hour (pruned events are remembered per hour), else equal parts down to a microsecond.
pub fn split(span: Span) -> Vec<Span> {
    let len = span.micros();
    let step = if len > HOUR_MICROS {
        let hours = ceil_div(len, HOUR_MICROS);
        ceil_div(hours, FANOUT as i64) * HOUR_MICROS
    } else {
        ceil_div(len, FANOUT as i64).max(1)
    };
    let mut out = Vec::with_capacity(FANOUT);
    let mut from = span.from.as_micros();
    let end = span.to.as_micros();
    while from < end {
        let to = from.saturating_add(step).min(end);
        out.push(Span {
            from: Timestamp::from_micros(from),
            to: Timestamp::from_micros(to),
        });
        from = to;
    }
    out
}

/// `a / b` rounded up, for `a ≥ 0`, `b > 0` (`i64::div_ceil` is not stable).
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// The start of the hour a recording time (µs) falls in: how retention remembers what it
/// pruned. Saturates rather than overflows for instants no valid event has.
pub fn hour_start(micros: i64) -> i64 {
    micros.saturating_sub(micros.rem_euclid(HOUR_MICROS))
}

/// The hour-aligned window covering recording times `first ..= last`.
pub fn window(first: Timestamp, last: Timestamp) -> Span {
    let from = hour_start(first.as_micros());
    let to = hour_start(last.as_micros()).saturating_add(HOUR_MICROS);
    Span {
        from: Timestamp::from_micros(from),
        to: Timestamp::from_micros(to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> EventId {
        EventId::from_parts(1_700_000_000_000 + u64::from(n), [n; 10])
    }

    #[test]
    fn summaries_do_not_depend_on_order_or_grouping() {
        let ids: Vec<EventId> = (0..20).map(id).collect();
        let all: Summary = ids.iter().collect();
        let rev: Summary = ids.iter().rev().collect();
        let halves = ids[..7]
            .iter()
            .collect::<Summary>()
            .combine(ids[7..].iter().collect());
        assert_eq!(all, rev);
        assert_eq!(all, halves);
        assert_eq!(all.events, 20);
        let missing_one: Summary = ids[1..].iter().collect();
        assert_ne!(all.digest, missing_one.digest);
    }

    #[test]
    fn the_digest_is_pinned() {
        // The hub's SQL must give the same value (its test uses this id too); computed with
        // Python's hashlib: sha256(uuid.bytes)[:8], big-endian.
        let e = "0190f5c4-8a2b-7c3d-9e4f-a1b2c3d4e5f6"
            .parse::<EventId>()
            .unwrap();
        assert_eq!(event_digest(&e), 0xf668_efff_0736_a189);
    }
}
