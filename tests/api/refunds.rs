//! Refunds and disputes (L10) against the real server: never more than the original (also from
//! two replicas at once), idempotent, linked both ways, visible only to the transaction's users.

use coffer_store::mongodb::bson::doc;
use coffer_store::Role;
use coffer_test_support::{Reply, TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn send(app: &TestApp, user: &TestUser, path: &str, key: Option<&str>, body: Value) -> Reply {
    app.send("POST", path, Some(&user.access_token), key, Some(&body))
        .await
}

async fn refund(app: &TestApp, user: &TestUser, original: &str, key: &str, body: Value) -> Reply {
    let path = format!("/v1/transactions/{original}/refunds");
    send(app, user, &path, Some(key), body).await
}

async fn dispute(app: &TestApp, payment: &TestUser, original: &str, amount: &str) -> Reply {
    let path = format!("/v1/transactions/{original}/disputes");
    let key = uuid::Uuid::new_v4().to_string();
    send(app, payment, &path, Some(&key), json!({ "amount": amount })).await
}

async fn resolve(app: &TestApp, payment: &TestUser, dispute: &str, outcome: &str) -> Reply {
    let path = format!("/v1/disputes/{dispute}/resolve");
    send(app, payment, &path, None, json!({ "outcome": outcome })).await
}

async fn buckets(app: &TestApp, user: &TestUser, wallet: &str) -> (String, String) {
    let view = app.wallet(user, wallet).await;
    let text = |field: &str| view[field].as_str().unwrap().to_string();
    (text("available"), text("held"))
}

fn id(reply: &Reply) -> String {
    reply.body["id"].as_str().expect("an id").to_string()
}

struct Transfer {
    alice: TestUser,
    bob: TestUser,
    payment: TestUser,
    from: String,
    to: String,
    transfer: String,
}

/// Alice pays Bob 1 ETH (she had 2); Bob also has `bob_extra` ETH of his own.
async fn transfer(app: &TestApp, bob_extra: &str) -> Transfer {
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "ETH").await;
    let to = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &from, "2").await;
    app.deposit(&payment, &to, bob_extra).await;
    let body = json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" });
    let reply = app.post("/v1/transfers", &alice.access_token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    Transfer {
        transfer: id(&reply),
        alice,
        bob,
        payment,
        from,
        to,
    }
}

#[tokio::test]
async fn a_recipient_refunds_a_transfer_in_parts_never_more_than_it_moved() {
    let app = TestApp::spawn().await;
    let t = transfer(&app, "1").await;
    let events = |user: &TestUser| app.count_where("outbox", doc! { "user_id": &user.id });
    let (alice_events, bob_events) = (events(&t.alice).await, events(&t.bob).await);
    let first = refund(&app, &t.bob, &t.transfer, "r1", json!({ "amount": "0.25" })).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    // Its events in the same transaction: created + balance for each of the two wallets.
    assert_eq!(
        (events(&t.alice).await, events(&t.bob).await),
        (alice_events + 2, bob_events + 2)
    );
    assert_eq!(first.body["kind"], "refund");
    assert_eq!(first.body["state"], "confirmed");
    assert_eq!(first.body["original_transaction_id"], t.transfer.as_str());
    assert_eq!(
        (
            first.body["from_wallet_id"].as_str(),
            first.body["to_wallet_id"].as_str()
        ),
        (Some(t.to.as_str()), Some(t.from.as_str()))
    );
    assert_eq!(buckets(&app, &t.alice, &t.from).await.0, "1.25");
    assert_eq!(buckets(&app, &t.bob, &t.to).await.0, "1.75");

    // The same key replays the refund; with another amount it is a reused key.
    let again = refund(&app, &t.bob, &t.transfer, "r1", json!({ "amount": "0.25" })).await;
    assert_eq!((again.status, id(&again)), (StatusCode::CREATED, id(&first)));
    let reused = refund(&app, &t.bob, &t.transfer, "r1", json!({ "amount": "0.3" })).await;
    assert_eq!(reused.code(), "idempotency_key_reused");

    // Past what is left of the original: refused, nothing moves (Bob could pay it).
    let over = refund(
        &app,
        &t.bob,
        &t.transfer,
        "r2",
        json!({ "amount": "0.75000000000000001" }),
    )
    .await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "exceeds_original"),
        "{:?}",
        over.body
    );
    let whole = refund(&app, &t.bob, &t.transfer, "r3", json!({})).await;
    assert_eq!(
        whole.code(),
        "exceeds_original",
        "all of it, after a part was refunded"
    );
    // Only the recipient refunds a transfer.
    let by_sender = refund(&app, &t.alice, &t.transfer, "r4", json!({ "amount": "0.1" })).await;
    assert_eq!(
        (by_sender.status, by_sender.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "not_refundable")
    );
    let by_rail = refund(&app, &t.payment, &t.transfer, "r5", json!({ "amount": "0.1" })).await;
    assert_eq!(
        by_rail.status,
        StatusCode::NOT_FOUND,
        "the rail sees only its deposits"
    );
    let rest = refund(&app, &t.bob, &t.transfer, "r6", json!({ "amount": "0.75" })).await;
    assert_eq!(rest.status, StatusCode::CREATED, "{:?}", rest.body);
    assert_eq!(buckets(&app, &t.alice, &t.from).await.0, "2");
    assert_eq!(buckets(&app, &t.bob, &t.to).await.0, "1");
    let dust = refund(
        &app,
        &t.bob,
        &t.transfer,
        "r7",
        json!({ "amount": "0.000000000000000001" }),
    )
    .await;
    assert_eq!(dust.code(), "exceeds_original");

    // Linked both ways: the original lists its refunds, to both of its users.
    for user in [&t.alice, &t.bob] {
        let original = app
            .get(&format!("/v1/transactions/{}", t.transfer), &user.access_token)
            .await;
        let returns: Vec<(String, String)> = original.body["returns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["amount"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            returns,
            [
                ("refund".to_string(), "0.25".to_string()),
                ("refund".to_string(), "0.75".to_string())
            ]
        );
    }
    assert_eq!(
        app.count_where("audit_records", doc! { "action": "movement.refund" })
            .await,
        2
    );
    app.assert_books_balance().await;
}

