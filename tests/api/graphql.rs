//! Issue 18 item 6: `POST /v1/graphql`, the read-only GraphQL view, against the real server: the
//! same values as REST, only the caller's own objects, REST's authentication, bounded queries
//! and no mutation.

use coffer_store::Role;
use coffer_test_support::{Reply, TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn graphql(app: &TestApp, user: &TestUser, query: &str, variables: Value) -> Reply {
    let body = json!({ "query": query, "variables": variables });
    let reply = app
        .send("POST", "/v1/graphql", Some(&user.access_token), None, Some(&body))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply
}

/// The answer's data, failing on any error.
async fn data(app: &TestApp, user: &TestUser, query: &str, variables: Value) -> Value {
    let reply = graphql(app, user, query, variables).await;
    assert!(reply.body.get("errors").is_none(), "{}", reply.text);
    reply.body["data"].clone()
}

/// The error codes of a refused answer, which has no data.
fn refused(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.body["data"], Value::Null, "no data: {}", reply.text);
    let errors = reply.body["errors"].as_array().expect("errors");
    assert!(!errors.is_empty(), "{}", reply.text);
    errors
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

const LEDGER: &str = "query Ledger($id: ID!, $first: Int, $after: String) {
  wallet(id: $id) {
    id asset decimals available pending held total createdAt
    ledger(first: $first, after: $after) {
      items { id transactionId walletId kind bucket amount createdAt }
      nextCursor
    }
  }
}";

/// A GraphQL ledger entry as the REST view names its fields.
fn entry_as_rest(entry: &Value) -> Value {
    json!({
        "id": entry["id"], "transaction_id": entry["transactionId"], "wallet_id": entry["walletId"],
        "kind": entry["kind"], "bucket": entry["bucket"], "amount": entry["amount"],
        "created_at": entry["createdAt"],
    })
}

#[tokio::test]
async fn wallets_balances_and_ledger_pages_equal_the_rest_views() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let wallet = app.create_wallet(&alice, "ETH").await;
    let usdt = app.create_wallet(&alice, "USDT").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    for amount in ["1", "2.5", "0.125"] {
        app.deposit(&payment, &wallet, amount).await;
    }
    app.deposit(&payment, &usdt, "7").await;
    let transfer = json!({ "from_wallet_id": wallet, "to_wallet_id": bob_wallet, "amount": "0.75" });
    let transfer = app.post("/v1/transfers", &alice.access_token, transfer).await;
    assert_eq!(transfer.status, StatusCode::CREATED, "{:?}", transfer.body);

    // Every wallet with its balances, as GET /v1/wallets.
    let listed = data(
        &app,
        &alice,
        "{ wallets { id asset decimals available pending held total createdAt } }",
        json!({}),
    )
    .await;
    let rest = app.get("/v1/wallets", &alice.access_token).await.body;
    let rest = rest.as_array().unwrap();
    let wallets = listed["wallets"].as_array().unwrap();
    assert_eq!(wallets.len(), 2);
    assert_eq!(wallets.len(), rest.len());
    for (g, r) in wallets.iter().zip(rest) {
        for (gf, rf) in [
            ("id", "id"),
            ("asset", "asset"),
            ("decimals", "decimals"),
            ("available", "available"),
            ("pending", "pending"),
            ("held", "held"),
            ("total", "total"),
            ("createdAt", "created_at"),
        ] {
            assert_eq!(g[gf], r[rf], "{gf}");
        }
    }
    let eth = wallets.iter().find(|w| w["id"] == wallet.as_str()).unwrap();
    assert_eq!(eth["available"], "2.875");

    // The ledger in two pages (4 entries: 3 deposits and the transfer), as the REST pages.
    let first = data(&app, &alice, LEDGER, json!({ "id": wallet, "first": 3 })).await;
    let first = &first["wallet"];
    assert_eq!(first["available"], "2.875");
    let page = &first["ledger"];
    let cursor = page["nextCursor"].as_str().expect("a second page").to_string();
    let rest_first = app
        .get(
            &format!("/v1/wallets/{wallet}/ledger?limit=3"),
            &alice.access_token,
        )
        .await
        .body;
    assert_eq!(page["nextCursor"], rest_first["next_cursor"]);
    let items: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(entry_as_rest)
        .collect();
    assert_eq!(items.len(), 3);
    assert_eq!(Value::Array(items), rest_first["items"]);

    let second = data(
        &app,
        &alice,
        LEDGER,
        json!({ "id": wallet, "first": 3, "after": cursor }),
    )
    .await;
    let page = &second["wallet"]["ledger"];
    assert_eq!(page["nextCursor"], Value::Null, "the last page");
    let rest_second = app
        .get(
            &format!("/v1/wallets/{wallet}/ledger?limit=3&cursor={cursor}"),
            &alice.access_token,
        )
        .await
        .body;
    let items: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(entry_as_rest)
        .collect();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["amount"], "1",
        "the oldest, the first deposit, is last (the transfer is newest)"
    );
    assert_eq!(Value::Array(items), rest_second["items"]);

    // Transactions with their timeline, as GET /v1/transactions and /v1/transactions/{id}.
    let txs = data(
        &app,
        &alice,
        "query { transactions(first: 2) { items { id kind state amount asset timeline { from to at cause } } nextCursor } }",
        json!({}),
    )
    .await;
    let rest_txs = app
        .get("/v1/transactions?limit=2", &alice.access_token)
        .await
        .body;
    assert_eq!(txs["transactions"]["nextCursor"], rest_txs["next_cursor"]);
    for (g, r) in txs["transactions"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .zip(rest_txs["items"].as_array().unwrap())
    {
        for field in ["id", "kind", "state", "amount", "asset", "timeline"] {
            assert_eq!(g[field], r[field], "{field}");
        }
    }
    let tx_id = transfer.body["id"].as_str().unwrap();
    let one = data(
        &app,
        &alice,
        "query One($id: ID!) { transaction(id: $id) { id kind state amount fromWalletId toWalletId ledgerEntries { walletId amount } } }",
        json!({ "id": tx_id }),
    )
    .await;
    let tx = &one["transaction"];
    assert_eq!(tx["kind"], "transfer");
    assert_eq!(tx["amount"], "0.75");
    assert_eq!(tx["fromWalletId"], wallet.as_str());
    assert_eq!(
        tx["ledgerEntries"],
        json!([{ "walletId": wallet, "amount": "-0.75" }]),
        "only the entries on the caller's wallets"
    );
}

