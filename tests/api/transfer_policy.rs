//! Outgoing transfers under the money-out risk policy (issue 13 item 4): a recent login above a
//! threshold, a daily velocity shared by every replica, a cap for first-time recipients, and a
//! review hold above a threshold that a reviewer releases to the recipient or back.

use std::time::Duration;

use coffer_domain::asset::{AssetsFile, TransferSpec};
use coffer_domain::AssetCatalog;
use coffer_store::mongodb::bson::doc;
use coffer_store::Role;
use coffer_test_support::{Options, Reply, TestApp, TestUser, DEV_ASSETS};
use reqwest::StatusCode;
use serde_json::json;

/// The dev assets with ETH's transfer policy set.
fn catalog(transfer: TransferSpec) -> AssetCatalog {
    let mut file: AssetsFile = serde_json::from_str(DEV_ASSETS).unwrap();
    let eth = file.assets.iter_mut().find(|a| a.symbol == "ETH").unwrap();
    eth.transfer = Some(transfer);
    AssetCatalog::from_specs(&file.assets).unwrap()
}

fn options(transfer: TransferSpec) -> Options {
    Options {
        assets: Some(catalog(transfer)),
        ..Options::default()
    }
}

fn some(text: &str) -> Option<String> {
    Some(text.to_string())
}

/// Alice with 10 ETH; Bob's ETH wallet, which Alice has paid before unless `fresh_recipient`.
struct Scene {
    alice: TestUser,
    bob: TestUser,
    wallet: String,
    bob_wallet: String,
}

async fn scene(app: &TestApp) -> Scene {
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &wallet, "10").await;
    Scene {
        alice,
        bob,
        wallet,
        bob_wallet,
    }
}

impl Scene {
    async fn send(&self, app: &TestApp, token: &str, amount: &str) -> Reply {
        let body =
            json!({ "from_wallet_id": self.wallet, "to_wallet_id": self.bob_wallet, "amount": amount });
        app.post("/v1/transfers", token, body).await
    }

    async fn balances(&self, app: &TestApp) -> (String, String, String) {
        let alice = app.wallet(&self.alice, &self.wallet).await;
        let bob = app.wallet(&self.bob, &self.bob_wallet).await;
        let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
        (
            text(&alice["available"]),
            text(&alice["held"]),
            text(&bob["available"]),
        )
    }
}

async fn transfers_from(app: &TestApp, wallet: &str) -> u64 {
    app.count_where("transactions", doc! { "from_wallet_id": wallet })
        .await
}

