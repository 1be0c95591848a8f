//! The chain listener against a real node: a private anvil per test, the listener driven one
//! poll at a time (and once as the real loop), balances and books checked after each scenario.

use alloy::primitives::U256;
use coffer_chain::hd::account_xpub_of_mnemonic;
use coffer_chain::listener::{Listener, ListenerConfig, PollOutcome};
use coffer_domain::asset::AssetSpec;
use coffer_domain::{AssetCatalog, TxState};
use coffer_store::chain::DepositStatus;
use coffer_test_support::chain::{Anvil, DEPOSIT_MNEMONIC};
use coffer_test_support::{Options, TestApp, TestUser};
use reqwest::StatusCode;

pub const CHAIN: &str = "anvil";

pub fn spec(symbol: &str, decimals: u8, contract: Option<&str>, confirmations: u32) -> AssetSpec {
    AssetSpec {
        symbol: symbol.into(),
        chain: CHAIN.into(),
        decimals,
        contract: contract.map(String::from),
        confirmations_required: confirmations,
        deposits_enabled: true,
        withdrawals_enabled: true,
        withdrawal_min: "0.001".into(),
        withdrawal_max: "50".into(),
        daily_withdrawal_limit: "60".into(),
        review_threshold: "10".into(),
        transfer: None,
        two_person_review_above: None,
        two_person_adjustment_above: None,
        rails: Default::default(),
        explorer_tx_url: None,
    }
}

pub fn catalog(specs: &[AssetSpec]) -> AssetCatalog {
    AssetCatalog::from_specs(specs).expect("valid assets")
}

/// An app and a private chain, with one user and a wallet of `asset` that has a deposit address.
pub struct World {
    pub app: TestApp,
    pub anvil: Anvil,
    pub user: TestUser,
    pub wallet: String,
    pub address: String,
    pub start_block: u64,
}

pub async fn world(specs: &[AssetSpec], asset: &str, options: Options) -> World {
    world_on(Anvil::start().await, specs, asset, options).await
}

