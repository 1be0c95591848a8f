//! The API exposes every metric the catalogue (docs/metrics.md) lists for it, with the values a
//! scripted flow implies, in an exposition promtool accepts.

use std::collections::BTreeMap;

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

const CATALOGUE: &str = include_str!("../../docs/metrics.md");

/// The catalogue's metric names for a role.
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

#[tokio::test]
async fn metrics_cover_the_catalogue_with_the_values_of_a_scripted_flow() {
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let from = app.create_wallet(&alice, "ETH").await;
    let to = app.create_wallet(&bob, "ETH").await;
    app.deposit(&payment, &from, "5").await;
    for _ in 0..3 {
        let reply = app
            .post(
                "/v1/transfers",
                &alice.access_token,
                json!({ "from_wallet_id": from, "to_wallet_id": to, "amount": "0.5" }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let body =
        json!({ "wallet_id": from, "amount": "1", "destination_address": format!("0x{}", "aa".repeat(20)) });
    let device = app.trusted_device(&alice).await;
    let headers = [("X-Device-Id", device.as_str())];
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

    let exposition = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let values = samples(&exposition);
    for name in catalogued("api") {
        let exposed = values.keys().any(|series| {
            series == &name
                || series.starts_with(&format!("{name}{{"))
                || series.starts_with(&format!("{name}_bucket{{"))
        });
        assert!(exposed, "{name} is in the catalogue but not exposed");
    }
    let value = |series: &str| {
        values
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("no series {series}"))
    };
    assert_eq!(value(r#"coffer_ledger_movements_total{kind="transfer"}"#), 3.0);
    assert_eq!(value(r#"coffer_ledger_movements_total{kind="deposit"}"#), 1.0);
    assert_eq!(value(r#"coffer_ledger_movements_total{kind="withdrawal"}"#), 1.0);
    assert_eq!(value("coffer_idempotent_replays_total"), 1.0);
    assert_eq!(value("coffer_ledger_transaction_give_ups_total"), 0.0);
    assert_eq!(
        value(r#"coffer_http_requests_total{method="POST",route="/v1/transfers",status_class="2xx"}"#),
        3.0
    );
    assert_eq!(
        value(r#"coffer_http_rate_limited_total{limiter="money_user"}"#),
        0.0
    );

    promtool_accepts(&exposition);
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
