//! Every metric the catalogue (docs/metrics.md) lists for the api, outbox-publisher,
//! chain-listener and reconciler roles is exposed, with the values a scripted flow implies, in an
//! exposition promtool accepts. The operator's rows are checked by its own unit test
//! (crates/coffer-operator/src/metrics.rs).
//!
//! One registry holds every role's metrics, as in `coffer dev`: the test app's (the API's HTTP,
//! stream, store and reconciliation metrics) joined by the publisher's and the chain roles'. The
//! flow drives each role's real code: the API over HTTP, the listener and the broadcaster against
//! a private anvil, a relay pass against RabbitMQ, an on-demand reconciliation, a WebSocket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_chain::broadcaster::{Broadcaster, BroadcasterConfig};
use coffer_chain::metrics::ChainMetrics;
use coffer_chain::signer::{LocalSigner, Signer};
use coffer_domain::TxState;
use coffer_events::{CloudEvent, PublisherMetrics, Relay};
use coffer_operator::catalog::{CatalogFeed, CatalogMetrics, Offer};
use coffer_store::Role;
use coffer_test_support::broker::{self, Broker};
use coffer_test_support::stream::{self as ws, Token};
use coffer_test_support::Options;
use reqwest::StatusCode;
use serde_json::json;

use crate::chain::{eth, spec, world_on, World, CHAIN};

const CATALOGUE: &str = include_str!("../../docs/metrics.md");

/// The roles this test builds in-process.
const ROLES: [&str; 4] = ["api", "outbox-publisher", "chain-listener", "reconciler"];

/// The catalogue's metric names for a role (its `roles` column lists it).
/// Series that exist only under a condition this flow does not meet, each asserted elsewhere:
/// reserves − liabilities needs a chain source and a published statement
/// (`reserves::chain_reconciler_reports_reserves_minus_published_liabilities_and_finds_a_shortfall`);
/// sweeps need the sweeper (`sweeps::chain_sweep_empties_the_deposit_address_once_books_its_gas_and_reserves_agree_with_the_ledger`).
const CONDITIONAL: [&str; 2] = ["coffer_reserves_minus_liabilities", "coffer_sweeps_total"];

fn catalogued(role: &str) -> Vec<String> {
    CATALOGUE
        .lines()
        .filter(|line| line.starts_with("| `coffer_"))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let roles = cells.get(5)?;
            roles
                .split(',')
                .any(|r| r.trim() == role)
                .then(|| cells[1].trim_matches('`').to_string())
        })
        .collect()
}

/// Sample values by their full series text (`name{labels}`).
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            line.rsplit_once(' ')
                .map(|(series, value)| (series.to_string(), value.parse().unwrap()))
        })
        .collect()
}

