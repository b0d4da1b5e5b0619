//! Every message of protocol version 1.
//!
//! Wire rules (also in `docs/protocol.md`): message bodies are postcard; fields and enum
//! variants are never reordered or removed; a new meaning gets a new message type or a new
//! enum variant at the end; no serde `flatten`, `untagged`, `skip_serializing_if` or internal
//! tagging, which postcard cannot represent faithfully. The golden fixtures in
//! `tests/golden/v1` pin the bytes.

use serde::{Deserialize, Serialize};
use shared_model::Event;
use shared_model::Timestamp;
use shared_model::master::{MasterKind, MasterRecord};

/// Capability bits exchanged in hello/welcome; the session uses the intersection.
pub mod capability {
    /// Event batches up, acks down.
    pub const EVENTS: u64 = 1 << 0;
    /// Automerge record changes up.
    pub const RECORD_CHANGES: u64 = 1 << 1;
    /// Down-sync batches (work orders, master data) with a cursor.
    pub const DOWN_SYNC: u64 = 1 << 2;
    /// Heads summary and repair changes.
    pub const REPAIR: u64 = 1 << 3;
    /// Edge status reports (outbox depth and age) for the hub's per-site view.
    pub const STATUS: u64 = 1 << 4;
    /// The edge renews its client certificate over the session (a CSR up, a certificate
    /// down).
    pub const RENEW: u64 = 1 << 5;
    /// The hub names its database generation; after a restore or a failover the edge finds
    /// the events the hub lost (gap summaries, top-down) and sends them again.
    pub const HEAL: u64 = 1 << 6;
    /// Everything this build implements.
    pub const ALL_V1: u64 = EVENTS | RECORD_CHANGES | DOWN_SYNC | REPAIR | STATUS | RENEW | HEAL;
}

/// Longest record id, like the other textual ids.
pub const RECORD_ID_BYTES_MAX: usize = 64;
/// Longest single Automerge change accepted on the wire. The edge refuses writes that would
/// produce a bigger one, so this only stops a broken or hostile peer.
pub const CHANGE_BYTES_MAX: usize = 1 << 20;
/// Most heads one record may list; Automerge documents edited by a handful of actors have a
/// few heads, thousands means something is wrong.
pub const HEADS_PER_RECORD_MAX: usize = 1_024;
/// Longest error message carried in an error frame.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1_024;
/// Longest agent version string.
pub const AGENT_VERSION_BYTES_MAX: usize = 64;
/// Longest certificate signing request (PEM) in a renewal request, and longest certificate
/// (PEM) or refusal in its answer: a site certificate is about 700 bytes.
pub const CERT_PEM_BYTES_MAX: usize = 16 * 1024;
/// Most spans in one gap query (and summaries in its answer).
pub const GAP_SPANS_MAX: usize = 64;
/// Most event ids in one page of a gap ids answer: 16 bytes each, so a page stays near 64 KiB.
pub const GAP_IDS_PAGE_MAX: usize = 4_096;
/// Most unrecoverable spans one heal report lists (the rest are summed into the last).
pub const HEAL_UNRECOVERABLE_MAX: usize = 256;

/// The numeric type of each message, the `u16` in the frame header. Values are forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum MessageType {
    Hello = 0x0001,
    Welcome = 0x0002,
    EventBatch = 0x0010,
    RecordChanges = 0x0011,
    Ack = 0x0012,
    DownBatch = 0x0020,
    DownAck = 0x0021,
    HeadsSummary = 0x0030,
    RepairChanges = 0x0031,
    EdgeStatus = 0x0040,
    CertRenewRequest = 0x0050,
    CertRenewResponse = 0x0051,
    HubGeneration = 0x0060,
    GapQuery = 0x0061,
    GapSummaries = 0x0062,
    GapIdsQuery = 0x0063,
    GapIds = 0x0064,
    HealReport = 0x0065,
    Error = 0x00F0,
    Ping = 0x00F1,
    Pong = 0x00F2,
}

