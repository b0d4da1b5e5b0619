//! Prometheus metrics of one hub process, under the names of the deployment guide
//! (`mes_http_*`, `mes_db_*`, `mes_cache_*`, the per-site business gauges) plus the sync
//! metrics. `deploy/prometheus/alerts.yml` and `deploy/grafana/mes-hub.json` use exactly these
//! names; `tests/tests/deploy.rs` checks that every name they use is exported.
//!
//! Histograms and counters are process-wide statics (as with Prometheus' default registry):
//! the database layer times queries deep inside the store, where no handle is passed. Label
//! sets are bounded ([`SERIES_MAX`]) so a flood of odd paths cannot grow memory.
//!
//! The exposition is `prometheus-client`'s OpenMetrics text ([`Scrape`], [`CONTENT_TYPE`]).
//! Written here by hand, because the crate does not: the series cap (`Bounded`; `Family`
//! has none), label-value escaping ([`escape`]; the crate writes values verbatim), and
//! announcing families that have no series yet (`Announced`; the crate skips them).

use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter as Count};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram as Buckets;
use prometheus_client::registry::Registry;

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

/// Label pairs of one series, values already escaped (the crate writes them verbatim).
type Labels = Vec<(&'static str, String)>;

/// A [`Family`] whose label sets are capped at [`SERIES_MAX`]: `Family` has no cap, and a
/// flood of odd paths must not grow memory. The (`SERIES_MAX`+1)-th new label set is counted
/// under `other` in every label.
struct Bounded<M> {
    names: &'static [&'static str],
    family: Family<Labels, M, fn() -> M>,
    /// Label sets admitted so far (`Family` counts them only in its test builds). Taken
    /// only to admit a new label set, so the cap is exact under concurrency; updates of a
    /// known series never take it.
    admit: Mutex<usize>,
}

impl<M> std::fmt::Debug for Bounded<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("names", &self.names)
            .finish()
    }
}

impl<M: Clone> Bounded<M> {
    fn new(names: &'static [&'static str], make: fn() -> M) -> Self {
        Self {
            names,
            family: Family::new_with_constructor(make),
            admit: Mutex::new(0),
        }
    }

    fn labels(&self, values: &[&str]) -> Labels {
        debug_assert_eq!(values.len(), self.names.len(), "one value per label name");
        self.names
            .iter()
            .zip(values)
            .map(|(k, v)| (*k, escape(v)))
            .collect()
    }

    /// The series of these label values, or of `other` once the cap is reached.
    fn series(&self, values: &[&str]) -> M {
        let key = self.labels(values);
        if let Some(m) = self.family.get(&key) {
            return m.clone();
        }
        let mut admitted = self
            .admit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = self.family.get(&key) {
            return m.clone();
        }
        let key = if *admitted < SERIES_MAX {
            *admitted += 1;
            key
        } else {
            self.names
                .iter()
                .map(|k| (*k, "other".to_owned()))
                .collect()
        };
        debug_assert!(*admitted <= SERIES_MAX, "the series cap holds");
        self.family.get_or_create_owned(&key)
    }
}

/// A histogram with one label.
#[derive(Debug)]
pub struct Histogram(Bounded<Buckets>);

impl Histogram {
    fn new(label: &'static [&'static str], make: fn() -> Buckets) -> Self {
        Self(Bounded::new(label, make))
    }

    pub fn observe(&self, label: &str, took: Duration) {
        self.0.series(&[label]).observe(took.as_secs_f64());
    }
}

/// A counter keyed by a tuple of label values.
#[derive(Debug)]
pub struct Counter(Bounded<Count>);

impl Counter {
    fn new(names: &'static [&'static str]) -> Self {
        Self(Bounded::new(names, Count::default))
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        self.0.series(labels).inc_by(n);
    }

    pub fn get(&self, labels: &[&str]) -> u64 {
        self.0
            .family
            .get(&self.0.labels(labels))
            .map_or(0, |c| c.get())
    }
}

/// Escapes a label value for the text format (`prometheus-client` writes values verbatim).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `mes_http_requests_total{method,route,status}`.
pub static HTTP_REQUESTS: LazyLock<Counter> =
    LazyLock::new(|| Counter::new(&["method", "route", "status"]));
