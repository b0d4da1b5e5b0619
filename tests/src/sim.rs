//! A deterministic simulator of the sync system, after FoundationDB's and TigerBeetle's: the
//! real `sync-protocol` session state machines and driver, N edges and one or more hub
//! instances sharing one hub store, over a simulated network, in simulated time, with every
//! choice taken from one seeded random generator. The same seed replays the same run, bit for
//! bit (the trace hash says so).
//!
//! **Stores.** Edges keep `MemoryEdgeStore`s; hub instances share one `MemoryHubStore` (two
//! hubs on one database). Every store call is a committed transaction, so a crash loses what
//! is in memory only: sessions, frames in flight, and — with [`Bug::AckBeforeCommit`] — the
//! hub instance's writes it acknowledged but had not made durable yet.
//!
//! **Faults.** Connections killed (the hub side lingers until its idle timeout, so late frames
//! and two sessions of one site at once happen); acks lost with their connection (so batches
//! arrive twice); frames delayed, and late frames of a dead connection reaching the hub after
//! the next connection's (reordering across connections); symmetric and one-way partitions of
//! an edge from a hub; swizzle-clog (links cut one by one, restored in random order); crashes
//! and restarts of edges and hubs; edge clocks off by up to 3 days slow or an hour fast (the
//! hub refuses events more than a day ahead of it). Within one connection
//! frames keep their order and are never duplicated, as on a QUIC stream: the protocol relies
//! on that (see docs/reliability.md for what a reordering stream does to it).
//!
//! **Modes.** In safety mode faults go on to the end and only safety is checked: no
//! acknowledged event lost, none stored twice, none under another site. In liveness mode the
//! faults stop and heal after the fault phase, and within a bound every edge must drain, the
//! hub must hold every event exactly once, and every site's shared records and down log must
//! be identical on both sides ("converged"); the time that took is measured.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::rng::Rng;
use shared_model::event::ProductionCount;
use shared_model::master::{MasterRecord, Material, Tracking};
use shared_model::{EquipmentId, Event, EventBody, EventId, MaterialId, SiteId, Timestamp};
use sync_protocol::driver::{drive_edge, drive_hub};
use sync_protocol::memory::{MemoryEdgeStore, MemoryHubStore, block_on_ready};
use sync_protocol::message::{DownItem, RecordChange, RecordId, RecordKind};
use sync_protocol::session::{EdgeSession, HubSession, SessionConfig};
use sync_protocol::store::{DownEntry, EdgeStore, HeadsComparison, HubStore, IngestReport};

/// A deliberately wrong system, to show the simulator catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The hub store reports events stored (so the session acks them) before they are
    /// durable; a crash before the next flush loses them.
    AckBeforeCommit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Safety,
    Liveness,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub mode: Mode,
    pub bug: Option<Bug>,
    /// Simulated time with faults (and writes).
    pub fault_phase: Duration,
    /// After healing, convergence must come within this.
    pub converge_bound: Duration,
}

impl SimConfig {
    pub fn new(seed: u64, mode: Mode) -> Self {
        Self {
            seed,
            mode,
            bug: None,
            fault_phase: Duration::from_secs(120),
            converge_bound: Duration::from_secs(300),
        }
    }
}

/// What one run found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub seed: u64,
    pub edges: usize,
    pub hubs: usize,
    pub trace_hash: u64,
    pub faults: BTreeMap<&'static str, u64>,
    /// Events the edges' clients were told are stored.
    pub acknowledged: u64,
    /// Acknowledged events in no store (in liveness mode: not at the hub).
    pub lost: Vec<EventId>,
    /// Events a hub instance reported inserted more than once.
    pub duplicated: Vec<EventId>,
    /// Events the hub holds under another site than their own.
    pub misplaced: Vec<EventId>,
    /// Liveness mode: how an edge and the hub still differ at the end.
    pub diverged: Vec<String>,
    pub converged_after: Option<Duration>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.misplaced.is_empty()
            && self.diverged.is_empty()
    }
}

