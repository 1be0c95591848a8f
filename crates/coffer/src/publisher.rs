//! `coffer outbox-publisher`: the relay plus a tiny operations server (/healthz, /readyz, /metrics).

use anyhow::Context;
use coffer_events::publisher::Readiness;
use coffer_events::{PublisherMetrics, Relay};
use coffer_store::Store;

use crate::cli::{AmqpArgs, PublisherArgs};

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
    let health = coffer_api::store_health(&store)
        .flag("broker", move || readiness.is_ready())
        .start();
    tracing::info!(exchange = %args.amqp.events_exchange, "outbox publisher started");
    let server = crate::ops_server::spawn(&args.listen, health, registry, crate::shutdown_signal()).await?;
    server.await.context("the operations server task")??;
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
