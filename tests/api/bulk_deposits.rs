//! Bulk postings for payment rails (issue 18 item 4): up to 1,000 deposits in one request, each
//! with its own reference and outcome, either independent (group commit: far fewer database
//! transactions than deposits) or atomic (one database transaction: all credited or none).

use coffer_domain::asset::{AssetsFile, RailSpec};
use coffer_domain::AssetCatalog;
use coffer_store::mongodb::bson::doc;
use coffer_store::Role;
use coffer_test_support::{Options, Reply, TestApp, TestUser, DEV_ASSETS};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// USDT's `payment` rail capped at 1,000 per deposit (and 10,000,000 a day).
fn options() -> Options {
    let mut file: AssetsFile = serde_json::from_str(DEV_ASSETS).unwrap();
    let usdt = file.assets.iter_mut().find(|a| a.symbol == "USDT").unwrap();
    let caps = RailSpec {
        deposit_max: "1000".into(),
        daily_limit: "10000000".into(),
    };
    usdt.rails.insert("payment".into(), caps);
    Options {
        assets: Some(AssetCatalog::from_specs(&file.assets).unwrap()),
        ..Options::default()
    }
}

fn deposit(wallet: &str, amount: &str, reference: &str) -> Value {
    json!({ "wallet_id": wallet, "amount": amount, "external_reference": reference })
}

async fn bulk(app: &TestApp, payment: &TestUser, atomic: bool, deposits: Vec<Value>) -> Reply {
    let body = json!({ "atomic": atomic, "deposits": deposits });
    app.post("/v1/deposits/bulk", &payment.access_token, body).await
}

/// `n` deposits of 1 USDT, round robin over `wallets`, references `<prefix>-<i>`.
fn ones(wallets: &[String], prefix: &str, range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|i| deposit(&wallets[i % wallets.len()], "1", &format!("{prefix}-{i}")))
        .collect()
}

async fn available(app: &TestApp, user: &TestUser, wallet: &str) -> String {
    app.wallet(user, wallet).await["available"]
        .as_str()
        .unwrap()
        .to_string()
}

/// How many database transactions group commit has run in this app (batches) and how many
/// movements they carried.
fn batches(app: &TestApp) -> (u64, f64) {
    let families = app.registry.gather();
    let family = families
        .iter()
        .find(|f| f.name() == "coffer_ledger_batch_movements")
        .expect("the batch histogram");
    let histogram = family.get_metric()[0].get_histogram();
    (histogram.get_sample_count(), histogram.get_sample_sum())
}

async fn rail_credits(app: &TestApp, prefix: &str) -> u64 {
    let pattern = format!("^deposit:payment:{prefix}-");
    app.count_where("transactions", doc! { "ledger_key": { "$regex": pattern } })
        .await
}

struct Setup {
    app: TestApp,
    payment: TestUser,
    users: Vec<TestUser>,
    wallets: Vec<String>,
}

async fn setup(users: usize) -> Setup {
    let app = TestApp::spawn_with(options()).await;
    let payment = app.staff(Role::Payment).await;
    let mut all = Vec::new();
    let mut wallets = Vec::new();
    for _ in 0..users {
        let user = app.register().await;
        wallets.push(app.create_wallet(&user, "USDT").await);
        all.push(user);
    }
    Setup {
        app,
        payment,
        users: all,
        wallets,
    }
}

