//! Reconciliation runs: what they find, that they store it, list it and count it.

use std::sync::Arc;

use coffer_domain::Amount;
use coffer_store::codec;
use coffer_store::mongodb::bson::{doc, Document};
use coffer_store::reconcile::{ChainReading, CustodySource, ReconcileConfig, ReconcileMetrics, Reconciler};
use coffer_store::Role;
use coffer_test_support::{Options, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn check<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap()
}

fn findings_of<'a>(run: &'a Value, name: &str) -> Vec<&'a Value> {
    run["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == name)
        .collect()
}

/// A payment service, an engineer, and Alice's and Bob's ETH wallets funded with 2.5 and 1.
struct Books {
    app: TestApp,
    payment: coffer_test_support::TestUser,
    engineer: coffer_test_support::TestUser,
    alice: coffer_test_support::TestUser,
    bob: coffer_test_support::TestUser,
    alice_wallet: String,
    bob_wallet: String,
}

async fn books() -> Books {
    let app = TestApp::spawn().await;
    let (payment, engineer) = (app.staff(Role::Payment).await, app.staff(Role::Engineering).await);
    let (alice, bob) = (app.register().await, app.register().await);
    let alice_wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &alice_wallet, "2.5").await;
    app.deposit(&payment, &bob_wallet, "1").await;
    Books {
        app,
        payment,
        engineer,
        alice,
        bob,
        alice_wallet,
        bob_wallet,
    }
}

#[tokio::test]
async fn a_corrupted_cached_balance_is_reported_for_exactly_that_wallet() {
    let Books {
        app,
        engineer,
        alice,
        bob,
        alice_wallet,
        bob_wallet,
        ..
    } = books().await;

    let clean = app
        .post("/v1/admin/reconciliations", &engineer.access_token, json!({}))
        .await;
    assert_eq!(clean.status, StatusCode::CREATED, "{:?}", clean.body);
    assert_eq!(clean.body["mismatches"], 0, "{:#}", clean.body);
    for name in [
        "balances",
        "postings",
        "stuck_transactions",
        "outbox_lag",
        "audit_chain",
    ] {
        assert_eq!(check(&clean.body, name)["status"], "ok", "{name}");
    }
    assert_eq!(
        check(&clean.body, "custody")["status"],
        "skipped",
        "no chain is configured"
    );

    // 2.5 ETH cached as 2.500000000000000001 behind the ledger's back.
    let corrupted = codec::to_decimal(&Amount::from_u64(2_500_000_000_000_000_001), false);
    app.store
        .database()
        .collection::<Document>("wallets")
        .update_one(
            doc! { "_id": &alice_wallet },
            doc! { "$set": { "available": corrupted } },
        )
        .await
        .unwrap();

    let run = app
        .post("/v1/admin/reconciliations", &engineer.access_token, json!({}))
        .await;
    assert_eq!(run.status, StatusCode::CREATED);
    assert_eq!(run.body["mismatches"], 1, "{:#}", run.body);
    assert_eq!(check(&run.body, "balances")["status"], "mismatch");
    assert_eq!(
        check(&run.body, "postings")["status"],
        "ok",
        "entries are untouched"
    );
    let found = findings_of(&run.body, "balances");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["subject"], alice_wallet.as_str());
    assert_eq!(found[0]["kind"], "balance_mismatch");
    assert_eq!(found[0]["details"]["bucket"], "available");
    assert_eq!(found[0]["details"]["cached_atomic"], "2500000000000000001");
    assert_eq!(found[0]["details"]["ledger_atomic"], "2500000000000000000");

    // Stored: listed newest first without findings, and readable with them.
    let list = app.get("/v1/admin/reconciliations", &engineer.access_token).await;
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], run.body["id"]);
    assert!(items[0].get("findings").is_none());
    let one = app
        .get(
            &format!("/v1/admin/reconciliations/{}", run.body["id"].as_str().unwrap()),
            &engineer.access_token,
        )
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["findings"], run.body["findings"]);
    assert_eq!(one.body["requested_by"], engineer.id.as_str());

    assert_eq!(app.metric("coffer_reconciliation_runs_total"), 2.0);
    assert_eq!(
        app.metric("coffer_reconciliation_mismatches"),
        1.0,
        "only balances has a finding"
    );
    assert!(app.metric("coffer_reconciliation_last_run_timestamp_seconds") > 1.7e9);
    assert_eq!(
        app.wallet(&bob, &bob_wallet).await["available"],
        "1",
        "a run fixes nothing silently"
    );
    assert_eq!(
        app.wallet(&alice, &alice_wallet).await["available"],
        "2.500000000000000001"
    );
}