/// `mes_http_request_duration_seconds{route}`.
pub static HTTP_DURATION: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(&["route"], || Buckets::new(HTTP_BUCKETS)));
/// `mes_db_query_duration_seconds{query}`.
pub static QUERIES: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(&["query"], || Buckets::new(QUERY_BUCKETS)));
/// `mes_sync_frames_rejected_total{reason}`: sessions the hub closed for a protocol
/// violation or refused (by error code), and connections refused at the limit.
pub static FRAMES_REJECTED: LazyLock<Counter> = LazyLock::new(|| Counter::new(&["reason"]));

/// A family announced (`# HELP`, `# TYPE`) even while it has no series, as the text
/// format did before `prometheus-client`: the crate skips empty families, and
/// `tests/tests/deploy.rs` (like a reader of the scrape) finds a family by its `# TYPE` line.
#[derive(Debug)]
struct Announced<M>(M);

impl<M: EncodeMetric> EncodeMetric for Announced<M> {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// One scrape's exposition (OpenMetrics text, [`CONTENT_TYPE`]): the process-wide families
/// above plus the values the caller reads at scrape time. Names are given as exposed: a
/// counter's name ends in `_total`, which the encoder adds itself.
#[derive(Debug)]
pub struct Scrape(Registry);

/// The content type of [`Scrape::finish`]'s text; Prometheus negotiates it.
pub use service_kit::metrics::CONTENT_TYPE;

/// The crate appends the full stop of a help text itself.
fn help(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

/// The family name of an exposed counter `x_total`.
fn counter_name(exposed: &str) -> &str {
    debug_assert!(
        exposed.ends_with("_total"),
        "{exposed}: counters end in _total"
    );
    exposed.strip_suffix("_total").unwrap_or(exposed)
}

impl Scrape {
    /// A scrape without families yet.
    pub fn empty() -> Self {
        Self(Registry::default())
    }

    /// A scrape of the process-wide families ([`HTTP_REQUESTS`], [`HTTP_DURATION`],
    /// [`QUERIES`], [`FRAMES_REJECTED`]).
    pub fn hub() -> Self {
        let mut r = Registry::default();
        for (name, help_text, c) in [
            (
                "mes_sync_frames_rejected",
                "Sync sessions closed or refused for a protocol violation, by error code",
                &FRAMES_REJECTED,
            ),
            (
                "mes_http_requests",
                "HTTP requests by method, route pattern and status",
                &HTTP_REQUESTS,
            ),
        ] {
            r.register(name, help_text, Announced(c.0.family.clone()));
        }
        for (name, help_text, h) in [
            (
                "mes_http_request_duration_seconds",
                "HTTP request latency by route pattern",
                &HTTP_DURATION,
            ),
            (
                "mes_db_query_duration_seconds",
                "Database operations (one transaction or statement) by name",
                &QUERIES,
            ),
        ] {
            r.register(name, help_text, Announced(h.0.family.clone()));
        }
        Self(r)
    }

    /// A counter without labels, read at scrape time.
    pub fn counter(&mut self, name: &str, help_text: &str, value: u64) {
        self.0.register(
            counter_name(name),
            help(help_text),
            ConstCounter::new(value),
        );
    }

    /// A counter with one label, read at scrape time.
    pub fn counters(
        &mut self,
        name: &str,
        help_text: &str,
        label: &'static str,
        samples: impl IntoIterator<Item = (String, u64)>,
    ) {
        let family = Family::<Labels, Count>::default();
        for (value, n) in samples {
            family
                .get_or_create(&vec![(label, escape(&value))])
                .inc_by(n);
        }
        self.0
            .register(counter_name(name), help(help_text), Announced(family));
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help_text: &str, value: f64) {
        self.0
            .register(name, help(help_text), ConstGauge::new(value));
    }

    /// A gauge without labels, of an integer.
    pub fn gauge_int(&mut self, name: &str, help_text: &str, value: i64) {
        self.0
            .register(name, help(help_text), ConstGauge::new(value));
    }

    /// A gauge with one label (`samples` are label value and figure).
    pub fn gauges(
        &mut self,
        name: &str,
        help_text: &str,
        label: &'static str,
        samples: impl IntoIterator<Item = (String, f64)>,
    ) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (value, v) in samples {
            family.get_or_create(&vec![(label, escape(&value))]).set(v);
        }
        self.0.register(name, help(help_text), Announced(family));
    }

    /// These families' text without the end marker, to splice into another scrape
    /// ([`Scrape::finish`]).
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        encode_registry(&mut out, &self.0).expect("writing to a String cannot fail");
        out
    }