#[tokio::test]
async fn an_independent_bulk_gives_each_deposit_its_own_outcome_through_group_commit() {
    let Setup {
        app,
        payment,
        users,
        wallets,
    } = setup(4).await;
    let mut deposits = ones(&wallets, "ind", 0..997);
    deposits.push(deposit(&wallets[0], "5000", "ind-held")); // above deposit_max: held
    deposits.push(deposit("no-such-wallet", "1", "ind-nowallet")); // refused alone
    deposits.push(deposit(&wallets[1], "1.0000001", "ind-precise")); // USDT has 6 decimals
    let (batches_before, _) = batches(&app);

    let reply = bulk(&app, &payment, false, deposits.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = &reply.body;
    assert_eq!(
        (
            body["credited"].as_u64(),
            body["held"].as_u64(),
            body["refused"].as_u64()
        ),
        (Some(997), Some(1), Some(2))
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert_eq!(results[5]["index"], 5);
    assert_eq!(results[5]["external_reference"], "ind-5");
    assert_eq!(results[5]["status"], "credited");
    assert_eq!(results[997]["status"], "held");
    assert!(results[997]["rail_deposit_id"].is_string());
    assert_eq!(results[998]["status"], "refused");
    assert_eq!(results[998]["code"], "wallet_not_found");
    assert_eq!(results[999]["code"], "amount_too_precise");
    // 997 credits in group commit's batches (at most 128 each), not one transaction apiece.
    let (batches_after, _) = batches(&app);
    let used = batches_after - batches_before;
    assert!(
        (8..=40).contains(&used),
        "997 credits took {used} database transactions"
    );

    // 997 round robin over 4 wallets: 250, 249, 249, 249.
    let expected = ["250", "249", "249", "249"];
    for ((user, wallet), amount) in users.iter().zip(&wallets).zip(expected) {
        assert_eq!(available(&app, user, wallet).await, amount);
    }
    assert_eq!(rail_credits(&app, "ind").await, 997);
    app.assert_books_balance().await;

    // The same deposits again (a new Idempotency-Key): every reference is answered, none
    // credited twice; the held one is still held.
    let again = bulk(&app, &payment, false, deposits).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(
        (
            again.body["credited"].as_u64(),
            again.body["already_credited"].as_u64(),
            again.body["held"].as_u64()
        ),
        (Some(0), Some(997), Some(1))
    );
    assert_eq!(
        again.body["results"][5]["transaction_id"],
        results[5]["transaction_id"]
    );
    assert_eq!(rail_credits(&app, "ind").await, 997);
    assert_eq!(available(&app, &users[0], &wallets[0]).await, "250");
}

#[tokio::test]
async fn an_atomic_bulk_credits_every_deposit_in_one_transaction_or_none() {
    let Setup {
        app,
        payment,
        users,
        wallets,
    } = setup(2).await;

    // One bad deposit anywhere: nothing is credited, and the answer names it.
    let mut bad = ones(&wallets, "atom", 0..1000);
    bad[737] = deposit("no-such-wallet", "1", "atom-737");
    let refused = bulk(&app, &payment, true, bad).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.text);
    assert_eq!(refused.body["code"], "wallet_not_found");
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .starts_with("deposits[737]: "));
    let mut precise = ones(&wallets, "atom", 0..1000);
    precise[3] = deposit(&wallets[0], "0.0000001", "atom-3");
    let refused = bulk(&app, &payment, true, precise).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_eq!(refused.body["field"], "deposits[3].amount");
    let mut capped = ones(&wallets, "atom", 0..1000);
    capped[999] = deposit(&wallets[1], "1000.000001", "atom-999");
    let refused = bulk(&app, &payment, true, capped).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert_eq!(refused.body["code"], "rail_caps_exceeded");
    assert_eq!(rail_credits(&app, "atom").await, 0);
    assert_eq!(
        app.count_where("rail_deposits", doc! {}).await,
        0,
        "an atomic refusal holds nothing"
    );
    assert_eq!(available(&app, &users[0], &wallets[0]).await, "0");

    // All good: 1,000 credits in exactly one database transaction.
    let (count_before, sum_before) = batches(&app);
    let reply = bulk(&app, &payment, true, ones(&wallets, "atom", 0..1000)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["credited"], 1000);
    let (count_after, sum_after) = batches(&app);
    assert_eq!((count_after - count_before, sum_after - sum_before), (1, 1000.0));
    assert_eq!(available(&app, &users[0], &wallets[0]).await, "500");
    assert_eq!(available(&app, &users[1], &wallets[1]).await, "500");
    assert_eq!(rail_credits(&app, "atom").await, 1000);
    app.assert_books_balance().await;

    // Half of them again with 500 new ones: the old are answered as credited before, the new
    // credited, nothing twice.
    let reply = bulk(&app, &payment, true, ones(&wallets, "atom", 500..1500)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        (
            reply.body["credited"].as_u64(),
            reply.body["already_credited"].as_u64()
        ),
        (Some(500), Some(500))
    );
    assert_eq!(rail_credits(&app, "atom").await, 1500);
    assert_eq!(available(&app, &users[0], &wallets[0]).await, "750");
    app.assert_books_balance().await;
}

