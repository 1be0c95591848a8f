//! The withdrawal address book: money leaves only to a saved address past its cooling-off;
//! checksums are checked and the platform's own addresses cannot be saved.

use std::time::Duration;

use coffer_chain::signer::{LocalSigner, Signer};
use coffer_store::mongodb::bson::{doc, DateTime};
use coffer_store::Role;
use coffer_test_support::{Options, TestApp, TestDevice, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

const CHAIN: &str = "ethereum-dev";

fn destination() -> String {
    format!("{:#x}", LocalSigner::random().address())
}

async fn funded(app: &TestApp) -> (TestUser, String, TestDevice) {
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "5").await;
    let device = app.trusted_test_device(&alice).await;
    (alice, wallet, device)
}

/// A signed withdrawal that does not save its destination first.
async fn withdraw(
    app: &TestApp,
    user: &TestUser,
    device: &TestDevice,
    wallet: &str,
    to: &str,
) -> (StatusCode, String) {
    let body = json!({ "wallet_id": wallet, "amount": "1", "destination_address": to });
    let key = uuid::Uuid::new_v4().to_string();
    let reply = app
        .send_signed("POST", "/v1/withdrawals", user, &key, Some(&body), device)
        .await;
    (reply.status, reply.code().to_string())
}

async fn save(app: &TestApp, user: &TestUser, address: &str) -> coffer_test_support::Reply {
    let body = json!({ "chain": CHAIN, "address": address, "label": "cold wallet" });
    app.post("/v1/address-book", &user.access_token, body).await
}

async fn assert_nothing_held(app: &TestApp, user: &TestUser, wallet: &str) {
    let balances = app.wallet(user, wallet).await;
    assert_eq!(
        (balances["available"].as_str(), balances["held"].as_str()),
        (Some("5"), Some("0"))
    );
    assert_eq!(
        app.count_where("transactions", doc! { "kind": "withdrawal" })
            .await,
        0
    );
}

#[tokio::test]
async fn a_withdrawal_goes_only_to_a_saved_address_past_its_cooling_off() {
    let app = TestApp::spawn_with(Options {
        address_cooling_off: Duration::from_secs(24 * 3600),
        ..Options::default()
    })
    .await;
    let (alice, wallet, device) = funded(&app).await;
    let to = destination();
    assert_eq!(
        withdraw(&app, &alice, &device, &wallet, &to).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "destination_not_saved".into())
    );
    let saved = save(&app, &alice, &to).await;
    assert_eq!(saved.status, StatusCode::CREATED, "{:?}", saved.body);
    assert_eq!(saved.body["usable"], false);
    assert_eq!(
        withdraw(&app, &alice, &device, &wallet, &to).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "destination_cooling_off".into())
    );
    let bob = app.register().await;
    assert_eq!(
        save(&app, &bob, &to).await.status,
        StatusCode::CREATED,
        "Bob's book is his own"
    );
    assert_eq!(save(&app, &alice, &to).await.code(), "address_already_saved");
    assert_nothing_held(&app, &alice, &wallet).await;

    // The cooling-off passes (moved back in the database rather than waited for).
    let id = saved.body["id"].as_str().unwrap().to_string();
    let past = DateTime::from_millis(DateTime::now().timestamp_millis() - 1000);
    app.store
        .database()
        .collection::<coffer_store::mongodb::bson::Document>("address_book")
        .update_one(doc! { "_id": &id }, doc! { "$set": { "usable_from": past } })
        .await
        .unwrap();
    assert_eq!(
        withdraw(&app, &alice, &device, &wallet, &to).await.0,
        StatusCode::CREATED
    );

    // Removed: no longer a destination; saved again, it cools off again.
    let removed = app
        .send(
            "DELETE",
            &format!("/v1/address-book/{id}"),
            Some(&alice.access_token),
            Some("rm-1"),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{:?}", removed.body);
    assert_eq!(
        withdraw(&app, &alice, &device, &wallet, &to).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "destination_not_saved".into())
    );
    assert_eq!(save(&app, &alice, &to).await.body["usable"], false);
    let trail = app
        .count_where("audit_records", doc! { "action": { "$regex": "^address\\." } })
        .await;
    assert_eq!(trail, 4, "3 added (one by Bob), 1 removed");
}

#[tokio::test]
async fn the_address_book_checks_checksums_and_refuses_the_platforms_own_addresses() {
    let hot_wallet = destination();
    let app = TestApp::spawn_with(Options {
        platform_addresses: vec![hot_wallet.clone()],
        ..Options::default()
    })
    .await;
    let alice = app.register().await;
    let address: alloy::primitives::Address = destination().parse().unwrap();
    let checksummed = address.to_checksum(None);
    // One letter's case flipped breaks the checksum.
    let position = checksummed[2..].find(|c: char| c.is_ascii_alphabetic()).unwrap() + 2;
    let mut broken: Vec<char> = checksummed.chars().collect();
    broken[position] = if broken[position].is_ascii_uppercase() {
        broken[position].to_ascii_lowercase()
    } else {
        broken[position].to_ascii_uppercase()
    };
    let broken: String = broken.into_iter().collect();
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (broken, StatusCode::BAD_REQUEST, "invalid_address_checksum"),
        ("0x123".into(), StatusCode::BAD_REQUEST, "invalid_address"),
        (
            format!("0x{}", "0".repeat(40)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "forbidden_destination",
        ),
        (
            hot_wallet.to_uppercase().replace("0X", "0x"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "forbidden_destination",
        ),
    ];
    for (text, status, code) in cases {
        let reply = save(&app, &alice, &text).await;
        assert_eq!((reply.status, reply.code()), (status, code), "{text}");
    }
    // A token contract of the platform's assets (the catalog as it is now).
    let contract = destination();
    app.catalog.replace(crate::chain::catalog(&[
        crate::chain::spec("ETH", 18, None, 1),
        crate::chain::spec("CTT", 6, Some(&contract), 1),
    ]));
    let body = json!({ "chain": crate::chain::CHAIN, "address": contract, "label": "token" });
    let reply = app.post("/v1/address-book", &alice.access_token, body).await;
    assert_eq!(reply.code(), "forbidden_destination", "{:?}", reply.body);
    app.catalog
        .replace(coffer_domain::AssetCatalog::from_json(coffer_test_support::DEV_ASSETS).unwrap());
    assert_eq!(app.count("address_book").await, 0, "nothing saved");
    let reply = save(&app, &alice, &checksummed).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["address"].as_str(), Some(checksummed.as_str()));
    let listed: Value = app.get("/v1/address-book", &alice.access_token).await.body;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
}
