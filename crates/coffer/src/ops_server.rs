//! The one operations server of the worker roles (outbox-publisher, chain-listener, reconciler):
//! `/healthz` (alive), `/readyz` (every dependency of the role, from background checks:
//! [`coffer_telemetry::health`]) and `/metrics` (Prometheus text format).

use std::future::Future;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use coffer_telemetry::health::Health;
use prometheus::Encoder;

#[derive(Clone)]
struct Ops {
    health: Health,
    registry: prometheus::Registry,
}

/// The routes, for a test or a caller with its own listener.
pub fn router(health: Health, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ops { health, registry })
}

/// Binds `listen` and serves until `shutdown`, in a task of its own.
pub async fn spawn(
    listen: &str,
    health: Health,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, "serving /healthz, /readyz, /metrics");
    let app = router(health, registry);
    Ok(tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    }))
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let report = ops.health.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        report.text(),
    )
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let mut buffer = Vec::new();
    match prometheus::TextEncoder::new().encode(&ops.registry.gather(), &mut buffer) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            buffer,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        ),
    }
}
