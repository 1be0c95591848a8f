//! The withdrawal risk checks that come before anything is held or signed: a trusted device's
//! signature, a recent password login, the daily limit; and the devices API, per user.

use std::time::Duration;

use coffer_store::mongodb::bson::{doc, DateTime};
use coffer_store::Role;
use coffer_test_support::{Options, TestApp, TestDevice, TestUser};
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

async fn withdraw_signed(
    app: &TestApp,
    user: &TestUser,
    device: &TestDevice,
    body: &Value,
) -> (StatusCode, String) {
    let reply = app.withdraw_signed(user, device, body).await;
    (reply.status, reply.code().to_string())
}

/// `POST /v1/withdrawals` with exactly these device headers and body.
async fn withdraw_with_headers(
    app: &TestApp,
    user: &TestUser,
    headers: &[(String, String)],
    body: &Value,
) -> (StatusCode, String) {
    let key = uuid::Uuid::new_v4().to_string();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let reply = app
        .send_with(
            "POST",
            "/v1/withdrawals",
            Some(&user.access_token),
            Some(&key),
            Some(body),
            &headers,
        )
        .await;
    (reply.status, reply.code().to_string())
}

fn bytes(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).unwrap()
}

/// A user with a funded ETH wallet and a trusted device.
async fn funded(app: &TestApp, amount: &str) -> (TestUser, String, TestDevice) {
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, amount).await;
    let device = app.trusted_test_device(&alice).await;
    let saved = app
        .save_address_for(&alice, &wallet, &format!("0x{}", "ab".repeat(20)))
        .await;
    assert_eq!(saved.status, StatusCode::CREATED, "{:?}", saved.body);
    (alice, wallet, device)
}

const INVALID: &str = "device_signature_invalid";

