//! The sync session state machines: [`EdgeSession`] for the edge end of a connection and
//! [`HubSession`] for the hub end.
//!
//! Both are sans-IO. The caller feeds them received bytes with `handle_frame` (one whole
//! frame) or `handle_stream_bytes` (any chunk of the stream), calls `handle_timeout` when
//! `poll_timeout` says so, sends what `poll_transmit` returns, and does the store work that
//! `poll_event` asks for, reporting back with the session's completion methods (or letting
//! [`crate::driver`] do that). Time is a [`Duration`] since an origin of the caller's choice,
//! so a simulator can run them on virtual time.
//!
//! A protocol violation by the peer never panics: the session queues an error frame, drops
//! any data frames still queued, emits a `Closed` event and refuses everything after that.

/// What both ends have alike, for an end whose struct has `core`, `state` (its module's
/// `State`, with `Established` and `Closed`) and `events` (a queue of its event type, with
/// `Closed(CloseReason)`): the [`Machine`] impl and the public input/output surface.
macro_rules! session_common {
    ($session:ident, $event:ident) => {
        impl $session {
            pub fn is_established(&self) -> bool {
                self.state == State::Established
            }

            pub fn is_closed(&self) -> bool {
                self.state == State::Closed
            }

            pub fn close_reason(&self) -> Option<&CloseReason> {
                self.core.closed.as_ref()
            }

            /// One whole frame from the peer.
            pub fn handle_frame(&mut self, now: Duration, frame: &[u8]) {
                super::handle_frame(self, now, frame);
            }

            /// Any chunk of the peer's stream: part of a frame or several frames.
            pub fn handle_stream_bytes(&mut self, now: Duration, bytes: &[u8]) {
                super::handle_stream_bytes(self, now, bytes);
            }

            /// The next frame to send.
            pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
                self.core.poll_transmit()
            }

            /// Ends the session on our side (shutdown, a store failure, a revoked site): the
            /// peer gets an error frame saying why.
            pub fn close(&mut self, now: Duration, code: ErrorCode, message: impl Into<String>) {
                self.fail(now, code, message.into());
            }

            /// Repair: the changes the peer lacks, found by comparing its heads (the
            /// `PeerHeads` event); as many frames as the limits need, none for an empty list.
            pub fn send_repair_changes(
                &mut self,
                now: Duration,
                changes: Vec<RecordChange>,
            ) -> Result<(), SessionError> {
                self.open()?;
                send_repair_frames(&mut self.core, now, changes)
            }

            /// A completion on a closed session is refused: the driver must not call one
            /// after the `Closed` event.
            fn open(&self) -> Result<(), SessionError> {
                if self.state == State::Closed {
                    Err(SessionError::Closed)
                } else {
                    Ok(())
                }
            }

            fn fail(&mut self, now: Duration, code: ErrorCode, message: String) {
                super::fail(self, now, code, message);
            }
        }

        impl super::Machine for $session {
            fn core(&mut self) -> &mut Core {
                &mut self.core
            }

            fn is_closed(&self) -> bool {
                self.state == State::Closed
            }

            fn handle_message(&mut self, now: Duration, message: Message) {
                $session::handle_message(self, now, message);
            }

            fn enter_closed(&mut self, reason: CloseReason) {
                self.state = State::Closed;
                self.events.clear();
                self.events.push_back($event::Closed(reason));
            }
        }
    };
}

mod edge;
mod hub;

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

pub use edge::{EdgeEvent, EdgeSession};
pub use hub::{HubEvent, HubSession};

use crate::frame::{self, DecodeError, EncodeError, FrameDecoder, HEADER_BYTES};
use crate::message::{ErrorCode, ErrorFrame, Message, MessageType};

/// Limits of one session. Defaults suit a site on a WAN link; tests shrink them to force the
/// edge cases (many small frames, a full window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body accepted or produced.
    pub frame_bytes_max: usize,
    /// Most items (events, changes, down items) in one batch frame.
    pub batch_items_max: usize,
    /// Batches sent but not yet acknowledged, per direction.
    pub inflight_batches_max: usize,
    /// Records per heads-summary page.
    pub heads_page_max: usize,
    /// Queued outgoing bytes above which the session stops asking its store for more data:
    /// a slow link applies back-pressure instead of filling memory.
    pub transmit_bytes_max: usize,
    pub handshake_timeout: Duration,
    /// The edge pings when it has sent nothing for this long, keeping NAT state alive.
    pub ping_interval: Duration,
    /// Nothing received for this long closes the session.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frame_bytes_max: frame::FRAME_BODY_BYTES_MAX_DEFAULT,
            batch_items_max: 2_048,
            inflight_batches_max: 16,
            heads_page_max: 256,
            transmit_bytes_max: 8 << 20,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Configuration common to both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub limits: Limits,
    /// Capability bits offered; the session uses the intersection with the peer's.
    pub capabilities: u64,
    /// The sender's software version, for the hub's per-site status.
    pub agent_version: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            capabilities: crate::message::capability::ALL_V1,
            agent_version: concat!("mes-sync ", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We found a problem (or were asked to close) and told the peer.
    Local { code: ErrorCode, message: String },
    /// The peer sent an error frame.
    Remote { code: ErrorCode, message: String },
}

