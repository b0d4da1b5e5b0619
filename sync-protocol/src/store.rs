//! The store traits the sessions are driven against.
//!
//! The edge agent implements [`EdgeStore`] on SQLite and the hub implements [`HubStore`] on
//! PostgreSQL; [`crate::memory`] implements both in memory for tests and the simulator. The
//! methods return `Send` futures so a Postgres pool or a SQLite writer thread behind a channel
//! fit equally; the in-memory stores complete immediately.
//!
//! Every method that writes must be durable when its future completes: the sessions ack on
//! that basis, and the edge forgets an outbox entry only after the hub's ack.

use std::future::Future;

use shared_model::{Event, EventId, SiteId};

use crate::gap::{EdgeSummary, Span, Summary};
use crate::message::{
    ChangeHash, DownBatch, DownItem, EdgeStatus, ErrorCode, HealReport, HubGeneration,
    RecordChange, RecordHeads, RecordId,
};

/// One entry of the edge's outbox, in the order it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Strictly increasing; assigned by the edge store at commit.
    pub seq: u64,
    pub item: OutboxItem,
}

#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "events are the common case; boxing them would add an allocation per event"
)]
pub enum OutboxItem {
    Event(Event),
    Change(RecordChange),
}

/// One entry of a site's down-sync log at the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct DownEntry {
    /// Strictly increasing per site; the position after this item.
    pub cursor: u64,
    pub item: DownItem,
}

/// What comparing a peer's heads of one record with ours found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeadsComparison {
    /// Changes we have that the peer's heads do not cover.
    pub missing_at_peer: Vec<RecordChange>,
    /// True when the peer lists heads we do not know: it has changes we lack.
    pub unknown_here: bool,
    /// Our heads of the record (empty when we do not have it at all).
    pub our_heads: Vec<ChangeHash>,
}

/// How many rows an ingest inserted and how many it found already present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestReport {
    pub inserted: u64,
    pub duplicates: u64,
}

/// What the edge makes of the hub's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationSeen {
    /// The one it healed against last, or the first it ever saw (then remembered): nothing
    /// to look for.
    Known,
    /// Another: the hub may have lost what the edge sent. Look over `window` (the store's
    /// events, hour-aligned; `None` when it holds none and remembers no pruned hour).
    Changed { window: Option<Span> },
}

/// What comparing a page of the hub's ids with the store's found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdsCompared {
    /// The store's events in the page's range.
    pub held: u64,
    /// Those the hub lacks, queued again for it.
    pub missing: u64,
}

/// The edge's side: an outbox of events and record changes, down-sync state and records.
pub trait EdgeStore {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The error code a session closes with when this store refuses or fails: `internal` by
    /// default; a store that refuses a change from the hub (malformed, over a limit) says
    /// `malformed_frame` or `limit_exceeded`.
    fn error_code(_error: &Self::Error) -> ErrorCode {
        ErrorCode::Internal
    }

    /// Unacknowledged outbox entries with `seq > after_seq`, oldest first, at most `limit`.
    fn outbox_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, Self::Error>> + Send;

