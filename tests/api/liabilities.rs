//! Proof of liabilities (B2, issue 17): the published total is the ledger's, each owner's proof
//! verifies offline with `coffer proof verify`'s logic, a tampered proof does not, and only the
//! owner sees a wallet's proof.

use coffer_api::liabilities::{verify_documents, LiabilityKey, LiabilityProofView, LiabilityStatementView};
use coffer_store::collections::LEDGER_ENTRIES;
use coffer_store::mongodb::bson::doc;
use coffer_store::{LedgerEntryDoc, Role};
use coffer_test_support::{Options, TestApp, TestUser};
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde_json::Value;

const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn key() -> LiabilityKey {
    LiabilityKey::from_hex(SEED_HEX).expect("key")
}

async fn app_with_key() -> TestApp {
    TestApp::spawn_with(Options {
        liability_signing_key: Some(key()),
        ..Options::default()
    })
    .await
}

async fn publish(app: &TestApp, staff: &TestUser, asset: &str) -> coffer_test_support::Reply {
    let key = uuid::Uuid::new_v4().to_string();
    let path = format!("/v1/admin/liabilities/{asset}");
    app.send("POST", &path, Some(&staff.access_token), Some(&key), None)
        .await
}

async fn fetch_statement(app: &TestApp, asset: &str) -> LiabilityStatementView {
    let reply = app
        .send("GET", &format!("/v1/liabilities/{asset}"), None, None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    serde_json::from_value(reply.body).expect("a statement")
}

async fn fetch_proof(app: &TestApp, user: &TestUser, wallet: &str) -> LiabilityProofView {
    let reply = app
        .get(
            &format!("/v1/wallets/{wallet}/liability-proof"),
            &user.access_token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    serde_json::from_value(reply.body).expect("a proof")
}

/// The sum, in smallest units, of every ledger entry on a user wallet of `asset`.
async fn ledger_sum_of_user_wallets(app: &TestApp, asset: &str) -> i128 {
    let entries: Vec<LedgerEntryDoc> = app
        .store
        .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
        .find(doc! { "asset": asset, "user_id": { "$ne": null } })
        .await
        .expect("entries")
        .try_collect()
        .await
        .expect("entries");
    entries
        .iter()
        .map(|e| {
            let magnitude = u128::try_from(e.amount.magnitude.atomic()).expect("small") as i128;
            if e.amount.negative {
                -magnitude
            } else {
                magnitude
            }
        })
        .sum()
}

#[tokio::test]
async fn the_published_total_is_the_ledger_sum_of_user_wallets_and_every_proof_verifies() {
    let app = app_with_key().await;
    let (payment, finance) = (app.staff(Role::Payment).await, app.staff(Role::Finance).await);
    let (alice, bob, carol) = (app.register().await, app.register().await, app.register().await);
    let wallets = [
        (&alice, app.create_wallet(&alice, "ETH").await, "2.5"),
        (&bob, app.create_wallet(&bob, "ETH").await, "1.000000000000000001"),
        (&carol, app.create_wallet(&carol, "ETH").await, "0"),
    ];
    for (_, wallet, amount) in &wallets {
        if *amount != "0" {
            app.deposit(&payment, wallet, amount).await;
        }
    }

    let published = publish(&app, &finance, "ETH").await;
    assert_eq!(published.status, StatusCode::CREATED, "{:?}", published.body);
    let served = fetch_statement(&app, "ETH").await;
    assert_eq!(served.statement_id, published.body["statement_id"]);
    assert_eq!(served.public_key, key().public_key_hex());
    let ledger = ledger_sum_of_user_wallets(&app, "ETH").await;
    assert_eq!(
        served.total_atomic,
        ledger.to_string(),
        "the root's total is the ledger's"
    );
    assert_eq!(served.total, "3.500000000000000001");
    assert!(served.leaf_count.is_power_of_two() && served.leaf_count >= 9);

    for (user, wallet, amount) in &wallets {
        let proof = fetch_proof(&app, user, wallet).await;
        let verified = verify_documents(&served, &proof, Some(&key().public_key_hex())).expect("verifies");
        let expected = if *amount == "0" { "0" } else { amount };
        assert_eq!(verified.balance, *expected, "wallet {wallet}");
        assert_eq!(verified.total, "3.500000000000000001");
    }

    // Money moved after the snapshot is not in it; the next statement has it.
    app.deposit(&payment, &wallets[2].1, "4").await;
    assert_eq!(
        fetch_statement(&app, "ETH").await.total_atomic,
        served.total_atomic
    );
    assert_eq!(publish(&app, &finance, "ETH").await.status, StatusCode::CREATED);
    let next = fetch_statement(&app, "ETH").await;
    assert_eq!(next.total, "7.500000000000000001");
    assert_eq!(
        next.total_atomic,
        ledger_sum_of_user_wallets(&app, "ETH").await.to_string()
    );
    let carol_proof = fetch_proof(&app, &carol, &wallets[2].1).await;
    assert_eq!(
        verify_documents(&next, &carol_proof, None)
            .expect("verifies")
            .balance,
        "4"
    );
    // An old statement's proof does not verify against the new one.
    let stale = LiabilityProofView {
        statement_id: served.statement_id.clone(),
        ..carol_proof
    };
    assert!(verify_documents(&next, &stale, None).is_err());
}

#[tokio::test]
async fn a_tampered_proof_or_statement_does_not_verify() {
    let app = app_with_key().await;
    let (payment, admin) = (app.staff(Role::Payment).await, app.staff(Role::Admin).await);
    let (alice, bob) = (app.register().await, app.register().await);
    let alice_wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &alice_wallet, "2").await;
    app.deposit(&payment, &bob_wallet, "3").await;
    assert_eq!(publish(&app, &admin, "ETH").await.status, StatusCode::CREATED);
    let statement = fetch_statement(&app, "ETH").await;
    let proof = fetch_proof(&app, &alice, &alice_wallet).await;
    let public_key = key().public_key_hex();
    assert!(verify_documents(&statement, &proof, Some(&public_key)).is_ok());

    let mut richer = proof.clone();
    richer.balance_atomic = "2000000000000000001".into();
    let error = verify_documents(&statement, &richer, Some(&public_key)).unwrap_err();
    assert!(error.contains("do not add up"), "{error}");

    let mut shifted = proof.clone();
    let sibling = &mut shifted.pieces[0].path[0];
    sibling.sum_atomic = (sibling.sum_atomic.parse::<u128>().unwrap() + 1).to_string();
    let error = verify_documents(&statement, &shifted, Some(&public_key)).unwrap_err();
    assert!(error.contains("root"), "{error}");

    let mut smaller_total = statement.clone();
    smaller_total.total_atomic = "4000000000000000000".into();
    let error = verify_documents(&smaller_total, &proof, Some(&public_key)).unwrap_err();
    assert!(error.contains("signature"), "{error}");

    let other_key = LiabilityKey::from_hex(&"11".repeat(32)).unwrap().public_key_hex();
    let error = verify_documents(&statement, &proof, Some(&other_key)).unwrap_err();
    assert!(error.contains("another key"), "{error}");

    // Bob's proof presented as Alice's: the commitment names the wallet.
    let mut borrowed = fetch_proof(&app, &bob, &bob_wallet).await;
    borrowed.wallet_id = alice_wallet.clone();
    assert!(verify_documents(&statement, &borrowed, Some(&public_key)).is_err());
}

#[tokio::test]
async fn only_the_owner_fetches_a_wallets_proof() {
    let app = app_with_key().await;
    let (payment, finance) = (app.staff(Role::Payment).await, app.staff(Role::Finance).await);
    let (alice, bob) = (app.register().await, app.register().await);
    let alice_wallet = app.create_wallet(&alice, "ETH").await;
    app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &alice_wallet, "1").await;
    assert_eq!(publish(&app, &finance, "ETH").await.status, StatusCode::CREATED);
    let path = format!("/v1/wallets/{alice_wallet}/liability-proof");

    assert_eq!(app.get(&path, &alice.access_token).await.status, StatusCode::OK);
    let other = app.get(&path, &bob.access_token).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.code(), "not_found", "indistinguishable from absent");
    let anonymous = app.send("GET", &path, None, None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // A wallet opened after the snapshot has no proof in it yet.
    let dave = app.register().await;
    let late = app.create_wallet(&dave, "ETH").await;
    let after = app
        .get(&format!("/v1/wallets/{late}/liability-proof"), &dave.access_token)
        .await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);
    assert_eq!(after.code(), "not_published");
}

