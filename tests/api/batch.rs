//! Group commit against the real server (issue 12): a batch of movements in one database
//! transaction gives exactly what its movements applied one by one give, each movement keeps its
//! own outcome, and an overdrawing one fails alone.

use coffer_domain::plan::{plan_transfer, plan_withdrawal};
use coffer_domain::{Amount, AssetConfig, Movement, Origin, WalletRef};
use coffer_store::batch::Submission;
use coffer_store::{Role, StoreError};
use coffer_test_support::{TestApp, TestUser};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const WALLETS: usize = 4;

/// What a test movement is: a transfer between two of the wallets, or a withdrawal hold charged
/// against the daily limit.
#[derive(Debug, Clone)]
enum Step {
    Transfer { from: usize, to: usize, units: u64 },
    Withdraw { from: usize, units: u64 },
}

fn usdt(app: &TestApp) -> AssetConfig {
    app.catalog
        .current()
        .get("USDT")
        .cloned()
        .expect("USDT in the dev catalog")
}

/// `count` funded USDT wallets (their owners and refs), each credited `units` whole USDT.
async fn wallets(app: &TestApp, funds: &[u64]) -> Vec<(TestUser, WalletRef)> {
    let payment = app.staff(Role::Payment).await;
    let mut wallets = Vec::new();
    for units in funds {
        let user = app.register().await;
        let id = app.create_wallet(&user, "USDT").await;
        if *units > 0 {
            app.deposit(&payment, &id, &units.to_string()).await;
        }
        let refs = app.store.wallet_refs(&[&id]).await.unwrap();
        wallets.push((user, refs[&id].clone()));
    }
    wallets
}

fn units(n: u64) -> Amount {
    Amount::from_u64(n * 1_000_000)
}

fn plan(step: &Step, wallets: &[(TestUser, WalletRef)], asset: &AssetConfig, key: &str) -> Movement {
    let origin = |user: &TestUser| Origin {
        transaction_id: coffer_store::new_id(),
        now: chrono::Utc::now(),
        initiated_by: user.id.clone(),
    };
    match step {
        Step::Transfer { from, to, units: n } => {
            let (user, from) = &wallets[*from];
            plan_transfer(origin(user), key, from, &wallets[*to].1, units(*n), asset).unwrap()
        }
        Step::Withdraw { from, units: n } => {
            let (user, from) = &wallets[*from];
            let destination = format!("0x{}", "cd".repeat(20));
            let mut limited = asset.clone();
            limited.daily_withdrawal_limit = units(25);
            limited.withdrawal_min = units(1);
            plan_withdrawal(origin(user), key, from, units(*n), &destination, &limited).unwrap()
        }
    }
}

/// Ok, or the refusal's kind.
fn outcome(result: &Result<coffer_store::TransactionDoc, StoreError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StoreError::InsufficientFunds) => "insufficient_funds",
        Err(StoreError::LimitExceeded) => "limit_exceeded",
        Err(other) => panic!("unexpected outcome {other:?}"),
    }
}

