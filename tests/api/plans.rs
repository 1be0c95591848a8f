//! Issue 12: the cost of a request does not grow with the ledger. Every query the money path
//! sends (and the reads a mobile client makes beside it) is answered from an index: the test
//! records the filters the store really sends, asks the server for each one's plan, and fails on
//! a collection scan or an in-memory sort. The outbox publisher's rounds are checked the same way.

use std::time::Duration;

use coffer_store::inspect::QueryLog;
use coffer_store::Role;
use coffer_test_support::broker::{self, Broker};
use coffer_test_support::stream::{connect, events, Token};
use coffer_test_support::{Options, TestApp};
use serde_json::json;

/// Collections of a fixed, small size (one document per outbox partition, publisher replica or
/// audit shard):
/// reading all of one costs the same at any size of the ledger.
const FIXED_SIZE: [&str; 4] = [
    "outbox_sequences",
    "outbox_partitions",
    "outbox_replicas",
    "audit_heads",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_of_the_money_path_is_served_by_an_index() {
    let log = QueryLog::new();
    let app = TestApp::spawn_with(Options::recording_queries(&log)).await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let (a, b) = (
        app.create_wallet(&alice, "ETH").await,
        app.create_wallet(&bob, "ETH").await,
    );
    // What set-up sends (index creation, registration) is not the money path.
    log.clear();

    app.deposit(&payment, &a, "5").await;
    let transfer = json!({ "from_wallet_id": a, "to_wallet_id": b, "amount": "1" });
    let key = "plans-transfer";
    let first = app
        .send(
            "POST",
            "/v1/transfers",
            Some(&alice.access_token),
            Some(key),
            Some(&transfer),
        )
        .await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let replay = app
        .send(
            "POST",
            "/v1/transfers",
            Some(&alice.access_token),
            Some(key),
            Some(&transfer),
        )
        .await;
    assert!(replay.headers.contains_key("idempotent-replayed"));
    let too_much = json!({ "from_wallet_id": a, "to_wallet_id": b, "amount": "100" });
    assert_eq!(
        app.post("/v1/transfers", &alice.access_token, too_much)
            .await
            .code(),
        "insufficient_funds"
    );
    let withdrawal =
        json!({ "wallet_id": a, "amount": "0.5", "destination_address": format!("0x{}", "ab".repeat(20)) });
    assert_eq!(app.withdraw(&alice, withdrawal).await.status, 201);
    // A mobile client's reads beside it: balances, history, the stream resumed from an event.
    assert_eq!(app.wallet(&alice, &a).await["available"], "3.5");
    assert_eq!(
        app.get(&format!("/v1/wallets/{a}/ledger?limit=2"), &alice.access_token)
            .await
            .status,
        200
    );
    assert_eq!(
        app.get("/v1/transactions?limit=2", &alice.access_token)
            .await
            .status,
        200
    );
    let mut socket = connect(
        app.address,
        Token::Header(&bob.access_token),
        Some("00000000-0000-0000-0000-000000000000"),
    )
    .await;
    assert!(
        !events(&mut socket, 1, Duration::from_secs(10)).await.is_empty(),
        "history replayed"
    );

    // The outbox publisher's rounds over what the flow wrote: leases, the next range of each
    // partition, cursors, gauges; one event of its own is refused (nothing is bound to it), so
    // the retry path runs too.
    let mut broker = Broker::new().await;
    broker.queue("wallet.#").await;
    broker::insert_events(&app.store, &["unroutable".into()], 1, "test.unroutable").await;
    let (relay, _) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "plans"));
    let connection = coffer_events::broker::connect(&broker::amqp_uri(), "plans")
        .await
        .unwrap();
    let channel = coffer_events::broker::publisher_channel(&connection, &broker.exchange)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.store.outbox_dead_letter_count().await.unwrap() == 0 {
        relay.relay_once(&channel).await.unwrap();
        assert!(std::time::Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    relay.refresh_gauges().await.unwrap();
    app.store.outbox_oldest_pending().await.unwrap();
    broker.cleanup().await;

    let reports = app.store.explain_recorded(&log).await.expect("explain");
    let collections: std::collections::BTreeSet<&str> =
        reports.iter().map(|r| r.collection.as_str()).collect();
    for expected in [
        "wallets",
        "transactions",
        "idempotency_keys",
        "withdrawal_velocity",
        "ledger_entries",
        "outbox",
        "outbox_partitions",
        "devices",
    ] {
        assert!(
            collections.contains(expected),
            "the flow queried {expected}: {collections:?}"
        );
    }
    // A server that sorts even `_id` order in memory (SecantusDB) cannot be asked for index
    // order; MongoDB can, and there an in-memory sort would grow with the data.
    let check_sorts = app.store.sorts_from_indexes().await.expect("explain");
    if !check_sorts {
        eprintln!("this server sorts every result in memory: only collection scans are checked");
    }
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| !FIXED_SIZE.contains(&r.collection.as_str()))
        .filter(|r| r.scans_collection() || (check_sorts && r.sorts_in_memory()))
        .map(|r| format!("{} {:?} ({:?})", r.shape, r.stages, r.index))
        .collect();
    assert!(
        bad.is_empty(),
        "queries not served by an index:\n{}",
        bad.join("\n")
    );
}