/// `POST {path}` (a device's trust route) signed by `voucher`.
async fn vouch(
    app: &TestApp,
    path: &str,
    user: &TestUser,
    voucher: &TestDevice,
) -> coffer_test_support::Reply {
    let key = uuid::Uuid::new_v4().to_string();
    app.send_signed("POST", path, user, &key, None, voucher).await
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

    let (phone_device, view) = app.register_device(&alice, "Pixel 8").await;
    assert_eq!(view["trusted"], false, "a new device waits");
    let phone = phone_device.id.clone();
    let (bobs_device, _) = app.register_device(&bob, "Bob's phone").await;
    let bobs = bobs_device.id.clone();
    assert_eq!(
        withdraw_signed(&app, &alice, &phone_device, &request).await,
        (StatusCode::FORBIDDEN, "device_not_trusted".into()),
        "signed, but by a device still cooling off"
    );
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
        withdraw_from(&app, &alice, Some(&phone), &request).await,
        (StatusCode::FORBIDDEN, INVALID.into()),
        "trusted now, but the id alone is not the key"
    );
    assert_eq!(
        withdraw_signed(&app, &alice, &phone_device, &request).await.0,
        StatusCode::CREATED
    );

    // A second device is trusted at once when the trusted one vouches for it with its
    // signature; its id alone vouches for nothing, and Bob cannot.
    let (tablet_device, _) = app.register_device(&alice, "iPad").await;
    let tablet = tablet_device.id.clone();
    let path = format!("/v1/devices/{tablet}/trust");
    let unsigned = |token: &str, voucher: &str| {
        let key = uuid::Uuid::new_v4().to_string();
        let (path, token, voucher, app) = (path.clone(), token.to_string(), voucher.to_string(), &app);
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
    let signed = |user, voucher| vouch(&app, &path, user, voucher);
    assert_eq!(
        signed(&bob, &bobs_device).await.status,
        StatusCode::FORBIDDEN,
        "Bob's device is not trusted and not Alice's"
    );
    let by_id = unsigned(&alice.access_token, &phone).await;
    assert_eq!((by_id.status, by_id.code()), (StatusCode::FORBIDDEN, INVALID));
    let by_tablet_itself = signed(&alice, &tablet_device).await;
    assert_eq!(
        by_tablet_itself.code(),
        "device_not_trusted",
        "a device cannot vouch for itself"
    );
    let vouched = signed(&alice, &phone_device).await;
    assert_eq!(vouched.status, StatusCode::OK, "{:?}", vouched.body);
    assert_eq!(vouched.body["trusted"], true);
    assert_eq!(
        withdraw_signed(&app, &alice, &tablet_device, &request).await.0,
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
        withdraw_signed(&app, &alice, &tablet_device, &request).await,
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
        .count_where("audit_records", doc! { "action": { "$regex": "^device\\." } })
        .await;
    assert_eq!(trail, 5, "3 added, 1 trusted, 1 removed");
}

#[tokio::test]
async fn an_access_token_and_a_device_id_without_the_key_cannot_withdraw() {
    let app = TestApp::spawn().await;
    let (alice, wallet, device) = funded(&app, "5").await;
    let request = body(&wallet, "1");
    // What a phished password and a read of GET /v1/devices give: the token and the id.
    let listed = app.get("/v1/devices", &alice.access_token).await;
    assert_eq!(listed.body[0]["id"].as_str(), Some(device.id.as_str()));
    assert_eq!(
        withdraw_from(&app, &alice, Some(&device.id), &request).await,
        (StatusCode::FORBIDDEN, INVALID.into())
    );
    // Signed with another key under the device's id.
    let forged = TestDevice {
        id: device.id.clone(),
        key: TestDevice::new_key(),
    };
    assert_eq!(
        withdraw_signed(&app, &alice, &forged, &request).await,
        (StatusCode::FORBIDDEN, INVALID.into())
    );
    // Signed by the key, but long ago (or far ahead): past the 300 s either way, with a margin
    // for the second that may tick between here and the server's check.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let now = chrono::Utc::now().timestamp();
    for timestamp in [now - 305, now + 305] {
        let stale = device.sign_at("POST", "/v1/withdrawals", &bytes(&request), timestamp, &nonce);
        assert_eq!(
            withdraw_with_headers(&app, &alice, &stale, &request).await,
            (StatusCode::FORBIDDEN, INVALID.into())
        );
    }
    assert_untouched(&app, &alice, &wallet, "5").await;
    assert_eq!(
        app.count("device_nonces").await,
        0,
        "a refused signature spends no nonce"
    );
    assert_eq!(
        withdraw_signed(&app, &alice, &device, &request).await.0,
        StatusCode::CREATED,
        "the device's own signature withdraws"
    );
}

#[tokio::test]
async fn a_replayed_device_signature_is_refused_on_every_replica() {
    let app = TestApp::spawn().await;
    let (alice, wallet, device) = funded(&app, "5").await;
    let replica = TestApp::spawn_with(Options {
        database: Some(app.store.database().name().to_string()),
        ..Options::default()
    })
    .await;
    let request = body(&wallet, "1");
    let captured = device.sign("POST", "/v1/withdrawals", &bytes(&request));
    assert_eq!(
        withdraw_with_headers(&app, &alice, &captured, &request).await.0,
        StatusCode::CREATED
    );
    let refused = app.metric("coffer_movements_refused_total");
    for api in [&app, &replica] {
        assert_eq!(
            withdraw_with_headers(api, &alice, &captured, &request).await,
            (StatusCode::FORBIDDEN, "device_signature_replayed".into())
        );
    }
    assert_eq!(
        app.metric("coffer_movements_refused_total"),
        refused + 1.0,
        "the replay this replica refused is counted"
    );
    let balances = app.wallet(&alice, &wallet).await;
    assert_eq!(
        (balances["available"].as_str(), balances["held"].as_str()),
        (Some("4"), Some("1")),
        "one withdrawal"
    );
    assert_eq!(
        app.count_where("transactions", doc! { "kind": "withdrawal" })
            .await,
        1
    );
}

#[tokio::test]
async fn a_device_signature_over_another_body_is_refused() {
    let app = TestApp::spawn().await;
    let (alice, wallet, device) = funded(&app, "5").await;
    let signed_for = body(&wallet, "0.01");
    let headers = device.sign("POST", "/v1/withdrawals", &bytes(&signed_for));
    assert_eq!(
        withdraw_with_headers(&app, &alice, &headers, &body(&wallet, "4")).await,
        (StatusCode::FORBIDDEN, INVALID.into())
    );
    let elsewhere = device.sign("POST", "/v1/transfers", &bytes(&signed_for));
    assert_eq!(
        withdraw_with_headers(&app, &alice, &elsewhere, &signed_for).await,
        (StatusCode::FORBIDDEN, INVALID.into()),
        "a signature of another path"
    );
    assert_untouched(&app, &alice, &wallet, "5").await;
}

#[tokio::test]
async fn a_device_registers_only_with_a_valid_public_key() {
    let app = TestApp::spawn().await;
    let alice = app.register().await;
    // The last two: 33 bytes, and the identity point (a weak key any signature verifies under).
    let weak = format!("AQ{}=", "A".repeat(41));
    for key in ["", "not base64!", "AAAA", &"A".repeat(44), &weak] {
        let reply = app
            .post(
                "/v1/devices",
                &alice.access_token,
                json!({ "name": "phone", "public_key": key }),
            )
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, "invalid_public_key"),
            "{key:?}"
        );
    }
    let missing = app
        .post("/v1/devices", &alice.access_token, json!({ "name": "phone" }))
        .await;
    assert_eq!(missing.code(), "missing_field");
    assert_eq!(app.count("devices").await, 0);
}

#[tokio::test]
async fn a_withdrawal_needs_a_recent_password_login_and_a_refresh_does_not_renew_it() {
    let app = TestApp::spawn_with(Options {
        withdrawal_reauth_window: Some(Duration::from_secs(3)),
        ..Options::default()
    })
    .await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    let device = app.trusted_test_device(&alice).await;
    // `auth_time` is whole seconds (a JWT claim), so 3.3 s after a login at 10.0 s measure as
    // 13 − 10 = 3, still within the window: wait window + 1.1 s, which always measures ≥ 4.
    tokio::time::sleep(Duration::from_millis(4100)).await;

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
    let reply = withdraw_signed(&app, &stale, &device, &body(&wallet, "1")).await;
    assert_eq!(
        reply,
        (StatusCode::UNAUTHORIZED, "reauthentication_required".into())
    );
    assert_untouched(&app, &alice, &wallet, "5").await;

    let fresh = app.login(&alice.email, &alice.password).await;
    assert_eq!(
        withdraw_signed(&app, &fresh, &device, &body(&wallet, "1"))
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
