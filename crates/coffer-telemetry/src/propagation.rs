//! W3C trace context between `tracing` spans and the places it travels as text: HTTP headers,
//! outbox rows, AMQP message headers.
//!
//! Every function here is harmless when traces are off: a span then has no OpenTelemetry
//! context, [`span_context`] answers None and [`set_remote_parent`] does nothing.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceFlags};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use opentelemetry::trace::SpanContext;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// A carrier holding just the two W3C fields.
struct Fields<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The remote span a W3C `traceparent` (and optional `tracestate`) names; None when it is
/// malformed (wrong length, upper-case hex, all-zero ids, unknown version layout).
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let fields = Fields {
        traceparent,
        tracestate,
    };
    let context = TraceContextPropagator::new().extract(&fields);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The `traceparent` text of a span context: `00-<trace id>-<span id>-<flags>`.
pub fn format_traceparent(span_context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags() & TraceFlags::SAMPLED
    )
}

/// Makes `span` a child of the remote `parent`. Call it before the span is entered or has
/// children: an OpenTelemetry span's parent is fixed once it starts.
pub fn set_remote_parent(span: &tracing::Span, parent: &SpanContext) {
    // Fails only when traces are off (no OpenTelemetry layer) or the span already started.
    let _ = span.set_parent(Context::new().with_remote_span_context(parent.clone()));
}

/// Makes `span` a child of the span a `traceparent` names, if it names a valid one.
pub fn set_parent_from_traceparent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    if let Some(parent) = traceparent.and_then(|t| parse_traceparent(t, tracestate)) {
        set_remote_parent(span, &parent);
    }
}

/// Links `span` to the span a `traceparent` names (a batch span to each request it serves).
/// Call it before the span is entered; harmless when traces are off.
pub fn link_to_traceparent(span: &tracing::Span, traceparent: &str) {
    if let Some(linked) = parse_traceparent(traceparent, None) {
        span.add_link(linked);
    }
}

/// The OpenTelemetry span context of `span`; None when traces are off or the span is disabled.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The `traceparent` of `span`; None when traces are off.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    span_context(span).map(|c| format_traceparent(&c))
}

/// The `traceparent` of the current span; None when traces are off or no span is current.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips_and_malformed_ones_are_refused() {
        let parsed = parse_traceparent(CLIENT, None).expect("valid");
        assert!(parsed.is_remote() && parsed.is_sampled());
        assert_eq!(format_traceparent(&parsed), CLIENT);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad:?} is refused");
        }
    }

    #[test]
    fn without_an_opentelemetry_layer_spans_have_no_context() {
        let span = tracing::info_span!("untraced");
        set_parent_from_traceparent(&span, Some(CLIENT), None);
        assert_eq!(traceparent_of(&span), None);
        assert_eq!(current_traceparent(), None);
    }
}
