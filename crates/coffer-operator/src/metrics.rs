//! The operator's own Prometheus metrics (reconciles, errors by reason, duration, leadership).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Metrics registered in their own registry, served on `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub errors: IntCounterVec,
    pub duration: Histogram,
    pub leader: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounter::new(
            "coffer_operator_reconciles_total",
            "WalletPlatform reconciliations started",
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "coffer_operator_reconcile_errors_total",
                "Failed reconciliations by error reason",
            ),
            &["error"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "coffer_operator_reconcile_duration_seconds",
                "Time spent in one reconciliation",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0]),
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "coffer_operator_leader",
            "1 while this replica holds the leader Lease",
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut buffer = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buffer)
            .expect("metrics encode as text");
        buffer
    }
}