#[tokio::test]
async fn a_withdrawal_left_past_its_state_limit_is_reported_as_stuck() {
    let reconcile = ReconcileConfig::default()
        .with_state_limits("pending_broadcast=600")
        .unwrap();
    let app = TestApp::spawn_with(Options {
        reconcile,
        ..Options::default()
    })
    .await;
    let (payment, admin) = (app.staff(Role::Payment).await, app.staff(Role::Admin).await);
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    let destination = format!("0x{}", "ab".repeat(20));
    let body = json!({ "wallet_id": wallet, "amount": "1", "destination_address": destination });
    let old = app.withdraw(&alice, body.clone()).await;
    assert_eq!(old.status, StatusCode::CREATED);
    // The old one has waited an hour (its last change moved back), the fresh one not at all: no
    // race with a loaded machine's clock.
    let an_hour_ago =
        coffer_store::mongodb::bson::DateTime::from_millis(chrono::Utc::now().timestamp_millis() - 3_600_000);
    app.store
        .database()
        .collection::<coffer_store::mongodb::bson::Document>("transactions")
        .update_one(
            coffer_store::mongodb::bson::doc! { "_id": old.body["id"].as_str().unwrap() },
            coffer_store::mongodb::bson::doc! { "$set": { "updated_at": an_hour_ago } },
        )
        .await
        .unwrap();
    let fresh = app.withdraw(&alice, body).await;
    assert_eq!(fresh.status, StatusCode::CREATED);

    let run = app
        .post("/v1/admin/reconciliations", &admin.access_token, json!({}))
        .await;
    assert_eq!(run.status, StatusCode::CREATED);
    let stuck = findings_of(&run.body, "stuck_transactions");
    assert_eq!(stuck.len(), 1, "only the old one: {:#}", run.body);
    assert_eq!(stuck[0]["subject"], old.body["id"]);
    assert_eq!(stuck[0]["details"]["state"], "pending_broadcast");
    assert_eq!(stuck[0]["details"]["kind"], "withdrawal");
    assert_eq!(stuck[0]["details"]["limit_seconds"], 600);
    assert!(stuck[0]["details"]["in_state_seconds"].as_i64().unwrap() >= 3600);
    assert_eq!(check(&run.body, "balances")["status"], "ok");
    assert_eq!(run.body["mismatches"], 1);
}

#[tokio::test]
async fn old_unpublished_outbox_events_are_reported() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "USDT").await;
    app.deposit(&payment, &wallet, "5").await;
    let outbox = app.store.database().collection::<Document>("outbox");
    let oldest = outbox
        .find_one(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .unwrap();
    let an_hour_ago = coffer_store::mongodb::bson::DateTime::from_millis(
        coffer_store::mongodb::bson::DateTime::now().timestamp_millis() - 3_600_000,
    );
    outbox
        .update_one(
            doc! { "_id": oldest.get_str("_id").unwrap() },
            doc! { "$set": { "created_at": an_hour_ago } },
        )
        .await
        .unwrap();
    let reconciler = Reconciler {
        config: ReconcileConfig::default(),
        custody: Arc::new(coffer_store::reconcile::NoChainConfigured),
        metrics: ReconcileMetrics::new(&prometheus_registry()).unwrap(),
    };
    let run = reconciler.run(&app.store, "test", None).await.unwrap();
    let lag: Vec<_> = run.findings.iter().filter(|f| f.check == "outbox_lag").collect();
    assert_eq!(lag.len(), 1);
    assert_eq!(lag[0].subject, oldest.get_str("_id").unwrap());
    assert!(lag[0].details["age_seconds"].as_i64().unwrap() >= 3600);
    let stored = app.store.reconciliation_run(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.findings, run.findings);
}

