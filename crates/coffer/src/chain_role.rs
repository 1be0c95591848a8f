//! The `chain-listener` role: follows one chain, serves /healthz, /readyz and /metrics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use coffer_chain::listener::{Listener, ListenerConfig};
use coffer_chain::rpc::Rpc;
use coffer_domain::LiveCatalog;
use coffer_store::Store;
use prometheus::Encoder;

use crate::cli::ChainListenerArgs;

struct Probe {
    store: Store,
    rpc: Rpc,
    registry: prometheus::Registry,
}

/// The listener's settings from its arguments.
pub fn listener_config(
    chain: &str,
    poll_interval_ms: u64,
    start_block: Option<u64>,
    max_blocks: u64,
) -> ListenerConfig {
    let mut config = ListenerConfig::new(chain);
    config.poll_interval = Duration::from_millis(poll_interval_ms.clamp(100, 60_000));
    config.start_block = start_block;
    config.max_blocks_per_poll = max_blocks.clamp(1, 1000);
    config
}

pub async fn run(args: ChainListenerArgs) -> anyhow::Result<()> {
    let catalog = crate::assets::load(&args.assets_file)?;
    crate::assets::spawn_reloader(args.assets_file.clone(), catalog.clone(), Duration::from_secs(2));
    let registry = prometheus::Registry::new();
    let store = crate::connect(&args.db, &registry).await?;
    let rpc = Rpc::connect(&args.eth_rpc_url)?;
    let config = listener_config(
        &args.chain,
        args.poll_interval_ms,
        args.start_block,
        args.max_blocks_per_poll,
    );
    let listener = Listener::new(config, rpc.clone(), store.clone(), catalog);
    let probe = Arc::new(Probe { store, rpc, registry });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probe);
    let socket = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(chain = %args.chain, listen = %socket.local_addr()?, "following the chain");
    let server = tokio::spawn(async move { axum::serve(socket, app).await });
    listener.run(crate::shutdown_signal()).await;
    server.abort();
    Ok(())
}

async fn readyz(State(probe): State<Arc<Probe>>) -> (StatusCode, &'static str) {
    let store_ok = probe.store.ping().await.is_ok();
    let node_ok = probe.rpc.head().await.is_ok();
    if store_ok && node_ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(probe): State<Arc<Probe>>) -> (StatusCode, String) {
    let mut buffer = Vec::new();
    match prometheus::TextEncoder::new().encode(&probe.registry.gather(), &mut buffer) {
        Ok(()) => (StatusCode::OK, String::from_utf8_lossy(&buffer).into_owned()),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
    }
}

/// In `coffer dev`: one listener per chain of the catalog when `ETH_RPC_URL` answers; otherwise
/// a warning, and the API runs alone.
pub async fn spawn_in_dev(url: Option<&str>, store: &Store, catalog: &LiveCatalog) {
    let Some(url) = url else {
        tracing::warn!("ETH_RPC_URL is not set: dev runs without the chain listener");
        return;
    };
    let rpc = match Rpc::connect(url) {
        Ok(rpc) if rpc.head().await.is_ok() => rpc,
        _ => {
            tracing::warn!("ETH_RPC_URL does not answer: dev runs without the chain listener");
            return;
        }
    };
    let mut chains: Vec<String> = catalog.current().iter().map(|a| a.chain.clone()).collect();
    chains.sort();
    chains.dedup();
    for chain in chains {
        let listener = Listener::new(
            listener_config(&chain, 1000, None, 50),
            rpc.clone(),
            store.clone(),
            catalog.clone(),
        );
        tracing::info!(%chain, "dev: following the chain");
        tokio::spawn(async move { listener.run(std::future::pending()).await });
    }
}
