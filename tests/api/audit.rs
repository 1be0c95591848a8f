//! The audit log: sharded MAC chains written in the action's own transaction, verified against
//! the exported heads (S5, issue 14 item 3).

use coffer_store::audit::{AuditRecord, SHARDS};
use coffer_store::audit_chain::{BreakKind, ExportedHeads};
use coffer_store::mongodb::bson::{doc, Document};
use coffer_store::Role;
use coffer_test_support::{Options, TestApp, TestUser};
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde_json::json;
use sha2::Digest;

const RECORDS: &str = "audit_records";

async fn records(app: &TestApp) -> Vec<AuditRecord> {
    app.store
        .database()
        .collection::<AuditRecord>(RECORDS)
        .find(doc! {})
        .sort(doc! { "shard": 1, "seq": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// The heads as the reconciler exports them (one MACed line), parsed back.
async fn export(app: &TestApp) -> ExportedHeads {
    let line = app.store.audit_heads_line().await.unwrap();
    let text = serde_json::to_string(&line).unwrap();
    app.store.parse_heads_export(&text).unwrap()
}

/// A user with a funded USDT wallet and another user's USDT wallet: `(user, from, to)`.
async fn funded(app: &TestApp, payment: &TestUser) -> (TestUser, String, String) {
    let user = app.register().await;
    let from = app.create_wallet(&user, "USDT").await;
    app.deposit(payment, &from, "100").await;
    let other = app.register().await;
    let other_wallet = app.create_wallet(&other, "USDT").await;
    (user, from, other_wallet)
}

async fn transfer(
    app: &TestApp,
    user: &TestUser,
    from: &str,
    to: &str,
    key: &str,
) -> coffer_test_support::Reply {
    let body = json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" });
    app.send(
        "POST",
        "/v1/transfers",
        Some(&user.access_token),
        Some(key),
        Some(&body),
    )
    .await
}

#[tokio::test]
async fn an_honest_flow_verifies_against_its_export_and_a_rewrite_without_the_key_is_named() {
    let app = TestApp::spawn().await;
    let engineer = app.staff(Role::Engineering).await;
    let payment = app.staff(Role::Payment).await;
    let (user, from, to) = funded(&app, &payment).await;
    for i in 0..5 {
        let reply = transfer(&app, &user, &from, &to, &format!("k-{i}")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
    let transfers = app
        .count_where(RECORDS, doc! { "action": "movement.transfer", "actor": &user.id })
        .await;
    assert_eq!(transfers, 5, "every transfer is audited in its own transaction");
    let exported = export(&app).await;
    let report = app.store.verify_audit(Some(&exported)).await.unwrap();
    assert!(report.valid(), "{:?}", report.first_break);
    assert_eq!(report.shards.len(), SHARDS as usize);
    let intact = app.get("/v1/admin/audit/verify", &engineer.access_token).await;
    assert_eq!(intact.body["valid"], true, "{:#}", intact.body);
    assert_eq!(intact.body["shards"].as_array().unwrap().len(), SHARDS as usize);

    // Rewritten: someone changes who a transfer was by and "recomputes" its hash without the key.
    let victim = records(&app)
        .await
        .into_iter()
        .find(|r| r.action == "movement.transfer")
        .unwrap();
    let mut forged = victim.clone();
    forged.actor = "someone-else".into();
    forged.mac = hex::encode(sha2::Sha256::digest(coffer_store::audit::canonical_bytes(
        &forged,
    )));
    let log = app.store.database().collection::<Document>(RECORDS);
    log.update_one(
        doc! { "_id": &victim.id },
        doc! { "$set": { "actor": &forged.actor, "mac": &forged.mac } },
    )
    .await
    .unwrap();
    let edited = app.get("/v1/admin/audit/verify", &engineer.access_token).await;
    assert_eq!(edited.body["valid"], false);
    assert_eq!(edited.body["first_break"]["shard"], victim.shard);
    assert_eq!(edited.body["first_break"]["seq"], victim.seq);
    assert_eq!(edited.body["first_break"]["id"], victim.id.as_str());
    assert_eq!(edited.body["first_break"]["kind"], "edited");
    assert_eq!(app.metric("coffer_audit_chain_valid"), 0.0);

    // The reconciler reports it as a finding naming shard and seq.
    let run = app
        .post("/v1/admin/reconciliations", &engineer.access_token, json!({}))
        .await;
    let chain = run.body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "audit_chain")
        .cloned()
        .expect("an audit_chain finding");
    assert_eq!(chain["subject"], format!("{}:{}", victim.shard, victim.seq));
}

#[tokio::test]
async fn a_deleted_record_is_a_gap_and_a_consistent_cut_tail_is_caught_only_against_the_export() {
    let app = TestApp::spawn().await;
    for i in 0..(SHARDS * 4) {
        app.store
            .audit("tester", "test.action", &format!("s{i}"), json!({ "n": i }))
            .await
            .unwrap();
    }
    let exported = export(&app).await;
    let all = records(&app).await;
    let shard = all
        .iter()
        .find(|r| r.seq >= 3)
        .map(|r| r.shard)
        .expect("a shard with 3 records");
    let in_shard: Vec<&AuditRecord> = all.iter().filter(|r| r.shard == shard).collect();
    let log = app.store.database().collection::<Document>(RECORDS);
    let heads = app.store.database().collection::<Document>("audit_heads");

    // A deleted record in the middle: a gap named at the record after it.
    let middle = in_shard[1];
    log.delete_one(doc! { "_id": &middle.id }).await.unwrap();
    let gap = app.store.verify_audit(None).await.unwrap().first_break.unwrap();
    assert_eq!(
        (gap.shard, gap.seq, gap.kind),
        (shard, middle.seq + 1, BreakKind::Deleted)
    );
    app.store
        .database()
        .collection::<AuditRecord>(RECORDS)
        .insert_one(middle)
        .await
        .unwrap();
    assert!(app.store.verify_audit(Some(&exported)).await.unwrap().valid());

    // The tail cut and the head moved back with it: consistent, invisible to the chain alone.
    let last = in_shard.last().unwrap();
    let before_last = in_shard[in_shard.len() - 2];
    log.delete_one(doc! { "_id": &last.id }).await.unwrap();
    heads
        .update_one(
            doc! { "_id": shard },
            doc! { "$set": { "seq": before_last.seq, "mac": &before_last.mac } },
        )
        .await
        .unwrap();
    let alone = app.store.verify_audit(None).await.unwrap();
    assert!(
        alone.valid(),
        "a consistent cut is invisible without the export: {:?}",
        alone.first_break
    );
    let against = app.store.verify_audit(Some(&exported)).await.unwrap();
    let cut = against.first_break.expect("the export names the cut tail");
    assert_eq!(
        (cut.shard, cut.seq, cut.kind),
        (shard, last.seq, BreakKind::CutTail)
    );
}

/// What the refused actions would write: transactions, devices, sessions, adjustments, idempotency records.
async fn counts(app: &TestApp) -> [u64; 5] {
    let mut counts = [0; 5];
    for (count, collection) in counts.iter_mut().zip([
        "transactions",
        "devices",
        "sessions",
        "adjustments",
        "idempotency_keys",
    ]) {
        *count = app.count(collection).await;
    }
    counts
}

/// Plants a record at every shard's next seq: any audit write now hits the unique index.
async fn block_every_shard(app: &TestApp) {
    let planted: Vec<Document> = app
        .store
        .audit_heads()
        .await
        .unwrap()
        .iter()
        .map(|h| doc! { "_id": format!("planted-{}", h.shard), "shard": h.shard, "seq": h.seq + 1 })
        .collect();
    let log = app.store.database().collection::<Document>(RECORDS);
    log.insert_many(planted).await.unwrap();
}

async fn unblock(app: &TestApp) {
    let log = app.store.database().collection::<Document>(RECORDS);
    log.delete_many(doc! { "_id": { "$regex": "^planted-" } })
        .await
        .unwrap();
}

#[tokio::test]
async fn an_action_whose_audit_cannot_be_written_does_not_happen() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let finance = app.staff(Role::Finance).await;
    let (user, from, to) = funded(&app, &payment).await;
    let before = counts(&app).await;
    block_every_shard(&app).await;

    let refused = transfer(&app, &user, &from, &to, "blocked-transfer").await;
    assert!(refused.status.is_server_error(), "{:?}", refused.body);
    let device_key = coffer_test_support::TestDevice::new_key();
    let device =
        json!({ "name": "phone", "public_key": coffer_test_support::TestDevice::public_key_of(&device_key) });
    let registered = app.post("/v1/devices", &user.access_token, device).await;
    assert!(registered.status.is_server_error(), "{:?}", registered.body);
    let body = json!({ "email": user.email, "password": user.password });
    let login = app.send("POST", "/v1/auth/login", None, None, Some(&body)).await;
    assert!(login.status.is_server_error(), "{:?}", login.body);
    let proposal = json!({ "wallet_id": from, "amount": "5", "reason": "goodwill" });
    let proposed = app
        .post("/v1/admin/adjustments", &finance.access_token, proposal)
        .await;
    assert!(proposed.status.is_server_error(), "{:?}", proposed.body);
    assert_eq!(
        counts(&app).await,
        before,
        "nothing of the refused actions was written"
    );
    assert_eq!(app.wallet(&user, &from).await["available"], "100");

    // Once the audit can be written, the same request (same Idempotency-Key) is applied afresh:
    // the idempotency layer kept nothing that replays the failure.
    unblock(&app).await;
    let retried = transfer(&app, &user, &from, &to, "blocked-transfer").await;
    assert_eq!(retried.status, StatusCode::CREATED, "{:?}", retried.body);
    assert_eq!(app.wallet(&user, &from).await["available"], "99");
    assert!(app.store.verify_audit(None).await.unwrap().valid());
}

#[tokio::test]
async fn two_api_replicas_doing_concurrent_transfers_leave_every_shard_intact() {
    let first = TestApp::spawn().await;
    let database = first.store.database().name().to_string();
    let second = TestApp::spawn_with(Options {
        database: Some(database),
        ..Options::default()
    })
    .await;
    let payment = first.staff(Role::Payment).await;
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(funded(&first, &payment).await);
    }
    let first = std::sync::Arc::new(first);
    let second = std::sync::Arc::new(second);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .flat_map(|(n, (user, from, to))| {
            let user = std::sync::Arc::new(user);
            (0..6)
                .map({
                    let (first, second) = (first.clone(), second.clone());
                    move |i| {
                        let replica = if (n + i) % 2 == 0 {
                            first.clone()
                        } else {
                            second.clone()
                        };
                        let (user, from, to) = (user.clone(), from.clone(), to.clone());
                        tokio::spawn(async move {
                            transfer(&replica, &user, &from, &to, &format!("c-{n}-{i}"))
                                .await
                                .status
                        })
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    let transfers = first
        .count_where(RECORDS, doc! { "action": "movement.transfer" })
        .await;
    assert_eq!(transfers, 24);
    let report = first.store.verify_audit(None).await.unwrap();
    assert!(report.valid(), "{:?}", report.first_break);
    let used = report.shards.iter().filter(|s| s.head_seq > 0).count();
    assert!(used > 1, "the replicas wrote into several shards");
}
