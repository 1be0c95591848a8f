//! Withdrawals on a real node (issue 4, tests 7–9): requested through the API, signed once by the
//! broadcaster through the `Signer` interface, stored before broadcast, mined by anvil, confirmed
//! or failed, with the books, the custody account and the chain in agreement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use alloy::consensus::TxEip1559;
use alloy::primitives::{Address, U256};
use async_trait::async_trait;
use coffer_chain::broadcaster::{BroadcastOutcome, Broadcaster, BroadcasterConfig};
use coffer_chain::signer::{LocalSigner, SignedTx, Signer};
use coffer_chain::ChainError;
use coffer_store::Role;
use coffer_test_support::Options;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::chain::{eth, spec, world, World, CHAIN};

/// The local signer, counting its signatures.
struct CountingSigner {
    inner: LocalSigner,
    signatures: AtomicU64,
}

#[async_trait]
impl Signer for CountingSigner {
    fn address(&self) -> Address {
        self.inner.address()
    }

    async fn sign(&self, tx: TxEip1559) -> Result<SignedTx, ChainError> {
        self.signatures.fetch_add(1, Ordering::SeqCst);
        self.inner.sign(tx).await
    }
}

/// A funded hot wallet and its signer.
struct Hot {
    signer: Arc<CountingSigner>,
    address: String,
}

impl Hot {
    async fn funded(w: &World, funding: &str) -> Hot {
        let signer = Arc::new(CountingSigner {
            inner: LocalSigner::random(),
            signatures: AtomicU64::new(0),
        });
        let address = format!("{:#x}", signer.address());
        w.anvil.send_eth(&address, eth(funding)).await;
        Hot { signer, address }
    }

    /// A broadcaster for this hot wallet (a new one stands for a restarted process).
    fn broadcaster(&self, w: &World) -> Broadcaster {
        self.replacing_after(w, std::time::Duration::from_secs(300))
    }

    /// A broadcaster that replaces a withdrawal unmined for `stuck_after`.
    fn replacing_after(&self, w: &World, stuck_after: std::time::Duration) -> Broadcaster {
        let mut config = BroadcasterConfig::new(CHAIN);
        config.poll_interval = std::time::Duration::from_millis(50);
        config.replacement.stuck_after = stuck_after;
        Broadcaster::new(
            config,
            w.anvil.rpc.clone(),
            w.app.store.clone(),
            w.app.catalog.clone(),
            self.signer.clone(),
        )
    }

    fn signatures(&self) -> u64 {
        self.signer.signatures.load(Ordering::SeqCst)
    }
}

fn wei(value: U256) -> i128 {
    i128::try_from(value).expect("test amounts fit")
}

/// A platform account's stored (credit-positive) available balance, in wei.
async fn platform_balance(w: &World, account: &str) -> i128 {
    let doc = w.app.store.wallet_by_id(account).await.unwrap().unwrap();
    let (amount, negative) = (doc.available.magnitude, doc.available.negative);
    let value = wei(U256::from_limbs(amount.atomic().into_limbs()));
    if negative {
        -value
    } else {
        value
    }
}

async fn chain_balance(w: &World, address: &str) -> i128 {
    wei(w.anvil.balance(address).await)
}

fn fresh_address() -> String {
    format!("{:#x}", LocalSigner::random().address())
}

