//! `/metrics`, `/healthz` and `/readyz` for the operator itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Readiness: true once this replica leads (or stands by correctly); the Service does not route
/// traffic to the operator, so readiness only informs rollouts.
#[derive(Clone, Default)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
}

pub fn router(metrics: Arc<Metrics>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route(
            "/readyz",
            get(move || {
                let ready = health.ready.load(Ordering::Relaxed);
                std::future::ready(if ready {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                })
            }),
        )
}

/// Binds first (so a bad address fails `run` at once), then serves in the background.
pub async fn spawn(listen: SocketAddr, metrics: Arc<Metrics>, health: Health) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(metrics, health)).await {
            tracing::error!(%error, "the metrics server stopped");
        }
    });
    Ok(())
}
