//! HTTP metrics: requests and latency by route template (never raw paths), method, status class.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::ApiContext;

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub idempotent_replays: IntCounter,
    pub rate_limited: IntCounterVec,
    pub refused: IntCounterVec,
    pub webhook_rejected: IntCounterVec,
}

/// The money routes whose refusals are counted, and the movement kind of each.
const MONEY_ROUTES: [(&str, &str); 3] = [
    ("/v1/transfers", "transfer"),
    ("/v1/withdrawals", "withdrawal"),
    ("/v1/deposits", "deposit"),
];

/// The reasons of `coffer_movements_refused_total` (problem codes, plus `manual_review` for a
/// withdrawal held for a reviewer instead of going straight to broadcast).
pub const REFUSAL_REASONS: [&str; 17] = [
    "insufficient_funds",
    "below_minimum",
    "above_maximum",
    "daily_limit_exceeded",
    "withdrawals_disabled",
    "device_not_trusted",
    "device_signature_invalid",
    "device_signature_replayed",
    "destination_not_saved",
    "destination_cooling_off",
    "reauthentication_required",
    "balance_limit_exceeded",
    "same_wallet",
    "account_frozen",
    "verification_required",
    "first_recipient_limit",
    "manual_review",
];

impl HttpMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let labels = &["route", "method", "status_class"];
        let metrics = HttpMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "coffer_http_requests_total",
                    "HTTP requests by route template, method and status class.",
                ),
                labels,
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("coffer_http_request_duration_seconds", "HTTP request latency.").buckets(
                    vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                ),
                &["route", "method"],
            )?,
            idempotent_replays: IntCounter::with_opts(Opts::new(
                "coffer_idempotent_replays_total",
                "Responses replayed for a repeated Idempotency-Key.",
            ))?,
            refused: IntCounterVec::new(
                Opts::new(
                    "coffer_movements_refused_total",
                    "Money movements refused by the risk and balance checks, by kind and reason (manual_review: held for a reviewer).",
                ),
                &["kind", "reason"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "coffer_http_rate_limited_total",
                    "Requests refused with 429, by limiter.",
                ),
                &["limiter"],
            )?,
            webhook_rejected: IntCounterVec::new(
                Opts::new(
                    "coffer_webhook_events_rejected_total",
                    "Provider webhook events the chain does not back (credited nothing, kept for review), by chain and reason.",
                ),
                &["chain", "reason"],
            )?,
        };
        registry.register(Box::new(metrics.webhook_rejected.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.idempotent_replays.clone()))?;
        registry.register(Box::new(metrics.rate_limited.clone()))?;
        registry.register(Box::new(metrics.refused.clone()))?;
        for (_, kind) in MONEY_ROUTES {
            for reason in REFUSAL_REASONS {
                metrics.refused.with_label_values(&[kind, reason]);
            }
        }
        coffer_store::metrics::register_build_info(registry)?;
        // Every limiter's series exists from the start, at zero, so rate() and absence alerts work.
        for limiter in ["auth_ip", "money_ip", "money_user"] {
            metrics.rate_limited.with_label_values(&[limiter]);
        }
        Ok(metrics)
    }
}

impl HttpMetrics {
    /// Creates the webhook series of `chain` at zero (a chain whose reports are checked).
    pub fn init_chain(&self, chain: &str) {
        for reason in coffer_chain::deposits::DISAGREEMENTS {
            self.webhook_rejected.with_label_values(&[chain, reason]);
        }
    }

    /// Counts a refused (or review-held) movement; unknown reasons are not counted, so the label
    /// set stays bounded.
    pub fn refused(&self, kind: &str, reason: &str) {
        if REFUSAL_REASONS.contains(&reason) {
            self.refused.with_label_values(&[kind, reason]).inc();
        }
    }
}

pub async fn track(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    let metrics = ctx.metrics();
    if let (Some((_, kind)), Some(code)) = (
        MONEY_ROUTES.iter().find(|(r, _)| *r == route),
        response.extensions().get::<crate::error::ProblemCode>(),
    ) {
        metrics.refused(kind, code.0);
    }
    metrics
        .requests
        .with_label_values(&[&route, &method, &class])
        .inc();
    metrics
        .duration
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    response
}
