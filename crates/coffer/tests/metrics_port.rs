//! Issue 16: with `COFFER_METRICS_LISTEN` the API process serves `/metrics` on its operations
//! port only, so the public port (what an Ingress routes) never exposes it.
//!
//! Needs what scripts/test starts: MongoDB (`MONGODB_URI`) and RabbitMQ (`AMQP_URI`, default local).

use std::path::Path;

use coffer_test_support::process::{api_env, free_port, wait_ready, Roles};
use reqwest::StatusCode;

#[tokio::test]
async fn with_a_metrics_port_the_api_port_no_longer_serves_metrics() {
    let env = api_env("ports");
    let roles = Roles::new(Path::new(env!("CARGO_BIN_EXE_coffer")), "metrics-port", env);
    let (api_port, ops_port) = (free_port(), free_port());
    let _api = roles.spawn(
        "api",
        &["api"],
        &[
            ("COFFER_LISTEN", format!("127.0.0.1:{api_port}")),
            ("COFFER_METRICS_LISTEN", format!("127.0.0.1:{ops_port}")),
        ],
    );
    let client = reqwest::Client::new();
    let (api, ops) = (
        format!("http://127.0.0.1:{api_port}"),
        format!("http://127.0.0.1:{ops_port}"),
    );
    wait_ready(&client, &format!("{api}/readyz")).await;
    wait_ready(&client, &format!("{ops}/readyz")).await;

    let public = client.get(format!("{api}/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let metrics = client.get(format!("{ops}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("coffer_http_requests_total{method=\"GET\",route=\"/readyz\",status_class=\"2xx\"}"),
        "the API's own registry, with the probes of the public port: {text}"
    );
    assert!(text.contains("coffer_asset_catalog_refused 0"), "{text}");
    let health = client.get(format!("{ops}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}