/// [`world`] on a node the caller started (e.g. to give the API its RPC client).
pub async fn world_on(anvil: Anvil, specs: &[AssetSpec], asset: &str, options: Options) -> World {
    anvil.mine(8).await; // history below the test's blocks, so re-orgs have room
    let options = Options {
        assets: Some(catalog(specs)),
        deposit_xpub: Some(account_xpub_of_mnemonic(DEPOSIT_MNEMONIC).unwrap()),
        ..options
    };
    let app = TestApp::spawn_with(options).await;
    let user = app.register().await;
    let wallet = app.create_wallet(&user, asset).await;
    let reply = app
        .get(
            &format!("/v1/wallets/{wallet}/deposit-address"),
            &user.access_token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let address = reply.body["address"].as_str().unwrap().to_string();
    let start_block = anvil.head().await + 1;
    World {
        app,
        anvil,
        user,
        wallet,
        address,
        start_block,
    }
}

/// A world whose user's wallet is of token `CTT` (6 decimals), beside the coin `ETH`, both at
/// `confirmations`, with the token's contract deployed on the node; answers the contract.
pub async fn token_world(confirmations: u32) -> (World, String) {
    let placeholder = "0x0000000000000000000000000000000000000001";
    let w = world(
        &[
            spec("ETH", 18, None, confirmations),
            spec("CTT", 6, Some(placeholder), confirmations),
        ],
        "CTT",
        Options::default(),
    )
    .await;
    let token = w.anvil.deploy_token(U256::from(1_000_000_000_000u64)).await;
    w.app.catalog.replace(catalog(&[
        spec("ETH", 18, None, confirmations),
        spec("CTT", 6, Some(&token), confirmations),
    ]));
    (w, token)
}

impl World {
    /// What the chain charged for transaction `hash`: its receipt's `gasUsed × effectiveGasPrice`.
    pub async fn gas_paid(&self, hash: &str) -> u128 {
        let receipt = self.anvil.receipt_of(hash).await;
        let field = |name: &str| {
            u128::from_str_radix(receipt[name].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
        };
        field("gasUsed") * field("effectiveGasPrice")
    }

    pub fn listener(&self, max_blocks_per_poll: u64) -> Listener {
        let mut config = ListenerConfig::new(CHAIN);
        config.start_block = Some(self.start_block);
        config.max_blocks_per_poll = max_blocks_per_poll;
        config.poll_interval = std::time::Duration::from_millis(50);
        Listener::new(
            config,
            self.anvil.rpc.clone(),
            self.app.store.clone(),
            self.app.catalog.clone(),
        )
    }

    pub async fn balances(&self) -> (String, String) {
        let body = self.app.wallet(&self.user, &self.wallet).await;
        (
            body["available"].as_str().unwrap().into(),
            body["pending"].as_str().unwrap().into(),
        )
    }

    /// The user's view of the wallet's deposits.
    pub async fn deposits(&self) -> Vec<serde_json::Value> {
        let reply = self
            .app
            .get(
                &format!("/v1/wallets/{}/deposits", self.wallet),
                &self.user.access_token,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.body.as_array().unwrap().clone()
    }

    pub async fn deposit_state(&self) -> (DepositStatus, TxState) {
        let key = self.deposits().await[0]["tx_hash"].as_str().unwrap().to_string();
        let docs = self
            .app
            .store
            .chain_deposits_of_wallet(&self.wallet, 10)
            .await
            .unwrap();
        let doc = docs.iter().find(|d| d.tx_hash == key).unwrap();
        let tx = self
            .app
            .store
            .transaction_by_id(doc.transaction_id.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        (doc.status, tx.state)
    }
}

pub fn eth(text: &str) -> U256 {
    let amount = coffer_domain::Amount::parse_decimal(text, 18).unwrap();
    U256::from_limbs(amount.atomic().into_limbs())
}

async fn poll(listener: &Listener) -> PollOutcome {
    listener.poll_once().await.expect("poll")
}

#[tokio::test]
async fn chain_eth_deposit_confirms_with_a_rising_count_and_credits_once() {
    let w = world(&[spec("ETH", 18, None, 3)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("1.5")).await;

    let first = poll(&listener).await;
    assert_eq!((first.deposits_recorded, first.credited), (1, 0), "{first:?}");
    assert_eq!(w.balances().await, ("0".into(), "1.5".into()));
    let seen = &w.deposits().await[0];
    assert_eq!(
        (seen["status"].as_str(), seen["confirmations"].as_i64()),
        (Some("confirming"), Some(1))
    );
    assert_eq!(seen["confirmations_required"], 3);

    w.anvil.mine(1).await;
    assert_eq!(poll(&listener).await.credited, 0);
    assert_eq!(w.deposits().await[0]["confirmations"], 2);
    assert_eq!(w.balances().await, ("0".into(), "1.5".into()));

    w.anvil.mine(1).await;
    assert_eq!(poll(&listener).await.credited, 1);
    assert_eq!(w.balances().await, ("1.5".into(), "0".into()));
    assert_eq!(
        w.deposit_state().await,
        (DepositStatus::Credited, TxState::Confirmed)
    );

    w.anvil.mine(3).await;
    let later = poll(&listener).await;
    assert_eq!((later.deposits_recorded, later.credited), (0, 0), "{later:?}");
    assert_eq!(w.balances().await, ("1.5".into(), "0".into()));
    assert_eq!(
        w.app.count("transactions").await,
        1,
        "one transaction for one deposit"
    );
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_changed_threshold_applies_without_restart() {
    let w = world(&[spec("ETH", 18, None, 10)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("2")).await;
    w.anvil.mine(1).await;
    assert_eq!(poll(&listener).await.credited, 0);
    assert_eq!(w.balances().await, ("0".into(), "2".into()));

    w.app.catalog.replace(catalog(&[spec("ETH", 18, None, 2)]));
    assert_eq!(
        poll(&listener).await.credited,
        1,
        "the new threshold applies to the running listener"
    );
    assert_eq!(w.balances().await, ("2".into(), "0".into()));
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_erc20_deposit_is_credited_in_token_units() {
    let w = world(
        &[
            spec("ETH", 18, None, 2),
            spec("CTT", 6, Some("0x0000000000000000000000000000000000000001"), 2),
        ],
        "CTT",
        Options::default(),
    )
    .await;
    let token = w.anvil.deploy_token(U256::from(1_000_000_000_000u64)).await;
    w.app.catalog.replace(catalog(&[
        spec("ETH", 18, None, 2),
        spec("CTT", 6, Some(&token), 2),
    ]));
    let listener = w.listener(50);
    // Native coin sent to the token wallet's address is not this wallet's asset: unmatched.
    w.anvil.send_eth(&w.address, eth("0.1")).await;
    w.anvil
        .send_token(&token, &w.address, U256::from(25_500_000u64))
        .await;

    let first = poll(&listener).await;
    assert_eq!((first.deposits_recorded, first.unmatched), (1, 1), "{first:?}");
    assert_eq!(w.balances().await, ("0".into(), "25.5".into()));
    w.anvil.mine(1).await;
    assert_eq!(poll(&listener).await.credited, 1);
    assert_eq!(w.balances().await, ("25.5".into(), "0".into()));
    assert!(w.deposits().await[0]["log_index"].is_number());
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_reorg_removes_a_confirming_deposit_that_is_never_credited() {
    let w = world(&[spec("ETH", 18, None, 4)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("3")).await;
    w.anvil.mine(1).await;
    assert_eq!(poll(&listener).await.deposits_recorded, 1);
    assert_eq!(w.balances().await, ("0".into(), "3".into()));

    w.anvil.reorg(2).await; // the deposit's block and the one after it
    let unwound = poll(&listener).await;
    assert!(unwound.reorg_to.is_some(), "{unwound:?}");
    assert_eq!(unwound.orphaned, 1);
    assert_eq!(w.deposit_state().await, (DepositStatus::Failed, TxState::Failed));
    assert_eq!(w.balances().await, ("0".into(), "0".into()));

    w.anvil.mine(6).await;
    for _ in 0..3 {
        assert_eq!(poll(&listener).await.credited, 0);
    }
    assert_eq!(w.balances().await, ("0".into(), "0".into()), "never credited");
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_a_credited_deposit_reorged_away_is_reversed_and_goes_to_review() {
    let w = world(&[spec("ETH", 18, None, 1)], "ETH", Options::default()).await;
    let listener = w.listener(50);
    w.anvil.send_eth(&w.address, eth("4")).await;
    let first = poll(&listener).await;
    assert_eq!((first.deposits_recorded, first.credited), (1, 1));
    assert_eq!(w.balances().await, ("4".into(), "0".into()));

    w.anvil.reorg(1).await; // the deposit's block
    let unwound = poll(&listener).await;
    assert_eq!(unwound.orphaned, 1, "{unwound:?}");
    assert_eq!(
        w.deposit_state().await,
        (DepositStatus::Reversed, TxState::ManualReview)
    );
    assert_eq!(
        w.balances().await,
        ("0".into(), "0".into()),
        "the compensating reversal took it back"
    );
    w.app.assert_books_balance().await;
}

#[tokio::test]
async fn chain_listener_killed_and_restarted_mid_stream_misses_nothing_and_credits_once() {
    let w = world(&[spec("ETH", 18, None, 2)], "ETH", Options::default()).await;
    for _ in 0..6 {
        w.anvil.send_eth(&w.address, eth("0.5")).await;
    }
    // Killed mid-stream: two bounded polls see four of the six blocks, then the listener is gone.
    let first = w.listener(2);
    poll(&first).await;
    poll(&first).await;
    drop(first);
    let (available, pending) = w.balances().await;
    assert_eq!(
        (available, pending),
        ("1.5".into(), "0.5".into()),
        "four deposits seen, the three with 2 confirmations credited"
    );
    // Then the real loop, killed wherever it happens to be (possibly inside a poll).
    let running = std::sync::Arc::new(w.listener(1));
    let task = {
        let running = running.clone();
        tokio::spawn(async move { running.run(std::future::pending()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    task.abort();
    let _ = task.await;

    w.anvil.mine(2).await;
    // The new process polls as the real loop does: a poll that fails (here: the write the killed
    // task left open still holds its documents until the server aborts it) is retried.
    let second = w.listener(2);
    let (mut polled, mut failed) = (0, 0);
    while polled < 10 {
        match second.poll_once().await {
            Ok(_) => polled += 1,
            Err(coffer_chain::ChainError::Store(coffer_store::StoreError::Contention)) if failed < 100 => {
                failed += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(other) => panic!("poll after restart: {other}"),
        }
    }
    assert_eq!(
        w.balances().await,
        ("3".into(), "0".into()),
        "six deposits of 0.5, each credited once"
    );
    assert_eq!(w.app.count("chain_deposits").await, 6);
    assert_eq!(w.app.count("transactions").await, 6);
    w.app.assert_books_balance().await;
}
