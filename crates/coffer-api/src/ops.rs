//! Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus::Encoder;

use crate::error::{ApiError, ApiResult, Problem};
use crate::ApiContext;

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", content_type = "text/plain", body = String, example = "ok")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: MongoDB answered its latest background check within its budget, and the stream
/// consumer holds a broker channel. Answered from the latest results, never waiting on them.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready", content_type = "text/plain", body = String, example = "ready"),
              (status = 503, description = "not ready: a dependency failed its latest check", body = Problem)))]
pub async fn readyz(State(ctx): State<ApiContext>) -> ApiResult<&'static str> {
    let report = ctx.health().report().await;
    if !report.ready {
        tracing::debug!(failing = ?report.failing(), "not ready");
        return Err(ApiError::RetryLater {
            retry_after_seconds: 5,
        });
    }
    Ok("ready")
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(ctx): State<ApiContext>) -> impl IntoResponse {
    let mut buffer = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if encoder.encode(&ctx.registry().gather(), &mut buffer).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        buffer,
    )
}

/// This document (also committed as docs/openapi.json).
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi_json(),
    )
}