#[tokio::test]
async fn publishing_needs_finance_or_admin_a_signing_key_and_is_audited() {
    let app = app_with_key().await;
    let none_yet = app.send("GET", "/v1/liabilities/ETH", None, None, None).await;
    assert_eq!(none_yet.status, StatusCode::NOT_FOUND);
    assert_eq!(none_yet.code(), "not_published");
    let unknown = app.send("GET", "/v1/liabilities/DOGE", None, None, None).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.code(), "unknown_asset");

    for role in [Role::User, Role::Support, Role::Engineering, Role::Payment] {
        let caller = if role == Role::User {
            app.register().await
        } else {
            app.staff(role).await
        };
        let refused = publish(&app, &caller, "ETH").await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{role:?}");
    }
    let finance = app.staff(Role::Finance).await;
    let published = publish(&app, &finance, "ETH").await;
    assert_eq!(published.status, StatusCode::CREATED, "{:?}", published.body);
    assert_eq!(published.body["total"], "0", "no user wallets: an empty tree");
    let audited = app
        .count_where(
            "audit_records",
            doc! { "action": "liabilities.published", "actor": &finance.id },
        )
        .await;
    assert_eq!(audited, 1);

    let unconfigured = TestApp::spawn().await;
    let admin = unconfigured.staff(Role::Admin).await;
    let refused = publish(&unconfigured, &admin, "ETH").await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.code(), "liabilities_unconfigured");
    let _: Value = refused.body;
}

