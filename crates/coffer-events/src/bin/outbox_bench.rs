//! `cargo run --release -p coffer-events --bin outbox-bench`: 10,000 outbox events written while
//! the relay publishes them to RabbitMQ; prints throughput and commit-to-published latency, and a
//! raw lapin baseline (pipelined confirms per batch of 1,000) measured in the same run.
//! Needs MONGODB_URI (a replica set) and AMQP_URI.

use std::time::{Duration, Instant};

use coffer_events::{broker, PublisherMetrics, Relay, RelayConfig};
use coffer_store::mongodb::bson::doc;
use coffer_store::{OutboxDoc, Store, StoreConfig, StoreMetrics};
use futures::TryStreamExt;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

const EVENTS: usize = 10_000;
const WALLETS: usize = 100;
const CHUNK: usize = 100;

#[tokio::main]
async fn main() {
    let mongodb_uri = std::env::var("MONGODB_URI").expect("MONGODB_URI");
    let amqp_uri =
        std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let exchange = format!("coffer-bench.{}", uuid::Uuid::new_v4().simple());
    let connection = broker::connect(&amqp_uri, "outbox-bench").await.expect("broker");
    let channel = broker::publisher_channel(&connection, &exchange)
        .await
        .expect("channel");
    let queue = format!("{exchange}.sink");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .expect("queue");
    let bind = QueueBindOptions::default();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            bind,
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let baseline = raw_baseline(&channel, &exchange).await;
    println!("raw lapin, pipelined confirms per 1,000: {baseline:.0} msg/s");

    let database = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let store = Store::connect(
        &mongodb_uri,
        &database,
        StoreConfig::default(),
        StoreMetrics::new(&prometheus::Registry::new()).unwrap(),
    )
    .await
    .expect("mongo");
    store.ensure_indexes().await.expect("indexes");
    let (rate, p50, p99) = relay_run(&store, &exchange, &amqp_uri).await;
    println!(
        "outbox relay: {EVENTS} events over {WALLETS} wallets: {rate:.0} events/s ({:.2}x the raw baseline)",
        rate / baseline
    );
    println!("commit-to-published latency: p50 {p50:.1} ms, p99 {p99:.1} ms");

    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let dead = broker::dead_letter_name(&exchange);
    let _ = channel
        .queue_delete(dead.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(dead.as_str().into(), Default::default())
        .await;
    store.database().drop().await.expect("drop bench database");
}

/// Publishes EVENTS messages of a typical size, awaiting confirms per batch of 1,000.
async fn raw_baseline(channel: &lapin::Channel, exchange: &str) -> f64 {
    let body = vec![b'x'; 400];
    let started = Instant::now();
    for _ in 0..EVENTS / 1000 {
        for _ in 0..1000 {
            let properties = BasicProperties::default().with_delivery_mode(2);
            let options = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            let confirm = channel.basic_publish(
                exchange.into(),
                "wallet.balance.updated".into(),
                options,
                &body,
                properties,
            );
            drop(confirm.await.expect("publish"));
        }
        channel.wait_for_confirms().await.expect("confirms");
    }
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

/// Writes EVENTS rows in chunks while the relay publishes; returns (events/s, p50 ms, p99 ms).
async fn relay_run(store: &Store, exchange: &str, amqp_uri: &str) -> (f64, f64, f64) {
    let metrics = PublisherMetrics::new(&prometheus::Registry::new()).unwrap();
    let relay = Relay::new(store, RelayConfig::new(exchange, "bench"), metrics);
    let started = Instant::now();
    let publisher = tokio::spawn(coffer_events::publisher::run(
        relay,
        amqp_uri.to_string(),
        Default::default(),
    ));
    let outbox = store.collection::<OutboxDoc>("outbox");
    for chunk in 0..EVENTS / CHUNK {
        let rows: Vec<OutboxDoc> = (0..CHUNK)
            .map(|i| row(&format!("wallet-{}", (chunk * CHUNK + i) % WALLETS)))
            .collect();
        outbox.insert_many(&rows).await.expect("insert");
    }
    loop {
        let left = outbox
            .count_documents(doc! { "published_at": null })
            .await
            .expect("count");
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    publisher.abort();
    let rows: Vec<OutboxDoc> = outbox
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("rows");
    let mut latencies: Vec<i64> = rows
        .iter()
        .map(|r| r.published_at.expect("published").timestamp_millis() - r.created_at.timestamp_millis())
        .collect();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize] as f64;
    (EVENTS as f64 / elapsed, at(0.50), at(0.99))
}

fn row(subject: &str) -> OutboxDoc {
    let padding = "x".repeat(200);
    let data = doc! { "wallet_id": subject, "available": "1.5", "note": padding };
    OutboxDoc::new(
        "wallet.balance.updated",
        1,
        subject,
        &format!("user-of-{subject}"),
        data,
    )
}
