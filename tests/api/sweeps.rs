//! Sweeping deposit addresses to the hot wallet (issue 17 item 2) against a real node: the
//! deposit address is emptied down to dust, the hot wallet gains the amount less gas, the gas the
//! receipt reports is booked as a fee, custody in the ledger equals the reserves read from the
//! chain, and two sweepers at once sign exactly one transaction per address. Dust is not swept.
//! A token sweep is funded with gas by the hot wallet first (with the nonce the broadcaster's
//! next withdrawal would otherwise take), both gases are booked as fees, and custody of the coin
//! and of the token equals the chain after it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::U256;
use coffer_chain::broadcaster::{Broadcaster, BroadcasterConfig};
use coffer_chain::hd::account_xpub_of_mnemonic;
use coffer_chain::signer::{LocalSigner, Signer};
use coffer_chain::sweep_signer::{account_xprv_of_mnemonic, LocalDepositSigner};
use coffer_chain::sweeper::{Sweeper, SweeperConfig};
use coffer_domain::replacement::ReplacementPolicy;
use coffer_domain::sweep::{SweepPolicy, SweepState};
use coffer_domain::Amount;
use coffer_store::reconcile::CheckStatus;
use coffer_store::sweeps::SweepDoc;
use coffer_test_support::chain::DEPOSIT_MNEMONIC;
use coffer_test_support::Options;
use serde_json::json;

use crate::chain::{eth, spec, token_world, world, World, CHAIN};

const GWEI: u128 = 1_000_000_000;

fn policy(min_atomic: u128) -> SweepPolicy {
    SweepPolicy {
        min_amount: Amount::from_u128(min_atomic),
        batch_max: 10,
        gas_price_ceiling_wei: 1_000 * GWEI,
    }
}

/// A sweeper that replaces nothing in a test's time (unmined for less than 300 s).
fn sweeper(w: &World, hot: Arc<dyn Signer>) -> Sweeper {
    replacing_after(w, hot, Duration::from_secs(300))
}

/// A sweeper that replaces a funding or a coin sweep unmined for `stuck_after`.
fn replacing_after(w: &World, hot: Arc<dyn Signer>, stuck_after: Duration) -> Sweeper {
    let mut policies = BTreeMap::new();
    policies.insert("ETH".to_string(), policy(10_000_000 * GWEI)); // 0.01 ETH
    policies.insert("CTT".to_string(), policy(1_000_000)); // 1 CTT
    let replacement = ReplacementPolicy {
        stuck_after,
        max_fee_per_gas_cap: 500 * GWEI,
    };
    sweeper_with(w, hot, policies, replacement)
}

fn sweeper_with(
    w: &World,
    hot: Arc<dyn Signer>,
    policies: BTreeMap<String, SweepPolicy>,
    replacement: ReplacementPolicy,
) -> Sweeper {
    let xpub = account_xpub_of_mnemonic(DEPOSIT_MNEMONIC).unwrap();
    let xprv = account_xprv_of_mnemonic(DEPOSIT_MNEMONIC).unwrap();
    let signer = Arc::new(LocalDepositSigner::from_xprv(&xprv, &xpub).unwrap());
    let config = SweeperConfig {
        chain: CHAIN.to_string(),
        poll_interval: Duration::from_millis(50),
        max_priority_fee_per_gas: GWEI,
        policies,
        replacement,
    };
    Sweeper::new(
        config,
        w.anvil.rpc.clone(),
        w.app.store.clone(),
        w.app.catalog.clone(),
        signer,
        hot,
    )
}

/// The reconciler's custody check, Ok. No hot wallet is configured: the reading finds the one
/// sweeps went to (and signing ones) by itself.
async fn custody_status(w: &World) -> CheckStatus {
    let run = crate::reserves::reconcile(w, &[]).await;
    let status = crate::reserves::custody_status(&run);
    assert!(status == CheckStatus::Ok, "custody: {:?}", run.findings);
    status
}

