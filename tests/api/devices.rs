//! The withdrawal risk checks that come before anything is held or signed: a trusted device, a
//! recent password login, the daily limit; and the devices API, per user.

use std::time::Duration;

use coffer_store::mongodb::bson::{doc, DateTime};
use coffer_store::Role;
use coffer_test_support::{Options, TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn body(wallet: &str, amount: &str) -> Value {
    json!({ "wallet_id": wallet, "amount": amount, "destination_address": format!("0x{}", "ab".repeat(20)) })
}

async fn withdraw_from(
    app: &TestApp,
    user: &TestUser,
    device: Option<&str>,
    body: &Value,
) -> (StatusCode, String) {
    let reply = app.withdraw_from(user, device, body).await;
    (reply.status, reply.code().to_string())
}

async fn register_device(app: &TestApp, user: &TestUser, name: &str) -> Value {
    let reply = app
        .post("/v1/devices", &user.access_token, json!({ "name": name }))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body
}

/// Nothing was held or recorded: the wallet is as funded and no withdrawal exists.
async fn assert_untouched(app: &TestApp, user: &TestUser, wallet: &str, available: &str) {
    let balances = app.wallet(user, wallet).await;
    assert_eq!(
        (balances["available"].as_str(), balances["held"].as_str()),
        (Some(available), Some("0"))
    );
    assert_eq!(
        app.count_where("transactions", doc! { "kind": "withdrawal" })
            .await,
        0
    );
}

#[tokio::test]
async fn a_withdrawal_needs_a_trusted_device_of_the_caller_and_a_new_device_waits_out_its_cooling_off() {
    let app = TestApp::spawn_with(Options {
        device_trust_delay: Duration::from_secs(24 * 3600),
        ..Options::default()
    })
    .await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    let request = body(&wallet, "1");

    let phone = register_device(&app, &alice, "Pixel 8").await;
    assert_eq!(phone["trusted"], false, "a new device waits");
    let phone = phone["id"].as_str().unwrap().to_string();
    let bobs = register_device(&app, &bob, "Bob's phone").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for device in [
        None,
        Some(phone.as_str()),
        Some(bobs.as_str()),
        Some("no-such-device"),
    ] {
        assert_eq!(
            withdraw_from(&app, &alice, device, &request).await,
            (StatusCode::FORBIDDEN, "device_not_trusted".into()),
            "device {device:?}"
        );
    }
    assert_untouched(&app, &alice, &wallet, "5").await;

    // The cooling-off period passes (moved back in the database rather than waited for).
    let past = DateTime::from_millis(DateTime::now().timestamp_millis() - 1000);
    app.store
        .database()
        .collection::<coffer_store::mongodb::bson::Document>("devices")
        .update_one(doc! { "_id": &phone }, doc! { "$set": { "trusted_from": past } })
        .await
        .unwrap();
    assert_eq!(
        withdraw_from(&app, &alice, Some(&phone), &request).await.0,
        StatusCode::CREATED
    );

    // A second device is trusted at once when the trusted one vouches for it; Bob cannot.
    let tablet = register_device(&app, &alice, "iPad").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let trust = |token: &str, voucher: &str| {
        let key = uuid::Uuid::new_v4().to_string();
        let path = format!("/v1/devices/{tablet}/trust");
        let token = token.to_string();
        let voucher = voucher.to_string();
        let app = &app;
        async move {
            app.send_with(
                "POST",
                &path,
                Some(&token),
                Some(&key),
                None,
                &[("X-Device-Id", &voucher)],
            )
            .await
        }
    };
    assert_eq!(
        trust(&bob.access_token, &bobs).await.status,
        StatusCode::FORBIDDEN,
        "Bob's device is not trusted and not Alice's"
    );
    let vouched = trust(&alice.access_token, &phone).await;
    assert_eq!(vouched.status, StatusCode::OK, "{:?}", vouched.body);
    assert_eq!(vouched.body["trusted"], true);
    assert_eq!(
        withdraw_from(&app, &alice, Some(&tablet), &request).await.0,
        StatusCode::CREATED
    );

    // Revoked: no longer trusted, and Bob sees none of Alice's devices.
    let revoke = app
        .send(
            "DELETE",
            &format!("/v1/devices/{tablet}"),
            Some(&bob.access_token),
            Some("r-1"),
            None,
        )
        .await;
    assert_eq!(revoke.status, StatusCode::NOT_FOUND);
    let revoke = app
        .send(
            "DELETE",
            &format!("/v1/devices/{tablet}"),
            Some(&alice.access_token),
            Some("r-2"),
            None,
        )
        .await;
    assert!(revoke.body["revoked_at"].is_string(), "{:?}", revoke.body);
    assert_eq!(
        withdraw_from(&app, &alice, Some(&tablet), &request).await,
        (StatusCode::FORBIDDEN, "device_not_trusted".into())
    );
    let listed = app.get("/v1/devices", &bob.access_token).await;
    let names: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Bob's phone"]);
    let trail = app
        .count_where("audit_log", doc! { "action": { "$regex": "^device\\." } })
        .await;
    assert_eq!(trail, 5, "3 added, 1 trusted, 1 removed");
}

#[tokio::test]
async fn a_withdrawal_needs_a_recent_password_login_and_a_refresh_does_not_renew_it() {
    let app = TestApp::spawn_with(Options {
        withdrawal_reauth_window: Some(Duration::from_secs(1)),
        ..Options::default()
    })
    .await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    let device = app.trusted_device(&alice).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let refreshed = app
        .send(
            "POST",
            "/v1/auth/refresh",
            None,
            None,
            Some(&json!({ "refresh_token": alice.refresh_token })),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let mut stale = alice.clone();
    stale.access_token = refreshed.body["access_token"].as_str().unwrap().into();
    let reply = withdraw_from(&app, &stale, Some(&device), &body(&wallet, "1")).await;
    assert_eq!(
        reply,
        (StatusCode::UNAUTHORIZED, "reauthentication_required".into())
    );
    assert_untouched(&app, &alice, &wallet, "5").await;

    let fresh = app.login(&alice.email, &alice.password).await;
    assert_eq!(
        withdraw_from(&app, &fresh, Some(&device), &body(&wallet, "1"))
            .await
            .0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn the_daily_limit_counts_todays_withdrawals_and_a_rejected_one_gives_its_share_back() {
    let app = TestApp::spawn().await;
    let (payment, admin) = (app.staff(Role::Payment).await, app.staff(Role::Admin).await);
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "300").await;
    let limits = app.catalog.current().get("ETH").unwrap().clone();
    let daily = limits.daily_withdrawal_limit.to_decimal_string(18);
    let max = limits.withdrawal_max.to_decimal_string(18);
    assert_eq!(
        (daily.as_str(), max.as_str()),
        ("250", "100"),
        "config/assets.dev.json"
    );

    let mut ids = Vec::new();
    for _ in 0..5 {
        let reply = app.withdraw(&alice, body(&wallet, "50")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        assert_eq!(
            reply.body["state"], "manual_review",
            "above the review threshold of 10"
        );
        ids.push(reply.body["id"].as_str().unwrap().to_string());
    }
    let over = app.withdraw(&alice, body(&wallet, "0.001")).await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "daily_limit_exceeded")
    );
    let balances = app.wallet(&alice, &wallet).await;
    assert_eq!(
        (balances["available"].as_str(), balances["held"].as_str()),
        (Some("50"), Some("250")),
        "the refused one held nothing"
    );

    // A rejected (or failed) withdrawal no longer counts against the day.
    let rejected = app
        .post(
            &format!("/v1/admin/reviews/{}/reject", ids[0]),
            &admin.access_token,
            json!({ "reason": "test" }),
        )
        .await;
    assert_eq!(rejected.body["state"], "failed");
    assert_eq!(
        app.withdraw(&alice, body(&wallet, "50")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.withdraw(&alice, body(&wallet, "0.001")).await.code(),
        "daily_limit_exceeded"
    );
    app.assert_books_balance().await;
}
