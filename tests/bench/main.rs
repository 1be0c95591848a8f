//! Transfer throughput through the HTTP API, against raw-driver baselines on the same server in
//! the same run. Usage: `cargo run --release -p coffer-tests --bin coffer-bench [TRANSFERS]` with
//! `MONGODB_URI` set (scripts/bench does both). It prints, each with p50/p99 and its ratio:
//! the raw baseline (one transfer per transaction: two `$inc` and an insert) at 1, 16 and 64
//! clients; the group-commit ceiling (128 transfers per transaction as ONE `update` command and
//! one `insert_many`); the API at 1, 16 and 64 clients on spread wallets and at 16 and 64 clients
//! paying out of ONE wallet; then `ledger verify`.
//!
//! `coffer-bench sustained [SECONDS]`: 64 clients paying out of one wallet for that long (default
//! 120); counts the answers by status (issue 12: no 503 while the database has capacity).
//!
//! `coffer-bench growth`: the cost per transfer when the ledger already holds 10,000, 100,000 and
//! 1,000,000 entries (seeded straight into the collections, with every index in place).
//!
//! `coffer-bench history [ENTRIES]`: the balance as of a time on a wallet with 100,000 entries,
//! the bounded read against the full scan it replaces (see history.rs).
//!
//! `coffer-bench bulk [DEPOSITS]`: rail deposits one request each against one bulk request,
//! independent and atomic (see bulk.rs).
//!
//! `coffer-bench outbox [EVENTS]`: the outbox publisher against the ledger's peak commit rate, a
//! raw lapin baseline, per-wallet order and commit → broker / WebSocket latency (see outbox.rs).
//!
//! `coffer-bench tracing [TRANSFERS]` instead measures what traces cost: the API transfer
//! benchmark with span export off, on, and on with database command spans, taking turns in short
//! blocks (six rounds after a warm-up) in one process, spans going to an in-process OTLP/HTTP sink on 127.0.0.1; logs (JSON, INFO, to a
//! sink) and metrics are on in every mode. It prints each rate, this process's CPU per
//! transfer, and the ratios to "off" (issue 8: traces on above 0.95).

mod bulk;
mod history;
mod outbox;

use std::time::{Duration, Instant};

use futures::StreamExt;

use coffer_store::mongodb::bson::{doc, Decimal128, Document};
use coffer_store::mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
use coffer_store::mongodb::Client;
use coffer_store::Role;
use coffer_test_support::{Options, TestApp, TestUser};
use serde_json::json;

struct Figures {
    label: String,
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return 0.0;
        }
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index].as_secs_f64() * 1000.0
    }

    fn print(&self, baseline: Option<f64>) {
        let ratio = baseline
            .map(|b| format!("  ratio to raw driver {:.2}", self.rate() / b))
            .unwrap_or_default();
        println!(
            "{:<48} {:>6} in {:>6.2}s  {:>8.1}/s  p50 {:>6.2} ms  p99 {:>6.2} ms{}",
            self.label,
            self.count,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.percentile(0.5),
            self.percentile(0.99),
            ratio
        );
    }
}

