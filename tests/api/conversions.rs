//! Conversions between a user's own wallets at an expiring quote (L11), against the real server.

use coffer_store::mongodb::bson::{doc, DateTime};
use coffer_store::Role;
use coffer_test_support::{TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Setup {
    app: TestApp,
    alice: TestUser,
    eth: String,
    usdt: String,
}

/// Alice with 2 ETH and an empty USDT wallet.
async fn setup() -> Setup {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let eth = app.create_wallet(&alice, "ETH").await;
    let usdt = app.create_wallet(&alice, "USDT").await;
    app.deposit(&payment, &eth, "2").await;
    Setup {
        app,
        alice,
        eth,
        usdt,
    }
}

async fn quote(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let reply = app.post("/v1/quotes", &user.access_token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "quote: {:?}", reply.body);
    reply.body
}

async fn convert(app: &TestApp, user: &TestUser, quote_id: &str, key: &str) -> coffer_test_support::Reply {
    let body = json!({ "quote_id": quote_id });
    app.send(
        "POST",
        "/v1/conversions",
        Some(&user.access_token),
        Some(key),
        Some(&body),
    )
    .await
}

async fn balances(app: &TestApp, user: &TestUser, eth: &str, usdt: &str) -> (String, String) {
    let e = app.wallet(user, eth).await;
    let u = app.wallet(user, usdt).await;
    (
        e["available"].as_str().unwrap().to_string(),
        u["available"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_conversion_moves_the_quoted_amounts_through_the_fx_accounts() {
    let s = setup().await;
    let q = quote(
        &s.app,
        &s.alice,
        json!({ "from_wallet_id": s.eth, "to_wallet_id": s.usdt, "from_amount": "0.5" }),
    )
    .await;
    // 3000 less 50 bps = 2985 USDT per ETH; 0.5 ETH → 1492.5 USDT.
    assert_eq!(q["rate"], "2985");
    assert_eq!(q["to_amount"], "1492.5");
    assert_eq!(q["status"], "open");
    let reply = convert(&s.app, &s.alice, q["id"].as_str().unwrap(), "k1").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["quote"]["status"], "used");
    assert_eq!(reply.body["debit"]["kind"], "conversion");
    assert_eq!(reply.body["debit"]["asset"], "ETH");
    assert_eq!(reply.body["credit"]["amount"], "1492.5");
    assert_eq!(
        balances(&s.app, &s.alice, &s.eth, &s.usdt).await,
        ("1.5".to_string(), "1492.5".to_string())
    );
    let fx = |id: &'static str| s.app.store.wallet_by_id(id);
    let fx_eth = fx("platform:ETH:fx").await.unwrap().unwrap();
    let fx_usdt = fx("platform:USDT:fx").await.unwrap().unwrap();
    assert_eq!(
        fx_eth.bucket(coffer_domain::Bucket::Available).to_string(),
        "500000000000000000"
    );
    assert_eq!(
        fx_usdt.bucket(coffer_domain::Bucket::Available).to_string(),
        "-1492500000",
        "the platform's short position"
    );
    // One audit record of the conversion, one per leg, events for both wallets.
    let filter = doc! { "action": "conversion.executed" };
    assert_eq!(s.app.count_where("audit_records", filter).await, 1);
    assert_eq!(
        s.app
            .count_where("audit_records", doc! { "action": "movement.conversion" })
            .await,
        2
    );
    // Deposit: created + balance; conversion: created + balance for each of the two wallets.
    assert_eq!(
        s.app.count_where("outbox", doc! { "user_id": &s.alice.id }).await,
        6
    );
    s.app.assert_books_balance().await;
}

#[tokio::test]
async fn naming_the_target_side_rounds_what_the_user_pays_up() {
    let s = setup().await;
    // USDT → ETH at 0.000333 less 50 bps = 0.000331335: receiving 0.0001 ETH costs
    // 0.0001 / 0.000331335 = 0.30180934… USDT, paid as 0.30181 (0.301810).
    let payment = s.app.staff(Role::Payment).await;
    s.app.deposit(&payment, &s.usdt, "10").await;
    let q = quote(
        &s.app,
        &s.alice,
        json!({ "from_wallet_id": s.usdt, "to_wallet_id": s.eth, "to_amount": "0.0001" }),
    )
    .await;
    assert_eq!(q["rate"], "0.000331335");
    assert_eq!(q["from_amount"], "0.30181");
    assert_eq!(q["to_amount"], "0.0001");
    let reply = convert(&s.app, &s.alice, q["id"].as_str().unwrap(), "k").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(
        balances(&s.app, &s.alice, &s.eth, &s.usdt).await,
        ("2.0001".to_string(), "9.69819".to_string())
    );
    s.app.assert_books_balance().await;
}

#[tokio::test]
async fn quotes_refuse_same_asset_tiny_amounts_and_bad_sides() {
    let s = setup().await;
    let eth2 = s.eth.clone();
    let post = |body: Value| s.app.post("/v1/quotes", &s.alice.access_token, body);
    let same = post(json!({ "from_wallet_id": s.eth, "to_wallet_id": eth2, "from_amount": "1" })).await;
    assert_eq!(
        (same.status, same.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "same_asset")
    );
    let tiny = post(
        json!({ "from_wallet_id": s.eth, "to_wallet_id": s.usdt, "from_amount": "0.000000000000000001" }),
    )
    .await;
    assert_eq!(
        (tiny.status, tiny.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "amount_too_small")
    );
    let both = post(
        json!({ "from_wallet_id": s.eth, "to_wallet_id": s.usdt, "from_amount": "1", "to_amount": "1" }),
    )
    .await;
    assert_eq!(
        (both.status, both.code()),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    let precise =
        post(json!({ "from_wallet_id": s.usdt, "to_wallet_id": s.eth, "from_amount": "0.0000001" })).await;
    assert_eq!(precise.code(), "amount_too_precise");
}

#[tokio::test]
async fn an_expired_quote_is_refused_and_nothing_changes() {
    let s = setup().await;
    let q = quote(
        &s.app,
        &s.alice,
        json!({ "from_wallet_id": s.eth, "to_wallet_id": s.usdt, "from_amount": "1" }),
    )
    .await;
    let id = q["id"].as_str().unwrap();
    let past = DateTime::from_millis(DateTime::now().timestamp_millis() - 1000);
    s.app
        .store
        .database()
        .collection::<coffer_store::mongodb::bson::Document>("conversion_quotes")
        .update_one(doc! { "_id": id }, doc! { "$set": { "expires_at": past } })
        .await
        .unwrap();
    let before = (s.app.count("ledger_entries").await, s.app.count("outbox").await);
    let reply = convert(&s.app, &s.alice, id, "k").await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::CONFLICT, "quote_expired")
    );
    assert_eq!(
        before,
        (s.app.count("ledger_entries").await, s.app.count("outbox").await)
    );
    assert_eq!(
        balances(&s.app, &s.alice, &s.eth, &s.usdt).await,
        ("2".to_string(), "0".to_string())
    );
}

#[tokio::test]
async fn a_quote_converts_once_even_when_executed_concurrently() {
    let s = setup().await;
    let q = quote(
        &s.app,
        &s.alice,
        json!({ "from_wallet_id": s.eth, "to_wallet_id": s.usdt, "from_amount": "0.1" }),
    )
    .await;
    let id = q["id"].as_str().unwrap().to_string();
    let runs = (0..6).map(|i| {
        let (app, alice, id) = (&s.app, &s.alice, id.clone());
        async move { convert(app, alice, &id, &format!("key-{i}")).await }
    });
    let replies = futures::future::join_all(runs).await;
    let won = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        replies
            .iter()
            .map(|r| (r.status, r.code().to_string()))
            .collect::<Vec<_>>()
    );
    for reply in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "quote_used"));
    }
    let again = convert(&s.app, &s.alice, &id, "later").await;
    assert_eq!(again.code(), "quote_used");
    assert_eq!(
        balances(&s.app, &s.alice, &s.eth, &s.usdt).await,
        ("1.9".to_string(), "298.5".to_string())
    );
    s.app.assert_books_balance().await;
}

