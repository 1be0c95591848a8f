//! Payment rails are bounded (issue 13 item 2): under its rail's caps a deposit is credited;
//! above `deposit_max`, or past the rail's `daily_limit` of the UTC day (a counter in the
//! database, shared by every replica), it is held for finance or an admin, who approve it (credited
//! once, through the ordinary movement path) or reject it (nothing credited). Every rail deposit
//! is audited; above `two_person_adjustment_above` an approval needs two different staff members.

use coffer_domain::asset::{AssetsFile, RailSpec};
use coffer_domain::AssetCatalog;
use coffer_store::audit::AuditRecord;
use coffer_store::mongodb::bson::doc;
use coffer_store::Role;
use coffer_test_support::{Options, Reply, TestApp, TestUser, DEV_ASSETS};
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// ETH's `payment` rail capped at 5 per deposit and 8 per day; two approvers above
/// `two_person_above` when given.
fn options(two_person_above: Option<&str>) -> Options {
    let mut file: AssetsFile = serde_json::from_str(DEV_ASSETS).unwrap();
    let eth = file.assets.iter_mut().find(|a| a.symbol == "ETH").unwrap();
    let caps = RailSpec {
        deposit_max: "5".into(),
        daily_limit: "8".into(),
    };
    eth.rails.insert("payment".into(), caps);
    eth.two_person_adjustment_above = two_person_above.map(String::from);
    Options {
        assets: Some(AssetCatalog::from_specs(&file.assets).unwrap()),
        ..Options::default()
    }
}

fn reason() -> Value {
    json!({ "reason": "payer identity checked, ticket 4711" })
}

async fn report(app: &TestApp, payment: &TestUser, wallet: &str, amount: &str, reference: &str) -> Reply {
    let body = json!({ "wallet_id": wallet, "amount": amount, "external_reference": reference });
    app.post("/v1/deposits", &payment.access_token, body).await
}

async fn available(app: &TestApp, user: &TestUser, wallet: &str) -> String {
    app.wallet(user, wallet).await["available"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn audited(app: &TestApp, action: &str) -> u64 {
    app.count_where("audit_records", doc! { "action": action }).await
}

async fn credits_of(app: &TestApp, reference: &str) -> u64 {
    let key = format!("deposit:payment:{reference}");
    app.count_where("transactions", doc! { "ledger_key": key }).await
}

async fn approve(app: &TestApp, staff: &TestUser, id: &str) -> Reply {
    let path = format!("/v1/admin/rail-deposits/{id}/approve");
    app.post(&path, &staff.access_token, reason()).await
}

#[tokio::test]
async fn under_the_caps_a_deposit_is_credited_and_above_deposit_max_it_waits_for_one_approval() {
    let app = TestApp::spawn_with(options(None)).await;
    let (payment, finance, admin) = (
        app.staff(Role::Payment).await,
        app.staff(Role::Finance).await,
        app.staff(Role::Admin).await,
    );
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;

    let credited = report(&app, &payment, &wallet, "5", "bank-1").await;
    assert_eq!(credited.status, StatusCode::CREATED, "{:?}", credited.body);
    assert_eq!(
        available(&app, &alice, &wallet).await,
        "5",
        "at the cap: credited"
    );

    let held = report(&app, &payment, &wallet, "5.000000000000000001", "bank-2").await;
    assert_eq!(held.status, StatusCode::ACCEPTED, "{:?}", held.body);
    assert_eq!(held.body["status"], "held");
    assert_eq!(held.body["cause"], "deposit_max");
    assert_eq!(held.body["external_reference"], "bank-2");
    let id = held.body["id"].as_str().unwrap().to_string();
    assert_eq!(available(&app, &alice, &wallet).await, "5", "nothing credited");
    assert_eq!(credits_of(&app, "bank-2").await, 0);

    let repeat = report(&app, &payment, &wallet, "5.000000000000000001", "bank-2").await;
    assert_eq!(
        (repeat.status, &repeat.body),
        (StatusCode::ACCEPTED, &held.body),
        "the same reference: the same held record"
    );
    let other = report(&app, &payment, &wallet, "6", "bank-2").await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::CONFLICT, "external_reference_conflict")
    );
    assert_eq!(app.count("rail_deposits").await, 1);

    let queue = app
        .get("/v1/admin/rail-deposits?status=held", &finance.access_token)
        .await;
    assert_eq!(queue.status, StatusCode::OK, "{:?}", queue.body);
    let ids: Vec<&str> = queue
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);

    // Finance and an admin approve at the same moment: one credits, the other is told it is done.
    let (first, second) = tokio::join!(approve(&app, &finance, &id), approve(&app, &admin, &id));
    let mut statuses = vec![first.status, second.status];
    statuses.sort();
    assert_eq!(
        statuses,
        vec![StatusCode::OK, StatusCode::CONFLICT],
        "{first:?} {second:?}"
    );
    let winner = if first.status == StatusCode::OK {
        &first
    } else {
        &second
    };
    let loser = if first.status == StatusCode::OK {
        &second
    } else {
        &first
    };
    assert_eq!(loser.code(), "rail_deposit_not_held");
    assert_eq!(winner.body["rail_deposit"]["status"], "approved");
    assert_eq!(winner.body["transaction"]["kind"], "deposit");
    assert_eq!(winner.body["transaction"]["amount"], "5.000000000000000001");
    assert_eq!(available(&app, &alice, &wallet).await, "10.000000000000000001");
    assert_eq!(credits_of(&app, "bank-2").await, 1, "credited exactly once");

    let late = approve(&app, &admin, &id).await;
    assert_eq!(
        (late.status, late.code()),
        (StatusCode::CONFLICT, "rail_deposit_not_held")
    );
    let after = report(&app, &payment, &wallet, "5.000000000000000001", "bank-2").await;
    assert_eq!(
        after.status,
        StatusCode::OK,
        "a repeat after approval: the credit"
    );
    assert_eq!(after.body["id"], winner.body["transaction"]["id"]);
    assert_eq!(available(&app, &alice, &wallet).await, "10.000000000000000001");

    assert_eq!(audited(&app, "rail_deposit.held").await, 1);
    assert_eq!(audited(&app, "rail_deposit.approved").await, 1);
    assert_eq!(audited(&app, "movement.deposit").await, 2, "each credit audited");
    app.assert_books_balance().await;
    assert!(app.store.verify_audit(None).await.unwrap().valid());
}

