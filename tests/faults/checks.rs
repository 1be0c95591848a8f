//! The final checks: each one prints what it checked and adds a line per violation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_store::mongodb::bson::{doc, Document};
use coffer_store::reconcile::{NoChainConfigured, ReconcileMetrics, Reconciler};
use coffer_store::Store;

use crate::workload::{Record, User};

/// Violations found so far, and the figures the report prints.
#[derive(Default)]
pub struct Findings {
    pub violations: Vec<String>,
    pub figures: BTreeMap<&'static str, u64>,
}

impl Findings {
    pub fn violation(&mut self, text: String) {
        println!("  VIOLATION {text}");
        self.violations.push(text);
    }

    pub fn figure(&mut self, name: &'static str, value: u64) {
        *self.figures.entry(name).or_default() += value;
    }
}

/// The signed value of a stored balance, in atomic units.
fn signed(amount: &coffer_domain::book::SignedAmount) -> i128 {
    let magnitude: i128 = amount.magnitude.to_string().parse().unwrap_or(i128::MAX);
    if amount.negative {
        -magnitude
    } else {
        magnitude
    }
}

async fn count(store: &Store, collection: &str, filter: Document) -> u64 {
    store
        .database()
        .collection::<Document>(collection)
        .count_documents(filter)
        .await
        .unwrap_or(u64::MAX)
}

/// Every asset and transaction sums to zero and every cached balance equals its ledger sum
/// (the store's verify, as `coffer ledger verify`); no user balance is negative.
pub async fn ledger(store: &Store, users: &[User], findings: &mut Findings) {
    match store.verify_ledger().await {
        Ok(report) => {
            println!(
                "ledger verify: {} accounts checked, {} finding(s)",
                report.accounts_checked,
                report.findings.len()
            );
            for finding in report.findings {
                findings.violation(format!("ledger verify: {finding:?}"));
            }
        }
        Err(e) => findings.violation(format!("ledger verify failed: {e}")),
    }
    let mut negative = 0;
    for user in users {
        match store.wallet_by_id(&user.wallet).await {
            Ok(Some(wallet)) => {
                for (bucket, value) in [
                    ("available", signed(&wallet.available)),
                    ("pending", signed(&wallet.pending)),
                    ("held", signed(&wallet.held)),
                ] {
                    if value < 0 {
                        negative += 1;
                        findings.violation(format!(
                            "wallet {} has a negative {bucket} balance: {value}",
                            user.wallet
                        ));
                    }
                }
            }
            other => findings.violation(format!("wallet {} unreadable: {other:?}", user.wallet)),
        }
    }
    println!("user balances: {} wallets, {negative} negative", users.len());
}

/// Every 2xx money answer's transaction exists once, every answer to one key names the same
/// transaction, the database holds no transfer or rail deposit nobody was answered 2xx for
/// (so nothing moved for a refused request), and every request was answered.
pub async fn answers(store: &Store, records: &[Record], findings: &mut Findings) {
    let mut by_key: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut unanswered = 0;
    for record in records {
        match record.transaction() {
            Some(id) => {
                by_key
                    .entry((record.op, record.key.as_str()))
                    .or_default()
                    .insert(id);
            }
            None if record.refused() => {}
            None => unanswered += 1,
        }
    }
    if unanswered > 0 {
        findings.violation(format!(
            "{unanswered} money request(s) unanswered after a minute of retries"
        ));
    }
    for ((op, key), ids) in &by_key {
        if ids.len() > 1 {
            findings.violation(format!(
                "{op} key {key} answered with {} transactions: {ids:?}",
                ids.len()
            ));
        }
    }
    for op in ["transfer", "rail_deposit"] {
        let answered: HashSet<&str> = records
            .iter()
            .filter(|r| r.op == op)
            .filter_map(Record::transaction)
            .collect();
        for id in &answered {
            let found = count(store, "transactions", doc! { "_id": *id }).await;
            if found != 1 {
                findings.violation(format!("{op} {id} answered 2xx exists {found} time(s)"));
            }
        }
        let filter = match op {
            "transfer" => doc! { "kind": "transfer" },
            _ => doc! { "kind": "deposit", "external_reference": { "$regex": "^rail-" } },
        };
        let stored = count(store, "transactions", filter).await;
        if stored != answered.len() as u64 {
            findings.violation(format!(
                "{stored} {op} transactions stored for {} answered 2xx: something moved for a request refused or never answered",
                answered.len()
            ));
        }
        let refused = records.iter().filter(|r| r.op == op && r.refused()).count();
        println!(
            "{op}: {} answered 2xx ({} distinct transactions), {refused} refused, {stored} stored",
            records
                .iter()
                .filter(|r| r.op == op && r.transaction().is_some())
                .count(),
            answered.len()
        );
    }
    let references = count(
        store,
        "transactions",
        doc! { "kind": "deposit", "external_reference": { "$regex": "^rail-" } },
    )
    .await;
    let distinct_rail: HashSet<&str> = records
        .iter()
        .filter(|r| r.op == "rail_deposit")
        .map(|r| r.key.rsplit_once('-').map_or("", |k| k.0))
        .collect();
    if references != distinct_rail.len() as u64 {
        findings.violation(format!(
            "{references} rail deposits stored for {} references (each delivered twice)",
            distinct_rail.len()
        ));
    }
}

/// The reconciler's run after the workload: clean, or its findings printed.
pub async fn reconciler(store: &Store, findings: &mut Findings) {
    let registry = prometheus::Registry::new();
    let reconciler = Reconciler {
        config: Default::default(),
        custody: Arc::new(NoChainConfigured),
        metrics: ReconcileMetrics::new(&registry).expect("metrics"),
    };
    match reconciler.run(store, "faults-harness", None).await {
        Ok(run) => {
            let checks: Vec<String> = run
                .checks
                .iter()
                .map(|c| format!("{}={:?}", c.check, c.status))
                .collect();
            println!(
                "reconciler: {} mismatch(es) [{}]",
                run.mismatches,
                checks.join(", ")
            );
            for finding in &run.findings {
                findings.violation(format!("reconciler: {finding:?}"));
            }
            if run.mismatches > 0 && run.findings.is_empty() {
                findings.violation(format!(
                    "reconciler: {} mismatches: {:?}",
                    run.mismatches, run.checks
                ));
            }
        }
        Err(e) => findings.violation(format!("reconciler run failed: {e}")),
    }
}

/// Waits (bounded) until the outbox has nothing left to publish.
pub async fn outbox_drained(store: &Store, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(backlog) = store.outbox_backlog(None).await {
            if backlog.unpublished + backlog.retrying == 0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}
