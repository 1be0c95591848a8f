//! Coffer's telemetry plumbing (issue 8): logs and traces of every role.
//!
//! - [`logs`]: JSON lines with timestamp, level, role, target, message, `request_id` and, when
//!   traces are exported, `trace_id` and `span_id`.
//! - [`export`]: `tracing` spans exported as OpenTelemetry spans over OTLP/HTTP, off unless the
//!   standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set.
//! - [`propagation`]: W3C `traceparent` in and out of spans (HTTP headers, outbox rows, AMQP).
//!
//! [`init`] installs both for a role; tests and benchmarks assemble the same layers themselves.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod capture;
pub mod export;
pub mod faults;
pub mod health;
pub mod logs;
pub mod propagation;

use opentelemetry_sdk::trace::SdkTracerProvider;
use thiserror::Error;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use propagation::SpanContext;

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("telemetry configuration: {0}")]
    Config(String),
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
    #[error("a global subscriber is already installed: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// How log lines look on stderr (`COFFER_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The installed telemetry of a process; [`Telemetry::shutdown`] flushes buffered spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    database_commands: bool,
}

impl Telemetry {
    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Whether spans are exported and should include one per database command.
    pub fn trace_database_commands(&self) -> bool {
        self.exporting() && self.database_commands
    }

    /// Sends the spans still buffered and stops the exporter (bounded by the exporter's timeout).
    /// Call it outside the async runtime: it blocks.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "flushing traces at shutdown failed");
            }
        }
    }
}

/// Targets whose spans or events record secrets, held at a level that keeps those out of every
/// log whatever `RUST_LOG` says: alloy's HTTP transport opens a DEBUG span carrying the node's
/// URL, which usually holds a provider key (the events inside it, e.g. hyper's, would print it).
pub const QUIET_TARGETS: [&str; 1] = ["alloy_transport_http::reqwest_transport=info"];

/// The log filter of `rust_log` (`RUST_LOG`; unset or invalid: `info`) with [`QUIET_TARGETS`]
/// forced on top (a directive of the same target in `rust_log` is replaced).
pub fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let mut filter = rust_log
        .and_then(|text| EnvFilter::try_new(text).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    for directive in QUIET_TARGETS {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    filter
}

/// Installs the global subscriber of `role`: log lines on stderr filtered by `RUST_LOG` (default
/// `info`), and span export when the environment configures an OTLP endpoint.
pub fn init(
    role: &'static str,
    format: LogFormat,
    roots: &coffer_tls::TlsRoots,
) -> Result<Telemetry, TelemetryError> {
    let export = export::ExportConfig::from_vars(role, |name| std::env::var(name).ok())?;
    let provider = export
        .as_ref()
        .map(|config| export::tracer_provider(config, roots))
        .transpose()?;
    let traces = provider
        .as_ref()
        .map(|p| export::layer(p).with_filter(filter_fn(export::exported)));
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let registry = tracing_subscriber::registry().with(traces);
    match format {
        LogFormat::Json => registry
            .with(logs::json_layer(role, std::io::stderr).with_filter(filter))
            .try_init()?,
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()?,
    }
    Ok(Telemetry {
        provider,
        database_commands: export.is_some_and(|e| e.database_commands),
    })
}

#[cfg(test)]
mod tests {
    use crate::capture::Captured;

    use super::*;

    #[test]
    fn with_traces_on_a_span_continues_the_remote_trace_and_log_lines_name_its_ids() {
        // A provider without exporter still samples and assigns ids.
        let provider = SdkTracerProvider::builder().build();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(export::layer(&provider).with_filter(filter_fn(export::exported)))
            .with(logs::json_layer("api", move || writer.clone()));
        let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (http, inner) = tracing::subscriber::with_default(subscriber, || {
            let http = tracing::info_span!("http", request_id = "req-1");
            propagation::set_parent_from_traceparent(&http, Some(client), None);
            let _entered = http.enter();
            let inner = tracing::info_span!("transaction");
            let _inner = inner.enter();
            tracing::info!("inside");
            (
                propagation::traceparent_of(&http).unwrap(),
                propagation::span_context(&inner).unwrap(),
            )
        });
        assert!(http.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(
            http, client,
            "the server span is a new span of the client's trace"
        );
        let text = captured.text();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span_id"], inner.span_id().to_string());
        assert_eq!(line["request_id"], "req-1");
    }

    #[test]
    fn the_node_url_of_alloys_transport_span_is_never_logged_even_at_trace() {
        for rust_log in [
            None,
            Some("trace"),
            Some("info,alloy_transport_http::reqwest_transport=trace"),
        ] {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::registry()
                .with(logs::json_layer("api", move || writer.clone()).with_filter(log_filter(rust_log)));
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::debug_span!(
                    target: "alloy_transport_http::reqwest_transport",
                    "ReqwestTransport",
                    url = "http://node/v3/provider-key-4c1d"
                );
                let _entered = span.enter();
                tracing::warn!(target: "hyper_util::client", "connecting");
            });
            let text = captured.text();
            assert!(text.contains("connecting"), "{rust_log:?}: {text}");
            assert!(!text.contains("provider-key-4c1d"), "{rust_log:?}: {text}");
        }
    }
}