/// The raw baseline: per transaction two `$inc` updates and one insert, as a transfer does at least.
async fn raw_driver(client: &Client, clients: usize, total: usize) -> Figures {
    let db = client.database(&format!("bench_raw_{}", uuid::Uuid::new_v4().simple()));
    let balances = db.collection::<Document>("balances");
    let entries = db.collection::<Document>("entries");
    for i in 0..clients * 2 {
        balances
            .insert_one(doc! { "_id": i as i64, "v": Decimal128::from_bytes(0u128.to_le_bytes()) })
            .await
            .unwrap();
    }
    let one = Decimal128::from_bytes(((6176u128 << 113) | 1).to_le_bytes());
    let started = Instant::now();
    let tasks = (0..clients).map(|c| {
        let (client, balances, entries) = (client.clone(), balances.clone(), entries.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut session = client.start_session().await.unwrap();
            let mut retries = 0u64;
            for _ in 0..total / clients {
                let t = Instant::now();
                let (a, b) = ((c * 2) as i64, (c * 2 + 1) as i64);
                // A plain retry loop, as any driver user writes it: retry the whole transaction on
                // TransientTransactionError (write conflicts).
                loop {
                    session
                        .start_transaction()
                        .read_concern(ReadConcern::snapshot())
                        .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
                        .await
                        .unwrap();
                    let attempt = async {
                        balances
                            .update_one(doc! { "_id": a }, doc! { "$inc": { "v": one } })
                            .session(&mut session)
                            .await?;
                        balances
                            .update_one(doc! { "_id": b }, doc! { "$inc": { "v": one } })
                            .session(&mut session)
                            .await?;
                        entries
                            .insert_one(doc! { "a": a, "b": b })
                            .session(&mut session)
                            .await?;
                        session.commit_transaction().await
                    }
                    .await;
                    match attempt {
                        Ok(()) => break,
                        Err(e)
                            if e.contains_label(
                                coffer_store::mongodb::error::TRANSIENT_TRANSACTION_ERROR,
                            ) =>
                        {
                            let _ = session.abort_transaction().await;
                            retries += 1;
                        }
                        Err(e) => panic!("raw transaction failed: {e}"),
                    }
                }
                latencies.push(t.elapsed());
            }
            (latencies, retries)
        })
    });
    let results: Vec<(Vec<Duration>, u64)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let retries: u64 = results.iter().map(|r| r.1).sum();
    let latencies: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
    let figures = Figures {
        label: format!("raw driver, {clients} client(s) ({retries} retries)"),
        count: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    };
    db.drop().await.unwrap();
    figures
}

/// A funded sender and a receiver per client (`hot`: every client pays out of ONE wallet).
async fn transfer_pairs(app: &TestApp, clients: usize, hot: bool) -> Vec<(TestUser, String, String)> {
    let payment = app.staff(Role::Payment).await;
    let mut pairs: Vec<(TestUser, String, String)> = Vec::new();
    let shared = app.register().await;
    let shared_wallet = app.create_wallet(&shared, "USDT").await;
    app.deposit(&payment, &shared_wallet, "100000000").await;
    for _ in 0..clients {
        let receiver = app.register().await;
        let to = app.create_wallet(&receiver, "USDT").await;
        if hot {
            pairs.push((shared.clone(), shared_wallet.clone(), to));
        } else {
            let sender = app.register().await;
            let from = app.create_wallet(&sender, "USDT").await;
            app.deposit(&payment, &from, "100000000").await;
            pairs.push((sender, from, to));
        }
    }
    pairs
}

