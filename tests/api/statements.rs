//! Issue 18, items 1 and 2: a wallet's balance as of a past instant and its statements (JSON
//! pages and CSV), against the real server; the two agree with `as_of`, and every read is an
//! indexed one.

use std::collections::BTreeMap;

use coffer_domain::{Amount, LedgerTransaction, SignedAmount, TxState};
use coffer_store::inspect::QueryLog;
use coffer_store::Role;
use coffer_test_support::{Options, TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// An instant between two operations: entries are dated to the millisecond, so a pause on each
/// side keeps the instant strictly between them.
async fn instant() -> String {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    at
}

async fn as_of(app: &TestApp, user: &TestUser, wallet: &str, at: &str) -> Value {
    let reply = app
        .get(&format!("/v1/wallets/{wallet}?as_of={at}"), &user.access_token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "as_of {at}: {:?}", reply.body);
    assert_eq!(reply.body["as_of"], at);
    reply.body
}

fn balances(view: &Value) -> [String; 4] {
    ["available", "pending", "held", "total"].map(|b| view[b].as_str().unwrap_or_default().to_string())
}

fn signed(text: &str) -> SignedAmount {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    SignedAmount::new(Amount::parse_decimal(digits, 18).expect("an amount"), negative)
}

fn add(a: SignedAmount, b: SignedAmount) -> SignedAmount {
    a.plus(&coffer_domain::ledger::BalanceDelta {
        amount: b.magnitude,
        negative: b.negative,
    })
    .expect("within the limit")
}

/// Every page of the JSON statement, `limit` entries a page.
async fn statement_pages(app: &TestApp, user: &TestUser, wallet: &str, from: &str, to: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/wallets/{wallet}/statement?from={from}&to={to}&limit=2");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get(&path, &user.access_token).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        cursor = page.body["next_cursor"].as_str().map(String::from);
        pages.push(page.body);
        if cursor.is_none() {
            return pages;
        }
        assert!(pages.len() < 100, "bounded");
    }
}

/// Alice's wallet through a deposit, a transfer out, a withdrawal hold (two entries in one
/// movement), its release (a state transition, the other write path) and a second deposit,
/// with an instant before and after each.
async fn history(app: &TestApp, alice: &TestUser, wallet: &str, bob_wallet: &str) -> Vec<String> {
    let payment = app.staff(Role::Payment).await;
    let mut at = vec![instant().await];
    app.deposit(&payment, wallet, "10").await;
    at.push(instant().await);
    let transfer = json!({ "from_wallet_id": wallet, "to_wallet_id": bob_wallet, "amount": "3" });
    assert_eq!(
        app.post("/v1/transfers", &alice.access_token, transfer)
            .await
            .status,
        201
    );
    at.push(instant().await);
    let destination = format!("0x{}", "cd".repeat(20));
    let withdrawal = app
        .withdraw(
            alice,
            json!({ "wallet_id": wallet, "amount": "1.5", "destination_address": destination }),
        )
        .await;
    assert_eq!(withdrawal.status, StatusCode::CREATED, "{:?}", withdrawal.body);
    at.push(instant().await);
    let hold =
        LedgerTransaction::withdrawal_hold("ETH", wallet, Amount::parse_decimal("1.5", 18).unwrap()).unwrap();
    let release = coffer_store::transitions::Transition::new(
        withdrawal.body["id"].as_str().unwrap(),
        TxState::PendingBroadcast,
        TxState::Failed,
        "broadcast refused by the node",
    )
    .with_ledger(LedgerTransaction::reversal_of(&hold));
    app.store.apply_transition(&release).await.unwrap();
    at.push(instant().await);
    app.deposit(&payment, wallet, "0.25").await;
    at.push(instant().await);
    at
}

