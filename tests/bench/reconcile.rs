//! Reconciliation over a large ledger: seeds N balanced ledger entries (deposits: custody debit,
//! wallet credit) straight into a fresh database with consistent cached balances and account
//! sequence numbers, then times one full reconciliation run (which writes the checkpoints), adds
//! 1,000 deposits, and times one incremental run; a raw single `$group` over the same entries is
//! the baseline.
//!
//! Usage: `MONGODB_URI=... cargo run --release -p coffer-tests --bin reconcile-bench [ENTRIES]`
//! (default 1,000,000; docs/benchmarks.md "Reconciliation").

use std::sync::Arc;
use std::time::Instant;

use coffer_domain::Amount;
use coffer_store::codec;
use coffer_store::mongodb::bson::{doc, DateTime, Document};
use coffer_store::reconcile::{
    NoChainConfigured, ReconcileConfig, ReconcileMetrics, Reconciler, ReconciliationRun, RunMode,
};
use coffer_store::{Store, StoreConfig, StoreMetrics};
use futures::TryStreamExt;

const WALLETS: u64 = 1000;
const BATCH: usize = 10_000;
const WRITERS: usize = 2;
/// Deposits written between the full run and the incremental one.
const CHANGED: u64 = 1000;
const CUSTODY: &str = "platform:ETH:custody";

/// The two entries of deposit `t` (custody debit, wallet credit), with each account's sequence
/// number: wallet `t % WALLETS` gets its `t / WALLETS + 1`-th entry, custody its `t + 1`-th.
fn deposit_entries(t: u64, wallet: &str, amount: u64, now: DateTime) -> [Document; 2] {
    let tx_id = format!("bench-tx-{t:08}");
    let amount = Amount::from_u64(amount);
    let user = format!("bench-user-{}", t % WALLETS);
    let entry = |account: &str, negative: bool, seq: u64, user: Option<&str>| {
        doc! {
            "_id": format!("{tx_id}-{}", if negative { "d" } else { "c" }),
            "transaction_id": &tx_id, "account_id": account, "user_id": user, "asset": "ETH",
            "kind": "deposit", "bucket": "available", "side": if negative { "debit" } else { "credit" },
            "amount": codec::to_decimal(&amount, negative), "created_at": now, "seq": seq as i64,
        }
    };
    [
        entry(CUSTODY, true, t + 1, None),
        entry(wallet, false, t / WALLETS + 1, Some(&user)),
    ]
}

