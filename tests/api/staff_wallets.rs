//! Staff accounts hold no user wallets (issue 13 item 6, in part): so no approval by staff can pay
//! the approver; the wallet is refused before anything is written.

use coffer_store::mongodb::bson::doc;
use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn staff_and_service_accounts_cannot_open_wallets() {
    let app = TestApp::spawn().await;
    for role in [
        Role::Admin,
        Role::Support,
        Role::Finance,
        Role::Engineering,
        Role::Payment,
        Role::Kyc,
    ] {
        let staff = app.staff(role).await;
        let reply = app
            .post("/v1/wallets", &staff.access_token, json!({ "asset": "ETH" }))
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::FORBIDDEN, "staff_account"),
            "{role:?}"
        );
    }
    let user_wallets = doc! { "kind": "user" };
    assert_eq!(
        app.count_where("wallets", user_wallets).await,
        0,
        "nothing written"
    );
    let user = app.register().await;
    app.create_wallet(&user, "ETH").await;
}
