//! Users see and move only their own objects; roles gate service endpoints.

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn user_b_gets_404_for_every_object_of_user_a() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let alice_wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    let deposit = app.deposit(&payment, &alice_wallet, "3").await;
    let alice_tx = deposit.body["id"].as_str().unwrap().to_string();

    for path in [
        format!("/v1/wallets/{alice_wallet}"),
        format!("/v1/wallets/{alice_wallet}/ledger"),
        format!("/v1/transactions/{alice_tx}"),
    ] {
        let reply = app.get(&path, &bob.access_token).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.code(), "not_found");
    }
    let steal = app
        .post(
            "/v1/transfers",
            &bob.access_token,
            json!({ "from_wallet_id": alice_wallet, "to_wallet_id": bob_wallet, "amount": "1" }),
        )
        .await;
    assert_eq!(steal.status, StatusCode::NOT_FOUND);
    assert_eq!(steal.code(), "wallet_not_found");
    let withdraw = app
        .withdraw(&bob, json!({ "wallet_id": alice_wallet, "amount": "1", "destination_address": format!("0x{}", "ab".repeat(20)) }))
        .await;
    assert_eq!(withdraw.status, StatusCode::NOT_FOUND);

    let bob_list = app.get("/v1/wallets", &bob.access_token).await;
    assert_eq!(bob_list.body.as_array().unwrap().len(), 1);
    let bob_txs = app.get("/v1/transactions", &bob.access_token).await;
    assert!(bob_txs.body["items"].as_array().unwrap().is_empty());
    assert_eq!(app.wallet(&alice, &alice_wallet).await["available"], "3");
    app.assert_books_balance().await;
}

#[tokio::test]
async fn only_the_payment_role_can_deposit_and_only_users_can_transfer() {
    let app = TestApp::spawn().await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "USDT").await;
    let body = json!({ "wallet_id": wallet, "amount": "5", "external_reference": "r-1" });
    let by_user = app.post("/v1/deposits", &alice.access_token, body.clone()).await;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN);
    assert_eq!(by_user.code(), "forbidden");
    let admin = app.staff(Role::Admin).await;
    assert_eq!(
        app.post("/v1/deposits", &admin.access_token, body).await.status,
        StatusCode::FORBIDDEN
    );
    let payment = app.staff(Role::Payment).await;
    let transfer = app
        .post(
            "/v1/transfers",
            &payment.access_token,
            json!({ "from_wallet_id": wallet, "to_wallet_id": wallet, "amount": "1" }),
        )
        .await;
    assert_eq!(transfer.status, StatusCode::FORBIDDEN);
    assert_eq!(app.count("ledger_entries").await, 0, "nothing was written");
}

#[tokio::test]
async fn a_transfer_reaches_the_recipient_who_sees_it_too() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "ETH").await;
    let to = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &from, "2.5").await;
    let transfer = app
        .post(
            "/v1/transfers",
            &alice.access_token,
            json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "0.75" }),
        )
        .await;
    assert_eq!(transfer.status, StatusCode::CREATED, "{:?}", transfer.body);
    assert_eq!(transfer.body["state"], "confirmed");
    let tx = transfer.body["id"].as_str().unwrap();
    assert_eq!(app.wallet(&alice, &from).await["available"], "1.75");
    assert_eq!(app.wallet(&bob, &to).await["available"], "0.75");

    let seen_by_bob = app
        .get(&format!("/v1/transactions/{tx}"), &bob.access_token)
        .await;
    assert_eq!(seen_by_bob.status, StatusCode::OK);
    let entries = seen_by_bob.body["ledger_entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "bob sees only the entry on his own wallet");
    assert_eq!(entries[0]["amount"], "0.75");
    let ledger = app
        .get(&format!("/v1/wallets/{from}/ledger"), &alice.access_token)
        .await;
    let amounts: Vec<&str> = ledger.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, vec!["-0.75", "2.5"], "newest first");
    app.assert_books_balance().await;
}
