//! Pumps session events into a store and reports the results back to the session.
//!
//! This is the only place where a session meets a store. It does no I/O of its own: the store
//! does, behind its trait, and the caller moves frames between the session and the network.
//! Call the `drive_*` function after every input (frame, timeout, notification) and before
//! draining `poll_transmit`.

use std::time::Duration;

use crate::message::{ErrorCode, RecordHeads};
use crate::session::{CloseReason, EdgeEvent, EdgeSession, HubEvent, HubSession, SessionError};
use crate::store::{EdgeStore, GenerationSeen, HubStore};

/// Most events merged into one hub ingest call: consecutive batches that are already in
/// hand commit in one transaction (group commit), but never unboundedly many.
pub const INGEST_EVENTS_MAX: usize = 8_192;

#[derive(Debug, thiserror::Error)]
pub enum DriveError<E: std::error::Error + 'static> {
    #[error("store: {0}")]
    Store(#[source] E),
    #[error("session: {0}")]
    Session(#[from] SessionError),
}

impl<E: std::error::Error + 'static> DriveError<E> {
    /// The code the session closes with: the store's choice for a store error (`store_code`),
    /// `internal` for a session error (a bug in the driver or the store, not the peer's).
    fn code(&self, store_code: impl FnOnce(&E) -> ErrorCode) -> ErrorCode {
        match self {
            DriveError::Store(s) => store_code(s),
            DriveError::Session(_) => ErrorCode::Internal,
        }
    }
}

/// What happened while driving, for status displays and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriveReport {
    pub connected: bool,
    pub closed: Option<CloseReason>,
    /// Highest outbox seq acked (edge) or committed (hub) during this call.
    pub acked_up_to_seq: Option<u64>,
    pub events_ingested: u64,
    pub events_duplicate: u64,
    pub down_applied_cursor: Option<u64>,
    /// Hub: the edge asked for a renewed certificate (its CSR, PEM). Signing is the caller's
    /// (the store has no CA); answer with `HubSession::send_renewal`.
    pub renewal_request: Option<String>,
    /// Edge: the hub answered the renewal request. Writing the files is the caller's.
    pub renewal: Option<crate::message::RenewOutcome>,
    /// Edge: a heal began against a new hub generation.
    pub heal_started: Option<crate::message::HubGeneration>,
    /// Edge: a heal ended; hub: an edge reported one.
    pub healed: Option<crate::message::HealReport>,
    /// Hub: the database generation told to the edge. A session that outlives it (the
    /// database went back in time under a running hub) must end, so the edge reconnects and
    /// heals.
    pub generation_told: Option<crate::message::HubGeneration>,
}

/// Drives an edge session until it has no more work. A store failure closes the session with
/// an error frame (`S::error_code`: `internal` unless the store refused what the hub sent; the
/// hub resends nothing it has not acked, so nothing is lost) and is returned.
pub async fn drive_edge<S: EdgeStore>(
    session: &mut EdgeSession,
    store: &S,
    now: Duration,
) -> Result<DriveReport, DriveError<S::Error>> {
    let mut report = DriveReport::default();
    let result = drive_edge_inner(session, store, now, &mut report).await;
    result
        .map(|()| report)
        .inspect_err(|e| session.close(now, e.code(S::error_code), e.to_string()))
}

