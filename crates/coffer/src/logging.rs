//! Structured logs: JSON lines with timestamp, level, role, target, span fields (request_id).

use tracing_subscriber::{fmt, EnvFilter};

pub fn init(format: &str, role: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if format == "text" {
        fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    tracing::info!(role, version = env!("CARGO_PKG_VERSION"), "starting");
}