/// The public statement needs no token, but it is a read like any other: limited per client IP
/// (429 with Retry-After past the limit).
#[tokio::test]
async fn the_public_statement_is_rate_limited_per_client_ip() {
    let mut options = Options {
        liability_signing_key: Some(key()),
        ..Options::default()
    };
    options.rate_limits.reads_per_ip_per_minute = 3;
    let app = TestApp::spawn_with(options).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = app.send("GET", "/v1/liabilities/ETH", None, None, None).await;
        statuses.push(reply.status.as_u16());
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(reply.headers.contains_key("retry-after"));
            assert_eq!(reply.body["code"], "rate_limited");
        }
    }
    assert_eq!(
        statuses,
        vec![404, 404, 404, 429],
        "nothing published yet, then limited"
    );
}

/// `value` as JSON text, as a JavaScript string literal.
fn js_string(value: Value) -> String {
    serde_json::to_string(&value.to_string()).unwrap()
}

/// Runs the static verifier page (clients/proof-verifier, opened from disk: no server) in a real
/// headless Chromium on `statement` and `proof`; answers the class and text of its result.
async fn verify_in_browser(
    browser: &coffer_test_support::browser::Browser,
    statement: &LiabilityStatementView,
    proof: &LiabilityProofView,
    public_key: &str,
) -> (String, String) {
    let page = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/proof-verifier/index.html")
        .canonicalize()
        .expect("the verifier page");
    browser.goto(&format!("file://{}", page.display())).await;
    let script = format!(
        "document.getElementById('statement').value = {}; document.getElementById('proof').value = {}; \
         document.getElementById('key').value = {}; document.getElementById('result').className = ''; \
         document.getElementById('verify').click(); return true;",
        js_string(serde_json::to_value(statement).unwrap()),
        js_string(serde_json::to_value(proof).unwrap()),
        serde_json::to_string(public_key).unwrap()
    );
    browser.execute(&script).await;
    browser
        .wait_for("#result.ok, #result.fail", std::time::Duration::from_secs(20))
        .await;
    let class = browser.attribute("#result", "class").await.unwrap_or_default();
    (class, browser.text_of("#result").await)
}

#[tokio::test]
async fn the_static_page_verifies_a_proof_in_the_browser_and_refuses_a_changed_balance_sibling_or_key() {
    let app = app_with_key().await;
    let (payment, admin) = (app.staff(Role::Payment).await, app.staff(Role::Admin).await);
    let (alice, bob) = (app.register().await, app.register().await);
    let alice_wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &alice_wallet, "2.5").await;
    app.deposit(&payment, &bob_wallet, "3").await;
    assert_eq!(publish(&app, &admin, "ETH").await.status, StatusCode::CREATED);
    let statement = fetch_statement(&app, "ETH").await;
    let proof = fetch_proof(&app, &alice, &alice_wallet).await;
    let public_key = key().public_key_hex();
    let browser = coffer_test_support::browser::Browser::start(900, 900).await;

    let (class, text) = verify_in_browser(&browser, &statement, &proof, &public_key).await;
    assert_eq!(class, "ok", "{text}");
    assert!(
        text.contains(&format!("wallet {alice_wallet} holds 2.5 ETH"))
            && text.contains("total liabilities 5.5 ETH"),
        "{text}"
    );

    let mut richer = proof.clone();
    richer.balance_atomic = "2500000000000000001".into();
    let (class, text) = verify_in_browser(&browser, &statement, &richer, &public_key).await;
    assert_eq!(class, "fail", "{text}");
    assert!(text.contains("do not add up"), "{text}");

    let mut shifted = proof.clone();
    let sibling = &mut shifted.pieces[0].path[0];
    sibling.sum_atomic = (sibling.sum_atomic.parse::<u128>().unwrap() + 1).to_string();
    let (class, text) = verify_in_browser(&browser, &statement, &shifted, &public_key).await;
    assert_eq!(class, "fail", "{text}");
    assert!(text.contains("root"), "{text}");

    let mut smaller_total = statement.clone();
    smaller_total.total_atomic = "4000000000000000000".into();
    let (class, text) = verify_in_browser(&browser, &smaller_total, &proof, &public_key).await;
    assert_eq!(class, "fail", "{text}");
    assert!(text.contains("signature"), "{text}");

    let other_key = LiabilityKey::from_hex(&"11".repeat(32)).unwrap().public_key_hex();
    let (class, text) = verify_in_browser(&browser, &statement, &proof, &other_key).await;
    assert_eq!(class, "fail", "{text}");
    assert!(text.contains("another key"), "{text}");
    browser.close().await;
}
