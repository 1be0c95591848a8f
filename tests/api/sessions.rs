//! Issue 14, item 1: sessions that can be ended. Rotation is atomic, and a revoked session's
//! access tokens and streams stop working within seconds, on every replica.

use std::time::Duration;

use coffer_store::Role;
use coffer_test_support::stream::{close_code, connect, Token};
use coffer_test_support::{Options, TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::json;

/// The replicas of these tests trust their memory of a session for one second.
const CHECK: Duration = Duration::from_secs(1);

fn options() -> Options {
    Options {
        session_check_interval: Some(CHECK),
        ..Options::default()
    }
}

async fn refresh(app: &TestApp, token: &str) -> coffer_test_support::Reply {
    app.send(
        "POST",
        "/v1/auth/refresh",
        None,
        None,
        Some(&json!({ "refresh_token": token })),
    )
    .await
}

/// Polls until `token` is refused with `session_revoked`, for at most the check interval and a
/// margin; returns how long it took.
async fn refused_within(app: &TestApp, token: &str, limit: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let reply = app.get("/v1/wallets", token).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_eq!(reply.code(), "session_revoked");
            return start.elapsed();
        }
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert!(
            start.elapsed() < limit,
            "the access token still works after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reuse_of_a_refresh_token_leaves_no_live_successor() {
    reuse_race(None).await;
    // The rotation paused between consuming the token and storing its successor: a reuse
    // detected meanwhile must still revoke the successor.
    reuse_race(Some(Duration::from_millis(300))).await;
}

async fn reuse_race(rotation_pause: Option<Duration>) {
    let mut options = options();
    options.store.rotation_pause = rotation_pause;
    let app = TestApp::spawn_with(options).await;
    let user = app.register().await;
    let replies = futures::future::join_all((0..12).map(|_| refresh(&app, &user.refresh_token))).await;
    let rotated: Vec<_> = replies.iter().filter(|r| r.status == StatusCode::OK).collect();
    assert!(rotated.len() <= 1, "at most one successor: {replies:?}");
    assert!(
        replies.iter().filter(|r| r.status != StatusCode::OK).all(|r| [
            "refresh_token_reused",
            "invalid_refresh_token"
        ]
        .contains(&r.code())),
        "{replies:?}"
    );
    assert!(
        replies.iter().any(|r| r.code() == "refresh_token_reused"),
        "the reuse is detected: {replies:?}"
    );
    // The family is revoked: the successor (if any) cannot refresh, and no access token of the
    // session works any more.
    for successor in &rotated {
        let token = successor.body["refresh_token"].as_str().unwrap();
        let again = refresh(&app, token).await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED);
        assert_eq!(again.code(), "invalid_refresh_token");
        refused_within(&app, successor.body["access_token"].as_str().unwrap(), CHECK * 3).await;
    }
    refused_within(&app, &user.access_token, CHECK * 3).await;
    assert_eq!(
        app.count_where(
            "refresh_tokens",
            coffer_store::mongodb::bson::doc! { "used_at": null, "revoked": false }
        )
        .await,
        0,
        "no live refresh token is left in the revoked family"
    );
}

