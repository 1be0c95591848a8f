//! Reserves read from the chain (issue 17 item 1): the reconciler's custody check with
//! `coffer_chain::custody::ChainCustody` against a real node — deposits at deposit addresses, a
//! deposit still confirming, a withdrawal mined but not yet settled, and funds nobody booked.

use std::sync::Arc;

use alloy::primitives::U256;
use coffer_chain::broadcaster::{Broadcaster, BroadcasterConfig};
use coffer_chain::custody::ChainCustody;
use coffer_chain::signer::{LocalSigner, Signer};
use coffer_store::reconcile::{
    CheckStatus, ReconcileConfig, ReconcileMetrics, Reconciler, ReconciliationRun,
};
use coffer_store::Role;
use coffer_test_support::Options;
use reqwest::StatusCode;
use serde_json::json;

use crate::chain::{eth, spec, world, World, CHAIN};

fn fresh_address() -> String {
    format!("{:#x}", LocalSigner::random().address())
}

pub(crate) async fn reconcile(w: &World, hot_wallets: &[String]) -> ReconciliationRun {
    reconcile_with(w, hot_wallets, &prometheus::Registry::new()).await
}

async fn reconcile_with(
    w: &World,
    hot_wallets: &[String],
    registry: &prometheus::Registry,
) -> ReconciliationRun {
    let source = ChainCustody::new(
        CHAIN,
        w.anvil.rpc.clone(),
        w.app.store.clone(),
        w.app.catalog.clone(),
        hot_wallets.to_vec(),
    );
    let reconciler = Reconciler {
        config: ReconcileConfig::default(),
        custody: source,
        metrics: ReconcileMetrics::new(registry).unwrap(),
    };
    reconciler.run(&w.app.store, "test", None).await.unwrap()
}

pub(crate) fn custody_status(run: &ReconciliationRun) -> CheckStatus {
    run.checks.iter().find(|c| c.check == "custody").unwrap().status
}

/// Advances the chain by `blocks` and lets the listener catch up.
async fn mine_and_follow(w: &World, listener: &coffer_chain::listener::Listener, blocks: u64) {
    w.anvil.mine(blocks).await;
    listener.poll_once().await.expect("poll");
}