#[tokio::main]
async fn main() {
    let entries: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ENTRIES is a number"))
        .unwrap_or(1_000_000);
    let transactions = entries / 2;
    let uri = std::env::var("MONGODB_URI").expect("MONGODB_URI");
    let database = format!("bench_reconcile_{}", uuid::Uuid::new_v4().simple());
    let store = Store::connect(
        &uri,
        &database,
        StoreConfig {
            // Each run verifies the audit chain, which needs its key (COFFER_AUDIT_KEY).
            audit_keys: Some(coffer_test_support::test_audit_keys()),
            ..StoreConfig::default()
        },
        StoreMetrics::unregistered(),
    )
    .await
    .unwrap();
    store.ensure_indexes().await.unwrap();
    store.ensure_platform_accounts("ETH", 18).await.unwrap();

    let seeding = Instant::now();
    let mut wallet_ids = Vec::new();
    for i in 0..WALLETS {
        let (wallet, _) = store
            .create_wallet(&format!("bench-user-{i}"), "ETH", 18)
            .await
            .unwrap();
        wallet_ids.push(wallet.id);
    }
    let wallet_ids = Arc::new(wallet_ids);
    // Deposit t pays 1 + t % 1000 units to wallet t % WALLETS.
    let amount_of = |t: u64| 1 + t % 1000;
    let writers: Vec<_> = (0..WRITERS as u64)
        .map(|w| {
            let (store, wallet_ids) = (store.clone(), wallet_ids.clone());
            tokio::spawn(async move {
                let collection = store.collection::<Document>("ledger_entries");
                let now = DateTime::now();
                let mut batch = Vec::with_capacity(BATCH);
                for t in (w..transactions).step_by(WRITERS) {
                    let wallet = &wallet_ids[(t % WALLETS) as usize];
                    batch.extend(deposit_entries(t, wallet, amount_of(t), now));
                    if batch.len() >= BATCH {
                        collection.insert_many(std::mem::take(&mut batch)).await.unwrap();
                    }
                }
                if !batch.is_empty() {
                    collection.insert_many(batch).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    set_cached(&store, &wallet_ids, transactions, &amount_of).await;
    let seeded = store
        .collection::<Document>("ledger_entries")
        .estimated_document_count()
        .await
        .unwrap();
    println!(
        "seeded {seeded} ledger entries ({transactions} transactions, {} accounts) in {:.1}s",
        WALLETS + 4,
        seeding.elapsed().as_secs_f64()
    );

    // Baseline: one raw `$group` by account over every entry.
    let started = Instant::now();
    let pipeline = vec![doc! { "$group": { "_id": "$account_id", "sum": { "$sum": "$amount" } } }];
    let groups: Vec<Document> = store
        .collection::<Document>("ledger_entries")
        .aggregate(pipeline)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let raw = started.elapsed().as_secs_f64();
    println!(
        "raw driver: one $group by account ({} groups)      {raw:>8.2}s",
        groups.len()
    );

    let reconciler = Reconciler {
        config: ReconcileConfig::default(),
        custody: Arc::new(NoChainConfigured),
        metrics: ReconcileMetrics::new(&prometheus::Registry::new()).unwrap(),
    };
    let full = timed_run(
        &reconciler,
        &store,
        "full run, all checks (writes checkpoints)",
        raw,
    )
    .await;
    assert_eq!(full.mode, RunMode::Full, "no checkpoint existed");

    // CHANGED more deposits, as the write path leaves them: entries with the next sequence
    // numbers, cached balances and versions moved.
    let collection = store.collection::<Document>("ledger_entries");
    let now = DateTime::now();
    let mut batch = Vec::new();
    for t in transactions..transactions + CHANGED {
        batch.extend(deposit_entries(
            t,
            &wallet_ids[(t % WALLETS) as usize],
            amount_of(t),
            now,
        ));
    }
    collection.insert_many(batch).await.unwrap();
    set_cached(&store, &wallet_ids, transactions + CHANGED, &amount_of).await;
    let incremental = timed_run(
        &reconciler,
        &store,
        &format!("incremental run after {CHANGED} deposits"),
        raw,
    )
    .await;
    assert_eq!(incremental.mode, RunMode::Incremental);
    let read = incremental.incremental.expect("an incremental summary");
    println!(
        "  incremental read {} accounts, {} changed, {} entries, {} transactions",
        read.accounts_read, read.accounts_changed, read.entries_read, read.transactions_checked
    );
    assert_eq!(read.entries_read, 2 * CHANGED as i64, "exactly the new entries");
    store.database().drop().await.unwrap();
}

/// Sets every account's cached balance and version to what the first `transactions` deposits
/// wrote.
async fn set_cached(
    store: &Store,
    wallet_ids: &[String],
    transactions: u64,
    amount_of: &impl Fn(u64) -> u64,
) {
    let mut per_wallet = vec![(0u64, 0i64); WALLETS as usize];
    for t in 0..transactions {
        let slot = &mut per_wallet[(t % WALLETS) as usize];
        slot.0 += amount_of(t);
        slot.1 += 1;
    }
    let wallets = store.collection::<Document>("wallets");
    for (id, (total, version)) in wallet_ids.iter().zip(&per_wallet) {
        let cached = codec::to_decimal(&Amount::from_u64(*total), false);
        wallets
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "available": cached, "version": version } },
            )
            .await
            .unwrap();
    }
    let custody = codec::to_decimal(&Amount::from_u64(per_wallet.iter().map(|p| p.0).sum()), true);
    wallets
        .update_one(
            doc! { "_id": CUSTODY },
            doc! { "$set": { "available": custody, "version": transactions as i64 } },
        )
        .await
        .unwrap();
}

async fn timed_run(reconciler: &Reconciler, store: &Store, what: &str, raw: f64) -> ReconciliationRun {
    let started = Instant::now();
    let run = reconciler.run(store, "bench", None).await.unwrap();
    let total = started.elapsed().as_secs_f64();
    println!("{what:<50} {total:>8.2}s  ratio to raw {:.4}", total / raw);
    for check in &run.checks {
        println!(
            "  {:<20} {:>9} ms  {:?}",
            check.check, check.duration_ms, check.status
        );
    }
    assert_eq!(run.mismatches, 0, "the seeded books balance: {:?}", run.findings);
    run
}
