//! Issue 16 item 1: every outgoing connection speaks TLS (rustls on ring) to a server whose
//! certificate is signed by a CA that only `COFFER_TLS_CA_FILE` trusts: the EVM JSON-RPC over
//! https, the OTLP exporter over https, the outbox publisher over amqps. Each endpoint is a TLS
//! proxy made by the test (CA and certificate by `openssl`) in front of the real local server.
//! Without the extra CA every one of them is refused: the certificate really is verified.

use std::time::Duration;

use coffer_chain::rpc::Rpc;
use coffer_events::broker::Endpoint;
use coffer_events::publisher::Readiness;
use coffer_telemetry::export;
use coffer_test_support::broker::{self, Broker};
use coffer_test_support::chain::Anvil;
use coffer_test_support::otlp::Receiver;
use coffer_test_support::tls::{TestCa, TlsProxy};
use coffer_test_support::TestApp;
use coffer_tls::TlsRoots;
use opentelemetry::trace::{Tracer, TracerProvider as _};

fn trusting(ca: &TestCa) -> TlsRoots {
    TlsRoots::load(Some(&ca.ca_file)).expect("the test CA loads")
}

#[tokio::test]
async fn json_rpc_over_https_is_verified_against_the_extra_ca() {
    let anvil = Anvil::start().await;
    let ca = TestCa::new();
    let upstream = anvil.url.trim_start_matches("http://").to_string();
    let proxy = TlsProxy::start(&ca, &upstream).await;
    let url = format!("https://localhost:{}", proxy.port);

    let rpc = Rpc::connect(&url, &trusting(&ca)).unwrap();
    let head = rpc.head().await.expect("eth_blockNumber over https");
    assert_eq!(head, anvil.rpc.head().await.unwrap(), "the same node answers");
    assert_eq!(rpc.chain_id().await.unwrap(), 31337);
    // By IP address too: the certificate names 127.0.0.1.
    let by_ip = Rpc::connect(&format!("https://127.0.0.1:{}", proxy.port), &trusting(&ca)).unwrap();
    assert!(by_ip.head().await.is_ok());

    let untrusting = Rpc::connect(&url, &TlsRoots::platform()).unwrap();
    let refused = untrusting.head().await.expect_err("an unknown CA is refused");
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "the error names the certificate: {refused}"
    );
}

#[tokio::test]
async fn otlp_spans_are_exported_over_https() {
    let receiver = Receiver::start().await;
    let ca = TestCa::new();
    let upstream = receiver
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches("/v1/traces")
        .to_string();
    let proxy = TlsProxy::start(&ca, &upstream).await;
    let endpoint = format!("https://localhost:{}/v1/traces", proxy.port);

    let export_one = |roots: TlsRoots, name: &'static str| {
        let endpoint = endpoint.clone();
        move || {
            let config = export::ExportConfig::to_endpoint(&endpoint, "coffer-tls-test");
            let provider = export::tracer_provider(&config, &roots).unwrap();
            provider.tracer("tls-test").in_span(name, |_| {});
            let flushed = provider.force_flush();
            let _ = provider.shutdown();
            flushed
        }
    };
    let trusted = tokio::task::spawn_blocking(export_one(trusting(&ca), "over-https"))
        .await
        .unwrap();
    assert!(trusted.is_ok(), "the export succeeded: {trusted:?}");
    let untrusted = tokio::task::spawn_blocking(export_one(TlsRoots::platform(), "refused"))
        .await
        .unwrap();
    assert!(untrusted.is_err(), "an unknown CA fails the export");

    let spans = receiver
        .wait_for(Duration::from_secs(5), || {}, |s| !s.is_empty())
        .await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["over-https"], "only the trusted export arrived");
    assert_eq!(spans[0].service_name, "coffer-tls-test");
}

#[tokio::test]
async fn amqps_publishes_with_confirms_through_the_extra_ca() {
    let app = TestApp::spawn().await;
    let mut broker = Broker::new().await;
    let queue = broker.queue("#").await;
    let ca = TestCa::new();
    let plain = broker::amqp_uri();
    let authority = plain
        .trim_start_matches("amqp://")
        .split_once('@')
        .map(|(_, rest)| rest.split('/').next().unwrap().to_string())
        .unwrap();
    let credentials = plain
        .trim_start_matches("amqp://")
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let proxy = TlsProxy::start(&ca, &authority).await;
    let amqps = format!("amqps://{credentials}@localhost:{}/%2f", proxy.port);

    // A client that does not trust the CA is refused at the handshake.
    let refused = coffer_events::broker::connect(Endpoint::new(amqps.as_str()), "tls-refused").await;
    assert!(refused.is_err(), "an unknown CA is refused");

    let subjects = vec![uuid::Uuid::new_v4().to_string()];
    let rows = broker::insert_events(&app.store, &subjects, 3, "wallet.balance.updated").await;
    let (relay, _registry) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "tls"));
    let readiness = Readiness::default();
    let endpoint = Endpoint::new(amqps.as_str()).with_roots(&trusting(&ca));
    let publisher = tokio::spawn(coffer_events::publisher::run(relay, endpoint, readiness.clone()));
    let received = broker.take(&queue, rows.len(), Duration::from_secs(10)).await;
    broker::await_drained(&app.store, Duration::from_secs(10)).await;
    assert!(readiness.is_ready(), "the publisher holds a channel over amqps");
    publisher.abort();
    let ids: Vec<String> = received.iter().map(|m| m.message_id.clone()).collect();
    let expected: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, expected, "every row was confirmed over TLS, in order");
    broker.cleanup().await;
}