/// One `POST /v1/transfers` as a mobile client sends it, without the test client's contract check
/// (the API tests check every answer against the OpenAPI document; here it would cost the measured
/// process CPU the API does not spend).
async fn post_transfer(app: &TestApp, token: &str, body: &serde_json::Value) -> (u16, String) {
    let reply = app
        .client
        .post(app.url("/v1/transfers"))
        .bearer_auth(token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(body)
        .send()
        .await
        .expect("request");
    let status = reply.status().as_u16();
    let bytes = reply.bytes().await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// What a run of transfers got back.
#[derive(Default)]
struct Answers {
    latencies: Vec<Duration>,
    retry_later: usize,
    other: usize,
}

/// Each client sends transfers of 1 unit until `done(sent so far)` says stop.
async fn send_transfers(
    app: &TestApp,
    pairs: &[(TestUser, String, String)],
    done: impl Fn(usize, Instant) -> bool + Sync,
) -> Answers {
    let started = Instant::now();
    let runs = pairs.iter().map(|(user, from, to)| {
        let done = &done;
        async move {
            let mut answers = Answers::default();
            let mut sent = 0;
            while !done(sent, started) {
                sent += 1;
                let t = Instant::now();
                let body = json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" });
                let (status, reply) = post_transfer(app, &user.access_token, &body).await;
                match status {
                    201 => answers.latencies.push(t.elapsed()),
                    503 => answers.retry_later += 1,
                    _ => {
                        eprintln!("unexpected answer {status}: {reply}");
                        answers.other += 1;
                    }
                }
            }
            answers
        }
    });
    let mut all = Answers::default();
    for answers in futures::future::join_all(runs).await {
        all.latencies.extend(answers.latencies);
        all.retry_later += answers.retry_later;
        all.other += answers.other;
    }
    all
}

/// `total` transfers through the API from `clients` concurrent clients.
async fn api_transfers(app: &TestApp, clients: usize, total: usize, hot: bool) -> Figures {
    let pairs = transfer_pairs(app, clients, hot).await;
    api_transfers_with(app, &pairs, total).await
}

/// `total` transfers through the API, one client per pair.
async fn api_transfers_with(app: &TestApp, pairs: &[(TestUser, String, String)], total: usize) -> Figures {
    let clients = pairs.len();
    let hot = clients > 1 && pairs.iter().all(|(_, from, _)| from == &pairs[0].1);
    let per_client = total.div_ceil(clients);
    let started = Instant::now();
    let answers = send_transfers(app, pairs, |sent, _| sent >= per_client).await;
    let elapsed = started.elapsed();
    assert_eq!(
        answers.other, 0,
        "every transfer is funded: only 201 or 503 may come back"
    );
    let hot_label = if hot { ", one hot wallet" } else { "" };
    let label = format!(
        "API POST /v1/transfers, {clients} client(s){hot_label} ({} x 503)",
        answers.retry_later
    );
    Figures {
        label,
        count: answers.latencies.len(),
        elapsed,
        latencies: answers.latencies,
    }
}

/// The group-commit ceiling on this server: 128 transfers per transaction, their 256 balance
/// changes as ONE `update` command and their entries as one `insert_many` (raw driver).
async fn raw_group_commit(client: &Client, total: usize) -> Figures {
    const BATCH: usize = 128;
    let db = client.database(&format!("bench_group_{}", uuid::Uuid::new_v4().simple()));
    let balances = db.collection::<Document>("balances");
    let entries = db.collection::<Document>("entries");
    let accounts = (BATCH * 2) as i64;
    let zero = Decimal128::from_bytes(0u128.to_le_bytes());
    let seed: Vec<Document> = (0..accounts).map(|i| doc! { "_id": i, "v": zero }).collect();
    balances.insert_many(seed).await.unwrap();
    let one = Decimal128::from_bytes(((6176u128 << 113) | 1).to_le_bytes());
    let mut session = client.start_session().await.unwrap();
    let mut latencies = Vec::new();
    let started = Instant::now();
    for _ in 0..total.div_ceil(BATCH) {
        let t = Instant::now();
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .await
            .unwrap();
        let updates: Vec<Document> = (0..accounts)
            .map(|i| doc! { "q": { "_id": i }, "u": { "$inc": { "v": one } } })
            .collect();
        db.run_command(doc! { "update": "balances", "updates": updates, "ordered": true })
            .session(&mut session)
            .await
            .unwrap();
        let rows: Vec<Document> = (0..BATCH as i64)
            .map(|i| doc! { "a": i * 2, "b": i * 2 + 1 })
            .collect();
        entries.insert_many(rows).session(&mut session).await.unwrap();
        session.commit_transaction().await.unwrap();
        // Every transfer of the batch waited for the whole batch.
        latencies.extend(std::iter::repeat_n(t.elapsed(), BATCH));
    }
    let figures = Figures {
        label: "raw group commit: 128 transfers per tx, one update command".into(),
        count: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    };
    db.drop().await.unwrap();
    figures
}

/// The store's write path alone (no HTTP, no idempotency record): where the time goes.
async fn store_transfers(app: &TestApp, total: usize) -> Figures {
    use coffer_domain::Amount;
    let usdt = app.catalog.current().get("USDT").unwrap().clone();
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "USDT").await;
    let to = app.create_wallet(&bob, "USDT").await;
    app.deposit(&payment, &from, "1000000").await;
    let amount = Amount::from_u64(1_000_000);
    let mut latencies = Vec::with_capacity(total);
    let started = Instant::now();
    for _ in 0..total {
        let t = Instant::now();
        let origin = coffer_domain::Origin {
            transaction_id: coffer_store::new_id(),
            now: chrono::Utc::now(),
            initiated_by: alice.id.clone(),
        };
        let refs = app.store.wallet_refs(&[&from, &to]).await.unwrap();
        let movement = coffer_domain::plan::plan_transfer(
            origin,
            &uuid::Uuid::new_v4().to_string(),
            &refs[&from],
            &refs[&to],
            amount,
            &usdt,
        )
        .unwrap();
        app.store.apply_movement(movement).await.unwrap();
        latencies.push(t.elapsed());
    }
    Figures {
        label: "store.apply_movement, 1 client".into(),
        count: total,
        elapsed: started.elapsed(),
        latencies,
    }
}

/// Span export switched on and off at run time, between phases.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs as in production (JSON at INFO, here to a sink) and span export behind [`EXPORTING`].
fn install_telemetry(endpoint: &str) -> coffer_telemetry::export::SdkTracerProvider {
    use std::sync::atomic::Ordering;
    use tracing_subscriber::filter::{dynamic_filter_fn, LevelFilter};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let config = coffer_telemetry::export::ExportConfig::to_endpoint(endpoint, "coffer-bench");
    let provider = coffer_telemetry::export::tracer_provider(&config, &coffer_tls::TlsRoots::platform())
        .expect("tracer provider");
    let switch = dynamic_filter_fn(|metadata, _| {
        EXPORTING.load(Ordering::Relaxed) && coffer_telemetry::export::exported(metadata)
    });
    tracing_subscriber::registry()
        .with(coffer_telemetry::export::layer(&provider).with_filter(switch))
        .with(coffer_telemetry::logs::json_layer("api", std::io::sink).with_filter(LevelFilter::INFO))
        .init();
    provider
}

/// The API transfer benchmark (16 clients) with span export off, on, and on with a span per
/// database command, in rounds; each mode has its own app (and database).
async fn tracing_overhead(total: usize) {
    use std::sync::atomic::Ordering;
    const MODES: [(&str, bool, bool); 3] = [
        ("traces off", false, false),
        ("traces on", true, false),
        ("traces on + db commands", true, true),
    ];
    let sink = coffer_test_support::otlp::Receiver::start_discarding().await;
    let provider = install_telemetry(&sink.endpoint);
    let mut apps = Vec::new();
    for (_, _, command_spans) in MODES {
        let mut options = Options::default();
        options.store.command_spans = command_spans;
        apps.push(TestApp::spawn_with(options).await);
    }
    // Per mode: (rate, CPU milliseconds of this process per transfer) of each block. The server
    // slows down as its data grows (SecantusDB does, across databases), so the modes take turns
    // in short blocks, each round starting with the next mode: the drift weighs on every mode
    // alike. A first, uncounted block per mode warms the server and the connection pools.
    const ROUNDS: usize = 6;
    let block = (total / ROUNDS).max(16);
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); MODES.len()];
    for round in 0..=ROUNDS {
        for step in 0..MODES.len() {
            let mode = (round + step) % MODES.len();
            let (name, exporting, _) = MODES[mode];
            EXPORTING.store(exporting, Ordering::Relaxed);
            let cpu_before = process_cpu();
            let mut figures = api_transfers(&apps[mode], 16, block, false).await;
            let cpu_ms = (process_cpu() - cpu_before).as_secs_f64() * 1000.0 / figures.count as f64;
            if round == 0 {
                continue; // warm-up
            }
            figures.label = format!("{name}, round {round}: {}", figures.label);
            figures.print(None);
            println!("{:<48} CPU of this process {cpu_ms:.2} ms per transfer", "");
            runs[mode].push((figures.rate(), cpu_ms));
        }
    }
    EXPORTING.store(false, Ordering::Relaxed);
    let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    let (requests, bytes) = sink.requests_and_bytes();
    let mean = |runs: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        runs.iter().map(pick).sum::<f64>() / runs.len() as f64
    };
    let (rate_off, cpu_off) = (mean(&runs[0], |r| r.0), mean(&runs[0], |r| r.1));
    for (mode, (name, _, _)) in MODES.iter().enumerate() {
        let (rate, cpu) = (mean(&runs[mode], |r| r.0), mean(&runs[mode], |r| r.1));
        println!(
            "{name:<24} {rate:>6.1}/s  ratio to off {:.3}  CPU {cpu:.2} ms/transfer ({:+.1}%)",
            rate / rate_off,
            (cpu / cpu_off - 1.0) * 100.0
        );
    }
    println!("(CPU: this process, the API with its client and the sink; not the database)");
    // Metrics are on in every mode above (the API always counts); what they cost per transfer
    // request, measured alone: the HTTP counter and histogram and the movement counter.
    let metrics_ns = metrics_cost_ns(1_000_000);
    println!(
        "metrics per transfer request {:.0} ns = {:.3}% of the CPU per transfer with traces off",
        metrics_ns,
        metrics_ns / (cpu_off * 1_000_000.0) * 100.0
    );
    println!(
        "exported: {requests} OTLP request(s), {bytes} bytes (flush: {})",
        match flushed {
            Ok(Ok(())) => "ok".to_string(),
            other => format!("{other:?}"),
        }
    );
}

