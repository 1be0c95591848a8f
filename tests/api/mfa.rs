//! Issue 14, item 1: staff log in with a TOTP code (RFC 6238), every staff role, each code once.

use coffer_store::Role;
use coffer_test_support::{totp_now, TestApp};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::json;

async fn staff_without_login(
    app: &TestApp,
    role: Role,
    enrolled: bool,
) -> (String, String, Option<SecretString>) {
    let email = format!("{}-{}@coffer.test", role.as_str(), uuid::Uuid::new_v4().simple());
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let user = app.create_account(&email, &password, role).await;
    let secret = enrolled.then(coffer_api::mfa::new_secret);
    if let Some(secret) = &secret {
        use secrecy::ExposeSecret;
        app.store
            .set_totp_secret(&user.id, secret.expose_secret())
            .await
            .unwrap();
    }
    (email, password, secret)
}

async fn login(app: &TestApp, email: &str, password: &str, code: Option<&str>) -> coffer_test_support::Reply {
    let mut body = json!({ "email": email, "password": password });
    if let Some(code) = code {
        body["totp_code"] = json!(code);
    }
    app.send("POST", "/v1/auth/login", None, None, Some(&body)).await
}

/// A code that is not the current one, nor one step before or after.
fn wrong_code(secret: &SecretString) -> String {
    let now = chrono::Utc::now().timestamp() as u64;
    let near: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| coffer_api::mfa::code_at(secret, *t).unwrap())
        .collect();
    (0..)
        .map(|n: u32| format!("{:06}", (n * 7919) % 1_000_000))
        .find(|c| !near.contains(c))
        .unwrap()
}

#[tokio::test]
async fn every_staff_role_needs_the_current_totp_code_and_each_code_works_once() {
    let app = TestApp::spawn().await;
    for role in [Role::Support, Role::Finance, Role::Engineering, Role::Admin] {
        let (email, password, secret) = staff_without_login(&app, role, true).await;
        let secret = secret.unwrap();
        let without = login(&app, &email, &password, None).await;
        assert_eq!(without.status, StatusCode::UNAUTHORIZED, "{role:?}");
        assert_eq!(without.code(), "mfa_required");
        let wrong = login(&app, &email, &password, Some(&wrong_code(&secret))).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong.code(), "invalid_mfa_code");
        // The right code with a wrong password says nothing about the code.
        let code = totp_now(&secret);
        let bad_password = login(&app, &email, "wrong-password-123", Some(&code)).await;
        assert_eq!(bad_password.code(), "invalid_credentials");
        let right = login(&app, &email, &password, Some(&code)).await;
        assert_eq!(right.status, StatusCode::OK, "{role:?}: {:?}", right.body);
        let replayed = login(&app, &email, &password, Some(&code)).await;
        assert_eq!(replayed.code(), "invalid_mfa_code", "a code works once");
    }
    assert_eq!(
        app.count_where(
            "audit_records",
            coffer_store::mongodb::bson::doc! { "action": "auth.mfa_failed" }
        )
        .await,
        8,
        "every wrong or replayed code is audited"
    );
}

#[tokio::test]
async fn a_staff_account_without_totp_cannot_log_in_but_users_and_the_payment_service_need_none() {
    let app = TestApp::spawn().await;
    let (email, password, _) = staff_without_login(&app, Role::Admin, false).await;
    let refused = login(&app, &email, &password, Some("123456")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "mfa_enrollment_required");
    let (email, password, _) = staff_without_login(&app, Role::Payment, false).await;
    assert_eq!(login(&app, &email, &password, None).await.status, StatusCode::OK);
    let user = app.register().await;
    assert_eq!(
        login(&app, &user.email, &user.password, None).await.status,
        StatusCode::OK
    );
}
