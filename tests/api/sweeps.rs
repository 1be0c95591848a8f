//! Sweeping deposit addresses to the hot wallet (issue 17 item 2) against a real node: the
//! deposit address is emptied down to dust, the hot wallet gains the amount less gas, the gas the
//! receipt reports is booked as a fee, custody in the ledger equals the reserves read from the
//! chain, and two sweepers at once sign exactly one transaction per address. Dust is not swept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::U256;
use coffer_chain::custody::ChainCustody;
use coffer_chain::hd::account_xpub_of_mnemonic;
use coffer_chain::signer::{LocalSigner, Signer};
use coffer_chain::sweep_signer::{account_xprv_of_mnemonic, LocalDepositSigner};
use coffer_chain::sweeper::{Sweeper, SweeperConfig};
use coffer_domain::sweep::{SweepPolicy, SweepState};
use coffer_domain::Amount;
use coffer_store::reconcile::{CheckStatus, ReconcileConfig, ReconcileMetrics, Reconciler};
use coffer_test_support::chain::DEPOSIT_MNEMONIC;
use coffer_test_support::Options;

use crate::chain::{eth, spec, world, World, CHAIN};

const GWEI: u128 = 1_000_000_000;

fn sweeper(w: &World, hot: alloy::primitives::Address) -> Sweeper {
    let xpub = account_xpub_of_mnemonic(DEPOSIT_MNEMONIC).unwrap();
    let xprv = account_xprv_of_mnemonic(DEPOSIT_MNEMONIC).unwrap();
    let signer = Arc::new(LocalDepositSigner::from_xprv(&xprv, &xpub).unwrap());
    let mut policies = BTreeMap::new();
    policies.insert(
        "ETH".to_string(),
        SweepPolicy {
            min_amount: Amount::from_u128(10_000_000 * GWEI), // 0.01 ETH
            batch_max: 10,
            gas_price_ceiling_wei: 1_000 * GWEI,
        },
    );
    let config = SweeperConfig {
        chain: CHAIN.to_string(),
        poll_interval: Duration::from_millis(50),
        max_priority_fee_per_gas: GWEI,
        policies,
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

async fn custody_status(w: &World, hot: &str) -> CheckStatus {
    let source = ChainCustody::new(
        CHAIN,
        w.anvil.rpc.clone(),
        w.app.store.clone(),
        w.app.catalog.clone(),
        vec![hot.to_string()],
    );
    let reconciler = Reconciler {
        config: ReconcileConfig::default(),
        custody: source,
        metrics: ReconcileMetrics::new(&prometheus::Registry::new()).unwrap(),
    };
    let run = reconciler.run(&w.app.store, "test", None).await.unwrap();
    let check = run.checks.iter().find(|c| c.check == "custody").unwrap();
    assert!(check.status == CheckStatus::Ok, "custody: {:?}", run.findings);
    check.status
}

#[tokio::test]
async fn chain_sweep_empties_the_deposit_address_once_books_its_gas_and_reserves_agree_with_the_ledger() {
    let w = world(&[spec("ETH", 18, None, 1)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("1")).await;
    listener.poll_once().await.unwrap();
    assert_eq!(w.balances().await, ("1".into(), "0".into()), "credited");

    let hot = LocalSigner::random().address();
    let hot_text = format!("{hot:#x}");
    let (a, b) = (sweeper(&w, hot), sweeper(&w, hot));
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
    let receipt = w.anvil.receipt_of(&hash).await;
    let gas_used =
        u128::from_str_radix(receipt["gasUsed"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let price = u128::from_str_radix(
        receipt["effectiveGasPrice"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let fee = gas_used * price;
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
    custody_status(&w, &hot_text).await;

    // A below-minimum deposit (with the dust) is not swept; nor is anything signed again.
    w.anvil.send_eth(&w.address, eth("0.001")).await;
    listener.poll_once().await.unwrap();
    for _ in 0..3 {
        a.poll_once().await.unwrap();
        b.poll_once().await.unwrap();
    }
    let sweeps = w.app.store.sweeps(CHAIN, 10).await.unwrap();
    assert_eq!(sweeps.len(), 1, "{sweeps:?}");
    custody_status(&w, &hot_text).await;
    w.app.assert_books_balance().await;
}
