//! Bad input gets a 400 with a specific code and writes nothing.

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn bad_amounts_get_specific_codes_and_write_nothing() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "USDT").await;
    let to = app.create_wallet(&bob, "USDT").await;
    app.deposit(&payment, &from, "100").await;
    let entries_before = app.count("ledger_entries").await;
    let above_u256 = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
    let cases: Vec<(Value, &str)> = vec![
        (json!("-1"), "amount_negative"),
        (json!("1.0000001"), "amount_too_precise"),
        (json!("1e3"), "amount_malformed"),
        (json!(above_u256), "amount_too_large"),
        (json!("1000000000000000000000000000"), "amount_too_large"), // valid U256, above the ledger limit
        (json!(""), "amount_empty"),
        (json!("0"), "amount_zero"),
        (json!(1.5), "amount_not_string"),
        (json!(2), "amount_not_string"),
        (json!(null), "amount_not_string"),
    ];
    for (amount, code) in cases {
        let reply = app
            .post(
                "/v1/transfers",
                &alice.access_token,
                json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": amount }),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{amount}: {:?}",
            reply.body
        );
        assert_eq!(reply.code(), code, "{amount}");
        assert_eq!(reply.body["field"], "amount");
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    assert_eq!(app.count("ledger_entries").await, entries_before);
    assert_eq!(app.wallet(&alice, &from).await["available"], "100");
}

#[tokio::test]
async fn bad_bodies_get_specific_codes() {
    let app = TestApp::spawn().await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    let key = Some("k-1");
    let token = Some(alice.access_token.as_str());

    let unknown = json!({ "from_wallet_id": wallet, "to_wallet_id": wallet, "amount": "1", "memo": "x" });
    let reply = app
        .send("POST", "/v1/transfers", token, key, Some(&unknown))
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "unknown_field")
    );

    let missing = json!({ "from_wallet_id": wallet, "amount": "1" });
    let reply = app
        .send("POST", "/v1/transfers", token, Some("k-2"), Some(&missing))
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "missing_field")
    );

    let raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/v1/transfers"))
            .bearer_auth(&alice.access_token)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let malformed = raw("{\"amount\": ", "application/json").await.unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json::<Value>().await.unwrap()["code"], "malformed_json");
    let form = raw("amount=1", "application/x-www-form-urlencoded")
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let huge = json!({ "asset": "x".repeat(100 * 1024) });
    let reply = app
        .send("POST", "/v1/wallets", token, Some("k-3"), Some(&huge))
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );

    let reply = app
        .post("/v1/wallets", &alice.access_token, json!({ "asset": "DOGE" }))
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "unknown_asset")
    );
    assert_eq!(app.count("ledger_entries").await, 0);
}

#[tokio::test]
async fn transfers_to_self_or_across_assets_are_refused() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let eth = app.create_wallet(&alice, "ETH").await;
    let usdt = app.create_wallet(&alice, "USDT").await;
    app.deposit(&payment, &eth, "1").await;
    let to_self = app
        .post(
            "/v1/transfers",
            &alice.access_token,
            json!({ "from_wallet_id": eth, "to_wallet_id": eth, "amount": "0.1" }),
        )
        .await;
    assert_eq!(
        (to_self.status, to_self.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "same_wallet")
    );
    let across = app
        .post(
            "/v1/transfers",
            &alice.access_token,
            json!({ "from_wallet_id": eth, "to_wallet_id": usdt, "amount": "0.1" }),
        )
        .await;
    assert_eq!(
        (across.status, across.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "asset_mismatch")
    );
    assert_eq!(app.wallet(&alice, &eth).await["available"], "1");
}

#[tokio::test]
async fn withdrawal_limits_and_addresses_are_checked_before_anything_is_held() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "500").await;
    let address = format!("0x{}", "ab".repeat(20));
    let cases = [
        (
            json!({ "wallet_id": wallet, "amount": "0.00001", "destination_address": address }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "below_minimum",
        ),
        (
            json!({ "wallet_id": wallet, "amount": "101", "destination_address": address }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "above_maximum",
        ),
        (
            json!({ "wallet_id": wallet, "amount": "1", "destination_address": "0x123" }),
            StatusCode::BAD_REQUEST,
            "invalid_address",
        ),
    ];
    for (body, status, code) in cases {
        let reply = app.withdraw(&alice, body).await;
        assert_eq!((reply.status, reply.code()), (status, code));
    }
    let balances = app.wallet(&alice, &wallet).await;
    assert_eq!(
        (balances["available"].as_str(), balances["held"].as_str()),
        (Some("500"), Some("0"))
    );
}
