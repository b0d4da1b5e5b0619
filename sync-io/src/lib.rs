//! The tokio/quinn driver of one sync session, shared by the edge agent and the hub.
//!
//! `sync-protocol` is sans-IO (like `quinn-proto`): bytes and `now` go in, frames and events
//! come out. This crate is the one loop that connects such a session to a QUIC stream (like
//! `quinn` over `quinn-proto`): it reads stream bytes into the session, fires its timers, writes
//! what it transmits, and, after every input, lets the side drive the session's work into its
//! store. Both ends run exactly this loop; what differs between them (which store, which
//! wake-ups, what a report means for metrics and the operator) is the [`Side`] they plug in.
//!
//! Accepting, dialling and TLS stay in the binaries: [`pump`] starts with an open stream and
//! ends when the session is over, the side stops it, or the stream fails.

use std::future::Future;
use std::time::{Duration, Instant};

use quinn::{ReadError, RecvStream, SendStream, WriteError};
use sync_protocol::{EdgeSession, HubSession};

/// Bytes read from the stream at a time: the per-connection read buffer.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// After the session closed, how long the peer gets to take our last frames (the error frame
/// saying why) before the caller closes the connection anyway.
pub const FINISH_WAIT: Duration = Duration::from_secs(2);

/// What the pump needs of a session state machine: the sans-IO surface both ends share.
pub trait Session: Send {
    fn handle_stream_bytes(&mut self, now: Duration, bytes: &[u8]);
    fn handle_timeout(&mut self, now: Duration);
    fn poll_timeout(&self) -> Option<Duration>;
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    fn is_closed(&self) -> bool;
}

/// Both session types have these as inherent methods; the trait only names them once.
macro_rules! session_impl {
    ($($ty:ty),*) => {$(
        impl Session for $ty {
            fn handle_stream_bytes(&mut self, now: Duration, bytes: &[u8]) {
                <$ty>::handle_stream_bytes(self, now, bytes)
            }
            fn handle_timeout(&mut self, now: Duration) {
                <$ty>::handle_timeout(self, now)
            }
            fn poll_timeout(&self) -> Option<Duration> {
                <$ty>::poll_timeout(self)
            }
            fn poll_transmit(&mut self) -> Option<Vec<u8>> {
                <$ty>::poll_transmit(self)
            }
            fn is_closed(&self) -> bool {
                <$ty>::is_closed(self)
            }
        }
    )*};
}
session_impl!(EdgeSession, HubSession);

/// The session's time base: `now` is the time since the connection's origin, as the sans-IO
/// sessions want it, and a session deadline maps back to an [`Instant`] for the timer.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose origin is this instant.
    pub fn start() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The instant of a session time (a `poll_timeout` deadline).
    pub fn instant(&self, at: Duration) -> Instant {
        self.origin + at
    }
}

/// Whether the pump goes on after a side's wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End the pump at once, without flushing: the side has its own way to end the connection
    /// (the hub's replacement by a newer connection of the site).
    Stop,
}

/// How a pump ended.
#[derive(Debug)]
pub enum End {
    /// The session closed (either end said why in an error frame); its last frames were
    /// written and the stream finished.
    Closed,
    /// The side returned [`Flow::Stop`].
    Stopped,
    /// The peer finished its stream while the session was still open.
    PeerFinished,
    Read(ReadError),
    Write(WriteError),
}

/// Tuning of the loop that differs between the ends.
#[derive(Debug, Clone, Copy)]
pub struct PumpConfig {
    /// When the session names no deadline, the timer fires after this long anyway.
    pub fallback_timeout: Duration,
    /// Most bytes taken from the stream, after a read, without waiting before the session's
    /// work is driven (0: one read per turn). A backlog's consecutive batches then reach the
    /// store together: one ingest (one commit) per group instead of one per frame.
    pub group_read_bytes_max: usize,
}

/// One end of the connection: the store work and the application around the session.
///
/// Every method gets the session; none may block for long, since the stream is not read while
/// it runs (the store calls are the exception the protocol's window bounds).
pub trait Side: Send {
    type Session: Session;
    /// A side-specific input: a notification, a tick, a shutdown.
    type Wake: Send;

