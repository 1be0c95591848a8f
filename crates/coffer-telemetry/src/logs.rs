//! JSON log lines: one object per event with `timestamp`, `level`, `role`, `target`, `message`,
//! the event's fields, `span` (the name of the innermost span and the fields of every span around
//! the event, inner ones winning), `request_id` (from the HTTP span) and, when traces are
//! exported, `trace_id` and `span_id` of the innermost exported span.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The span field lifted to the top of every line logged inside the span.
pub const REQUEST_ID_FIELD: &str = "request_id";

/// The members the formatter writes itself.
const RESERVED: &[&str] = &[
    "timestamp",
    "level",
    "role",
    "target",
    "message",
    "span",
    REQUEST_ID_FIELD,
    "trace_id",
    "span_id",
];

/// The JSON log layer of `role`, writing lines to `writer` (stderr in the binary).
pub fn json_layer<S, W>(role: &'static str, writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = DispatchSlot::default();
    let format = JsonLines {
        role,
        dispatch: dispatch.clone(),
    };
    let lines = tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(format)
        .with_writer(writer);
    lines.and_then(CaptureDispatch(dispatch))
}

/// Where the formatter finds the subscriber, to ask the OpenTelemetry layer for span ids.
#[derive(Clone, Default)]
struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

impl DispatchSlot {
    fn get(&self) -> Option<Dispatch> {
        self.0.get()?.upgrade()
    }
}

/// A layer that only records which dispatcher it was installed in.
struct CaptureDispatch(DispatchSlot);

impl<S: Subscriber> Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.0 .0.set(dispatch.downgrade());
    }
}

struct JsonLines {
    role: &'static str,
    dispatch: DispatchSlot,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = String::with_capacity(256);
        line.push('{');
        let timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
        push_raw(&mut line, "timestamp", &format!("\"{timestamp}\""));
        push(&mut line, "level", &Value::from(metadata.level().as_str()));
        push(&mut line, "role", &Value::from(self.role));
        push(&mut line, "target", &Value::from(metadata.target()));
        let mut fields = EventFields::default();
        event.record(&mut fields);
        if let Some(message) = fields.message.take() {
            push(&mut line, "message", &Value::from(message));
        }
        for (name, value) in &fields.fields {
            // An event field never hides (or duplicates) a member every line has.
            if RESERVED.contains(name) {
                push(&mut line, &format!("fields.{name}"), value);
            } else {
                push(&mut line, name, value);
            }
        }
        let mut span = Map::new();
        let mut ids = None;
        let mut innermost = None;
        for scope_span in ctx.event_scope().into_iter().flatten() {
            innermost.get_or_insert(scope_span.name());
            // The extensions guard is released before asking for ids (which locks them again).
            let own = {
                let extensions = scope_span.extensions();
                let fields = extensions.get::<FormattedFields<N>>();
                fields.and_then(|f| serde_json::from_str::<Map<String, Value>>(&f.fields).ok())
            };
            // `otel.*` fields steer the exported span (its name, kind, status), not the logs.
            for (key, value) in own.into_iter().flatten().filter(|(k, _)| !k.starts_with("otel.")) {
                span.entry(key).or_insert(value);
            }
            if ids.is_none() {
                ids = self.otel_ids(&scope_span.id());
            }
        }
        let request_id = span.remove(REQUEST_ID_FIELD);
        if let Some(name) = innermost {
            span.insert("name".into(), Value::from(name));
            push(&mut line, "span", &Value::Object(span));
        }
        if let Some(request_id) = request_id {
            push(&mut line, REQUEST_ID_FIELD, &request_id);
        }
        if let Some((trace_id, span_id)) = ids {
            push_raw(&mut line, "trace_id", &format!("\"{trace_id}\""));
            push_raw(&mut line, "span_id", &format!("\"{span_id}\""));
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

impl JsonLines {
    /// Trace and span id of a span the OpenTelemetry layer knows, when traces are exported.
    fn otel_ids(&self, id: &tracing::span::Id) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?;
        let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| {
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        })
    }
}

/// Appends `"key":<value>` (a comma first unless it is the first member).
fn push(line: &mut String, key: &str, value: &Value) {
    push_raw(line, key, &value.to_string());
}

fn push_raw(line: &mut String, key: &str, json: &str) {
    if !line.ends_with('{') {
        line.push(',');
    }
    line.push_str(&Value::from(key).to_string());
    line.push(':');
    line.push_str(json);
}

#[derive(Default)]
struct EventFields {
    message: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl EventFields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.push((field.name(), value));
        }
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use crate::capture::Captured;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn lines(captured: &Captured) -> Vec<Value> {
        let text = captured.text();
        text.lines().map(|l| serde_json::from_str(l).expect(l)).collect()
    }

    #[test]
    fn lines_carry_role_target_message_fields_and_the_request_id_of_an_outer_span() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer("api", move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, "outside");
            let http = tracing::info_span!(
                "http",
                otel.kind = "server",
                request_id = "req-1",
                url.path = "/v1/x"
            );
            let _http = http.enter();
            let inner = tracing::info_span!("transaction", db.system = "mongodb");
            let _inner = inner.enter();
            tracing::warn!(error = "boom \"quoted\"", role = "dev", "inside");
        });
        let lines = lines(&captured);
        assert_eq!(lines.len(), 2);
        let outside = &lines[0];
        assert_eq!(outside["level"], "INFO");
        assert_eq!(outside["role"], "api");
        assert_eq!(outside["message"], "outside");
        assert_eq!(outside["answer"], 42);
        assert!(outside["target"]
            .as_str()
            .unwrap()
            .starts_with("coffer_telemetry"));
        assert!(outside["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(outside.get("span").is_none() && outside.get("request_id").is_none());
        let inside = &lines[1];
        assert_eq!(inside["request_id"], "req-1");
        assert_eq!(inside["error"], "boom \"quoted\"");
        assert_eq!(
            (&inside["role"], &inside["fields.role"]),
            (&Value::from("api"), &Value::from("dev")),
            "an event field named like a member is renamed, not duplicated"
        );
        assert_eq!(inside["span"]["name"], "transaction");
        assert_eq!(inside["span"]["url.path"], "/v1/x");
        assert_eq!(inside["span"]["db.system"], "mongodb");
        assert!(
            inside["span"].get("otel.kind").is_none(),
            "otel.* fields stay out of the logs"
        );
        assert!(
            inside.get("trace_id").is_none(),
            "no trace ids without an OpenTelemetry layer"
        );
    }
}
