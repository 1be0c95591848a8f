//! Issue 8, traces: one trace from the client's request through the database transaction, the
//! outbox row, the RabbitMQ message and the publisher to the stream consumer and the socket,
//! received by an in-process OTLP/HTTP receiver; and log lines that name the trace.

use coffer_telemetry::capture::Captured;
use std::time::Duration;

use coffer_store::{Role, StoreConfig};
use coffer_telemetry::{export, logs};
use coffer_test_support::broker::{self, Broker};
use coffer_test_support::otlp::{ReceivedSpan, Receiver};
use coffer_test_support::stream::{connect, events, Token};
use coffer_test_support::{Options, TestApp};
use serde_json::{json, Value};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

const WAIT: Duration = Duration::from_secs(20);

/// `bytes` random bytes in lower-case hex (at most 16).
fn random_hex(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_string()
}

/// The one span named `name` with parent `parent`, or a failure listing what arrived.
fn child<'a>(spans: &'a [ReceivedSpan], name: &str, parent: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == name && s.parent_span_id == parent)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name:?} span under {parent}; received: {:#?}",
        summary(spans)
    );
    found[0]
}

fn summary(spans: &[ReceivedSpan]) -> Vec<String> {
    let line = |s: &ReceivedSpan| format!("{} {} {} <- {}", s.name, s.trace_id, s.span_id, s.parent_span_id);
    spans.iter().map(line).collect()
}

/// The batch span (its own trace: group commit serves many requests) that links to `movement`.
fn batch_of<'a>(all: &'a [ReceivedSpan], movement: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    let link = (movement.trace_id.clone(), movement.span_id.clone());
    all.iter()
        .find(|s| s.name == "transaction" && s.links.contains(&link))
}

/// The movement span under `http` and the batch transaction that wrote it, after checking them
/// and the batch's outbox insert and commit spans.
fn assert_database_spans<'a>(
    ours: &'a [ReceivedSpan],
    all: &'a [ReceivedSpan],
    http: &ReceivedSpan,
    database: &str,
) -> (&'a ReceivedSpan, &'a ReceivedSpan) {
    let movement = child(ours, "ledger.apply", &http.span_id);
    assert_eq!(movement.attribute("db.system"), Some("mongodb"));
    let transaction = batch_of(all, movement)
        .unwrap_or_else(|| panic!("a batch span linked to the movement: {:#?}", summary(all)));
    assert_eq!(transaction.kind, "client");
    assert_eq!(transaction.parent_span_id, "", "a batch is a root span");
    assert_eq!(transaction.attribute("db.system"), Some("mongodb"));
    assert_eq!(transaction.attribute("db.namespace"), Some(database));
    assert_eq!(transaction.attribute("coffer.batch.movements"), Some("1"));
    let insert = child(all, "insert outbox", &transaction.span_id);
    assert_eq!(insert.kind, "client");
    assert_eq!(insert.attribute("db.system"), Some("mongodb"));
    assert_eq!(insert.attribute("db.operation.name"), Some("insert"));
    assert_eq!(insert.attribute("db.collection.name"), Some("outbox"));
    assert_eq!(insert.attribute("db.namespace"), Some(database));
    let commit = child(all, "commitTransaction", &transaction.span_id);
    assert_eq!(commit.attribute("db.operation.name"), Some("commitTransaction"));
    (movement, transaction)
}

/// Installs span export to `receiver` and JSON logs into the returned buffer.
fn install_telemetry(receiver: &Receiver) -> (export::SdkTracerProvider, Captured) {
    let config = export::ExportConfig::to_endpoint(&receiver.endpoint, "coffer-api");
    let provider = export::tracer_provider(&config, &coffer_tls::TlsRoots::platform()).unwrap();
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::registry()
        .with(export::layer(&provider).with_filter(filter_fn(export::exported)))
        .with(logs::json_layer("api", move || writer.clone()).with_filter(LevelFilter::INFO))
        .init();
    (provider, captured)
}

