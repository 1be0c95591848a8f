//! The audit log's hash chain: verification names the first edited, deleted or inserted record.

use coffer_store::audit::AuditRecord;
use coffer_store::mongodb::bson::{doc, Document};
use coffer_store::Role;
use coffer_test_support::TestApp;
use futures::TryStreamExt;
use reqwest::StatusCode;

async fn records(app: &TestApp) -> Vec<AuditRecord> {
    app.store
        .database()
        .collection::<AuditRecord>("audit_log")
        .find(doc! {})
        .sort(doc! { "seq": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_edited_record_and_a_deleted_record_are_named_where_the_chain_breaks() {
    let app = TestApp::spawn().await;
    let engineer = app.staff(Role::Engineering).await;
    for i in 0..6 {
        app.store
            .audit(
                "tester",
                "test.action",
                &format!("subject-{i}"),
                serde_json::json!({ "n": i }),
            )
            .await
            .unwrap();
    }
    let intact = app.get("/v1/admin/audit/verify", &engineer.access_token).await;
    assert_eq!(intact.status, StatusCode::OK);
    assert_eq!(intact.body["valid"], true, "{:#}", intact.body);
    assert_eq!(intact.body["records_checked"], 6);
    assert_eq!(intact.body["head_seq"], 6);
    assert_eq!(app.metric("coffer_audit_chain_valid"), 1.0);

    let log = app.store.database().collection::<Document>("audit_log");
    let before = records(&app).await;
    // Edited: someone rewrites who the record is about.
    log.update_one(
        doc! { "seq": 3i64 },
        doc! { "$set": { "subject": "someone-else" } },
    )
    .await
    .unwrap();
    let edited = app.get("/v1/admin/audit/verify", &engineer.access_token).await;
    assert_eq!(edited.body["valid"], false);
    assert_eq!(edited.body["first_break"]["seq"], 3);
    assert_eq!(edited.body["first_break"]["id"], before[2].id.as_str());
    assert_eq!(edited.body["first_break"]["kind"], "edited");
    assert_eq!(edited.body["records_checked"], 3, "the walk stops at the break");
    assert_eq!(app.metric("coffer_audit_chain_valid"), 0.0);

    // Put it back: intact again. Then delete record 5: the break is named at record 6.
    log.update_one(doc! { "seq": 3i64 }, doc! { "$set": { "subject": "subject-2" } })
        .await
        .unwrap();
    let restored = app.get("/v1/admin/audit/verify", &engineer.access_token).await;
    assert_eq!(restored.body["valid"], true);
    log.delete_one(doc! { "seq": 5i64 }).await.unwrap();
    let deleted = app.get("/v1/admin/audit/verify", &engineer.access_token).await;
    assert_eq!(deleted.body["valid"], false);
    assert_eq!(deleted.body["first_break"]["seq"], 6);
    assert_eq!(deleted.body["first_break"]["id"], before[5].id.as_str());
    assert_eq!(deleted.body["first_break"]["kind"], "deleted");
    assert!(deleted.body["first_break"]["detail"]
        .as_str()
        .unwrap()
        .contains("seq 5"));

    // An inserted record that claims seq 5 with its own valid hash still does not link.
    let mut forged = before[4].clone();
    forged.id = "forged".into();
    forged.prev_hash = "f".repeat(64);
    forged.hash = coffer_store::audit::record_hash(&forged);
    app.store
        .database()
        .collection::<AuditRecord>("audit_log")
        .insert_one(&forged)
        .await
        .unwrap();
    let inserted = app.get("/v1/admin/audit/verify", &engineer.access_token).await;
    assert_eq!(inserted.body["first_break"]["id"], "forged");
    assert_eq!(inserted.body["first_break"]["kind"], "inserted");

    // The reconciler reports the break as a finding too.
    let run = app
        .post(
            "/v1/admin/reconciliations",
            &engineer.access_token,
            serde_json::json!({}),
        )
        .await;
    let chain = run.body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "audit_chain")
        .cloned();
    assert_eq!(chain.unwrap()["subject"], "forged");
}

#[tokio::test]
async fn concurrent_appends_keep_one_unbroken_chain() {
    let app = TestApp::spawn().await;
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let store = app.store.clone();
            tokio::spawn(async move {
                store
                    .audit(
                        "tester",
                        "test.concurrent",
                        &format!("s{i}"),
                        serde_json::json!({}),
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let report = app.store.verify_audit().await.unwrap();
    assert!(report.valid(), "{:?}", report.first_break);
    assert_eq!(report.records_checked, 24);
    assert_eq!(report.head_seq, Some(24));
    let seqs: Vec<i64> = records(&app).await.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=24).collect::<Vec<_>>());
}