#[tokio::test]
async fn balance_as_of_each_instant_is_the_one_computed_by_hand() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    let at = history(&app, &alice, &wallet, &bob_wallet).await;

    // available, pending, held, total after each step, by hand.
    let expected = [
        ["0", "0", "0", "0"],
        ["10", "0", "0", "10"],
        ["7", "0", "0", "7"],
        ["5.5", "0", "1.5", "7"],
        ["7", "0", "0", "7"],
        ["7.25", "0", "0", "7.25"],
    ];
    for (instant, want) in at.iter().zip(expected) {
        let view = as_of(&app, &alice, &wallet, instant).await;
        assert_eq!(balances(&view), want.map(String::from), "as of {instant}");
    }
    // The last instant is after everything: it equals the cached balance now.
    let now = app.wallet(&alice, &wallet).await;
    assert_eq!(balances(&now), expected[5].map(String::from));
    assert!(now.get("as_of").is_none(), "a plain read is not an as_of read");
    // The recipient's history is its own.
    let bob_then = as_of(&app, &bob, &bob_wallet, &at[2]).await;
    assert_eq!(bob_then["available"], "3");
    app.assert_books_balance().await;
}

#[tokio::test]
async fn statement_pages_and_csv_agree_with_as_of_and_with_each_other() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    let at = history(&app, &alice, &wallet, &bob_wallet).await;

    // The whole history, and a window in the middle (after the first deposit, up to the hold).
    for (from, to, entries) in [(&at[0], &at[5], 7), (&at[1], &at[3], 3)] {
        let pages = statement_pages(&app, &alice, &wallet, from, to).await;
        let items: Vec<&Value> = pages
            .iter()
            .flat_map(|p| p["items"].as_array().unwrap().iter())
            .collect();
        assert_eq!(items.len(), entries, "from {from} to {to}");
        for page in &pages {
            assert_eq!(
                page["opening"], pages[0]["opening"],
                "every page has the same opening"
            );
            assert_eq!(page["closing"], pages[0]["closing"]);
        }
        let opening = &pages[0]["opening"];
        let closing = &pages[0]["closing"];
        assert_eq!(
            balances(opening),
            balances(&as_of(&app, &alice, &wallet, from).await)
        );
        assert_eq!(
            balances(closing),
            balances(&as_of(&app, &alice, &wallet, to).await)
        );

        // opening + each entry == its balance_after; the last one is the closing.
        let mut running: BTreeMap<&str, SignedAmount> = ["available", "pending", "held"]
            .into_iter()
            .map(|b| (b, signed(opening[b].as_str().unwrap())))
            .collect();
        let mut seq = None;
        for item in &items {
            let bucket = item["bucket"].as_str().unwrap();
            let slot = running.get_mut(bucket).unwrap();
            *slot = add(*slot, signed(item["amount"].as_str().unwrap()));
            for (b, value) in &running {
                assert_eq!(
                    signed(item["balance_after"][*b].as_str().unwrap()),
                    *value,
                    "{b} after {item}"
                );
            }
            let this = item["seq"].as_i64().unwrap();
            assert!(seq.is_none_or(|s| this == s + 1), "consecutive seq");
            seq = Some(this);
        }
        for (b, value) in &running {
            assert_eq!(signed(closing[*b].as_str().unwrap()), *value, "closing {b}");
        }
        // At the very instant of an entry, as_of includes it (and every entry of that instant):
        // the balance after the last entry posted then.
        for (i, item) in items.iter().enumerate() {
            let posted_at = item["posted_at"].as_str().unwrap();
            if items
                .get(i + 1)
                .is_some_and(|next| next["posted_at"] == item["posted_at"])
            {
                continue;
            }
            let view = as_of(&app, &alice, &wallet, posted_at).await;
            assert_eq!(
                balances(&view)[..3],
                balances(&item["balance_after"])[..3],
                "as of the instant of {item}"
            );
        }

        // The CSV: header, opening, the same entries in the same order, closing.
        let csv = app
            .get(
                &format!("/v1/wallets/{wallet}/statement.csv?from={from}&to={to}"),
                &alice.access_token,
            )
            .await;
        assert_eq!(csv.status, StatusCode::OK, "{}", csv.text);
        assert!(csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        let rows: Vec<Vec<&str>> = csv.text.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(rows[0].join(","), coffer_api::statements::CSV_HEADER);
        assert_eq!(rows.len(), entries + 3);
        let (first, last) = (&rows[1], &rows[rows.len() - 1]);
        assert_eq!(first[0], "opening");
        assert_eq!(first[8..12], balances(opening).each_ref().map(String::as_str));
        assert_eq!(last[0], "closing");
        assert_eq!(last[8..12], balances(closing).each_ref().map(String::as_str));
        for (row, item) in rows[2..rows.len() - 1].iter().zip(&items) {
            let after = balances(&item["balance_after"]);
            let json_row = [
                "entry".to_string(),
                item["seq"].to_string(),
                item["id"].as_str().unwrap().into(),
                item["transaction_id"].as_str().unwrap().into(),
                item["posted_at"].as_str().unwrap().into(),
                item["kind"].as_str().unwrap().into(),
                item["bucket"].as_str().unwrap().into(),
                item["amount"].as_str().unwrap().into(),
            ]
            .into_iter()
            .chain(after)
            .collect::<Vec<String>>();
            assert_eq!(row, &json_row.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}

#[tokio::test]
async fn another_user_gets_404_for_as_of_and_statements() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, mallory) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "2").await;
    let at = instant().await;
    // The wallet endpoint's own answer to another user, which every history read must match.
    let plain = app
        .get(&format!("/v1/wallets/{wallet}"), &mallory.access_token)
        .await;
    assert_eq!(plain.status, StatusCode::NOT_FOUND);
    for path in [
        format!("/v1/wallets/{wallet}?as_of={at}"),
        format!("/v1/wallets/{wallet}/statement?from=2020-01-01T00:00:00Z&to={at}"),
        format!("/v1/wallets/{wallet}/statement.csv?from=2020-01-01T00:00:00Z&to={at}"),
    ] {
        let reply = app.get(&path, &mallory.access_token).await;
        assert_eq!(reply.status, plain.status, "{path}");
        assert_eq!(reply.code(), plain.code(), "{path}");
        assert!(!reply.text.contains("\"2\""), "no balance leaks: {}", reply.text);
        let own = app.get(&path, &alice.access_token).await;
        assert_eq!(own.status, StatusCode::OK, "{path}: {}", own.text);
    }
}