async fn drive_edge_inner<S: EdgeStore>(
    session: &mut EdgeSession,
    store: &S,
    now: Duration,
    report: &mut DriveReport,
) -> Result<(), DriveError<S::Error>> {
    while let Some(event) = session.poll_event() {
        match event {
            EdgeEvent::Connected { .. } => report.connected = true,
            EdgeEvent::Closed(reason) => report.closed = Some(reason),
            EdgeEvent::NeedOutbox { after_seq, limit } => {
                let entries = store
                    .outbox_after(after_seq, limit)
                    .await
                    .map_err(DriveError::Store)?;
                session.send_outbox(now, entries)?;
            }
            EdgeEvent::Acked { up_to_seq } => {
                store
                    .ack_outbox(up_to_seq)
                    .await
                    .map_err(DriveError::Store)?;
                report.acked_up_to_seq = Some(up_to_seq);
            }
            EdgeEvent::DownBatch(batch) => {
                store.apply_down(&batch).await.map_err(DriveError::Store)?;
                session.down_applied(now, batch.cursor)?;
                report.down_applied_cursor = Some(batch.cursor);
            }
            EdgeEvent::NeedHeads { after, limit } => {
                let page = store
                    .heads_page(after.as_ref(), limit)
                    .await
                    .map_err(DriveError::Store)?;
                session.send_heads(now, page)?;
            }
            EdgeEvent::PeerHeads { records } => {
                let mut missing = Vec::new();
                for r in &records {
                    let cmp = store.compare_heads(r).await.map_err(DriveError::Store)?;
                    missing.extend(cmp.missing_at_peer);
                }
                session.send_repair_changes(now, missing)?;
            }
            EdgeEvent::RepairChanges { changes } => {
                store
                    .apply_repair(&changes)
                    .await
                    .map_err(DriveError::Store)?;
            }
            EdgeEvent::Renewal(outcome) => report.renewal = Some(outcome),
            EdgeEvent::Generation(generation) => {
                let seen = store
                    .note_generation(&generation)
                    .await
                    .map_err(DriveError::Store)?;
                match seen {
                    GenerationSeen::Known => {}
                    GenerationSeen::Changed { window } => {
                        session.start_heal(generation, window);
                        report.heal_started = Some(generation);
                    }
                }
            }
            EdgeEvent::NeedGapSummaries { spans } => {
                let summaries = store
                    .gap_summaries(&spans)
                    .await
                    .map_err(DriveError::Store)?;
                session.gap_summaries_ready(summaries)?;
            }
            EdgeEvent::CompareGapIds {
                span,
                after,
                through,
                hub_ids,
            } => {
                let found = store
                    .heal_ids(span, after, through, &hub_ids)
                    .await
                    .map_err(DriveError::Store)?;
                session.gap_ids_compared(found.held, found.missing)?;
            }
            EdgeEvent::Healed {
                generation,
                report: r,
            } => {
                store
                    .healed(&generation, &r)
                    .await
                    .map_err(DriveError::Store)?;
                report.healed = Some(r);
            }
        }
    }
    Ok(())
}

/// Drives a hub session until it has no more work. Consecutive event batches already
/// received are ingested together, up to [`INGEST_EVENTS_MAX`] events.
pub async fn drive_hub<S: HubStore>(
    session: &mut HubSession,
    store: &S,
    now: Duration,
) -> Result<DriveReport, DriveError<S::Error>> {
    let mut report = DriveReport::default();
    let result = drive_hub_inner(session, store, now, &mut report).await;
    result
        .map(|()| report)
        .inspect_err(|e| session.close(now, e.code(S::error_code), e.to_string()))
}

