//! `coffer outbox-publisher`: the relay plus a tiny operations server (/healthz, /readyz, /metrics).

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use coffer_events::publisher::Readiness;
use coffer_events::{PublisherMetrics, Relay};
use coffer_store::Store;
use prometheus::Encoder;

use crate::cli::{AmqpArgs, PublisherArgs};

#[derive(Clone)]
struct OpsState {
    store: Store,
    readiness: Readiness,
    registry: prometheus::Registry,
}

/// This replica's name: the pod name on Kubernetes, else host and process id.
fn owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}:{}", std::process::id())
}

/// The broker of `amqp`, trusting `roots` for `amqps://`.
pub fn endpoint(amqp: &AmqpArgs, roots: &coffer_tls::TlsRoots) -> coffer_events::broker::Endpoint {
    coffer_events::broker::Endpoint::new(amqp.amqp_uri.as_str()).with_roots(roots)
}

pub async fn run(args: PublisherArgs, roots: &coffer_tls::TlsRoots) -> anyhow::Result<()> {
    let config = args.relay_config(&owner())?;
    let registry = prometheus::Registry::new();
    coffer_store::metrics::register_build_info(&registry)?;
    let store = crate::connect(&args.db, &registry).await?;
    let metrics = PublisherMetrics::new(&registry).context("registering publisher metrics")?;
    let relay = Relay::new(&store, config, metrics);
    let readiness = Readiness::default();
    let publisher = tokio::spawn(coffer_events::publisher::run(
        relay,
        endpoint(&args.amqp, roots),
        readiness.clone(),
    ));
    let state = OpsState {
        store,
        readiness,
        registry,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, exchange = %args.amqp.events_exchange, "outbox publisher serving /healthz, /readyz, /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await?;
    // Stopping mid-batch is safe: leased rows are re-published (same message id) after the lease.
    publisher.abort();
    tracing::info!("stopped");
    Ok(())
}

/// `coffer dev`: the publisher as a task beside the API, its metrics in the API's registry. If the
/// broker is unreachable it logs a warning and keeps retrying with backoff; the API keeps serving.
pub fn spawn_beside_api(
    store: &Store,
    amqp: &AmqpArgs,
    broker: coffer_events::broker::Endpoint,
    registry: &prometheus::Registry,
) -> anyhow::Result<()> {
    let config = coffer_events::RelayConfig::new(&amqp.events_exchange, &owner());
    let metrics = PublisherMetrics::new(registry).context("registering publisher metrics")?;
    let relay = Relay::new(store, config, metrics);
    let uri = broker;
    tokio::spawn(async move {
        if let Err(e) = coffer_events::broker::connect(uri.clone(), "coffer-dev-probe").await {
            tracing::warn!(error = %e, "RabbitMQ (AMQP_URI) is not reachable: events wait in the outbox until it is; the API keeps running");
        }
        coffer_events::publisher::run(relay, uri, Readiness::default()).await
    });
    Ok(())
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let database = state.store.ping().await.is_ok();
    match (database, state.readiness.is_ready()) {
        (true, true) => (StatusCode::OK, "ready"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable"),
    }
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    let mut buffer = Vec::new();
    let encoded = prometheus::TextEncoder::new().encode(&state.registry.gather(), &mut buffer);
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buffer,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        ),
    }
}