/// One hub instance's view of the shared store; with [`Bug::AckBeforeCommit`] its event
/// writes wait in memory until [`SimHubStore::flush`].
#[derive(Debug)]
struct SimHubStore {
    shared: Arc<MemoryHubStore>,
    bug: Option<Bug>,
    volatile: std::sync::Mutex<Vec<(SiteId, Event)>>,
    /// How often each event id was reported inserted, across all instances.
    inserted: Arc<std::sync::Mutex<BTreeMap<EventId, u32>>>,
}

impl SimHubStore {
    fn flush(&self) {
        let pending: Vec<(SiteId, Event)> =
            std::mem::take(&mut *self.volatile.lock().unwrap_or_else(|p| p.into_inner()));
        for (site, e) in pending {
            let _ = block_on_ready(self.shared.ingest_events(&site, std::slice::from_ref(&e)));
        }
    }

    fn crash(&self) {
        self.volatile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl HubStore for SimHubStore {
    type Error = sync_protocol::memory::MemoryStoreError;

    async fn ingest_events(
        &self,
        site: &SiteId,
        events: &[Event],
    ) -> Result<IngestReport, Self::Error> {
        let mut report = IngestReport::default();
        for e in events {
            let inserted = match self.bug {
                Some(Bug::AckBeforeCommit) => {
                    let known = self
                        .shared
                        .events(site)
                        .iter()
                        .any(|x| x.event_id == e.event_id);
                    self.volatile
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((site.clone(), e.clone()));
                    !known
                }
                None => {
                    self.shared
                        .ingest_events(site, std::slice::from_ref(e))
                        .await?
                        .inserted
                        == 1
                }
            };
            if inserted {
                report.inserted += 1;
                *self
                    .inserted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(e.event_id)
                    .or_default() += 1;
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
        self.shared.apply_changes(site, changes).await
    }

    async fn down_after(
        &self,
        site: &SiteId,
        after_cursor: u64,
        limit: usize,
    ) -> Result<Vec<DownEntry>, Self::Error> {
        self.shared.down_after(site, after_cursor, limit).await
    }

    async fn record_down_ack(&self, site: &SiteId, cursor: u64) -> Result<(), Self::Error> {
        self.shared.record_down_ack(site, cursor).await
    }

    async fn record_ids_between(
        &self,
        site: &SiteId,
        after: Option<&RecordId>,
        through: Option<&RecordId>,
    ) -> Result<Vec<RecordId>, Self::Error> {
        self.shared.record_ids_between(site, after, through).await
    }

    async fn compare_heads(
        &self,
        site: &SiteId,
        peer: &sync_protocol::message::RecordHeads,
    ) -> Result<HeadsComparison, Self::Error> {
        self.shared.compare_heads(site, peer).await
    }

    async fn generation(
        &self,
    ) -> Result<Option<sync_protocol::message::HubGeneration>, Self::Error> {
        self.shared.generation().await
    }

    async fn gap_summaries(
        &self,
        site: &SiteId,
        spans: &[sync_protocol::gap::Span],
    ) -> Result<Vec<sync_protocol::gap::Summary>, Self::Error> {
        self.shared.gap_summaries(site, spans).await
    }

    async fn gap_ids(
        &self,
        site: &SiteId,
        span: sync_protocol::gap::Span,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<EventId>, Self::Error> {
        self.shared.gap_ids(site, span, after, limit).await
    }

    async fn record_heal(
        &self,
        site: &SiteId,
        report: &sync_protocol::message::HealReport,
    ) -> Result<(), Self::Error> {
        self.shared.record_heal(site, report).await
    }
}

/// Frames in flight one way on one connection.
#[derive(Debug, Default)]
struct Pipe {
    frames: VecDeque<(Duration, Vec<u8>)>,
}

impl Pipe {
    /// The next frame, if it is due by `now` (frames arrive in order).
    fn pop_due(&mut self, now: Duration) -> Option<Vec<u8>> {
        if self.frames.front().is_some_and(|(t, _)| *t <= now) {
            self.frames.pop_front().map(|(_, f)| f)
        } else {
            None
        }
    }
}

#[derive(Debug)]
struct Conn {
    edge: usize,
    hub: usize,
    /// The edge's side; `None` once the edge dropped it (the hub side lingers).
    edge_alive: bool,
    hub_session: HubSession,
    up: Pipe,
    down: Pipe,
}

#[derive(Debug)]
struct EdgeNode {
    site: SiteId,
    store: MemoryEdgeStore,
    session: Option<(EdgeSession, usize)>,
    up: bool,
    restart_at: Duration,
    retry_at: Duration,
    backoff: Duration,
    clock_skew_micros: i64,
    recorded: Vec<EventId>,
    next_event: u64,
}

#[derive(Debug)]
struct HubNode {
    store: SimHubStore,
    up: bool,
    restart_at: Duration,
}

/// The simulated world.
struct World {
    rng: Rng,
    now: Duration,
    config: SessionConfig,
    edges: Vec<EdgeNode>,
    hubs: Vec<HubNode>,
    shared: Arc<MemoryHubStore>,
    conns: Vec<Conn>,
    /// (edge, hub) → when each direction (edge→hub, hub→edge) is cut: from, until.
    cut: BTreeMap<(usize, usize), [(Duration, Duration); 2]>,
    trace: DefaultHasher,
    faults: BTreeMap<&'static str, u64>,
    hq_changes: u64,
    master_version: u64,
}

const T0_MICROS: i64 = 1_795_000_000_000_000;
const STEP_MIN: u64 = 1;
const STEP_MAX: u64 = 40;

impl World {
    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
        kind.hash(&mut self.trace);
        self.now.hash(&mut self.trace);
    }

    fn link_open(&self, edge: usize, hub: usize, up: bool) -> bool {
        self.cut.get(&(edge, hub)).is_none_or(|dirs| {
            let (from, until) = dirs[usize::from(!up)];
            !(from <= self.now && self.now < until)
        })
    }

    fn cut_link(
        &mut self,
        edge: usize,
        hub: usize,
        dirs: &[bool],
        from: Duration,
        until: Duration,
    ) {
        let entry = self.cut.entry((edge, hub)).or_default();
        for up in dirs {
            entry[usize::from(!*up)] = (from, until);
        }
    }

    fn delay(&mut self) -> Duration {
        // Mostly a LAN/WAN round, sometimes a spike.
        if self.rng.chance(20_000) {
            Duration::from_millis(self.rng.between(200, 2_000))
        } else {
            Duration::from_millis(self.rng.between(1, 30))
        }
    }

    /// An application write at an edge: stored durably, so acknowledged to its client.
    fn write_events(&mut self, e: usize) {
        let n = self.rng.between(1, 4);
        for _ in 0..n {
            let edge = &mut self.edges[e];
            edge.next_event += 1;
            let t = T0_MICROS + self.now.as_micros() as i64 + edge.clock_skew_micros;
            let mut rand = [0u8; 10];
            rand[0] = e as u8;
            rand[2..10].copy_from_slice(&edge.next_event.to_be_bytes());
            let id = EventId::from_parts((t / 1000).max(1) as u64, rand);
            let event = Event {
                event_id: id,
                site_id: edge.site.clone(),
                occurred_at: Timestamp::from_micros(t),
                recorded_at: Timestamp::from_micros(t),
                operator: None,
                body: EventBody::ProductionCount(ProductionCount::good(
                    EquipmentId::new("PRESS-01").expect("a valid id"),
                    1,
                )),
            };
            edge.store.record_event(event);
            edge.recorded.push(id);
            id.hash(&mut self.trace);
        }
        if let Some((s, _)) = &mut self.edges[e].session {
            s.outbox_grew();
        }
    }

    /// A site edit of a shared record.
    fn write_change(&mut self, e: usize) {
        let n = self.rng.below(3);
        let bytes =
            format!("site-{e}-{}-{}", self.now.as_micros(), self.rng.next_u64()).into_bytes();
        let record = RecordId::new(
            RecordKind::WorkOrder,
            format!("{}-WO-{n}", self.edges[e].site),
        )
        .expect("a valid record id");
        if let Ok(c) = RecordChange::new(record, bytes) {
            self.edges[e].store.record_change(c);
            if let Some((s, _)) = &mut self.edges[e].session {
                s.outbox_grew();
            }
        }
    }

    /// HQ edits a site's record or publishes master data.
    fn hq_publish(&mut self) {
        let e = self.rng.below(self.edges.len() as u64) as usize;
        let site = self.edges[e].site.clone();
        self.hq_changes += 1;
        let item = if self.rng.chance(300_000) {
            self.master_version += 1;
            DownItem::MasterUpsert {
                version: self.master_version,
                record: MasterRecord::Material(Material {
                    id: MaterialId::new("M-1").expect("a valid id"),
                    name: format!("Material v{}", self.master_version),
                    unit: "pcs".into(),
                    tracking: Tracking::None,
                }),
            }
        } else {
            let n = self.rng.below(3);
            let record = RecordId::new(RecordKind::WorkOrder, format!("{site}-WO-{n}"))
                .expect("a valid record id");
            let bytes = format!("hq-{}-{}", self.hq_changes, self.rng.next_u64()).into_bytes();
            match RecordChange::new(record, bytes) {
                Ok(c) => DownItem::RecordChange(c),
                Err(_) => return,
            }
        };
        self.shared.publish(&site, item);
        for c in &mut self.conns {
            if c.edge == e {
                c.hub_session.down_available();
            }
        }
    }

    /// A live connection at random (there must be one).
    fn pick_conn(&mut self) -> usize {
        self.rng.below(self.conns.len() as u64) as usize
    }

    /// Holds back connection `i`'s frames on their way up by another 0.5 to 10 s.
    fn delay_up_frames(&mut self, i: usize) {
        let extra = Duration::from_millis(self.rng.between(500, 10_000));
        for f in &mut self.conns[i].up.frames {
            f.0 += extra;
        }
    }

    fn kill_conn(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.edge_alive {
            c.edge_alive = false;
            let e = c.edge;
            self.edges[e].session = None;
            // The edge side is gone at once; what it had in flight upward may still arrive.
            c.down.frames.clear();
        }
    }

    fn crash_edge(&mut self, e: usize) {
        for i in 0..self.conns.len() {
            if self.conns[i].edge == e {
                self.kill_conn(i);
            }
        }
        let restart = self.rng.between(100, 20_000);
        let edge = &mut self.edges[e];
        edge.up = false;
        edge.session = None;
        edge.restart_at = self.now + Duration::from_millis(restart);
    }

    fn crash_hub(&mut self, h: usize) {
        self.hubs[h].store.crash();
        self.hubs[h].up = false;
        self.hubs[h].restart_at = self.now + Duration::from_millis(self.rng.between(100, 20_000));
        // Every connection to it ends: its sessions are gone, and so is what was in flight.
        let mut i = 0;
        while i < self.conns.len() {
            if self.conns[i].hub == h {
                let c = self.conns.remove(i);
                if c.edge_alive {
                    self.edges[c.edge].session = None;
                }
            } else {
                i += 1;
            }
        }
    }

    fn inject_faults(&mut self) {
        let r = &mut self.rng;
        let pick_edge = r.below(self.edges.len() as u64) as usize;
        let pick_hub = r.below(self.hubs.len() as u64) as usize;
        let roll = r.below(1_000_000);
        match roll {
            0..=3_999 if !self.conns.is_empty() => {
                let i = self.pick_conn();
                self.kill_conn(i);
                self.fault("connection killed");
            }
            4_000..=5_999 => {
                let until = self.now + Duration::from_millis(self.rng.between(500, 30_000));
                self.cut_link(pick_edge, pick_hub, &[true, false], self.now, until);
                self.fault("partition (both ways)");
            }
            6_000..=7_499 => {
                let until = self.now + Duration::from_millis(self.rng.between(500, 30_000));
                let up = self.rng.chance(500_000);
                self.cut_link(pick_edge, pick_hub, &[up], self.now, until);
                self.fault("partition (one way)");
            }
            7_500..=8_299 => {
                // Swizzle-clog: cut every link one by one, restore them in random order.
                let mut k = 0;
                for e in 0..self.edges.len() {
                    for h in 0..self.hubs.len() {
                        let from = self.now + Duration::from_millis(200 * k);
                        let until = from + Duration::from_millis(self.rng.between(2_000, 20_000));
                        self.cut_link(e, h, &[true, false], from, until);
                        k += 1;
                    }
                }
                self.fault("swizzle-clog");
            }
            8_300..=9_099 if self.edges[pick_edge].up => {
                self.crash_edge(pick_edge);
                self.fault("edge crash");
            }
            9_100..=9_599
                if self.hubs[pick_hub].up && self.hubs.iter().filter(|h| h.up).count() > 0 =>
            {
                self.crash_hub(pick_hub);
                self.fault("hub crash");
            }
            9_600..=11_599 if !self.conns.is_empty() => {
                // The hub's acks are lost with the connection: the edge sends the same
                // batches again on its next one (duplicates at the hub).
                let i = self.pick_conn();
                self.conns[i].down.frames.clear();
                self.kill_conn(i);
                self.fault("acks lost (batches re-sent)");
            }
            11_600..=13_599 if !self.conns.is_empty() => {
                // The edge gives up on a connection whose frames are still on their way: they
                // reach the hub late, after (and interleaved with) the next connection's.
                let i = self.pick_conn();
                self.delay_up_frames(i);
                self.kill_conn(i);
                self.fault("late frames across connections");
            }
            13_600..=15_599 if !self.conns.is_empty() => {
                let i = self.pick_conn();
                self.delay_up_frames(i);
                self.fault("frames delayed");
            }
            _ => {}
        }
    }

    fn connect(&mut self, e: usize) {
        let up_hubs: Vec<usize> = (0..self.hubs.len()).filter(|h| self.hubs[*h].up).collect();
        if up_hubs.is_empty() {
            return;
        }
        let h = up_hubs[self.rng.below(up_hubs.len() as u64) as usize];
        if !(self.link_open(e, h, true) && self.link_open(e, h, false)) {
            let edge = &mut self.edges[e];
            // The handshake cannot get through: back off.
            edge.retry_at = self.now + edge.backoff;
            edge.backoff = (edge.backoff * 2).min(Duration::from_secs(30));
            return;
        }
        let edge = &mut self.edges[e];
        let cursor = block_on_ready(edge.store.down_cursor()).unwrap_or(0);
        let session = EdgeSession::new(self.config.clone(), cursor, self.now);
        let hub_session = HubSession::new(
            self.config.clone(),
            edge.site.clone(),
            Timestamp::from_micros(T0_MICROS + self.now.as_micros() as i64),
            self.now,
        );
        edge.session = Some((session, h));
        edge.backoff = Duration::from_millis(250);
        self.conns.push(Conn {
            edge: e,
            hub: h,
            edge_alive: true,
            hub_session,
            up: Pipe::default(),
            down: Pipe::default(),
        });
        ("connect", e, h).hash(&mut self.trace);
    }

    /// One tick: restarts, connections, drivers, deliveries, timers.
    fn tick(&mut self) {
        for h in 0..self.hubs.len() {
            if !self.hubs[h].up && self.hubs[h].restart_at <= self.now {
                self.hubs[h].up = true;
            }
            if self.hubs[h].up && self.rng.chance(50_000) {
                // The buggy store makes its writes durable now and then.
                self.hubs[h].store.flush();
            }
        }
        for e in 0..self.edges.len() {
            if !self.edges[e].up && self.edges[e].restart_at <= self.now {
                self.edges[e].up = true;
                self.edges[e].retry_at = self.now;
            }
            if self.edges[e].up
                && self.edges[e].session.is_none()
                && self.edges[e].retry_at <= self.now
            {
                self.connect(e);
            }
        }
        let now = self.now;
        // Drive every live session against its store and queue what it sends.
        let mut i = 0;
        while i < self.conns.len() {
            let (e, h) = (self.conns[i].edge, self.conns[i].hub);
            if self.conns[i].edge_alive {
                let mut sent = Vec::new();
                let edge = &mut self.edges[e];
                if let Some((s, _)) = &mut edge.session {
                    let _ = block_on_ready(drive_edge(s, &edge.store, now));
                    while let Some(f) = s.poll_transmit() {
                        sent.push(f);
                    }
                }
                for f in sent {
                    let d = now + self.delay();
                    // Frames of one stream never overtake each other.
                    let d = self.conns[i].up.frames.back().map_or(d, |(t, _)| d.max(*t));
                    self.conns[i].up.frames.push_back((d, f));
                }
            }
            let _ = block_on_ready(drive_hub(
                &mut self.conns[i].hub_session,
                &self.hubs[h].store,
                now,
            ));
            while let Some(f) = self.conns[i].hub_session.poll_transmit() {
                let d = now + self.delay();
                let d = self.conns[i]
                    .down
                    .frames
                    .back()
                    .map_or(d, |(t, _)| d.max(*t));
                self.conns[i].down.frames.push_back((d, f));
            }
            i += 1;
        }
        // Deliver what is due on open links, in order per pipe.
        for i in 0..self.conns.len() {
            let (e, h) = (self.conns[i].edge, self.conns[i].hub);
            if self.link_open(e, h, true) {
                while let Some(f) = self.conns[i].up.pop_due(now) {
                    (i, f.len()).hash(&mut self.trace);
                    self.conns[i].hub_session.handle_stream_bytes(now, &f);
                }
            }
            if self.link_open(e, h, false) && self.conns[i].edge_alive {
                while let Some(f) = self.conns[i].down.pop_due(now) {
                    (i, f.len(), "down").hash(&mut self.trace);
                    if let Some((s, _)) = &mut self.edges[e].session {
                        s.handle_stream_bytes(now, &f);
                    }
                }
            }
        }
        // Timers, then drop what closed.
        for c in &mut self.conns {
            if c.hub_session.poll_timeout().is_some_and(|t| t <= now) {
                c.hub_session.handle_timeout(now);
            }
        }
        for e in 0..self.edges.len() {
            if let Some((s, _)) = &mut self.edges[e].session
                && s.poll_timeout().is_some_and(|t| t <= now)
            {
                s.handle_timeout(now);
            }
        }
        let mut i = 0;
        while i < self.conns.len() {
            let e = self.conns[i].edge;
            let edge_closed = self.conns[i].edge_alive
                && self.edges[e]
                    .session
                    .as_ref()
                    .is_none_or(|(s, _)| s.is_closed());
            if edge_closed {
                // Flush the edge's last frames (an error frame) into the pipe, then let go.
                if let Some((s, _)) = &mut self.edges[e].session {
                    while let Some(f) = s.poll_transmit() {
                        self.conns[i].up.frames.push_back((now, f));
                    }
                }
                self.edges[e].session = None;
                self.edges[e].retry_at = now + self.edges[e].backoff;
                self.edges[e].backoff = (self.edges[e].backoff * 2).min(Duration::from_secs(30));
                self.conns[i].edge_alive = false;
            }
            let hub_closed = self.conns[i].hub_session.is_closed();
            if hub_closed && self.conns[i].up.frames.is_empty() {
                if self.conns[i].edge_alive {
                    // The edge learns when the hub's close frames arrive; model it as now.
                    self.edges[e].session = None;
                    self.edges[e].retry_at = now + self.edges[e].backoff;
                    self.edges[e].backoff =
                        (self.edges[e].backoff * 2).min(Duration::from_secs(30));
                }
                self.conns.remove(i);
                continue;
            }
            i += 1;
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        for h in &mut self.hubs {
            if !h.up {
                h.restart_at = self.now;
            }
        }
        for e in &mut self.edges {
            if !e.up {
                e.restart_at = self.now;
            }
            e.backoff = Duration::from_millis(250);
            e.retry_at = e.retry_at.min(self.now + Duration::from_secs(1));
        }
    }

    /// Converged: every edge drained, and each site's records and down log identical.
    fn converged(&self) -> bool {
        self.hubs.iter().all(|h| {
            h.store
                .volatile
                .lock()
                .map(|v| v.is_empty())
                .unwrap_or(true)
        }) && self.edges.iter().all(|e| {
            e.store.pending() == 0
                && e.store.record_hashes() == self.shared.record_hashes(&e.site)
                && e.store.current_down_cursor() == self.shared.down_head(&e.site)
        })
    }
}

/// Runs one seed.
pub fn run(cfg: &SimConfig) -> Outcome {
    let mut rng = Rng::new(cfg.seed);
    let n_edges = rng.between(2, 5) as usize;
    let n_hubs = rng.between(1, 2) as usize;
    let shared = Arc::new(MemoryHubStore::new());
    let inserted = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let hubs = (0..n_hubs)
        .map(|_| HubNode {
            store: SimHubStore {
                shared: shared.clone(),
                bug: cfg.bug,
                volatile: std::sync::Mutex::default(),
                inserted: inserted.clone(),
            },
            up: true,
            restart_at: Duration::ZERO,
        })
        .collect();
    let edges = (0..n_edges)
        .map(|i| {
            // Up to 3 days slow or an hour fast: the hub refuses events more than a day
            // ahead of its clock (`HUB_FUTURE_SKEW_MICROS_MAX`).
            let skew_days = rng.below(4) as i64 - 3;
            EdgeNode {
                site: SiteId::new(format!("SITE_{:03}", i + 1)).expect("a valid site id"),
                store: MemoryEdgeStore::new(),
                session: None,
                up: true,
                restart_at: Duration::ZERO,
                retry_at: Duration::from_millis(rng.below(500)),
                backoff: Duration::from_millis(250),
                clock_skew_micros: skew_days * 86_400_000_000 + rng.below(3_600_000_000) as i64,
                recorded: Vec::new(),
                next_event: 0,
            }
        })
        .collect();
    let mut w = World {
        rng,
        now: Duration::ZERO,
        config: SessionConfig::default(),
        edges,
        hubs,
        shared: shared.clone(),
        conns: Vec::new(),
        cut: BTreeMap::new(),
        trace: DefaultHasher::new(),
        faults: BTreeMap::new(),
        hq_changes: 0,
        master_version: 0,
    };
    (cfg.seed, n_edges, n_hubs).hash(&mut w.trace);
    // Fault phase: writes, HQ edits and faults.
    while w.now < cfg.fault_phase {
        let step = Duration::from_millis(w.rng.between(STEP_MIN, STEP_MAX));
        w.now += step;
        let e = w.rng.below(w.edges.len() as u64) as usize;
        if w.edges[e].up && w.rng.chance(150_000) {
            w.write_events(e);
        }
        if w.edges[e].up && w.rng.chance(10_000) {
            w.write_change(e);
        }
        if w.rng.chance(8_000) {
            w.hq_publish();
        }
        w.inject_faults();
        w.tick();
    }
    let mut converged_after = None;
    if cfg.mode == Mode::Liveness {
        w.heal();
        let healed = w.now;
        while w.now < healed + cfg.converge_bound {
            w.now += Duration::from_millis(w.rng.between(STEP_MIN, STEP_MAX));
            if w.rng.chance(50_000) {
                for h in &w.hubs {
                    h.store.flush();
                }
            }
            w.tick();
            if w.converged() {
                converged_after = Some(w.now - healed);
                break;
            }
        }
    }
    check(cfg, w, n_edges, n_hubs, converged_after, &inserted)
}

/// The Jepsen-style checker.
fn check(
    cfg: &SimConfig,
    w: World,
    n_edges: usize,
    n_hubs: usize,
    converged_after: Option<Duration>,
    inserted: &Arc<std::sync::Mutex<BTreeMap<EventId, u32>>>,
) -> Outcome {
    let mut out = Outcome {
        seed: cfg.seed,
        edges: n_edges,
        hubs: n_hubs,
        faults: w.faults.clone(),
        converged_after,
        ..Outcome::default()
    };
    let inserted = inserted.lock().map(|m| m.clone()).unwrap_or_default();
    for e in &w.edges {
        let at_hub: BTreeSet<EventId> = w
            .shared
            .events(&e.site)
            .iter()
            .map(|x| x.event_id)
            .collect();
        let pending = e.store.pending_event_ids();
        for id in &e.recorded {
            out.acknowledged += 1;
            let durable_somewhere = at_hub.contains(id) || pending.contains(id);
            let required_at_hub = cfg.mode == Mode::Liveness;
            if !durable_somewhere || (required_at_hub && !at_hub.contains(id)) {
                out.lost.push(*id);
            }
        }
        for x in w.shared.events(&e.site) {
            if x.site_id != e.site {
                out.misplaced.push(x.event_id);
            }
        }
        if cfg.mode == Mode::Liveness {
            if e.store.record_hashes() != w.shared.record_hashes(&e.site) {
                out.diverged
                    .push(format!("{}: shared records differ", e.site));
            }
            if e.store.current_down_cursor() != w.shared.down_head(&e.site) {
                out.diverged
                    .push(format!("{}: down log not applied", e.site));
            }
            if e.store.pending() != 0 {
                out.diverged.push(format!(
                    "{}: {} entries still in the outbox",
                    e.site,
                    e.store.pending()
                ));
            }
        }
    }
    out.duplicated = inserted
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let mut h = w.trace;
    out.acknowledged.hash(&mut h);
    out.lost.len().hash(&mut h);
    out.trace_hash = h.finish();
    out
}

/// Totals over many seeds, as the test and the `sim` binary print them.
#[derive(Debug, Default)]
pub struct Totals {
    pub seeds: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub acknowledged: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub diverged: u64,
    pub max_converge: Duration,
    pub failures: Vec<u64>,
}

impl Totals {
    pub fn add(&mut self, o: &Outcome) {
        self.seeds += 1;
        for (k, v) in &o.faults {
            *self.faults.entry(k).or_default() += v;
        }
        self.acknowledged += o.acknowledged;
        self.lost += o.lost.len() as u64;
        self.duplicated += o.duplicated.len() as u64;
        self.diverged += o.diverged.len() as u64;
        if let Some(c) = o.converged_after {
            self.max_converge = self.max_converge.max(c);
        }
        if !o.ok() {
            self.failures.push(o.seed);
        }
    }

    pub fn report(&self) -> String {
        let faults: u64 = self.faults.values().sum();
        let mut s = format!("seeds run: {}\nfaults injected: {faults}\n", self.seeds);
        for (k, v) in &self.faults {
            s.push_str(&format!("  {k}: {v}\n"));
        }
        s.push_str(&format!(
            "acknowledged writes: {}\nlost: {}\nduplicated: {}\ndiverged: {}\nmax time to converge: {:.1} s (simulated)\n",
            self.acknowledged,
            self.lost,
            self.duplicated,
            self.diverged,
            self.max_converge.as_secs_f64()
        ));
        s
    }
}

/// Seeds to run: `SEED=n` replays one; otherwise `count` seeds from the mode's base, so the
/// two modes explore different runs.
pub fn seeds(mode: Mode, count: u64) -> Vec<u64> {
    let base: u64 = match mode {
        Mode::Safety => 0x5AFE_0000,
        Mode::Liveness => 0x11FE_0000,
    };
    match std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => (0..count).map(|i| base + i).collect(),
    }
}
