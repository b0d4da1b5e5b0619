//! The edge end of a sync session.

use std::collections::VecDeque;
use std::time::Duration;

use shared_model::{SiteId, Timestamp};

use super::{BatchPacker, CloseReason, Core, SessionConfig, SessionError};
use crate::PROTOCOL_VERSION;
use crate::gap::{EdgeSummary, Planner, Span, Step};
use crate::message::{
    Ack, CERT_PEM_BYTES_MAX, CertRenewRequest, DownAck, DownBatch, ERROR_MESSAGE_BYTES_MAX,
    EdgeStatus, ErrorCode, GAP_IDS_PAGE_MAX, GapIdsQuery, GapQuery, HealReport, Hello,
    HubGeneration, Message, MessageType, RecordChange, RecordHeads, RecordId, RenewOutcome,
    capability,
};
use crate::store::{OutboxEntry, OutboxItem};

/// Work the edge session asks its driver to do, or news for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeEvent {
    /// The hub accepted us.
    Connected {
        site_id: SiteId,
        hub_time: Timestamp,
        capabilities: u64,
    },
    /// Read up to `limit` outbox entries after `after_seq` and pass them to
    /// [`EdgeSession::send_outbox`] (an empty list means the outbox is drained).
    NeedOutbox {
        after_seq: u64,
        limit: usize,
    },
    /// The hub committed everything up to `up_to_seq`: forget those outbox entries.
    Acked {
        up_to_seq: u64,
    },
    /// Apply this batch and its cursor in one transaction, then call
    /// [`EdgeSession::down_applied`].
    DownBatch(DownBatch),
    /// Repair: read a page of our record heads and pass it to [`EdgeSession::send_heads`].
    NeedHeads {
        after: Option<RecordId>,
        limit: usize,
    },
    /// Repair: the hub's heads of records where it has changes we lack. Compare and send
    /// the hub what it lacks with [`EdgeSession::send_repair_changes`].
    PeerHeads {
        records: Vec<RecordHeads>,
    },
    /// Repair: changes the hub had and we lacked; apply them.
    RepairChanges {
        changes: Vec<RecordChange>,
    },
    /// The hub answered [`EdgeSession::request_renewal`]: a new certificate for the key the
    /// CSR was made from, or why not.
    Renewal(RenewOutcome),
    /// The hub named its database's generation: compare it with the one the store knows and,
    /// if it changed, call [`EdgeSession::start_heal`].
    Generation(HubGeneration),
    /// Heal: summarise the store's events in these spans and pass them to
    /// [`EdgeSession::gap_summaries_ready`].
    NeedGapSummaries {
        spans: Vec<Span>,
    },
    /// Heal: the hub's ids of `span` in `(after, through]` (`through` open on the last page):
    /// queue again the store's events in that range the hub lacks, then call
    /// [`EdgeSession::gap_ids_compared`].
    CompareGapIds {
        span: Span,
        after: Option<shared_model::EventId>,
        through: Option<shared_model::EventId>,
        hub_ids: Vec<shared_model::EventId>,
    },
    /// Heal ended (the report was sent to the hub): remember the generation as known.
    Healed {
        generation: HubGeneration,
        report: HealReport,
    },
    Closed(CloseReason),
}

/// A heal in progress: the planner and what it has cost.
#[derive(Debug)]
struct HealRun {
    generation: HubGeneration,
    planner: Planner,
    search_bytes: u64,
}

/// Where a session is with certificate renewal (one per session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    Idle,
    Pending,
    Answered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingWelcome,
    Established,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repair {
    Idle,
    /// Sending our heads page by page; `after` is the last record sent.
    Sending {
        after: Option<RecordId>,
        requested: bool,
    },
}

/// The edge end of a session. See the module docs of [`crate::session`] for the contract.
#[derive(Debug)]
pub struct EdgeSession {
    core: Core,
    config: SessionConfig,
    state: State,
    capabilities: u64,
    site_id: Option<SiteId>,
    events: VecDeque<EdgeEvent>,
    /// Limits after the hub's welcome (the smaller of both ends').
    batch_items_max: usize,
    inflight_batches_max: usize,
    /// Entries read from the store but not yet framed, because the window was full.
    staged: VecDeque<OutboxEntry>,
    /// Highest outbox seq handed to us on this connection.
    read_up_to_seq: u64,
    /// `last_seq` of every batch sent and not yet acked, oldest first.
    inflight: VecDeque<u64>,
    outbox_requested: Option<usize>,
    outbox_maybe_more: bool,
    /// Highest down cursor received (applied or in the driver's hands).
    down_received_cursor: u64,
    down_pending_apply: VecDeque<u64>,
    repair: Repair,
    renewal: Renewal,
    generation_seen: bool,
    heal: Option<HealRun>,
}

