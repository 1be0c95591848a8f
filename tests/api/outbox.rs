//! The outbox publisher against the real RabbitMQ and the real MongoDB-compatible server.
//! Each test has its own database and its own exchange (see coffer_test_support::broker).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use coffer_store::{OutboxDoc, Role};
use coffer_test_support::broker::{self, Broker, Received};
use coffer_test_support::TestApp;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn ids_by_subject<'a>(messages: impl Iterator<Item = (&'a str, &'a str)>) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (subject, id) in messages {
        map.entry(subject.to_string()).or_default().push(id.to_string());
    }
    map
}

/// Per wallet, the ids received are the outbox ids in order (first deliveries only).
fn assert_wallet_order(rows: &[OutboxDoc], received: &[Received]) {
    let expected = ids_by_subject(rows.iter().map(|r| (r.subject.as_str(), r.id.as_str())));
    let mut seen = HashSet::new();
    let firsts = received.iter().filter(|m| seen.insert(m.message_id.clone()));
    let got = ids_by_subject(firsts.map(|m| (m.subject.as_str(), m.message_id.as_str())));
    assert_eq!(
        got, expected,
        "per wallet, events arrive exactly once each and in commit order"
    );
}

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    let families = registry.gather();
    let family = families.iter().find(|f| f.name() == name);
    family.map_or(0.0, |f| {
        f.get_metric()
            .iter()
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    })
}

#[tokio::test]
async fn every_committed_money_movement_publishes_exactly_its_events_in_wallet_order() {
    let app = TestApp::spawn().await;
    let mut broker = Broker::new().await;
    let queue = broker.queue("#").await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let (a, b) = (
        app.create_wallet(&alice, "ETH").await,
        app.create_wallet(&bob, "ETH").await,
    );
    app.deposit(&payment, &a, "2.5").await;
    let transfer = json!({ "from_wallet_id": a, "to_wallet_id": b, "amount": "0.75" });
    assert_eq!(
        app.post("/v1/transfers", &alice.access_token, transfer)
            .await
            .status,
        201
    );
    let withdrawal =
        json!({ "wallet_id": a, "amount": "0.5", "destination_address": format!("0x{}", "ab".repeat(20)) });
    assert_eq!(app.withdraw(&alice, withdrawal).await.status, 201);

    let (relay, registry) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "p1"));
    let publisher = broker::spawn_publisher(relay);
    let rows = broker::outbox_rows(&app.store).await;
    // deposit: 2 events (A); transfer: 4 (A and B); withdrawal request: 2 (A)
    assert_eq!(rows.len(), 8);
    let received = broker.take(&queue, rows.len() + 1, Duration::from_secs(2)).await;
    broker::await_drained(&app.store, WAIT).await;
    publisher.abort();

    assert_eq!(
        received.len(),
        rows.len(),
        "exactly one message per committed event, no more"
    );
    assert_wallet_order(&rows, &received);
    for (row, message) in rows
        .iter()
        .map(|r| (r, received.iter().find(|m| m.message_id == r.id).unwrap()))
    {
        assert_eq!(message.routing_key, row.event_type);
        assert!(message.persistent, "persistent delivery mode");
    }
    let balances = |wallet: &str| -> Vec<String> {
        let of_wallet = received
            .iter()
            .filter(|m| m.subject == wallet && m.routing_key == "wallet.balance.updated");
        of_wallet
            .map(|m| m.data["available"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        balances(&a),
        ["2.5", "1.75", "1.25"],
        "alice's balances in the order they changed"
    );
    assert_eq!(balances(&b), ["0.75"]);
    let amounts: Vec<&str> = received
        .iter()
        .filter(|m| m.subject == a && m.routing_key == "wallet.transaction.created")
        .map(|m| m.data["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["2.5", "-0.75", "-0.5"]);
    assert_eq!(counter(&registry, "coffer_outbox_published_total"), 8.0);
    let backlog = app.store.outbox_backlog(None).await.unwrap();
    assert_eq!((backlog.unpublished, backlog.retrying), (0, 0));
    for row in broker::outbox_rows(&app.store).await {
        assert!(app.store.outbox_published(&row).await.unwrap(), "{row:?}");
    }
    broker.cleanup().await;
}

#[tokio::test]
async fn a_publisher_killed_between_confirm_and_mark_republishes_with_the_same_message_ids() {
    let app = TestApp::spawn().await;
    let mut broker = Broker::new().await;
    let queue = broker.queue("#").await;
    let subjects: Vec<String> = (0..3).map(|i| format!("wallet-{i}")).collect();
    let rows = broker::insert_events(&app.store, &subjects, 4, "wallet.balance.updated").await;

    // The first publisher claims, publishes and gets its confirms, then "dies" before marking.
    let (doomed, _) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "doomed"));
    let connection = coffer_events::broker::connect(&broker::amqp_uri(), "doomed")
        .await
        .unwrap();
    let channel = coffer_events::broker::publisher_channel(&connection, &broker.exchange)
        .await
        .unwrap();
    let mut claim = doomed.claim().await.unwrap().expect("rows to claim");
    doomed.publish(&mut claim, &channel).await.unwrap();
    assert_eq!(claim.confirmed_ids().len(), rows.len());
    drop(claim);
    drop(connection);
    let first = broker.take(&queue, rows.len(), WAIT).await;
    assert_eq!(first.len(), rows.len());
    let unmarked = app.store.outbox_backlog(None).await.unwrap().unpublished;
    assert_eq!(
        unmarked,
        rows.len() as i64,
        "no cursor moved: the crash came first"
    );

    // Once the lease expires a second publisher takes over and sends the same messages again.
    let (heir, _) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "heir"));
    let publisher = broker::spawn_publisher(heir);
    broker::await_drained(&app.store, WAIT).await;
    publisher.abort();
    let again = broker.take(&queue, rows.len() + 1, Duration::from_secs(2)).await;
    let ids = |messages: &[Received]| messages.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&again),
        ids(&first),
        "the redelivered messages carry the same ids, in the same order"
    );
    assert_wallet_order(&rows, &again);
    broker.cleanup().await;
}

