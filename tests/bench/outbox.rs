//! `coffer-bench outbox [EVENTS]`: the outbox publisher against the ledger it serves, in one run on
//! one server and one broker (issue 12):
//!
//! 1. the ledger's peak commit rate in events/s: 64 API clients on spread wallets, counting the
//!    outbox rows their transfers wrote (no publisher runs meanwhile, so they stay as backlog);
//! 2. raw lapin: the broker's own rate, confirms awaited per 1,000;
//! 3. drain: a backlog of EVENTS (default 20,000: the transfers' events and synthetic ones) drained
//!    by two publisher replicas; every message is checked to arrive, and per wallet in commit order;
//! 4. latency at half the target drain rate, i.e. at the ledger's peak commit rate (or half the
//!    measured drain rate if that is lower): events appended at that rate for 10 s while the replicas run,
//!    commit → broker delivery and commit → WebSocket delivery (real sockets of the API, fed by
//!    the API's stream consumer) at p50/p99.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_store::{codec, OutboxDoc};
use coffer_test_support::broker::{self, Broker};
use coffer_test_support::stream::{connect, next_event, Token};
use coffer_test_support::{Options, TestApp};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

const WALLETS: usize = 200;
const SOCKETS: usize = 20;

/// One delivery seen by a consumer: which message, of which wallet, when (ms since the epoch).
#[derive(Clone)]
struct Seen {
    message_id: String,
    subject: String,
    delivered_ms: i64,
}

pub async fn run(events: usize) {
    let app = TestApp::spawn_with(Options::default()).await;
    println!(
        "coffer-bench outbox: {events} events, load average {}",
        super::load_average()
    );

    let before = backlog(&app).await;
    let ledger = super::api_transfers(&app, 64, 1600, false).await;
    let written = backlog(&app).await - before;
    let ledger_rate = written as f64 / ledger.elapsed.as_secs_f64();
    println!(
        "{:<58} {:>8.0} events/s ({:.0} transfers/s, {written} events)",
        "ledger peak commit rate (API, 64 clients, spread wallets)",
        ledger_rate,
        ledger.rate()
    );

    let mut broker = Broker::new().await;
    let raw = raw_lapin(&broker, 10_000).await;
    println!("{:<58} {:>8.0} msg/s", "raw lapin, confirms per 1,000", raw);

    let synthetic = events.saturating_sub(written as usize);
    append_synthetic(&app, synthetic, "drain").await;
    let expected = broker::outbox_rows(&app.store).await;
    let queue = broker.queue("#").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let consumer = consume(&broker, &queue, seen.clone()).await;
    let started = Instant::now();
    let publishers: Vec<_> = ["bench-a", "bench-b"]
        .into_iter()
        .map(|owner| {
            let config = coffer_events::RelayConfig::new(&broker.exchange, owner);
            broker::spawn_publisher(broker::relay(&app.store, config).0)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while distinct(&seen) < expected.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = expected.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "{:<58} {:>8.0} events/s  ratio to ledger peak {:.2} (target >= 2)  to raw lapin {:.2}",
        format!("drain {} events, two publisher replicas", expected.len()),
        drain,
        drain / ledger_rate,
        drain / raw
    );
    check_order(&expected, &seen.lock().unwrap());

    // Half the target drain rate (2x the ledger's peak) is the ledger's peak itself: no writer
    // commits events faster, so a higher offered rate would measure a backlog, not the relay.
    // Then half of that again, to show how the latency depends on the load the server carries.
    let offered = (drain / 2.0).min(ledger_rate);
    for rate in [offered, offered / 2.0] {
        let latency = latency_phase(&app, &broker, seen.clone(), rate).await;
        println!(
            "{:<58} p50 {:>6.1} ms  p99 {:>6.1} ms (target p99 < 50)",
            format!("commit -> broker delivery at {rate:.0} events/s"),
            latency.0 .0,
            latency.0 .1
        );
        println!(
            "{:<58} p50 {:>6.1} ms  p99 {:>6.1} ms (target p99 < 100)",
            "commit -> WebSocket delivery", latency.1 .0, latency.1 .1
        );
    }
    publishers.iter().for_each(|p| p.abort());
    consumer.abort();
    broker.cleanup().await;
    super::verify(&app).await;
}

async fn backlog(app: &TestApp) -> i64 {
    app.store.outbox_backlog(None).await.expect("backlog").unpublished
}

fn distinct(seen: &Mutex<Vec<Seen>>) -> usize {
    let seen = seen.lock().unwrap();
    seen.iter().map(|s| &s.message_id).collect::<HashSet<_>>().len()
}

/// Appends `count` synthetic balance events over WALLETS wallets, 500 per transaction.
async fn append_synthetic(app: &TestApp, count: usize, tag: &str) {
    let mut rows: Vec<OutboxDoc> = (0..count).map(|i| synthetic(i % WALLETS, tag)).collect();
    for chunk in rows.chunks_mut(500) {
        app.store.append_events(chunk).await.expect("append");
    }
}

fn synthetic(wallet: usize, user: &str) -> OutboxDoc {
    let data = serde_json::json!({ "wallet_id": format!("wallet-{wallet}"), "available": "1.5", "note": "x".repeat(200) });
    OutboxDoc::new(
        "wallet.balance.updated",
        1,
        &format!("wallet-{wallet}"),
        user,
        data,
    )
}

/// The broker's own rate on this machine: `count` persistent messages, confirms per 1,000.
async fn raw_lapin(broker: &Broker, count: usize) -> f64 {
    let channel = coffer_events::broker::publisher_channel(&broker.connection, &broker.exchange)
        .await
        .expect("channel");
    let body = vec![b'x'; 400];
    let started = Instant::now();
    for _ in 0..count / 1000 {
        for _ in 0..1000 {
            let properties = BasicProperties::default().with_delivery_mode(2);
            let options = BasicPublishOptions {
                mandatory: false,
                ..Default::default()
            };
            let key = "raw.baseline".into();
            let confirm =
                channel.basic_publish(broker.exchange.as_str().into(), key, options, &body, properties);
            drop(confirm.await.expect("publish"));
        }
        channel.wait_for_confirms().await.expect("confirms");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Consumes `queue` (auto-ack), recording every delivery.
async fn consume(broker: &Broker, queue: &str, seen: Arc<Mutex<Vec<Seen>>>) -> tokio::task::JoinHandle<()> {
    let channel = broker.connection.create_channel().await.expect("channel");
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .expect("qos");
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = channel
        .basic_consume(queue.into(), "bench".into(), options, FieldTable::default())
        .await
        .expect("consume");
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            let properties = &delivery.properties;
            let header = |name: &str| coffer_events::envelope::header(properties, name);
            let delivered_ms = codec::now().timestamp_millis();
            let message_id = properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let subject = header("cloudEvents:subject").unwrap_or_default();
            seen.lock().unwrap().push(Seen {
                message_id,
                subject,
                delivered_ms,
            });
        }
    })
}

