//! The operator's own Prometheus metrics (reconciles, errors by reason, duration, leadership).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The `error` label values of `coffer_operator_reconcile_errors_total` ([`crate::Error::reason`]),
/// each exposed at zero from the start so rates and alerts see them before the first failure.
pub const ERROR_REASONS: [&str; 7] = [
    "InvalidSpec",
    "SecretMissing",
    "SecretForbidden",
    "SecretKeyMissing",
    "ApiError",
    "NotNamespaced",
    "FinalizerFailed",
];

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
        let build_info = IntGaugeVec::new(
            Opts::new("coffer_build_info", "Always 1; the labels say which build runs."),
            &["version", "commit"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("COFFER_GIT_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        for reason in ERROR_REASONS {
            errors.with_label_values(&[reason]);
        }
        for collector in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(reconciles.clone()),
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        // process_* (CPU, memory, file descriptors, threads, start time), as in every role.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once per registry");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's rows of docs/metrics.md (role column naming `operator`).
    fn catalogued() -> Vec<String> {
        include_str!("../../../docs/metrics.md")
            .lines()
            .filter(|line| line.starts_with("| `coffer_"))
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let roles = cells.get(5)?;
                roles
                    .split(',')
                    .any(|role| role.trim() == "operator")
                    .then(|| cells[1].trim_matches('`').to_string())
            })
            .collect()
    }

    #[test]
    fn every_catalogued_operator_metric_is_exposed_from_the_start() {
        for process in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(
                Metrics::default().render().contains(process),
                "{process} is exposed"
            );
        }
        let metrics = Metrics::default();
        metrics.reconciles.inc();
        metrics.duration.observe(0.2);
        metrics.errors.with_label_values(&["SecretMissing"]).inc();
        let text = metrics.render();
        let names = catalogued();
        assert!(names.len() >= 5, "{names:?}");
        for name in names {
            assert!(
                text.lines().any(|line| line.starts_with(&format!("{name} "))
                    || line.starts_with(&format!("{name}{{"))
                    || line.starts_with(&format!("{name}_bucket{{"))),
                "{name} is catalogued for the operator but not exposed:\n{text}"
            );
        }
        for reason in ERROR_REASONS {
            let line = format!("coffer_operator_reconcile_errors_total{{error=\"{reason}\"}}");
            assert!(text.contains(&line), "{line} missing");
        }
        assert!(text.contains("coffer_operator_reconcile_errors_total{error=\"SecretMissing\"} 1"));
        assert!(text.contains("coffer_operator_reconcile_duration_seconds_count 1"));
        assert!(text.contains("coffer_operator_reconciles_total 1"));
    }
}
