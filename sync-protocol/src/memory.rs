//! In-memory implementations of the store traits, for tests and the deterministic simulator.
//!
//! They keep the same promises as the real stores (idempotent apply, cursor stored with the
//! batch, site-scoped hub data) so a test that passes here exercises the session logic, not
//! a shortcut. One simplification: a record's "heads" are the hashes of *all* its changes,
//! not only the Automerge DAG's tips, which is enough to find what each side lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use shared_model::master::{MasterKind, MasterRecord};
use shared_model::{Event, EventId, SiteId, Timestamp};

use crate::gap::{self, EdgeSummary, Span, Summary};
use crate::message::{
    ChangeHash, DownBatch, DownItem, HealReport, HubGeneration, RecordChange, RecordHeads, RecordId,
};
use crate::session::{EdgeSession, HubSession};
use crate::store::{
    DownEntry, EdgeStore, GenerationSeen, HeadsComparison, HubStore, IdsCompared, IngestReport,
    OutboxEntry, OutboxItem,
};

/// Runs a future that is ready at once, as every in-memory store future is. A pending
/// future here is a bug in the test, reported as such.
pub fn block_on_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("block_on_ready used on a future that is not ready"),
    }
}

/// Moves every frame either session has queued straight to the other, as an in-process
/// connection would; true if any moved (false: both are idle until the next input).
pub fn exchange_frames(edge: &mut EdgeSession, hub: &mut HubSession, now: Duration) -> bool {
    let mut moved = false;
    while let Some(f) = edge.poll_transmit() {
        hub.handle_frame(now, &f);
        moved = true;
    }
    while let Some(f) = hub.poll_transmit() {
        edge.handle_frame(now, &f);
        moved = true;
    }
    moved
}

/// The fake's change hash: deterministic, 32 bytes, good enough to tell changes apart.
pub fn change_hash(bytes: &[u8]) -> ChangeHash {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::hash::DefaultHasher::new();
        (i as u64).hash(&mut h);
        bytes.hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryStoreError {
    #[error("injected failure")]
    Injected,
}

type Records = BTreeMap<RecordId, BTreeMap<ChangeHash, RecordChange>>;

fn add_change(records: &mut Records, change: &RecordChange) -> bool {
    records
        .entry(change.record.clone())
        .or_default()
        .insert(change_hash(change.bytes()), change.clone())
        .is_none()
}

fn compare(records: &Records, peer: &RecordHeads) -> HeadsComparison {
    let ours = records.get(&peer.record);
    let peer_heads: BTreeSet<&ChangeHash> = peer.heads.iter().collect();
    let missing_at_peer = ours
        .map(|m| {
            m.iter()
                .filter(|(h, _)| !peer_heads.contains(h))
                .map(|(_, c)| c.clone())
                .collect()
        })
        .unwrap_or_default();
    let unknown_here = peer
        .heads
        .iter()
        .any(|h| ours.is_none_or(|m| !m.contains_key(h)));
    HeadsComparison {
        missing_at_peer,
        unknown_here,
        our_heads: ours
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default(),
    }
}

/// Master data as a site holds it: per key, the newest version and the record (None when
/// deleted).
pub type MasterTable = BTreeMap<(MasterKind, String), (u64, Option<MasterRecord>)>;

#[derive(Debug, Default)]
struct EdgeState {
    next_seq: u64,
    outbox: BTreeMap<u64, OutboxItem>,
    /// Every event recorded locally, acked or not (the edge keeps them for local reports).
    events: BTreeMap<EventId, Event>,
    records: Records,
    down_cursor: u64,
    master: MasterTable,
    /// The hub generation healed against last: (system id, timeline).
    generation: Option<(u64, u32)>,
    /// What retention pruned, per hour of recording time.
    pruned: BTreeMap<i64, Summary>,
    heal_reports: Vec<HealReport>,
}

/// A store's state behind a lock, and a switch that makes the next call fail.
#[derive(Debug, Default)]
struct Guarded<S> {
    state: Mutex<S>,
    fail_next: AtomicBool,
}

impl<S> Guarded<S> {
    fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail_next_call(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
    }

    /// The state, unless [`Guarded::fail_next_call`] made this the call to fail.
    fn checked(&self) -> Result<MutexGuard<'_, S>, MemoryStoreError> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(MemoryStoreError::Injected);
        }
        Ok(self.lock())
    }
}