async fn request(w: &World, amount: &str, destination: &str) -> Value {
    let reply = w
        .app
        .withdraw(
            &w.user,
            json!({ "wallet_id": w.wallet, "amount": amount, "destination_address": destination }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body
}

async fn view(w: &World, id: &str) -> Value {
    let reply = w
        .app
        .get(&format!("/v1/transactions/{id}"), &w.user.access_token)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body
}

/// Polls `broadcaster` until the withdrawal is in `state` (bounded: 5 s).
async fn poll_until(w: &World, broadcaster: &Broadcaster, id: &str, state: &str) -> Value {
    for _ in 0..100 {
        broadcaster.poll_once().await.expect("poll");
        let body = view(w, id).await;
        if body["state"] == state {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("withdrawal {id} never reached {state}: {:?}", view(w, id).await);
}

fn timeline_states(body: &Value) -> Vec<String> {
    body["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["to"].as_str().unwrap().to_string())
        .collect()
}

async fn held(w: &World) -> (String, String) {
    let body = w.app.wallet(&w.user, &w.wallet).await;
    (
        body["available"].as_str().unwrap().into(),
        body["held"].as_str().unwrap().into(),
    )
}

async fn funded_world(confirmations: u32, deposit: &str) -> World {
    let w = world(&[spec("ETH", 18, None, confirmations)], "ETH", Options::default()).await;
    let payment = w.app.staff(Role::Payment).await;
    w.app.deposit(&payment, &w.wallet, deposit).await;
    w
}

#[tokio::test]
async fn chain_withdrawal_end_to_end_is_signed_once_confirmed_and_agrees_with_the_chain() {
    let w = funded_world(2, "5").await;
    let hot = Hot::funded(&w, "20").await;
    let destination = fresh_address();
    let custody = "platform:ETH:custody";
    let (custody_before, fees_before) = (
        platform_balance(&w, custody).await,
        platform_balance(&w, "platform:ETH:fees").await,
    );
    let hot_before = chain_balance(&w, &hot.address).await;

    let requested = request(&w, "1.5", &destination).await;
    assert_eq!(requested["state"], "pending_broadcast");
    let id = requested["id"].as_str().unwrap().to_string();
    assert_eq!(held(&w).await, ("3.5".into(), "1.5".into()));

    let broadcaster = hot.broadcaster(&w);
    let first = broadcaster.poll_once().await.unwrap();
    assert_eq!((first.signed, first.broadcast), (1, 1), "{first:?}");
    let confirming = poll_until(&w, &broadcaster, &id, "confirming").await;
    assert_eq!(confirming["confirmations"], 1);
    assert_eq!(held(&w).await, ("3.5".into(), "1.5".into()), "held until final");

    w.anvil.mine(1).await;
    let done = poll_until(&w, &broadcaster, &id, "confirmed").await;
    assert_eq!(
        timeline_states(&done),
        [
            "created",
            "pending_broadcast",
            "broadcasted",
            "confirming",
            "confirmed"
        ]
    );
    let hash = done["chain_tx_hash"].as_str().unwrap().to_string();
    let receipt = w.anvil.receipt_of(&hash).await;
    assert_eq!(receipt["from"].as_str(), Some(hot.address.as_str()));
    assert_eq!(receipt["status"], "0x1");
    let hex_u128 =
        |v: &Value| i128::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let fee = hex_u128(&receipt["gasUsed"]) * hex_u128(&receipt["effectiveGasPrice"]);
    let amount = wei(eth("1.5"));

    assert_eq!(held(&w).await, ("3.5".into(), "0".into()));
    assert_eq!(chain_balance(&w, &destination).await, amount, "paid out once");
    let hot_spent = hot_before - chain_balance(&w, &hot.address).await;
    assert_eq!(
        hot_spent,
        amount + fee,
        "the hot wallet paid the amount and the gas"
    );
    let custody_out = platform_balance(&w, custody).await - custody_before;
    assert_eq!(
        custody_out, hot_spent,
        "custody went down by exactly what left the hot wallet"
    );
    assert_eq!(
        platform_balance(&w, "platform:ETH:fees").await - fees_before,
        -fee,
        "the gas is the platform's cost"
    );
    assert_eq!(hot.signatures(), 1);
    for _ in 0..3 {
        w.anvil.mine(1).await;
        assert_eq!(
            broadcaster.poll_once().await.unwrap(),
            BroadcastOutcome::default()
        );
    }
    assert_eq!(view(&w, &id).await["state"], "confirmed");
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_broadcast_whose_answer_was_lost_is_settled_by_hash_without_a_second_signature() {
    let w = funded_world(1, "5").await;
    let hot = Hot::funded(&w, "10").await;
    let destination = fresh_address();
    let id = request(&w, "1", &destination).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The broadcaster signs and stores, sends, and dies before it hears the node's answer.
    let first = hot.broadcaster(&w);
    let mut outcome = BroadcastOutcome::default();
    first.sign_pending(&mut outcome).await.unwrap();
    assert_eq!(outcome.signed, 1);
    let stored = w
        .app
        .store
        .transaction_by_id(&id)
        .await
        .unwrap()
        .unwrap()
        .broadcast
        .expect("stored before any broadcast");
    assert_eq!(view(&w, &id).await["state"], "pending_broadcast");
    let raw = hex::decode(stored.raw_tx.trim_start_matches("0x")).unwrap();
    w.anvil.rpc.send_raw(&raw).await.unwrap();
    w.anvil.receipt_of(&stored.tx_hash).await;
    drop(first);

    // A new process finds the withdrawal signed but not marked broadcast: it re-sends the same
    // bytes, the node refuses them (already mined), and the hash settles it.
    let second = hot.broadcaster(&w);
    let done = poll_until(&w, &second, &id, "confirmed").await;
    assert_eq!(done["chain_tx_hash"].as_str(), Some(stored.tx_hash.as_str()));
    let broadcast_cause = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["to"] == "broadcasted")
        .map(|c| c["cause"].as_str().unwrap().to_string())
        .unwrap();
    assert!(broadcast_cause.contains("found by hash"), "{broadcast_cause}");
    assert_eq!(hot.signatures(), 1, "never signed twice");
    let sent = w
        .anvil
        .rpc
        .latest_nonce(hot.address.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(sent, 1, "one transaction left the hot wallet");
    assert_eq!(chain_balance(&w, &destination).await, wei(eth("1")));
    assert_eq!(held(&w).await, ("4".into(), "0".into()));
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_broadcaster_killed_after_signing_sends_the_stored_bytes_and_nonces_stay_in_order() {
    let w = funded_world(1, "5").await;
    let hot = Hot::funded(&w, "10").await;
    let (a, b) = (fresh_address(), fresh_address());
    let first_id = request(&w, "1", &a).await["id"].as_str().unwrap().to_string();
    let second_id = request(&w, "2", &b).await["id"].as_str().unwrap().to_string();

    let dying = hot.broadcaster(&w);
    let mut outcome = BroadcastOutcome::default();
    dying.sign_pending(&mut outcome).await.unwrap();
    assert_eq!(outcome.signed, 2);
    drop(dying); // killed: nothing was sent

    let restarted = hot.broadcaster(&w);
    poll_until(&w, &restarted, &first_id, "confirmed").await;
    poll_until(&w, &restarted, &second_id, "confirmed").await;
    assert_eq!(hot.signatures(), 2, "one signature per withdrawal");
    let nonces: Vec<i64> = futures::future::join_all([&first_id, &second_id].map(|id| async {
        let tx = w.app.store.transaction_by_id(id).await.unwrap().unwrap();
        tx.broadcast.unwrap().nonce
    }))
    .await;
    assert_eq!(
        nonces,
        vec![0, 1],
        "the hot wallet's nonces in request order, no gap"
    );
    assert_eq!(chain_balance(&w, &a).await, wei(eth("1")));
    assert_eq!(chain_balance(&w, &b).await, wei(eth("2")));
    assert_eq!(held(&w).await, ("2".into(), "0".into()));
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_withdrawal_above_the_review_threshold_waits_for_approval_and_a_rejected_one_is_released() {
    let w = funded_world(1, "40").await;
    let (support, admin) = (w.app.staff(Role::Support).await, w.app.staff(Role::Admin).await);
    let hot = Hot::funded(&w, "30").await;
    let broadcaster = hot.broadcaster(&w);
    let destination = fresh_address();

    let big = request(&w, "12", &destination).await; // review threshold 10
    assert_eq!(big["state"], "manual_review");
    let big_id = big["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        assert_eq!(
            broadcaster.poll_once().await.unwrap(),
            BroadcastOutcome::default()
        );
    }
    assert_eq!(hot.signatures(), 0, "nothing is signed while in review");
    let queue = w.app.get("/v1/admin/reviews", &support.access_token).await;
    let queued: Vec<&str> = queue
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(queued, vec![big_id.as_str()], "support sees the queue");
    let by_support = w
        .app
        .post(
            &format!("/v1/admin/reviews/{big_id}/approve"),
            &support.access_token,
            json!({ "reason": "looks fine" }),
        )
        .await;
    assert_eq!(by_support.status, StatusCode::FORBIDDEN, "only an admin decides");

    let approved = w
        .app
        .post(
            &format!("/v1/admin/reviews/{big_id}/approve"),
            &admin.access_token,
            json!({ "reason": "customer called back; verified" }),
        )
        .await;
    assert_eq!(approved.body["state"], "pending_broadcast");
    let done = poll_until(&w, &broadcaster, &big_id, "confirmed").await;
    assert_eq!(
        timeline_states(&done),
        [
            "created",
            "manual_review",
            "pending_broadcast",
            "broadcasted",
            "confirmed"
        ]
    );
    assert_eq!(chain_balance(&w, &destination).await, wei(eth("12")));

    let other = request(&w, "11", &fresh_address()).await;
    let other_id = other["id"].as_str().unwrap().to_string();
    assert_eq!(held(&w).await, ("17".into(), "11".into()));
    let rejected = w
        .app
        .post(
            &format!("/v1/admin/reviews/{other_id}/reject"),
            &admin.access_token,
            json!({ "reason": "destination flagged" }),
        )
        .await;
    assert_eq!(rejected.body["state"], "failed");
    assert_eq!(held(&w).await, ("28".into(), "0".into()), "the hold is released");
    assert_eq!(
        broadcaster.poll_once().await.unwrap(),
        BroadcastOutcome::default()
    );
    assert_eq!(hot.signatures(), 1, "the rejected one was never signed");
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_an_erc20_withdrawal_pays_tokens_and_a_reverted_one_fails_and_releases_the_hold() {
    let placeholder = "0x0000000000000000000000000000000000000001";
    let eth_spec = spec("ETH", 18, None, 1);
    let w = world(
        &[eth_spec.clone(), spec("CTT", 6, Some(placeholder), 1)],
        "CTT",
        Options::default(),
    )
    .await;
    let token = w.anvil.deploy_token(U256::from(1_000_000_000_000u64)).await;
    w.app.catalog.replace(crate::chain::catalog(&[
        eth_spec,
        spec("CTT", 6, Some(&token), 1),
    ]));
    let payment = w.app.staff(Role::Payment).await;
    w.app.deposit(&payment, &w.wallet, "15").await;
    let hot = Hot::funded(&w, "1").await; // gas
    w.anvil
        .send_token(&token, &hot.address, U256::from(9_000_000u64))
        .await; // 9 CTT on chain
    let broadcaster = hot.broadcaster(&w);
    let destination = fresh_address();

    let paid = request(&w, "6", &destination).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    poll_until(&w, &broadcaster, &paid, "confirmed").await;
    assert_eq!(
        w.anvil.token_balance(&token, &destination).await,
        U256::from(6_000_000u64)
    );
    assert_eq!(held(&w).await, ("9".into(), "0".into()));

    // 5 more than the hot wallet's 3 CTT: the token contract reverts on chain.
    let reverted = request(&w, "5", &destination).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(held(&w).await, ("4".into(), "5".into()));
    let failed = poll_until(&w, &broadcaster, &reverted, "failed").await;
    let last = failed["timeline"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["cause"].as_str().unwrap().contains("reverted on chain"),
        "{last:?}"
    );
    assert_eq!(held(&w).await, ("9".into(), "0".into()), "the hold is released");
    assert_eq!(
        w.anvil.token_balance(&token, &destination).await,
        U256::from(6_000_000u64),
        "nothing more arrived"
    );
    assert_eq!(hot.signatures(), 2);
    w.app.assert_books_balance().await;
}

/// Issue 12 item 5: the events the product promises for the chain reach a mobile client's stream
/// — `wallet.deposit.detected` when a deposit is first seen (pending), and
/// `wallet.withdrawal.confirmed` when a withdrawal settles — through the outbox, RabbitMQ and the
/// API's stream consumer, from the same transactions that change those states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_a_client_stream_gets_deposit_detected_and_withdrawal_confirmed() {
    use coffer_test_support::broker::{self, Broker};
    use coffer_test_support::stream::{connect, events, Token};
    let w = funded_world(2, "5").await;
    let broker = Broker::new().await;
    let consumer = broker::spawn_stream_consumer(&broker.exchange, w.app.stream_hub.clone()).await;
    let publisher =
        broker::spawn_publisher(broker::relay(&w.app.store, broker::relay_config(&broker.exchange, "p1")).0);
    let mut socket = connect(w.app.address, Token::Header(&w.user.access_token), None).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await; // registered in the hub

    let of_type = |seen: &[Value], kind: &str| -> Vec<Value> {
        seen.iter().filter(|e| e["type"] == kind).cloned().collect()
    };
    // Reads the socket until an event of `kind` (and `then` more after it) arrived; bounded.
    async fn until(socket: &mut coffer_test_support::stream::Socket, kind: &str, then: usize) -> Vec<Value> {
        let mut seen: Vec<Value> = Vec::new();
        for _ in 0..50 {
            seen.extend(events(socket, 1, std::time::Duration::from_secs(20)).await);
            if let Some(at) = seen.iter().position(|e| e["type"] == kind) {
                if seen.len() > at + then {
                    return seen;
                }
            }
        }
        panic!("no {kind} on the stream: {seen:#?}");
    }

    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("0.25")).await;
    listener.poll_once().await.unwrap();
    // The deposit's events: transaction created, deposit detected, balance updated (pending).
    let seen = until(&mut socket, "wallet.deposit.detected", 1).await;
    let detected = of_type(&seen, "wallet.deposit.detected");
    assert_eq!(detected.len(), 1, "{seen:#?}");
    assert_eq!(detected[0]["subject"], w.wallet.as_str());
    assert_eq!(detected[0]["data"]["amount"], "0.25");
    assert_eq!(detected[0]["data"]["confirmations_required"], 2);
    assert_eq!(detected[0]["data"]["chain"], CHAIN);
    let balance = of_type(&seen, "wallet.balance.updated");
    assert_eq!(
        balance.last().unwrap()["data"]["pending"],
        "0.25",
        "seen, not final"
    );

    let hot = Hot::funded(&w, "20").await;
    let id = request(&w, "1.5", &fresh_address()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let broadcaster = hot.broadcaster(&w);
    poll_until(&w, &broadcaster, &id, "confirming").await;
    w.anvil.mine(1).await;
    let done = poll_until(&w, &broadcaster, &id, "confirmed").await;
    let seen = until(&mut socket, "wallet.withdrawal.confirmed", 0).await;
    let confirmed = of_type(&seen, "wallet.withdrawal.confirmed");
    assert_eq!(confirmed.len(), 1, "the settled withdrawal is announced once");
    let data = &confirmed[0]["data"];
    assert_eq!(data["transaction_id"], id.as_str());
    assert_eq!(data["amount"], "-1.5");
    assert_eq!(data["tx_hash"], done["chain_tx_hash"]);
    publisher.abort();
    consumer.abort();
    broker.cleanup().await;
}

/// The withdrawal's stored signed transaction.
async fn signed(w: &World, id: &str) -> coffer_store::model::BroadcastDoc {
    let tx = w.app.store.transaction_by_id(id).await.unwrap().unwrap();
    tx.broadcast.expect("signed")
}

async fn has_receipt(w: &World, hash: &str) -> bool {
    !w.anvil
        .call("eth_getTransactionReceipt", json!([hash]))
        .await
        .is_null()
}

async fn sent_from(w: &World, hot: &Hot) -> u64 {
    let address = hot.address.parse().unwrap();
    w.anvil.rpc.latest_nonce(address).await.unwrap()
}

/// Stops anvil mining each transaction as it arrives: sent transactions wait in its pool.
async fn automine_off(w: &World) {
    w.anvil.call("evm_setAutomine", json!([false])).await;
}

/// A withdrawal of 1 ETH (of 5) to a fresh destination, from a hot wallet holding 10, on a node that
/// no longer mines on its own: sent transactions wait in its pool.
struct Pooled {
    w: World,
    hot: Hot,
    id: String,
    destination: String,
}

async fn pooled(confirmations: u32) -> Pooled {
    let w = funded_world(confirmations, "5").await;
    let hot = Hot::funded(&w, "10").await;
    automine_off(&w).await;
    let destination = fresh_address();
    let id = request(&w, "1", &destination).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    Pooled {
        w,
        hot,
        id,
        destination,
    }
}

#[tokio::test]
async fn chain_a_stuck_withdrawal_is_replaced_with_higher_fees_and_settles_once() {
    let Pooled {
        w,
        hot,
        id,
        destination,
    } = pooled(1).await;
    // Unmined for less than its 300 s: not replaced, however slow this machine is.
    let patient = hot.broadcaster(&w);

    let first = patient.poll_once().await.unwrap();
    assert_eq!(
        (first.signed, first.broadcast, first.replaced),
        (1, 1, 0),
        "{first:?}"
    );
    let original = signed(&w, &id).await;
    assert_eq!(patient.poll_once().await.unwrap().replaced, 0, "not stuck yet");

    // Restarted with a 400 ms limit, past it.
    let broadcaster = hot.replacing_after(&w, std::time::Duration::from_millis(400));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(broadcaster.poll_once().await.unwrap().replaced, 1);
    let replacement = signed(&w, &id).await;
    assert_eq!(replacement.nonce, original.nonce, "the same nonce");
    assert_ne!(replacement.tx_hash, original.tx_hash);
    assert_eq!(
        replacement.replaced,
        vec![original.latest()],
        "both versions are kept"
    );
    let raised = |new: i64, old: i64| i128::from(new) * 1000 >= i128::from(old) * 1125;
    assert!(
        raised(replacement.max_fee_per_gas, original.max_fee_per_gas)
            && raised(
                replacement.max_priority_fee_per_gas,
                original.max_priority_fee_per_gas
            ),
        "both fee fields raised by at least 12.5%: {original:?} -> {replacement:?}"
    );
    assert_eq!(
        view(&w, &id).await["chain_tx_hash"].as_str(),
        Some(replacement.tx_hash.as_str())
    );
    assert_eq!(hot.signatures(), 2);

    w.anvil.mine(1).await;
    let done = poll_until(&w, &broadcaster, &id, "confirmed").await;
    let mined = [&original.tx_hash, &replacement.tx_hash];
    let receipts: Vec<bool> = futures::future::join_all(mined.map(|h| has_receipt(&w, h))).await;
    assert_eq!(
        receipts,
        vec![false, true],
        "exactly one version is mined: the replacement"
    );
    assert_eq!(done["chain_tx_hash"].as_str(), Some(replacement.tx_hash.as_str()));
    // Staff find the withdrawal by either version's hash (the support console's search).
    for hash in [&original.tx_hash, &replacement.tx_hash] {
        let found = w.app.store.transactions_by_chain_hash(hash).await.unwrap();
        assert_eq!(found, vec![id.to_string()], "{hash}");
    }
    assert_eq!(
        sent_from(&w, &hot).await,
        1,
        "one transaction left the hot wallet"
    );
    assert_eq!(chain_balance(&w, &destination).await, wei(eth("1")), "paid once");
    assert_eq!(held(&w).await, ("4".into(), "0".into()));
    for _ in 0..3 {
        w.anvil.mine(1).await;
        assert_eq!(
            broadcaster.poll_once().await.unwrap(),
            BroadcastOutcome::default()
        );
    }
    assert_eq!(hot.signatures(), 2);
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_cancelled_withdrawal_is_released_once_its_cancel_is_mined_with_its_confirmations() {
    let Pooled {
        w,
        hot,
        id,
        destination,
    } = pooled(2).await;
    let (support, admin) = (w.app.staff(Role::Support).await, w.app.staff(Role::Admin).await);
    let broadcaster = hot.broadcaster(&w);
    assert_eq!(broadcaster.poll_once().await.unwrap().broadcast, 1);
    let path = format!("/v1/admin/withdrawals/{id}/cancel");
    let reason = json!({ "reason": "customer reported a wrong destination" });

    let by_support = w.app.post(&path, &support.access_token, reason.clone()).await;
    assert_eq!(by_support.status, StatusCode::FORBIDDEN, "only an admin cancels");
    let asked = w.app.post(&path, &admin.access_token, reason.clone()).await;
    assert_eq!(asked.status, StatusCode::OK, "{:?}", asked.body);
    assert_eq!(
        asked.body["state"], "broadcasted",
        "nothing is released on a request"
    );
    let twice = w.app.post(&path, &admin.access_token, reason.clone()).await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert_eq!(twice.body["code"], "state_conflict");

    assert_eq!(broadcaster.poll_once().await.unwrap().replaced, 1);
    let cancel = signed(&w, &id).await;
    assert_eq!(cancel.kind, coffer_store::model::SignedKind::Cancel);
    assert_eq!(cancel.replaced.len(), 1);
    w.anvil.mine(1).await;
    broadcaster.poll_once().await.unwrap();
    assert_eq!(
        view(&w, &id).await["state"],
        "broadcasted",
        "1 of 2 confirmations"
    );
    assert_eq!(
        held(&w).await,
        ("4".into(), "1".into()),
        "held until the cancel is final"
    );

    w.anvil.mine(1).await;
    let done = poll_until(&w, &broadcaster, &id, "failed").await;
    let cause = done["timeline"].as_array().unwrap().last().unwrap()["cause"].clone();
    assert!(cause.as_str().unwrap().starts_with("cancelled"), "{cause}");
    let receipt = w.anvil.receipt_of(&cancel.tx_hash).await;
    assert_eq!(
        receipt["to"].as_str(),
        Some(hot.address.as_str()),
        "a transfer to itself"
    );
    assert!(
        !has_receipt(&w, &cancel.replaced[0].tx_hash).await,
        "the payment can never be mined"
    );
    assert_eq!(chain_balance(&w, &destination).await, 0);
    assert_eq!(sent_from(&w, &hot).await, 1);
    assert_eq!(
        held(&w).await,
        ("5".into(), "0".into()),
        "released in full; the gas is the platform's"
    );
    let after = w.app.post(&path, &admin.access_token, reason).await;
    assert_eq!(
        after.status,
        StatusCode::CONFLICT,
        "a final withdrawal cannot be cancelled"
    );
    assert_eq!(hot.signatures(), 2);
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_nonce_taken_by_another_transaction_releases_only_when_confirmed_and_no_review_releases_a_signed_withdrawal(
) {
    let w = funded_world(3, "5").await;
    let admin = w.app.staff(Role::Admin).await;
    let hot = Hot::funded(&w, "10").await;
    let id = request(&w, "1", &fresh_address()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let broadcaster = hot.broadcaster(&w);
    let mut outcome = BroadcastOutcome::default();
    broadcaster.sign_pending(&mut outcome).await.unwrap();
    let ours = signed(&w, &id).await;

    // Someone else spends the hot wallet's nonce first (anvil mines it at once).
    let foreign = TxEip1559 {
        chain_id: w.anvil.rpc.chain_id().await.unwrap(),
        nonce: ours.nonce as u64,
        gas_limit: 21_000,
        max_fee_per_gas: 100_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: alloy::primitives::TxKind::Call(fresh_address().parse().unwrap()),
        value: U256::from(1u64),
        ..Default::default()
    };
    let foreign = hot.signer.inner.sign(foreign).await.unwrap();
    w.anvil.rpc.send_raw(&foreign.raw).await.unwrap();
    w.anvil.receipt_of(&format!("{:#x}", foreign.hash)).await;

    assert_eq!(
        broadcaster.poll_once().await.unwrap().to_review,
        1,
        "nonce too low: a person looks"
    );
    assert_eq!(view(&w, &id).await["state"], "manual_review");
    let reject = w
        .app
        .post(
            &format!("/v1/admin/reviews/{id}/reject"),
            &admin.access_token,
            json!({ "reason": "the node says the nonce is used" }),
        )
        .await;
    assert_eq!(reject.status, StatusCode::CONFLICT, "{:?}", reject.body);
    assert_eq!(reject.body["code"], "withdrawal_signed");
    assert_eq!(
        held(&w).await,
        ("4".into(), "1".into()),
        "the answer alone releases nothing"
    );

    w.anvil.mine(1).await; // the foreign transaction has 2 of 3 confirmations
    broadcaster.poll_once().await.unwrap();
    assert_eq!(view(&w, &id).await["state"], "manual_review");
    assert_eq!(held(&w).await, ("4".into(), "1".into()));

    w.anvil.mine(1).await;
    let done = poll_until(&w, &broadcaster, &id, "failed").await;
    let cause = done["timeline"].as_array().unwrap().last().unwrap()["cause"].clone();
    assert!(cause.as_str().unwrap().contains("can never be mined"), "{cause}");
    assert!(!has_receipt(&w, &ours.tx_hash).await);
    assert_eq!(held(&w).await, ("5".into(), "0".into()));
    assert_eq!(hot.signatures(), 1, "nothing was re-signed");
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_cancel_that_loses_to_its_payment_settles_the_payment_once() {
    let Pooled {
        w,
        hot,
        id,
        destination,
    } = pooled(2).await;
    let admin = w.app.staff(Role::Admin).await;
    let broadcaster = hot.broadcaster(&w);
    assert_eq!(broadcaster.poll_once().await.unwrap().broadcast, 1);
    let path = format!("/v1/admin/withdrawals/{id}/cancel");
    let asked = w
        .app
        .post(&path, &admin.access_token, json!({ "reason": "customer asked" }))
        .await;
    assert_eq!(asked.status, StatusCode::OK, "{:?}", asked.body);
    assert_eq!(broadcaster.poll_once().await.unwrap().replaced, 1);
    let cancel = signed(&w, &id).await;

    // The payment reaches a block producer first: the pool drops the cancel, the payment is mined.
    let payment = cancel.replaced[0].clone();
    w.anvil
        .call("anvil_dropTransaction", json!([cancel.tx_hash]))
        .await;
    let raw = hex::decode(payment.raw_tx.trim_start_matches("0x")).unwrap();
    w.anvil.rpc.send_raw(&raw).await.unwrap();
    w.anvil.mine(2).await;

    let done = poll_until(&w, &broadcaster, &id, "confirmed").await;
    assert_eq!(
        done["chain_tx_hash"].as_str(),
        Some(payment.tx_hash.as_str()),
        "the mined version"
    );
    assert!(!has_receipt(&w, &cancel.tx_hash).await);
    assert_eq!(chain_balance(&w, &destination).await, wei(eth("1")), "paid once");
    assert_eq!(held(&w).await, ("4".into(), "0".into()), "settled, not released");
    assert_eq!(sent_from(&w, &hot).await, 1);
    for _ in 0..3 {
        w.anvil.mine(1).await;
        assert_eq!(
            broadcaster.poll_once().await.unwrap(),
            BroadcastOutcome::default()
        );
    }
    w.app.assert_books_balance().await;
}