/// A chain that says what it holds of each asset.
struct FixedChain(Vec<(&'static str, Amount)>);

impl CustodySource for FixedChain {
    fn on_chain_balance<'a>(
        &'a self,
        asset: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<ChainReading>, String>> {
        let found = self
            .0
            .iter()
            .find(|(a, _)| *a == asset)
            .map(|(_, amount)| ChainReading {
                custody: *amount,
                on_chain: *amount,
                block_number: None,
            });
        Box::pin(async move { Ok(found) })
    }
}

fn prometheus_registry() -> prometheus::Registry {
    prometheus::Registry::new()
}

#[tokio::test]
async fn custody_is_compared_with_the_chain_where_one_is_configured() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "USDT").await;
    app.deposit(&payment, &wallet, "5").await;
    let run_with = |chain: FixedChain| {
        let store = app.store.clone();
        async move {
            let reconciler = Reconciler {
                config: ReconcileConfig::default(),
                custody: Arc::new(chain),
                metrics: ReconcileMetrics::new(&prometheus_registry()).unwrap(),
            };
            reconciler.run(&store, "test", None).await.unwrap()
        }
    };
    let matching = run_with(FixedChain(vec![("USDT", Amount::from_u64(5_000_000))])).await;
    let custody = matching.checks.iter().find(|c| c.check == "custody").unwrap();
    assert_eq!(
        custody.status,
        coffer_store::reconcile::CheckStatus::Ok,
        "ETH has no chain, USDT matches"
    );

    let short = run_with(FixedChain(vec![("USDT", Amount::from_u64(4_000_000))])).await;
    let found: Vec<_> = short.findings.iter().filter(|f| f.check == "custody").collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].subject, "USDT");
    assert_eq!(found[0].details["ledger_atomic"], "5000000");
    assert_eq!(found[0].details["on_chain_atomic"], "4000000");
}

/// The entries a transaction wrote: how many, and the accounts they touched.
async fn entries_of(app: &TestApp, transaction_id: &str) -> (i64, usize) {
    use futures::TryStreamExt;
    let entries: Vec<Document> = app
        .store
        .database()
        .collection::<Document>("ledger_entries")
        .find(doc! { "transaction_id": transaction_id })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let accounts: std::collections::BTreeSet<String> = entries
        .iter()
        .map(|e| e.get_str("account_id").unwrap().to_string())
        .collect();
    (entries.len() as i64, accounts.len())
}