/// The edge's store, in memory.
#[derive(Debug, Default)]
pub struct MemoryEdgeStore {
    inner: Guarded<EdgeState>,
}

impl MemoryEdgeStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next store call fail, to test the session's reaction.
    pub fn fail_next_call(&self) {
        self.inner.fail_next_call();
    }

    /// Records a fact locally and puts it in the outbox; returns its sequence.
    pub fn record_event(&self, event: Event) -> u64 {
        let mut s = self.inner.lock();
        s.next_seq += 1;
        let seq = s.next_seq;
        s.events.insert(event.event_id, event.clone());
        s.outbox.insert(seq, OutboxItem::Event(event));
        seq
    }

    /// Applies a local edit of a shared record and puts it in the outbox.
    pub fn record_change(&self, change: RecordChange) -> u64 {
        let mut s = self.inner.lock();
        add_change(&mut s.records, &change);
        s.next_seq += 1;
        let seq = s.next_seq;
        s.outbox.insert(seq, OutboxItem::Change(change));
        seq
    }

    /// Applies a change locally without queueing it, as a store restored from an older
    /// backup would have lost the queue entry but kept (or not) the record.
    pub fn apply_change_without_outbox(&self, change: &RecordChange) {
        add_change(&mut self.inner.lock().records, change);
    }

    pub fn pending(&self) -> usize {
        self.inner.lock().outbox.len()
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().events.values().cloned().collect()
    }

    /// Events still waiting in the outbox (not acknowledged by the hub).
    pub fn pending_event_ids(&self) -> BTreeSet<EventId> {
        self.inner.lock().queued_events()
    }

    /// Every record with the hashes of its changes.
    pub fn record_hashes(&self) -> BTreeMap<RecordId, BTreeSet<ChangeHash>> {
        self.inner
            .lock()
            .records
            .iter()
            .map(|(r, m)| (r.clone(), m.keys().copied().collect()))
            .collect()
    }

    pub fn master(&self) -> MasterTable {
        self.inner.lock().master.clone()
    }

    pub fn current_down_cursor(&self) -> u64 {
        self.inner.lock().down_cursor
    }

    /// Retention: forgets acknowledged events recorded before `cutoff`, remembering their
    /// summary per hour; returns how many.
    pub fn prune_acked_before(&self, cutoff: Timestamp) -> usize {
        let mut s = self.inner.lock();
        let pending = s.queued_events();
        let gone: Vec<(EventId, i64)> = s
            .events
            .values()
            .filter(|e| e.recorded_at < cutoff && !pending.contains(&e.event_id))
            .map(|e| (e.event_id, e.recorded_at.as_micros()))
            .collect();
        for (id, at) in &gone {
            s.events.remove(id);
            s.pruned.entry(gap::hour_start(*at)).or_default().add(id);
        }
        gone.len()
    }

    pub fn heal_reports(&self) -> Vec<HealReport> {
        self.inner.lock().heal_reports.clone()
    }
}

impl EdgeStore for MemoryEdgeStore {
    type Error = MemoryStoreError;

    async fn outbox_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Self::Error> {
        let s = self.inner.checked()?;
        Ok(s.outbox
            .range(after_seq.saturating_add(1)..)
            .take(limit)
            .map(|(seq, item)| OutboxEntry {
                seq: *seq,
                item: item.clone(),
            })
            .collect())
    }

    async fn ack_outbox(&self, up_to_seq: u64) -> Result<(), Self::Error> {
        let mut s = self.inner.checked()?;
        let keep = s.outbox.split_off(&up_to_seq.saturating_add(1));
        s.outbox = keep;
        Ok(())
    }

    async fn down_cursor(&self) -> Result<u64, Self::Error> {
        Ok(self.inner.checked()?.down_cursor)
    }