#[tokio::test]
async fn another_user_can_neither_see_nor_refund_a_transaction() {
    let app = TestApp::spawn().await;
    let t = transfer(&app, "1").await;
    let carol = app.register().await;
    let seen = app
        .get(&format!("/v1/transactions/{}", t.transfer), &carol.access_token)
        .await;
    assert_eq!(seen.status, StatusCode::NOT_FOUND);
    let refunded = refund(&app, &carol, &t.transfer, "c1", json!({ "amount": "0.1" })).await;
    assert_eq!(
        (refunded.status, refunded.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let unknown = refund(&app, &t.bob, "no-such-transaction", "c2", json!({})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let staff = app.staff(Role::Support).await;
    let by_staff = refund(&app, &staff, &t.transfer, "c3", json!({})).await;
    assert_eq!(by_staff.status, StatusCode::FORBIDDEN);
    let disputed = dispute(&app, &t.bob, &t.transfer, "0.1").await;
    assert_eq!(
        disputed.status,
        StatusCode::FORBIDDEN,
        "users do not open disputes"
    );
    assert_eq!(buckets(&app, &t.bob, &t.to).await.0, "2");
}

#[tokio::test]
async fn the_rail_refunds_and_disputes_its_deposit_and_a_released_dispute_frees_its_amount() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    let deposit = id(&app.deposit(&payment, &wallet, "1").await);

    let refunded = refund(&app, &payment, &deposit, "p1", json!({ "amount": "0.2" })).await;
    assert_eq!(refunded.status, StatusCode::CREATED, "{:?}", refunded.body);
    assert_eq!(buckets(&app, &alice, &wallet).await, ("0.8".into(), "0".into()));
    let by_user = refund(&app, &alice, &deposit, "p2", json!({ "amount": "0.1" })).await;
    assert_eq!(
        by_user.code(),
        "not_refundable",
        "a deposit is refunded by its rail"
    );

    let open = dispute(&app, &payment, &deposit, "0.5").await;
    assert_eq!(open.status, StatusCode::CREATED, "{:?}", open.body);
    assert_eq!(
        (open.body["kind"].as_str(), open.body["state"].as_str()),
        (Some("dispute"), Some("disputed"))
    );
    assert_eq!(buckets(&app, &alice, &wallet).await, ("0.3".into(), "0.5".into()));
    // Another deposit, so that only the original's amount limits the next dispute.
    app.deposit(&payment, &wallet, "1").await;
    let too_much = dispute(&app, &payment, &deposit, "0.4").await;
    assert_eq!(
        too_much.code(),
        "exceeds_original",
        "0.2 refunded + 0.5 disputed + 0.4 > 1"
    );
    let by_user = resolve(&app, &alice, &id(&open), "released").await;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN);

    let released = resolve(&app, &payment, &id(&open), "released").await;
    assert_eq!(
        (released.status, released.body["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{:?}",
        released.body
    );
    assert_eq!(buckets(&app, &alice, &wallet).await, ("1.8".into(), "0".into()));
    // The released amount may be disputed again: 0.2 + 0.8 is the whole deposit.
    let second = dispute(&app, &payment, &deposit, "0.8").await;
    assert_eq!(second.status, StatusCode::CREATED, "{:?}", second.body);
    let reversed = resolve(&app, &payment, &id(&second), "reversed").await;
    assert_eq!(reversed.body["state"], "confirmed");
    assert_eq!(buckets(&app, &alice, &wallet).await, ("1".into(), "0".into()));
    let repeat = resolve(&app, &payment, &id(&second), "reversed").await;
    assert_eq!(
        (repeat.status, repeat.body["state"].as_str()),
        (StatusCode::OK, Some("confirmed"))
    );
    let other_way = resolve(&app, &payment, &id(&second), "released").await;
    assert_eq!(
        (other_way.status, other_way.code()),
        (StatusCode::CONFLICT, "dispute_not_open")
    );
    assert_eq!(
        buckets(&app, &alice, &wallet).await,
        ("1".into(), "0".into()),
        "resolved once"
    );
    let not_a_dispute = resolve(&app, &payment, &deposit, "released").await;
    assert_eq!(not_a_dispute.status, StatusCode::NOT_FOUND);

    let original = app
        .get(&format!("/v1/transactions/{deposit}"), &alice.access_token)
        .await;
    let states: Vec<&str> = original.body["returns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["confirmed", "failed", "confirmed"]);
    assert_eq!(
        app.count_where("audit_records", doc! { "action": "dispute.resolved" })
            .await,
        2
    );
    app.assert_books_balance().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_and_resolutions_from_two_replicas_at_once_return_at_most_the_original_once() {
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let options = || coffer_test_support::Options {
        database: Some(database.clone()),
        ..Default::default()
    };
    let (one, two) = (
        TestApp::spawn_with(options()).await,
        TestApp::spawn_with(options()).await,
    );
    // Bob holds 6 ETH, so only the original's amount limits his refunds of Alice's 1 ETH.
    let t = transfer(&one, "5").await;
    let replicas = [&one, &two];
    let replies = futures::future::join_all((0..8).map(|i| {
        let key = format!("race-{i}");
        let transfer = t.transfer.clone();
        let bob = &t.bob;
        async move { refund(replicas[i % 2], bob, &transfer, &key, json!({ "amount": "0.3" })).await }
    }))
    .await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let refused: Vec<_> = replies
        .iter()
        .filter(|r| r.status != StatusCode::CREATED)
        .map(|r| r.code())
        .collect();
    assert_eq!(created, 3, "three of 0.3 fit in 1: {replies:?}");
    assert_eq!(refused, vec!["exceeds_original"; 5]);
    assert_eq!(buckets(&one, &t.alice, &t.from).await.0, "1.9");
    assert_eq!(buckets(&two, &t.bob, &t.to).await.0, "5.1");

    // One dispute resolved both ways at once, on the two replicas: one outcome wins.
    let alice = &t.alice;
    let deposit = id(&one.deposit(&t.payment, &t.from, "1").await);
    let open = id(&dispute(&one, &t.payment, &deposit, "1").await);
    let (a, b) = tokio::join!(
        resolve(&one, &t.payment, &open, "released"),
        resolve(&two, &t.payment, &open, "reversed")
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT], "{a:?} {b:?}");
    let expected = if a.status == StatusCode::OK { "2.9" } else { "1.9" };
    assert_eq!(
        buckets(&one, alice, &t.from).await,
        (expected.to_string(), "0".to_string())
    );
    assert_eq!(
        one.count_where("audit_records", doc! { "action": "dispute.resolved" })
            .await,
        1
    );
    one.assert_books_balance().await;
}
