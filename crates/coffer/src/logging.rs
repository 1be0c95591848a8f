//! Logs and traces of every role (docs/observability.md): JSON lines on stderr with timestamp,
//! level, role, target, message, request_id and, when spans are exported, trace_id and span_id;
//! OpenTelemetry spans over OTLP/HTTP when `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set.

use std::sync::OnceLock;

use anyhow::Context;
use coffer_telemetry::{LogFormat, Telemetry};

static TRACE_DATABASE_COMMANDS: OnceLock<bool> = OnceLock::new();

/// Installs logging and, when configured, span export for `role`. Flush with
/// [`Telemetry::shutdown`] once the runtime has stopped.
pub fn init(
    format: LogFormat,
    role: &'static str,
    roots: &coffer_tls::TlsRoots,
) -> anyhow::Result<Telemetry> {
    let telemetry = coffer_telemetry::init(role, format, roots).context("starting logs and traces")?;
    let _ = TRACE_DATABASE_COMMANDS.set(telemetry.trace_database_commands());
    let (version, traces) = (env!("CARGO_PKG_VERSION"), telemetry.exporting());
    match format {
        // JSON lines carry the role on every line already.
        LogFormat::Json => tracing::info!(version, traces, "starting"),
        LogFormat::Text => tracing::info!(role, version, traces, "starting"),
    }
    Ok(telemetry)
}

/// Whether spans are exported with one per database command (`COFFER_TRACE_DB_COMMANDS`).
pub fn trace_database_commands() -> bool {
    TRACE_DATABASE_COMMANDS.get().copied().unwrap_or(false)
}
