//! Two people for large decisions (issue 13 item 6): above an asset's `two_person_review_above`
//! a review approval, and above its `two_person_adjustment_above` an adjustment approval, needs
//! two different admins: the first is recorded (audited) and nothing moves; the same admin
//! cannot give the second; the proposer of an adjustment never approves it; nobody approves a
//! movement into or out of an account they own.

use coffer_domain::asset::AssetsFile;
use coffer_domain::{AssetCatalog, TxState};
use coffer_store::mongodb::bson::doc;
use coffer_store::transitions::Transition;
use coffer_store::Role;
use coffer_test_support::{Options, Reply, TestApp, TestUser, DEV_ASSETS};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// ETH with two approvers above 1 ETH for reviews and adjustments.
fn options() -> Options {
    let mut file: AssetsFile = serde_json::from_str(DEV_ASSETS).unwrap();
    let eth = file.assets.iter_mut().find(|a| a.symbol == "ETH").unwrap();
    eth.two_person_review_above = Some("1".into());
    eth.two_person_adjustment_above = Some("1".into());
    Options {
        assets: Some(AssetCatalog::from_specs(&file.assets).unwrap()),
        ..Options::default()
    }
}

fn reason() -> Value {
    json!({ "reason": "checked with the customer, ticket 4711" })
}

async fn audited(app: &TestApp, action: &str) -> u64 {
    app.count_where("audit_records", doc! { "action": action }).await
}

async fn balances(app: &TestApp, user: &TestUser, wallet: &str) -> (String, String) {
    let w = app.wallet(user, wallet).await;
    (
        w["available"].as_str().unwrap().to_string(),
        w["held"].as_str().unwrap().to_string(),
    )
}

/// A withdrawal of `amount` moved to manual review by hand (as the broadcaster does).
async fn withdrawal_in_review(app: &TestApp, user: &TestUser, wallet: &str, amount: &str) -> String {
    let destination = format!("0x{}", "cd".repeat(20));
    let body = json!({ "wallet_id": wallet, "amount": amount, "destination_address": destination });
    let reply = app.withdraw(user, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    let to_review = Transition::new(&id, TxState::PendingBroadcast, TxState::ManualReview, "review");
    app.store.apply_transition(&to_review).await.unwrap();
    id
}

async fn approve_review(app: &TestApp, admin: &TestUser, id: &str) -> Reply {
    let path = format!("/v1/admin/reviews/{id}/approve");
    app.post(&path, &admin.access_token, reason()).await
}

#[tokio::test]
async fn a_large_review_approval_needs_two_different_admins() {
    let app = TestApp::spawn_with(options()).await;
    let (payment, first, second) = (
        app.staff(Role::Payment).await,
        app.staff(Role::Admin).await,
        app.staff(Role::Admin).await,
    );
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    let large = withdrawal_in_review(&app, &alice, &wallet, "2").await;

    let recorded = approve_review(&app, &first, &large).await;
    assert_eq!(recorded.status, StatusCode::ACCEPTED, "{:?}", recorded.body);
    assert_eq!(
        recorded.body["state"], "manual_review",
        "one approval moves nothing"
    );
    let twice = approve_review(&app, &first, &large).await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::FORBIDDEN, "same_approver")
    );
    let tx = app.store.transaction_by_id(&large).await.unwrap().unwrap();
    assert_eq!((tx.state, tx.review_approvals.len()), (TxState::ManualReview, 1));
    assert_eq!(tx.review_approvals[0].by, first.id);

    let executed = approve_review(&app, &second, &large).await;
    assert_eq!(executed.status, StatusCode::OK, "{:?}", executed.body);
    assert_eq!(executed.body["state"], "pending_broadcast");
    assert_eq!(balances(&app, &alice, &wallet).await, ("3".into(), "2".into()));
    assert_eq!(audited(&app, "review.approval_recorded").await, 1);
    assert_eq!(audited(&app, "review.approved").await, 1);

    // At the threshold one admin decides; a rejection by one admin is always enough.
    let small = withdrawal_in_review(&app, &alice, &wallet, "1").await;
    let one = approve_review(&app, &first, &small).await;
    assert_eq!(
        (one.status, &one.body["state"]),
        (StatusCode::OK, &json!("pending_broadcast"))
    );
    let rejected = withdrawal_in_review(&app, &alice, &wallet, "1.5").await;
    let path = format!("/v1/admin/reviews/{rejected}/reject");
    let reply = app.post(&path, &first.access_token, reason()).await;
    assert_eq!(
        (reply.status, &reply.body["state"]),
        (StatusCode::OK, &json!("failed"))
    );
    assert_eq!(balances(&app, &alice, &wallet).await, ("2".into(), "3".into()));
    app.assert_books_balance().await;
}