    async fn apply_down(&self, batch: &DownBatch) -> Result<(), Self::Error> {
        let mut s = self.inner.checked()?;
        for item in &batch.items {
            match item {
                DownItem::RecordChange(c) => {
                    add_change(&mut s.records, c);
                }
                DownItem::MasterUpsert { version, record } => {
                    let key = (record.kind(), record.key());
                    let newer = s.master.get(&key).is_none_or(|(v, _)| version > v);
                    if newer {
                        s.master.insert(key, (*version, Some(record.clone())));
                    }
                }
                DownItem::MasterDelete { version, kind, key } => {
                    let k = (*kind, key.clone());
                    if s.master.get(&k).is_none_or(|(v, _)| version > v) {
                        s.master.insert(k, (*version, None));
                    }
                }
            }
        }
        s.down_cursor = s.down_cursor.max(batch.cursor);
        Ok(())
    }

    async fn heads_page(
        &self,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<RecordHeads>, Self::Error> {
        let s = self.inner.checked()?;
        let iter: Box<dyn Iterator<Item = _>> = match after {
            None => Box::new(s.records.iter()),
            Some(a) => Box::new(s.records.range((
                std::ops::Bound::Excluded(a.clone()),
                std::ops::Bound::Unbounded,
            ))),
        };
        Ok(iter
            .take(limit)
            .map(|(r, m)| RecordHeads {
                record: r.clone(),
                heads: m.keys().copied().collect(),
            })
            .collect())
    }

    async fn compare_heads(&self, peer: &RecordHeads) -> Result<HeadsComparison, Self::Error> {
        Ok(compare(&self.inner.checked()?.records, peer))
    }

    async fn apply_repair(&self, changes: &[RecordChange]) -> Result<(), Self::Error> {
        let mut s = self.inner.checked()?;
        for c in changes {
            add_change(&mut s.records, c);
        }
        Ok(())
    }

    async fn note_generation(
        &self,
        generation: &HubGeneration,
    ) -> Result<GenerationSeen, Self::Error> {
        let mut s = self.inner.checked()?;
        let pair = (generation.system_id, generation.timeline);
        Ok(match s.generation {
            None => {
                s.generation = Some(pair);
                GenerationSeen::Known
            }
            Some(known) if known == pair => GenerationSeen::Known,
            Some(_) => GenerationSeen::Changed { window: s.window() },
        })
    }

    async fn gap_summaries(&self, spans: &[Span]) -> Result<Vec<EdgeSummary>, Self::Error> {
        let s = self.inner.checked()?;
        Ok(spans
            .iter()
            .map(|span| EdgeSummary {
                held: s
                    .events
                    .values()
                    .filter(|e| span.contains(e.recorded_at))
                    .map(|e| &e.event_id)
                    .collect(),
                pruned: s
                    .pruned
                    .iter()
                    .filter(|(h, _)| span.contains(Timestamp::from_micros(**h)))
                    .fold(Summary::default(), |acc, (_, p)| acc.combine(*p)),
            })
            .collect())
    }

    async fn heal_ids(
        &self,
        span: Span,
        after: Option<EventId>,
        through: Option<EventId>,
        hub_ids: &[EventId],
    ) -> Result<IdsCompared, Self::Error> {
        let mut s = self.inner.checked()?;
        let hub: BTreeSet<&EventId> = hub_ids.iter().collect();
        let in_range: Vec<Event> = s
            .events
            .values()
            .filter(|e| {
                span.contains(e.recorded_at)
                    && after.is_none_or(|a| e.event_id > a)
                    && through.is_none_or(|t| e.event_id <= t)
            })
            .cloned()
            .collect();
        let queued = s.queued_events();
        let mut found = IdsCompared {
            held: in_range.len() as u64,
            missing: 0,
        };
        for e in in_range {
            if hub.contains(&e.event_id) {
                continue;
            }
            found.missing += 1;
            if !queued.contains(&e.event_id) {
                s.next_seq += 1;
                let seq = s.next_seq;
                s.outbox.insert(seq, OutboxItem::Event(e));
            }
        }
        Ok(found)
    }

    async fn healed(
        &self,
        generation: &HubGeneration,
        report: &HealReport,
    ) -> Result<(), Self::Error> {
        let mut s = self.inner.checked()?;
        s.generation = Some((generation.system_id, generation.timeline));
        s.heal_reports.push(report.clone());
        Ok(())
    }
}

impl EdgeState {
    /// Events waiting in the outbox.
    fn queued_events(&self) -> BTreeSet<EventId> {
        self.outbox
            .values()
            .filter_map(|i| match i {
                OutboxItem::Event(e) => Some(e.event_id),
                OutboxItem::Change(_) => None,
            })
            .collect()
    }

