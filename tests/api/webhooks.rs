//! Provider webhooks: signed, duplicate-safe, checked against the chain, and credited once with
//! the listener's path.

use alloy::primitives::U256;
use coffer_store::Role;
use coffer_test_support::Options;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::chain::{eth, spec, world_on, World, CHAIN};

const SECRET: &str = "whsec-test-0123456789abcdef";

fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post_webhook(w: &World, header: Option<String>, body: &Value) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut request = w
        .app
        .client
        .post(w.app.url("/v1/webhooks/alchemy"))
        .header("content-type", "application/json")
        .body(bytes);
    if let Some(header) = header {
        request = request.header("Coffer-Signature", header);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn signed(body: &Value, timestamp: i64) -> Option<String> {
    Some(signature(SECRET, timestamp, &serde_json::to_vec(body).unwrap()))
}

async fn webhook_world() -> World {
    webhook_world_of(&[spec("ETH", 18, None, 2)], "ETH").await
}

async fn webhook_world_of(specs: &[coffer_domain::asset::AssetSpec], asset: &str) -> World {
    let anvil = coffer_test_support::chain::Anvil::start().await;
    let options = Options {
        webhook_secrets: vec![("alchemy".into(), SECRET.into())],
        chain_rpcs: vec![(CHAIN.into(), anvil.rpc.clone())],
        ..Options::default()
    };
    world_on(anvil, specs, asset, options).await
}

/// A webhook event for `hash` as the chain mined it, reporting `to`, `asset` and `amount`.
async fn event_of(
    w: &World,
    hash: &str,
    log_index: Option<u64>,
    to: &str,
    asset: &str,
    amount: &str,
) -> Value {
    let receipt = w.anvil.receipt_of(hash).await;
    let number = receipt["blockNumber"].as_str().unwrap().trim_start_matches("0x");
    json!({ "chain": CHAIN, "tx_hash": hash, "log_index": log_index, "to": to, "asset": asset,
        "amount": amount, "block_number": u64::from_str_radix(number, 16).unwrap(),
        "block_hash": receipt["blockHash"] })
}

/// Everything a webhook could change: the wallet's balances, transactions, ledger entries,
/// deposits.
async fn books(w: &World) -> ((String, String), u64, u64, u64) {
    (
        w.balances().await,
        w.app.count("transactions").await,
        w.app.count("ledger_entries").await,
        w.app.count("chain_deposits").await,
    )
}

/// Posts `event` (signed) and asserts that it is rejected for `reason`, changes none of the books,
/// is kept for review and is counted.
async fn assert_rejected(w: &World, event: Value, reason: &str) {
    let before = books(w).await;
    let reviews = w.app.count("webhook_reviews").await;
    let counted = w.app.metric("coffer_webhook_events_rejected_total");
    let body = json!({ "events": [event] });
    let (status, reply) = post_webhook(w, signed(&body, chrono::Utc::now().timestamp()), &body).await;
    assert_eq!(status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        (reply[0]["outcome"].as_str(), reply[0]["reason"].as_str()),
        (Some("rejected"), Some(reason)),
        "{reply:?}"
    );
    assert_eq!(books(w).await, before, "a rejected event changes nothing");
    assert_eq!(
        w.app.count("webhook_reviews").await,
        reviews + 1,
        "kept for review"
    );
    assert_eq!(
        w.app.metric("coffer_webhook_events_rejected_total"),
        counted + 1.0
    );
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn webhooks_a_wrong_amount_credits_nothing_and_the_listener_credits_the_real_one() {
    let w = webhook_world().await;
    let hash = w.anvil.send_eth(&w.address, eth("1.25")).await;
    let event = event_of(&w, &hash, None, &w.address, "ETH", "125").await;
    assert_rejected(&w, event, "amount_mismatch").await;
    assert_eq!(w.balances().await, ("0".into(), "0".into()));

    let support = w.app.staff(Role::Support).await;
    let reviews = w
        .app
        .get("/v1/admin/webhook-reviews", &support.access_token)
        .await;
    assert_eq!(reviews.status, StatusCode::OK, "{:?}", reviews.body);
    assert_eq!(reviews.body[0]["reason"], "amount_mismatch");
    assert_eq!(reviews.body[0]["amount_atomic"], "125000000000000000000");
    assert_eq!(
        w.app
            .get("/v1/admin/webhook-reviews", &w.user.access_token)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // The rejected report does not stand in the way of the real deposit.
    let listener = w.listener(50);
    assert_eq!(listener.poll_once().await.unwrap().deposits_recorded, 1);
    w.anvil.mine(1).await;
    assert_eq!(listener.poll_once().await.unwrap().credited, 1);
    assert_eq!(w.balances().await, ("1.25".into(), "0".into()));
}

#[tokio::test]
async fn webhooks_a_wrong_recipient_credits_nothing() {
    let w = webhook_world().await;
    let thief = w.app.register().await;
    let thief_wallet = w.app.create_wallet(&thief, "ETH").await;
    let path = format!("/v1/wallets/{thief_wallet}/deposit-address");
    let thief_address = w.app.get(&path, &thief.access_token).await.body["address"]
        .as_str()
        .unwrap()
        .to_string();
    let hash = w.anvil.send_eth(&w.address, eth("2")).await;
    let event = event_of(&w, &hash, None, &thief_address, "ETH", "2").await;
    assert_rejected(&w, event, "recipient_mismatch").await;
    let body = w.app.wallet(&thief, &thief_wallet).await;
    assert_eq!(
        (body["available"].as_str(), body["pending"].as_str()),
        (Some("0"), Some("0"))
    );
}

#[tokio::test]
async fn webhooks_a_fabricated_hash_in_a_real_block_credits_nothing() {
    let w = webhook_world().await;
    let hash = w.anvil.send_eth(&w.address, eth("1")).await;
    let mut event = event_of(&w, &hash, None, &w.address, "ETH", "1").await;
    event["tx_hash"] = json!(format!("0x{}", "ab".repeat(32)));
    assert_rejected(&w, event, "transaction_not_found").await;
}

#[tokio::test]
async fn webhooks_a_native_deposit_reported_with_a_log_index_credits_nothing_twice() {
    let w = webhook_world().await;
    let hash = w.anvil.send_eth(&w.address, eth("1.5")).await;
    let honest = event_of(&w, &hash, None, &w.address, "ETH", "1.5").await;
    let body = json!({ "events": [honest] });
    let (status, reply) = post_webhook(&w, signed(&body, chrono::Utc::now().timestamp()), &body).await;
    assert_eq!(
        (status, reply[0]["outcome"].as_str()),
        (StatusCode::OK, Some("recorded"))
    );
    let event = event_of(&w, &hash, Some(0), &w.address, "ETH", "1.5").await;
    assert_rejected(&w, event, "no_such_transfer").await;
    assert_eq!(
        w.balances().await,
        ("0".into(), "1.5".into()),
        "once, under the native key"
    );
    assert_eq!(w.app.count("transactions").await, 1);
}

#[tokio::test]
async fn webhooks_a_token_log_from_another_contract_credits_nothing() {
    let placeholder = "0x0000000000000000000000000000000000000001";
    let w = webhook_world_of(
        &[spec("ETH", 18, None, 2), spec("CTT", 6, Some(placeholder), 2)],
        "CTT",
    )
    .await;
    let token = w.anvil.deploy_token(U256::from(1_000_000_000_000u64)).await;
    let forgery = w.anvil.deploy_token(U256::from(1_000_000_000_000u64)).await;
    w.app.catalog.replace(crate::chain::catalog(&[
        spec("ETH", 18, None, 2),
        spec("CTT", 6, Some(&token), 2),
    ]));
    let fake = w
        .anvil
        .send_token(&forgery, &w.address, U256::from(7_000_000u64))
        .await;
    let event = event_of(&w, &fake, Some(0), &w.address, "CTT", "7").await;
    assert_rejected(&w, event, "no_such_transfer").await;

    let real = w
        .anvil
        .send_token(&token, &w.address, U256::from(3_000_000u64))
        .await;
    let event = event_of(&w, &real, Some(0), &w.address, "CTT", "3").await;
    let body = json!({ "events": [event] });
    let (status, reply) = post_webhook(&w, signed(&body, chrono::Utc::now().timestamp()), &body).await;
    assert_eq!(
        (status, reply[0]["outcome"].as_str()),
        (StatusCode::OK, Some("recorded")),
        "{reply:?}"
    );
    assert_eq!(w.balances().await, ("0".into(), "3".into()));
}

#[tokio::test]
async fn chain_the_same_deposit_by_webhook_and_by_listener_is_credited_once() {
    let w = webhook_world().await;
    let hash = w.anvil.send_eth(&w.address, eth("1.25")).await;
    let receipt = w.anvil.call("eth_getTransactionReceipt", json!([hash])).await;
    let event = json!({ "chain": CHAIN, "tx_hash": hash, "log_index": null, "to": w.address, "asset": "ETH",
        "amount": "1.25", "block_number": u64::from_str_radix(receipt["blockNumber"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap(),
        "block_hash": receipt["blockHash"] });
    let body = json!({ "events": [event] });
    let now = chrono::Utc::now().timestamp();

    let (status, reply) = post_webhook(&w, signed(&body, now), &body).await;
    assert_eq!(status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply[0]["outcome"], "recorded");
    let (status, reply) = post_webhook(&w, signed(&body, now), &body).await;
    assert_eq!(
        (status, reply[0]["outcome"].as_str()),
        (StatusCode::OK, Some("already_known"))
    );
    assert_eq!(w.balances().await, ("0".into(), "1.25".into()));

    let listener = w.listener(50);
    let first = listener.poll_once().await.unwrap();
    assert_eq!(
        first.deposits_recorded, 0,
        "the listener finds it already recorded: {first:?}"
    );
    w.anvil.mine(1).await;
    assert_eq!(listener.poll_once().await.unwrap().credited, 1);
    w.anvil.mine(2).await;
    assert_eq!(listener.poll_once().await.unwrap().credited, 0);
    let (status, _) = post_webhook(&w, signed(&body, now), &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        w.balances().await,
        ("1.25".into(), "0".into()),
        "credited exactly once"
    );
    assert_eq!(w.app.count("transactions").await, 1);
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn webhooks_unsigned_badly_signed_or_stale_get_401_and_change_nothing() {
    let w = webhook_world().await;
    let event = json!({ "chain": CHAIN, "tx_hash": format!("0x{}", "ab".repeat(32)), "log_index": null,
        "to": w.address, "asset": "ETH", "amount": "5", "block_number": 3, "block_hash": format!("0x{}", "cd".repeat(32)) });
    let body = json!({ "events": [event] });
    let now = chrono::Utc::now().timestamp();
    let tampered = json!({ "events": [], "x": 1 });
    let wrong_key = Some(signature(
        "another-secret",
        now,
        &serde_json::to_vec(&body).unwrap(),
    ));
    for header in [
        None,
        signed(&body, now - 301),
        signed(&tampered, now),
        wrong_key,
        Some("t=1,v1=00".into()),
    ] {
        let (status, reply) = post_webhook(&w, header, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply["code"], "invalid_signature");
        assert!(!reply.to_string().contains(SECRET));
    }
    assert_eq!(w.app.count("chain_deposits").await, 0);
    assert_eq!(w.app.count("transactions").await, 0);
    assert_eq!(w.balances().await, ("0".into(), "0".into()));
}

#[tokio::test]
async fn webhooks_an_event_for_an_unknown_address_is_kept_as_unmatched() {
    let w = webhook_world().await;
    let stranger = format!("0x{}", "12".repeat(20));
    let hash = w.anvil.send_eth(&stranger, eth("1")).await;
    let event = event_of(&w, &hash, None, &stranger, "ETH", "1").await;
    let body = json!({ "events": [event] });
    let (status, reply) = post_webhook(&w, signed(&body, chrono::Utc::now().timestamp()), &body).await;
    assert_eq!(
        (status, reply[0]["outcome"].as_str()),
        (StatusCode::OK, Some("unmatched"))
    );
    assert_eq!(w.app.count("chain_deposits").await, 1);
    assert_eq!(w.app.count("transactions").await, 0, "nothing credited");
}

#[tokio::test]
async fn chain_a_deposit_address_is_stable_and_only_its_owner_sees_it() {
    let w = webhook_world().await;
    let path = format!("/v1/wallets/{}/deposit-address", w.wallet);
    let again = w.app.get(&path, &w.user.access_token).await;
    assert_eq!(again.body["address"].as_str(), Some(w.address.as_str()));
    // The BIP39 test vector's m/44'/60'/0'/0/0.
    assert_eq!(w.address, "0x9858effd232b4033e47d90003d41ec34ecaeda94");
    let other = w.app.register().await;
    assert_eq!(
        w.app.get(&path, &other.access_token).await.status,
        StatusCode::NOT_FOUND
    );
    let other_wallet = w.app.create_wallet(&other, "ETH").await;
    let reply = w
        .app
        .get(
            &format!("/v1/wallets/{other_wallet}/deposit-address"),
            &other.access_token,
        )
        .await;
    assert_ne!(
        reply.body["address"].as_str(),
        Some(w.address.as_str()),
        "a new index per wallet"
    );
}
