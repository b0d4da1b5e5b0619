//! The hub end of a sync session.

use std::collections::VecDeque;
use std::time::Duration;

use shared_model::{Event, SiteId, Timestamp};

use super::edge::{send_heads_frames, send_repair_frames};
use super::{BatchPacker, CloseReason, Core, SessionConfig, SessionError};
use crate::PROTOCOL_VERSION;
use crate::gap::{Span, Summary};
use crate::message::{
    Ack, CERT_PEM_BYTES_MAX, CertRenewResponse, DownItem, ERROR_MESSAGE_BYTES_MAX, EdgeStatus,
    ErrorCode, GAP_IDS_PAGE_MAX, GAP_SPANS_MAX, GapIds, GapSummaries, HEADS_PER_RECORD_MAX,
    HEAL_UNRECOVERABLE_MAX, HealReport, HubGeneration, Message, MessageType, RecordChange,
    RecordHeads, RecordId, RenewOutcome, Welcome, capability,
};
use crate::store::DownEntry;

/// Work the hub session asks its driver to do, or news for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// The edge said hello and was welcomed.
    Connected {
        agent_version: String,
        down_cursor: u64,
        capabilities: u64,
    },
    /// Store these events (idempotently), then call [`HubSession::committed`] with `last_seq`.
    Events {
        last_seq: u64,
        events: Vec<Event>,
    },
    /// Merge these changes, then call [`HubSession::committed`] with `last_seq`.
    RecordChanges {
        last_seq: u64,
        changes: Vec<RecordChange>,
    },
    /// Read up to `limit` down entries after `after_cursor` for this site and pass them to
    /// [`HubSession::send_down`].
    NeedDown {
        after_cursor: u64,
        limit: usize,
    },
    /// The edge applied down-sync up to `cursor`.
    DownAcked {
        cursor: u64,
    },
    /// Repair: compare the edge's heads with ours; send what it lacks with
    /// [`HubSession::send_repair_changes`] and, unless `reply`, our heads of the records
    /// where it has changes we lack with [`HubSession::send_heads_reply`].
    PeerHeads {
        records: Vec<RecordHeads>,
        reply: bool,
        /// For the edge's own summary pages (not replies): the record range `(after,
        /// through]` this page covers, `through` open on the last page. Records we hold in
        /// it that the page does not list are missing at the edge altogether.
        covers: Option<(Option<RecordId>, Option<RecordId>)>,
    },
    /// Repair: changes the edge had and we lacked; merge them.
    RepairChanges {
        changes: Vec<RecordChange>,
    },
    /// The edge reported its backlog.
    EdgeStatus(EdgeStatus),
    /// The edge asks for a renewed certificate: sign `csr_pem` for this session's site (the
    /// TLS certificate's, never the CSR's subject), record it, and answer with
    /// [`HubSession::send_renewal`]. At most one per session.
    RenewCertificate {
        csr_pem: String,
    },
    /// The edge heals (capability `HEAL`): read the database's generation and pass it to
    /// [`HubSession::send_generation`]. Once per session, right after the welcome.
    NeedGeneration,
    /// Summarise this site's events in these spans; answer with
    /// [`HubSession::send_gap_summaries`].
    GapQuery {
        spans: Vec<Span>,
    },
    /// Up to `limit` of this site's event ids in `span` after `after`, ascending; answer with
    /// [`HubSession::send_gap_ids`].
    GapIds {
        span: Span,
        after: Option<shared_model::EventId>,
        limit: usize,
    },
    /// The edge finished a heal: keep its report for the per-site view.
    HealReport(HealReport),
    Closed(CloseReason),
}

/// A gap question the driver is answering; one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GapAsked {
    None,
    Summaries(usize),
    Ids,
}

/// Where a session is with certificate renewal (one per session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    Idle,
    Requested,
    Answered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Established,
    Closed,
}