#[tokio::test]
async fn chain_reserves_agree_with_custody_through_confirming_deposits_and_unsettled_withdrawals_and_name_unbooked_funds(
) {
    let w = world(&[spec("ETH", 18, None, 2)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("3")).await;
    mine_and_follow(&w, &listener, 1).await;
    assert_eq!(
        w.balances().await,
        ("3".into(), "0".into()),
        "credited at 2 confirmations"
    );
    let run = reconcile(&w, &[]).await;
    assert_eq!(custody_status(&run), CheckStatus::Ok, "{:?}", run.findings);

    // A second deposit seen but still confirming: on chain, and pending (not custody) in the ledger.
    w.anvil.send_eth(&w.address, eth("1")).await;
    mine_and_follow(&w, &listener, 0).await;
    assert_eq!(
        w.balances().await,
        ("3".into(), "1".into()),
        "pending at 1 of 2 confirmations"
    );
    let run = reconcile(&w, &[]).await;
    assert_eq!(custody_status(&run), CheckStatus::Ok, "{:?}", run.findings);
    mine_and_follow(&w, &listener, 1).await;
    assert_eq!(w.balances().await, ("4".into(), "0".into()));

    // A hot wallet funded with what a rail deposit booked, then a withdrawal mined and followed by
    // the chain (listener past it) but not yet settled by the broadcaster.
    let signer = Arc::new(LocalSigner::random());
    let hot = format!("{:#x}", signer.address());
    w.anvil.send_eth(&hot, eth("2")).await;
    let payment = w.app.staff(Role::Payment).await;
    w.app.deposit(&payment, &w.wallet, "2").await;
    let mut config = BroadcasterConfig::new(CHAIN);
    config.poll_interval = std::time::Duration::from_millis(50);
    let broadcaster = Broadcaster::new(
        config,
        w.anvil.rpc.clone(),
        w.app.store.clone(),
        w.app.catalog.clone(),
        signer.clone(),
    );
    let body = json!({ "wallet_id": w.wallet, "amount": "1", "destination_address": fresh_address() });
    let requested = w.app.withdraw(&w.user, body).await;
    assert_eq!(requested.status, StatusCode::CREATED, "{:?}", requested.body);
    let id = requested.body["id"].as_str().unwrap().to_string();
    broadcaster.poll_once().await.unwrap(); // signed, sent, mined: 1 of 2 confirmations
    mine_and_follow(&w, &listener, 1).await; // the block read now includes the withdrawal
    let tx = w.app.store.transaction_by_id(&id).await.unwrap().unwrap();
    assert_eq!(tx.state, coffer_domain::TxState::Confirming, "not settled yet");
    let run = reconcile(&w, &[]).await;
    assert_eq!(custody_status(&run), CheckStatus::Ok, "{:?}", run.findings);
    broadcaster.poll_once().await.unwrap();
    let tx = w.app.store.transaction_by_id(&id).await.unwrap().unwrap();
    assert_eq!(tx.state, coffer_domain::TxState::Confirmed);
    let run = reconcile(&w, &[]).await;
    assert_eq!(custody_status(&run), CheckStatus::Ok, "{:?}", run.findings);

    // Funds nobody booked at a configured hot wallet: a mismatch that names both sides.
    let spare = fresh_address();
    w.anvil.send_eth(&spare, eth("0.5")).await;
    mine_and_follow(&w, &listener, 2).await;
    let run = reconcile(&w, std::slice::from_ref(&spare)).await;
    assert_eq!(custody_status(&run), CheckStatus::Mismatch);
    let found: Vec<_> = run.findings.iter().filter(|f| f.check == "custody").collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let (ledger, chain) = (
        &found[0].details["ledger_atomic"],
        &found[0].details["on_chain_atomic"],
    );
    let ledger: u128 = ledger.as_str().unwrap().parse().unwrap();
    let chain: u128 = chain.as_str().unwrap().parse().unwrap();
    assert_eq!(
        chain - ledger,
        500_000_000_000_000_000,
        "exactly the unbooked 0.5"
    );
    assert!(found[0].details["block_number"].as_i64().is_some());
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_deposit_past_the_read_block_but_not_yet_credited_is_not_counted_as_custody() {
    let w = world(&[spec("ETH", 18, None, 5)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("2")).await;
    mine_and_follow(&w, &listener, 3).await;
    assert_eq!(
        w.balances().await,
        ("0".into(), "2".into()),
        "4 of 5 confirmations"
    );
    // The threshold is lowered live: the block read moves past the deposit before the listener's
    // next poll credits it, so it is on chain at that block and still pending in the ledger.
    w.app
        .catalog
        .replace(crate::chain::catalog(&[spec("ETH", 18, None, 2)]));
    let run = reconcile(&w, &[]).await;
    assert_eq!(custody_status(&run), CheckStatus::Ok, "{:?}", run.findings);
    listener.poll_once().await.unwrap();
    assert_eq!(w.balances().await, ("2".into(), "0".into()));
    let run = reconcile(&w, &[]).await;
    assert_eq!(custody_status(&run), CheckStatus::Ok, "{:?}", run.findings);
}

#[tokio::test]
async fn chain_a_token_withdrawals_gas_is_booked_in_the_coin_so_coin_reserves_agree_while_and_after_it_settles(
) {
    let (w, token) = crate::chain::token_world(2).await;
    let listener = w.listener(50);
    // A hot wallet holding coin and tokens that rail deposits booked.
    let signer = Arc::new(LocalSigner::random());
    let hot = format!("{:#x}", signer.address());
    w.anvil.send_eth(&hot, eth("1")).await;
    w.anvil.send_token(&token, &hot, U256::from(10_000_000u64)).await;
    let payment = w.app.staff(Role::Payment).await;
    let eth_wallet = w.app.create_wallet(&w.user, "ETH").await;
    w.app.deposit(&payment, &eth_wallet, "1").await;
    w.app.deposit(&payment, &w.wallet, "10").await;
    mine_and_follow(&w, &listener, 2).await;
    let run = reconcile(&w, std::slice::from_ref(&hot)).await;
    assert_eq!(custody_status(&run), CheckStatus::Ok, "{:?}", run.findings);

    let mut config = BroadcasterConfig::new(CHAIN);
    config.poll_interval = std::time::Duration::from_millis(50);
    let broadcaster = Broadcaster::new(
        config,
        w.anvil.rpc.clone(),
        w.app.store.clone(),
        w.app.catalog.clone(),
        signer.clone(),
    );
    let destination = fresh_address();
    let body = json!({ "wallet_id": w.wallet, "amount": "4", "destination_address": destination });
    let requested = w.app.withdraw(&w.user, body).await;
    assert_eq!(requested.status, StatusCode::CREATED, "{:?}", requested.body);
    let id = requested.body["id"].as_str().unwrap().to_string();
    broadcaster.poll_once().await.unwrap(); // signed, sent, mined: 1 of 2 confirmations
    mine_and_follow(&w, &listener, 1).await;
    let tx = w.app.store.transaction_by_id(&id).await.unwrap().unwrap();
    assert_eq!(tx.state, coffer_domain::TxState::Confirming);
    // Its coin gas is off chain and not booked yet: the reading adds it back.
    let run = reconcile(&w, std::slice::from_ref(&hot)).await;
    assert_eq!(
        custody_status(&run),
        CheckStatus::Ok,
        "while confirming: {:?}",
        run.findings
    );

    broadcaster.poll_once().await.unwrap();
    let tx = w.app.store.transaction_by_id(&id).await.unwrap().unwrap();
    assert_eq!(tx.state, coffer_domain::TxState::Confirmed);
    assert_eq!(
        w.anvil.token_balance(&token, &destination).await,
        U256::from(4_000_000u64)
    );
    let hash = tx.broadcast.as_ref().unwrap().mined_tx_hash.clone().unwrap();
    let gas = w.gas_paid(&hash).await;
    let fees = w
        .app
        .store
        .wallet_by_id("platform:ETH:fees")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        fees.available.magnitude,
        coffer_domain::Amount::from_u128(gas),
        "the token withdrawal's gas, booked once in the coin"
    );
    let run = reconcile(&w, std::slice::from_ref(&hot)).await;
    assert_eq!(
        custody_status(&run),
        CheckStatus::Ok,
        "after it settled: {:?}",
        run.findings
    );
    w.app.assert_books_balance().await;
}

fn solvency_check(run: &ReconciliationRun) -> &coffer_store::reconcile::CheckOutcome {
    run.checks.iter().find(|c| c.check == "solvency").unwrap()
}

async fn publish_liabilities(w: &World, asset: &str) {
    let admin = w.app.staff(Role::Admin).await;
    let key = uuid::Uuid::new_v4().to_string();
    let path = format!("/v1/admin/liabilities/{asset}");
    let reply = w
        .app
        .send("POST", &path, Some(&admin.access_token), Some(&key), None)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
}

#[tokio::test]
async fn chain_reconciler_reports_reserves_minus_published_liabilities_and_finds_a_shortfall() {
    let options = Options {
        liability_signing_key: Some(
            coffer_api::liabilities::LiabilityKey::from_hex(
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            )
            .unwrap(),
        ),
        ..Options::default()
    };
    let w = world(&[spec("ETH", 18, None, 1)], "ETH", options).await;
    let listener = w.listener(50);
    // No statement yet: compared with nothing, the check is skipped and says why.
    let run = reconcile(&w, &[]).await;
    let check = solvency_check(&run);
    assert_eq!(check.status, CheckStatus::Skipped, "{check:?}");
    assert!(run.solvency.is_empty());

    w.anvil.send_eth(&w.address, eth("3")).await;
    mine_and_follow(&w, &listener, 1).await;
    assert_eq!(w.balances().await, ("3".into(), "0".into()));
    publish_liabilities(&w, "ETH").await;
    let run = reconcile(&w, &[]).await;
    assert_eq!(solvency_check(&run).status, CheckStatus::Ok, "{:?}", run.findings);
    let line = &run.solvency[0];
    assert_eq!(
        (
            line.asset.as_str(),
            line.reserves_atomic.as_str(),
            line.liabilities_atomic.as_str()
        ),
        ("ETH", "3000000000000000000", "3000000000000000000")
    );
    assert_eq!(line.margin_atomic, "0");
    assert!(line.block_number.is_some());

    // 2 ETH credited by a rail with nothing arriving on chain: once published, the liabilities
    // exceed the reserves by exactly that, and the run names the shortfall.
    let payment = w.app.staff(Role::Payment).await;
    w.app.deposit(&payment, &w.wallet, "2").await;
    publish_liabilities(&w, "ETH").await;
    let registry = prometheus::Registry::new();
    let run = reconcile_with(&w, &[], &registry).await;
    let check = solvency_check(&run);
    assert_eq!(
        (check.status, check.mismatches),
        (CheckStatus::Mismatch, 1),
        "{check:?}"
    );
    let gauge = registry
        .gather()
        .into_iter()
        .find(|family| family.name() == "coffer_reserves_minus_liabilities")
        .expect("the margin gauge is exposed");
    let sample = &gauge.get_metric()[0];
    assert_eq!(sample.get_label()[0].value(), "ETH");
    assert_eq!(
        sample.get_gauge().get_value(),
        -2.0,
        "short by 2 ETH, in whole units"
    );
    assert_eq!(run.solvency[0].margin_atomic, "-2000000000000000000");
    assert_eq!(run.solvency[0].liabilities_atomic, "5000000000000000000");
    let short: Vec<_> = run.findings.iter().filter(|f| f.check == "solvency").collect();
    assert_eq!(short.len(), 1, "{short:?}");
    assert_eq!(
        (short[0].kind.as_str(), short[0].subject.as_str()),
        ("reserves_short", "ETH")
    );
    assert_eq!(short[0].details["margin_atomic"], "-2000000000000000000");

    // The API's view of the run carries the margin in whole units too.
    let admin = w.app.staff(Role::Admin).await;
    let reply = w
        .app
        .get(
            &format!("/v1/admin/reconciliations/{}", run.id),
            &admin.access_token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["solvency"][0]["margin"], "-2");
    assert_eq!(reply.body["solvency"][0]["margin_atomic"], "-2000000000000000000");
}
