//! S6: secrets and PII never reach the logs, at any level.

use std::io::Write;
use std::sync::{Arc, Mutex};

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_and_personal_data_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let app = TestApp::spawn().await;
    let canary = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("pii-{canary}@example.com");
    let password = format!("password-{canary}");
    let wrong_password = format!("wrong-{canary}");
    let registered = app
        .send(
            "POST",
            "/v1/auth/register",
            None,
            None,
            Some(&json!({ "email": email, "password": password })),
        )
        .await;
    assert_eq!(registered.status, StatusCode::CREATED);
    let refused = app
        .send(
            "POST",
            "/v1/auth/login",
            None,
            None,
            Some(&json!({ "email": email, "password": wrong_password })),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let user = app.login(&email, &password).await;
    let refreshed = app
        .send(
            "POST",
            "/v1/auth/refresh",
            None,
            None,
            Some(&json!({ "refresh_token": user.refresh_token })),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let forged = format!("forged-token-{canary}");
    assert_eq!(
        app.send("GET", "/v1/wallets", Some(&forged), None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let payment = app.staff(Role::Payment).await;
    let wallet = app.create_wallet(&user, "ETH").await;
    app.deposit(&payment, &wallet, "1").await;
    let withdrawal = app
        .withdraw(&user, json!({ "wallet_id": wallet, "amount": "0.5", "destination_address": format!("0x{}", "ef".repeat(20)) }))
        .await;
    assert_eq!(withdrawal.status, StatusCode::CREATED);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("/v1/auth/login") && logs.contains("request_id"),
        "the capture works: {logs:.400}"
    );
    let secrets = [
        ("e-mail", email.as_str()),
        ("password", password.as_str()),
        ("wrong password", wrong_password.as_str()),
        ("forged token", forged.as_str()),
        ("access token", user.access_token.as_str()),
        ("refresh token", user.refresh_token.as_str()),
        (
            "rotated refresh token",
            refreshed.body["refresh_token"].as_str().unwrap(),
        ),
        ("payment access token", payment.access_token.as_str()),
        ("jwt secret", "test-secret-test-secret-test-secret-0123"),
    ];
    for (what, value) in secrets {
        assert!(!logs.contains(value), "the {what} appears in the logs");
    }
    // The canary is unique to this test: no fragment of it may appear either (e.g. a partial e-mail).
    assert!(
        !logs.contains(&canary),
        "a fragment of a secret appears in the logs"
    );
}