/// The hub end of a session, for the one site its TLS client certificate names.
#[derive(Debug)]
pub struct HubSession {
    core: Core,
    config: SessionConfig,
    site_id: SiteId,
    hub_time: Timestamp,
    /// `now` when the session began: the hub's clock now is `hub_time` plus the time since.
    started: Duration,
    state: State,
    capabilities: u64,
    events: VecDeque<HubEvent>,
    /// Highest outbox seq received on this connection; batches must increase it.
    received_seq: u64,
    /// `last_seq` of batches handed to the driver and not yet committed, oldest first.
    uncommitted: VecDeque<u64>,
    /// Down-sync: highest cursor sent, cursors sent and not yet acked, entries staged.
    down_sent_cursor: u64,
    down_inflight: VecDeque<u64>,
    down_staged: VecDeque<DownEntry>,
    down_requested: bool,
    down_maybe_more: bool,
    /// The last record of the edge's previous heads page, where the next page's range starts.
    repair_after: Option<RecordId>,
    renewal: Renewal,
    generation_asked: bool,
    gap_asked: GapAsked,
}

session_common!(HubSession, HubEvent);

impl HubSession {
    /// `site_id` comes from the peer's TLS client certificate, never from the payload;
    /// `hub_time` is the wall clock for the welcome.
    pub fn new(config: SessionConfig, site_id: SiteId, hub_time: Timestamp, now: Duration) -> Self {
        Self {
            core: Core::new(config.limits.clone(), now),
            config,
            site_id,
            hub_time,
            started: now,
            state: State::AwaitingHello,
            capabilities: 0,
            events: VecDeque::new(),
            received_seq: 0,
            uncommitted: VecDeque::new(),
            down_sent_cursor: 0,
            down_inflight: VecDeque::new(),
            down_staged: VecDeque::new(),
            down_requested: false,
            down_maybe_more: true,
            repair_after: None,
            renewal: Renewal::Idle,
            generation_asked: false,
            gap_asked: GapAsked::None,
        }
    }

    pub fn site_id(&self) -> &SiteId {
        &self.site_id
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.state {
            State::Closed => None,
            State::AwaitingHello => Some(
                self.core
                    .handshake_deadline()
                    .min(self.core.idle_deadline()),
            ),
            State::Established => Some(self.core.idle_deadline()),
        }
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        match self.state {
            State::Closed => {}
            State::AwaitingHello if now >= self.core.handshake_deadline() => {
                self.fail(now, ErrorCode::Timeout, "no hello from the edge".into());
            }
            _ if now >= self.core.idle_deadline() => {
                self.fail(now, ErrorCode::Timeout, "edge silent".into());
            }
            _ => {}
        }
    }