#[tokio::test]
async fn logout_ends_the_session_and_its_access_tokens_within_seconds_but_not_other_sessions() {
    let app = TestApp::spawn_with(options()).await;
    let phone = app.register().await;
    let laptop = app.login(&phone.email, &phone.password).await;
    assert_eq!(
        app.get("/v1/wallets", &phone.access_token).await.status,
        StatusCode::OK
    );
    let logout = app
        .send("POST", "/v1/auth/logout", Some(&phone.access_token), None, None)
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{:?}", logout.body);
    // This replica knows at once; the refresh token is dead too.
    let at_once = app.get("/v1/wallets", &phone.access_token).await;
    assert_eq!(at_once.status, StatusCode::UNAUTHORIZED);
    assert_eq!(at_once.code(), "session_revoked");
    let refreshed = refresh(&app, &phone.refresh_token).await;
    assert_eq!(refreshed.code(), "invalid_refresh_token");
    assert_eq!(
        app.get("/v1/wallets", &laptop.access_token).await.status,
        StatusCode::OK
    );
    assert_eq!(refresh(&app, &laptop.refresh_token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn signing_out_everywhere_ends_every_session_on_every_replica_and_closes_streams() {
    let first = TestApp::spawn_with(options()).await;
    let database = first.store.database().name().to_string();
    let second = TestApp::spawn_with(Options {
        database: Some(database),
        ..options()
    })
    .await;
    let phone = first.register().await;
    let laptop = first.login(&phone.email, &phone.password).await;
    // The laptop's session is known as active by the second replica, and streams from it.
    assert_eq!(
        second.get("/v1/wallets", &laptop.access_token).await.status,
        StatusCode::OK
    );
    let mut socket = connect(second.address, Token::Header(&laptop.access_token), None).await;
    assert_eq!(
        close_code(&mut socket, Duration::from_millis(300)).await,
        None,
        "the stream is open"
    );

    let everywhere = first
        .send(
            "POST",
            "/v1/auth/logout-all",
            Some(&phone.access_token),
            None,
            None,
        )
        .await;
    assert_eq!(everywhere.status, StatusCode::NO_CONTENT, "{:?}", everywhere.body);
    let took = refused_within(&second, &laptop.access_token, CHECK * 3).await;
    assert!(took <= CHECK * 2, "revoked on the other replica after {took:?}");
    refused_within(&first, &phone.access_token, CHECK).await;
    assert_eq!(
        close_code(&mut socket, CHECK * 3).await,
        Some(coffer_api::stream::close::SESSION_ENDED),
        "the stream closes with its session"
    );
    for user in [&phone, &laptop] {
        assert_eq!(
            refresh(&first, &user.refresh_token).await.code(),
            "invalid_refresh_token"
        );
    }
    // A new login starts a new session.
    let again = first.login(&phone.email, &phone.password).await;
    assert_eq!(
        second.get("/v1/wallets", &again.access_token).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_lifetime_however_often_it_is_refreshed() {
    let app = TestApp::spawn_with(Options {
        session_lifetime: Some(Duration::from_secs(3)),
        ..options()
    })
    .await;
    let user = app.register().await;
    assert!(user_expires_in(&app, &user).await <= 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refreshed = refresh(&app, &user.refresh_token).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    assert!(
        refreshed.body["expires_in"].as_u64().unwrap() <= 2,
        "the access token ends with the session"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let late = refresh(&app, refreshed.body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(late.status, StatusCode::UNAUTHORIZED);
    assert_eq!(late.code(), "invalid_refresh_token");
    let access = refreshed.body["access_token"].as_str().unwrap();
    assert_eq!(
        app.get("/v1/wallets", access).await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn user_expires_in(app: &TestApp, user: &TestUser) -> u64 {
    let login = app
        .send(
            "POST",
            "/v1/auth/login",
            None,
            None,
            Some(&json!({ "email": user.email, "password": user.password })),
        )
        .await;
    login.body["expires_in"].as_u64().unwrap()
}

#[tokio::test]
async fn support_can_end_a_users_sessions_and_the_user_cannot_end_anyone_elses() {
    let app = TestApp::spawn_with(options()).await;
    let support = app.staff(Role::Support).await;
    let (alice, mallory) = (app.register().await, app.register().await);
    let path = format!("/v1/admin/users/{}/sessions/revoke", alice.id);
    let refused = app.post(&path, &mallory.access_token, json!({})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let revoked = app
        .send("POST", &path, Some(&support.access_token), Some("revoke-1"), None)
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{:?}", revoked.body);
    assert_eq!(revoked.body["revoked"], 1);
    refused_within(&app, &alice.access_token, CHECK * 3).await;
    assert_eq!(
        app.get("/v1/wallets", &mallory.access_token).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.count_where(
            "audit_records",
            coffer_store::mongodb::bson::doc! { "action": "admin.user_sessions_revoked" }
        )
        .await,
        1
    );
}

#[tokio::test]
async fn changing_the_password_ends_every_other_session() {
    let app = TestApp::spawn_with(options()).await;
    let phone = app.register().await;
    let stolen = app.login(&phone.email, &phone.password).await;
    let new_password = format!("new-{}", uuid::Uuid::new_v4().simple());
    let wrong = app
        .send(
            "POST",
            "/v1/auth/password",
            Some(&phone.access_token),
            None,
            Some(&json!({ "current_password": "not-the-password", "new_password": new_password })),
        )
        .await;
    assert_eq!(wrong.code(), "invalid_password");
    let changed = app
        .send(
            "POST",
            "/v1/auth/password",
            Some(&phone.access_token),
            None,
            Some(&json!({ "current_password": phone.password, "new_password": new_password })),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    assert_eq!(changed.headers["cache-control"], "no-store");
    refused_within(&app, &stolen.access_token, CHECK * 3).await;
    refused_within(&app, &phone.access_token, CHECK * 3).await;
    assert_eq!(
        refresh(&app, &stolen.refresh_token).await.code(),
        "invalid_refresh_token"
    );
    let fresh = changed.body["access_token"].as_str().unwrap();
    assert_eq!(app.get("/v1/wallets", fresh).await.status, StatusCode::OK);
    app.login(&phone.email, &new_password).await;
}