#[tokio::test]
async fn another_users_wallet_and_transaction_are_null_and_wallets_lists_only_ones_own() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let alice_wallet = app.create_wallet(&alice, "ETH").await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;
    let deposit = app.deposit(&payment, &alice_wallet, "3").await;
    let alice_tx = deposit.body["id"].as_str().unwrap().to_string();

    let query = "query Peek($wallet: ID!, $tx: ID!) {
      wallet(id: $wallet) { id available ledger { items { id } } }
      transaction(id: $tx) { id amount }
      wallets { id }
      transactions { items { id } nextCursor }
    }";
    let seen_by_bob = data(
        &app,
        &bob,
        query,
        json!({ "wallet": alice_wallet, "tx": alice_tx }),
    )
    .await;
    assert_eq!(seen_by_bob["wallet"], Value::Null, "{seen_by_bob}");
    assert_eq!(seen_by_bob["transaction"], Value::Null, "{seen_by_bob}");
    assert_eq!(seen_by_bob["wallets"], json!([{ "id": bob_wallet }]));
    assert_eq!(
        seen_by_bob["transactions"],
        json!({ "items": [], "nextCursor": null })
    );

    // The owner sees them: the nulls above are the owner check, not a bad query.
    let seen_by_alice = data(
        &app,
        &alice,
        query,
        json!({ "wallet": alice_wallet, "tx": alice_tx }),
    )
    .await;
    assert_eq!(seen_by_alice["wallet"]["available"], "3");
    assert_eq!(seen_by_alice["transaction"]["id"], alice_tx.as_str());
    assert_eq!(seen_by_alice["wallets"], json!([{ "id": alice_wallet }]));

    // An id that exists nowhere is null the same way.
    let nowhere = data(
        &app,
        &bob,
        query,
        json!({ "wallet": uuid::Uuid::new_v4().to_string(), "tx": "not-even-a-uuid" }),
    )
    .await;
    assert_eq!(nowhere["wallet"], Value::Null);
    assert_eq!(nowhere["transaction"], Value::Null);
}

