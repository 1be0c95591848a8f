//! Risk flags and verification tiers (issue 13 item 8): a frozen or unverified user moves nothing
//! out, only the KYC role sets tiers, support freezes, only an admin unfreezes, and every change is
//! audited with it.

use coffer_chain::signer::{LocalSigner, Signer};
use coffer_domain::policy::Tier;
use coffer_store::mongodb::bson::doc;
use coffer_store::Role;
use coffer_test_support::{Options, Reply, TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::json;

/// Alice with 5 ETH, and Bob's ETH wallet to send to.
struct Scene {
    app: TestApp,
    alice: TestUser,
    wallet: String,
    bob_wallet: String,
}

async fn scene(default_tier: Tier) -> Scene {
    let app = TestApp::spawn_with(Options {
        kyc_default_tier: default_tier,
        ..Options::default()
    })
    .await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    Scene {
        app,
        alice,
        wallet,
        bob_wallet,
    }
}

impl Scene {
    async fn withdraw(&self) -> Reply {
        let destination = format!("{:#x}", LocalSigner::random().address());
        let body = json!({ "wallet_id": self.wallet, "amount": "1", "destination_address": destination });
        self.app.withdraw(&self.alice, body).await
    }

    async fn transfer(&self) -> Reply {
        let body = json!({ "from_wallet_id": self.wallet, "to_wallet_id": self.bob_wallet, "amount": "1" });
        self.app
            .post("/v1/transfers", &self.alice.access_token, body)
            .await
    }

    async fn available(&self) -> String {
        self.app.wallet(&self.alice, &self.wallet).await["available"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn movements_out(&self) -> u64 {
        let filter = doc! { "from_wallet_id": &self.wallet };
        self.app.count_where("transactions", filter).await
    }

    async fn audited(&self, action: &str) -> u64 {
        let filter = doc! { "action": action, "subject": &self.alice.id };
        self.app.count_where("audit_records", filter).await
    }
}

async fn freeze(app: &TestApp, staff: &TestUser, user: &TestUser, verb: &str) -> Reply {
    let path = format!("/v1/admin/users/{}/{verb}", user.id);
    app.post(
        &path,
        &staff.access_token,
        json!({ "reason": "reported takeover" }),
    )
    .await
}

async fn verify(app: &TestApp, caller: &TestUser, user: &TestUser, tier: &str) -> Reply {
    let path = format!("/v1/kyc/users/{}/verification", user.id);
    app.post(
        &path,
        &caller.access_token,
        json!({ "tier": tier, "flags": ["pep"] }),
    )
    .await
}

#[tokio::test]
async fn a_frozen_user_cannot_withdraw_or_transfer_and_unfreezing_restores_both() {
    let s = scene(Tier::Full).await;
    let (support, admin) = (s.app.staff(Role::Support).await, s.app.staff(Role::Admin).await);
    let frozen = freeze(&s.app, &support, &s.alice, "freeze").await;
    assert_eq!(frozen.status, StatusCode::OK, "{:?}", frozen.body);
    assert_eq!(frozen.body["frozen"], true);
    let (withdrawal, transfer) = (s.withdraw().await, s.transfer().await);
    assert_eq!(
        (withdrawal.status, withdrawal.code()),
        (StatusCode::FORBIDDEN, "account_frozen")
    );
    assert_eq!(
        (transfer.status, transfer.code()),
        (StatusCode::FORBIDDEN, "account_frozen")
    );
    assert_eq!(s.movements_out().await, 0, "nothing written");
    assert_eq!(s.available().await, "5");
    let refused = r#"coffer_movements_refused_total"#;
    assert!(s.app.metric(refused) >= 2.0, "counted as refusals");

    let by_support = freeze(&s.app, &support, &s.alice, "unfreeze").await;
    assert_eq!(
        by_support.status,
        StatusCode::FORBIDDEN,
        "only an admin unfreezes"
    );
    let unfrozen = freeze(&s.app, &admin, &s.alice, "unfreeze").await;
    assert_eq!(
        (unfrozen.status, unfrozen.body["frozen"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    assert_eq!(s.transfer().await.status, StatusCode::CREATED);
    assert_eq!(s.withdraw().await.status, StatusCode::CREATED);
    assert_eq!(s.audited("admin.user_frozen").await, 1);
    let with_reason =
        doc! { "action": "admin.user_frozen", "subject": &s.alice.id, "details.reason": "reported takeover" };
    assert_eq!(
        s.app.count_where("audit_records", with_reason).await,
        1,
        "the reason is kept with the record"
    );
    assert_eq!(s.audited("admin.user_unfrozen").await, 1);
    s.app.assert_books_balance().await;
}

#[tokio::test]
async fn an_unverified_user_moves_nothing_out_until_the_kyc_provider_verifies_them() {
    let s = scene(Tier::Unverified).await;
    let (withdrawal, transfer) = (s.withdraw().await, s.transfer().await);
    assert_eq!(
        withdrawal.code(),
        "verification_required",
        "{:?}",
        withdrawal.body
    );
    assert_eq!(transfer.code(), "verification_required");
    assert_eq!(s.movements_out().await, 0);
    let kyc = s.app.staff(Role::Kyc).await;
    let verified = verify(&s.app, &kyc, &s.alice, "full").await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    assert_eq!(
        (verified.body["tier"].as_str(), &verified.body["flags"]),
        (Some("full"), &json!(["pep"]))
    );
    assert_eq!(s.transfer().await.status, StatusCode::CREATED);
    assert_eq!(s.audited("kyc.verification_set").await, 1);
    let support = s.app.staff(Role::Support).await;
    let read = s
        .app
        .get(
            &format!("/v1/admin/users/{}/risk", s.alice.id),
            &support.access_token,
        )
        .await;
    assert_eq!(
        (read.status, read.body["tier"].as_str()),
        (StatusCode::OK, Some("full"))
    );
}

#[tokio::test]
async fn only_the_kyc_role_sets_verification_and_nothing_is_written_otherwise() {
    let s = scene(Tier::Unverified).await;
    for role in [Role::Admin, Role::Support, Role::Payment] {
        let caller = s.app.staff(role).await;
        let reply = verify(&s.app, &caller, &s.alice, "full").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{role:?}");
    }
    let reply = verify(&s.app, &s.alice, &s.alice, "full").await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "a user cannot verify themselves"
    );
    let kyc = s.app.staff(Role::Kyc).await;
    let bad = verify(&s.app, &kyc, &s.alice, "platinum").await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "invalid_tier")
    );
    assert_eq!(s.audited("kyc.verification_set").await, 0);
    assert_eq!(s.transfer().await.code(), "verification_required");
}

#[tokio::test]
async fn the_basic_tier_gets_a_share_of_the_daily_withdrawal_limit() {
    // ETH's daily withdrawal limit in the dev assets is 250; basic gets 10%: 25.
    let s = scene(Tier::Basic).await;
    let payment = s.app.staff(Role::Payment).await;
    s.app.deposit(&payment, &s.wallet, "40").await;
    let destination = format!("{:#x}", LocalSigner::random().address());
    let body =
        |amount: &str| json!({ "wallet_id": s.wallet, "amount": amount, "destination_address": destination });
    assert_eq!(
        s.app.withdraw(&s.alice, body("9")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        s.app.withdraw(&s.alice, body("9")).await.status,
        StatusCode::CREATED
    );
    let over = s.app.withdraw(&s.alice, body("9")).await;
    assert_eq!(over.code(), "daily_limit_exceeded", "{:?}", over.body);
}
