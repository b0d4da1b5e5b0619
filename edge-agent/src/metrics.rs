//! Prometheus metrics, rendered in the OpenMetrics text format by `GET /metrics`
//! (`prometheus-client`; [`CONTENT_TYPE`]).
//!
//! Updates are the crate's atomics (a counter add is one atomic add on the request path);
//! the outbox depths, terminal sessions and certificate figures are read at scrape time
//! ([`Scraped`]).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text; Prometheus negotiates it.
pub use service_kit::metrics::CONTENT_TYPE;

/// A monotonic counter.
#[derive(Debug, Default, Clone)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

const LATENCY_BOUNDS_S: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A route template (a code constant: never the raw path, whose ids would make the label
/// set unbounded) and the response status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    status: u16,
}

/// A route template, written verbatim: templates hold no character the text format escapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Route(&'static str);

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        debug_assert!(
            !self.0.contains(['"', '\\', '\n']),
            "{}: a route template needs no escaping",
            self.0
        );
        std::fmt::Write::write_str(encoder, self.0)
    }
}

#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, prometheus_client::metrics::counter::Counter>,
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
            requests: Family::default(),
            request_duration: Histogram::new(LATENCY_BOUNDS_S.iter().copied()),
            commit_batch_size: Histogram::new(BATCH_BOUNDS.iter().copied()),
            commit_failures: Counter::default(),
            events_stored: Counter::default(),
            events_pruned: Counter::default(),
        }
    }
}

/// The figures `GET /metrics` reads at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Scraped {
    pub pending_events: u64,
    pub pending_changes: u64,
    /// Badge sessions of operator terminals.
    pub terminal_sessions: usize,
    /// Seconds until the sync client's certificate expires, when it has one.
    pub certificate_expiry_seconds: Option<i64>,
    /// Certificates renewed over the sync session by this process.
    pub certificate_renewals: u64,
}

impl Metrics {
    /// Counts a request under its route template (never the raw path: ids would make the
    /// label set unbounded).
    pub fn record_request(&self, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: Route(route),
                status,
            })
            .inc();
        self.request_duration.observe(seconds);
    }

    /// The exposition text, with the figures read at scrape time.
    pub fn render(&self, now: Scraped, connectors: &[ConnectorFigures]) -> String {
        // The crate appends each help text's full stop; counters are registered without the
        // `_total` their samples carry.
        let mut r = Registry::default();
        r.register(
            "edge_http_requests",
            "HTTP requests by route and status",
            self.requests.clone(),
        );
        r.register(
            "edge_http_request_duration_seconds",
            "HTTP request latency",
            self.request_duration.clone(),
        );
        r.register(
            "edge_commit_batch_size",
            "Write jobs committed per SQLite transaction (group commit)",
            self.commit_batch_size.clone(),
        );
        let pending = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        for (kind, n) in [
            ("event", now.pending_events),
            ("change", now.pending_changes),
        ] {
            pending
                .get_or_create(&[("kind", kind)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        r.register(
            "edge_outbox_pending",
            "Entries waiting for the hub's ack",
            pending,
        );
        for (name, help, c) in [
            (
                "edge_events_stored",
                "Events durably stored",
                &self.events_stored,
            ),
            (
                "edge_events_pruned",
                "Acknowledged events removed by retention",
                &self.events_pruned,
            ),
            (
                "edge_commit_failures",
                "Group commits that failed",
                &self.commit_failures,
            ),
        ] {
            r.register(name, help, c.0.clone());
        }
        r.register(
            "edge_terminal_sessions",
            "Badge sessions of operator terminals",
            ConstGauge::new(i64::try_from(now.terminal_sessions).unwrap_or(i64::MAX)),
        );
        if let Some(left) = now.certificate_expiry_seconds {
            r.register(
                "edge_sync_certificate_expiry_seconds",
                "Seconds until the certificate the sync client presents expires",
                ConstGauge::new(left),
            );
        }
        r.register(
            "edge_sync_certificate_renewals",
            "Certificates renewed over the sync session by this process",
            ConstCounter::new(now.certificate_renewals),
        );
        register_connectors(&mut r, connectors);
        let mut out = String::with_capacity(4096);
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}

/// A machine connector's figures at scrape time (the API reads them off its health).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectorFigures {
    pub name: String,
    pub up: bool,
    pub messages: u64,
    pub events: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub reconnects: u64,
    pub lag_seconds: Option<f64>,
}

/// Each connector's figures, labelled by its name (names are checked to be short and plain, so
/// the label set is bounded by the config file).
fn register_connectors(r: &mut Registry, connectors: &[ConnectorFigures]) {
    type Labels = [(&'static str, String); 1];
    let up = Family::<Labels, Gauge>::default();
    let lag = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    type Figure = fn(&ConnectorFigures) -> u64;
    let counters: [(&str, &str, Figure); 5] = [
        (
            "edge_connector_messages",
            "Messages or polls a connector received",
            |s| s.messages,
        ),
        (
            "edge_connector_events",
            "Events stored from a connector's readings",
            |s| s.events,
        ),
        (
            "edge_connector_rejected",
            "Readings a connector's tags could not use",
            |s| s.rejected,
        ),
        (
            "edge_connector_dropped",
            "Messages that matched no tag or could not be decoded",
            |s| s.dropped,
        ),
        (
            "edge_connector_reconnects",
            "Times a connector reconnected to its machines",
            |s| s.reconnects,
        ),
    ];
    for s in connectors {
        let l = [("connector", s.name.clone())];
        up.get_or_create(&l).set(i64::from(s.up));
        if let Some(v) = s.lag_seconds {
            lag.get_or_create(&l).set(v);
        }
    }
    r.register(
        "edge_connector_up",
        "Whether a connector's link to its machines is up (1) or not (0)",
        up,
    );
    r.register(
        "edge_connector_lag_seconds",
        "Seconds from a machine's timestamp to the committed event, last reading",
        lag,
    );
    for (name, help, get) in counters {
        let family = Family::<Labels, prometheus_client::metrics::counter::Counter>::default();
        for s in connectors {
            family
                .get_or_create(&[("connector", s.name.clone())])
                .inc_by(get(s));
        }
        r.register(name, help, family);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_keeps_the_names_and_values() {
        let m = Metrics::default();
        m.record_request("/api/v1/events", 201, 0.003);
        m.commit_batch_size.observe(3.0);
        m.events_stored.add(7);
        let text = m.render(
            Scraped {
                pending_events: 5,
                pending_changes: 2,
                terminal_sessions: 1,
                certificate_expiry_seconds: Some(3600),
                certificate_renewals: 1,
            },
            &[],
        );
        service_kit::metrics::assert_exposition(
            &text,
            &[
                "edge_http_requests_total{route=\"/api/v1/events\",status=\"201\"} 1\n",
                "edge_http_request_duration_seconds_bucket{le=\"0.005\"} 1\n",
                "edge_http_request_duration_seconds_count 1\n",
                "edge_commit_batch_size_bucket{le=\"4.0\"} 1\n",
                "# HELP edge_outbox_pending Entries waiting for the hub's ack.\n# TYPE edge_outbox_pending gauge\n",
                "edge_outbox_pending{kind=\"event\"} 5\n",
                "edge_outbox_pending{kind=\"change\"} 2\n",
                "edge_events_stored_total 7\n",
                "edge_events_pruned_total 0\n",
                "edge_commit_failures_total 0\n",
                "edge_terminal_sessions 1\n",
                "edge_sync_certificate_expiry_seconds 3600\n",
                "edge_sync_certificate_renewals_total 1\n",
            ],
        );
    }
}