/// Nanoseconds of the metric updates one transfer request makes (route counter, latency
/// histogram, movement counter), averaged over `n` updates.
fn metrics_cost_ns(n: u32) -> f64 {
    let registry = prometheus::Registry::new();
    let http = coffer_api::metrics::HttpMetrics::new(&registry).expect("metrics");
    let store = coffer_store::metrics::StoreMetrics::new(&registry).expect("metrics");
    let started = Instant::now();
    for i in 0..n {
        http.requests
            .with_label_values(&["/v1/transfers", "POST", "2xx"])
            .inc();
        http.duration
            .with_label_values(&["/v1/transfers", "POST"])
            .observe(f64::from(i % 100) / 1000.0);
        store.movements.with_label_values(&["transfer"]).inc();
    }
    std::hint::black_box(&registry);
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

/// User and system CPU time of this process so far (Linux `/proc/self/stat`, in 1/100 s).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let tracing_mode = args.first().is_some_and(|a| a == "tracing");
    if tracing_mode {
        args.remove(0);
    }
    let total: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1600);
    if tracing_mode {
        return tracing_overhead(total).await;
    }
    if args.first().is_some_and(|a| a == "sustained") {
        let seconds = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(120);
        return sustained(seconds).await;
    }
    if args.first().is_some_and(|a| a == "profile") {
        let clients = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
        let total = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1600);
        let hot = args.get(3).is_some_and(|a| a == "hot");
        return profile(clients, total, hot).await;
    }
    if args.first().is_some_and(|a| a == "history") {
        let entries = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
        return history::run(entries).await;
    }
    if args.first().is_some_and(|a| a == "bulk") {
        let deposits = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
        return bulk::run(deposits).await;
    }
    if args.first().is_some_and(|a| a == "growth") {
        return growth().await;
    }
    if args.first().is_some_and(|a| a == "outbox") {
        let events = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
        return outbox::run(events).await;
    }
    let uri = coffer_test_support::mongodb_uri();
    let client = Client::with_uri_str(&uri).await.expect("connect");
    println!(
        "coffer-bench: {total} transfers per scenario against {} (load average {})",
        uri.split('@').next_back().unwrap_or(""),
        load_average()
    );

    let raw: Vec<Figures> = futures::stream::iter([1usize, 16, 64])
        .then(|clients| raw_driver(&client, clients, total))
        .collect()
        .await;
    for figures in &raw {
        figures.print(None);
    }
    let raw_best = raw.iter().map(Figures::rate).fold(0.0, f64::max);
    let ceiling = raw_group_commit(&client, total.max(1280)).await;
    ceiling.print(Some(raw_best));

    let app = TestApp::spawn_with(Options::default()).await;
    let store_one = store_transfers(&app, total).await;
    store_one.print(Some(raw[0].rate()));
    let api_one = api_transfers(&app, 1, total, false).await;
    api_one.print(Some(raw[0].rate()));
    let api_sixteen = api_transfers(&app, 16, total, false).await;
    api_sixteen.print(Some(raw[1].rate()));
    let api_sixty_four = api_transfers(&app, 64, total, false).await;
    api_sixty_four.print(Some(raw[2].rate()));
    let hot_sixteen = api_transfers(&app, 16, total, true).await;
    hot_sixteen.print(Some(raw_best));
    let hot_sixty_four = api_transfers(&app, 64, total, true).await;
    hot_sixty_four.print(Some(raw_best));

    println!("\ntargets (ratios in this run):");
    let target = |name: &str, value: f64, goal: f64, at_least: bool| {
        let met = if at_least { value >= goal } else { value <= goal };
        println!(
            "  {name:<58} {value:>6.2}  target {} {goal:<5} {}",
            if at_least { ">=" } else { "<=" },
            if met { "met" } else { "MISSED" }
        );
    };
    target(
        "API 1 client / raw 1 client",
        api_one.rate() / raw[0].rate(),
        0.6,
        true,
    );
    target(
        "API 16 clients / raw 16 clients",
        api_sixteen.rate() / raw[1].rate(),
        1.5,
        true,
    );
    target(
        "API 64 clients, one hot wallet / raw best one-per-tx",
        hot_sixty_four.rate() / raw_best,
        2.0,
        true,
    );
    target(
        "API p99 at 16 clients / raw p99 at 16 clients",
        api_sixteen.percentile(0.99) / raw[1].percentile(0.99),
        2.0,
        false,
    );
    target(
        "(group-commit ceiling / raw best one-per-tx)",
        ceiling.rate() / raw_best,
        2.85,
        true,
    );
    print_batches(&app);
    verify(&app).await;
}

