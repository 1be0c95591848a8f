//! Contention on one wallet: exact outcomes, balanced books, held funds not spendable.

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_transfers_drain_one_wallet_exactly() {
    // All 64 queue on one wallet's lock; on a loaded CI machine the last may wait longer than the
    // production default of 5 s (which answers 503 — tested separately). This test is about the
    // outcome of every request, so it waits as long as needed.
    let mut options = coffer_test_support::Options::default();
    options.store.lock_timeout = std::time::Duration::from_secs(120);
    let app = TestApp::spawn_with(options).await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let source = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &source, "10").await;
    let mut recipients = Vec::new();
    for _ in 0..4 {
        let user = app.register().await;
        let wallet = app.create_wallet(&user, "ETH").await;
        recipients.push((user, wallet));
    }

    let requests = (0..64).map(|i| {
        let body = json!({ "from_wallet_id": source, "to_wallet_id": recipients[i % 4].1, "amount": "0.3" });
        app.post("/v1/transfers", &alice.access_token, body)
    });
    let replies = futures::future::join_all(requests).await;

    let succeeded = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::UNPROCESSABLE_ENTITY && r.code() == "insufficient_funds")
        .count();
    let other: Vec<_> = replies
        .iter()
        .filter(|r| r.status != StatusCode::CREATED && r.code() != "insufficient_funds")
        .collect();
    assert!(other.is_empty(), "unexpected replies: {other:?}");
    assert_eq!(succeeded, 33, "floor(10 / 0.3) transfers fit");
    assert_eq!(refused, 31);

    assert_eq!(app.wallet(&alice, &source).await["available"], "0.1");
    let mut received = coffer_domain::Amount::ZERO;
    for (user, wallet) in &recipients {
        let text = app.wallet(user, wallet).await["available"]
            .as_str()
            .unwrap()
            .to_string();
        received = received
            .checked_add(coffer_domain::Amount::parse_decimal(&text, 18).unwrap())
            .unwrap();
    }
    assert_eq!(
        received.to_decimal_string(18),
        "9.9",
        "33 transfers of 0.3 reached the recipients"
    );
    // Writers of one wallet queue in the process instead of colliding in the database: no retry storm.
    assert_eq!(app.metric("coffer_ledger_transaction_retries_total"), 0.0);
    app.assert_books_balance().await;
}

#[tokio::test]
async fn held_funds_are_not_spendable() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "USDT").await;
    let other = app.create_wallet(&bob, "USDT").await;
    app.deposit(&payment, &wallet, "10").await;

    let withdrawal = app
        .withdraw(&alice, json!({ "wallet_id": wallet, "amount": "6", "destination_address": format!("0x{}", "12".repeat(20)) }))
        .await;
    assert_eq!(withdrawal.status, StatusCode::CREATED, "{:?}", withdrawal.body);
    assert_eq!(withdrawal.body["state"], "pending_broadcast");
    let timeline: Vec<&str> = withdrawal.body["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["to"].as_str().unwrap())
        .collect();
    assert_eq!(timeline, vec!["created", "pending_broadcast"]);
    let balances = app.wallet(&alice, &wallet).await;
    assert_eq!(
        (
            balances["available"].as_str(),
            balances["held"].as_str(),
            balances["total"].as_str()
        ),
        (Some("4"), Some("6"), Some("10"))
    );

    let too_much = app
        .post(
            "/v1/transfers",
            &alice.access_token,
            json!({ "from_wallet_id": wallet, "to_wallet_id": other, "amount": "5" }),
        )
        .await;
    assert_eq!(too_much.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_much.code(), "insufficient_funds");
    let the_rest = app
        .post(
            "/v1/transfers",
            &alice.access_token,
            json!({ "from_wallet_id": wallet, "to_wallet_id": other, "amount": "4" }),
        )
        .await;
    assert_eq!(the_rest.status, StatusCode::CREATED);
    let balances = app.wallet(&alice, &wallet).await;
    assert_eq!(
        (balances["available"].as_str(), balances["held"].as_str()),
        (Some("0"), Some("6"))
    );
    app.assert_books_balance().await;
}

#[tokio::test]
async fn a_movement_that_cannot_commit_within_its_bounds_gets_503_with_retry_after() {
    // Zero lock wait: a second writer to the same wallet is refused at once instead of queueing.
    let mut options = coffer_test_support::Options::default();
    options.store.lock_timeout = std::time::Duration::ZERO;
    let app = TestApp::spawn_with(options).await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "ETH").await;
    let to = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &from, "100").await;
    let requests = (0..16).map(|_| {
        app.post(
            "/v1/transfers",
            &alice.access_token,
            json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" }),
        )
    });
    let replies = futures::future::join_all(requests).await;
    let ok = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let busy: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(ok + busy.len(), 16);
    for reply in &busy {
        assert_eq!(reply.code(), "retry_later");
        assert!(reply.headers.contains_key("retry-after"));
    }
    assert!(ok >= 1);
    let available = app.wallet(&alice, &from).await["available"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        available,
        (100 - ok).to_string(),
        "exactly the committed transfers moved money"
    );
    if !busy.is_empty() {
        assert!(app.metric("coffer_ledger_transaction_give_ups_total") >= busy.len() as f64);
    }
    app.assert_books_balance().await;
}
