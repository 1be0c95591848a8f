//! Contention on one wallet: exact outcomes, balanced books, held funds not spendable.

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_transfers_drain_one_wallet_exactly() {
    // All 64 go through the process's group commit; on a loaded CI machine the last may wait
    // longer than the production default of 10 s (which answers 503 — tested separately). This
    // test is about the outcome of every request, so it waits as long as needed.
    let mut options = coffer_test_support::Options::default();
    options.store.batch.movement_timeout = std::time::Duration::from_secs(120);
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
    // Writers of one wallet are batched by the process instead of colliding in the database.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_movement_not_answered_in_time_gets_503_and_its_retry_moves_it_exactly_once() {
    // An impatient replica (it answers 503 after 1 ms, long before a commit on this server) and
    // a patient one on the same database.
    let mut impatient = coffer_test_support::Options::default();
    impatient.store.batch.movement_timeout = std::time::Duration::from_millis(1);
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    impatient.database = Some(database.clone());
    let hasty = TestApp::spawn_with(impatient).await;
    let patient = TestApp::spawn_with(coffer_test_support::Options {
        database: Some(database),
        ..Default::default()
    })
    .await;
    let payment = patient.staff(Role::Payment).await;
    let (alice, bob) = (patient.register().await, patient.register().await);
    let from = patient.create_wallet(&alice, "ETH").await;
    let to = patient.create_wallet(&bob, "ETH").await;
    patient.deposit(&payment, &from, "100").await;
    let transfer = json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" });
    let keys: Vec<String> = (0..16).map(|i| format!("hasty-{i}")).collect();
    let replies = futures::future::join_all(keys.iter().map(|key| {
        hasty.send("POST", "/v1/transfers", Some(&alice.access_token), Some(key), Some(&transfer))
    }))
    .await;
    let busy: Vec<_> = replies.iter().filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert_eq!(busy.len(), 16, "none could be answered within 1 ms: {replies:?}");
    for reply in &busy {
        assert_eq!(reply.code(), "retry_later");
        assert!(reply.headers.contains_key("retry-after"));
    }
    assert!(hasty.metric("coffer_ledger_transaction_give_ups_total") >= 16.0);
    // The movements still commit after their 503 (a 503 means "not known to be done", never
    // "not done"). Each client retries with its key on the other replica: replayed, not re-run.
    for _ in 0..100 {
        if patient.count("transactions").await == 17 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut replayed = 0;
    for key in &keys {
        let retry = patient
            .send("POST", "/v1/transfers", Some(&alice.access_token), Some(key), Some(&transfer))
            .await;
        assert_eq!(retry.status, StatusCode::CREATED, "{:?}", retry.body);
        replayed += usize::from(retry.headers.contains_key("idempotent-replayed"));
    }
    assert_eq!(replayed, 16, "the hasty replica's batches committed after it answered 503");
    assert_eq!(
        patient.wallet(&alice, &from).await["available"],
        "84",
        "16 transfers of 1, each exactly once"
    );
    patient.assert_books_balance().await;
}