impl MessageType {
    pub const ALL: [MessageType; 21] = [
        MessageType::Hello,
        MessageType::Welcome,
        MessageType::EventBatch,
        MessageType::RecordChanges,
        MessageType::Ack,
        MessageType::DownBatch,
        MessageType::DownAck,
        MessageType::HeadsSummary,
        MessageType::RepairChanges,
        MessageType::EdgeStatus,
        MessageType::CertRenewRequest,
        MessageType::CertRenewResponse,
        MessageType::HubGeneration,
        MessageType::GapQuery,
        MessageType::GapSummaries,
        MessageType::GapIdsQuery,
        MessageType::GapIds,
        MessageType::HealReport,
        MessageType::Error,
        MessageType::Ping,
        MessageType::Pong,
    ];

    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u16 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageType::Hello => "hello",
            MessageType::Welcome => "welcome",
            MessageType::EventBatch => "event_batch",
            MessageType::RecordChanges => "record_changes",
            MessageType::Ack => "ack",
            MessageType::DownBatch => "down_batch",
            MessageType::DownAck => "down_ack",
            MessageType::HeadsSummary => "heads_summary",
            MessageType::RepairChanges => "repair_changes",
            MessageType::EdgeStatus => "edge_status",
            MessageType::CertRenewRequest => "cert_renew_request",
            MessageType::CertRenewResponse => "cert_renew_response",
            MessageType::HubGeneration => "hub_generation",
            MessageType::GapQuery => "gap_query",
            MessageType::GapSummaries => "gap_summaries",
            MessageType::GapIdsQuery => "gap_ids_query",
            MessageType::GapIds => "gap_ids",
            MessageType::HealReport => "heal_report",
            MessageType::Error => "error",
            MessageType::Ping => "ping",
            MessageType::Pong => "pong",
        }
    }
}

/// First message of the edge. The site is *not* in it: the hub takes the site identity from
/// the TLS client certificate only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub agent_version: String,
    pub capabilities: u64,
    /// The down-sync position the edge has durably applied; the hub resumes after it.
    pub down_cursor: u64,
}

/// The hub's answer to a compatible hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    pub capabilities: u64,
    /// The site as the hub read it from the client certificate, so the edge can refuse to
    /// sync if it was enrolled under another name.
    pub site_id: shared_model::SiteId,
    /// The hub's wall clock, for the edge to report its clock skew.
    pub hub_time: Timestamp,
    /// Limits the edge must respect for this connection.
    pub batch_items_max: u32,
    pub inflight_batches_max: u32,
    pub frame_bytes_max: u32,
}

/// Facts from the edge's outbox. `last_seq` is the outbox sequence of the last event in the
/// batch; the hub acks it after its database commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub last_seq: u64,
    pub events: Vec<Event>,
}

/// What kind of shared record a change belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordKind {
    WorkOrder,
    NonConformance,
    LotHold,
}

// The name the edge's SQLite and the hub's PostgreSQL store in `record_kind` columns and the
// APIs return. Not the serde name: postcard encodes the variant index, never this text.
shared_model::named_enum!(RecordKind, "record kind", display {
    WorkOrder => "work_order",
    NonConformance => "non_conformance",
    LotHold => "lot_hold",
});

/// A shared record: one Automerge document each.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawRecordId")]
pub struct RecordId {
    pub kind: RecordKind,
    id: String,
}

#[derive(Deserialize)]
struct RawRecordId {
    kind: RecordKind,
    id: String,
}

impl TryFrom<RawRecordId> for RecordId {
    type Error = String;
    fn try_from(raw: RawRecordId) -> Result<Self, Self::Error> {
        RecordId::new(raw.kind, raw.id)
    }
}

impl RecordId {
    pub fn new(kind: RecordKind, id: impl Into<String>) -> Result<Self, String> {
        let id = id.into();
        if id.is_empty() || id.len() > RECORD_ID_BYTES_MAX {
            return Err(format!(
                "record id must be 1 to {RECORD_ID_BYTES_MAX} bytes, got {}",
                id.len()
            ));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(format!(
                "record id {id:?} has characters outside A-Z a-z 0-9 - _ . :"
            ));
        }
        Ok(Self { kind, id })
    }

