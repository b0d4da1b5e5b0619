//! Prometheus metrics of one hub process, under the names of the deployment guide
//! (`mes_http_*`, `mes_db_*`, `mes_cache_*`, the per-site business gauges) plus the sync
//! metrics. `deploy/prometheus/alerts.yml` and `deploy/grafana/mes-hub.json` use exactly these
//! names; `tests/tests/deploy.rs` checks that every name they use is exported.
//!
//! Histograms and counters are process-wide statics (as with Prometheus' default registry):
//! the database layer times queries deep inside the store, where no handle is passed. Label
//! sets are bounded ([`SERIES_MAX`]) so a flood of odd paths cannot grow memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Most label values one metric keeps; further ones are counted under `other`.
pub const SERIES_MAX: usize = 512;

/// Upper bounds (seconds) of the query-duration histogram's buckets.
pub const QUERY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Upper bounds (seconds) of the HTTP latency histogram's buckets.
pub const HTTP_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone)]
struct Series {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram with one label.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    series: Mutex<BTreeMap<String, Series>>,
}

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, label: &str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut map = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if map.contains_key(label) || map.len() < SERIES_MAX {
            label
        } else {
            "other"
        };
        let s = map.entry(key.to_owned()).or_insert_with(|| Series {
            buckets: vec![0; self.bounds.len()],
            sum: 0.0,
            count: 0,
        });
        for (i, b) in self.bounds.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
        s.sum += secs;
        s.count += 1;
    }

    /// Appends the exposition text (`_bucket`, `_sum`, `_count`).
    pub fn render(&self, out: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let map = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (value, s) in map.iter() {
            let v = escape(value);
            for (b, n) in self.bounds.iter().zip(&s.buckets) {
                let _ = writeln!(out, "{name}_bucket{{{label}=\"{v}\",le=\"{b}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{v}\",le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(out, "{name}_sum{{{label}=\"{v}\"}} {}", s.sum);
            let _ = writeln!(out, "{name}_count{{{label}=\"{v}\"}} {}", s.count);
        }
    }
}

/// A counter keyed by a tuple of label values.
#[derive(Debug, Default)]
pub struct Counter {
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Counter {
    pub const fn new() -> Self {
        Self {
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        let mut map = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        let key = if map.contains_key(&key) || map.len() < SERIES_MAX {
            key
        } else {
            labels.iter().map(|_| "other".to_owned()).collect()
        };
        *map.entry(key).or_insert(0) += n;
    }

    pub fn get(&self, labels: &[&str]) -> u64 {
        let map = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        map.get(&key).copied().unwrap_or(0)
    }

    /// Appends the exposition text; `names` are the label names in key order.
    pub fn render(&self, out: &mut String, name: &str, help: &str, names: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let map = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (values, n) in map.iter() {
            let labels: Vec<String> = names
                .iter()
                .zip(values)
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{name}{{{}}} {n}", labels.join(","));
        }
    }
}

/// Escapes a label value for the text format.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `mes_http_requests_total{method,route,status}`.
pub static HTTP_REQUESTS: Counter = Counter::new();
/// `mes_http_request_duration_seconds{route}`.
pub static HTTP_DURATION: Histogram = Histogram::new(&HTTP_BUCKETS);
/// `mes_db_query_duration_seconds{query}`.
pub static QUERIES: Histogram = Histogram::new(&QUERY_BUCKETS);
/// `mes_sync_frames_rejected_total{reason}`: sessions the hub closed for a protocol
/// violation or refused (by error code), and connections refused at the limit.
pub static FRAMES_REJECTED: Counter = Counter::new();

/// Axum middleware: counts and times every request by its route pattern (never the raw
/// path, whose ids would make unbounded series).
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "http_request",
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let response = {
        use tracing::Instrument as _;
        next.run(req).instrument(span.clone()).await
    };
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    HTTP_REQUESTS.add(&[&method, &route, &status.to_string()], 1);
    HTTP_DURATION.observe(&route, start.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        h.observe("a\"b", Duration::from_millis(5));
        h.observe("a\"b", Duration::from_millis(50));
        h.observe("a\"b", Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help", "route");
        assert!(out.contains("x_seconds_bucket{route=\"a\\\"b\",le=\"0.01\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{route=\"a\\\"b\",le=\"0.1\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{route=\"a\\\"b\",le=\"1\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{route=\"a\\\"b\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count{route=\"a\\\"b\"} 3\n"));
    }

    #[test]
    fn series_are_bounded() {
        let c = Counter::new();
        for i in 0..(SERIES_MAX + 50) {
            c.add(&[&i.to_string()], 1);
        }
        assert_eq!(c.get(&["other"]), 50);
        let h = Histogram::new(&[1.0]);
        for i in 0..(SERIES_MAX + 5) {
            h.observe(&i.to_string(), Duration::from_millis(1));
        }
        let mut out = String::new();
        h.render(&mut out, "h", "h", "l");
        assert!(out.contains("h_count{l=\"other\"} 5\n"));
    }
}