    /// Does the session's pending work against the store (`sync_protocol::driver`) and acts
    /// on what it reports. Called before every transmit, so after every input.
    fn drive(
        &mut self,
        session: &mut Self::Session,
        now: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// Waits for the next side-specific input. Must be cancel-safe: the pump drops it whenever
    /// the stream or the timer is ready first. By default there is none.
    fn wake(&mut self) -> impl Future<Output = Self::Wake> + Send {
        std::future::pending()
    }

    /// Acts on an input [`Side::wake`] returned. By default: nothing, go on.
    fn on_wake(
        &mut self,
        session: &mut Self::Session,
        wake: Self::Wake,
        now: Duration,
    ) -> impl Future<Output = Flow> + Send {
        let _ = (session, wake, now);
        std::future::ready(Flow::Continue)
    }

    /// The session is closed and its last frames are written; called before the stream is
    /// finished (logs and metrics of why it ended). By default: nothing.
    fn on_closed(&mut self, session: &Self::Session) {
        let _ = session;
    }
}

/// Writes every frame the session has queued, in one write. `out` is a reusable buffer.
pub async fn transmit<S: Session>(
    session: &mut S,
    send: &mut SendStream,
    out: &mut Vec<u8>,
) -> Result<(), WriteError> {
    out.clear();
    while let Some(frame) = session.poll_transmit() {
        out.extend_from_slice(&frame);
    }
    if out.is_empty() {
        return Ok(());
    }
    send.write_all(out).await
}

/// Finishes the stream and gives the peer [`FINISH_WAIT`] to take what was written.
pub async fn finish(send: &mut SendStream) {
    // A stream that cannot be finished was already finished or reset: nothing is left to
    // deliver and nothing to wait for.
    if send.finish().is_ok() {
        // Whether the peer took it all, stopped the stream or went away, the session is over
        // either way; the wait only gives a live peer the chance to read the error frame.
        match tokio::time::timeout(FINISH_WAIT, send.stopped()).await {
            Ok(Ok(_) | Err(_)) | Err(_) => {}
        }
    }
}

/// Runs one session over one bidirectional stream (as `open_bi`/`accept_bi` return it) until
/// it ends. The session must be new
/// (its opening frame, if any, still queued); `clock` is the time base it was made with.
pub async fn pump<S: Side>(
    side: &mut S,
    session: &mut S::Session,
    (mut send, mut recv): (SendStream, RecvStream),
    clock: Clock,
    config: PumpConfig,
) -> End {
    let (send, recv) = (&mut send, &mut recv);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut out = Vec::with_capacity(READ_BUFFER_BYTES);
    loop {
        side.drive(session, clock.now()).await;
        if let Err(e) = transmit(session, send, &mut out).await {
            return End::Write(e);
        }
        if session.is_closed() {
            side.on_closed(session);
            finish(send).await;
            return End::Closed;
        }
        let deadline = session
            .poll_timeout()
            .map(|t| clock.instant(t))
            .unwrap_or_else(|| Instant::now() + config.fallback_timeout);
        tokio::select! {
            r = recv.read(&mut buf) => match r {
                Ok(Some(n)) => {
                    session.handle_stream_bytes(clock.now(), &buf[..n]);
                    read_more(session, recv, &mut buf, n, clock, config.group_read_bytes_max);
                }
                Ok(None) => return End::PeerFinished,
                Err(e) => return End::Read(e),
            },
            () = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(clock.now()),
            wake = side.wake() => {
                if side.on_wake(session, wake, clock.now()).await == Flow::Stop {
                    return End::Stopped;
                }
            }
        }
    }
}

/// Takes in whatever else has already arrived, without waiting, up to `bytes_max` in all.
/// `read` is cancel-safe, so a poll that finds nothing loses nothing; the end of the stream or
/// an error shows up again at the pump's next read.
fn read_more<S: Session>(
    session: &mut S,
    recv: &mut RecvStream,
    buf: &mut [u8],
    already: usize,
    clock: Clock,
    bytes_max: usize,
) {
    let mut taken = already;
    while taken < bytes_max && !session.is_closed() {
        match futures_util::FutureExt::now_or_never(recv.read(buf)) {
            Some(Ok(Some(m))) => {
                session.handle_stream_bytes(clock.now(), &buf[..m]);
                taken += m;
            }
            Some(Ok(None) | Err(_)) | None => break,
        }
    }
}