    /// The hub committed every entry up to `up_to_seq` that was sent on this connection:
    /// they may be forgotten (or kept for local reporting, but never sent again).
    fn ack_outbox(&self, up_to_seq: u64) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The down-sync position durably applied, sent in hello.
    fn down_cursor(&self) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Applies a down batch and stores its cursor, in one transaction. Applying an item twice
    /// (after a restart or a restore) must be harmless.
    fn apply_down(&self, batch: &DownBatch)
    -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Up to `limit` records' heads in record order, starting after `after`.
    fn heads_page(
        &self,
        after: Option<&RecordId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordHeads>, Self::Error>> + Send;

    fn compare_heads(
        &self,
        peer: &RecordHeads,
    ) -> impl Future<Output = Result<HeadsComparison, Self::Error>> + Send;

    /// Applies changes received during repair; idempotent.
    fn apply_repair(
        &self,
        changes: &[RecordChange],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Compares the hub's generation with the one healed against last (or remembers it, the
    /// first time). A changed one is remembered only by [`EdgeStore::healed`], so a heal cut
    /// short starts again on the next session.
    fn note_generation(
        &self,
        generation: &HubGeneration,
    ) -> impl Future<Output = Result<GenerationSeen, Self::Error>> + Send;

    /// Per span: the events held (by `recorded_at`) and those retention pruned (per hour, an
    /// hour counted in the span it starts in).
    fn gap_summaries(
        &self,
        spans: &[Span],
    ) -> impl Future<Output = Result<Vec<EdgeSummary>, Self::Error>> + Send;

    /// Queues again, durably, the store's events in `span` with ids in `(after, through]`
    /// (`None` bounds open) that are not among `hub_ids`.
    fn heal_ids(
        &self,
        span: Span,
        after: Option<EventId>,
        through: Option<EventId>,
        hub_ids: &[EventId],
    ) -> impl Future<Output = Result<IdsCompared, Self::Error>> + Send;

    /// The heal against `generation` ended: remember it as known, and keep the report (what
    /// could not be healed stays visible).
    fn healed(
        &self,
        generation: &HubGeneration,
        report: &HealReport,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The hub's side. Every method takes the site the session authenticated by its TLS client
/// certificate; an implementation must never read or write another site's rows.
pub trait HubStore {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The error code a session closes with when this store refuses or fails: `internal` by
    /// default; a store that refuses a write for isolation reasons says `unauthorized`.
    fn error_code(_error: &Self::Error) -> ErrorCode {
        ErrorCode::Internal
    }

    /// Stores events idempotently on `event_id` (a re-sent event is a duplicate, not a row).
    fn ingest_events(
        &self,
        site: &SiteId,
        events: &[Event],
    ) -> impl Future<Output = Result<IngestReport, Self::Error>> + Send;

    /// Merges site edits of shared records; idempotent.
    fn apply_changes(
        &self,
        site: &SiteId,
        changes: &[RecordChange],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Down-sync entries for the site with `cursor > after_cursor`, oldest first.
    fn down_after(
        &self,
        site: &SiteId,
        after_cursor: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DownEntry>, Self::Error>> + Send;

    /// The site applied everything up to `cursor`; kept for the per-site lag in the hub API.
    fn record_down_ack(
        &self,
        site: &SiteId,
        cursor: u64,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The site's record ids in `(after, through]`, in record order (`None` bounds are open).
    /// Repair uses it to find records the edge does not have at all.
    fn record_ids_between(
        &self,
        site: &SiteId,
        after: Option<&RecordId>,
        through: Option<&RecordId>,
    ) -> impl Future<Output = Result<Vec<RecordId>, Self::Error>> + Send;

    fn compare_heads(
        &self,
        site: &SiteId,
        peer: &RecordHeads,
    ) -> impl Future<Output = Result<HeadsComparison, Self::Error>> + Send;

    /// The database's generation, for edges that heal. Default: none (edges never heal).
    fn generation(
        &self,
    ) -> impl Future<Output = Result<Option<HubGeneration>, Self::Error>> + Send {
        std::future::ready(Ok(None))
    }

    /// Per span, the site's events by `recorded_at`: count and digest ([`crate::gap`]).
    fn gap_summaries(
        &self,
        site: &SiteId,
        spans: &[Span],
    ) -> impl Future<Output = Result<Vec<Summary>, Self::Error>> + Send;

    /// Up to `limit` of the site's event ids in `span`, ascending, after `after`.
    fn gap_ids(
        &self,
        site: &SiteId,
        span: Span,
        after: Option<EventId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<EventId>, Self::Error>> + Send;

    /// Keeps an edge's heal report for the per-site view. Default: ignored.
    fn record_heal(
        &self,
        _site: &SiteId,
        _report: &HealReport,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        std::future::ready(Ok(()))
    }

    /// Keeps the edge's last reported backlog for the per-site status. Default: ignored.
    fn record_edge_status(
        &self,
        _site: &SiteId,
        _status: EdgeStatus,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        std::future::ready(Ok(()))
    }
}
