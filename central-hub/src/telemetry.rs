//! Logs and traces of the `central-hub` binary: text or JSON lines on stderr, and spans sent
//! over OTLP/HTTP (protobuf) to a collector when an endpoint is set, sampled by trace id at a
//! configured ratio (the deployment guide samples 10 % at 6,000 users). A trace started by a
//! sampled parent stays sampled, so a trace is whole or absent.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, span): for log shippers.
    Json,
}

#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// Base URL of the collector's OTLP/HTTP receiver, e.g. `http://otel-collector:4318`;
    /// spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// Share of traces kept, 0.0–1.0.
    pub sample_ratio: f64,
    pub service_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("trace sample ratio must be within 0.0..=1.0, got {0}")]
    Ratio(f64),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global logger is already installed: {0}")]
    Init(String),
}

/// Keeps the tracer provider alive; dropping it flushes spans still queued.
#[derive(Debug)]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces: {e}");
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), the chosen log format
/// on stderr and, with `traces`, the OTLP layer.
pub fn init(format: LogFormat, traces: Option<TraceSettings>) -> Result<Guard, TelemetryError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match &traces {
        Some(t) => {
            if !(0.0..=1.0).contains(&t.sample_ratio) {
                return Err(TelemetryError::Ratio(t.sample_ratio));
            }
            // The exporter's HTTP client is reqwest with rustls and no provider of its own:
            // ring is the only TLS provider of this workspace.
            // Err: a provider is installed already (by the hub's TLS set-up); that one is ring.
            if rustls::crypto::ring::default_provider()
                .install_default()
                .is_err()
            {
                tracing::debug!("rustls provider already installed");
            }
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", t.endpoint.trim_end_matches('/')))
                .with_timeout(std::time::Duration::from_secs(5))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                        t.sample_ratio,
                    ))))
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(t.service_name.clone())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("central-hub"))
            .with_filter(filter())
    });
    use tracing_subscriber::Layer as _;
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Init(e.to_string()))?;
    Ok(Guard(provider))
}