    fn window(&self) -> Option<Span> {
        let held = self.events.values().map(|e| e.recorded_at);
        let pruned = self.pruned.keys().map(|h| Timestamp::from_micros(*h));
        let all: Vec<Timestamp> = held.chain(pruned).collect();
        let first = all.iter().min()?;
        let last = all.iter().max()?;
        Some(gap::window(*first, *last))
    }
}

#[derive(Debug, Default)]
struct HubSite {
    events: BTreeMap<EventId, Event>,
    records: Records,
    down_log: Vec<DownEntry>,
    down_acked: u64,
    heal_reports: Vec<HealReport>,
}

#[derive(Debug, Default)]
struct HubState {
    sites: BTreeMap<SiteId, HubSite>,
    /// One cursor sequence for all sites, like a Postgres sequence would be.
    next_cursor: u64,
    generation: Option<HubGeneration>,
}

/// The hub's store, in memory, scoped per site like the Postgres one.
#[derive(Debug, Default)]
pub struct MemoryHubStore {
    inner: Guarded<HubState>,
}

impl MemoryHubStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next store call fail, to test the session's reaction.
    pub fn fail_next_call(&self) {
        self.inner.fail_next_call();
    }

    /// HQ puts something in a site's down log (a release, an edit, master data); returns its
    /// cursor. Record changes are applied to the hub's copy too.
    pub fn publish(&self, site: &SiteId, item: DownItem) -> u64 {
        let mut s = self.inner.lock();
        s.next_cursor += 1;
        let cursor = s.next_cursor;
        let site = s.sites.entry(site.clone()).or_default();
        if let DownItem::RecordChange(c) = &item {
            add_change(&mut site.records, c);
        }
        site.down_log.push(DownEntry { cursor, item });
        cursor
    }

    /// Applies an HQ-side change to the hub's copy without publishing it, as a hub restored
    /// differently from the edge might hold.
    pub fn apply_change_without_publish(&self, site: &SiteId, change: &RecordChange) {
        add_change(
            &mut self
                .inner
                .lock()
                .sites
                .entry(site.clone())
                .or_default()
                .records,
            change,
        );
    }