    pub fn poll_event(&mut self) -> Option<HubEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if self.state == State::Established
            && self.core.has_send_room()
            && self.capabilities & capability::DOWN_SYNC != 0
            && !self.down_requested
            && self.down_maybe_more
            && self.down_staged.is_empty()
            && self.down_inflight.len() < self.config.limits.inflight_batches_max
        {
            let free = self.config.limits.inflight_batches_max - self.down_inflight.len();
            self.down_requested = true;
            return Some(HubEvent::NeedDown {
                after_cursor: self.down_sent_cursor,
                limit: self.config.limits.batch_items_max.saturating_mul(free),
            });
        }
        None
    }

    /// Something was added to this site's down log (a release, an HQ edit, master data).
    pub fn down_available(&mut self) {
        self.down_maybe_more = true;
    }

    /// The driver committed every batch up to `last_seq`: ack it to the edge.
    pub fn committed(&mut self, now: Duration, last_seq: u64) -> Result<(), SessionError> {
        self.open()?;
        if !self.uncommitted.contains(&last_seq) {
            return Err(SessionError::NotRequested);
        }
        // The edge deletes its outbox up to the ack: acking past what was received would lose
        // entries the store never committed.
        assert!(
            last_seq <= self.received_seq,
            "commit up to {last_seq} past the batches received up to {}",
            self.received_seq
        );
        while self.uncommitted.front().is_some_and(|s| *s <= last_seq) {
            self.uncommitted.pop_front();
        }
        self.core
            .send(
                now,
                &Message::Ack(Ack {
                    up_to_seq: last_seq,
                }),
            )
            .map_err(SessionError::from)
    }

    /// Entries answering [`HubEvent::NeedDown`], oldest first; fewer than asked (or none)
    /// means the log is drained until [`HubSession::down_available`].
    pub fn send_down(
        &mut self,
        now: Duration,
        entries: Vec<DownEntry>,
    ) -> Result<(), SessionError> {
        self.open()?;
        if !std::mem::take(&mut self.down_requested) {
            return Err(SessionError::NotRequested);
        }
        let free = self.config.limits.inflight_batches_max - self.down_inflight.len();
        if entries.len() < self.config.limits.batch_items_max.saturating_mul(free) {
            self.down_maybe_more = false;
        }
        let mut previous = self
            .down_staged
            .back()
            .map_or(self.down_sent_cursor, |e| e.cursor);
        for e in entries {
            if e.cursor <= previous {
                return Err(SessionError::NotIncreasing {
                    previous,
                    got: e.cursor,
                });
            }
            previous = e.cursor;
            self.down_staged.push_back(e);
        }
        self.flush_down(now)
    }

    fn flush_down(&mut self, now: Duration) -> Result<(), SessionError> {
        let ty = MessageType::DownBatch;
        while !self.down_staged.is_empty()
            && self.down_inflight.len() < self.config.limits.inflight_batches_max
        {
            let mut packer = BatchPacker::new(&self.core.limits);
            let mut cursor = self.down_sent_cursor;
            while let Some(entry) = self.down_staged.front() {
                if !packer.try_push::<DownItem>(&entry.item, ty)? {
                    break;
                }
                cursor = entry.cursor;
                self.down_staged.pop_front();
            }
            // A fresh packer takes any item that fits in a frame at all, or errored above.
            debug_assert!(!packer.is_empty());
            let frame = packer.finish(ty, &cursor, &(), self.core.limits.frame_bytes_max)?;
            // The edge stores the cursor as its position: it only ever moves forward.
            assert!(
                cursor > self.down_sent_cursor,
                "down batch cursor {cursor} not after {}",
                self.down_sent_cursor
            );
            self.core.push_frame(now, frame);
            self.down_sent_cursor = cursor;
            self.down_inflight.push_back(cursor);
        }
        debug_assert!(self.down_inflight.len() <= self.config.limits.inflight_batches_max);
        Ok(())
    }

    /// Our heads of the records where the edge has changes we lack; the edge answers with
    /// those changes. Nothing is sent for an empty list.
    pub fn send_heads_reply(
        &mut self,
        now: Duration,
        records: Vec<RecordHeads>,
    ) -> Result<(), SessionError> {
        self.open()?;
        if records.is_empty() {
            return Ok(());
        }
        send_heads_frames(&mut self.core, now, records, true, true)
    }

    /// Answers [`HubEvent::RenewCertificate`]. A certificate too long for the wire becomes a
    /// refusal; a refusal's words are cut to [`ERROR_MESSAGE_BYTES_MAX`], like an error's.
    pub fn send_renewal(
        &mut self,
        now: Duration,
        outcome: RenewOutcome,
    ) -> Result<(), SessionError> {
        self.open()?;
        if self.renewal != Renewal::Requested {
            return Err(SessionError::NotRequested);
        }
        self.renewal = Renewal::Answered;
        let outcome = match outcome {
            RenewOutcome::Issued { certificate_pem }
                if certificate_pem.len() > CERT_PEM_BYTES_MAX =>
            {
                RenewOutcome::Refused {
                    message: "the hub's certificate is too long for the wire".into(),
                }
            }
            RenewOutcome::Refused { mut message } => {
                crate::message::truncate_utf8(&mut message, ERROR_MESSAGE_BYTES_MAX);
                RenewOutcome::Refused { message }
            }
            issued => issued,
        };
        self.core
            .send(
                now,
                &Message::CertRenewResponse(CertRenewResponse { outcome }),
            )
            .map_err(SessionError::from)
    }

    /// Answers [`HubEvent::NeedGeneration`]; `None` (a store that keeps no generation) sends
    /// nothing, and the edge never heals.
    pub fn send_generation(
        &mut self,
        now: Duration,
        generation: Option<HubGeneration>,
    ) -> Result<(), SessionError> {
        self.open()?;
        if !self.generation_asked {
            return Err(SessionError::NotRequested);
        }
        match generation {
            Some(g) => self
                .core
                .send(now, &Message::HubGeneration(g))
                .map_err(SessionError::from),
            None => Ok(()),
        }
    }

    /// Answers [`HubEvent::GapQuery`]: one summary per span, in its order.
    pub fn send_gap_summaries(
        &mut self,
        now: Duration,
        summaries: Vec<Summary>,
    ) -> Result<(), SessionError> {
        self.open()?;
        if self.gap_asked != GapAsked::Summaries(summaries.len()) {
            return Err(SessionError::NotRequested);
        }
        self.gap_asked = GapAsked::None;
        self.core
            .send(now, &Message::GapSummaries(GapSummaries { summaries }))
            .map_err(SessionError::from)
    }

    /// Answers [`HubEvent::GapIds`]: `more` when the page is full (the edge asks on after its
    /// last id).
    pub fn send_gap_ids(
        &mut self,
        now: Duration,
        ids: Vec<shared_model::EventId>,
        more: bool,
    ) -> Result<(), SessionError> {
        self.open()?;
        if self.gap_asked != GapAsked::Ids || ids.len() > GAP_IDS_PAGE_MAX {
            return Err(SessionError::NotRequested);
        }
        self.gap_asked = GapAsked::None;
        self.core
            .send(now, &Message::GapIds(GapIds { ids, more }))
            .map_err(SessionError::from)
    }

    /// A gap question is acceptable: the edge heals, and none is being answered.
    fn accept_gap(&mut self, now: Duration, spans: &[Span]) -> bool {
        if self.gap_asked != GapAsked::None {
            self.fail(
                now,
                ErrorCode::WindowExceeded,
                "one gap query at a time".into(),
            );
            return false;
        }
        if spans.is_empty() || spans.len() > GAP_SPANS_MAX {
            self.fail(
                now,
                ErrorCode::LimitExceeded,
                format!(
                    "a gap query holds 1 to {GAP_SPANS_MAX} spans, got {}",
                    spans.len()
                ),
            );
            return false;
        }
        if spans.iter().any(|s| s.from >= s.to) {
            self.fail(
                now,
                ErrorCode::MalformedFrame,
                "a gap span must end after it starts".into(),
            );
            return false;
        }
        true
    }

    /// Checks a batch's sequence and the window before handing it to the driver.
    fn accept_batch(&mut self, now: Duration, last_seq: u64, len: usize) -> bool {
        if len == 0 || len > self.config.limits.batch_items_max {
            self.fail(
                now,
                ErrorCode::LimitExceeded,
                format!(
                    "a batch must hold 1 to {} items, got {len}",
                    self.config.limits.batch_items_max
                ),
            );
            return false;
        }
        if last_seq <= self.received_seq {
            self.fail(
                now,
                ErrorCode::SequenceViolation,
                format!("batch seq {last_seq} is not after {}", self.received_seq),
            );
            return false;
        }
        if self.uncommitted.len() >= self.config.limits.inflight_batches_max {
            self.fail(
                now,
                ErrorCode::WindowExceeded,
                format!(
                    "more than {} batches unacknowledged",
                    self.config.limits.inflight_batches_max
                ),
            );
            return false;
        }
        self.received_seq = last_seq;
        self.uncommitted.push_back(last_seq);
        debug_assert!(self.uncommitted.len() <= self.config.limits.inflight_batches_max);
        true
    }

    fn handle_message(&mut self, now: Duration, message: Message) {
        let ty = message.message_type();
        match (self.state, message) {
            (State::Closed, _) => {}
            (State::AwaitingHello, Message::Hello(h)) => {
                if h.protocol_version != PROTOCOL_VERSION {
                    return self.fail(
                        now,
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "edge speaks protocol {}, this hub speaks {PROTOCOL_VERSION}",
                            h.protocol_version
                        ),
                    );
                }
                if h.agent_version.len() > crate::message::AGENT_VERSION_BYTES_MAX {
                    return self.fail(
                        now,
                        ErrorCode::LimitExceeded,
                        "agent version too long".into(),
                    );
                }
                self.capabilities = h.capabilities & self.config.capabilities;
                self.down_sent_cursor = h.down_cursor;
                let limits = &self.config.limits;
                let welcome = Message::Welcome(Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    capabilities: self.capabilities,
                    site_id: self.site_id.clone(),
                    hub_time: self.hub_time,
                    batch_items_max: u32::try_from(limits.batch_items_max).unwrap_or(u32::MAX),
                    inflight_batches_max: u32::try_from(limits.inflight_batches_max)
                        .unwrap_or(u32::MAX),
                    frame_bytes_max: u32::try_from(limits.frame_bytes_max).unwrap_or(u32::MAX),
                });
                if let Err(e) = self.core.send(now, &welcome) {
                    return self.fail(now, ErrorCode::Internal, e.to_string());
                }
                self.state = State::Established;
                self.events.push_back(HubEvent::Connected {
                    agent_version: h.agent_version,
                    down_cursor: h.down_cursor,
                    capabilities: self.capabilities,
                });
                if self.capabilities & capability::HEAL != 0 {
                    self.generation_asked = true;
                    self.events.push_back(HubEvent::NeedGeneration);
                }
            }
            (State::Established, Message::EventBatch(batch))
                if self.capabilities & capability::EVENTS != 0 =>
            {
                let hub_now = self.hub_time.saturating_add_micros(
                    i64::try_from(now.saturating_sub(self.started).as_micros()).unwrap_or(i64::MAX),
                );
                // Site isolation: the payload's site must be the certificate's site.
                for (i, e) in batch.events.iter().enumerate() {
                    if e.site_id != self.site_id {
                        return self.fail(
                            now,
                            ErrorCode::SiteMismatch,
                            format!(
                                "event {} claims site {} but the certificate is for {}",
                                e.event_id, e.site_id, self.site_id
                            ),
                        );
                    }
                    if let Err(v) = e.validate_at_hub(hub_now) {
                        return self.fail(
                            now,
                            ErrorCode::InvalidEvent,
                            format!("event {} (#{i} in batch): {v}", e.event_id),
                        );
                    }
                }
                if self.accept_batch(now, batch.last_seq, batch.events.len()) {
                    self.events.push_back(HubEvent::Events {
                        last_seq: batch.last_seq,
                        events: batch.events,
                    });
                }
            }
            (State::Established, Message::RecordChanges(batch))
                if self.capabilities & capability::RECORD_CHANGES != 0 =>
            {
                if self.accept_batch(now, batch.last_seq, batch.changes.len()) {
                    self.events.push_back(HubEvent::RecordChanges {
                        last_seq: batch.last_seq,
                        changes: batch.changes,
                    });
                }
            }
            (State::Established, Message::DownAck(ack))
                if self.capabilities & capability::DOWN_SYNC != 0 =>
            {
                if !self.down_inflight.contains(&ack.cursor) {
                    return self.fail(
                        now,
                        ErrorCode::SequenceViolation,
                        format!("down ack {} matches no batch in flight", ack.cursor),
                    );
                }
                while self.down_inflight.front().is_some_and(|c| *c <= ack.cursor) {
                    self.down_inflight.pop_front();
                }
                self.events
                    .push_back(HubEvent::DownAcked { cursor: ack.cursor });
                if let Err(e) = self.flush_down(now) {
                    self.fail(now, ErrorCode::Internal, e.to_string());
                }
            }
            (State::Established, Message::HeadsSummary(summary))
                if self.capabilities & capability::REPAIR != 0 =>
            {
                if summary.records.len() > self.config.limits.heads_page_max
                    || summary
                        .records
                        .iter()
                        .any(|r| r.heads.len() > HEADS_PER_RECORD_MAX)
                {
                    return self.fail(
                        now,
                        ErrorCode::LimitExceeded,
                        "heads summary page over its limits".into(),
                    );
                }
                if summary
                    .records
                    .windows(2)
                    .any(|w| w[0].record >= w[1].record)
                    || summary.records.first().is_some_and(|first| {
                        !summary.reply
                            && self
                                .repair_after
                                .as_ref()
                                .is_some_and(|a| first.record <= *a)
                    })
                {
                    return self.fail(
                        now,
                        ErrorCode::SequenceViolation,
                        "heads summary records out of order".into(),
                    );
                }
                let covers = if summary.reply {
                    None
                } else {
                    let after = self.repair_after.take();
                    let through = if summary.last_page {
                        None
                    } else {
                        summary.records.last().map(|r| r.record.clone())
                    };
                    // A page with no records that is not the last covers nothing new.
                    self.repair_after = through.clone().or_else(|| after.clone());
                    if summary.last_page {
                        self.repair_after = None;
                    }
                    Some((after, through))
                };
                self.events.push_back(HubEvent::PeerHeads {
                    records: summary.records,
                    reply: summary.reply,
                    covers,
                });
            }
            (State::Established, Message::RepairChanges(r))
                if self.capabilities & capability::REPAIR != 0 =>
            {
                self.events
                    .push_back(HubEvent::RepairChanges { changes: r.changes });
            }
            (State::Established, Message::EdgeStatus(status))
                if self.capabilities & capability::STATUS != 0 =>
            {
                self.events.push_back(HubEvent::EdgeStatus(status));
            }
            (State::Established, Message::GapQuery(q))
                if self.capabilities & capability::HEAL != 0 =>
            {
                if self.accept_gap(now, &q.spans) {
                    self.gap_asked = GapAsked::Summaries(q.spans.len());
                    self.events.push_back(HubEvent::GapQuery { spans: q.spans });
                }
            }
            (State::Established, Message::GapIdsQuery(q))
                if self.capabilities & capability::HEAL != 0 =>
            {
                if self.accept_gap(now, &[q.span]) {
                    self.gap_asked = GapAsked::Ids;
                    self.events.push_back(HubEvent::GapIds {
                        span: q.span,
                        after: q.after,
                        limit: GAP_IDS_PAGE_MAX,
                    });
                }
            }
            (State::Established, Message::HealReport(r))
                if self.capabilities & capability::HEAL != 0 =>
            {
                if r.unrecoverable.len() > HEAL_UNRECOVERABLE_MAX {
                    return self.fail(
                        now,
                        ErrorCode::LimitExceeded,
                        format!(
                            "a heal report lists at most {HEAL_UNRECOVERABLE_MAX} spans, got {}",
                            r.unrecoverable.len()
                        ),
                    );
                }
                self.events.push_back(HubEvent::HealReport(r));
            }
            (State::Established, Message::CertRenewRequest(r))
                if self.capabilities & capability::RENEW != 0 =>
            {
                // Signing is work for the hub: one per session bounds what an edge can ask.
                if self.renewal != Renewal::Idle {
                    return self.fail(
                        now,
                        ErrorCode::LimitExceeded,
                        "one certificate renewal per session".into(),
                    );
                }
                if r.csr_pem.len() > CERT_PEM_BYTES_MAX {
                    return self.fail(
                        now,
                        ErrorCode::LimitExceeded,
                        format!(
                            "a certificate signing request is at most {CERT_PEM_BYTES_MAX} bytes, got {}",
                            r.csr_pem.len()
                        ),
                    );
                }
                self.renewal = Renewal::Requested;
                self.events
                    .push_back(HubEvent::RenewCertificate { csr_pem: r.csr_pem });
            }
            (state, _) => self.fail(
                now,
                ErrorCode::UnexpectedMessage,
                format!(
                    "{} not expected from the edge in state {state:?}",
                    ty.name()
                ),
            ),
        }
    }
}