async fn scrape(w: &World) -> String {
    let response = w.app.client.get(w.app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// Scrapes until `series` has `value` (bounded: 10 s), for what a background task updates.
async fn await_value(w: &World, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = samples(&scrape(w).await).get(series).copied();
        if now == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {now:?}, not {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn state_of(w: &World, id: &str) -> TxState {
    w.app.store.transaction_by_id(id).await.unwrap().unwrap().state
}

#[tokio::test]
async fn chain_every_role_exposes_the_catalogue_with_the_values_of_a_scripted_flow() {
    let started = Instant::now();
    // Two confirmations; the catalog's review threshold is 10 ETH.
    // The API checks webhooks against the world's node (its rejection series exist at zero).
    let anvil = coffer_test_support::chain::Anvil::start().await;
    let options = Options {
        chain_rpcs: vec![(CHAIN.into(), anvil.rpc.clone())],
        ..Options::default()
    };
    let w = world_on(anvil, &[spec("ETH", 18, None, 2)], "ETH", options).await;
    let app = &w.app;
    let chain_metrics = ChainMetrics::new(&app.registry).unwrap();
    let publisher_metrics = PublisherMetrics::new(&app.registry).unwrap();
    // The catalog the api and chain-listener follow: one version arrives that they refuse.
    let mut catalog_feed = CatalogFeed::new(
        app.catalog.clone(),
        String::new(),
        CatalogMetrics::new(&app.registry).unwrap(),
    );
    let refused_version = catalog_feed.offer(r#"{"version": 1, "assets": [{"symbol": "eth"}]}"#, "test");
    assert!(
        matches!(refused_version, Offer::Refused(_)),
        "{refused_version:?}"
    );
    let before_verification = samples(&scrape(&w).await);
    assert!(
        !before_verification.contains_key("coffer_audit_chain_valid"),
        "no verification yet: the audit gauge is absent, not 0 (broken)"
    );

    // Register (world did: alice with a deposit address), a second user, staff.
    let alice = &w.user;
    let payment = app.staff(Role::Payment).await;
    let engineer = app.staff(Role::Engineering).await;
    let bob = app.register().await;
    let bob_wallet = app.create_wallet(&bob, "ETH").await;

    // Deposits: one through the payment API, one on chain seen and credited by the listener.
    app.deposit(&payment, &w.wallet, "20").await;
    let listener = w.listener(50).with_metrics(chain_metrics.clone());
    w.anvil.send_eth(&w.address, eth("1.5")).await;
    let seen = listener.poll_once().await.unwrap();
    assert_eq!((seen.deposits_recorded, seen.credited), (1, 0), "{seen:?}");
    let confirming = samples(&scrape(&w).await);
    assert_eq!(
        confirming[&format!(r#"coffer_chain_deposits_confirming{{chain="{CHAIN}"}}"#)],
        1.0
    );
    w.anvil.mine(1).await;
    assert_eq!(listener.poll_once().await.unwrap().credited, 1);

    // Three transfers and one refused for want of funds.
    let transfer =
        |amount: &str| json!({ "from_wallet_id": w.wallet, "to_wallet_id": bob_wallet, "amount": amount });
    for _ in 0..3 {
        let reply = app
            .post("/v1/transfers", &alice.access_token, transfer("0.5"))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
    let refused = app
        .post("/v1/transfers", &alice.access_token, transfer("1000"))
        .await;
    assert_eq!(refused.code(), "insufficient_funds");

    // A withdrawal sent twice with one Idempotency-Key (one replay), and one held for review.
    let destination = format!("{:#x}", LocalSigner::random().address());
    let body = json!({ "wallet_id": w.wallet, "amount": "1", "destination_address": destination });
    let device = app.trusted_test_device(alice).await;
    app.save_address_for(alice, &w.wallet, &destination).await;
    // The retry is the same signed request (same nonce): answered from its Idempotency-Key.
    let signed = device.sign("POST", "/v1/withdrawals", &serde_json::to_vec(&body).unwrap());
    let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let withdraw = || {
        app.send_with(
            "POST",
            "/v1/withdrawals",
            Some(&alice.access_token),
            Some("w-1"),
            Some(&body),
            &headers,
        )
    };
    let (first, replay) = (withdraw().await, withdraw().await);
    assert_eq!(
        (first.status, replay.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(first.body["id"], replay.body["id"]);
    let withdrawal = first.body["id"].as_str().unwrap().to_string();
    let held = app
        .withdraw(
            alice,
            json!({ "wallet_id": w.wallet, "amount": "12", "destination_address": destination }),
        )
        .await;
    assert_eq!(held.body["state"], "manual_review", "{:?}", held.body);

    // The broadcaster signs, sends and follows the first to Confirmed; the held one waits.
    let signer = LocalSigner::random();
    w.anvil
        .send_eth(&format!("{:#x}", signer.address()), eth("5"))
        .await;
    let mut config = BroadcasterConfig::new(CHAIN);
    config.poll_interval = Duration::from_millis(50);
    let broadcaster = Broadcaster::new(
        config,
        w.anvil.rpc.clone(),
        app.store.clone(),
        app.catalog.clone(),
        Arc::new(signer),
    )
    .with_metrics(chain_metrics.clone());
    for _ in 0..100 {
        broadcaster.poll_once().await.unwrap();
        match state_of(&w, &withdrawal).await {
            TxState::Confirmed => break,
            TxState::Confirming => w.anvil.mine(1).await,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(state_of(&w, &withdrawal).await, TxState::Confirmed);
    broadcaster.poll_once().await.unwrap(); // the gauges after the last change
    let last = listener.poll_once().await.unwrap(); // the listener catches up with the head
    let head = w.anvil.head().await;
    assert_eq!(last.tip, Some(head));

    // A WebSocket of alice's stays open; a subscriber that never reads is cut off as too slow.
    let mut socket = ws::connect(app.address, Token::Header(&alice.access_token), None).await;
    await_value(&w, "coffer_stream_connections", 1.0).await;
    let slow = app.stream_hub.subscribe("slow-reader").unwrap();
    let event = coffer_events::Live::untraced(CloudEvent::from_outbox(&broker::synthetic_row(
        "w",
        "wallet.balance.updated",
        0,
    )));
    for _ in 0..=coffer_events::hub::DEFAULT_BUFFER {
        app.stream_hub.dispatch("slow-reader", event.clone());
    }
    assert!(slow.overflowed());
    drop(slow);

    // Publish: one relay pass to RabbitMQ until the outbox is empty. A queue takes `wallet.#`;
    // one event of another type is unroutable: returned on each of its 3 attempts, then
    // dead-lettered.
    let mut broker = Broker::new().await;
    broker.queue("wallet.#").await;
    broker::insert_events(&app.store, &["unroutable".into()], 1, "test.unroutable").await;
    let relay = Relay::new(
        &app.store,
        broker::relay_config(&broker.exchange, "metrics-test"),
        publisher_metrics,
    );
    let connection = coffer_events::broker::connect(&broker::amqp_uri(), "metrics-test")
        .await
        .unwrap();
    let channel = coffer_events::broker::publisher_channel(&connection, &broker.exchange)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        relay.relay_once(&channel).await.unwrap();
        relay.refresh_gauges().await.unwrap();
        if relay.metrics().backlog.get() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let rows = broker::outbox_rows(&app.store).await;
    let mut published = 0;
    for row in &rows {
        published += usize::from(app.store.outbox_published(row).await.unwrap());
    }
    assert_eq!(published, rows.len() - 1, "everything but the unroutable event");
    let published = published as f64;
    let _ = connection.close(200, "bye".into()).await;
    broker.cleanup().await;

    // Reconcile: an on-demand run through the API (the reconciler role runs the same code).
    let run = app
        .post("/v1/admin/reconciliations", &engineer.access_token, json!({}))
        .await;
    assert_eq!(run.status, StatusCode::CREATED, "{:?}", run.body);
    assert_eq!(run.body["mismatches"], 0, "{:#}", run.body);

    let exposition = scrape(&w).await;
    let values = samples(&exposition);
    for role in ROLES {
        let names = catalogued(role);
        assert!(!names.is_empty(), "no metric catalogued for {role}");
        for name in names {
            if CONDITIONAL.contains(&name.as_str()) {
                continue;
            }
            let exposed = values.keys().any(|series| {
                series == &name
                    || series.starts_with(&format!("{name}{{"))
                    || series.starts_with(&format!("{name}_bucket{{"))
            });
            assert!(exposed, "{name} is catalogued for {role} but not exposed");
        }
    }
    let value = |series: &str| {
        values
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("no series {series}"))
    };
    let chain = |name: &str, labels: &str| {
        let series = if labels.is_empty() {
            format!(r#"{name}{{chain="{CHAIN}"}}"#)
        } else {
            format!(r#"{name}{{chain="{CHAIN}",{labels}}}"#)
        };
        value(&series)
    };

    // api
    assert_eq!(
        value(&format!(
            r#"coffer_build_info{{commit="{}",version="{}"}}"#,
            option_env!("COFFER_GIT_COMMIT").unwrap_or("unknown"),
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    let http = |route: &str, class: &str| {
        value(&format!(
            r#"coffer_http_requests_total{{method="POST",route="{route}",status_class="{class}"}}"#
        ))
    };
    assert_eq!(http("/v1/transfers", "2xx"), 3.0);
    assert_eq!(http("/v1/transfers", "4xx"), 1.0);
    assert_eq!(http("/v1/withdrawals", "2xx"), 3.0, "two requests and the replay");
    assert_eq!(
        value(r#"coffer_http_request_duration_seconds_count{method="POST",route="/v1/transfers"}"#),
        4.0
    );
    assert_eq!(value("coffer_idempotent_replays_total"), 1.0);
    let refusals = |kind: &str, reason: &str| {
        value(&format!(
            r#"coffer_movements_refused_total{{kind="{kind}",reason="{reason}"}}"#
        ))
    };
    assert_eq!(refusals("transfer", "insufficient_funds"), 1.0);
    assert_eq!(refusals("withdrawal", "manual_review"), 1.0);
    assert_eq!(refusals("withdrawal", "insufficient_funds"), 0.0);
    for limiter in ["auth_ip", "money_ip", "money_user"] {
        assert_eq!(
            value(&format!(
                r#"coffer_http_rate_limited_total{{limiter="{limiter}"}}"#
            )),
            0.0
        );
    }
    assert_eq!(value("coffer_stream_connections"), 1.0, "alice's socket");
    assert_eq!(
        value(r#"coffer_asset_catalog_updates_total{result="refused"}"#),
        1.0
    );
    assert_eq!(
        value(r#"coffer_asset_catalog_updates_total{result="applied"}"#),
        0.0
    );
    assert_eq!(
        value("coffer_asset_catalog_refused"),
        1.0,
        "the last good catalog is in force"
    );
    assert_eq!(
        value(r#"coffer_stream_slow_consumers_dropped_total{reason="buffer_full"}"#),
        1.0
    );
    assert_eq!(
        value(r#"coffer_stream_slow_consumers_dropped_total{reason="send_timeout"}"#),
        0.0
    );
    // store (every role): one payment and one chain deposit, three transfers, two withdrawals.
    let movements = |kind: &str| value(&format!(r#"coffer_ledger_movements_total{{kind="{kind}"}}"#));
    assert_eq!(
        [
            "deposit",
            "transfer",
            "withdrawal",
            "fee",
            "reversal",
            "adjustment"
        ]
        .map(movements),
        [2.0, 3.0, 2.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(value("coffer_ledger_transaction_give_ups_total"), 0.0);

    // outbox-publisher
    assert_eq!(value("coffer_outbox_published_total"), published);
    assert_eq!(value("coffer_outbox_commit_to_confirm_seconds_count"), published);
    assert_eq!(value("coffer_outbox_publish_failures_total"), 3.0);
    assert_eq!(value("coffer_outbox_dead_lettered_total"), 1.0);
    assert_eq!(value("coffer_outbox_dead_letters"), 1.0);
    assert_eq!(value("coffer_outbox_backlog"), 0.0);
    assert_eq!(value("coffer_outbox_oldest_unpublished_age_seconds"), 0.0);

    // chain-listener: the listener
    assert_eq!(chain("coffer_chain_head_block", ""), head as f64);
    assert_eq!(chain("coffer_chain_processed_block", ""), head as f64);
    assert_eq!(chain("coffer_chain_lag_blocks", ""), 0.0);
    assert_eq!(chain("coffer_chain_deposits_confirming", ""), 0.0);
    let events = |event: &str| {
        chain(
            "coffer_chain_deposit_events_total",
            &format!(r#"event="{event}""#),
        )
    };
    assert_eq!(
        ["recorded", "credited", "unmatched", "failed", "reversed"].map(events),
        [1.0, 1.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(chain("coffer_chain_reorgs_total", ""), 0.0);
    assert_eq!(
        chain("coffer_chain_deposit_credit_latency_seconds_count", ""),
        1.0
    );
    let latency = chain("coffer_chain_deposit_credit_latency_seconds_sum", "");
    assert!(
        (0.0..=started.elapsed().as_secs_f64() + 1.0).contains(&latency),
        "credit latency {latency}s"
    );
    for worker in ["listener", "broadcaster"] {
        assert_eq!(
            chain("coffer_chain_poll_errors_total", &format!(r#"worker="{worker}""#)),
            0.0
        );
    }
    // chain-listener: the broadcaster
    assert_eq!(chain("coffer_withdrawals_signed_total", ""), 1.0);
    let broadcasts = |outcome: &str| {
        chain(
            "coffer_withdrawal_broadcasts_total",
            &format!(r#"outcome="{outcome}""#),
        )
    };
    assert_eq!(
        ["accepted", "found_after_error", "retry", "nonce_conflict"].map(broadcasts),
        [1.0, 0.0, 0.0, 0.0]
    );
    let finished = |state: &str| {
        chain(
            "coffer_withdrawals_finished_total",
            &format!(r#"state="{state}""#),
        )
    };
    assert_eq!(["confirmed", "failed"].map(finished), [1.0, 0.0]);
    let elapsed = started.elapsed().as_secs_f64();
    for state in [
        "created",
        "pending_broadcast",
        "broadcasted",
        "confirming",
        "retryable",
        "manual_review",
    ] {
        let held = f64::from(state == "manual_review");
        assert_eq!(
            value(&format!(r#"coffer_withdrawals{{state="{state}"}}"#)),
            held,
            "{state}"
        );
        let waited = value(&format!(
            r#"coffer_withdrawal_longest_in_state_seconds{{state="{state}"}}"#
        ));
        assert!(
            waited <= held * elapsed,
            "{state}: {waited}s in state, test ran {elapsed}s"
        );
    }
    let oldest = value("coffer_withdrawal_oldest_non_final_age_seconds");
    assert!(oldest <= elapsed, "{oldest}");

    // reconciler
    assert_eq!(value("coffer_reconciliation_runs_total"), 1.0);
    for check in coffer_store::reconcile::CHECKS {
        assert_eq!(
            value(&format!(r#"coffer_reconciliation_mismatches{{check="{check}"}}"#)),
            0.0,
            "{check}"
        );
    }
    let finished_at = value("coffer_reconciliation_last_run_timestamp_seconds");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - 60.0..=now + 1.0).contains(&finished_at),
        "{finished_at} vs {now}"
    );
    assert_eq!(value("coffer_audit_chain_valid"), 1.0);

    promtool_accepts(&exposition);

    // The socket closes: the gauge follows.
    socket.close(None).await.unwrap();
    await_value(&w, "coffer_stream_connections", 0.0).await;
}

/// `promtool check metrics` lints names, units and types. scripts/test installs promtool; outside
/// it the check is skipped with a note unless COFFER_TEST_REQUIRE_SERVICES is set.
fn promtool_accepts(exposition: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(_) if std::env::var_os("COFFER_TEST_REQUIRE_SERVICES").is_none() => {
            eprintln!("promtool not installed: skipping `promtool check metrics` (scripts/test installs it)");
            return;
        }
        Err(e) => panic!("promtool is required here: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

/// The `process_*` rows of the catalogue.
fn catalogued_process_metrics() -> Vec<String> {
    CATALOGUE
        .lines()
        .filter(|line| line.starts_with("| `process_"))
        .map(|line| line.split('`').nth(1).unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_role_registry_exposes_the_process_metrics() {
    let names = catalogued_process_metrics();
    assert!(
        names.len() >= 7,
        "the catalogue lists the process metrics: {names:?}"
    );
    // The API serves its registry; the worker roles register the same collector through
    // register_build_info on theirs.
    let app = coffer_test_support::TestApp::spawn().await;
    let api = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let worker = prometheus::Registry::new();
    coffer_store::metrics::register_build_info(&worker).unwrap();
    let mut buffer = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &worker.gather(), &mut buffer).unwrap();
    let text = String::from_utf8(buffer).unwrap();
    for name in &names {
        assert!(
            samples(&api).keys().any(|s| s == name),
            "the API does not expose {name}"
        );
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())),
            "a worker role does not expose {name}"
        );
    }
}