    pub fn events(&self, site: &SiteId) -> Vec<Event> {
        self.inner
            .lock()
            .sites
            .get(site)
            .map(|s| s.events.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn record_hashes(&self, site: &SiteId) -> BTreeMap<RecordId, BTreeSet<ChangeHash>> {
        self.inner
            .lock()
            .sites
            .get(site)
            .map(|s| {
                s.records
                    .iter()
                    .map(|(r, m)| (r.clone(), m.keys().copied().collect()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn down_acked(&self, site: &SiteId) -> u64 {
        self.inner
            .lock()
            .sites
            .get(site)
            .map_or(0, |s| s.down_acked)
    }

    /// Names the database generation edges are told (none: edges never heal).
    pub fn set_generation(&self, generation: Option<HubGeneration>) {
        self.inner.lock().generation = generation;
    }

    /// A restore to an earlier point, for events: forgets the site's events recorded at or
    /// after `t`; returns how many.
    pub fn lose_events_recorded_since(&self, site: &SiteId, t: Timestamp) -> usize {
        let mut s = self.inner.lock();
        let Some(site) = s.sites.get_mut(site) else {
            return 0;
        };
        let before = site.events.len();
        site.events.retain(|_, e| e.recorded_at < t);
        before - site.events.len()
    }

    pub fn heal_reports(&self, site: &SiteId) -> Vec<HealReport> {
        self.inner
            .lock()
            .sites
            .get(site)
            .map(|s| s.heal_reports.clone())
            .unwrap_or_default()
    }

    pub fn down_head(&self, site: &SiteId) -> u64 {
        self.inner
            .lock()
            .sites
            .get(site)
            .and_then(|s| s.down_log.last())
            .map_or(0, |e| e.cursor)
    }
}

impl HubStore for MemoryHubStore {
    type Error = MemoryStoreError;

    async fn ingest_events(
        &self,
        site: &SiteId,
        events: &[Event],
    ) -> Result<IngestReport, Self::Error> {
        let mut s = self.inner.checked()?;
        let site = s.sites.entry(site.clone()).or_default();
        let mut report = IngestReport::default();
        for e in events {
            if site.events.insert(e.event_id, e.clone()).is_none() {
                report.inserted += 1;
            } else {
                report.duplicates += 1;
            }
        }
        Ok(report)
    }

    async fn apply_changes(
        &self,
        site: &SiteId,
        changes: &[RecordChange],
    ) -> Result<(), Self::Error> {
        let mut s = self.inner.checked()?;
        let site = s.sites.entry(site.clone()).or_default();
        for c in changes {
            add_change(&mut site.records, c);
        }
        Ok(())
    }

    async fn down_after(
        &self,
        site: &SiteId,
        after_cursor: u64,
        limit: usize,
    ) -> Result<Vec<DownEntry>, Self::Error> {
        Ok(self
            .inner
            .checked()?
            .sites
            .get(site)
            .map(|s| {
                s.down_log
                    .iter()
                    .filter(|e| e.cursor > after_cursor)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn record_down_ack(&self, site: &SiteId, cursor: u64) -> Result<(), Self::Error> {
        let mut s = self.inner.checked()?;
        let site = s.sites.entry(site.clone()).or_default();
        site.down_acked = site.down_acked.max(cursor);
        Ok(())
    }

    async fn record_ids_between(
        &self,
        site: &SiteId,
        after: Option<&RecordId>,
        through: Option<&RecordId>,
    ) -> Result<Vec<RecordId>, Self::Error> {
        let s = self.inner.checked()?;
        Ok(s.sites
            .get(site)
            .map(|s| {
                s.records
                    .keys()
                    .filter(|r| after.is_none_or(|a| *r > a) && through.is_none_or(|t| *r <= t))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn compare_heads(
        &self,
        site: &SiteId,
        peer: &RecordHeads,
    ) -> Result<HeadsComparison, Self::Error> {
        let s = self.inner.checked()?;
        Ok(match s.sites.get(site) {
            Some(site) => compare(&site.records, peer),
            None => compare(&Records::new(), peer),
        })
    }

    async fn generation(&self) -> Result<Option<HubGeneration>, Self::Error> {
        Ok(self.inner.checked()?.generation)
    }

    async fn gap_summaries(
        &self,
        site: &SiteId,
        spans: &[Span],
    ) -> Result<Vec<Summary>, Self::Error> {
        let s = self.inner.checked()?;
        Ok(spans
            .iter()
            .map(|span| {
                s.sites
                    .get(site)
                    .map(|site| {
                        site.events
                            .values()
                            .filter(|e| span.contains(e.recorded_at))
                            .map(|e| &e.event_id)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn gap_ids(
        &self,
        site: &SiteId,
        span: Span,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<EventId>, Self::Error> {
        let s = self.inner.checked()?;
        Ok(s.sites
            .get(site)
            .map(|site| {
                site.events
                    .values()
                    .filter(|e| {
                        span.contains(e.recorded_at) && after.is_none_or(|a| e.event_id > a)
                    })
                    .map(|e| e.event_id)
                    .take(limit)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn record_heal(&self, site: &SiteId, report: &HealReport) -> Result<(), Self::Error> {
        let mut s = self.inner.checked()?;
        s.sites
            .entry(site.clone())
            .or_default()
            .heal_reports
            .push(report.clone());
        Ok(())
    }
}
