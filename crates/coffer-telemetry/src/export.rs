//! OpenTelemetry traces over OTLP/HTTP (protobuf), configured by the standard variables.
//!
//! Off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! Spans are batched by the SDK's `BatchSpanProcessor` (its own thread, bounded queue: spans
//! beyond it are dropped, never buffered without limit) and sent with a blocking HTTP client on
//! that thread, as opentelemetry-otlp 0.33 recommends for its default processor.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
pub use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::TelemetryError;

/// Where spans go and under which service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// The full URL of the traces endpoint (`…/v1/traces`). None: the exporter resolves
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` itself (the latter
    /// gets `/v1/traces` appended, as the specification says).
    pub endpoint: Option<String>,
    /// `service.name` of every span: `OTEL_SERVICE_NAME`, else `coffer-<role>`.
    pub service_name: String,
    /// A span per database command as well (`COFFER_TRACE_DB_COMMANDS=true`): detailed, and
    /// costly (the MongoDB driver then decodes every command and reply), so off by default.
    pub database_commands: bool,
    /// Time limit of one export request (`OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`, ms; default 10 s).
    pub timeout: std::time::Duration,
}

/// The specification's default export time-out.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl ExportConfig {
    /// Exports to `endpoint` (a full `http(s)://…/v1/traces` URL), e.g. an in-process receiver.
    pub fn to_endpoint(endpoint: &str, service_name: &str) -> ExportConfig {
        ExportConfig {
            endpoint: Some(endpoint.to_string()),
            service_name: service_name.to_string(),
            database_commands: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// What the standard variables ask for (`var` reads one); None when traces are off: no
    /// endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Refuses what this
    /// build cannot do (another exporter or protocol, an https endpoint) instead of ignoring it.
    pub fn from_vars(
        role: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExportConfig>, TelemetryError> {
        let var = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(TelemetryError::Config(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: only \"otlp\" (or \"none\") is supported"
                )))
            }
        }
        let endpoint_var = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|name| var(name).map(|value| (name, value)));
        let Some((name, endpoint)) = endpoint_var else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(TelemetryError::Config(format!(
                "{name}={endpoint:?}: use an http:// or https:// URL"
            )));
        }
        // The standard client-side TLS variables are not read: one CA file serves every client.
        for tls_var in [
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ] {
            if var(tls_var).is_some() {
                return Err(TelemetryError::Config(format!(
                    "{tls_var} is not read by Coffer: put the collector's CA in COFFER_TLS_CA_FILE \
                     (client certificates are not supported)"
                )));
            }
        }
        let timeout_var = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
            .into_iter()
            .find_map(|name| var(name).map(|value| (name, value)));
        let timeout = match timeout_var {
            None => DEFAULT_TIMEOUT,
            Some((name, value)) => match value.parse::<u64>() {
                Ok(ms) if (1..=120_000).contains(&ms) => std::time::Duration::from_millis(ms),
                _ => {
                    return Err(TelemetryError::Config(format!(
                        "{name}={value:?}: milliseconds between 1 and 120000"
                    )))
                }
            },
        };
        let protocol =
            var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(protocol) = protocol.filter(|p| p != "http/protobuf") {
            return Err(TelemetryError::Config(format!(
                "OTLP protocol {protocol:?}: only \"http/protobuf\" is supported"
            )));
        }
        let database_commands = match var("COFFER_TRACE_DB_COMMANDS").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(TelemetryError::Config(format!(
                    "COFFER_TRACE_DB_COMMANDS={other:?}: use true or false"
                )))
            }
        };
        Ok(Some(ExportConfig {
            endpoint: None,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| format!("coffer-{role}")),
            database_commands,
            timeout,
        }))
    }
}

/// The tracer provider: OTLP/HTTP protobuf exporter behind the batch span processor, sending
/// over `http://` or `https://` (verified against `roots`). Sampling follows
/// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on);
/// batching follows `OTEL_BSP_*`. Call [`SdkTracerProvider::shutdown`] before exiting to flush.
pub fn tracer_provider(
    config: &ExportConfig,
    roots: &coffer_tls::TlsRoots,
) -> Result<SdkTracerProvider, TelemetryError> {
    let client = roots
        .blocking_http_client(config.timeout)
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_timeout(config.timeout)
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = &config.endpoint {
        exporter = exporter.with_endpoint(endpoint.as_str());
    }
    let exporter = exporter
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`. Filter it with
/// [`exported`]. Kept cheap: no per-span thread name, no busy/idle timings, no context
/// activation on every poll (parents are found through the `tracing` span tree instead).
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("coffer"))
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_target(false)
}

/// What becomes part of a trace: Coffer's own spans at INFO and above, and its warnings and
/// errors (as span events). Other crates' spans and Coffer's info/debug events stay in the logs.
pub fn exported(metadata: &Metadata<'_>) -> bool {
    let ours = metadata.target().starts_with("coffer");
    let level = if metadata.is_span() {
        Level::INFO
    } else {
        Level::WARN
    };
    ours && *metadata.level() <= level
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(role: &str, vars: &[(&str, &str)]) -> Result<Option<ExportConfig>, TelemetryError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ExportConfig::from_vars(role, |name| vars.get(name).cloned())
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_configured() {
        assert_eq!(config("api", &[]).unwrap(), None);
        assert_eq!(
            config("api", &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None
        );
        let on = config("api", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).unwrap();
        let on = on.unwrap();
        assert_eq!(on.service_name, "coffer-api");
        assert!(!on.database_commands, "command spans only when asked");
        let detailed = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("COFFER_TRACE_DB_COMMANDS", "true"),
        ];
        assert!(config("api", &detailed).unwrap().unwrap().database_commands);
        let named = config(
            "outbox-publisher",
            &[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4318/v1/traces",
                ),
                ("OTEL_SERVICE_NAME", "payments-outbox"),
            ],
        );
        assert_eq!(named.unwrap().unwrap().service_name, "payments-outbox");
        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"), off];
            assert_eq!(config("api", &vars).unwrap(), None, "{off:?} turns traces off");
        }
    }

    #[test]
    fn what_this_build_cannot_do_is_refused_at_start() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        for refused in [
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4318")],
            vec![endpoint, ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem")],
            vec![endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")],
            vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            vec![endpoint, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")],
            vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
            vec![endpoint, ("COFFER_TRACE_DB_COMMANDS", "yes please")],
        ] {
            assert!(config("api", &refused).is_err(), "{refused:?} is refused");
        }
        let explicit = [endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert!(config("api", &explicit).unwrap().is_some());
        let https = [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.example:4318")];
        assert!(config("api", &https).unwrap().is_some(), "https is taken");
        let slow = [endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")];
        let slow = config("api", &slow).unwrap().unwrap();
        assert_eq!(slow.timeout, std::time::Duration::from_millis(2500));
    }
}
