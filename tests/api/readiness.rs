//! Issue 16 item 6: `/readyz` says whether every dependency of the role answers, from background
//! checks, so a busy database that answers within the check's budget keeps the pod ready, and the
//! probe itself answers at once (a kubelet gives it 2 s); a handler that panics answers a
//! problem+json 500 instead of dropping the connection.

use std::time::{Duration, Instant};

use axum::routing::get;
use coffer_store::{Store, StoreConfig, StoreMetrics};
use coffer_test_support::tls::SlowProxy;
use coffer_test_support::{mongodb_uri, Options, TestApp};

#[tokio::test]
async fn a_busy_database_that_answers_within_the_budget_keeps_the_role_ready() {
    let upstream = mongodb_uri()
        .trim_start_matches("mongodb://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_string();
    // 1.2 s each way: every round trip to the database takes about 2.4 s, past a probe's 2 s.
    let proxy = SlowProxy::start(&upstream, Duration::from_millis(1_200)).await;
    let uri = format!("mongodb://127.0.0.1:{}/?directConnection=true", proxy.port);
    let metrics = StoreMetrics::new(&prometheus::Registry::new()).unwrap();
    let slow = Store::connect(&uri, "readiness", StoreConfig::default(), metrics)
        .await
        .unwrap();
    let asked = Instant::now();
    slow.ping().await.expect("the slow database answers");
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "each answer takes longer than a probe may wait"
    );

    let health = coffer_api::store_health(&slow)
        .timing(Duration::from_secs(8), Duration::from_millis(200))
        .start();
    assert!(health.report().await.ready, "ready once the first check answered");
    for _ in 0..8 {
        let asked = Instant::now();
        let report = health.report().await;
        assert!(report.ready, "{report:?}");
        assert!(
            asked.elapsed() < Duration::from_millis(100),
            "the probe answers from the last check"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A database that is gone is reported within a budget and an interval.
    proxy.stop();
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let report = health.report().await;
        if !report.ready {
            assert_eq!(report.failing(), ["mongodb"]);
            break;
        }
        assert!(Instant::now() < deadline, "a dead database still reported ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_api_is_ready_when_its_database_answers() {
    let app = TestApp::spawn().await;
    let reply = app.send("GET", "/readyz", None, None, None).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_panicking_handler_answers_a_problem_500_and_the_server_keeps_serving() {
    let boom = axum::Router::new().route(
        "/boom",
        get(|| async {
            if Instant::now().elapsed() < Duration::from_secs(3600) {
                panic!("a bug in a handler");
            }
            "never"
        }),
    );
    let app = TestApp::spawn_with(Options {
        extra_routes: Some(boom),
        ..Options::default()
    })
    .await;
    let response = app
        .client
        .get(app.url("/boom"))
        .send()
        .await
        .expect("an answer, not a reset");
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "the one error format"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "internal");
    assert!(
        body.get("detail").is_none(),
        "the panic message is not sent: {body}"
    );
    assert_eq!(app.send("GET", "/healthz", None, None, None).await.status, 200);
}
