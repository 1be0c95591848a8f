//! An in-process OTLP/HTTP receiver (protobuf) on 127.0.0.1: what an exporter sends to it is
//! decoded into [`ReceivedSpan`]s a test can inspect.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// A span as it arrived, ids in lower-case hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service_name: String,
    pub name: String,
    /// internal, server, client, producer or consumer.
    pub kind: &'static str,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attribute values as text (numbers and booleans formatted).
    pub attributes: BTreeMap<String, String>,
    /// Whether the span's status is an error.
    pub error: bool,
    /// The spans this one links to, as (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// The `traceparent` naming this span (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// The receiver; it serves until the test's runtime ends.
pub struct Receiver {
    /// The full traces URL (`http://127.0.0.1:<port>/v1/traces`).
    pub endpoint: String,
    received: Arc<Received>,
}

impl Receiver {
    /// Starts a receiver that decodes and keeps every span.
    pub async fn start() -> Receiver {
        Self::serve(true).await
    }

    /// Starts a receiver that answers like a collector but only counts requests and bytes: a
    /// sink for benchmarks, which should not pay for decoding.
    pub async fn start_discarding() -> Receiver {
        Self::serve(false).await
    }

    async fn serve(decode: bool) -> Receiver {
        let received = Arc::new(Received::default());
        let app = Router::new()
            .route("/v1/traces", post(move |state, body| export(state, body, decode)))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            endpoint: format!("http://{address}/v1/traces"),
            received,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().unwrap().clone()
    }

    /// Export requests and their protobuf bytes received so far.
    pub fn requests_and_bytes(&self) -> (u64, u64) {
        (
            self.received.requests.load(Ordering::Relaxed),
            self.received.bytes.load(Ordering::Relaxed),
        )
    }

    /// Waits until `done` holds for the spans received (calling `flush` before each look), or
    /// `wait` passed; returns the spans either way.
    pub async fn wait_for(
        &self,
        wait: Duration,
        flush: impl Fn() + Clone + Send + 'static,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + wait;
        loop {
            // Flushing blocks until the exporter got its answer, from this very runtime.
            tokio::task::spawn_blocking(flush.clone()).await.expect("flush");
            let spans = self.spans();
            if done(&spans) || Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn export(State(received): State<Arc<Received>>, body: Bytes, decode: bool) -> impl IntoResponse {
    received.requests.fetch_add(1, Ordering::Relaxed);
    received.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    if decode {
        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
            return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain")]);
        };
        let spans = decoded(request);
        received.spans.lock().unwrap().extend(spans);
    }
    // An empty ExportTraceServiceResponse encodes to no bytes.
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")])
}

fn decoded(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes));
        let service_name = resource
            .as_ref()
            .and_then(|r| r.get("service.name").cloned())
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(ReceivedSpan {
                service_name: service_name.clone(),
                kind: kind_name(span.kind),
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                attributes: attributes(&span.attributes),
                error: span.status.is_some_and(|s| s.code == 2),
                links: span
                    .links
                    .iter()
                    .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                    .collect(),
                name: span.name,
            });
        }
    }
    spans
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    let text = |value: &AnyValue| match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    };
    pairs
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?))))
        .collect()
}