/// Every row arrived, and per wallet the first deliveries are in sequence (commit) order.
fn check_order(expected: &[OutboxDoc], seen: &[Seen]) {
    let mut by_subject: BTreeMap<&str, Vec<&OutboxDoc>> = BTreeMap::new();
    for row in expected {
        by_subject.entry(&row.subject).or_default().push(row);
    }
    let mut firsts: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut ids = HashSet::new();
    for s in seen.iter().filter(|s| ids.insert(s.message_id.as_str())) {
        firsts.entry(&s.subject).or_default().push(&s.message_id);
    }
    let mut misordered = 0;
    for (subject, rows) in &mut by_subject {
        rows.sort_by_key(|r| r.seq);
        let want: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        misordered += usize::from(firsts.get(subject) != Some(&want));
    }
    let duplicates = seen.len() - ids.len();
    println!(
        "  order: {} wallets, {misordered} out of order; {} delivered, {duplicates} duplicate deliveries",
        by_subject.len(),
        ids.len()
    );
    assert_eq!(misordered, 0, "per-wallet order holds");
    assert_eq!(ids.len(), expected.len(), "every event arrived");
}

/// Appends events for SOCKETS users at `rate` for 10 s, each transaction taking every row due
/// by then, and notes when each committed; returns ((p50, p99) commit → broker delivery,
/// (p50, p99) commit → WebSocket delivery) in milliseconds.
async fn latency_phase(
    app: &TestApp,
    broker: &Broker,
    seen: Arc<Mutex<Vec<Seen>>>,
    rate: f64,
) -> ((f64, f64), (f64, f64)) {
    let consumer = broker::spawn_stream_consumer(&broker.exchange, app.stream_hub.clone()).await;
    let mut users = Vec::new();
    let mut readers = Vec::new();
    let socket_seen = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..SOCKETS {
        let user = app.register().await;
        let mut socket = connect(app.address, Token::Header(&user.access_token), None).await;
        let sink = socket_seen.clone();
        readers.push(tokio::spawn(async move {
            while let Some(event) = next_event(&mut socket, Duration::from_secs(5)).await {
                let id = event["id"].as_str().unwrap_or_default().to_string();
                sink.lock().unwrap().push((id, codec::now().timestamp_millis()));
            }
        }));
        users.push(user.id.clone());
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // sockets registered in the hub
    let mut committed: HashMap<String, i64> = HashMap::new();
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed() < Duration::from_secs(10) {
        let due = (rate * started.elapsed().as_secs_f64()) as usize;
        if due > n {
            let mut rows: Vec<OutboxDoc> = (n..due)
                .map(|i| synthetic(i % WALLETS, &users[i % SOCKETS]))
                .collect();
            n = due;
            app.store.append_events(&mut rows).await.expect("append");
            let at = codec::now().timestamp_millis();
            committed.extend(rows.into_iter().map(|r| (r.id, at)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let latency = |deliveries: Vec<(String, i64)>| -> Vec<i64> {
        let mut firsts = HashSet::new();
        deliveries
            .into_iter()
            .filter(|(id, _)| firsts.insert(id.clone()))
            .filter_map(|(id, at)| committed.get(&id).map(|c| at - c))
            .collect()
    };
    let broker_seen: Vec<(String, i64)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.message_id.clone(), s.delivered_ms))
        .collect();
    let broker_ms = latency(broker_seen);
    let socket_ms = latency(socket_seen.lock().unwrap().clone());
    println!(
        "  latency phase: {n} events appended in {:.1} s ({:.0}/s); {} reached the broker's consumer, {} the WebSockets",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64(),
        broker_ms.len(),
        socket_ms.len()
    );
    readers.iter().for_each(|r| r.abort());
    consumer.abort();
    (percentiles(broker_ms), percentiles(socket_ms))
}

fn percentiles(mut values: Vec<i64>) -> (f64, f64) {
    values.sort_unstable();
    let at = |q: f64| {
        values
            .get(((values.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |v| *v as f64)
    };
    (at(0.5), at(0.99))
}