#[tokio::test]
async fn two_replicas_posting_overlapping_atomic_bulks_credit_each_reference_once() {
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let replica = || Options {
        database: Some(database.clone()),
        ..options()
    };
    let one = TestApp::spawn_with(replica()).await;
    let two = TestApp::spawn_with(replica()).await;
    let payment = one.staff(Role::Payment).await;
    let alice = one.register().await;
    let wallets = vec![one.create_wallet(&alice, "USDT").await];

    // References 0..600 on one replica and 300..900 on the other, at once.
    let (a, b) = tokio::join!(
        bulk(&one, &payment, true, ones(&wallets, "race", 0..600)),
        bulk(&two, &payment, true, ones(&wallets, "race", 300..900)),
    );
    for reply in [&a, &b] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let answered =
            reply.body["credited"].as_u64().unwrap() + reply.body["already_credited"].as_u64().unwrap();
        assert_eq!(answered, 600);
    }
    let credited = a.body["credited"].as_u64().unwrap() + b.body["credited"].as_u64().unwrap();
    assert_eq!(
        credited, 900,
        "each of the 900 references credited by exactly one request"
    );
    assert_eq!(rail_credits(&one, "race").await, 900);
    assert_eq!(available(&one, &alice, &wallets[0]).await, "900");
    one.assert_books_balance().await;
}

#[tokio::test]
async fn a_bulk_is_the_payment_roles_bounded_and_checked_before_anything_moves() {
    let Setup {
        app,
        payment,
        users,
        wallets,
    } = setup(1).await;

    // Another role is refused before the body is read (this one is not even JSON).
    let key = uuid::Uuid::new_v4().to_string();
    let garbage = json!("not a bulk request");
    let user = app
        .send(
            "POST",
            "/v1/deposits/bulk",
            Some(&users[0].access_token),
            Some(&key),
            Some(&garbage),
        )
        .await;
    assert_eq!(user.status, StatusCode::FORBIDDEN, "{}", user.text);

    let none = bulk(&app, &payment, false, vec![]).await;
    assert_eq!(
        (none.status, none.body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("deposits"))
    );
    let many = bulk(&app, &payment, false, ones(&wallets, "many", 0..1001)).await;
    assert_eq!(
        (many.status, many.body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("deposits"))
    );
    let mut twice = ones(&wallets, "twice", 0..3);
    twice[2] = deposit(&wallets[0], "2", "twice-0");
    let twice = bulk(&app, &payment, false, twice).await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);
    assert_eq!(twice.body["field"], "deposits[2].external_reference");

    // 1,000 deposits fit the bulk body limit (they would not fit the API's default 64 KiB);
    // a body above 512 KiB does not.
    let padded: Vec<Value> = (0..1000)
        .map(|i| deposit(&wallets[0], "1", &format!("{i:0>120}")))
        .collect();
    let big = bulk(&app, &payment, false, padded).await;
    assert_eq!(big.status, StatusCode::OK, "{}", big.text);
    assert_eq!(big.body["credited"], 1000);
    let huge: Vec<Value> = (0..1000)
        .map(|i| json!({ "wallet_id": &wallets[0], "amount": format!("{:0>500}", 1), "external_reference": format!("h-{i}") }))
        .collect();
    let huge = bulk(&app, &payment, false, huge).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", huge.text);
    assert_eq!(
        rail_credits(&app, "many").await + rail_credits(&app, "twice").await,
        0
    );
    assert_eq!(available(&app, &users[0], &wallets[0]).await, "1000");
}