    pub fn work_order(id: &shared_model::WorkOrderId) -> Self {
        // A WorkOrderId is validated with a subset of the same rules, so this cannot fail.
        Self {
            kind: RecordKind::WorkOrder,
            id: id.as_str().to_owned(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// One Automerge change, opaque to the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRecordChange")]
pub struct RecordChange {
    pub record: RecordId,
    change: Vec<u8>,
}

#[derive(Deserialize)]
struct RawRecordChange {
    record: RecordId,
    change: Vec<u8>,
}

impl TryFrom<RawRecordChange> for RecordChange {
    type Error = String;
    fn try_from(raw: RawRecordChange) -> Result<Self, Self::Error> {
        RecordChange::new(raw.record, raw.change)
    }
}

impl RecordChange {
    pub fn new(record: RecordId, change: Vec<u8>) -> Result<Self, String> {
        if change.is_empty() || change.len() > CHANGE_BYTES_MAX {
            return Err(format!(
                "a change must be 1 to {CHANGE_BYTES_MAX} bytes, got {}",
                change.len()
            ));
        }
        Ok(Self { record, change })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.change
    }
}

/// Site edits to shared records, from the edge's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordChanges {
    pub last_seq: u64,
    pub changes: Vec<RecordChange>,
}

/// Cumulative acknowledgement: every outbox entry with a sequence up to `up_to_seq` that the
/// edge sent on this connection is committed in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub up_to_seq: u64,
}

/// One item of down-sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DownItem {
    /// An HQ edit (release, cancel, re-plan) of a shared record.
    RecordChange(RecordChange),
    /// A new version of a master record; `version` increases per key.
    MasterUpsert { version: u64, record: MasterRecord },
    /// A master record was withdrawn.
    MasterDelete {
        version: u64,
        kind: MasterKind,
        key: String,
    },
}

/// Hub → edge. `cursor` is the down-sync position after the last item; the edge stores the
/// items and the cursor in one transaction, then acks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownBatch {
    pub cursor: u64,
    pub items: Vec<DownItem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownAck {
    pub cursor: u64,
}

/// An Automerge change hash.
pub type ChangeHash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeads {
    pub record: RecordId,
    pub heads: Vec<ChangeHash>,
}

/// One page of the sender's record heads, for repair. The receiver answers with the changes
/// the sender lacks ([`RepairChanges`]) and, for records where the sender knows heads the
/// receiver does not, with its own heads as a `reply` page. A reply is never answered with
/// heads again, so repair always terminates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadsSummary {
    pub records: Vec<RecordHeads>,
    pub last_page: bool,
    pub reply: bool,
}

/// Changes sent during repair; applied idempotently, not acked, not part of any cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairChanges {
    pub changes: Vec<RecordChange>,
}

/// The edge's view of its own backlog, sent every few seconds (capability `STATUS`), so the
/// hub can show per-site backlog and lag without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStatus {
    pub pending_events: u64,
    pub pending_changes: u64,
    /// `recorded_at` of the oldest event still waiting for the hub's ack.
    pub oldest_pending_at: Option<Timestamp>,
}

/// The edge asks for a new client certificate (capability `RENEW`): a PKCS#10 request for a
/// key pair it just made. The hub signs it for the site of the session's TLS certificate
/// (never the CSR's subject) and answers with [`CertRenewResponse`]. One per session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRenewRequest {
    /// PEM, at most [`CERT_PEM_BYTES_MAX`] bytes.
    pub csr_pem: String,
}

/// What became of a renewal request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenewOutcome {
    /// The new certificate (PEM), recorded by the hub; the edge uses it from its next
    /// connection on, and its first use revokes the certificate it replaces.
    Issued { certificate_pem: String },
    /// Not renewed (a malformed CSR, too soon after the last renewal, the hub's database
    /// unavailable): the edge keeps its certificate and tries again later.
    Refused { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRenewResponse {
    pub outcome: RenewOutcome,
}

/// Hub → edge, once after the welcome (capability `HEAL`): which life of the hub's database
/// this is. `system_id` and `timeline` come from PostgreSQL itself and change with a
/// point-in-time restore (a new timeline), a promoted replica (a new timeline) or a reload into
/// another cluster (a new system id). An edge that knew another pair looks for what the hub
/// lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubGeneration {
    /// 1, 2, …: the hub's count of the lives it has seen.
    pub number: u32,
    pub system_id: u64,
    pub timeline: u32,
    /// The newest instant the restored data knew, when this generation began after another.
    pub restore_point: Option<Timestamp>,
}

/// Edge → hub: summarise the site's events in these spans of recording time (at most
/// [`GAP_SPANS_MAX`]). One query at a time: the next waits for the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapQuery {
    pub spans: Vec<crate::gap::Span>,
}

/// Hub → edge: one summary per span of the query, in its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapSummaries {
    pub summaries: Vec<crate::gap::Summary>,
}

/// Edge → hub: the ids of the site's events in `span`, ascending, after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapIdsQuery {
    pub span: crate::gap::Span,
    pub after: Option<shared_model::EventId>,
}

/// Hub → edge: up to [`GAP_IDS_PAGE_MAX`] ids, ascending; `more` when the span holds more
/// after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapIds {
    pub ids: Vec<shared_model::EventId>,
    pub more: bool,
}