#[tokio::test]
async fn the_same_idempotency_key_replays_the_conversion() {
    let s = setup().await;
    let q = quote(
        &s.app,
        &s.alice,
        json!({ "from_wallet_id": s.eth, "to_wallet_id": s.usdt, "from_amount": "1" }),
    )
    .await;
    let id = q["id"].as_str().unwrap();
    let first = convert(&s.app, &s.alice, id, "same").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = convert(&s.app, &s.alice, id, "same").await;
    assert_eq!(second.status, StatusCode::CREATED, "{:?}", second.body);
    assert_eq!(second.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(second.body, first.body);
    assert_eq!(
        balances(&s.app, &s.alice, &s.eth, &s.usdt).await,
        ("1".to_string(), "2985".to_string())
    );
}

#[tokio::test]
async fn another_users_wallet_or_quote_is_not_found_and_funds_are_checked() {
    let s = setup().await;
    let bob = s.app.register().await;
    let bobs_usdt = s.app.create_wallet(&bob, "USDT").await;
    let into_bob = s
        .app
        .post(
            "/v1/quotes",
            &s.alice.access_token,
            json!({ "from_wallet_id": s.eth, "to_wallet_id": bobs_usdt, "from_amount": "1" }),
        )
        .await;
    assert_eq!(
        (into_bob.status, into_bob.code()),
        (StatusCode::NOT_FOUND, "wallet_not_found")
    );
    let q = quote(
        &s.app,
        &s.alice,
        json!({ "from_wallet_id": s.eth, "to_wallet_id": s.usdt, "from_amount": "1" }),
    )
    .await;
    let stolen = convert(&s.app, &bob, q["id"].as_str().unwrap(), "k").await;
    assert_eq!(
        (stolen.status, stolen.code()),
        (StatusCode::NOT_FOUND, "quote_not_found")
    );
    let too_much = quote(
        &s.app,
        &s.alice,
        json!({ "from_wallet_id": s.eth, "to_wallet_id": s.usdt, "from_amount": "3" }),
    )
    .await;
    let broke = convert(&s.app, &s.alice, too_much["id"].as_str().unwrap(), "k2").await;
    assert_eq!(
        (broke.status, broke.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds")
    );
    assert_eq!(
        balances(&s.app, &s.alice, &s.eth, &s.usdt).await,
        ("2".to_string(), "0".to_string())
    );
    let open = s
        .app
        .count_where("conversion_quotes", doc! { "status": "open" })
        .await;
    assert_eq!(open, 2, "a refused execution leaves its quote open");
}