/// Sends a transfer of 1 from `from` to `to` with the client span `00-<trace>-<span>-01`.
async fn traced_transfer(
    app: &TestApp,
    token: &str,
    from: &str,
    to: &str,
    trace: &str,
    span: &str,
) -> reqwest::Response {
    let transfer = app
        .client
        .post(app.url("/v1/transfers"))
        .bearer_auth(token)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .header("traceparent", format!("00-{trace}-{span}-01"))
        .json(&json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(transfer.status(), 201);
    transfer
}

fn flusher(provider: &export::SdkTracerProvider) -> impl Fn() + Clone + Send + 'static {
    let provider = provider.clone();
    move || {
        let _ = provider.force_flush();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_transaction_and_the_broker_to_the_socket() {
    let receiver = Receiver::start().await;
    let (provider, captured) = install_telemetry(&receiver);
    let app = TestApp::spawn().await;
    let mut broker = Broker::new().await;
    let queue = broker.queue("#").await;
    let consumer = broker::spawn_stream_consumer(&broker.exchange, app.stream_hub.clone()).await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let (a, b) = (
        app.create_wallet(&alice, "ETH").await,
        app.create_wallet(&bob, "ETH").await,
    );
    app.deposit(&payment, &a, "5").await;
    let mut bob_socket = connect(app.address, Token::Header(&bob.access_token), None).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the socket is registered in the hub

    // The client's own span: the server span must be its child, in its trace.
    let (trace_id, client_span_id) = (random_hex(16), random_hex(8));
    let transfer = traced_transfer(&app, &alice.access_token, &a, &b, &trace_id, &client_span_id).await;
    let request_id = transfer.headers()["x-request-id"].to_str().unwrap().to_string();
    let transfer: Value = transfer.json().await.unwrap();
    let transaction_id = transfer["id"].as_str().unwrap();
    let rows: Vec<_> = broker::outbox_rows(&app.store)
        .await
        .into_iter()
        .filter(|r| r.data["transaction_id"].as_str() == Some(transaction_id))
        .collect();
    assert_eq!(rows.len(), 4, "a transaction and a balance event per wallet");

    let (relay, _) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "p1"));
    let publisher = broker::spawn_publisher(relay);
    broker::await_drained(&app.store, WAIT).await;
    let seen_by_bob = events(&mut bob_socket, 2, WAIT).await;
    assert_eq!(
        seen_by_bob.len(),
        2,
        "bob's socket gets the transfer's two events"
    );
    let messages = broker.take(&queue, 6, Duration::from_secs(2)).await;
    publisher.abort();
    consumer.abort();

    let all = receiver
        .wait_for(WAIT, flusher(&provider), |spans| {
            let ours = spans.iter().filter(|s| s.trace_id == trace_id);
            ours.filter(|s| s.name == "send /v1/stream").count() >= 2
        })
        .await;
    let spans: Vec<ReceivedSpan> = all.iter().filter(|s| s.trace_id == trace_id).cloned().collect();

    // HTTP server span: the client's span is its parent.
    let http = child(&spans, "POST /v1/transfers", &client_span_id);
    assert_eq!(http.kind, "server");
    assert_eq!(http.service_name, "coffer-api");
    assert_eq!(http.attribute("http.request.method"), Some("POST"));
    assert_eq!(http.attribute("http.route"), Some("/v1/transfers"));
    assert_eq!(http.attribute("url.path"), Some("/v1/transfers"));
    assert_eq!(http.attribute("http.response.status_code"), Some("201"));
    assert!(!http.error);

    // The movement is the HTTP span's child; the batch transaction that wrote it links to it,
    // and has the outbox insert and the commit as its children.
    let (movement, _) = assert_database_spans(&spans, &all, http, app.store.database().name());

    // Each outbox row stores the context of the movement that wrote it.
    for row in &rows {
        assert_eq!(row.traceparent.as_deref(), Some(movement.traceparent().as_str()));
    }

    // Each row's publish span continues the stored context and is what the message carries.
    let exchange_publish = format!("publish {}", broker.exchange);
    for row in &rows {
        let publish = spans
            .iter()
            .find(|s| s.name == exchange_publish && s.attribute("messaging.message.id") == Some(&row.id))
            .unwrap_or_else(|| panic!("a publish span for {}: {:#?}", row.id, summary(&spans)));
        assert_eq!(publish.parent_span_id, movement.span_id);
        assert_eq!(publish.kind, "producer");
        assert_eq!(publish.attribute("messaging.system"), Some("rabbitmq"));
        assert_eq!(publish.attribute("messaging.operation.type"), Some("publish"));
        assert_eq!(
            publish.attribute("messaging.destination.name"),
            Some(broker.exchange.as_str())
        );
        let message = messages
            .iter()
            .find(|m| m.message_id == row.id)
            .expect("published");
        assert_eq!(
            message.traceparent.as_deref(),
            Some(publish.traceparent().as_str())
        );
        // The API's stream consumer continues from the message's header.
        let process = child(&spans, &format!("process {}", broker.exchange), &publish.span_id);
        assert_eq!(process.kind, "consumer");
        assert_eq!(process.attribute("messaging.operation.type"), Some("process"));
        if row.user_id == bob.id {
            let deliver = child(&spans, "send /v1/stream", &process.span_id);
            assert_eq!(deliver.attribute("messaging.message.id"), Some(row.id.as_str()));
        }
    }

    // Log lines inside the request name its trace, its span and its request id.
    let text = captured.text();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let finished = lines
        .iter()
        .find(|l| l["request_id"] == request_id.as_str() && l["message"] == "finished processing request")
        .unwrap_or_else(|| panic!("the request's log line: {text:.2000}"));
    assert_eq!(finished["trace_id"], trace_id.as_str());
    assert_eq!(finished["span_id"], http.span_id.as_str());
    assert_eq!(finished["role"], "api");
    assert_eq!(finished["span"]["http.route"], "/v1/transfers");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_asked_every_database_command_is_a_span_of_the_operation_that_ran_it() {
    let receiver = Receiver::start().await;
    let (provider, _logs) = install_telemetry(&receiver);
    let options = Options {
        store: StoreConfig {
            command_spans: true,
            ..StoreConfig::default()
        },
        ..Options::default()
    };
    let app = TestApp::spawn_with(options).await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let (a, b) = (
        app.create_wallet(&alice, "ETH").await,
        app.create_wallet(&bob, "ETH").await,
    );
    app.deposit(&payment, &a, "5").await;
    let (trace_id, client_span_id) = (random_hex(16), random_hex(8));
    traced_transfer(&app, &alice.access_token, &a, &b, &trace_id, &client_span_id).await;

    let all = receiver
        .wait_for(WAIT, flusher(&provider), |spans| {
            let movement = spans
                .iter()
                .find(|s| s.trace_id == trace_id && s.name == "ledger.apply");
            let server = spans.iter().any(|s| s.trace_id == trace_id && s.kind == "server");
            server && movement.is_some_and(|m| batch_of(spans, m).is_some())
        })
        .await;
    let spans: Vec<ReceivedSpan> = all.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
    let http = child(&spans, "POST /v1/transfers", &client_span_id);
    let (_, transaction) = assert_database_spans(&spans, &all, http, app.store.database().name());
    let in_transaction = |name: &str| {
        let of = |s: &&ReceivedSpan| s.name == name && s.parent_span_id == transaction.span_id;
        all.iter().filter(of).count()
    };
    assert_eq!(in_transaction("insert transactions"), 1, "{:#?}", summary(&all));
    assert_eq!(
        in_transaction("update wallets"),
        1,
        "one update command for every balance change of the batch"
    );
    assert_eq!(in_transaction("insert ledger_entries"), 1);
    assert_eq!(
        in_transaction("insert idempotency_keys"),
        1,
        "the idempotent response commits with the money"
    );
    let update = all.iter().find(|s| s.name == "update wallets").unwrap();
    assert_eq!(update.kind, "client");
    assert_eq!(update.attribute("db.system"), Some("mongodb"));
    assert_eq!(update.attribute("db.operation.name"), Some("update"));
    assert_eq!(update.attribute("db.collection.name"), Some("wallets"));
    assert_eq!(
        update.attribute("db.namespace"),
        Some(app.store.database().name())
    );
    // A command runs under the operation span the write path opened around it.
    let insert = child(&all, "insert outbox", &transaction.span_id);
    child(&all, "insert outbox", &insert.span_id);
    let commit = child(&all, "commitTransaction", &transaction.span_id);
    child(&all, "commitTransaction", &commit.span_id);
    // Nothing of the movement runs outside its batch: no idempotency claim or completion.
    let outside: Vec<&str> = spans
        .iter()
        .filter(|s| s.attribute("db.collection.name") == Some("idempotency_keys"))
        .map(|s| s.name.as_str())
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}