/// Batch sizes and retries the run produced, from the store's metrics.
fn print_batches(app: &TestApp) {
    let families = app.registry.gather();
    let histogram = families
        .iter()
        .find(|f| f.name() == "coffer_ledger_batch_movements");
    if let Some(h) = histogram
        .and_then(|f| f.get_metric().first())
        .map(|m| m.get_histogram())
    {
        let (count, sum) = (h.get_sample_count(), h.get_sample_sum());
        println!(
            "batches: {count}, movements per batch on average {:.1}",
            sum / count.max(1) as f64
        );
    }
    println!(
        "write-conflict retries {}  give-ups {}",
        app.metric("coffer_ledger_transaction_retries_total"),
        app.metric("coffer_ledger_transaction_give_ups_total")
    );
}

async fn verify(app: &TestApp) {
    let report = app.store.verify_ledger().await.expect("verify");
    println!(
        "ledger verify after the run: {} finding(s)",
        report.findings.len()
    );
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// 64 clients paying out of one wallet for `seconds`: every answer counted by status.
async fn sustained(seconds: u64) {
    let app = TestApp::spawn_with(Options::default()).await;
    let pairs = transfer_pairs(&app, 64, true).await;
    println!(
        "coffer-bench sustained: 64 clients, one hot wallet, {seconds} s (load average {})",
        load_average()
    );
    let window = Duration::from_secs(seconds);
    let started = Instant::now();
    let answers = send_transfers(&app, &pairs, |_, began| began.elapsed() >= window).await;
    let figures = Figures {
        label: format!("API, 64 clients, one hot wallet, {seconds} s"),
        count: answers.latencies.len(),
        elapsed: started.elapsed(),
        latencies: answers.latencies,
    };
    figures.print(None);
    println!(
        "answers: 201 x {}, 503 x {}, other x {}",
        figures.count, answers.retry_later, answers.other
    );
    print_batches(&app);
    verify(&app).await;
    assert_eq!(answers.retry_later + answers.other, 0, "no transfer turned away");
}

/// One API scenario alone, with what each transfer costs: server commands (the server's
/// `opcounters`), this process's CPU (API, HTTP client) and the batch sizes. For `perf`.
async fn profile(clients: usize, total: usize, hot: bool) {
    let app = TestApp::spawn_with(Options::default()).await;
    let pairs = transfer_pairs(&app, clients, hot).await;
    let admin = app.store.database().client().clone();
    let counters = || async {
        let status = admin
            .database("admin")
            .run_command(doc! { "serverStatus": 1 })
            .await
            .expect("serverStatus");
        let ops = status.get_document("opcounters").cloned().unwrap_or_default();
        ops.iter()
            .map(|(name, n)| {
                (
                    name.clone(),
                    n.as_i64().or(n.as_i32().map(i64::from)).unwrap_or(0),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = counters().await;
    let cpu_before = process_cpu();
    let figures = api_transfers_with(&app, &pairs, total).await;
    let cpu = process_cpu() - cpu_before;
    let after = counters().await;
    figures.print(None);
    let per = |n: i64| n as f64 / figures.count.max(1) as f64;
    for ((name, a), (_, b)) in after.iter().zip(&before) {
        println!("  server {name:<8} {:>6.2} per transfer", per(a - b));
    }
    println!(
        "  this process's CPU: {:.2} ms per transfer",
        cpu.as_secs_f64() * 1000.0 / figures.count.max(1) as f64
    );
    print_batches(&app);
}

/// The cost per transfer with 10,000, 100,000 and 1,000,000 ledger entries already stored.
async fn growth() {
    let app = TestApp::spawn_with(Options::default()).await;
    println!("coffer-bench growth (load average {})", load_average());
    let mut seeded = 0u64;
    for target in [10_000u64, 100_000, 1_000_000] {
        let seeding = Instant::now();
        seed_history(&app, target - seeded).await;
        seeded = target;
        println!(
            "seeded to {target} ledger entries in {:.0} s",
            seeding.elapsed().as_secs_f64()
        );
        let one = api_transfers(&app, 1, 300, false).await;
        let sixteen = api_transfers(&app, 16, 1600, false).await;
        for (figures, clients) in [(&one, 1), (&sixteen, 16)] {
            println!(
                "  {target:>9} entries, {clients:>2} client(s): {:>7.1}/s  {:>6.2} ms per transfer  p99 {:>6.2} ms",
                figures.rate(),
                1000.0 / figures.rate(),
                figures.percentile(0.99)
            );
        }
    }
    verify(&app).await;
}

/// `entries` more ledger history: balanced transfers between 1,000 seeded wallets, with their
/// transaction records and published outbox rows, written straight into the collections in
/// chunks (every index in place, so the write and the queries pay for the size).
async fn seed_history(app: &TestApp, entries: u64) {
    const CHUNK: u64 = 5_000;
    let db = app.store.database();
    let wallets: Vec<String> = (0..1000).map(|i| format!("seed-wallet-{i:04}")).collect();
    let zero = Decimal128::from_bytes(0u128.to_le_bytes());
    if db
        .collection::<Document>("wallets")
        .count_documents(doc! { "_id": &wallets[0] })
        .await
        .unwrap()
        == 0
    {
        let docs: Vec<Document> = wallets
            .iter()
            .map(|id| {
                doc! {
                    "_id": id, "owner_key": format!("seed:{id}"), "kind": "custody", "user_id": null,
                    "asset": "USDT", "decimals": 6, "available": zero, "pending": zero, "held": zero,
                    "version": 0i64, "created_at": coffer_store::mongodb::bson::DateTime::now(),
                    "updated_at": coffer_store::mongodb::bson::DateTime::now(),
                }
            })
            .collect();
        db.collection::<Document>("wallets")
            .insert_many(docs)
            .await
            .unwrap();
    }
    let one = Decimal128::from_bytes(((6176u128 << 113) | 1).to_le_bytes());
    let minus_one = Decimal128::from_bytes(((1u128 << 127) | (6176u128 << 113) | 1).to_le_bytes());
    let mut written = 0;
    while written < entries {
        let now = coffer_store::mongodb::bson::DateTime::now();
        let transfers = (CHUNK.min(entries - written) / 2).max(1);
        let mut txs = Vec::new();
        let mut rows = Vec::new();
        let mut events = Vec::new();
        for _ in 0..transfers {
            let tx = coffer_store::new_id();
            // Net zero per wallet, so its cached balance stays right for `ledger verify`.
            let a = &wallets[rand_index()];
            txs.push(
                doc! { "_id": &tx, "kind": "adjustment", "state": "confirmed", "asset": "USDT",
                "ledger_key": format!("seed:{tx}"), "participants": [], "created_at": now },
            );
            for (account, amount) in [(a, minus_one), (a, one)] {
                rows.push(
                    doc! { "_id": coffer_store::new_id(), "transaction_id": &tx, "account_id": account,
                    "user_id": null, "asset": "USDT", "kind": "adjustment", "bucket": "available",
                    "side": "credit", "amount": amount, "created_at": now },
                );
            }
            events.push(
                doc! { "_id": coffer_store::new_id(), "event_type": "wallet.balance.updated",
                "data_version": 1, "subject": a, "user_id": "seed", "data": {}, "created_at": now,
                "published_at": now, "attempts": 0 },
            );
        }
        db.collection::<Document>("transactions")
            .insert_many(txs)
            .await
            .unwrap();
        db.collection::<Document>("ledger_entries")
            .insert_many(rows)
            .await
            .unwrap();
        db.collection::<Document>("outbox")
            .insert_many(events)
            .await
            .unwrap();
        written += transfers * 2;
    }
}

fn rand_index() -> usize {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % 1000) as usize
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