async fn drive_hub_inner<S: HubStore>(
    session: &mut HubSession,
    store: &S,
    now: Duration,
    report: &mut DriveReport,
) -> Result<(), DriveError<S::Error>> {
    let site = session.site_id().clone();
    let mut pending_events = Vec::new();
    let mut pending_last_seq = None;
    loop {
        let event = session.poll_event();
        let is_events = matches!(event, Some(HubEvent::Events { .. }));
        // Flush grouped events before anything else, and when the group is big enough.
        if let Some(last_seq) = pending_last_seq
            && (!is_events || pending_events.len() >= INGEST_EVENTS_MAX)
        {
            let r = store
                .ingest_events(&site, &pending_events)
                .await
                .map_err(DriveError::Store)?;
            report.events_ingested += r.inserted;
            report.events_duplicate += r.duplicates;
            pending_events.clear();
            pending_last_seq = None;
            session.committed(now, last_seq)?;
            report.acked_up_to_seq = Some(last_seq);
        }
        let Some(event) = event else { break };
        match event {
            HubEvent::Connected { down_cursor, .. } => {
                // The hello's cursor is what the edge durably applied: an ack in its own
                // right, and the only one if the last down ack was lost with the connection.
                store
                    .record_down_ack(&site, down_cursor)
                    .await
                    .map_err(DriveError::Store)?;
                report.connected = true;
            }
            HubEvent::Closed(reason) => report.closed = Some(reason),
            HubEvent::Events { last_seq, events } => {
                pending_events.extend(events);
                pending_last_seq = Some(last_seq);
            }
            HubEvent::RecordChanges { last_seq, changes } => {
                store
                    .apply_changes(&site, &changes)
                    .await
                    .map_err(DriveError::Store)?;
                session.committed(now, last_seq)?;
                report.acked_up_to_seq = Some(last_seq);
            }
            HubEvent::NeedDown {
                after_cursor,
                limit,
            } => {
                let entries = store
                    .down_after(&site, after_cursor, limit)
                    .await
                    .map_err(DriveError::Store)?;
                session.send_down(now, entries)?;
            }
            HubEvent::DownAcked { cursor } => {
                store
                    .record_down_ack(&site, cursor)
                    .await
                    .map_err(DriveError::Store)?;
            }
            HubEvent::PeerHeads {
                records,
                reply,
                covers,
            } => {
                let mut missing = Vec::new();
                let mut ours = Vec::new();
                // Records we hold in the key range this page covers but the edge did not list:
                // it lacks them entirely, so it gets all of their changes.
                if let Some((after, through)) = &covers {
                    let ids = store
                        .record_ids_between(&site, after.as_ref(), through.as_ref())
                        .await
                        .map_err(DriveError::Store)?;
                    for id in ids {
                        if records.iter().any(|r| r.record == id) {
                            continue;
                        }
                        let empty = RecordHeads {
                            record: id,
                            heads: Vec::new(),
                        };
                        let cmp = store
                            .compare_heads(&site, &empty)
                            .await
                            .map_err(DriveError::Store)?;
                        missing.extend(cmp.missing_at_peer);
                    }
                }
                for r in &records {
                    let cmp = store
                        .compare_heads(&site, r)
                        .await
                        .map_err(DriveError::Store)?;
                    missing.extend(cmp.missing_at_peer);
                    if cmp.unknown_here {
                        ours.push(RecordHeads {
                            record: r.record.clone(),
                            heads: cmp.our_heads,
                        });
                    }
                }
                session.send_repair_changes(now, missing)?;
                if !reply {
                    session.send_heads_reply(now, ours)?;
                }
            }
            HubEvent::RepairChanges { changes } => {
                store
                    .apply_changes(&site, &changes)
                    .await
                    .map_err(DriveError::Store)?;
            }
            HubEvent::EdgeStatus(status) => {
                store
                    .record_edge_status(&site, status)
                    .await
                    .map_err(DriveError::Store)?;
            }
            HubEvent::RenewCertificate { csr_pem } => report.renewal_request = Some(csr_pem),
            HubEvent::NeedGeneration => {
                let generation = store.generation().await.map_err(DriveError::Store)?;
                session.send_generation(now, generation)?;
                report.generation_told = generation;
            }
            HubEvent::GapQuery { spans } => {
                let summaries = store
                    .gap_summaries(&site, &spans)
                    .await
                    .map_err(DriveError::Store)?;
                session.send_gap_summaries(now, summaries)?;
            }
            HubEvent::GapIds { span, after, limit } => {
                let ids = store
                    .gap_ids(&site, span, after, limit)
                    .await
                    .map_err(DriveError::Store)?;
                let more = ids.len() >= limit;
                session.send_gap_ids(now, ids, more)?;
            }
            HubEvent::HealReport(r) => {
                store
                    .record_heal(&site, &r)
                    .await
                    .map_err(DriveError::Store)?;
                report.healed = Some(r);
            }
        }
    }
    Ok(())
}