async fn balances(app: &TestApp, wallets: &[(TestUser, WalletRef)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (user, wallet) in wallets {
        let view = app.wallet(user, &wallet.id).await;
        out.push((
            view["available"].as_str().unwrap().into(),
            view["held"].as_str().unwrap().into(),
        ));
    }
    out
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let transfer = (0..WALLETS, 0..WALLETS, 1u64..30)
        .prop_filter_map("distinct wallets", |(from, to, units)| {
            (from != to).then_some(Step::Transfer { from, to, units })
        });
    let withdraw = (0..WALLETS, 1u64..12).prop_map(|(from, units)| Step::Withdraw { from, units });
    proptest::collection::vec(prop_oneof![3 => transfer, 1 => withdraw], 1..40)
}

/// Any batch (random transfers and limited withdrawal holds over four wallets, some overdrawing
/// or over the limit) ends with the outcomes and balances of the same movements applied one per
/// database transaction, in order, on an identical set of wallets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gives_the_outcomes_and_balances_of_its_movements_one_by_one() {
    let app = TestApp::spawn().await;
    let asset = usdt(&app);
    // A deterministic runner: the cases are the same on every run (and replayable).
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for case in 0..6 {
        let funds: Vec<u64> = (0..WALLETS)
            .map(|i| [40, 5, 0, 17][(i + case) % WALLETS])
            .collect();
        let steps = steps().new_tree(&mut runner).unwrap().current();
        let batched = wallets(&app, &funds).await;
        let serial = wallets(&app, &funds).await;
        let keys: Vec<String> = (0..steps.len()).map(|i| format!("case-{case}-{i}")).collect();
        let submissions: Vec<Submission> = steps
            .iter()
            .zip(&keys)
            .map(|(step, key)| plan(step, &batched, &asset, key).into())
            .collect();
        let in_batch = app.store.apply_all(submissions).await;
        let mut one_by_one = Vec::new();
        for (step, key) in steps.iter().zip(&keys) {
            one_by_one.push(app.store.apply_movement(plan(step, &serial, &asset, key)).await);
        }
        let got: Vec<&str> = in_batch.iter().map(outcome).collect();
        let want: Vec<&str> = one_by_one.iter().map(outcome).collect();
        assert_eq!(got, want, "case {case}: {steps:?}");
        assert!(want.contains(&"ok"), "case {case} moves something");
        assert_eq!(
            balances(&app, &batched).await,
            balances(&app, &serial).await,
            "case {case}"
        );
    }
    app.assert_books_balance().await;
}

#[tokio::test]
async fn one_overdrawing_movement_in_a_batch_of_100_fails_alone() {
    let app = TestApp::spawn().await;
    let asset = usdt(&app);
    let wallets = wallets(&app, &[150, 0]).await;
    let batches_before = batch_count(&app);
    // 49 transfers of 1, one of 200 (more than the 101 left), then 50 more of 1.
    let steps: Vec<Step> = (0..100)
        .map(|i| Step::Transfer {
            from: 0,
            to: 1,
            units: if i == 49 { 200 } else { 1 },
        })
        .collect();
    let submissions = steps
        .iter()
        .enumerate()
        .map(|(i, s)| plan(s, &wallets, &asset, &format!("big-{i}")).into())
        .collect();
    let outcomes = app.store.apply_all(submissions).await;
    assert_eq!(
        batch_count(&app) - batches_before,
        1,
        "the 100 movements were one database transaction"
    );
    let refused: Vec<usize> = (0..100).filter(|i| outcomes[*i].is_err()).collect();
    assert_eq!(refused, vec![49], "only the overdrawing movement failed");
    assert!(matches!(outcomes[49], Err(StoreError::InsufficientFunds)));
    assert_eq!(
        balances(&app, &wallets).await,
        vec![
            ("51".to_string(), "0".to_string()),
            ("99".to_string(), "0".to_string())
        ]
    );
    app.assert_books_balance().await;
}

#[tokio::test]
async fn a_movement_applied_before_or_twice_in_a_batch_is_answered_from_its_record() {
    let app = TestApp::spawn().await;
    let asset = usdt(&app);
    let wallets = wallets(&app, &[10, 0]).await;
    let step = Step::Transfer {
        from: 0,
        to: 1,
        units: 1,
    };
    let first = app
        .store
        .apply_movement(plan(&step, &wallets, &asset, "once"))
        .await
        .unwrap();
    // The same key again, twice in one batch, beside a new one.
    let submissions = ["once", "once", "new"]
        .iter()
        .map(|key| plan(&step, &wallets, &asset, key).into())
        .collect();
    let outcomes = app.store.apply_all(submissions).await;
    for outcome in &outcomes[..2] {
        match outcome {
            Err(StoreError::DuplicateLedgerKey(existing)) => assert_eq!(existing.id, first.id),
            other => panic!("expected the committed record, got {other:?}"),
        }
    }
    assert!(outcomes[2].is_ok());
    assert_eq!(
        balances(&app, &wallets).await[1].0,
        "2",
        "two transfers moved, not four"
    );
}

fn batch_count(app: &TestApp) -> u64 {
    let families = app.registry.gather();
    let family = families
        .iter()
        .find(|f| f.name() == "coffer_ledger_batch_movements");
    family.map_or(0, |f| f.get_metric()[0].get_histogram().get_sample_count())
}