#[tokio::test]
async fn no_or_an_invalid_token_is_a_401_problem_like_rest() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let mut tampered = user.access_token.clone();
    tampered.pop();
    tampered.push(if user.access_token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let body = json!({ "query": "{ wallets { id } }" });
    for token in [Some(tampered.as_str()), Some("not-a-jwt"), None] {
        let reply = app.send("POST", "/v1/graphql", token, None, Some(&body)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
        assert_eq!(reply.code(), "unauthenticated");
        assert!(reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json"));
    }
    // A signed-out session's token too, as every REST read.
    let logout = app
        .send("POST", "/v1/auth/logout", Some(&user.access_token), None, None)
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.text);
    let reply = app
        .send("POST", "/v1/graphql", Some(&user.access_token), None, Some(&body))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    assert_eq!(reply.code(), "session_revoked");
    // A body that is not a GraphQL request is the REST body refusal.
    let other = app.register().await;
    let reply = app
        .send(
            "POST",
            "/v1/graphql",
            Some(&other.access_token),
            None,
            Some(&json!({ "query": "{ wallets { id } }", "mutation": true })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "unknown_field");
}

#[tokio::test]
async fn graphql_requests_count_as_reads_for_the_rate_limit() {
    let mut options = coffer_test_support::Options::default();
    options.rate_limits.reads_per_user_per_minute = 2;
    let app = TestApp::spawn_with(options).await;
    let user = app.register().await;
    let first = graphql(&app, &user, "{ wallets { id } }", json!({})).await;
    assert_eq!(first.headers["ratelimit-policy"], "\"reads_user\";q=2;w=60");
    app.get("/v1/wallets", &user.access_token).await;
    let body = json!({ "query": "{ wallets { id } }" });
    let refused = app
        .send("POST", "/v1/graphql", Some(&user.access_token), None, Some(&body))
        .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.code(), "rate_limited");
}

#[tokio::test]
async fn a_too_deep_query_and_a_first_above_the_maximum_are_refused_without_data() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    app.create_wallet(&user, "ETH").await;

    // Nine levels through introspection (the schema's own deepest useful selection is 4).
    let deep =
        "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }";
    let reply = graphql(&app, &user, deep, json!({})).await;
    let messages = refused(&reply);
    assert!(
        messages.iter().any(|m| m.contains("nested too deep")),
        "{messages:?}"
    );
    assert_eq!(reply.body["errors"][0]["extensions"]["code"], "invalid_query");

    let reply = graphql(
        &app,
        &user,
        "{ wallets { id ledger(first: 101) { items { id } } } }",
        json!({}),
    )
    .await;
    // Refused in the resolver, never clamped: no entry comes back (async-graphql leaves the
    // failed field out of `data` rather than nulling its non-null parents).
    let errors = reply.body["errors"].as_array().expect("errors");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("first is from 1 to 100"),
        "{}",
        reply.text
    );
    assert_eq!(errors[0]["extensions"]["code"], "invalid_query");
    assert_eq!(errors[0]["path"], json!(["wallets", 0, "ledger"]));
    assert!(
        reply.body.pointer("/data/wallets/0/ledger/items").is_none(),
        "{}",
        reply.text
    );

    let reply = graphql(
        &app,
        &user,
        "query($first: Int) { transactions(first: $first) { items { id } } }",
        json!({ "first": 1000 }),
    )
    .await;
    assert!(
        reply.body.pointer("/data/transactions/items").is_none(),
        "{}",
        reply.text
    );
    assert_eq!(reply.body["errors"][0]["extensions"]["code"], "invalid_query");

    // Too complex: many aliased store reads.
    let aliases: String = (0..60).map(|i| format!("w{i}: wallets {{ id }} ")).collect();
    let reply = graphql(&app, &user, &format!("{{ {aliases} }}"), json!({})).await;
    let messages = refused(&reply);
    assert!(messages.iter().any(|m| m.contains("too complex")), "{messages:?}");
    assert_eq!(reply.body["errors"][0]["extensions"]["code"], "invalid_query");

    // A page's items count once per item it may hold: 100 transactions each reading its entries
    // is 100 store reads, refused; a full page of 100 with every plain field is not.
    let reply = graphql(
        &app,
        &user,
        "{ transactions(first: 100) { items { id ledgerEntries { amount } } } }",
        json!({}),
    )
    .await;
    let messages = refused(&reply);
    assert!(messages.iter().any(|m| m.contains("too complex")), "{messages:?}");
    data(
        &app,
        &user,
        "{ transactions(first: 100) { items { id kind state asset decimals amount fromWalletId \
           toWalletId externalReference destination chainTxHash confirmations createdAt updatedAt \
           timeline { from to at cause } } nextCursor }
           wallets { ledger(first: 100) { items { id transactionId walletId kind bucket amount createdAt } nextCursor } } }",
        json!({}),
    )
    .await;
}

#[tokio::test]
async fn a_mutation_or_subscription_is_refused() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let user = app.register().await;
    let wallet = app.create_wallet(&user, "ETH").await;
    app.deposit(&payment, &wallet, "1").await;
    let entries = app.count("ledger_entries").await;
    for document in [
        "mutation { createWallet(asset: \"USDT\") { id } }",
        "mutation { __typename }",
        "subscription { wallets { id } }",
    ] {
        let reply = graphql(&app, &user, document, json!({})).await;
        let messages = refused(&reply);
        assert!(!messages.is_empty(), "{document}");
    }
    assert_eq!(app.count("ledger_entries").await, entries, "nothing was written");
    assert_eq!(
        app.get("/v1/wallets", &user.access_token)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