async fn run_now(app: &TestApp, staff: &coffer_test_support::TestUser, mode: &str) -> Value {
    let path = match mode {
        "" => "/v1/admin/reconciliations".to_string(),
        mode => format!("/v1/admin/reconciliations?mode={mode}"),
    };
    let reply = app.post(&path, &staff.access_token, json!({})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body
}

async fn set_entry_amount(app: &TestApp, transaction_id: &str, account_id: &str, atomic: u64) {
    let amount = codec::to_decimal(&Amount::from_u64(atomic), false);
    let result = app
        .store
        .database()
        .collection::<Document>("ledger_entries")
        .update_one(
            doc! { "transaction_id": transaction_id, "account_id": account_id },
            doc! { "$set": { "amount": amount } },
        )
        .await
        .unwrap();
    assert_eq!(result.modified_count, 1);
}

#[tokio::test]
async fn an_incremental_run_reads_only_the_entries_written_since_the_checkpoints() {
    let Books {
        app,
        payment,
        engineer,
        bob_wallet,
        ..
    } = books().await;

    let first = run_now(&app, &engineer, "").await;
    assert_eq!(first["mode"], "full", "no checkpoint yet: {first:#}");
    assert!(first.get("incremental").is_none());
    assert_eq!(first["mismatches"], 0);

    let quiet = run_now(&app, &engineer, "").await;
    assert_eq!(quiet["mode"], "incremental", "{quiet:#}");
    assert_eq!(quiet["incremental"]["accounts_changed"], 0);
    assert_eq!(quiet["incremental"]["entries_read"], 0);
    assert!(quiet["incremental"]["accounts_read"].as_i64().unwrap() >= 3);

    let deposit = app.deposit(&payment, &bob_wallet, "0.25").await;
    let tx = deposit.body["id"].as_str().unwrap().to_string();
    let (entries, accounts) = entries_of(&app, &tx).await;
    let after = run_now(&app, &engineer, "").await;
    assert_eq!(after["mode"], "incremental");
    assert_eq!(after["mismatches"], 0, "{after:#}");
    assert_eq!(after["incremental"]["entries_read"], entries, "{after:#}");
    assert_eq!(after["incremental"]["accounts_changed"], accounts as i64);
    assert_eq!(after["incremental"]["transactions_checked"], 1);

    // The checkpoints moved: the next run reads nothing again.
    let again = run_now(&app, &engineer, "").await;
    assert_eq!(again["incremental"]["entries_read"], 0, "{again:#}");
}

#[tokio::test]
async fn an_incremental_run_finds_an_altered_or_missing_entry_after_the_checkpoint_and_a_full_run_finds_older_ones(
) {
    let app = TestApp::spawn().await;
    let (payment, engineer) = (app.staff(Role::Payment).await, app.staff(Role::Engineering).await);
    let (alice, bob) = (app.register().await, app.register().await);
    let alice_wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    let old = app.deposit(&payment, &bob_wallet, "1").await;
    let old_tx = old.body["id"].as_str().unwrap().to_string();
    assert_eq!(run_now(&app, &engineer, "").await["mode"], "full");

    // An entry written after the checkpoint, altered: its account and its transaction are named.
    let altered = app.deposit(&payment, &alice_wallet, "0.5").await;
    let altered_tx = altered.body["id"].as_str().unwrap().to_string();
    set_entry_amount(&app, &altered_tx, &alice_wallet, 600_000_000_000_000_000).await;
    let run = run_now(&app, &engineer, "").await;
    assert_eq!(run["mode"], "incremental");
    let balances = findings_of(&run, "balances");
    assert_eq!(balances.len(), 1, "{run:#}");
    assert_eq!(balances[0]["kind"], "balance_mismatch");
    assert_eq!(balances[0]["subject"], alice_wallet.as_str());
    assert_eq!(balances[0]["details"]["cached_atomic"], "500000000000000000");
    assert_eq!(balances[0]["details"]["ledger_atomic"], "600000000000000000");
    let postings = findings_of(&run, "postings");
    assert!(
        postings
            .iter()
            .any(|f| f["kind"] == "unbalanced_transaction" && f["subject"] == altered_tx.as_str()),
        "{run:#}"
    );
    // Not checkpointed while it disagrees: the next run finds it again.
    let again = run_now(&app, &engineer, "").await;
    assert_eq!(findings_of(&again, "balances").len(), 1, "{again:#}");
    set_entry_amount(&app, &altered_tx, &alice_wallet, 500_000_000_000_000_000).await;
    assert_eq!(run_now(&app, &engineer, "").await["mismatches"], 0);

    // An entry after the checkpoint deleted: a sequence gap on its account.
    let gone = app.deposit(&payment, &alice_wallet, "0.1").await;
    let gone_tx = gone.body["id"].as_str().unwrap().to_string();
    app.store
        .database()
        .collection::<Document>("ledger_entries")
        .delete_one(doc! { "transaction_id": &gone_tx, "account_id": &alice_wallet })
        .await
        .unwrap();
    let run = run_now(&app, &engineer, "").await;
    let balances = findings_of(&run, "balances");
    assert_eq!(balances.len(), 1, "{run:#}");
    assert_eq!(
        (balances[0]["kind"].as_str(), balances[0]["subject"].as_str()),
        (Some("sequence_gap"), Some(alice_wallet.as_str()))
    );

    // An entry from before the checkpoint: outside what an incremental run reads (the full pass on
    // its slower schedule is what finds it), and a full run names it.
    set_entry_amount(&app, &old_tx, &bob_wallet, 2_000_000_000_000_000_000).await;
    let incremental = run_now(&app, &engineer, "incremental").await;
    assert!(
        findings_of(&incremental, "balances")
            .iter()
            .all(|f| f["subject"] != bob_wallet.as_str()),
        "{incremental:#}"
    );
    let full = run_now(&app, &engineer, "full").await;
    assert_eq!(full["mode"], "full");
    let bob_findings: Vec<_> = findings_of(&full, "balances")
        .into_iter()
        .filter(|f| f["subject"] == bob_wallet.as_str())
        .collect();
    assert_eq!(bob_findings.len(), 1, "{full:#}");
    assert_eq!(bob_findings[0]["details"]["ledger_atomic"], "2000000000000000000");
}