/// Events of a span that the hub lacks and the edge no longer holds (its retention pruned
/// them): lost for good, and said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unrecoverable {
    pub span: crate::gap::Span,
    pub events: u64,
}

/// Edge → hub when a heal ends: what was found and sent again, for the hub's per-site view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealReport {
    /// The generation healed against ([`HubGeneration::number`]).
    pub generation: u32,
    /// Events the hub lacked that the edge queued again.
    pub resent: u64,
    /// Events the hub lacked that the edge no longer has, by span (at most
    /// [`HEAL_UNRECOVERABLE_MAX`]).
    pub unrecoverable: Vec<Unrecoverable>,
    /// Bytes of gap queries and answers the search took, both ways.
    pub search_bytes: u64,
    /// Spans compared and id pages listed.
    pub spans_compared: u64,
    pub id_pages: u64,
}

/// Why a session is being closed. The numeric values are on the wire and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    UnsupportedVersion,
    MalformedFrame,
    FrameTooLarge,
    UnknownMessageType,
    UnexpectedMessage,
    InvalidEvent,
    SiteMismatch,
    WindowExceeded,
    SequenceViolation,
    LimitExceeded,
    Timeout,
    Internal,
    Unauthorized,
    ShuttingDown,
    /// A code this build does not know (sent by a newer peer).
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::MalformedFrame => 2,
            ErrorCode::FrameTooLarge => 3,
            ErrorCode::UnknownMessageType => 4,
            ErrorCode::UnexpectedMessage => 5,
            ErrorCode::InvalidEvent => 6,
            ErrorCode::SiteMismatch => 7,
            ErrorCode::WindowExceeded => 8,
            ErrorCode::SequenceViolation => 9,
            ErrorCode::LimitExceeded => 10,
            ErrorCode::Timeout => 11,
            ErrorCode::Internal => 12,
            ErrorCode::Unauthorized => 13,
            ErrorCode::ShuttingDown => 14,
            ErrorCode::Other(v) => v,
        }
    }

    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::MalformedFrame,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::UnknownMessageType,
            5 => ErrorCode::UnexpectedMessage,
            6 => ErrorCode::InvalidEvent,
            7 => ErrorCode::SiteMismatch,
            8 => ErrorCode::WindowExceeded,
            9 => ErrorCode::SequenceViolation,
            10 => ErrorCode::LimitExceeded,
            11 => ErrorCode::Timeout,
            12 => ErrorCode::Internal,
            13 => ErrorCode::Unauthorized,
            14 => ErrorCode::ShuttingDown,
            other => ErrorCode::Other(other),
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.to_u16())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(ErrorCode::from_u16)
    }
}

/// Sent before closing the stream: what went wrong, in words an SRE can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorFrame {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate_utf8(&mut message, ERROR_MESSAGE_BYTES_MAX);
        Self { code, message }
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub nonce: u64,
}