session_common!(EdgeSession, EdgeEvent);

impl EdgeSession {
    /// Starts a session and queues the hello. `down_cursor` is the store's durable down-sync
    /// position.
    pub fn new(config: SessionConfig, down_cursor: u64, now: Duration) -> Self {
        let mut core = Core::new(config.limits.clone(), now);
        let hello = Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: config.agent_version.clone(),
            capabilities: config.capabilities,
            down_cursor,
        });
        // A hello always fits in a frame; the agent version is short.
        let _ = core.send(now, &hello);
        Self {
            batch_items_max: config.limits.batch_items_max,
            inflight_batches_max: config.limits.inflight_batches_max,
            core,
            config,
            state: State::AwaitingWelcome,
            capabilities: 0,
            site_id: None,
            events: VecDeque::new(),
            staged: VecDeque::new(),
            read_up_to_seq: 0,
            inflight: VecDeque::new(),
            outbox_requested: None,
            outbox_maybe_more: true,
            down_received_cursor: down_cursor,
            down_pending_apply: VecDeque::new(),
            repair: Repair::Idle,
            renewal: Renewal::Idle,
            generation_seen: false,
            heal: None,
        }
    }

    pub fn site_id(&self) -> Option<&SiteId> {
        self.site_id.as_ref()
    }

    /// Outbox batches sent and not yet acknowledged.
    pub fn inflight_batches(&self) -> usize {
        self.inflight.len()
    }

    /// The next deadline at which [`EdgeSession::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.state {
            State::Closed => None,
            State::AwaitingWelcome => Some(
                self.core
                    .handshake_deadline()
                    .min(self.core.idle_deadline()),
            ),
            State::Established => Some(
                (self.core.last_sent + self.core.limits.ping_interval)
                    .min(self.core.idle_deadline()),
            ),
        }
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        match self.state {
            State::Closed => {}
            State::AwaitingWelcome => {
                if now >= self.core.handshake_deadline() {
                    self.fail(now, ErrorCode::Timeout, "no welcome from the hub".into());
                } else if now >= self.core.idle_deadline() {
                    self.fail(now, ErrorCode::Timeout, "hub silent".into());
                }
            }
            State::Established => {
                if now >= self.core.idle_deadline() {
                    self.fail(now, ErrorCode::Timeout, "hub silent".into());
                } else if now >= self.core.last_sent + self.core.limits.ping_interval {
                    self.core.send_ping(now);
                }
            }
        }
    }

    /// The next piece of work or news.
    pub fn poll_event(&mut self) -> Option<EdgeEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if self.state != State::Established || !self.core.has_send_room() {
            return None;
        }
        if self.capabilities & capability::EVENTS != 0
            && self.outbox_requested.is_none()
            && self.outbox_maybe_more
            && self.staged.is_empty()
            && self.inflight.len() < self.inflight_batches_max
        {
            let free = self.inflight_batches_max - self.inflight.len();
            let limit = self.batch_items_max.saturating_mul(free);
            self.outbox_requested = Some(limit);
            return Some(EdgeEvent::NeedOutbox {
                after_seq: self.read_up_to_seq,
                limit,
            });
        }
        if let Some(event) = self.poll_heal() {
            return Some(event);
        }
        if let Repair::Sending {
            after,
            requested: requested @ false,
        } = &mut self.repair
        {
            *requested = true;
            return Some(EdgeEvent::NeedHeads {
                after: after.clone(),
                limit: self.core.limits.heads_page_max,
            });
        }
        None
    }

    /// The heal's next step: a store request as an event, a query sent to the hub, or its end.
    fn poll_heal(&mut self) -> Option<EdgeEvent> {
        // `poll_event` has no clock: the last send time stands in (it only moves the next
        // ping, which is due after `ping_interval` of silence, a little earlier).
        let now = self.core.last_sent;
        let run = self.heal.as_mut()?;
        match run.planner.next_step() {
            Step::Wait | Step::CompareIds { .. } => None,
            Step::Summarise(spans) => Some(EdgeEvent::NeedGapSummaries { spans }),
            Step::AskHub(spans) => {
                let m = Message::GapQuery(GapQuery { spans });
                run.search_bytes += wire_bytes(&m);
                if let Err(e) = self.core.send(now, &m) {
                    self.fail(now, ErrorCode::Internal, e.to_string());
                }
                None
            }
            Step::AskIds { span, after } => {
                let m = Message::GapIdsQuery(GapIdsQuery { span, after });
                run.search_bytes += wire_bytes(&m);
                if let Err(e) = self.core.send(now, &m) {
                    self.fail(now, ErrorCode::Internal, e.to_string());
                }
                None
            }
            Step::Done => {
                let run = self.heal.take()?;
                let p = run.planner;
                let report = HealReport {
                    generation: run.generation.number,
                    resent: p.resent,
                    unrecoverable: p.unrecoverable,
                    search_bytes: run.search_bytes,
                    spans_compared: p.spans_compared,
                    id_pages: p.id_pages,
                };
                if let Err(e) = self.core.send(now, &Message::HealReport(report.clone())) {
                    self.fail(now, ErrorCode::Internal, e.to_string());
                    return None;
                }
                // Shared records heal by the heads exchange, both ways.
                if self.capabilities & capability::REPAIR != 0 {
                    self.start_repair();
                }
                Some(EdgeEvent::Healed {
                    generation: run.generation,
                    report,
                })
            }
        }
    }

    /// Starts looking for what the hub lost since `generation` began, over `window` (the
    /// store's events, hour-aligned; `None` when it holds none).
    pub fn start_heal(&mut self, generation: HubGeneration, window: Option<Span>) {
        if self.heal.is_none() {
            self.heal = Some(HealRun {
                generation,
                planner: Planner::new(window),
                search_bytes: 0,
            });
        }
    }

    pub fn heal_in_progress(&self) -> bool {
        self.heal.is_some()
    }

    /// The store's summaries answering [`EdgeEvent::NeedGapSummaries`].
    pub fn gap_summaries_ready(&mut self, summaries: Vec<EdgeSummary>) -> Result<(), SessionError> {
        self.open()?;
        let run = self.heal.as_mut().ok_or(SessionError::NotRequested)?;
        run.planner
            .edge_summaries(summaries)
            .map_err(|_| SessionError::NotRequested)
    }

    /// The store compared a page of the hub's ids ([`EdgeEvent::CompareGapIds`]): `held` of
    /// its events fell in the page's range, `missing` of them were queued again.
    pub fn gap_ids_compared(&mut self, held: u64, missing: u64) -> Result<(), SessionError> {
        self.open()?;
        let run = self.heal.as_mut().ok_or(SessionError::NotRequested)?;
        run.planner
            .leaf_page_done(held, missing)
            .map_err(|_| SessionError::NotRequested)?;
        if missing > 0 {
            self.outbox_maybe_more = true;
        }
        Ok(())
    }

    /// The outbox got new entries: ask the driver for them again even if it was drained.
    pub fn outbox_grew(&mut self) {
        self.outbox_maybe_more = true;
    }

    /// Entries answering [`EdgeEvent::NeedOutbox`], oldest first.
    pub fn send_outbox(
        &mut self,
        now: Duration,
        entries: Vec<OutboxEntry>,
    ) -> Result<(), SessionError> {
        self.open()?;
        let limit = self
            .outbox_requested
            .take()
            .ok_or(SessionError::NotRequested)?;
        if entries.len() < limit {
            self.outbox_maybe_more = false;
        }
        for e in entries {
            if e.seq <= self.read_up_to_seq {
                return Err(SessionError::NotIncreasing {
                    previous: self.read_up_to_seq,
                    got: e.seq,
                });
            }
            self.read_up_to_seq = e.seq;
            self.staged.push_back(e);
        }
        self.flush_staged(now)
    }

    /// Frames staged entries while the window has room. A batch holds one kind of item, so a
    /// mixed outbox becomes alternating event and change batches, in sequence order.
    fn flush_staged(&mut self, now: Duration) -> Result<(), SessionError> {
        while !self.staged.is_empty() && self.inflight.len() < self.inflight_batches_max {
            let limits = super::Limits {
                batch_items_max: self.batch_items_max,
                ..self.core.limits.clone()
            };
            let mut packer = BatchPacker::new(&limits);
            let is_event = matches!(
                self.staged.front().map(|e| &e.item),
                Some(OutboxItem::Event(_))
            );
            let ty = if is_event {
                MessageType::EventBatch
            } else {
                MessageType::RecordChanges
            };
            let mut last_seq = 0;
            while let Some(entry) = self.staged.front() {
                let fits = match (&entry.item, is_event) {
                    (OutboxItem::Event(ev), true) => packer.try_push(ev, ty)?,
                    (OutboxItem::Change(ch), false) => packer.try_push(ch, ty)?,
                    _ => false,
                };
                if !fits {
                    break;
                }
                last_seq = entry.seq;
                self.staged.pop_front();
            }
            debug_assert!(!packer.is_empty());
            let frame = packer.finish(ty, &last_seq, &(), self.core.limits.frame_bytes_max)?;
            // A batch names the last seq it carries: after every batch before it, and never
            // past what the store handed us.
            assert!(
                self.inflight.back().is_none_or(|prev| *prev < last_seq)
                    && last_seq <= self.read_up_to_seq,
                "outbox batch up to {last_seq} after {:?}, read up to {}",
                self.inflight.back(),
                self.read_up_to_seq
            );
            self.core.push_frame(now, frame);
            self.inflight.push_back(last_seq);
        }
        debug_assert!(self.inflight.len() <= self.inflight_batches_max);
        Ok(())
    }

    /// The driver applied the down batch with this cursor durably.
    pub fn down_applied(&mut self, now: Duration, cursor: u64) -> Result<(), SessionError> {
        self.open()?;
        match self.down_pending_apply.front() {
            Some(c) if *c == cursor => {
                self.down_pending_apply.pop_front();
                self.core
                    .send(now, &Message::DownAck(DownAck { cursor }))
                    .map_err(SessionError::from)
            }
            _ => Err(SessionError::NotRequested),
        }
    }

    /// Starts a repair: our record heads go to the hub page by page, and the hub answers with
    /// what we lack and asks for what it lacks.
    pub fn start_repair(&mut self) {
        if self.repair == Repair::Idle {
            self.repair = Repair::Sending {
                after: None,
                requested: false,
            };
        }
    }

    pub fn repair_in_progress(&self) -> bool {
        self.repair != Repair::Idle
    }

    /// A page answering [`EdgeEvent::NeedHeads`]; fewer records than asked ends the repair.
    pub fn send_heads(
        &mut self,
        now: Duration,
        page: Vec<RecordHeads>,
    ) -> Result<(), SessionError> {
        self.open()?;
        let Repair::Sending {
            requested: true, ..
        } = self.repair
        else {
            return Err(SessionError::NotRequested);
        };
        let last_page = page.len() < self.core.limits.heads_page_max;
        let last_record = page.last().map(|r| r.record.clone());
        send_heads_frames(&mut self.core, now, page, last_page, false)?;
        self.repair = match (last_page, last_record) {
            (false, Some(after)) => Repair::Sending {
                after: Some(after),
                requested: false,
            },
            _ => Repair::Idle,
        };
        Ok(())
    }

    /// Reports the outbox's depth and age to the hub (ignored unless both sides speak
    /// `STATUS`). The driver calls it every few seconds.
    pub fn send_status(&mut self, now: Duration, status: EdgeStatus) {
        if self.state == State::Established && self.capabilities & capability::STATUS != 0 {
            // A status frame is a few bytes; it cannot exceed a frame.
            let _ = self.core.send(now, &Message::EdgeStatus(status));
        }
    }

    /// Whether [`EdgeSession::request_renewal`] would be accepted now: established, the hub
    /// speaks `RENEW`, and no renewal was asked on this session yet.
    pub fn can_renew(&self) -> bool {
        self.state == State::Established
            && self.capabilities & capability::RENEW != 0
            && self.renewal == Renewal::Idle
    }

    /// Asks the hub to sign `csr_pem` (PEM, for a key pair the caller just made and keeps
    /// until the answer, [`EdgeEvent::Renewal`]). One per session.
    pub fn request_renewal(&mut self, now: Duration, csr_pem: String) -> Result<(), SessionError> {
        self.open()?;
        if !self.can_renew() || csr_pem.len() > CERT_PEM_BYTES_MAX {
            return Err(SessionError::RenewalUnavailable);
        }
        self.core.send(
            now,
            &Message::CertRenewRequest(CertRenewRequest { csr_pem }),
        )?;
        self.renewal = Renewal::Pending;
        Ok(())
    }

    fn unexpected(&mut self, now: Duration, what: MessageType) {
        let state = self.state;
        self.fail(
            now,
            ErrorCode::UnexpectedMessage,
            format!(
                "{} not expected from the hub in state {state:?}",
                what.name()
            ),
        );
    }

    fn handle_message(&mut self, now: Duration, message: Message) {
        let ty = message.message_type();
        match (self.state, message) {
            (State::Closed, _) => {}
            (State::AwaitingWelcome, Message::Welcome(w)) => {
                if w.protocol_version != PROTOCOL_VERSION {
                    return self.fail(
                        now,
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "hub speaks protocol {}, this edge speaks {PROTOCOL_VERSION}",
                            w.protocol_version
                        ),
                    );
                }
                self.capabilities = w.capabilities & self.config.capabilities;
                self.batch_items_max = (w.batch_items_max as usize)
                    .clamp(1, self.config.limits.batch_items_max.max(1));
                self.inflight_batches_max = (w.inflight_batches_max as usize)
                    .clamp(1, self.config.limits.inflight_batches_max.max(1));
                self.core.limits.frame_bytes_max =
                    (w.frame_bytes_max as usize).min(self.config.limits.frame_bytes_max);
                self.site_id = Some(w.site_id.clone());
                // The welcome negotiates down only: never a window or batch above our own.
                debug_assert!(
                    self.inflight_batches_max <= self.config.limits.inflight_batches_max.max(1)
                        && self.batch_items_max <= self.config.limits.batch_items_max.max(1)
                );
                self.state = State::Established;
                self.events.push_back(EdgeEvent::Connected {
                    site_id: w.site_id,
                    hub_time: w.hub_time,
                    capabilities: self.capabilities,
                });
            }
            (State::Established, Message::Ack(Ack { up_to_seq })) => {
                if self.inflight.front().is_none_or(|first| up_to_seq < *first)
                    || self.inflight.back().is_some_and(|last| up_to_seq > *last)
                {
                    return self.fail(
                        now,
                        ErrorCode::SequenceViolation,
                        format!(
                            "ack up to {up_to_seq} matches no batch in flight {:?}",
                            self.inflight
                        ),
                    );
                }
                while self.inflight.front().is_some_and(|s| *s <= up_to_seq) {
                    self.inflight.pop_front();
                }
                // The driver deletes the outbox up to this seq: acking past what was sent would
                // lose entries the hub never saw.
                assert!(
                    up_to_seq <= self.read_up_to_seq,
                    "ack up to {up_to_seq} past the outbox read up to {}",
                    self.read_up_to_seq
                );
                self.events.push_back(EdgeEvent::Acked { up_to_seq });
                if let Err(e) = self.flush_staged(now) {
                    self.fail(now, ErrorCode::Internal, e.to_string());
                }
            }
            (State::Established, Message::DownBatch(batch))
                if self.capabilities & capability::DOWN_SYNC != 0 =>
            {
                if batch.cursor <= self.down_received_cursor {
                    return self.fail(
                        now,
                        ErrorCode::SequenceViolation,
                        format!(
                            "down cursor {} is not after {}",
                            batch.cursor, self.down_received_cursor
                        ),
                    );
                }
                if self.down_pending_apply.len() >= self.inflight_batches_max {
                    return self.fail(
                        now,
                        ErrorCode::WindowExceeded,
                        format!(
                            "more than {} down batches unacknowledged",
                            self.inflight_batches_max
                        ),
                    );
                }
                self.down_received_cursor = batch.cursor;
                self.down_pending_apply.push_back(batch.cursor);
                debug_assert!(self.down_pending_apply.len() <= self.inflight_batches_max);
                self.events.push_back(EdgeEvent::DownBatch(batch));
            }
            (State::Established, Message::HeadsSummary(summary))
                if self.capabilities & capability::REPAIR != 0 && summary.reply =>
            {
                self.events.push_back(EdgeEvent::PeerHeads {
                    records: summary.records,
                });
            }
            (State::Established, Message::RepairChanges(r))
                if self.capabilities & capability::REPAIR != 0 =>
            {
                self.events
                    .push_back(EdgeEvent::RepairChanges { changes: r.changes });
            }
            (State::Established, Message::HubGeneration(g))
                if self.capabilities & capability::HEAL != 0 && !self.generation_seen =>
            {
                self.generation_seen = true;
                self.events.push_back(EdgeEvent::Generation(g));
            }
            (State::Established, Message::GapSummaries(answer)) if self.heal.is_some() => {
                let bytes = wire_bytes(&Message::GapSummaries(answer.clone()));
                let Some(run) = self.heal.as_mut() else {
                    return;
                };
                run.search_bytes += bytes;
                if let Err(e) = run.planner.hub_summaries(&answer.summaries) {
                    self.fail(
                        now,
                        ErrorCode::UnexpectedMessage,
                        format!("gap summaries: {e}"),
                    );
                }
            }
            (State::Established, Message::GapIds(page)) if self.heal.is_some() => {
                if page.ids.len() > GAP_IDS_PAGE_MAX {
                    return self.fail(
                        now,
                        ErrorCode::LimitExceeded,
                        format!(
                            "a gap ids page holds at most {GAP_IDS_PAGE_MAX} ids, got {}",
                            page.ids.len()
                        ),
                    );
                }
                let bytes = wire_bytes(&Message::GapIds(page.clone()));
                let Some(run) = self.heal.as_mut() else {
                    return;
                };
                run.search_bytes += bytes;
                match run.planner.hub_ids(page.ids, page.more) {
                    Ok(Step::CompareIds {
                        span,
                        after,
                        through,
                        hub_ids,
                    }) => self.events.push_back(EdgeEvent::CompareGapIds {
                        span,
                        after,
                        through,
                        hub_ids,
                    }),
                    Ok(other) => {
                        debug_assert!(false, "hub_ids gave {other:?}");
                    }
                    Err(e) => {
                        self.fail(now, ErrorCode::UnexpectedMessage, format!("gap ids: {e}"));
                    }
                }
            }
            (State::Established, Message::CertRenewResponse(r))
                if self.renewal == Renewal::Pending =>
            {
                let too_long = match &r.outcome {
                    RenewOutcome::Issued { certificate_pem } => {
                        certificate_pem.len() > CERT_PEM_BYTES_MAX
                    }
                    RenewOutcome::Refused { message } => message.len() > ERROR_MESSAGE_BYTES_MAX,
                };
                if too_long {
                    return self.fail(
                        now,
                        ErrorCode::LimitExceeded,
                        "certificate renewal answer over its limit".into(),
                    );
                }
                self.renewal = Renewal::Answered;
                self.events.push_back(EdgeEvent::Renewal(r.outcome));
            }
            _ => self.unexpected(now, ty),
        }
    }
}

