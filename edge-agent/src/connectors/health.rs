//! What each connector is doing, for `GET /api/v1/connectors`, `/metrics`, the terminal and
//! `doctor`. The driver writes it, everyone else reads a snapshot.

use std::sync::Mutex;

use serde::Serialize;
use shared_model::Timestamp;

/// Longest error text kept (a server's message can be long).
const ERROR_BYTES_MAX: usize = 500;

/// The link to the machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Configured but switched off (`enabled = false`).
    Disabled,
    Connecting,
    Up,
    /// Lost; the driver retries with backoff.
    Down,
    /// Stopped by a reload or shutdown.
    Stopped,
}

/// A connector's health at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub name: String,
    pub kind: &'static str,
    pub link: Link,
    /// When `link` last changed.
    pub since: Timestamp,
    /// When a value last arrived.
    pub last_value_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    /// Messages or polls received.
    pub messages: u64,
    /// Events stored from them.
    pub events: u64,
    /// Readings that could not be used (a value a tag cannot mean, an unknown reference).
    pub rejected: u64,
    /// Messages that matched no tag or could not be decoded.
    pub dropped: u64,
    pub reconnects: u64,
    /// Seconds from the machine's timestamp to the committed event, of the last reading that
    /// had one.
    pub lag_seconds: Option<f64>,
    pub tags: usize,
    /// The machines (equipment ids) this connector reads or writes.
    pub equipment: Vec<String>,
    /// The newest order write per unit since the agent started.
    pub writes: Vec<super::store::WriteResult>,
}

#[derive(Debug)]
pub struct Health {
    inner: Mutex<Snapshot>,
}

impl Health {
    pub fn new(
        name: &str,
        kind: &'static str,
        tags: usize,
        equipment: Vec<String>,
        now: Timestamp,
    ) -> Self {
        Self {
            inner: Mutex::new(Snapshot {
                name: name.to_owned(),
                kind,
                link: Link::Connecting,
                since: now,
                last_value_at: None,
                last_error: None,
                last_error_at: None,
                messages: 0,
                events: 0,
                rejected: 0,
                dropped: 0,
                reconnects: 0,
                lag_seconds: None,
                tags,
                equipment,
                writes: Vec::new(),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| s.clone())
    }

    pub fn link(&self, link: Link, now: Timestamp) {
        self.with(|s| {
            if s.link != link {
                if link == Link::Connecting && s.link == Link::Down {
                    s.reconnects += 1;
                }
                s.link = link;
                s.since = now;
            }
        });
    }

    pub fn error(&self, error: &str, now: Timestamp) {
        let mut e = error.to_owned();
        if e.len() > ERROR_BYTES_MAX {
            let mut cut = ERROR_BYTES_MAX;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
        }
        self.with(|s| {
            s.last_error = Some(e);
            s.last_error_at = Some(now);
        });
    }

    /// A message (or poll) arrived, with `n` readings from it.
    pub fn received(&self, now: Timestamp) {
        self.with(|s| {
            s.messages += 1;
            s.last_value_at = Some(now);
        });
    }

    pub fn wrote(&self, w: super::store::WriteResult) {
        self.with(|s| {
            s.writes.retain(|x| x.equipment != w.equipment);
            s.writes.push(w);
        });
    }

    pub fn dropped(&self, n: u64) {
        self.with(|s| s.dropped += n);
    }

    /// A commit's outcome; `source` is the newest machine timestamp among its readings.
    pub fn committed(
        &self,
        c: &super::store::Committed,
        source: Option<Timestamp>,
        now: Timestamp,
    ) {
        self.with(|s| {
            s.events += c.events as u64;
            s.rejected += c.rejected.len() as u64;
            if let Some((tag, why)) = c.rejected.last() {
                s.last_error = Some(format!("tag {tag}: {why}"));
                s.last_error_at = Some(now);
            }
            if let Some(t) = source {
                s.lag_seconds = Some(now.micros_since(t) as f64 / 1e6);
            }
        });
    }
}