impl CloseReason {
    pub fn code(&self) -> ErrorCode {
        match self {
            CloseReason::Local { code, .. } | CloseReason::Remote { code, .. } => *code,
        }
    }
}

/// Errors the driver can make when completing work (bugs in the store, not peer faults).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session is closed")]
    Closed,
    #[error("entries must have strictly increasing positions, got {got} after {previous}")]
    NotIncreasing { previous: u64, got: u64 },
    #[error("nothing was requested that this completes")]
    NotRequested,
    #[error(
        "certificate renewal is not available on this session (not established, capability not negotiated, already asked, or the request is too long)"
    )]
    RenewalUnavailable,
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Parts shared by both ends: framing, transmit queue, liveness timers.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) limits: Limits,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    transmit_bytes: usize,
    pub(crate) started: Duration,
    pub(crate) last_received: Duration,
    pub(crate) last_sent: Duration,
    pub(crate) closed: Option<CloseReason>,
    next_ping_nonce: u64,
}

impl Core {
    pub(crate) fn new(limits: Limits, now: Duration) -> Self {
        Self {
            decoder: FrameDecoder::new(limits.frame_bytes_max),
            limits,
            transmit: VecDeque::new(),
            transmit_bytes: 0,
            started: now,
            last_received: now,
            last_sent: now,
            closed: None,
            next_ping_nonce: 1,
        }
    }

    pub(crate) fn send(&mut self, now: Duration, message: &Message) -> Result<(), EncodeError> {
        let frame = frame::encode(message, self.limits.frame_bytes_max)?;
        self.push_frame(now, frame);
        Ok(())
    }

    pub(crate) fn push_frame(&mut self, now: Duration, frame: Vec<u8>) {
        self.transmit_bytes += frame.len();
        self.transmit.push_back(frame);
        self.last_sent = now;
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let f = self.transmit.pop_front()?;
        self.transmit_bytes -= f.len();
        // The byte count is what back-pressure is decided on: it must match the queue.
        debug_assert!(!self.transmit.is_empty() || self.transmit_bytes == 0);
        Some(f)
    }

    /// Whether the transmit queue has room for more data frames.
    pub(crate) fn has_send_room(&self) -> bool {
        self.closed.is_none() && self.transmit_bytes < self.limits.transmit_bytes_max
    }

    pub(crate) fn send_ping(&mut self, now: Duration) {
        let nonce = self.next_ping_nonce;
        self.next_ping_nonce = self.next_ping_nonce.wrapping_add(1);
        // A ping always fits in a frame; an encode failure would be a bug in postcard.
        let _ = self.send(now, &Message::Ping(crate::message::Ping { nonce }));
    }

    /// Closes with an error frame to the peer. Data frames still queued are dropped: after a
    /// protocol error nothing else we say is meaningful, and the peer resends what it needs.
    pub(crate) fn close_local(
        &mut self,
        now: Duration,
        code: ErrorCode,
        message: String,
    ) -> Option<CloseReason> {
        if self.closed.is_some() {
            return None;
        }
        self.transmit.clear();
        self.transmit_bytes = 0;
        let frame = ErrorFrame::new(code, message);
        let _ = self.send(now, &Message::Error(frame.clone()));
        let reason = CloseReason::Local {
            code,
            message: frame.message,
        };
        self.closed = Some(reason.clone());
        Some(reason)
    }

    pub(crate) fn close_remote(&mut self, frame: ErrorFrame) -> Option<CloseReason> {
        if self.closed.is_some() {
            return None;
        }
        self.transmit.clear();
        self.transmit_bytes = 0;
        let reason = CloseReason::Remote {
            code: frame.code,
            message: frame.message,
        };
        self.closed = Some(reason.clone());
        Some(reason)
    }

    /// Decodes one whole frame.
    pub(crate) fn decode_frame(
        &mut self,
        now: Duration,
        bytes: &[u8],
    ) -> Result<Message, DecodeError> {
        self.last_received = now;
        frame::decode(bytes, self.limits.frame_bytes_max)
    }

    pub(crate) fn push_stream(&mut self, now: Duration, bytes: &[u8]) {
        self.last_received = now;
        self.decoder.push(bytes);
    }