/// A message's size on the wire (header and body), for the heal's cost.
fn wire_bytes(m: &Message) -> u64 {
    crate::frame::encode(m, usize::MAX).map_or(0, |f| f.len() as u64)
}

/// Sends heads in as many frames as the limits need; only the last carries `last_page`.
pub(crate) fn send_heads_frames(
    core: &mut Core,
    now: Duration,
    records: Vec<RecordHeads>,
    last_page: bool,
    reply: bool,
) -> Result<(), SessionError> {
    let ty = MessageType::HeadsSummary;
    let mut packer = BatchPacker::new(&core.limits);
    for r in &records {
        if !packer.try_push(r, ty)? {
            let frame = packer.finish(ty, &(), &(false, reply), core.limits.frame_bytes_max)?;
            core.push_frame(now, frame);
            // A fresh packer takes any item that fits in a frame at all, or errors above.
            packer.try_push(r, ty)?;
        }
    }
    let frame = packer.finish(ty, &(), &(last_page, reply), core.limits.frame_bytes_max)?;
    core.push_frame(now, frame);
    Ok(())
}

/// Sends repair changes in as many frames as the limits need; nothing for an empty list.
pub(crate) fn send_repair_frames(
    core: &mut Core,
    now: Duration,
    changes: Vec<RecordChange>,
) -> Result<(), SessionError> {
    let ty = MessageType::RepairChanges;
    let mut packer = BatchPacker::new(&core.limits);
    for c in &changes {
        if !packer.try_push(c, ty)? {
            let frame = packer.finish(ty, &(), &(), core.limits.frame_bytes_max)?;
            core.push_frame(now, frame);
            packer.try_push(c, ty)?;
        }
    }
    if !packer.is_empty() {
        let frame = packer.finish(ty, &(), &(), core.limits.frame_bytes_max)?;
        core.push_frame(now, frame);
    }
    Ok(())
}
