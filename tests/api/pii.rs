//! S6, issue 14 item 4: users' personal data is sealed at rest (envelope encryption), found by a
//! blind index, bound to its record, and still readable after a key rotation.

use coffer_store::mongodb::bson::{doc, Document};
use coffer_store::pii::{PiiError, PiiKeys};
use coffer_store::{Role, Store, StoreConfig, StoreError, StoreMetrics};
use coffer_test_support::{mongodb_uri, test_audit_keys, TestApp, TEST_PII_INDEX_KEY, TEST_PII_KEY};
use reqwest::StatusCode;

const OTHER_KEY: &str = "aa26230b0c18cac1296e0441306d7b72871d418c96eb742f0961e10af055c879";

/// A second store on `app`'s database with other PII keys (another replica, another config).
async fn store_with(app: &TestApp, keys: PiiKeys) -> Store {
    let config = StoreConfig {
        audit_keys: Some(test_audit_keys()),
        pii: Some(keys),
        ..StoreConfig::default()
    };
    let metrics = StoreMetrics::new(&prometheus::Registry::new()).unwrap();
    Store::connect(&mongodb_uri(), app.store.database().name(), config, metrics)
        .await
        .unwrap()
}

/// The user document as MongoDB holds it, as extended JSON text.
async fn raw_user(app: &TestApp, id: &str) -> (Document, String) {
    let raw = app
        .store
        .database()
        .collection::<Document>("users")
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .expect("the user document");
    let text = serde_json::to_string(&raw).unwrap();
    (raw, text)
}

fn audit() -> coffer_store::audit::Audit {
    coffer_store::audit::Audit::new("cli", coffer_store::audit_chain::actions::STAFF_CREATED)
}

#[tokio::test]
async fn the_database_holds_neither_the_email_nor_its_lower_case_and_login_still_finds_it() {
    let app = TestApp::spawn().await;
    let local = format!("Mixed.Case-{}", uuid::Uuid::new_v4().simple());
    let email = format!("{local}@Example.COM");
    let password = "a-long-enough-password-1";
    let registered = app.register_as(&email, password).await;
    assert_eq!(registered.status, StatusCode::CREATED, "{:?}", registered.body);
    let id = registered.body["user_id"].as_str().expect("user_id").to_string();

    let (raw, text) = raw_user(&app, &id).await;
    let lower = text.to_lowercase();
    for clear in [email.clone(), email.to_lowercase(), local.to_lowercase()] {
        assert!(
            !lower.contains(&clear.to_lowercase()),
            "the document holds {clear}: {text}"
        );
    }
    let sealed = raw
        .get_document("email")
        .expect("the e-mail is a sealed sub-document");
    assert_eq!(
        sealed.get_str("kek_id").unwrap(),
        coffer_test_support::test_pii_keys().current_key_id()
    );
    assert_eq!(raw.get_str("email_index").unwrap().len(), 64);

    // Login by e-mail in any case; registration of the same e-mail in another case is refused.
    app.login(&email.to_uppercase(), password).await;
    app.login(&email.to_lowercase(), password).await;
    let again = app
        .register_as(&email.to_lowercase(), "another-password-12")
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "email_taken");
    let found = app.store.user_by_email(&email).await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), found.email.as_str()),
        (id.as_str(), email.to_lowercase().as_str())
    );
}

