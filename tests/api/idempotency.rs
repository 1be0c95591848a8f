//! Idempotency-Key: applied once, replayed, refused when reused for another request.

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_requests_with_one_key_apply_once() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "ETH").await;
    let to = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &from, "5").await;
    let body = json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" });
    let key = uuid::Uuid::new_v4().to_string();
    let requests = (0..20).map(|_| {
        app.send(
            "POST",
            "/v1/transfers",
            Some(&alice.access_token),
            Some(&key),
            Some(&body),
        )
    });
    let replies = futures::future::join_all(requests).await;

    let created: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    let in_progress = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT && r.code() == "idempotency_key_in_progress")
        .count();
    assert_eq!(created.len() + in_progress, 20, "{replies:?}");
    assert!(!created.is_empty());
    let ids: std::collections::BTreeSet<&str> =
        created.iter().map(|r| r.body["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "every success is the same transaction");
    assert_eq!(
        app.wallet(&alice, &from).await["available"],
        "4",
        "applied exactly once"
    );
    assert_eq!(app.wallet(&bob, &to).await["available"], "1");

    // Once finished, the key replays the stored response.
    let replay = app
        .send(
            "POST",
            "/v1/transfers",
            Some(&alice.access_token),
            Some(&key),
            Some(&body),
        )
        .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body["id"].as_str(), ids.first().copied());
    assert!(app.metric("coffer_idempotent_replays_total") >= 1.0);
    app.assert_books_balance().await;
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "ETH").await;
    let to = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &from, "5").await;
    let key = "transfer-0001";
    let first = json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" });
    let second = json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "2" });
    let ok = app
        .send(
            "POST",
            "/v1/transfers",
            Some(&alice.access_token),
            Some(key),
            Some(&first),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let reused = app
        .send(
            "POST",
            "/v1/transfers",
            Some(&alice.access_token),
            Some(key),
            Some(&second),
        )
        .await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.code(), "idempotency_key_reused");
    assert_eq!(app.wallet(&alice, &from).await["available"], "4");

    // Keys are per user: Bob may use the same key string for his own request.
    let back = json!({ "from_wallet_id": to, "to_wallet_id": from, "amount": "0.5" });
    let bobs = app
        .send(
            "POST",
            "/v1/transfers",
            Some(&bob.access_token),
            Some(key),
            Some(&back),
        )
        .await;
    assert_eq!(bobs.status, StatusCode::CREATED, "{:?}", bobs.body);
}

#[tokio::test]
async fn money_endpoints_require_an_idempotency_key() {
    let app = TestApp::spawn().await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    let body = json!({ "from_wallet_id": wallet, "to_wallet_id": wallet, "amount": "1" });
    let reply = app
        .send(
            "POST",
            "/v1/transfers",
            Some(&alice.access_token),
            None,
            Some(&body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "idempotency_key_required");
}

#[tokio::test]
async fn a_repeated_deposit_reference_credits_once() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "USDT").await;
    let body = json!({ "wallet_id": wallet, "amount": "25.5", "external_reference": "bank-77" });
    let first = app
        .post("/v1/deposits", &payment.access_token, body.clone())
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app.post("/v1/deposits", &payment.access_token, body).await; // a new Idempotency-Key
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["id"], first.body["id"]);
    let conflicting = json!({ "wallet_id": wallet, "amount": "30", "external_reference": "bank-77" });
    let conflict = app.post("/v1/deposits", &payment.access_token, conflicting).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.code(), "external_reference_conflict");
    assert_eq!(app.wallet(&alice, &wallet).await["available"], "25.5");
    app.assert_books_balance().await;
}
