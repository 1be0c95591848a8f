//! Provider webhooks: signed, duplicate-safe, and credited once with the listener's path.

use coffer_test_support::Options;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::chain::{eth, spec, world, World, CHAIN};

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
    let options = Options {
        webhook_secrets: vec![("alchemy".into(), SECRET.into())],
        ..Options::default()
    };
    world(&[spec("ETH", 18, None, 2)], "ETH", options).await
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
    let event = json!({ "chain": CHAIN, "tx_hash": format!("0x{}", "ef".repeat(32)), "log_index": 0,
        "to": format!("0x{}", "12".repeat(20)), "asset": "ETH", "amount": "1", "block_number": 3,
        "block_hash": format!("0x{}", "cd".repeat(32)) });
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