#[tokio::test]
async fn a_bad_instant_is_a_400_problem_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let alice = app.register().await;
    let wallet = app.create_wallet(&alice, "ETH").await;
    app.deposit(&payment, &wallet, "2").await;
    let before = (app.count("ledger_entries").await, app.count("transactions").await);
    for (query, field) in [
        ("?as_of=yesterday", "as_of"),
        ("?as_of=2026-12-02T10:00:00", "as_of"), // no offset
        ("?as_of=2026-13-02T10:00:00Z", "as_of"),
        ("?as_of=", "as_of"),
        ("/statement?from=2026-12-02", "from"),
        (
            "/statement?from=2026-12-02T10:00:00Z&to=2026-12-01T10:00:00Z",
            "to",
        ),
        ("/statement?from=2026-12-01T10:00:00Z&cursor=1.2", "cursor"),
        ("/statement.csv?to=2026-12-01T10:00:00Z", "from"),
    ] {
        let reply = app
            .get(&format!("/v1/wallets/{wallet}{query}"), &alice.access_token)
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}: {:?}", reply.body);
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{query}"
        );
        assert_eq!(reply.code(), "invalid_query", "{query}");
        if query.contains("from=2026-12-02T10") || query.contains("cursor") || query.starts_with("?") {
            assert_eq!(reply.body["field"], field, "{query}: {:?}", reply.body);
        }
    }
    assert_eq!(
        (app.count("ledger_entries").await, app.count("transactions").await),
        before
    );
    assert_eq!(app.wallet(&alice, &wallet).await["available"], "2");
}

