//! The edge–hub sync protocol, without I/O.
//!
//! Like `quinn-proto`, this crate contains no networking code and never reads a clock: bytes
//! and `now` go in through [`EdgeSession::handle_frame`] / [`HubSession::handle_frame`] and
//! `handle_timeout`, frames come out of `poll_transmit` and work for the store comes out of
//! `poll_event`. The same code therefore runs under the real QUIC transport, the deterministic
//! simulator and the fuzzer.
//!
//! * [`frame`]: the `u32 length · u16 type · postcard body` framing and two-phase decoding.
//! * [`message`]: every v1 message; the wire contract documented in `docs/protocol.md`.
//! * [`session`]: the state machines for the edge end and the hub end.
//! * [`store`]: the store traits those state machines are driven against, and [`driver`]
//!   the glue that pumps session events into a store.
//! * [`memory`]: in-memory stores for tests and the simulator.
//! * [`gap`]: summaries of events by recording time, to find what a restored hub lost.
//! * [`records`]: the Automerge document layout of shared records, used by both ends.
//! * [`enroll`]: the enrollment token and the JSON of the hub's enrollment endpoint.

pub mod driver;
pub mod enroll;
pub mod frame;
pub mod fuzzing;
pub mod gap;
pub mod memory;
pub mod message;
pub mod records;
pub mod session;
pub mod store;

pub use frame::{DecodeError, FrameDecoder, FrameHeader};
pub use message::{ErrorCode, Message, MessageType};
pub use session::{
    CloseReason, EdgeEvent, EdgeSession, HubEvent, HubSession, Limits, SessionConfig,
};

/// The protocol major version this build speaks. A new major version gets a new ALPN id, so
/// old and new peers never misread each other's frames.
pub const PROTOCOL_VERSION: u16 = 1;

/// The QUIC ALPN id of protocol version 1.
pub const ALPN_V1: &[u8] = b"mes-sync/1";

/// QUIC application close codes (`CONNECTION_CLOSE` of type 0x1d) of version 1, with a
/// reason text for people. They say why a *connection* ended before or around a session; why a
/// session ended is its `error` frame ([`ErrorCode`]). `docs/protocol.md` lists them.
pub mod close_code {
    /// The session is over; its `error` frame (if any) said why.
    pub const DONE: u32 = 0;
    /// The hub instance has no connection slot free: reconnect later (with backoff).
    pub const BUSY: u32 = 1;
    /// A newer connection of the same site took this one's place: the site already had the
    /// most live connections the hub allows it. Nothing acked is lost; nothing unacked was
    /// stored twice (ingest is idempotent).
    pub const REPLACED: u32 = 2;
    /// No stream was opened in time after the handshake.
    pub const STREAM_TIMEOUT: u32 = 3;
    /// The client certificate does not name a valid site.
    pub const UNAUTHORIZED: u32 = 4;
}
