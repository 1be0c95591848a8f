//! Transfer throughput through the HTTP API, against a raw-driver baseline on the same server
//! in the same run. Usage: `cargo run --release -p coffer-tests --bin coffer-bench [TRANSFERS]`
//! with `MONGODB_URI` set (scripts/bench does both).
//!
//! `coffer-bench tracing [TRANSFERS]` instead measures what traces cost: the API transfer
//! benchmark with span export off, on, and on with database command spans, taking turns in short
//! blocks (six rounds after a warm-up) in one process, spans going to an in-process OTLP/HTTP sink on 127.0.0.1; logs (JSON, INFO, to a
//! sink) and metrics are on in every mode. It prints each rate, this process's CPU per
//! transfer, and the ratios to "off" (issue 8: traces on above 0.95).

use std::time::{Duration, Instant};

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
        label: format!("raw driver, {clients} client(s), 2x$inc+insert/tx ({retries} retries)"),
        count: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    };
    db.drop().await.unwrap();
    figures
}

/// Transfers through the API: each client moves 1 unit back and forth between its own pair of
/// wallets (`hot` = every client pays out of ONE wallet instead).
async fn api_transfers(app: &TestApp, clients: usize, total: usize, hot: bool) -> Figures {
    let payment = app.staff(Role::Payment).await;
    let mut pairs: Vec<(TestUser, String, String)> = Vec::new();
    let shared = app.register().await;
    let shared_wallet = app.create_wallet(&shared, "USDT").await;
    app.deposit(&payment, &shared_wallet, "1000000").await;
    for _ in 0..clients {
        let receiver = app.register().await;
        let to = app.create_wallet(&receiver, "USDT").await;
        if hot {
            pairs.push((shared.clone(), shared_wallet.clone(), to));
        } else {
            let sender = app.register().await;
            let from = app.create_wallet(&sender, "USDT").await;
            app.deposit(&payment, &from, "1000000").await;
            pairs.push((sender, from, to));
        }
    }
    let started = Instant::now();
    let per_client = total / clients;
    let runs = pairs.iter().map(|(user, from, to)| async move {
        let mut latencies = Vec::with_capacity(per_client);
        let mut refused = 0usize;
        for _ in 0..per_client {
            let t = Instant::now();
            let reply = app
                .post(
                    "/v1/transfers",
                    &user.access_token,
                    json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "1" }),
                )
                .await;
            // 503 retry_later is a legitimate answer under contention; anything else is a bug.
            assert!(matches!(reply.status.as_u16(), 201 | 503), "{:?}", reply.body);
            if reply.status.as_u16() == 201 {
                latencies.push(t.elapsed());
            } else {
                refused += 1;
            }
        }
        (latencies, refused)
    });
    let results = futures::future::join_all(runs).await;
    let refused: usize = results.iter().map(|r| r.1).sum();
    let latencies: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
    let hot_label = if hot { ", one hot wallet" } else { "" };
    let label = format!("API POST /v1/transfers, {clients} client(s){hot_label} ({refused} x 503)");
    Figures {
        label,
        count: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

/// The store's write path alone (no HTTP, no idempotency record): where the time goes.
async fn store_transfers(app: &TestApp, total: usize) -> Figures {
    use coffer_domain::{Amount, LedgerTransaction, StateChange, TxState};
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
        let movement = coffer_store::money::NewMovement {
            ledger: LedgerTransaction::transfer("USDT", &from, &to, amount).unwrap(),
            ledger_key: format!("bench:{}", uuid::Uuid::new_v4()),
            state: TxState::Confirmed,
            timeline: vec![StateChange::initial(
                TxState::Confirmed,
                chrono::Utc::now(),
                "bench",
            )],
            amount,
            decimals: 6,
            initiated_by: alice.id.clone(),
            from_wallet_id: Some(from.clone()),
            to_wallet_id: Some(to.clone()),
            external_reference: None,
            destination: None,
            participants: vec![alice.id.clone(), bob.id.clone()],
            velocity: None,
        };
        app.store.apply_movement(&movement).await.unwrap();
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
    let uri = coffer_test_support::mongodb_uri();
    let client = Client::with_uri_str(&uri).await.expect("connect");
    println!(
        "coffer-bench: {total} transfers per scenario against {}",
        uri.split('@').next_back().unwrap_or("")
    );

    let raw_one = raw_driver(&client, 1, total).await;
    raw_one.print(None);
    let raw_sixteen = raw_driver(&client, 16, total).await;
    raw_sixteen.print(None);

    let app = TestApp::spawn_with(Options::default()).await;
    let store_one = store_transfers(&app, total).await;
    store_one.print(Some(raw_one.rate()));
    let api_one = api_transfers(&app, 1, total, false).await;
    api_one.print(Some(raw_one.rate()));
    let api_sixteen = api_transfers(&app, 16, total, false).await;
    api_sixteen.print(Some(raw_sixteen.rate()));
    let api_hot = api_transfers(&app, 16, total, true).await;
    api_hot.print(Some(raw_sixteen.rate()));
    println!(
        "write-conflict retries {}  give-ups {}",
        app.metric("coffer_ledger_transaction_retries_total"),
        app.metric("coffer_ledger_transaction_give_ups_total")
    );
    let report = app.store.verify_ledger().await.expect("verify");
    println!(
        "ledger verify after the run: {} finding(s)",
        report.findings.len()
    );
    assert!(report.findings.is_empty());
}
