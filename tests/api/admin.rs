//! Support and admin: maker-checker adjustments, the manual review queue, support views, and
//! every role boundary (403 and nothing changes).

use coffer_domain::TxState;
use coffer_store::audit::AuditRecord;
use coffer_store::mongodb::bson::doc;
use coffer_store::transitions::Transition;
use coffer_store::Role;
use coffer_test_support::{TestApp, TestUser};
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) async fn actions(app: &TestApp) -> Vec<String> {
    let records: Vec<AuditRecord> = app
        .store
        .database()
        .collection::<AuditRecord>("audit_records")
        .find(doc! {})
        .sort(doc! { "shard": 1, "seq": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    records.into_iter().map(|r| r.action).collect()
}

fn reason() -> Value {
    json!({ "reason": "ticket 4711 checked" })
}

#[tokio::test]
async fn maker_checker_posts_an_adjustment_only_after_another_admin_approves() {
    let app = TestApp::spawn().await;
    let (finance, admin, other_admin) = (
        app.staff(Role::Finance).await,
        app.staff(Role::Admin).await,
        app.staff(Role::Admin).await,
    );
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;

    let proposal = app
        .post(
            "/v1/admin/adjustments",
            &finance.access_token,
            json!({ "wallet_id": wallet, "amount": "2.5", "reason": "missed deposit, ticket 4711" }),
        )
        .await;
    assert_eq!(proposal.status, StatusCode::CREATED, "{:?}", proposal.body);
    assert_eq!(proposal.body["status"], "proposed");
    assert_eq!(proposal.body["amount"], "2.5");
    let id = proposal.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.wallet(&alice, &wallet).await["available"],
        "0",
        "a proposal moves nothing"
    );

    let by_finance = app
        .post(
            &format!("/v1/admin/adjustments/{id}/approve"),
            &finance.access_token,
            reason(),
        )
        .await;
    assert_eq!(by_finance.status, StatusCode::FORBIDDEN);
    assert_eq!(by_finance.code(), "forbidden");

    let approved = app
        .post(
            &format!("/v1/admin/adjustments/{id}/approve"),
            &admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    assert_eq!(approved.body["adjustment"]["status"], "approved");
    assert_eq!(approved.body["adjustment"]["decided_by"], admin.id.as_str());
    assert_eq!(approved.body["transaction"]["kind"], "adjustment");
    assert_eq!(approved.body["transaction"]["state"], "confirmed");
    assert_eq!(app.wallet(&alice, &wallet).await["available"], "2.5");
    let suspense = app
        .store
        .wallet_by_id("platform:ETH:suspense")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        suspense.available.to_string(),
        "-2500000000000000000",
        "the other side is suspense"
    );

    let again = app
        .post(
            &format!("/v1/admin/adjustments/{id}/approve"),
            &other_admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "adjustment_not_proposed");
    assert_eq!(
        app.wallet(&alice, &wallet).await["available"],
        "2.5",
        "approved once, posted once"
    );

    // An admin's own proposal: self-approval refused, another admin approves the debit.
    let own = app
        .post(
            "/v1/admin/adjustments",
            &admin.access_token,
            json!({ "wallet_id": wallet, "amount": "-1", "reason": "fee refund reversed" }),
        )
        .await;
    let own_id = own.body["id"].as_str().unwrap().to_string();
    assert_eq!(own.body["amount"], "-1");
    let self_approved = app
        .post(
            &format!("/v1/admin/adjustments/{own_id}/approve"),
            &admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(self_approved.status, StatusCode::FORBIDDEN);
    assert_eq!(self_approved.code(), "self_approval");
    assert_eq!(app.wallet(&alice, &wallet).await["available"], "2.5");
    let checked = app
        .post(
            &format!("/v1/admin/adjustments/{own_id}/approve"),
            &other_admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(checked.status, StatusCode::OK, "{:?}", checked.body);
    assert_eq!(app.wallet(&alice, &wallet).await["available"], "1.5");

    // A debit beyond the balance is refused and stays proposed; a rejection moves nothing.
    let too_much = app
        .post(
            "/v1/admin/adjustments",
            &finance.access_token,
            json!({ "wallet_id": wallet, "amount": "-100", "reason": "typo" }),
        )
        .await;
    let too_much_id = too_much.body["id"].as_str().unwrap().to_string();
    let refused = app
        .post(
            &format!("/v1/admin/adjustments/{too_much_id}/approve"),
            &admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.code(), "insufficient_funds");
    let rejected = app
        .post(
            &format!("/v1/admin/adjustments/{too_much_id}/reject"),
            &admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK);
    assert_eq!(rejected.body["status"], "rejected");
    let late = app
        .post(
            &format!("/v1/admin/adjustments/{too_much_id}/approve"),
            &other_admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(late.code(), "adjustment_not_proposed");
    assert_eq!(app.wallet(&alice, &wallet).await["available"], "1.5");

    let proposed = app
        .get("/v1/admin/adjustments?status=approved", &finance.access_token)
        .await;
    assert_eq!(proposed.body.as_array().unwrap().len(), 2);
    app.assert_books_balance().await;
    let trail = actions(&app).await;
    let count = |a: &str| trail.iter().filter(|t| t.as_str() == a).count();
    assert_eq!(count("adjustment.proposed"), 3);
    assert_eq!(count("adjustment.approved"), 2);
    assert_eq!(count("adjustment.rejected"), 1);
    assert!(app.store.verify_audit(None).await.unwrap().valid());
}

/// A withdrawal of `amount` from `wallet` (below the review threshold), moved to manual review
/// by hand, as the broadcaster does when the hot wallet's nonce was taken.
pub(crate) async fn withdrawal_in_review(
    app: &TestApp,
    user: &TestUser,
    wallet: &str,
    amount: &str,
) -> String {
    let destination = format!("0x{}", "cd".repeat(20));
    let reply = app
        .withdraw(
            user,
            json!({ "wallet_id": wallet, "amount": amount, "destination_address": destination }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    let to_review = Transition::new(
        &id,
        TxState::PendingBroadcast,
        TxState::ManualReview,
        "above the review threshold",
    );
    app.store.apply_transition(&to_review).await.unwrap();
    id
}

#[tokio::test]
async fn a_rejected_review_releases_the_hold_and_an_approved_one_goes_to_broadcast() {
    let app = TestApp::spawn().await;
    let (payment, support, admin) = (
        app.staff(Role::Payment).await,
        app.staff(Role::Support).await,
        app.staff(Role::Admin).await,
    );
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    let rejected_id = withdrawal_in_review(&app, &alice, &wallet, "2").await;
    let approved_id = withdrawal_in_review(&app, &alice, &wallet, "1").await;
    let held = app.wallet(&alice, &wallet).await;
    assert_eq!(
        (held["available"].as_str(), held["held"].as_str()),
        (Some("2"), Some("3"))
    );

    let queue = app.get("/v1/admin/reviews", &support.access_token).await;
    let ids: Vec<&str> = queue
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![rejected_id.as_str(), approved_id.as_str()],
        "oldest first"
    );

    let missing_reason = app
        .post(
            &format!("/v1/admin/reviews/{rejected_id}/reject"),
            &admin.access_token,
            json!({ "reason": " " }),
        )
        .await;
    assert_eq!(missing_reason.code(), "invalid_reason");
    let rejected = app
        .post(
            &format!("/v1/admin/reviews/{rejected_id}/reject"),
            &admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{:?}", rejected.body);
    assert_eq!(rejected.body["state"], "failed");
    let approved = app
        .post(
            &format!("/v1/admin/reviews/{approved_id}/approve"),
            &admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    assert_eq!(approved.body["state"], "pending_broadcast");
    let after = app.wallet(&alice, &wallet).await;
    assert_eq!(
        (after["available"].as_str(), after["held"].as_str()),
        (Some("4"), Some("1")),
        "2 released, 1 still held"
    );

    let twice = app
        .post(
            &format!("/v1/admin/reviews/{rejected_id}/reject"),
            &admin.access_token,
            reason(),
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert_eq!(twice.code(), "state_conflict");
    assert_eq!(
        app.wallet(&alice, &wallet).await["available"],
        "4",
        "released once"
    );
    assert!(app
        .get("/v1/admin/reviews", &support.access_token)
        .await
        .body
        .as_array()
        .unwrap()
        .is_empty());

    // Support sees the whole story: every state change, every entry, the decision, the last event.
    let story = app
        .get(
            &format!("/v1/admin/transactions/{rejected_id}"),
            &support.access_token,
        )
        .await;
    assert_eq!(story.status, StatusCode::OK, "{:?}", story.body);
    let states: Vec<&str> = story.body["transaction"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        vec!["created", "pending_broadcast", "manual_review", "failed"]
    );
    let mut amounts: Vec<(&str, &str)> = story.body["transaction"]["ledger_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["bucket"].as_str().unwrap(), e["amount"].as_str().unwrap()))
        .collect();
    amounts.sort();
    assert_eq!(
        amounts,
        vec![
            ("available", "-2"),
            ("available", "2"),
            ("held", "-2"),
            ("held", "2")
        ],
        "hold and release"
    );
    assert_eq!(story.body["details"]["review"]["decision"], "rejected");
    assert_eq!(story.body["details"]["review"]["by"], admin.id.as_str());
    assert_eq!(
        story.body["details"]["destination"],
        Value::Null,
        "shown fields are not repeated"
    );
    assert_eq!(
        story.body["last_event"]["data"]["transaction_id"],
        rejected_id.as_str()
    );
    assert_eq!(story.body["last_event"]["published_at"], Value::Null);

    // The user sees the generic cause, never the reviewer's reason.
    let own = app
        .get(&format!("/v1/transactions/{rejected_id}"), &alice.access_token)
        .await;
    assert!(!own.body.to_string().contains("ticket 4711"));
    let wallets = app
        .get(
            &format!("/v1/admin/users/{}/wallets", alice.id),
            &support.access_token,
        )
        .await;
    assert_eq!(wallets.status, StatusCode::OK);
    assert_eq!(wallets.body["wallets"][0]["id"], wallet.as_str());
    assert_eq!(wallets.body["wallets"][0]["available"], "4");

    app.assert_books_balance().await;
    let trail = actions(&app).await;
    for action in [
        "review.rejected",
        "review.approved",
        "admin.transaction_viewed",
        "admin.user_wallets_viewed",
    ] {
        assert!(trail.iter().any(|a| a == action), "{action} audited: {trail:?}");
    }
}

/// What the database holds that an admin action could change.
async fn snapshot(app: &TestApp) -> Vec<u64> {
    let mut counts = Vec::new();
    for collection in [
        "adjustments",
        "ledger_entries",
        "transactions",
        "reconciliation_runs",
        "outbox",
        "audit_records",
    ] {
        counts.push(app.count(collection).await);
    }
    let states = app
        .store
        .database()
        .collection::<coffer_store::mongodb::bson::Document>("transactions");
    counts.push(
        states
            .count_documents(doc! { "state": "manual_review" })
            .await
            .unwrap(),
    );
    counts
}

#[tokio::test]
async fn each_role_is_refused_what_it_may_not_do_and_nothing_changes() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    let review_id = withdrawal_in_review(&app, &alice, &wallet, "1").await;
    let finance = app.staff(Role::Finance).await;
    let proposal = app
        .post(
            "/v1/admin/adjustments",
            &finance.access_token,
            json!({ "wallet_id": wallet, "amount": "1", "reason": "r" }),
        )
        .await;
    let adjustment_id = proposal.body["id"].as_str().unwrap().to_string();
    let run = app
        .post(
            "/v1/admin/reconciliations",
            &app.staff(Role::Engineering).await.access_token,
            json!({}),
        )
        .await;
    let run_id = run.body["id"].as_str().unwrap().to_string();

    let propose = json!({ "wallet_id": wallet, "amount": "1", "reason": "r" });
    let user_path = format!("/v1/admin/users/{}/wallets", alice.id);
    let story_path = format!("/v1/admin/transactions/{review_id}");
    let requests: Vec<(&str, String, Option<Value>, Vec<Role>)> = vec![
        (
            "GET",
            user_path,
            None,
            vec![Role::Engineering, Role::Payment, Role::User],
        ),
        (
            "GET",
            story_path,
            None,
            vec![Role::Engineering, Role::Payment, Role::User],
        ),
        (
            "POST",
            "/v1/admin/adjustments".into(),
            Some(propose),
            vec![Role::Support, Role::Engineering, Role::Payment, Role::User],
        ),
        (
            "GET",
            "/v1/admin/adjustments".into(),
            None,
            vec![Role::Support, Role::Engineering, Role::Payment, Role::User],
        ),
        (
            "POST",
            format!("/v1/admin/adjustments/{adjustment_id}/approve"),
            Some(reason()),
            vec![
                Role::Support,
                Role::Finance,
                Role::Engineering,
                Role::Payment,
                Role::User,
            ],
        ),
        (
            "POST",
            format!("/v1/admin/adjustments/{adjustment_id}/reject"),
            Some(reason()),
            vec![
                Role::Support,
                Role::Finance,
                Role::Engineering,
                Role::Payment,
                Role::User,
            ],
        ),
        (
            "GET",
            "/v1/admin/reviews".into(),
            None,
            vec![Role::Finance, Role::Engineering, Role::Payment, Role::User],
        ),
        (
            "POST",
            format!("/v1/admin/reviews/{review_id}/approve"),
            Some(reason()),
            vec![
                Role::Support,
                Role::Finance,
                Role::Engineering,
                Role::Payment,
                Role::User,
            ],
        ),
        (
            "POST",
            format!("/v1/admin/reviews/{review_id}/reject"),
            Some(reason()),
            vec![
                Role::Support,
                Role::Finance,
                Role::Engineering,
                Role::Payment,
                Role::User,
            ],
        ),
        (
            "POST",
            "/v1/admin/reconciliations".into(),
            Some(json!({})),
            vec![Role::Support, Role::Finance, Role::Payment, Role::User],
        ),
        (
            "GET",
            "/v1/admin/reconciliations".into(),
            None,
            vec![Role::Support, Role::Finance, Role::Payment, Role::User],
        ),
        (
            "GET",
            format!("/v1/admin/reconciliations/{run_id}"),
            None,
            vec![Role::Support, Role::Finance, Role::Payment, Role::User],
        ),
        (
            "GET",
            "/v1/admin/audit/verify".into(),
            None,
            vec![Role::Support, Role::Finance, Role::Payment, Role::User],
        ),
    ];
    let mut callers = Vec::new();
    for role in [Role::Support, Role::Finance, Role::Engineering, Role::Payment] {
        callers.push((role, app.staff(role).await));
    }
    callers.push((Role::User, alice.clone()));
    let before = snapshot(&app).await;
    let balance_before = app.wallet(&alice, &wallet).await;
    for (method, path, body, refused) in &requests {
        for role in refused {
            let caller = &callers.iter().find(|(r, _)| r == role).unwrap().1;
            let key = uuid::Uuid::new_v4().to_string();
            let reply = app
                .send(
                    method,
                    path,
                    Some(&caller.access_token),
                    Some(&key),
                    body.as_ref(),
                )
                .await;
            assert_eq!(
                reply.status,
                StatusCode::FORBIDDEN,
                "{} {method} {path}: {:?}",
                role.as_str(),
                reply.body
            );
            assert_eq!(reply.code(), "forbidden");
        }
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "no refused request changed anything (nor was audited as done)"
    );
    assert_eq!(app.wallet(&alice, &wallet).await, balance_before);
    let adjustment = app.store.adjustment(&adjustment_id).await.unwrap().unwrap();
    assert_eq!(adjustment.status.as_str(), "proposed");
    assert_eq!(
        app.store
            .transaction_by_id(&review_id)
            .await
            .unwrap()
            .unwrap()
            .state,
        TxState::ManualReview
    );
    let anonymous = app.send("GET", "/v1/admin/reviews", None, None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}