#[tokio::test]
async fn a_wrong_key_or_a_moved_value_is_a_clear_error_never_another_value() {
    let app = TestApp::spawn().await;
    let alice = app
        .create_account("alice@example.com", "alice-password-1", Role::User)
        .await;
    let bob = app
        .create_account("bob@example.com", "bob-password-12", Role::Support)
        .await;

    // A replica configured with another KEK (same index key) finds the record and refuses it.
    let wrong = store_with(&app, PiiKeys::local(OTHER_KEY, &[], TEST_PII_INDEX_KEY).unwrap()).await;
    let error = wrong.user_by_email("alice@example.com").await.unwrap_err();
    assert!(
        matches!(error, StoreError::Pii(PiiError::UnknownKey { .. })),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains(&alice.id) && text.contains("COFFER_PII_KEYS_PREVIOUS"),
        "{text}"
    );
    assert!(!text.contains("alice@"), "{text}");

    // Alice's sealed e-mail copied into Bob's record does not open there.
    let users = app.store.database().collection::<Document>("users");
    let (alice_raw, _) = raw_user(&app, &alice.id).await;
    users
        .update_one(
            doc! { "_id": &bob.id },
            doc! { "$set": { "email": alice_raw.get_document("email").unwrap().clone() } },
        )
        .await
        .unwrap();
    let error = app.store.user_by_id(&bob.id).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Pii(PiiError::Undecryptable { .. })),
        "{error}"
    );
    assert!(error.to_string().contains(&bob.id));

    // A store without keys refuses users at all (fail closed).
    let metrics = StoreMetrics::new(&prometheus::Registry::new()).unwrap();
    let keyless = Store::connect(
        &mongodb_uri(),
        app.store.database().name(),
        StoreConfig::default(),
        metrics,
    )
    .await
    .unwrap();
    let error = keyless.user_by_id(&alice.id).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Pii(PiiError::NotConfigured)),
        "{error}"
    );
}

#[tokio::test]
async fn a_record_sealed_under_key_a_opens_when_b_is_current_and_a_is_still_configured() {
    let app = TestApp::spawn().await;
    let before = app
        .create_account("early@example.com", "early-password-1", Role::Finance)
        .await;
    let secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    app.store.set_totp_secret(&before.id, secret).await.unwrap();

    let rotated = PiiKeys::local(OTHER_KEY, &[TEST_PII_KEY], TEST_PII_INDEX_KEY).unwrap();
    let rotated_id = rotated.current_key_id();
    let after_rotation = store_with(&app, rotated).await;
    let old = after_rotation
        .user_by_email("EARLY@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.id, before.id);
    assert_eq!(old.totp_secret.as_deref(), Some(secret));

    let hash = before.password_hash.clone();
    let late = after_rotation
        .create_user("late@example.com", hash, Role::User, audit())
        .await
        .unwrap();
    let (raw, _) = raw_user(&app, &late.id).await;
    assert_eq!(
        raw.get_document("email").unwrap().get_str("kek_id").unwrap(),
        rotated_id
    );
    let (raw, _) = raw_user(&app, &before.id).await;
    assert_eq!(
        raw.get_document("email").unwrap().get_str("kek_id").unwrap(),
        coffer_test_support::test_pii_keys().current_key_id()
    );
    // The original store (key A only) cannot open what B sealed.
    let error = app.store.user_by_id(&late.id).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Pii(PiiError::UnknownKey { .. })),
        "{error}"
    );
}

#[tokio::test]
async fn users_stored_in_clear_are_counted_and_sealed_by_the_migration() {
    let app = TestApp::spawn().await;
    let users = app.store.database().collection::<Document>("users");
    let now = coffer_store::mongodb::bson::DateTime::now();
    users
        .insert_one(doc! {
            "_id": "legacy-1", "email": "legacy@example.com", "password_hash": "$argon2id$x",
            "role": "support", "totp_secret": "JBSWY3DPEHPK3PXP", "created_at": now,
        })
        .await
        .unwrap();
    assert_eq!(app.store.users_in_clear().await.unwrap(), 1);

    assert_eq!(app.store.encrypt_users_in_clear().await.unwrap(), 1);
    assert_eq!(
        app.store.encrypt_users_in_clear().await.unwrap(),
        0,
        "a second run changes nothing"
    );
    assert_eq!(app.store.users_in_clear().await.unwrap(), 0);
    let (_, text) = raw_user(&app, "legacy-1").await;
    assert!(
        !text.contains("legacy@") && !text.contains("JBSWY3DPEHPK3PXP"),
        "{text}"
    );
    let user = app
        .store
        .user_by_email("Legacy@Example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.id, "legacy-1");
    assert_eq!(user.totp_secret.as_deref(), Some("JBSWY3DPEHPK3PXP"));
}