#[tokio::test]
async fn a_rejected_rail_deposit_credits_nothing_and_stays_rejected() {
    let app = TestApp::spawn_with(options(None)).await;
    let (payment, finance) = (app.staff(Role::Payment).await, app.staff(Role::Finance).await);
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    let held = report(&app, &payment, &wallet, "7", "bank-9").await;
    let id = held.body["id"].as_str().unwrap().to_string();

    let path = format!("/v1/admin/rail-deposits/{id}/reject");
    let no_reason = app
        .post(&path, &finance.access_token, json!({ "reason": "" }))
        .await;
    assert_eq!(no_reason.code(), "invalid_reason");
    let rejected = app.post(&path, &finance.access_token, reason()).await;
    assert_eq!(rejected.status, StatusCode::OK, "{:?}", rejected.body);
    assert_eq!(rejected.body["status"], "rejected");
    assert_eq!(rejected.body["decided_by"], finance.id.as_str());
    let approved = approve(&app, &finance, &id).await;
    assert_eq!(approved.code(), "rail_deposit_not_held");
    let repeat = report(&app, &payment, &wallet, "7", "bank-9").await;
    assert_eq!(repeat.status, StatusCode::ACCEPTED);
    assert_eq!(repeat.body["status"], "rejected");
    assert_eq!(available(&app, &alice, &wallet).await, "0");
    assert_eq!(credits_of(&app, "bank-9").await, 0);
    assert_eq!(audited(&app, "rail_deposit.rejected").await, 1);
    app.assert_books_balance().await;
}

