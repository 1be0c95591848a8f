//! The ledger write path against the real server: atomicity, verification, pagination.

use coffer_domain::{Amount, Bucket, LedgerTransaction, Movement, Posting, StateChange, TxKind, TxState};
use coffer_store::{Role, StoreError};
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

fn adjustment(ledger: LedgerTransaction, amount: Amount, participants: Vec<String>) -> Movement {
    Movement {
        transaction_id: coffer_store::new_id(),
        ledger,
        ledger_key: format!("test:{}", uuid::Uuid::new_v4()),
        state: TxState::Confirmed,
        timeline: vec![StateChange::initial(
            TxState::Confirmed,
            chrono::Utc::now(),
            "test",
        )],
        amount,
        decimals: 18,
        initiated_by: "test".into(),
        from_wallet_id: None,
        to_wallet_id: None,
        external_reference: None,
        destination: None,
        original_transaction_id: None,
        participants,
        limits: Vec::new(),
        events: Vec::new(),
    }
}

async fn counts(app: &TestApp) -> (u64, u64, u64) {
    (
        app.count("ledger_entries").await,
        app.count("outbox").await,
        app.count("transactions").await,
    )
}

#[tokio::test]
async fn a_movement_that_fails_midway_leaves_nothing_behind() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "3").await;
    let before = counts(&app).await;

    // The wallet's debit applies first (its id sorts before "zz-…"), then the credit to an
    // account that does not exist fails: the whole transaction must roll back.
    let amount = Amount::parse_decimal("1", 18).unwrap();
    let ledger = LedgerTransaction::new(
        TxKind::Adjustment,
        "ETH",
        vec![
            Posting::debit(wallet.clone(), Bucket::Available, amount),
            Posting::credit("zz-missing", Bucket::Available, amount),
        ],
    )
    .unwrap();
    let result = app
        .store
        .apply_movement(adjustment(ledger, amount, vec![alice.id.clone()]))
        .await;
    assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");

    assert_eq!(
        counts(&app).await,
        before,
        "no ledger entry, no outbox row, no transaction record"
    );
    assert_eq!(
        app.wallet(&alice, &wallet).await["available"],
        "3",
        "no balance change"
    );
    app.assert_books_balance().await;
}

#[tokio::test]
async fn a_committed_movement_writes_its_entries_record_and_outbox_events_together() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "USDT").await;
    let to = app.create_wallet(&bob, "USDT").await;
    app.deposit(&payment, &from, "10").await;
    let outbox_before = app.count("outbox").await;
    let reply = app
        .post(
            "/v1/transfers",
            &alice.access_token,
            json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "2.5" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    // Two wallets touched: a transaction event and a balance event for each.
    assert_eq!(app.count("outbox").await - outbox_before, 4);
    let events = app
        .store
        .database()
        .collection::<coffer_store::OutboxDoc>("outbox")
        .find_one(
            coffer_store::mongodb::bson::doc! { "subject": &to, "event_type": "wallet.balance.updated" },
        )
        .await
        .unwrap()
        .expect("bob's balance event");
    assert_eq!(events.user_id, bob.id);
    assert_eq!(events.data["available"].as_str().unwrap(), "2.5");
    assert_eq!(events.data_version, 1);
}

#[tokio::test]
async fn ledger_verify_reports_a_corrupted_cached_balance() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "1").await;
    app.assert_books_balance().await;
    let tampered = coffer_store::codec::to_decimal(&Amount::from_u64(7), false);
    app.store
        .database()
        .collection::<coffer_store::mongodb::bson::Document>("wallets")
        .update_one(
            coffer_store::mongodb::bson::doc! { "_id": &wallet },
            coffer_store::mongodb::bson::doc! { "$set": { "available": tampered } },
        )
        .await
        .unwrap();
    let report = app.store.verify_ledger().await.unwrap();
    assert_eq!(
        report.findings,
        vec![coffer_store::verify::Finding::BalanceMismatch {
            account_id: wallet.clone(),
            bucket: "available".into(),
            cached: "7".into(),
            ledger: "1000000000000000000".into(),
        }]
    );
}

#[tokio::test]
async fn the_ledger_pages_newest_first_with_a_cursor() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "USDT").await;
    for amount in ["1", "2", "3", "4", "5"] {
        app.deposit(&payment, &wallet, amount).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/wallets/{wallet}/ledger?limit=2&cursor={c}"),
            None => format!("/v1/wallets/{wallet}/ledger?limit=2"),
        };
        let page = app.get(&path, &alice.access_token).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["amount"].as_str().unwrap().to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, vec!["5", "4", "3", "2", "1"]);
    let bad = app
        .get(
            &format!("/v1/wallets/{wallet}/ledger?limit=abc"),
            &alice.access_token,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.code(), "invalid_query");
}

#[tokio::test]
async fn a_failed_withdrawal_releases_its_hold_exactly_once() {
    use coffer_store::transitions::Transition;
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "2").await;
    let reply = app
        .withdraw(&alice, json!({ "wallet_id": wallet, "amount": "1.5", "destination_address": format!("0x{}", "cd".repeat(20)) }))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let tx_id = reply.body["id"].as_str().unwrap();

    let amount = Amount::parse_decimal("1.5", 18).unwrap();
    let hold = LedgerTransaction::withdrawal_hold("ETH", &wallet, amount).unwrap();
    let release = Transition::new(
        tx_id,
        TxState::PendingBroadcast,
        TxState::Failed,
        "broadcast refused by the node",
    )
    .with_ledger(LedgerTransaction::reversal_of(&hold));
    let failed = app.store.apply_transition(&release).await.unwrap();
    assert_eq!(failed.state, TxState::Failed);
    let again = app.store.apply_transition(&release).await;
    assert!(matches!(again, Err(StoreError::StateConflict)), "{again:?}");

    let balances = app.wallet(&alice, &wallet).await;
    assert_eq!(
        (balances["available"].as_str(), balances["held"].as_str()),
        (Some("2"), Some("0"))
    );
    let seen = app
        .get(&format!("/v1/transactions/{tx_id}"), &alice.access_token)
        .await;
    let states: Vec<&str> = seen.body["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["to"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["created", "pending_broadcast", "failed"]);
    assert_eq!(
        seen.body["ledger_entries"].as_array().unwrap().len(),
        4,
        "hold and release, two entries each"
    );
    let updated = app
        .store
        .database()
        .collection::<coffer_store::OutboxDoc>("outbox")
        .count_documents(coffer_store::mongodb::bson::doc! { "event_type": "wallet.transaction.updated", "subject": &wallet })
        .await
        .unwrap();
    assert_eq!(updated, 1);
    app.assert_books_balance().await;
}