#[tokio::test]
async fn a_csv_statement_past_its_row_cap_is_refused_and_old_entries_are_explicit() {
    let app = TestApp::spawn().await;
    let alice = app.register().await;
    let wallet_id = app.create_wallet(&alice, "ETH").await;
    let wallet = app.store.wallet_by_id(&wallet_id).await.unwrap().unwrap();
    // A whole millisecond, as entries are dated.
    let start = coffer_store::codec::from_millis(chrono::Utc::now().timestamp_millis() - 3_600_000);
    let one = SignedAmount::new(Amount::parse_decimal("0.001", 18).unwrap(), false);
    let cap = coffer_api::statements::STATEMENT_CSV_ROWS_MAX as usize;
    coffer_store::history::seed_history(&app.store, &wallet, &vec![one; cap + 1], start, 1)
        .await
        .unwrap();
    let from = (start - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let csv = app
        .get(
            &format!("/v1/wallets/{wallet_id}/statement.csv?from={from}"),
            &alice.access_token,
        )
        .await;
    assert_eq!(csv.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", csv.text);
    assert_eq!(csv.code(), "statement_too_large");
    // One entry fewer fits; the JSON statement pages through any length.
    let to = (start + chrono::Duration::milliseconds(cap as i64 - 1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let fits = app
        .get(
            &format!("/v1/wallets/{wallet_id}/statement.csv?from={from}&to={to}"),
            &alice.access_token,
        )
        .await;
    assert_eq!(fits.status, StatusCode::OK, "{}", fits.body);
    let last_rows: Vec<&str> = fits.text.lines().rev().take(2).collect();
    assert_eq!(fits.text.lines().count(), cap + 3, "to {to}: {last_rows:?}");
    let all = as_of(
        &app,
        &alice,
        &wallet_id,
        &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
    .await;
    assert_eq!(all["available"], "10.001");

    // Entries written before entries carried their seq and balances: an answer that needs one
    // says so (422 history_unavailable); one that does not is still exact.
    use coffer_store::mongodb::bson::doc;
    app.store
        .collection::<coffer_store::mongodb::bson::Document>("ledger_entries")
        .update_many(
            doc! { "account_id": &wallet_id, "seq": { "$lte": 10 } },
            doc! { "$unset": { "seq": "", "balance_after_atomic": "" } },
        )
        .await
        .unwrap();
    let early =
        (start + chrono::Duration::milliseconds(5)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let reply = app
        .get(
            &format!("/v1/wallets/{wallet_id}?as_of={early}"),
            &alice.access_token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", reply.body);
    assert_eq!(reply.code(), "history_unavailable");
    let statement = app
        .get(
            &format!("/v1/wallets/{wallet_id}/statement?from={from}&to={early}"),
            &alice.access_token,
        )
        .await;
    assert_eq!(statement.code(), "history_unavailable");
    let before_all = as_of(&app, &alice, &wallet_id, &from).await;
    assert_eq!(before_all["available"], "0");
    let later =
        (start + chrono::Duration::milliseconds(20)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(
        as_of(&app, &alice, &wallet_id, &later).await["available"],
        "0.021"
    );
}

#[tokio::test]
async fn history_reads_are_served_by_their_indexes() {
    let log = QueryLog::new();
    let app = TestApp::spawn_with(Options::recording_queries(&log)).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    let at = history(&app, &alice, &wallet, &bob_wallet).await;
    log.clear();
    as_of(&app, &alice, &wallet, &at[3]).await;
    as_of(&app, &alice, &wallet, &at[0]).await; // nothing posted by then
    statement_pages(&app, &alice, &wallet, &at[1], &at[5]).await;
    let csv = app
        .get(
            &format!("/v1/wallets/{wallet}/statement.csv?from={}", at[0]),
            &alice.access_token,
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK);

    let reports = app.store.explain_recorded(&log).await.expect("explain");
    let entries: Vec<_> = reports
        .iter()
        .filter(|r| r.collection == "ledger_entries")
        .collect();
    assert!(
        entries.len() >= 2,
        "the point reads of the search by seq and the statement range: {entries:#?}"
    );
    for report in entries {
        assert!(!report.scans_collection(), "{report:#?}");
        let index = report.index.as_deref().unwrap_or_default();
        assert!(
            ["by_account_time", "by_account_seq"].contains(&index),
            "a history read uses a history index: {report:#?}"
        );
    }
}
