//! A loopback of one edge session and one hub session over in-memory byte pipes, driven by
//! the real driver against the in-memory stores. Tests choose how bytes are chunked, when
//! connections drop and how time moves.

use std::collections::VecDeque;
use std::time::Duration;

use sync_protocol::driver::{DriveError, DriveReport, drive_edge, drive_hub};
use sync_protocol::memory::{MemoryEdgeStore, MemoryHubStore, MemoryStoreError, block_on_ready};
use sync_protocol::session::{EdgeSession, HubSession, SessionConfig};

use crate::samples::{T0, site};

/// What one run of a driver came to.
pub(crate) type Driven = Result<DriveReport, DriveError<MemoryStoreError>>;

pub(crate) struct Loopback {
    pub(crate) edge_store: MemoryEdgeStore,
    pub(crate) hub_store: MemoryHubStore,
    pub(crate) edge: EdgeSession,
    pub(crate) hub: HubSession,
    pub(crate) edge_to_hub: VecDeque<u8>,
    pub(crate) hub_to_edge: VecDeque<u8>,
    pub(crate) now: Duration,
    pub(crate) config: SessionConfig,
}

impl Loopback {
    pub(crate) fn new(config: SessionConfig) -> Self {
        let edge_store = MemoryEdgeStore::new();
        let hub_store = MemoryHubStore::new();
        let now = Duration::ZERO;
        let edge = EdgeSession::new(config.clone(), 0, now);
        let hub = HubSession::new(config.clone(), site(), T0, now);
        Self {
            edge_store,
            hub_store,
            edge,
            hub,
            edge_to_hub: VecDeque::new(),
            hub_to_edge: VecDeque::new(),
            now,
            config,
        }
    }

    /// Drops the connection (everything in flight is lost) and opens a new one, as the edge
    /// does after a WAN outage.
    pub(crate) fn reconnect(&mut self) {
        self.edge_to_hub.clear();
        self.hub_to_edge.clear();
        let cursor = block_on_ready(sync_protocol::store::EdgeStore::down_cursor(
            &self.edge_store,
        ))
        .unwrap();
        self.edge = EdgeSession::new(self.config.clone(), cursor, self.now);
        self.hub = HubSession::new(self.config.clone(), site(), T0, self.now);
    }

    /// Runs the edge's driver once, leaving the frames queued in the session.
    pub(crate) fn drive_edge(&mut self) -> Driven {
        block_on_ready(drive_edge(&mut self.edge, &self.edge_store, self.now))
    }

    /// Runs the hub's driver once, leaving the frames queued in the session.
    pub(crate) fn drive_hub(&mut self) -> Driven {
        block_on_ready(drive_hub(&mut self.hub, &self.hub_store, self.now))
    }

    /// Runs both drivers and moves every queued frame into its pipe.
    pub(crate) fn drive(&mut self) {
        self.drive_edge().unwrap();
        self.drive_hub().unwrap();
        while let Some(f) = self.edge.poll_transmit() {
            self.edge_to_hub.extend(f);
        }
        while let Some(f) = self.hub.poll_transmit() {
            self.hub_to_edge.extend(f);
        }
    }

    /// Delivers up to `n` bytes each way.
    pub(crate) fn deliver(&mut self, n: usize) {
        let up = take_front(&mut self.edge_to_hub, n);
        if !up.is_empty() {
            self.hub.handle_stream_bytes(self.now, &up);
        }
        let down = take_front(&mut self.hub_to_edge, n);
        if !down.is_empty() {
            self.edge.handle_stream_bytes(self.now, &down);
        }
    }

    /// Drives and delivers everything until nothing moves any more. Bounded, so a livelock
    /// fails the test instead of hanging it.
    pub(crate) fn settle(&mut self) {
        for _ in 0..10_000 {
            self.drive();
            if self.edge_to_hub.is_empty() && self.hub_to_edge.is_empty() {
                return;
            }
            self.deliver(usize::MAX);
        }
        panic!("loopback did not settle in 10,000 rounds");
    }
}

/// Up to `n` bytes off the front of `bytes`.
fn take_front(bytes: &mut VecDeque<u8>, n: usize) -> Vec<u8> {
    bytes.drain(..n.min(bytes.len())).collect()
}
