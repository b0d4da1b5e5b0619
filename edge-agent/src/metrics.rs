//! Prometheus metrics, rendered in the text exposition format by `GET /metrics`.
//!
//! Hand-rolled on atomics: a handful of counters and histograms do not justify a registry
//! crate, and every update is one atomic add on the request path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in millionths, so it fits an atomic integer.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const LATENCY_BOUNDS_S: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub request_duration: Histogram,
    /// Jobs per group commit.
    pub commit_batch_size: Histogram,
    pub commit_failures: Counter,
    pub events_stored: Counter,
    pub events_pruned: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            request_duration: Histogram::new(LATENCY_BOUNDS_S),
            commit_batch_size: Histogram::new(BATCH_BOUNDS),
            commit_failures: Counter::default(),
            events_stored: Counter::default(),
            events_pruned: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts a request under its route template (never the raw path: ids would make the
    /// label set unbounded).
    pub fn record_request(&self, route: &'static str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route, status))
            .or_default() += 1;
        self.request_duration.observe(seconds);
    }

    /// The exposition text; `pending` are the outbox depths by kind, read at scrape time.
    pub fn render(&self, pending_events: u64, pending_changes: u64) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP edge_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE edge_http_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "edge_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        self.request_duration.render(
            &mut out,
            "edge_http_request_duration_seconds",
            "HTTP request latency.",
        );
        self.commit_batch_size.render(
            &mut out,
            "edge_commit_batch_size",
            "Write jobs committed per SQLite transaction (group commit).",
        );
        let _ = writeln!(
            out,
            "# HELP edge_outbox_pending Entries waiting for the hub's ack.\n# TYPE edge_outbox_pending gauge\nedge_outbox_pending{{kind=\"event\"}} {pending_events}\nedge_outbox_pending{{kind=\"change\"}} {pending_changes}"
        );
        for (name, help, c) in [
            (
                "edge_events_stored_total",
                "Events durably stored.",
                &self.events_stored,
            ),
            (
                "edge_events_pruned_total",
                "Acknowledged events removed by retention.",
                &self.events_pruned,
            ),
            (
                "edge_commit_failures_total",
                "Group commits that failed.",
                &self.commit_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        out
    }
}
