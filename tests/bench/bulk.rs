//! `coffer-bench bulk [DEPOSITS]` (issue 18 item 4): DEPOSITS rail deposits (default 1,000) three
//! ways, taking turns for three rounds in one process against one server: one `POST /v1/deposits`
//! each from 16 concurrent clients (the baseline), one `POST /v1/deposits/bulk` with
//! `atomic: false` (group commit), and one with `atomic: true` (one database transaction). Prints
//! each median time, deposits per second, database transactions per round (group commit's batch
//! histogram) and the ratio of each bulk to the baseline. Every round's credits are checked.

use std::time::{Duration, Instant};

use coffer_store::mongodb::bson::doc;
use coffer_store::Role;
use coffer_test_support::{Options, TestApp, TestUser};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

const CLIENTS: usize = 16;
const ROUNDS: usize = 3;
/// Users with one ETH wallet each (a user has one wallet per asset); deposits go round robin.
const WALLETS: usize = 20;

struct Round {
    elapsed: Duration,
    batches: u64,
}

fn batches(app: &TestApp) -> u64 {
    app.registry
        .gather()
        .iter()
        .find(|f| f.name() == "coffer_ledger_batch_movements")
        .map(|f| f.get_metric()[0].get_histogram().get_sample_count())
        .unwrap_or(0)
}

fn deposits(wallets: &[String], prefix: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({
                "wallet_id": wallets[i % wallets.len()],
                "amount": "0.001",
                "external_reference": format!("{prefix}-{i}"),
            })
        })
        .collect()
}

async fn credited(app: &TestApp, prefix: &str) -> u64 {
    let pattern = format!("^deposit:payment:{prefix}-");
    app.count_where("transactions", doc! { "ledger_key": { "$regex": pattern } })
        .await
}

async fn singles(app: &TestApp, payment: &TestUser, items: Vec<Value>) {
    futures::stream::iter(items)
        .map(|item| async move {
            let reply = app.post("/v1/deposits", &payment.access_token, item).await;
            assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<()>>()
        .await;
}

async fn bulk(app: &TestApp, payment: &TestUser, items: Vec<Value>, atomic: bool) {
    let body = json!({ "atomic": atomic, "deposits": items });
    let reply = app.post("/v1/deposits/bulk", &payment.access_token, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

async fn round(
    app: &TestApp,
    payment: &TestUser,
    wallets: &[String],
    mode: usize,
    n: usize,
    r: usize,
) -> Round {
    let prefix = format!("bench-{mode}-{r}");
    let items = deposits(wallets, &prefix, n);
    let before = batches(app);
    let started = Instant::now();
    match mode {
        0 => singles(app, payment, items).await,
        1 => bulk(app, payment, items, false).await,
        _ => bulk(app, payment, items, true).await,
    }
    let elapsed = started.elapsed();
    assert_eq!(
        credited(app, &prefix).await,
        n as u64,
        "every deposit credited once"
    );
    Round {
        elapsed,
        batches: batches(app) - before,
    }
}

pub async fn run(count: usize) {
    let count = count.clamp(1, 1000);
    let app = TestApp::spawn_with(Options::default()).await;
    println!(
        "coffer-bench bulk: {count} rail deposits per round, {ROUNDS} rounds (load average {})",
        crate::load_average()
    );
    let payment = app.staff(Role::Payment).await;
    let mut wallets = Vec::new();
    for _ in 0..WALLETS {
        let user = app.register().await;
        wallets.push(app.create_wallet(&user, "ETH").await);
    }
    let labels = [
        format!("{CLIENTS} clients, one POST /v1/deposits each"),
        "one bulk request, atomic: false".to_string(),
        "one bulk request, atomic: true".to_string(),
    ];
    let mut rounds: Vec<Vec<Round>> = (0..3).map(|_| Vec::new()).collect();
    for r in 0..ROUNDS {
        for (mode, list) in rounds.iter_mut().enumerate() {
            list.push(round(&app, &payment, &wallets, mode, count, r).await);
        }
    }
    let median = |list: &mut Vec<Round>| {
        list.sort_by_key(|r| r.elapsed);
        let mid = &list[list.len() / 2];
        (mid.elapsed, mid.batches)
    };
    let medians: Vec<(Duration, u64)> = rounds.iter_mut().map(median).collect();
    let baseline = medians[0].0.as_secs_f64();
    for (label, (elapsed, txns)) in labels.iter().zip(&medians) {
        let seconds = elapsed.as_secs_f64();
        println!(
            "{label:<44} {:>8.0} ms {:>8.0} deposits/s {:>5} db transactions  {:>5.2}x the baseline's rate",
            seconds * 1000.0,
            count as f64 / seconds,
            txns,
            baseline / seconds
        );
    }
    app.assert_books_balance().await;
}
