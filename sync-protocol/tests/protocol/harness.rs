//! A loopback of one edge session and one hub session over in-memory byte pipes, driven by
//! the real driver against the in-memory stores. Tests choose how bytes are chunked, when
//! connections drop and how time moves.

use std::collections::VecDeque;
use std::time::Duration;

use sync_protocol::driver::{drive_edge, drive_hub};
use sync_protocol::memory::{MemoryEdgeStore, MemoryHubStore, block_on_ready};
use sync_protocol::session::{EdgeSession, HubSession, SessionConfig};

use crate::samples::{T0, site};

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

    /// Runs both drivers and moves every queued frame into its pipe.
    pub(crate) fn drive(&mut self) {
        block_on_ready(drive_edge(&mut self.edge, &self.edge_store, self.now)).unwrap();
        block_on_ready(drive_hub(&mut self.hub, &self.hub_store, self.now)).unwrap();
        while let Some(f) = self.edge.poll_transmit() {
            self.edge_to_hub.extend(f);
        }
        while let Some(f) = self.hub.poll_transmit() {
            self.hub_to_edge.extend(f);
        }
    }

    /// Delivers up to `n` bytes each way.
    pub(crate) fn deliver(&mut self, n: usize) {
        let up: Vec<u8> = self
            .edge_to_hub
            .drain(..n.min(self.edge_to_hub.len()))
            .collect();
        if !up.is_empty() {
            self.hub.handle_stream_bytes(self.now, &up);
        }
        let down: Vec<u8> = self
            .hub_to_edge
            .drain(..n.min(self.hub_to_edge.len()))
            .collect();
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