#[tokio::test]
async fn users_support_and_the_rail_itself_cannot_decide_and_are_refused_before_the_body() {
    let app = TestApp::spawn_with(options(None)).await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    let held = report(&app, &payment, &wallet, "6", "bank-3").await;
    let id = held.body["id"].as_str().unwrap().to_string();
    let support = app.staff(Role::Support).await;
    for caller in [&alice, &support, &payment] {
        for action in ["approve", "reject"] {
            let path = format!("/v1/admin/rail-deposits/{id}/{action}");
            // A body no decision accepts: the role is refused before it is parsed.
            let reply = app
                .post(&path, &caller.access_token, json!({ "nonsense": 1 }))
                .await;
            assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"));
        }
        let list = app.get("/v1/admin/rail-deposits", &caller.access_token).await;
        assert_eq!(list.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(available(&app, &alice, &wallet).await, "0");
    assert_eq!(
        app.store
            .rail_deposit(&id)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "held"
    );
}

#[tokio::test]
async fn the_daily_cap_is_one_counter_for_every_replica() {
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let replica = |database: &str| Options {
        database: Some(database.to_string()),
        ..options(None)
    };
    let one = TestApp::spawn_with(replica(&database)).await;
    let two = TestApp::spawn_with(replica(&database)).await;
    let payment = one.staff(Role::Payment).await;
    let alice = one.register().await;
    let wallet = one.create_wallet(&alice, "ETH").await;

    // Four deposits of 2.5 at once, two on each replica: any three fit in 8, four do not.
    let (a, b, c, d) = tokio::join!(
        report(&one, &payment, &wallet, "2.5", "day-a"),
        report(&two, &payment, &wallet, "2.5", "day-b"),
        report(&one, &payment, &wallet, "2.5", "day-c"),
        report(&two, &payment, &wallet, "2.5", "day-d"),
    );
    let replies = [a, b, c, d];
    let credited = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let held: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .collect();
    assert_eq!((credited, held.len()), (3, 1), "{replies:?}");
    assert_eq!(held[0].body["cause"], "daily_limit");
    assert_eq!(available(&one, &alice, &wallet).await, "7.5");

    // 0.5 still fits (exactly 8); then even the smallest amount is held.
    let fits = report(&two, &payment, &wallet, "0.5", "day-e").await;
    assert_eq!(fits.status, StatusCode::CREATED, "{:?}", fits.body);
    let past = report(&one, &payment, &wallet, "0.000000000000000001", "day-f").await;
    assert_eq!(
        (past.status, &past.body["cause"]),
        (StatusCode::ACCEPTED, &json!("daily_limit"))
    );
    assert_eq!(available(&one, &alice, &wallet).await, "8");
    let day = chrono::Utc::now().format("%Y-%m-%d");
    let counter = one
        .store
        .database()
        .collection::<coffer_store::mongodb::bson::Document>("withdrawal_velocity")
        .find_one(doc! { "_id": format!("rail:payment:ETH:{day}") })
        .await
        .unwrap()
        .expect("the rail's counter of the day");
    let total = match counter.get("total") {
        Some(coffer_store::mongodb::bson::Bson::Decimal128(total)) => total.to_string(),
        other => panic!("the counter's total is a Decimal128: {other:?}"),
    };
    // The server may print the exponent ("8.0E+18"): compared as a number (8e18 is exact in f64).
    assert_eq!(total.parse::<f64>().unwrap(), 8e18, "{total}");
    assert_eq!(audited(&one, "rail_deposit.held").await, 2);
    assert_eq!(audited(&one, "movement.deposit").await, 4);
    one.assert_books_balance().await;
}

#[tokio::test]
async fn a_large_held_deposit_needs_two_different_staff_and_never_its_owner() {
    let app = TestApp::spawn_with(options(Some("10"))).await;
    let (payment, finance, admin) = (
        app.staff(Role::Payment).await,
        app.staff(Role::Finance).await,
        app.staff(Role::Admin).await,
    );
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    let held = report(&app, &payment, &wallet, "12", "big-1").await;
    let id = held.body["id"].as_str().unwrap().to_string();

    let first = approve(&app, &finance, &id).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    assert_eq!(first.body["rail_deposit"]["status"], "held");
    assert_eq!(
        first.body["rail_deposit"]["approvals"][0]["by"],
        finance.id.as_str()
    );
    assert_eq!(first.body["transaction"], Value::Null);
    assert_eq!(
        available(&app, &alice, &wallet).await,
        "0",
        "one approval credits nothing"
    );
    let twice = approve(&app, &finance, &id).await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::FORBIDDEN, "same_approver")
    );
    assert_eq!(available(&app, &alice, &wallet).await, "0");
    let second = approve(&app, &admin, &id).await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    assert_eq!(second.body["rail_deposit"]["decided_by"], admin.id.as_str());
    assert_eq!(available(&app, &alice, &wallet).await, "12");
    assert_eq!(credits_of(&app, "big-1").await, 1);
    assert_eq!(audited(&app, "rail_deposit.approval_recorded").await, 1);

    // At the threshold one approval is enough; nobody approves a credit of their own wallet
    // (a staff wallet that predates the rule, written straight to the store).
    let (own, _) = app.store.create_wallet(&admin.id, "ETH", 18).await.unwrap();
    let small = report(&app, &payment, &own.id, "10", "own-1").await;
    let small_id = small.body["id"].as_str().unwrap().to_string();
    let by_owner = approve(&app, &admin, &small_id).await;
    assert_eq!(
        (by_owner.status, by_owner.code()),
        (StatusCode::FORBIDDEN, "own_account")
    );
    assert_eq!(credits_of(&app, "own-1").await, 0);
    let by_other = approve(&app, &finance, &small_id).await;
    assert_eq!(by_other.status, StatusCode::OK, "{:?}", by_other.body);
    assert_eq!(credits_of(&app, "own-1").await, 1);
    app.assert_books_balance().await;
}

#[tokio::test]
async fn every_rail_deposit_decision_is_in_the_verified_audit_trail() {
    let app = TestApp::spawn_with(options(None)).await;
    let (payment, finance) = (app.staff(Role::Payment).await, app.staff(Role::Finance).await);
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    report(&app, &payment, &wallet, "1", "t-1").await;
    let held = report(&app, &payment, &wallet, "9", "t-2").await;
    approve(&app, &finance, held.body["id"].as_str().unwrap()).await;
    let records: Vec<AuditRecord> = app
        .store
        .database()
        .collection::<AuditRecord>("audit_records")
        .find(
            doc! { "action": { "$in": ["rail_deposit.held", "rail_deposit.approved", "movement.deposit"] } },
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut actors: Vec<(String, String)> = records.into_iter().map(|r| (r.action, r.actor)).collect();
    actors.sort();
    let mut expected = vec![
        ("movement.deposit".to_string(), payment.id.clone()),
        ("movement.deposit".to_string(), finance.id.clone()),
        ("rail_deposit.approved".to_string(), finance.id.clone()),
        ("rail_deposit.held".to_string(), payment.id.clone()),
    ];
    expected.sort();
    assert_eq!(actors, expected);
    assert!(app.store.verify_audit(None).await.unwrap().valid());
}