    pub(crate) fn next_stream_message(&mut self) -> Result<Option<Message>, DecodeError> {
        self.decoder.next_message()
    }

    pub(crate) fn idle_deadline(&self) -> Duration {
        self.last_received + self.limits.idle_timeout
    }

    /// When the peer's opening message (hello or welcome) is overdue.
    pub(crate) fn handshake_deadline(&self) -> Duration {
        self.started + self.limits.handshake_timeout
    }
}

/// What the input handling both ends share needs of an end: its core, its own messages and
/// how it enters the closed state. The frame and stream entry points, the control messages
/// (`error`, `ping`, `pong`) and failing are then written once, below.
pub(crate) trait Machine {
    fn core(&mut self) -> &mut Core;
    fn is_closed(&self) -> bool;
    /// A message that is not a control message, in the end's current state.
    fn handle_message(&mut self, now: Duration, message: Message);
    /// The session has just closed (either end said why): enter the closed state, drop the
    /// work not yet taken and report `reason` as the only event left.
    fn enter_closed(&mut self, reason: CloseReason);
}

/// One whole frame from the peer.
pub(crate) fn handle_frame<M: Machine>(m: &mut M, now: Duration, frame: &[u8]) {
    if m.is_closed() {
        return;
    }
    match m.core().decode_frame(now, frame) {
        Ok(message) => handle_any_message(m, now, message),
        Err(e) => fail(m, now, decode_error_code(&e), e.to_string()),
    }
}

/// Any chunk of the peer's stream: part of a frame or several frames.
pub(crate) fn handle_stream_bytes<M: Machine>(m: &mut M, now: Duration, bytes: &[u8]) {
    if m.is_closed() {
        return;
    }
    m.core().push_stream(now, bytes);
    loop {
        match m.core().next_stream_message() {
            Ok(Some(message)) => {
                handle_any_message(m, now, message);
                if m.is_closed() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => return fail(m, now, decode_error_code(&e), e.to_string()),
        }
    }
}

/// Control messages mean the same in every state of both ends; the rest is the end's.
fn handle_any_message<M: Machine>(m: &mut M, now: Duration, message: Message) {
    if m.is_closed() {
        return;
    }
    match message {
        Message::Error(frame) => {
            if let Some(reason) = m.core().close_remote(frame) {
                m.enter_closed(reason);
            }
        }
        Message::Ping(p) => {
            // A pong always fits in a frame; an encode failure would be a bug in postcard.
            let _ = m
                .core()
                .send(now, &Message::Pong(crate::message::Pong { nonce: p.nonce }));
        }
        Message::Pong(_) => {}
        Message::Hello(_)
        | Message::Welcome(_)
        | Message::EventBatch(_)
        | Message::RecordChanges(_)
        | Message::Ack(_)
        | Message::DownBatch(_)
        | Message::DownAck(_)
        | Message::HeadsSummary(_)
        | Message::RepairChanges(_)
        | Message::EdgeStatus(_)
        | Message::CertRenewRequest(_)
        | Message::CertRenewResponse(_)
        | Message::HubGeneration(_)
        | Message::GapQuery(_)
        | Message::GapSummaries(_)
        | Message::GapIdsQuery(_)
        | Message::GapIds(_)
        | Message::HealReport(_) => m.handle_message(now, message),
    }
}

/// Closes locally with an error frame to the peer (once; later calls do nothing).
pub(crate) fn fail<M: Machine>(m: &mut M, now: Duration, code: ErrorCode, message: String) {
    if let Some(reason) = m.core().close_local(now, code, message) {
        m.enter_closed(reason);
    }
}

/// The error code that answers a decode failure.
pub(crate) fn decode_error_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
        DecodeError::UnknownType(_) => ErrorCode::UnknownMessageType,
        DecodeError::Incomplete { .. } | DecodeError::Malformed { .. } => ErrorCode::MalformedFrame,
    }
}

/// Groups items into batch frames that respect both the item and the byte limits.
///
/// The body of every batch message is `prefix · varint(count) · items · suffix`, which is
/// exactly how postcard lays out a struct whose fields are some scalars, a `Vec`, then more
/// scalars. Encoding each item once and assembling the frame from the pieces avoids encoding
/// a batch twice to find out whether it fits. A unit test checks the equivalence.
#[derive(Debug)]
pub(crate) struct BatchPacker {
    items_max: usize,
    body_bytes_budget: usize,
    encoded: Vec<u8>,
    count: usize,
}

/// Bytes kept free in a frame for the prefix, the count and the suffix.
const BATCH_OVERHEAD_BYTES: usize = 32;

