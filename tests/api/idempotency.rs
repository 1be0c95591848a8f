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

#[tokio::test]
async fn a_transfer_refused_for_insufficient_funds_succeeds_with_the_same_key_once_funded() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "ETH").await;
    let to = app.create_wallet(&bob, "ETH").await;
    let body = json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "2" });
    let key = uuid::Uuid::new_v4().to_string();
    let transfer = || {
        app.send(
            "POST",
            "/v1/transfers",
            Some(&alice.access_token),
            Some(&key),
            Some(&body),
        )
    };
    let refused = transfer().await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.code(), "insufficient_funds");
    app.deposit(&payment, &from, "5").await;
    let retried = transfer().await;
    assert_eq!(retried.status, StatusCode::CREATED, "{:?}", retried.body);
    assert!(retried.headers.get("idempotent-replayed").is_none());
    let replayed = transfer().await;
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    assert_eq!(replayed.body["id"], retried.body["id"]);
    assert_eq!(app.wallet(&alice, &from).await["available"], "3");
}

#[tokio::test]
async fn a_withdrawal_refused_for_reauthentication_succeeds_with_the_same_key_after_logging_in() {
    let options = coffer_test_support::Options {
        withdrawal_reauth_window: Some(std::time::Duration::from_secs(1)),
        ..Default::default()
    };
    let app = TestApp::spawn_with(options).await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "1").await;
    let device = app.trusted_test_device(&alice).await;
    let destination = format!("0x{}", "ab".repeat(20));
    app.save_address_for(&alice, &wallet, &destination).await;
    let body = json!({ "wallet_id": wallet, "amount": "0.5", "destination_address": destination });
    let key = uuid::Uuid::new_v4().to_string();
    let withdraw = |token: String| {
        let (key, body, device) = (key.clone(), body.clone(), device.clone());
        let app = &app;
        async move {
            // Each attempt is signed anew (its own nonce): the retry is the same intent, resent.
            let bytes = serde_json::to_vec(&body).unwrap();
            let signed = device.sign("POST", "/v1/withdrawals", &bytes);
            let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            app.send_with(
                "POST",
                "/v1/withdrawals",
                Some(&token),
                Some(&key),
                Some(&body),
                &headers,
            )
            .await
        }
    };
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let refused = withdraw(alice.access_token.clone()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{:?}", refused.body);
    assert_eq!(refused.code(), "reauthentication_required");
    let fresh = app.login(&alice.email, &alice.password).await;
    let retried = withdraw(fresh.access_token.clone()).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{:?}", retried.body);
    assert_eq!(app.wallet(&alice, &wallet).await["available"], "0.5");
}

#[tokio::test]
async fn an_approval_refused_for_insufficient_funds_is_not_replayed_by_the_claim_middleware() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let finance = app.staff(Role::Finance).await;
    let admin = app.staff(Role::Admin).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    let proposed = app
        .post(
            "/v1/admin/adjustments",
            &finance.access_token,
            json!({ "wallet_id": wallet, "amount": "-2", "reason": "duplicate credit" }),
        )
        .await;
    assert_eq!(proposed.status, StatusCode::CREATED, "{:?}", proposed.body);
    let id = proposed.body["id"].as_str().unwrap();
    let path = format!("/v1/admin/adjustments/{id}/approve");
    let key = uuid::Uuid::new_v4().to_string();
    let body = json!({ "reason": "checked" });
    let approve = || app.send("POST", &path, Some(&admin.access_token), Some(&key), Some(&body));
    let refused = approve().await;
    assert_eq!(refused.code(), "insufficient_funds", "{:?}", refused.body);
    app.deposit(&payment, &wallet, "3").await;
    let retried = approve().await;
    assert_eq!(retried.status, StatusCode::OK, "{:?}", retried.body);
    assert!(retried.headers.get("idempotent-replayed").is_none());
    assert_eq!(retried.body["adjustment"]["status"], "approved");
    assert_eq!(app.wallet(&alice, &wallet).await["available"], "1");
    // A verdict on the request itself is still replayed: a user's refusal stays a refusal.
    let user_key = uuid::Uuid::new_v4().to_string();
    for replayed in [false, true] {
        let forbidden = app
            .send(
                "POST",
                &path,
                Some(&alice.access_token),
                Some(&user_key),
                Some(&body),
            )
            .await;
        assert_eq!(forbidden.code(), "forbidden");
        assert_eq!(forbidden.headers.contains_key("idempotent-replayed"), replayed);
    }
    app.assert_books_balance().await;
}

#[tokio::test]
async fn a_trust_refused_for_an_untrusted_voucher_succeeds_with_the_same_key_once_it_is_trusted() {
    let options = coffer_test_support::Options {
        device_trust_delay: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let app = TestApp::spawn_with(options).await;
    let alice = app.register().await;
    let (voucher, _) = app.register_device(&alice, "old phone").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (new, _) = app.register_device(&alice, "new phone").await;
    let key = uuid::Uuid::new_v4().to_string();
    let path = format!("/v1/devices/{}/trust", new.id);
    let trust = || app.send_signed("POST", &path, &alice, &key, None, &voucher);
    let refused = trust().await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    assert_eq!(refused.code(), "device_not_trusted");
    tokio::time::sleep(std::time::Duration::from_millis(1900)).await;
    let retried = trust().await;
    assert_eq!(retried.status, StatusCode::OK, "{:?}", retried.body);
    assert_eq!(retried.body["trusted"], true);
}
