//! Issue 14, item 5: responses that must not be kept are not kept, and a caller without the
//! role learns nothing of a route's body.

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn token_responses_are_never_stored_and_private_responses_are_not_cacheable() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let login = app
        .send(
            "POST",
            "/v1/auth/login",
            None,
            None,
            Some(&json!({ "email": user.email, "password": user.password })),
        )
        .await;
    let refresh = app
        .send(
            "POST",
            "/v1/auth/refresh",
            None,
            None,
            Some(&json!({ "refresh_token": user.refresh_token })),
        )
        .await;
    for reply in [&login, &refresh] {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.headers["cache-control"], "no-store");
        assert_eq!(reply.headers["pragma"], "no-cache");
    }
    let wallet = app.create_wallet(&user, "ETH").await;
    let balance = app
        .get(&format!("/v1/wallets/{wallet}"), &user.access_token)
        .await;
    let list = app.get("/v1/transactions", &user.access_token).await;
    let refused = app.get("/v1/wallets", "not-a-token").await;
    let unrouted = app.get("/v1/nothing-here", &user.access_token).await;
    for reply in [&balance, &list, &refused, &unrouted] {
        assert_eq!(reply.headers["cache-control"], "no-store", "{:?}", reply.body);
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    }
    assert_eq!(login.headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn a_caller_without_the_role_is_refused_before_its_body_is_parsed() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let id = "00000000-0000-0000-0000-000000000000";
    let routes = [
        "/v1/admin/adjustments".to_string(),
        format!("/v1/admin/adjustments/{id}/approve"),
        format!("/v1/admin/reviews/{id}/reject"),
        "/v1/admin/reconciliations".to_string(),
        "/v1/deposits".to_string(),
    ];
    for path in &routes {
        // An empty object would be a 400 naming the first missing field, if the body were read.
        for key in [None, Some(uuid::Uuid::new_v4().to_string())] {
            let reply = app
                .send(
                    "POST",
                    path,
                    Some(&user.access_token),
                    key.as_deref(),
                    Some(&json!({})),
                )
                .await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}: {:?}", reply.body);
            assert_eq!(reply.code(), "forbidden");
            assert!(reply.body.get("field").is_none());
        }
    }
    // The body is parsed for a caller who has the role.
    let finance = app.staff(Role::Finance).await;
    let reply = app
        .post("/v1/admin/adjustments", &finance.access_token, json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.code(), "missing_field");
}