#[tokio::test]
async fn a_session_kept_alive_by_refreshes_cannot_move_a_large_amount_without_a_login() {
    let mut options = options(TransferSpec {
        reauthentication_above: some("1"),
        ..TransferSpec::default()
    });
    options.withdrawal_reauth_window = Some(Duration::from_secs(1));
    let app = TestApp::spawn_with(options).await;
    let s = scene(&app).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refreshed = app
        .send(
            "POST",
            "/v1/auth/refresh",
            None,
            None,
            Some(&json!({ "refresh_token": s.alice.refresh_token })),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let stolen = refreshed.body["access_token"].as_str().unwrap();
    let large = s.send(&app, stolen, "5").await;
    assert_eq!(
        (large.status, large.code()),
        (StatusCode::UNAUTHORIZED, "reauthentication_required")
    );
    assert_eq!(transfers_from(&app, &s.wallet).await, 0, "nothing written");
    assert_eq!(
        s.send(&app, stolen, "1").await.status,
        StatusCode::CREATED,
        "small amounts move"
    );
    let login = app.login(&s.alice.email, &s.alice.password).await;
    assert_eq!(
        s.send(&app, &login.access_token, "5").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn the_daily_velocity_refuses_with_a_typed_error_and_writes_nothing() {
    let app = TestApp::spawn_with(options(TransferSpec {
        daily_limit: some("3"),
        ..TransferSpec::default()
    }))
    .await;
    let s = scene(&app).await;
    assert_eq!(
        s.send(&app, &s.alice.access_token, "2").await.status,
        StatusCode::CREATED
    );
    let over = s.send(&app, &s.alice.access_token, "2").await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "daily_limit_exceeded")
    );
    assert_eq!(transfers_from(&app, &s.wallet).await, 1);
    assert_eq!(s.balances(&app).await, ("8".into(), "0".into(), "2".into()));
    assert!(app.metric("coffer_movements_refused_total") >= 1.0);
}

#[tokio::test]
async fn two_api_replicas_cannot_exceed_the_daily_limit_together() {
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let replica = |database: &str| {
        let mut options = options(TransferSpec {
            daily_limit: some("3"),
            ..TransferSpec::default()
        });
        options.database = Some(database.to_string());
        TestApp::spawn_with(options)
    };
    let (one, two) = (replica(&database).await, replica(&database).await);
    let s = scene(&one).await;
    let token = s.alice.access_token.clone();
    let sends = (0..8).map(|i| {
        let app = if i % 2 == 0 { &one } else { &two };
        s.send(app, &token, "1")
    });
    let replies = futures::future::join_all(sends).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let refused = replies
        .iter()
        .filter(|r| r.code() == "daily_limit_exceeded")
        .count();
    assert_eq!(
        (created, refused),
        (3, 5),
        "{:?}",
        replies.iter().map(|r| r.code()).collect::<Vec<_>>()
    );
    assert_eq!(s.balances(&one).await, ("7".into(), "0".into(), "3".into()));
    one.assert_books_balance().await;
}

#[tokio::test]
async fn a_first_transfer_to_a_new_recipient_is_capped() {
    let app = TestApp::spawn_with(options(TransferSpec {
        first_recipient_max: some("1"),
        ..TransferSpec::default()
    }))
    .await;
    let s = scene(&app).await;
    let first = s.send(&app, &s.alice.access_token, "2").await;
    assert_eq!(
        (first.status, first.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "first_recipient_limit")
    );
    assert_eq!(transfers_from(&app, &s.wallet).await, 0);
    assert_eq!(
        s.send(&app, &s.alice.access_token, "1").await.status,
        StatusCode::CREATED
    );
    let known = s.send(&app, &s.alice.access_token, "2").await;
    assert_eq!(
        known.status,
        StatusCode::CREATED,
        "a recipient paid before: {:?}",
        known.body
    );
}

async fn decide(app: &TestApp, admin: &TestUser, id: &str, verb: &str) -> Reply {
    let path = format!("/v1/admin/reviews/{id}/{verb}");
    app.post(
        &path,
        &admin.access_token,
        json!({ "reason": "checked with the customer" }),
    )
    .await
}

#[tokio::test]
async fn a_transfer_above_the_review_threshold_is_held_until_a_reviewer_decides() {
    let app = TestApp::spawn_with(options(TransferSpec {
        review_threshold: some("2"),
        ..TransferSpec::default()
    }))
    .await;
    let s = scene(&app).await;
    let admin = app.staff(Role::Admin).await;
    let held = s.send(&app, &s.alice.access_token, "3").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    assert_eq!(held.body["state"], "manual_review");
    assert_eq!(s.balances(&app).await, ("7".into(), "3".into(), "0".into()));
    let approved = decide(&app, &admin, held.body["id"].as_str().unwrap(), "approve").await;
    assert_eq!(
        (approved.status, approved.body["state"].as_str()),
        (StatusCode::OK, Some("confirmed"))
    );
    assert_eq!(s.balances(&app).await, ("7".into(), "0".into(), "3".into()));

    let second = s.send(&app, &s.alice.access_token, "4").await;
    let rejected = decide(&app, &admin, second.body["id"].as_str().unwrap(), "reject").await;
    assert_eq!(
        (rejected.status, rejected.body["state"].as_str()),
        (StatusCode::OK, Some("failed"))
    );
    assert_eq!(
        s.balances(&app).await,
        ("7".into(), "0".into(), "3".into()),
        "released back"
    );
    let again = decide(&app, &admin, second.body["id"].as_str().unwrap(), "approve").await;
    assert_eq!(again.code(), "state_conflict");
    app.assert_books_balance().await;
}