    /// The exposition: these families, then `spliced` (an earlier [`Scrape::text`]), then
    /// the end marker.
    pub fn finish(self, spliced: &str) -> String {
        let mut out = self.text();
        out.push_str(spliced);
        encode_eof(&mut out).expect("writing to a String cannot fail");
        out
    }
}

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

    fn text_of<M: prometheus_client::registry::Metric>(name: &str, metric: M) -> String {
        let mut r = Registry::default();
        r.register(name, "help", metric);
        Scrape(r).finish("")
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let h = Histogram::new(&["route"], || Buckets::new([0.01, 0.1, 1.0]));
        h.observe("a\"b", Duration::from_millis(5));
        h.observe("a\"b", Duration::from_millis(50));
        h.observe("a\"b", Duration::from_secs(5));
        let out = text_of("x_seconds", h.0.family.clone());
        assert!(out.contains("# TYPE x_seconds histogram\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.01\",route=\"a\\\"b\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"0.1\",route=\"a\\\"b\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"1.0\",route=\"a\\\"b\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\",route=\"a\\\"b\"} 3\n"));
        assert!(out.contains("x_seconds_count{route=\"a\\\"b\"} 3\n"));
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn series_are_bounded() {
        let c = Counter::new(&["l"]);
        for i in 0..(SERIES_MAX + 50) {
            c.add(&[&i.to_string()], 1);
        }
        assert_eq!(c.get(&["other"]), 50);
        assert_eq!(c.get(&["0"]), 1);
        assert_eq!(c.get(&[&(SERIES_MAX - 1).to_string()]), 1);
        assert_eq!(c.get(&[&SERIES_MAX.to_string()]), 0, "counted under other");
        let h = Histogram::new(&["l"], || Buckets::new([1.0]));
        for i in 0..(SERIES_MAX + 5) {
            h.observe(&i.to_string(), Duration::from_millis(1));
        }
        let out = text_of("h", h.0.family.clone());
        assert!(out.contains("h_count{l=\"other\"} 5\n"), "{out}");
    }

    /// The exposed names are today's: a counter registered as `x_total` is not exposed as
    /// `x_total_total`, help texts keep their one full stop, gauges keep their names.
    #[test]
    fn scrape_exposes_the_names_it_is_given() {
        let mut s = Scrape::hub();
        s.counter("mes_x_total", "Things.", 3);
        s.counters("mes_y_total", "By reason.", "reason", [("a".to_owned(), 2)]);
        s.gauge("mes_ratio", "A share.", 0.5);
        s.gauge_int("mes_open", "Open.", 4);
        s.gauges(
            "mes_site_z",
            "Per site.",
            "site",
            [("S\"1".to_owned(), 1.5)],
        );
        s.gauges("mes_site_none", "Per site.", "site", []);
        FRAMES_REJECTED.add(&["test_reason"], 1);
        let out = s.finish("");
        service_kit::metrics::assert_exposition(
            &out,
            &[
                "# HELP mes_x Things.\n# TYPE mes_x counter\nmes_x_total 3\n",
                "mes_y_total{reason=\"a\"} 2\n",
                "# TYPE mes_ratio gauge\nmes_ratio 0.5\n",
                "mes_open 4\n",
                "mes_site_z{site=\"S\\\"1\"} 1.5\n",
                "mes_sync_frames_rejected_total{reason=\"test_reason\"} ",
                "# TYPE mes_http_requests counter\n",
                "# HELP mes_site_none Per site.\n# TYPE mes_site_none gauge\n",
                "# TYPE mes_http_request_duration_seconds histogram\n",
                "# TYPE mes_db_query_duration_seconds histogram\n",
            ],
        );
    }
}