/// Any v1 message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    EventBatch(EventBatch),
    RecordChanges(RecordChanges),
    Ack(Ack),
    DownBatch(DownBatch),
    DownAck(DownAck),
    HeadsSummary(HeadsSummary),
    RepairChanges(RepairChanges),
    EdgeStatus(EdgeStatus),
    CertRenewRequest(CertRenewRequest),
    CertRenewResponse(CertRenewResponse),
    HubGeneration(HubGeneration),
    GapQuery(GapQuery),
    GapSummaries(GapSummaries),
    GapIdsQuery(GapIdsQuery),
    GapIds(GapIds),
    HealReport(HealReport),
    Error(ErrorFrame),
    Ping(Ping),
    Pong(Pong),
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Welcome(_) => MessageType::Welcome,
            Message::EventBatch(_) => MessageType::EventBatch,
            Message::RecordChanges(_) => MessageType::RecordChanges,
            Message::Ack(_) => MessageType::Ack,
            Message::DownBatch(_) => MessageType::DownBatch,
            Message::DownAck(_) => MessageType::DownAck,
            Message::HeadsSummary(_) => MessageType::HeadsSummary,
            Message::RepairChanges(_) => MessageType::RepairChanges,
            Message::EdgeStatus(_) => MessageType::EdgeStatus,
            Message::CertRenewRequest(_) => MessageType::CertRenewRequest,
            Message::CertRenewResponse(_) => MessageType::CertRenewResponse,
            Message::HubGeneration(_) => MessageType::HubGeneration,
            Message::GapQuery(_) => MessageType::GapQuery,
            Message::GapSummaries(_) => MessageType::GapSummaries,
            Message::GapIdsQuery(_) => MessageType::GapIdsQuery,
            Message::GapIds(_) => MessageType::GapIds,
            Message::HealReport(_) => MessageType::HealReport,
            Message::Error(_) => MessageType::Error,
            Message::Ping(_) => MessageType::Ping,
            Message::Pong(_) => MessageType::Pong,
        }
    }

    /// Appends the postcard body (no frame header) to `out`.
    pub(crate) fn encode_body(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
        match self {
            Message::Hello(m) => postcard::to_extend(m, out),
            Message::Welcome(m) => postcard::to_extend(m, out),
            Message::EventBatch(m) => postcard::to_extend(m, out),
            Message::RecordChanges(m) => postcard::to_extend(m, out),
            Message::Ack(m) => postcard::to_extend(m, out),
            Message::DownBatch(m) => postcard::to_extend(m, out),
            Message::DownAck(m) => postcard::to_extend(m, out),
            Message::HeadsSummary(m) => postcard::to_extend(m, out),
            Message::RepairChanges(m) => postcard::to_extend(m, out),
            Message::EdgeStatus(m) => postcard::to_extend(m, out),
            Message::CertRenewRequest(m) => postcard::to_extend(m, out),
            Message::CertRenewResponse(m) => postcard::to_extend(m, out),
            Message::HubGeneration(m) => postcard::to_extend(m, out),
            Message::GapQuery(m) => postcard::to_extend(m, out),
            Message::GapSummaries(m) => postcard::to_extend(m, out),
            Message::GapIdsQuery(m) => postcard::to_extend(m, out),
            Message::GapIds(m) => postcard::to_extend(m, out),
            Message::HealReport(m) => postcard::to_extend(m, out),
            Message::Error(m) => postcard::to_extend(m, out),
            Message::Ping(m) => postcard::to_extend(m, out),
            Message::Pong(m) => postcard::to_extend(m, out),
        }
    }

    /// Decodes a body of the given type. The whole body must be consumed: trailing bytes mean
    /// the peer and we disagree on the layout, which is an error, not something to ignore.
    pub(crate) fn decode_body(ty: MessageType, body: &[u8]) -> Result<Self, postcard::Error> {
        fn exact<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, postcard::Error> {
            let (value, rest) = postcard::take_from_bytes(body)?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(postcard::Error::DeserializeBadEncoding)
            }
        }
        Ok(match ty {
            MessageType::Hello => Message::Hello(exact(body)?),
            MessageType::Welcome => Message::Welcome(exact(body)?),
            MessageType::EventBatch => Message::EventBatch(exact(body)?),
            MessageType::RecordChanges => Message::RecordChanges(exact(body)?),
            MessageType::Ack => Message::Ack(exact(body)?),
            MessageType::DownBatch => Message::DownBatch(exact(body)?),
            MessageType::DownAck => Message::DownAck(exact(body)?),
            MessageType::HeadsSummary => Message::HeadsSummary(exact(body)?),
            MessageType::RepairChanges => Message::RepairChanges(exact(body)?),
            MessageType::EdgeStatus => Message::EdgeStatus(exact(body)?),
            MessageType::CertRenewRequest => Message::CertRenewRequest(exact(body)?),
            MessageType::CertRenewResponse => Message::CertRenewResponse(exact(body)?),
            MessageType::HubGeneration => Message::HubGeneration(exact(body)?),
            MessageType::GapQuery => Message::GapQuery(exact(body)?),
            MessageType::GapSummaries => Message::GapSummaries(exact(body)?),
            MessageType::GapIdsQuery => Message::GapIdsQuery(exact(body)?),
            MessageType::GapIds => Message::GapIds(exact(body)?),
            MessageType::HealReport => Message::HealReport(exact(body)?),
            MessageType::Error => Message::Error(exact(body)?),
            MessageType::Ping => Message::Ping(exact(body)?),
            MessageType::Pong => Message::Pong(exact(body)?),
        })
    }
}

#[cfg(test)]
mod record_kind_names {
    //! The stored names of record kinds round-trip and are the ones both stores were written
    //! with (changing one would orphan every stored record of that kind).

    use super::RecordKind;

    #[test]
    fn names_round_trip_and_are_stable() {
        assert_eq!(
            RecordKind::ALL.map(RecordKind::as_str),
            ["work_order", "non_conformance", "lot_hold"]
        );
        for k in RecordKind::ALL {
            assert_eq!(k.as_str().parse::<RecordKind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert!("WorkOrder".parse::<RecordKind>().is_err());
    }
}