#[tokio::test]
async fn chain_sweep_empties_the_deposit_address_once_books_its_gas_and_reserves_agree_with_the_ledger() {
    let w = world(&[spec("ETH", 18, None, 1)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("1")).await;
    listener.poll_once().await.unwrap();
    assert_eq!(w.balances().await, ("1".into(), "0".into()), "credited");

    let hot: Arc<dyn Signer> = Arc::new(LocalSigner::random());
    let hot_text = format!("{:#x}", hot.address());
    let (a, b) = (sweeper(&w, hot.clone()), sweeper(&w, hot));
    // Two sweepers at once, then both again until the sweep is confirmed.
    let mut confirmed = None;
    for _ in 0..100 {
        let (ra, rb) = tokio::join!(a.poll_once(), b.poll_once());
        ra.unwrap();
        rb.unwrap();
        let sweeps = w.app.store.sweeps(CHAIN, 10).await.unwrap();
        assert_eq!(sweeps.len(), 1, "one sweep for one address: {sweeps:?}");
        if sweeps[0].state() == Some(SweepState::Confirmed) {
            confirmed = Some(sweeps[0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sweep = confirmed.expect("the sweep is confirmed within 10 s");
    let hash = sweep.tx_hash.clone().unwrap();
    let fee = w.gas_paid(&hash).await;
    assert!(fee > 0, "anvil charges a base fee");
    assert_eq!(
        sweep.fee.as_deref(),
        Some(fee.to_string().as_str()),
        "receipt gas booked"
    );
    let fee_tx = w
        .app
        .store
        .transaction_by_id(sweep.fee_transaction_id.as_deref().unwrap())
        .await
        .unwrap()
        .expect("the fee transaction");
    assert_eq!(fee_tx.kind, coffer_domain::TxKind::Fee);

    let value: u128 = sweep.value.parse().unwrap();
    let one = 1_000_000_000_000_000_000u128;
    assert_eq!(
        w.anvil.balance(&hot_text).await,
        U256::from(value),
        "hot wallet gains the amount"
    );
    let left = w.anvil.balance(&w.address).await;
    assert_eq!(
        left,
        U256::from(one - value - fee),
        "the rest is dust on the deposit address"
    );
    assert!(left < U256::from(10_000_000 * GWEI), "below the minimum");
    assert_eq!(
        w.balances().await,
        ("1".into(), "0".into()),
        "the user's balance is untouched"
    );

    // Custody in the ledger (1 ETH less the gas) equals the reserves on chain.
    listener.poll_once().await.unwrap();
    custody_status(&w).await;

    // A below-minimum deposit (with the dust) is not swept; nor is anything signed again.
    w.anvil.send_eth(&w.address, eth("0.001")).await;
    listener.poll_once().await.unwrap();
    for _ in 0..3 {
        a.poll_once().await.unwrap();
        b.poll_once().await.unwrap();
    }
    let sweeps = w.app.store.sweeps(CHAIN, 10).await.unwrap();
    assert_eq!(sweeps.len(), 1, "{sweeps:?}");
    custody_status(&w).await;
    w.app.assert_books_balance().await;
}

/// Polls both sweepers and `broadcaster` until every sweep of the chain is final, there are
/// `count`, and no withdrawal is in flight (bounded: 20 s).
async fn sweep_until_final(
    w: &World,
    (a, b): (&Sweeper, &Sweeper),
    broadcaster: &Broadcaster,
    count: usize,
) -> Vec<SweepDoc> {
    for _ in 0..200 {
        let (ra, rb, rc) = tokio::join!(a.poll_once(), b.poll_once(), broadcaster.poll_once());
        ra.unwrap();
        rb.unwrap();
        rc.unwrap();
        let sweeps = w.app.store.sweeps(CHAIN, 10).await.unwrap();
        let per_address: HashSet<&str> = sweeps.iter().map(|s| s.address.as_str()).collect();
        assert_eq!(
            per_address.len(),
            sweeps.len(),
            "one sweep per address: {sweeps:?}"
        );
        let in_flight = w
            .app
            .store
            .withdrawal_stats()
            .await
            .unwrap()
            .by_state
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>();
        let done = sweeps.iter().all(|s| s.state().is_some_and(SweepState::is_final));
        if sweeps.len() == count && done && in_flight == 0 {
            return sweeps;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "sweeps not final: {:?}",
        w.app.store.sweeps(CHAIN, 10).await.unwrap()
    );
}

fn broadcaster(w: &World, hot: Arc<dyn Signer>) -> Broadcaster {
    let mut config = BroadcasterConfig::new(CHAIN);
    config.poll_interval = Duration::from_millis(50);
    Broadcaster::new(
        config,
        w.anvil.rpc.clone(),
        w.app.store.clone(),
        w.app.catalog.clone(),
        hot,
    )
}

/// Gives the user a coin wallet, deposits 1 ETH to it and sweeps it into the hot wallet (booked
/// coin only: custody stays exact). Answers the wallet, the listener following the chain, and the
/// confirmed coin sweep.
async fn fill_hot_wallet(
    w: &World,
    sweepers: (&Sweeper, &Sweeper),
    broadcaster: &Broadcaster,
) -> (String, coffer_chain::listener::Listener, SweepDoc) {
    let eth_wallet = w.app.create_wallet(&w.user, "ETH").await;
    let reply = w
        .app
        .get(
            &format!("/v1/wallets/{eth_wallet}/deposit-address"),
            &w.user.access_token,
        )
        .await;
    let eth_address = reply.body["address"].as_str().unwrap().to_string();
    w.anvil.send_eth(&eth_address, eth("1")).await;
    let listener = w.listener(50);
    listener.poll_once().await.unwrap();
    let coin = sweep_until_final(w, sweepers, broadcaster, 1).await.remove(0);
    (eth_wallet, listener, coin)
}

#[tokio::test]
async fn chain_token_sweep_is_funded_by_the_hot_wallet_first_and_both_gases_are_booked() {
    let (w, token) = token_world(1).await;
    let hot: Arc<dyn Signer> = Arc::new(LocalSigner::random());
    let hot_text = format!("{:#x}", hot.address());
    let (a, b) = (sweeper(&w, hot.clone()), sweeper(&w, hot.clone()));
    let broadcaster = broadcaster(&w, hot.clone());

    // The same user's coin wallet: its sweep gives the hot wallet coin to fund gas with.
    let (eth_wallet, listener, coin) = fill_hot_wallet(&w, (&a, &b), &broadcaster).await;
    assert_eq!(coin.state(), Some(SweepState::Confirmed));
    assert!(coin.funding.is_none(), "the coin pays its own gas");

    // Tokens arrive, and a coin withdrawal is asked for: the broadcaster and the sweeper's gas
    // funding race for the hot wallet's next nonce.
    w.anvil
        .send_token(&token, &w.address, U256::from(25_500_000u64))
        .await;
    listener.poll_once().await.unwrap();
    assert_eq!(w.balances().await, ("25.5".into(), "0".into()), "tokens credited");
    let destination = format!("{:#x}", LocalSigner::random().address());
    let body = json!({ "wallet_id": eth_wallet, "amount": "0.1", "destination_address": destination });
    let reply = w.app.withdraw(&w.user, body).await;
    assert_eq!(reply.status, reqwest::StatusCode::CREATED, "{:?}", reply.body);
    let withdrawal_id = reply.body["id"].as_str().unwrap().to_string();
    let sweeps = sweep_until_final(&w, (&a, &b), &broadcaster, 2).await;
    let tokens = sweeps.iter().find(|s| s.asset == "CTT").unwrap();
    assert_eq!(tokens.state(), Some(SweepState::Confirmed), "{sweeps:?}");
    let funding = tokens.funding.clone().expect("the token address was funded");
    let withdrawal = w
        .app
        .store
        .transaction_by_id(&withdrawal_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(withdrawal.state, coffer_domain::TxState::Confirmed);
    let paid = withdrawal.broadcast.clone().unwrap();
    assert_eq!(funding.from, hot_text);
    let mut nonces = [funding.nonce, paid.nonce];
    nonces.sort();
    assert_eq!(
        nonces,
        [0, 1],
        "one nonce sequence for the hot wallet: both mined"
    );
    assert_eq!(
        w.app.store.recorded_nonce(CHAIN, &hot_text).await.unwrap(),
        Some(2)
    );
    assert_eq!(w.anvil.balance(&destination).await, eth("0.1"));

    // The tokens moved whole; the coin paid for it, booked as fees in the coin.
    assert_eq!(w.anvil.token_balance(&token, &w.address).await, U256::ZERO);
    assert_eq!(
        w.anvil.token_balance(&token, &hot_text).await,
        U256::from(25_500_000u64)
    );
    let funding_gas = w.gas_paid(&funding.tx_hash).await;
    let sweep_gas = w.gas_paid(tokens.tx_hash.as_deref().unwrap()).await;
    let withdrawal_gas = w.gas_paid(paid.mined_tx_hash.as_deref().unwrap()).await;
    assert_eq!(funding.fee.as_deref(), Some(funding_gas.to_string().as_str()));
    assert_eq!(tokens.fee.as_deref(), Some(sweep_gas.to_string().as_str()));
    let funded: u128 = funding.value.parse().unwrap();
    assert!(funded > sweep_gas, "the funding covers the most the gas may cost");
    assert_eq!(
        w.anvil.balance(&w.address).await,
        U256::from(funded - sweep_gas),
        "the unused gas stays on the token address, for its next sweep"
    );
    let swept: u128 = coin.value.parse().unwrap();
    let withdrawn: u128 = 100_000_000_000_000_000;
    assert_eq!(
        w.anvil.balance(&hot_text).await,
        U256::from(swept - funded - funding_gas - withdrawn - withdrawal_gas),
        "the hot wallet paid the funding, the withdrawal and their gas"
    );
    for id in [&funding.fee_transaction_id, &tokens.fee_transaction_id] {
        let fee = w
            .app
            .store
            .transaction_by_id(id.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (fee.kind, fee.asset.as_str()),
            (coffer_domain::TxKind::Fee, "ETH")
        );
    }
    assert_eq!(
        w.balances().await,
        ("25.5".into(), "0".into()),
        "the user's tokens are untouched"
    );
    assert_eq!(w.app.wallet(&w.user, &eth_wallet).await["available"], "0.9");

    // Custody of the coin (less four gases; the leftover on the token address counts) and of
    // the token equals the chain.
    listener.poll_once().await.unwrap();
    custody_status(&w).await;
    w.app.assert_books_balance().await;

    // Nothing more to sweep: the token address is empty and its coin is below the minimum.
    for _ in 0..3 {
        a.poll_once().await.unwrap();
    }
    assert_eq!(w.app.store.sweeps(CHAIN, 10).await.unwrap().len(), 2);
}

async fn automine(w: &World, on: bool) {
    w.anvil.call("evm_setAutomine", json!([on])).await;
}

async fn has_receipt(w: &World, hash: &str) -> bool {
    !w.anvil
        .call("eth_getTransactionReceipt", json!([hash]))
        .await
        .is_null()
}

/// The chain's sweep of `asset` (there is at most one per asset in these tests).
async fn sweep_of(w: &World, asset: &str) -> SweepDoc {
    let sweeps = w.app.store.sweeps(CHAIN, 10).await.unwrap();
    sweeps
        .into_iter()
        .find(|s| s.asset == asset)
        .unwrap_or_else(|| panic!("no {asset} sweep"))
}

/// Both sweepers poll at once, past their `stuck_after`: the replacements they stored.
async fn replace_together(a: &Sweeper, b: &Sweeper, stuck_after: Duration) -> u64 {
    tokio::time::sleep(stuck_after + Duration::from_millis(100)).await;
    let (ra, rb) = tokio::join!(a.poll_once(), b.poll_once());
    ra.unwrap().replaced + rb.unwrap().replaced
}

/// Whether `new` raises `old` by at least 12.5 %.
fn raised(new: i64, old: i64) -> bool {
    i128::from(new) * 1000 >= i128::from(old) * 1125
}

/// The fee movement's chain reference: the hash of the version that was mined.
async fn fee_reference(w: &World, fee_transaction_id: Option<&str>) -> Option<String> {
    let fee = w
        .app
        .store
        .transaction_by_id(fee_transaction_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fee.kind, coffer_domain::TxKind::Fee);
    fee.external_reference
}

#[tokio::test]
async fn chain_a_stuck_coin_sweep_is_replaced_once_with_higher_fees_and_less_value_and_settles_once() {
    let w = world(&[spec("ETH", 18, None, 1)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("1")).await;
    listener.poll_once().await.unwrap();
    let hot: Arc<dyn Signer> = Arc::new(LocalSigner::random());
    let hot_text = format!("{:#x}", hot.address());
    automine(&w, false).await;

    let patient = sweeper(&w, hot.clone());
    let first = patient.poll_once().await.unwrap();
    assert_eq!(
        (first.signed, first.broadcast, first.replaced),
        (1, 1, 0),
        "{first:?}"
    );
    assert_eq!(patient.poll_once().await.unwrap().replaced, 0, "not stuck yet");
    let original = sweep_of(&w, "ETH").await;
    assert_eq!(original.state(), Some(SweepState::Broadcasted));

    // Two replicas with a 400 ms limit, past it, at once: one replacement is stored.
    let stuck_after = Duration::from_millis(400);
    let (a, b) = (
        replacing_after(&w, hot.clone(), stuck_after),
        replacing_after(&w, hot.clone(), stuck_after),
    );
    assert_eq!(replace_together(&a, &b, stuck_after).await, 1);
    let replacement = sweep_of(&w, "ETH").await;
    assert_eq!(replacement.state(), Some(SweepState::Broadcasted));
    assert_ne!(replacement.tx_hash, original.tx_hash);
    assert_eq!(
        replacement.replaced,
        vec![original.latest().unwrap()],
        "both versions are kept"
    );
    assert!(
        raised(replacement.max_fee_per_gas, original.max_fee_per_gas)
            && raised(
                replacement.max_priority_fee_per_gas,
                original.max_priority_fee_per_gas
            ),
        "both fee fields raised by at least 12.5%: {original:?} -> {replacement:?}"
    );
    let one = 1_000_000_000_000_000_000u128;
    let (old_value, new_value): (u128, u128) = (
        original.value.parse().unwrap(),
        replacement.value.parse().unwrap(),
    );
    let reserve = 21_000 * replacement.max_fee_per_gas as u128;
    assert!(new_value < old_value, "the higher gas comes out of the value");
    assert!(new_value + reserve <= one, "value and gas still fit the balance");

    w.anvil.mine(1).await;
    automine(&w, true).await;
    let mut done = None;
    for _ in 0..100 {
        let (ra, rb) = tokio::join!(a.poll_once(), b.poll_once());
        assert_eq!(ra.unwrap().replaced + rb.unwrap().replaced, 0);
        let sweep = sweep_of(&w, "ETH").await;
        if sweep.state() == Some(SweepState::Confirmed) {
            done = Some(sweep);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = done.expect("the sweep is confirmed within 10 s");
    let (old_hash, new_hash) = (
        original.tx_hash.clone().unwrap(),
        replacement.tx_hash.clone().unwrap(),
    );
    let receipts = [has_receipt(&w, &old_hash).await, has_receipt(&w, &new_hash).await];
    assert_eq!(
        receipts,
        [false, true],
        "exactly one version is mined: the replacement"
    );
    assert_eq!(done.mined_tx_hash.as_deref(), Some(new_hash.as_str()));
    let fee = w.gas_paid(&new_hash).await;
    assert_eq!(
        done.fee.as_deref(),
        Some(fee.to_string().as_str()),
        "the mined version's gas"
    );
    assert_eq!(
        fee_reference(&w, done.fee_transaction_id.as_deref()).await,
        Some(new_hash.clone())
    );
    assert_eq!(
        w.anvil.balance(&hot_text).await,
        U256::from(new_value),
        "paid once"
    );
    assert_eq!(
        w.anvil.balance(&w.address).await,
        U256::from(one - new_value - fee)
    );
    assert_eq!(
        w.balances().await,
        ("1".into(), "0".into()),
        "the user is untouched"
    );

    listener.poll_once().await.unwrap();
    custody_status(&w).await;
    w.app.assert_books_balance().await;
    for _ in 0..3 {
        a.poll_once().await.unwrap();
    }
    assert_eq!(w.app.store.sweeps(CHAIN, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn chain_a_stuck_gas_funding_is_replaced_once_with_the_same_hot_wallet_nonce_and_the_mined_version_is_booked(
) {
    let (w, token) = token_world(1).await;
    let hot: Arc<dyn Signer> = Arc::new(LocalSigner::random());
    let hot_text = format!("{:#x}", hot.address());
    let (a, b) = (sweeper(&w, hot.clone()), sweeper(&w, hot.clone()));
    let broadcaster = broadcaster(&w, hot.clone());

    // A coin sweep fills the hot wallet (booked coin only: custody stays exact).
    let (_, listener, _) = fill_hot_wallet(&w, (&a, &b), &broadcaster).await;

    // Tokens arrive; the node stops mining; the funding is sent and waits in the pool.
    w.anvil
        .send_token(&token, &w.address, U256::from(25_500_000u64))
        .await;
    listener.poll_once().await.unwrap();
    automine(&w, false).await;
    assert_eq!(a.poll_once().await.unwrap().funding, 1);
    assert_eq!(a.poll_once().await.unwrap().replaced, 0, "not stuck yet");
    let original = sweep_of(&w, "CTT").await;
    assert_eq!(original.state(), Some(SweepState::Funding));
    let first = original.funding.clone().unwrap();
    assert_eq!(
        w.app.store.recorded_nonce(CHAIN, &hot_text).await.unwrap(),
        Some(1)
    );

    let stuck_after = Duration::from_millis(400);
    let (c, d) = (
        replacing_after(&w, hot.clone(), stuck_after),
        replacing_after(&w, hot.clone(), stuck_after),
    );
    assert_eq!(replace_together(&c, &d, stuck_after).await, 1);
    let stuck = sweep_of(&w, "CTT").await;
    assert_eq!(stuck.state(), Some(SweepState::Funding));
    let second = stuck.funding.clone().unwrap();
    assert_eq!(
        (second.nonce, second.value.as_str(), second.from.as_str()),
        (first.nonce, first.value.as_str(), hot_text.as_str()),
        "the same nonce, value and hot wallet"
    );
    assert_ne!(second.tx_hash, first.tx_hash);
    assert_eq!(second.replaced, vec![first.latest()], "both versions are kept");
    assert!(
        raised(second.max_fee_per_gas, first.max_fee_per_gas)
            && raised(second.max_priority_fee_per_gas, first.max_priority_fee_per_gas),
        "{first:?} -> {second:?}"
    );
    assert_eq!(
        w.app.store.recorded_nonce(CHAIN, &hot_text).await.unwrap(),
        Some(1),
        "a replacement takes no new nonce"
    );

    w.anvil.mine(1).await;
    automine(&w, true).await;
    let sweeps = sweep_until_final(&w, (&c, &d), &broadcaster, 2).await;
    let tokens = sweeps.iter().find(|s| s.asset == "CTT").unwrap();
    assert_eq!(tokens.state(), Some(SweepState::Confirmed), "{sweeps:?}");
    let funding = tokens.funding.clone().unwrap();
    let receipts = [
        has_receipt(&w, &first.tx_hash).await,
        has_receipt(&w, &second.tx_hash).await,
    ];
    assert_eq!(
        receipts,
        [false, true],
        "exactly one version is mined: the replacement"
    );
    assert_eq!(funding.mined_tx_hash.as_deref(), Some(second.tx_hash.as_str()));
    let funding_gas = w.gas_paid(&second.tx_hash).await;
    assert_eq!(funding.fee.as_deref(), Some(funding_gas.to_string().as_str()));
    assert_eq!(
        fee_reference(&w, funding.fee_transaction_id.as_deref()).await,
        Some(second.tx_hash.clone())
    );
    let sweep_gas = w.gas_paid(tokens.tx_hash.as_deref().unwrap()).await;
    let funded: u128 = funding.value.parse().unwrap();
    assert_eq!(
        w.anvil.balance(&w.address).await,
        U256::from(funded - sweep_gas),
        "funded once"
    );
    assert_eq!(
        w.anvil.token_balance(&token, &hot_text).await,
        U256::from(25_500_000u64)
    );
    assert_eq!(w.anvil.rpc.latest_nonce(hot.address()).await.unwrap(), 1);

    listener.poll_once().await.unwrap();
    custody_status(&w).await;
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_reserves_add_back_the_gas_of_a_sweep_mined_but_not_yet_followed() {
    let w = world(&[spec("ETH", 18, None, 2)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("1")).await;
    w.anvil.mine(1).await;
    listener.poll_once().await.unwrap();
    assert_eq!(
        w.balances().await,
        ("1".into(), "0".into()),
        "credited at 2 confirmations"
    );
    let hot: Arc<dyn Signer> = Arc::new(LocalSigner::random());
    let sweeper = sweeper(&w, hot);
    let outcome = sweeper.poll_once().await.unwrap();
    assert_eq!((outcome.signed, outcome.broadcast), (1, 1), "{outcome:?}");
    // Mined (anvil mines at once) and one more block: the block read now includes the sweep,
    // whose gas is gone from the chain but not booked until the sweeper follows it.
    w.anvil.mine(1).await;
    listener.poll_once().await.unwrap();
    let sweep = w.app.store.sweeps(CHAIN, 10).await.unwrap().remove(0);
    assert_eq!(sweep.state(), Some(SweepState::Broadcasted), "not followed yet");
    custody_status(&w).await;
    sweeper.poll_once().await.unwrap();
    let sweep = w.app.store.sweeps(CHAIN, 10).await.unwrap().remove(0);
    assert_eq!(sweep.state(), Some(SweepState::Confirmed));
    custody_status(&w).await;
    w.app.assert_books_balance().await;
}

fn planned(id: &str, address: &str) -> SweepDoc {
    let now = coffer_store::codec::now();
    SweepDoc {
        id: id.into(),
        chain: CHAIN.into(),
        asset: "CTT".into(),
        address: address.into(),
        index: 0,
        nonce: 0,
        to: "0x00000000000000000000000000000000000000aa".into(),
        value: "25500000".into(),
        contract: Some("0x00000000000000000000000000000000000000cc".into()),
        funding_needed: Some("1000".into()),
        funding: None,
        gas_limit: 100_000,
        max_fee_per_gas: 2,
        max_priority_fee_per_gas: 1,
        state: SweepState::Planned.as_str().into(),
        raw_tx: None,
        tx_hash: None,
        signed_at: None,
        replaced: Vec::new(),
        mined_tx_hash: None,
        gas_used: None,
        effective_gas_price: None,
        fee: None,
        fee_transaction_id: None,
        created_at: now,
        updated_at: now,
    }
}

fn funding(nonce: i64, hash: &str) -> coffer_store::sweeps::FundingDoc {
    let version = coffer_store::sweeps::TxVersion {
        tx_hash: hash.into(),
        raw_tx: "0x02".into(),
        value: "1000".into(),
        max_fee_per_gas: 2,
        max_priority_fee_per_gas: 1,
        signed_at: None,
    };
    coffer_store::sweeps::FundingDoc::first(
        "0x00000000000000000000000000000000000000aa".into(),
        nonce,
        version,
    )
}

/// The store's half of "one nonce sequence": a funding signed from a stale read of the hot
/// wallet's nonce record, or for a sweep that moved on, writes nothing — neither the funding nor
/// the nonce (the advance rolls back with the sweep update in one transaction).
#[tokio::test]
async fn a_funding_from_a_stale_nonce_read_or_for_a_sweep_already_funding_writes_nothing() {
    let app = coffer_test_support::TestApp::spawn().await;
    let store = &app.store;
    let hot = "0x00000000000000000000000000000000000000aa";
    let (a, b) = (planned("anvil:0xa:0", "0xa"), planned("anvil:0xb:0", "0xb"));
    store.claim_sweep(&a).await.unwrap();
    store.claim_sweep(&b).await.unwrap();
    store
        .record_sweep_funding(CHAIN, &a.id, None, &funding(0, "0x01"))
        .await
        .unwrap();
    assert_eq!(store.recorded_nonce(CHAIN, hot).await.unwrap(), Some(1));

    // b read the record before a took nonce 0 (it saw none): refused, nothing written.
    let stale = store
        .record_sweep_funding(CHAIN, &b.id, None, &funding(0, "0x02"))
        .await;
    assert!(
        matches!(stale, Err(coffer_store::StoreError::StateConflict)),
        "{stale:?}"
    );
    assert_eq!(store.recorded_nonce(CHAIN, hot).await.unwrap(), Some(1));
    let sweeps = store.sweeps(CHAIN, 10).await.unwrap();
    let b_now = sweeps.iter().find(|s| s.id == b.id).unwrap();
    assert_eq!(
        (b_now.state(), b_now.funding.is_none()),
        (Some(SweepState::Planned), true)
    );

    store
        .record_sweep_funding(CHAIN, &b.id, Some(1), &funding(1, "0x03"))
        .await
        .unwrap();
    assert_eq!(store.recorded_nonce(CHAIN, hot).await.unwrap(), Some(2));
    // b is funding already: a second funding (another replica's) is refused and the nonce it
    // advanced is rolled back with it.
    let again = store
        .record_sweep_funding(CHAIN, &b.id, Some(2), &funding(2, "0x04"))
        .await;
    assert!(
        matches!(again, Err(coffer_store::StoreError::StateConflict)),
        "{again:?}"
    );
    assert_eq!(
        store.recorded_nonce(CHAIN, hot).await.unwrap(),
        Some(2),
        "rolled back"
    );
    let sweeps = store.sweeps(CHAIN, 10).await.unwrap();
    let b_now = sweeps.iter().find(|s| s.id == b.id).unwrap();
    assert_eq!(b_now.funding.as_ref().map(|f| f.tx_hash.as_str()), Some("0x03"));
}