#[tokio::test]
async fn a_large_adjustment_needs_two_admins_and_never_its_proposer() {
    let app = TestApp::spawn_with(options()).await;
    let (proposer, first, second) = (
        app.staff(Role::Admin).await,
        app.staff(Role::Admin).await,
        app.staff(Role::Admin).await,
    );
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    let body = json!({ "wallet_id": wallet, "amount": "2.5", "reason": "missed deposit" });
    let proposal = app
        .post("/v1/admin/adjustments", &proposer.access_token, body)
        .await;
    let id = proposal.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/admin/adjustments/{id}/approve");

    let recorded = app.post(&path, &first.access_token, reason()).await;
    assert_eq!(recorded.status, StatusCode::ACCEPTED, "{:?}", recorded.body);
    assert_eq!(recorded.body["adjustment"]["status"], "proposed");
    assert_eq!(
        recorded.body["adjustment"]["approvals"][0]["by"],
        first.id.as_str()
    );
    assert_eq!(recorded.body["transaction"], Value::Null);
    assert_eq!(balances(&app, &alice, &wallet).await.0, "0");
    let twice = app.post(&path, &first.access_token, reason()).await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::FORBIDDEN, "same_approver")
    );
    let by_proposer = app.post(&path, &proposer.access_token, reason()).await;
    assert_eq!(
        (by_proposer.status, by_proposer.code()),
        (StatusCode::FORBIDDEN, "self_approval"),
        "a first approval by someone else does not let the proposer give the second"
    );
    assert_eq!(balances(&app, &alice, &wallet).await.0, "0");

    let posted = app.post(&path, &second.access_token, reason()).await;
    assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.body);
    assert_eq!(posted.body["adjustment"]["status"], "approved");
    assert_eq!(posted.body["adjustment"]["decided_by"], second.id.as_str());
    assert_eq!(posted.body["transaction"]["kind"], "adjustment");
    assert_eq!(balances(&app, &alice, &wallet).await.0, "2.5");
    assert_eq!(audited(&app, "adjustment.approval_recorded").await, 1);
    assert_eq!(audited(&app, "adjustment.approved").await, 1);
    let again = app.post(&path, &first.access_token, reason()).await;
    assert_eq!(again.code(), "adjustment_not_proposed");
    assert_eq!(balances(&app, &alice, &wallet).await.0, "2.5", "posted once");
    app.assert_books_balance().await;
}

#[tokio::test]
async fn nobody_approves_a_movement_into_or_out_of_their_own_account() {
    let app = TestApp::spawn_with(options()).await;
    let (payment, finance, owner, other) = (
        app.staff(Role::Payment).await,
        app.staff(Role::Finance).await,
        app.staff(Role::Admin).await,
        app.staff(Role::Admin).await,
    );
    // A staff wallet that predates the rule that staff hold none, written straight to the store.
    let (own, _) = app.store.create_wallet(&owner.id, "ETH", 18).await.unwrap();
    let body = json!({ "wallet_id": own.id, "amount": "0.5", "reason": "goodwill" });
    let proposal = app
        .post("/v1/admin/adjustments", &finance.access_token, body)
        .await;
    let id = proposal.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/admin/adjustments/{id}/approve");
    let by_owner = app.post(&path, &owner.access_token, reason()).await;
    assert_eq!(
        (by_owner.status, by_owner.code()),
        (StatusCode::FORBIDDEN, "own_account")
    );
    let wallet = app.store.wallet_by_id(&own.id).await.unwrap().unwrap();
    assert_eq!(wallet.available.to_string(), "0");
    let by_other = app.post(&path, &other.access_token, reason()).await;
    assert_eq!(by_other.status, StatusCode::OK, "{:?}", by_other.body);

    // A transfer held for review into the owner's wallet: its owner cannot release it.
    let alice = app.register().await;
    let alice_wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &alice_wallet, "3").await;
    let transfer = coffer_domain::plan::plan_transfer_review(
        coffer_domain::Origin {
            transaction_id: coffer_store::new_id(),
            now: chrono::Utc::now(),
            initiated_by: alice.id.clone(),
        },
        "held-transfer",
        &app.store
            .wallet_by_id(&alice_wallet)
            .await
            .unwrap()
            .unwrap()
            .as_ref(),
        &own.as_ref(),
        coffer_domain::Amount::parse_decimal("0.5", 18).unwrap(),
        app.catalog.current().get("ETH").unwrap(),
    )
    .unwrap();
    let held = app.store.apply_movement(transfer).await.unwrap();
    let review = format!("/v1/admin/reviews/{}/approve", held.id);
    let by_owner = app.post(&review, &owner.access_token, reason()).await;
    assert_eq!(
        (by_owner.status, by_owner.code()),
        (StatusCode::FORBIDDEN, "own_account")
    );
    let tx = app.store.transaction_by_id(&held.id).await.unwrap().unwrap();
    assert_eq!(tx.state, TxState::ManualReview);
    let by_other = app.post(&review, &other.access_token, reason()).await;
    assert_eq!(
        (by_other.status, &by_other.body["state"]),
        (StatusCode::OK, &json!("confirmed"))
    );
    app.assert_books_balance().await;
}
