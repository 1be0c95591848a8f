//! S6: secrets and PII never reach the logs, at any level, nor the exported spans.

use coffer_telemetry::capture::Captured;

use coffer_store::{Role, StoreConfig};
use coffer_telemetry::{export, logs};
use coffer_test_support::otlp::Receiver;
use coffer_test_support::{Options, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_personal_data_never_reach_the_logs_or_the_traces() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The production log format at TRACE, and span export with database command spans.
    let receiver = Receiver::start().await;
    let provider = export::tracer_provider(
        &export::ExportConfig::to_endpoint(&receiver.endpoint, "coffer-api"),
        &coffer_tls::TlsRoots::platform(),
    )
    .unwrap();
    tracing_subscriber::registry()
        .with(export::layer(&provider).with_filter(filter_fn(export::exported)))
        .with(logs::json_layer("api", move || writer.clone()).with_filter(LevelFilter::TRACE))
        .init();
    let options = Options {
        store: StoreConfig {
            command_spans: true,
            ..StoreConfig::default()
        },
        ..Options::default()
    };
    let app = TestApp::spawn_with(options).await;
    let canary = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("pii-{canary}@example.com");
    let password = format!("password-{canary}");
    let wrong_password = format!("wrong-{canary}");
    let registered = app.register_as(&email, &password).await;
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
    let ticket = app
        .post("/v1/stream/tickets", &user.access_token, json!({}))
        .await;
    let ticket = ticket.body["ticket"].as_str().unwrap().to_string();
    let socket = coffer_test_support::stream::connect(
        app.address,
        coffer_test_support::stream::Token::Ticket(&ticket),
        None,
    )
    .await;
    drop(socket);
    let support = app.staff(Role::Support).await;
    let wallets_of_user = format!("/v1/admin/users/{}/wallets", user.id);
    assert_eq!(
        app.get(&wallets_of_user, &support.access_token).await.status,
        StatusCode::OK
    );
    let flush = move || {
        let _ = provider.force_flush();
    };
    let wait = std::time::Duration::from_secs(10);
    let spans = receiver
        .wait_for(wait, flush, |spans| {
            spans.iter().any(|s| s.name == "GET /v1/admin/users/{id}/wallets")
        })
        .await;
    assert!(
        spans.iter().any(|s| s.name == "POST /v1/auth/login")
            && spans.iter().any(|s| s.name == "insert users"),
        "the span capture works"
    );
    let traces: String = spans
        .iter()
        .map(|s| format!("{} {:?}\n", s.name, s.attributes))
        .collect();

    let logs = captured.text();
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
        ("support access token", support.access_token.as_str()),
        ("support TOTP secret", support.totp_secret.as_deref().unwrap()),
        ("stream ticket", ticket.as_str()),
        ("jwt secret", "test-secret-test-secret-test-secret-0123"),
    ];
    for (what, value) in secrets {
        assert!(!logs.contains(value), "the {what} appears in the logs");
        assert!(!traces.contains(value), "the {what} appears in the traces");
    }
    // The canary is unique to this test: no fragment of it may appear either (e.g. a partial e-mail).
    assert!(
        !logs.contains(&canary),
        "a fragment of a secret appears in the logs"
    );
    assert!(
        !traces.contains(&canary),
        "a fragment of a secret appears in the traces"
    );
    // Nor do user ids (the admin route's path is recorded as its template) or chain addresses.
    for (what, value) in [("user id", user.id.as_str()), ("address", "efefefef")] {
        assert!(
            !traces.contains(value),
            "the {what} appears in the traces: {traces}"
        );
    }
}
