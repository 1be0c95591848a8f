//! RabbitMQ fixtures. Every test gets its own exchange (`coffer-test.<uuid>`), so tests never see
//! each other's messages on the shared broker; its queues expire on their own after 10 minutes
//! even if a test dies before [`Broker::cleanup`].

use std::time::{Duration, Instant};

use coffer_events::publisher::Readiness;
use coffer_events::{PublisherMetrics, Relay, RelayConfig};
use coffer_store::{OutboxDoc, Store};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use serde_json::Value;

/// The broker of the tests: `AMQP_URI` (scripts/test sets it), else the local default.
pub fn amqp_uri() -> String {
    std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A message as a test sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub routing_key: String,
    pub subject: String,
    pub persistent: bool,
    pub traceparent: Option<String>,
    pub data: Value,
}

pub struct Broker {
    pub exchange: String,
    pub connection: Connection,
    pub channel: Channel,
    queues: Vec<String>,
}

impl Broker {
    pub async fn new() -> Broker {
        let exchange = format!("coffer-test.{}", uuid::Uuid::new_v4().simple());
        let connection = coffer_events::broker::connect(&amqp_uri(), "coffer-test")
            .await
            .expect("broker");
        let channel = connection.create_channel().await.expect("channel");
        coffer_events::broker::declare_exchange(&channel, &exchange)
            .await
            .expect("exchange");
        Broker {
            exchange,
            connection,
            channel,
            queues: vec![],
        }
    }

    /// The same exchange and queues over a new connection (after a broker restart).
    pub async fn reopen(old: Broker) -> Broker {
        let connection = coffer_events::broker::connect(&amqp_uri(), "coffer-test")
            .await
            .expect("broker");
        let channel = connection.create_channel().await.expect("channel");
        Broker {
            exchange: old.exchange,
            connection,
            channel,
            queues: old.queues,
        }
    }

    /// A durable queue bound to `pattern` on the test exchange (survives a broker restart).
    pub async fn queue(&mut self, pattern: &str) -> String {
        let name = format!("{}.q{}", self.exchange, self.queues.len());
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(name.as_str().into(), options, arguments)
            .await
            .expect("queue");
        let (q, x) = (name.as_str().into(), self.exchange.as_str().into());
        self.channel
            .queue_bind(
                q,
                x,
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        self.queues.push(name.clone());
        name
    }

    /// The dead-letter queue the publisher declares for this exchange.
    pub fn dead_letter_queue(&self) -> String {
        coffer_events::broker::dead_letter_name(&self.exchange)
    }

    /// Takes up to `count` messages from `queue`, waiting at most `wait` in total.
    pub async fn take(&self, queue: &str, count: usize, wait: Duration) -> Vec<Received> {
        let options = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let tag = format!("take-{}", uuid::Uuid::new_v4().simple());
        let consumer =
            self.channel
                .basic_consume(queue.into(), tag.as_str().into(), options, FieldTable::default());
        let mut consumer = consumer.await.expect("consume");
        let mut received = Vec::new();
        let deadline = Instant::now() + wait;
        while received.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, consumer.next()).await {
                Ok(Some(Ok(delivery))) => received.push(decode(
                    &delivery.properties,
                    &delivery.data,
                    &delivery.routing_key,
                )),
                _ => break,
            }
        }
        let _ = self
            .channel
            .basic_cancel(tag.as_str().into(), Default::default())
            .await;
        received
    }

    /// Every message left in `queue` now (basic.get until empty, at most 100,000).
    pub async fn drain(&self, queue: &str) -> Vec<Received> {
        let mut received = Vec::new();
        for _ in 0..100_000 {
            let options = BasicGetOptions { no_ack: true };
            match self.channel.basic_get(queue.into(), options).await.expect("get") {
                Some(m) => received.push(decode(
                    &m.delivery.properties,
                    &m.delivery.data,
                    &m.delivery.routing_key,
                )),
                None => break,
            }
        }
        received
    }

    /// Deletes the test's queues and exchanges.
    pub async fn cleanup(self) {
        let dead = self.dead_letter_queue();
        for queue in self.queues.iter().chain([&dead]) {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [&self.exchange, &dead] {
            let _ = self
                .channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

fn decode(
    properties: &lapin::BasicProperties,
    body: &[u8],
    routing_key: &lapin::types::ShortString,
) -> Received {
    let header = |name: &str| coffer_events::envelope::header(properties, name);
    Received {
        message_id: properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        routing_key: routing_key.to_string(),
        subject: header("cloudEvents:subject").unwrap_or_default(),
        persistent: properties.delivery_mode() == &Some(2),
        traceparent: header("traceparent"),
        data: serde_json::from_slice(body).unwrap_or(Value::Null),
    }
}

/// A relay configuration for tests: quick retries, a short lease.
pub fn relay_config(exchange: &str, owner: &str) -> RelayConfig {
    let mut config = RelayConfig::new(exchange, owner);
    config.lease = Duration::from_secs(3);
    config.confirm_timeout = Duration::from_secs(2);
    config.retry_base = Duration::from_millis(20);
    config.max_attempts = 3;
    config
}

/// A relay with its own metrics registry.
pub fn relay(store: &Store, config: RelayConfig) -> (Relay, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = PublisherMetrics::new(&registry).expect("metrics");
    (Relay::new(store, config, metrics), registry)
}

/// Runs a publisher in the background; abort the handle to stop it.
pub fn spawn_publisher(relay: Relay) -> tokio::task::JoinHandle<()> {
    tokio::spawn(coffer_events::publisher::run(
        relay,
        amqp_uri(),
        Readiness::default(),
    ))
}

/// Starts the API's stream consumer on `exchange` feeding `hub`, and waits until it is bound.
pub async fn spawn_stream_consumer(
    exchange: &str,
    hub: coffer_events::StreamHub,
) -> tokio::task::JoinHandle<()> {
    let readiness = Readiness::default();
    let task = tokio::spawn(coffer_events::consumer::run(
        amqp_uri(),
        exchange.to_string(),
        hub,
        readiness.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !readiness.is_ready() {
        assert!(Instant::now() < deadline, "the stream consumer did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task
}

/// Appends `per_subject` synthetic events for each of `subjects` wallets, interleaved (as the
/// money path appends them: with partitions and sequence numbers); returns them in id order.
pub async fn insert_events(
    store: &Store,
    subjects: &[String],
    per_subject: usize,
    event_type: &str,
) -> Vec<OutboxDoc> {
    let mut rows = Vec::new();
    for sequence in 0..per_subject {
        for subject in subjects {
            rows.push(synthetic_row(subject, event_type, sequence));
        }
    }
    store.append_events(&mut rows).await.expect("append events");
    rows
}

/// A synthetic event of `subject`, not yet appended.
pub fn synthetic_row(subject: &str, event_type: &str, sequence: usize) -> OutboxDoc {
    let data = serde_json::json!({ "wallet_id": subject, "sequence": sequence });
    OutboxDoc::new(event_type, 1, subject, &format!("user-of-{subject}"), data)
}

/// Waits until no row is left unpublished (dead letters aside); panics after `wait`.
pub async fn await_drained(store: &Store, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let backlog = store.outbox_backlog(None).await.expect("backlog");
        let left = backlog.unpublished + backlog.retrying;
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} outbox rows still unpublished after {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every row of the outbox, in id order.
pub async fn outbox_rows(store: &Store) -> Vec<OutboxDoc> {
    store.outbox_rows().await.expect("outbox rows")
}