impl BatchPacker {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            items_max: limits.batch_items_max.max(1),
            body_bytes_budget: limits.frame_bytes_max.saturating_sub(BATCH_OVERHEAD_BYTES),
            encoded: Vec::new(),
            count: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encodes `item` and tries to add it. `Ok(false)` means the batch is full: finish it
    /// and push the item into a new one.
    pub(crate) fn try_push<T: Serialize>(
        &mut self,
        item: &T,
        message_type: MessageType,
    ) -> Result<bool, EncodeError> {
        if self.count >= self.items_max {
            return Ok(false);
        }
        let before = self.encoded.len();
        let buf = std::mem::take(&mut self.encoded);
        self.encoded = postcard::to_extend(item, buf).map_err(|e| EncodeError::Serialize {
            message_type: message_type.name(),
            reason: e.to_string(),
        })?;
        let item_len = self.encoded.len() - before;
        if self.encoded.len() > self.body_bytes_budget {
            self.encoded.truncate(before);
            if self.count == 0 {
                return Err(EncodeError::TooLarge {
                    message_type: message_type.name(),
                    len: item_len,
                    max: self.body_bytes_budget,
                });
            }
            return Ok(false);
        }
        self.count += 1;
        Ok(true)
    }

    /// Builds the frame and empties the packer.
    pub(crate) fn finish<P: Serialize, S: Serialize>(
        &mut self,
        message_type: MessageType,
        prefix: &P,
        suffix: &S,
        frame_bytes_max: usize,
    ) -> Result<Vec<u8>, EncodeError> {
        let ser = |e: postcard::Error| EncodeError::Serialize {
            message_type: message_type.name(),
            reason: e.to_string(),
        };
        let mut out = Vec::with_capacity(HEADER_BYTES + 16 + self.encoded.len());
        out.resize(HEADER_BYTES, 0);
        let out = postcard::to_extend(prefix, out).map_err(ser)?;
        let mut out = postcard::to_extend(&(self.count as u64), out).map_err(ser)?;
        out.extend_from_slice(&self.encoded);
        let out = postcard::to_extend(suffix, out).map_err(ser)?;
        self.encoded.clear();
        self.count = 0;
        frame::finish_frame(out, message_type, frame_bytes_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{
        DownBatch, DownItem, HeadsSummary, RecordChange, RecordHeads, RecordId, RecordKind,
    };

    fn change(n: u8) -> RecordChange {
        let id = RecordId::new(RecordKind::WorkOrder, format!("WO-{n}")).unwrap();
        RecordChange::new(id, vec![n; usize::from(n) + 1]).unwrap()
    }

    /// The packer's hand-assembled frames must be byte-identical to postcard's encoding of the
    /// message struct, or the hub would misread every batch.
    #[test]
    fn packer_matches_serde_layout() {
        let limits = Limits::default();
        let items: Vec<DownItem> = (1..5).map(|n| DownItem::RecordChange(change(n))).collect();
        let mut p = BatchPacker::new(&limits);
        for i in &items {
            assert!(p.try_push(i, MessageType::DownBatch).unwrap());
        }
        let packed = p
            .finish(MessageType::DownBatch, &77u64, &(), limits.frame_bytes_max)
            .unwrap();
        let direct = frame::encode(
            &Message::DownBatch(DownBatch { cursor: 77, items }),
            limits.frame_bytes_max,
        )
        .unwrap();
        assert_eq!(packed, direct);

        let heads = vec![RecordHeads {
            record: RecordId::new(RecordKind::LotHold, "L1").unwrap(),
            heads: vec![[9; 32]],
        }];
        let mut p = BatchPacker::new(&limits);
        assert!(p.try_push(&heads[0], MessageType::HeadsSummary).unwrap());
        let packed = p
            .finish(
                MessageType::HeadsSummary,
                &(),
                &(true, false),
                limits.frame_bytes_max,
            )
            .unwrap();
        let direct = frame::encode(
            &Message::HeadsSummary(HeadsSummary {
                records: heads,
                last_page: true,
                reply: false,
            }),
            limits.frame_bytes_max,
        )
        .unwrap();
        assert_eq!(packed, direct);
    }

    #[test]
    fn packer_respects_item_and_byte_limits() {
        let limits = Limits {
            frame_bytes_max: 64,
            batch_items_max: 3,
            ..Limits::default()
        };
        let mut p = BatchPacker::new(&limits);
        // Each change of n=1 is ~ 12 bytes; three fit by bytes and by count, a fourth not.
        for _ in 0..3 {
            assert!(p.try_push(&change(1), MessageType::RecordChanges).unwrap());
        }
        assert!(!p.try_push(&change(1), MessageType::RecordChanges).unwrap());
        let mut p = BatchPacker::new(&limits);
        // One item larger than a whole frame is an error, not an endless loop.
        assert!(matches!(
            p.try_push(&change(200), MessageType::RecordChanges),
            Err(EncodeError::TooLarge { .. })
        ));
    }
}
