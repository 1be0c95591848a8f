//! `coffer-bench history [ENTRIES]` (issue 18): a wallet with ENTRIES ledger entries (default
//! 100,000, seeded with the store's numbering and running balances, one millisecond apart), then
//! the balance as of random instants three ways, each checked against the others:
//! through the API (`GET /v1/wallets/{id}?as_of=`), the store's bounded read alone
//! (`balances_at`: a binary search of point reads on `by_account_seq`), and the full scan it replaces
//! (a `$group` sum of the wallet's entries up to the instant, on the same index). Prints each
//! median and p99 and the ratio of the scan to the bounded read; then a statement's first page.

use std::time::{Duration, Instant};

use coffer_domain::{Amount, SignedAmount};
use coffer_store::mongodb::bson::{doc, Bson, Document};
use coffer_test_support::{Options, TestApp};
use futures::TryStreamExt;

fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn instant_text(millis: i64) -> String {
    coffer_store::codec::from_millis(millis).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The available balance up to `millis`, summed from the entries (what the index replaces).
async fn full_scan(app: &TestApp, wallet: &str, millis: i64) -> String {
    let until = coffer_store::mongodb::bson::DateTime::from_millis(millis + 1);
    let pipeline = vec![
        doc! { "$match": { "account_id": wallet, "created_at": { "$lt": until } } },
        doc! { "$group": { "_id": null, "sum": { "$sum": "$amount" }, "entries": { "$sum": 1 } } },
    ];
    let rows: Vec<Document> = app
        .store
        .collection::<Document>("ledger_entries")
        .aggregate(pipeline)
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("rows");
    match rows.first().and_then(|r| r.get("sum")) {
        Some(Bson::Decimal128(sum)) => {
            let (amount, negative) = coffer_store::codec::from_decimal(sum).expect("exact");
            assert!(!negative, "a user balance");
            amount.to_decimal_string(18)
        }
        _ => "0".to_string(),
    }
}

pub async fn run(entries: usize) {
    let app = TestApp::spawn_with(Options::default()).await;
    println!(
        "coffer-bench history: one wallet with {entries} ledger entries (load average {})",
        crate::load_average()
    );
    let alice = app.register().await;
    let wallet_id = app.create_wallet(&alice, "ETH").await;
    let wallet = app.store.wallet_by_id(&wallet_id).await.unwrap().unwrap();
    // Two credits of 0.002 for each debit of 0.001: never below zero.
    let credit = SignedAmount::new(Amount::parse_decimal("0.002", 18).unwrap(), false);
    let debit = SignedAmount::new(Amount::parse_decimal("0.001", 18).unwrap(), true);
    let amounts: Vec<SignedAmount> = (0..entries)
        .map(|i| if i % 3 == 2 { debit } else { credit })
        .collect();
    let start_ms = chrono::Utc::now().timestamp_millis() - entries as i64 - 60_000;
    let seeding = Instant::now();
    let start = coffer_store::codec::from_millis(start_ms);
    coffer_store::history::seed_history(&app.store, &wallet, &amounts, start, 1)
        .await
        .expect("seed");
    println!(
        "seeded {entries} entries in {:.1} s (insert_many of 10,000, every index in place)",
        seeding.elapsed().as_secs_f64()
    );

    // Spread over the history by a fixed linear congruential sequence (repeatable runs).
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let instants: Vec<i64> = (0..100)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            start_ms + ((state >> 33) % entries as u64) as i64
        })
        .collect();
    let (mut api, mut bounded, mut scan) = (Vec::new(), Vec::new(), Vec::new());
    for (i, at) in instants.iter().enumerate() {
        let text = instant_text(*at);
        let began = Instant::now();
        let view = app
            .get(
                &format!("/v1/wallets/{wallet_id}?as_of={text}"),
                &alice.access_token,
            )
            .await;
        api.push(began.elapsed());
        assert_eq!(view.status, 200, "{:?}", view.body);
        let began = Instant::now();
        let balances = app
            .store
            .balances_at(&wallet_id, coffer_store::codec::from_millis(*at))
            .await
            .expect("as of");
        bounded.push(began.elapsed());
        assert_eq!(
            view.body["available"],
            balances.available.magnitude.to_decimal_string(18)
        );
        // The scan is slow: a sample of the instants, each checked against the bounded answer.
        if i % 20 == 0 {
            let began = Instant::now();
            let summed = full_scan(&app, &wallet_id, *at).await;
            scan.push(began.elapsed());
            println!(
                "  full scan {} took {:.0} ms",
                scan.len(),
                began.elapsed().as_secs_f64() * 1000.0
            );
            assert_eq!(view.body["available"], summed.as_str(), "as of {text}");
        }
    }
    let print = |label: &str, samples: &[Duration]| {
        println!(
            "{label:<52} {:>4} reads  p50 {:>8.2} ms  p99 {:>8.2} ms",
            samples.len(),
            percentile(samples, 0.5),
            percentile(samples, 0.99)
        );
    };
    print("as_of through the API (GET /v1/wallets/{id}?as_of=)", &api);
    print("as_of in the store (binary search on seq)", &bounded);
    print("full scan: $group sum of the entries up to then", &scan);
    println!(
        "ratio full scan / bounded read (p50): {:.0}x",
        percentile(&scan, 0.5) / percentile(&bounded, 0.5)
    );

    let mut pages = Vec::new();
    for at in instants.iter().take(20) {
        let path = format!(
            "/v1/wallets/{wallet_id}/statement?from={}&to={}&limit=100",
            instant_text(*at),
            instant_text(at + 5_000)
        );
        let began = Instant::now();
        let page = app.get(&path, &alice.access_token).await;
        pages.push(began.elapsed());
        assert_eq!(page.status, 200, "{:?}", page.body);
    }
    print("statement, first page of 100 (GET .../statement)", &pages);
}
