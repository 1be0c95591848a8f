//! The broker restarts while the outbox publisher is relaying 1,000 events: all arrive, none is
//! lost, duplicates share a `message_id`. This stops the shared RabbitMQ for a few seconds, so it
//! is its own test binary and runs alone in the `rabbitmq-restart` nextest group
//! (.config/nextest.toml); with plain `cargo test` binaries run one after another anyway.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use coffer_test_support::broker::{self, Broker};
use coffer_test_support::TestApp;

/// Restarts the broker's app on drop, so a failing test never leaves RabbitMQ stopped.
struct StartOnDrop;

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        start_broker();
    }
}

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `start_app`, then poll `check_running` (after `stop_app`, `await_startup` hangs).
fn start_broker() {
    rabbitmqctl(&["start_app"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let running = Command::new("rabbitmq-diagnostics")
            .args(["-q", "check_running"])
            .output();
        if running.map(|o| o.status.success()).unwrap_or(false) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("RabbitMQ did not come back within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_while_publishing_loses_no_event() {
    let app = TestApp::spawn().await;
    let mut broker = Broker::new().await;
    let queue = broker.queue("#").await;
    let subjects: Vec<String> = (0..20).map(|i| format!("wallet-{i:02}")).collect();
    let (relay, registry) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "p1"));
    let publisher = broker::spawn_publisher(relay);

    // Money keeps moving while the broker is away: 1,000 events written over about 5 s.
    let store = app.store.clone();
    let writer = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..25 {
            let rows = broker::insert_events(&store, &subjects, 2, "wallet.balance.updated").await;
            ids.extend(rows.into_iter().map(|r| r.id));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ids
    });
    let published = |r: &prometheus::Registry| {
        r.gather()
            .iter()
            .filter(|f| f.name() == "coffer_outbox_published_total")
            .map(|f| f.get_metric()[0].get_counter().get_value())
            .sum::<f64>()
    };
    while published(&registry) < 50.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let _restart = StartOnDrop;
        let stopped = tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
            .await
            .unwrap();
        assert!(stopped, "rabbitmqctl stop_app failed");
        assert!(
            published(&registry) < 1000.0,
            "the restart must happen mid-stream"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::spawn_blocking(|| drop(_restart)).await.unwrap();
    }
    let ids = writer.await.unwrap();
    assert_eq!(ids.len(), 1000);
    // Generous: the relay is slow on a loaded machine (see docs/benchmarks.md, "Outbox publisher").
    broker::await_drained(&app.store, Duration::from_secs(300)).await;
    publisher.abort();

    let broker = Broker::reopen(broker).await;
    let received = broker.drain(&queue).await;
    let distinct: HashSet<&str> = received.iter().map(|m| m.message_id.as_str()).collect();
    let expected: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(distinct, expected, "every event arrived, and only ours");
    let duplicates = received.len() - distinct.len();
    eprintln!(
        "received {} messages for 1000 events ({duplicates} duplicates, each sharing its event's message_id)",
        received.len()
    );
    broker.cleanup().await;
}