#[tokio::test]
async fn two_publishers_on_one_outbox_never_publish_the_same_event() {
    let app = TestApp::spawn().await;
    let mut broker = Broker::new().await;
    let queue = broker.queue("#").await;
    let subjects: Vec<String> = (0..30).map(|i| format!("wallet-{i:02}")).collect();
    let rows = broker::insert_events(&app.store, &subjects, 20, "wallet.transaction.created").await;
    let mut registries = Vec::new();
    let mut tasks = Vec::new();
    for owner in ["replica-a", "replica-b"] {
        let mut config = broker::relay_config(&broker.exchange, owner);
        config.batch_size = 50;
        config.lease = Duration::from_secs(30);
        let (relay, registry) = broker::relay(&app.store, config);
        registries.push(registry);
        tasks.push(broker::spawn_publisher(relay));
    }
    broker::await_drained(&app.store, WAIT).await;
    let received = broker.take(&queue, rows.len() + 1, Duration::from_secs(3)).await;
    tasks.iter().for_each(|t| t.abort());

    let distinct: HashSet<&str> = received.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(received.len(), rows.len(), "no event was published twice");
    assert_eq!(distinct.len(), rows.len(), "every event was published");
    assert_wallet_order(&rows, &received);
    let per_replica: Vec<f64> = registries
        .iter()
        .map(|r| counter(r, "coffer_outbox_published_total"))
        .collect();
    assert_eq!(
        per_replica.iter().sum::<f64>(),
        rows.len() as f64,
        "confirms counted once: {per_replica:?}"
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn a_poison_row_is_dead_lettered_and_the_rest_keep_flowing() {
    let app = TestApp::spawn().await;
    let mut broker = Broker::new().await;
    let queue = broker.queue("wallet.#").await;
    let healthy = broker::insert_events(
        &app.store,
        &["wallet-ok".to_string()],
        5,
        "wallet.balance.updated",
    )
    .await;
    // Nothing is bound to this routing key: the broker returns it (mandatory) on every attempt.
    let mut poison = [broker::synthetic_row("wallet-p", "unroutable.poison", 0)];
    app.store.append_events(&mut poison).await.unwrap();
    let [poison] = poison;
    let behind =
        broker::insert_events(&app.store, &["wallet-p".to_string()], 3, "wallet.balance.updated").await;

    let (relay, registry) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "p1"));
    let publisher = broker::spawn_publisher(relay);
    broker::await_drained(&app.store, WAIT).await;
    let received = broker.take(&queue, 9, Duration::from_secs(3)).await;
    let dead = broker
        .take(&broker.dead_letter_queue(), 2, Duration::from_secs(3))
        .await;
    publisher.abort();

    let mut expected: Vec<OutboxDoc> = healthy.into_iter().chain(behind).collect();
    expected.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(
        received.len(),
        8,
        "every healthy event arrives, the poison one does not"
    );
    assert_wallet_order(&expected, &received);
    let ids: Vec<&str> = dead.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![poison.id.as_str()],
        "the poison row is in the dead-letter queue, once"
    );
    let stored = coffer_events::relay::dead_letters(&app.store, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].id.as_str(), stored[0].attempts),
        (poison.id.as_str(), 3)
    );
    assert!(
        stored[0].last_error.as_deref().unwrap().contains("NO_ROUTE"),
        "{:?}",
        stored[0].last_error
    );
    assert_eq!(counter(&registry, "coffer_outbox_dead_lettered_total"), 1.0);
    assert_eq!(counter(&registry, "coffer_outbox_publish_failures_total"), 3.0);
    broker.cleanup().await;
}
