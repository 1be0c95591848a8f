//! Metrics of the storage layer, registered into the role's registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Registers `coffer_build_info` (always 1; labels `version` and `commit`) into `registry`. Every
/// role calls it once for the registry it serves; the commit is `COFFER_GIT_COMMIT` at build time.
/// Registers `coffer_build_info` and the `process_*` metrics of this process (CPU seconds,
/// resident and virtual memory, open and maximum file descriptors, start time, threads): every
/// role calls it once on the registry it serves.
pub fn register_build_info(registry: &Registry) -> prometheus::Result<()> {
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let build_info = IntGaugeVec::new(
        Opts::new("coffer_build_info", "Always 1; the labels say which build runs."),
        &["version", "commit"],
    )?;
    registry.register(Box::new(build_info.clone()))?;
    let commit = option_env!("COFFER_GIT_COMMIT").unwrap_or("unknown");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), commit])
        .set(1);
    Ok(())
}

#[derive(Clone)]
pub struct StoreMetrics {
    /// Database transactions retried after a transient error (write conflicts mostly).
    pub transaction_retries: IntCounter,
    /// Movements refused with "retry later" after exhausting attempts or waiting for locks.
    pub transaction_give_ups: IntCounter,
    /// Committed money movements by kind.
    pub movements: IntCounterVec,
    /// Movements per group-commit batch.
    pub batch_movements: Histogram,
    /// Time from a batch's start to its commit (all attempts).
    pub batch_seconds: Histogram,
    /// Session leases of dead processes this process ended (process_sessions).
    pub dead_sessions_ended: IntCounter,
}

impl StoreMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = StoreMetrics {
            transaction_retries: IntCounter::with_opts(Opts::new(
                "coffer_ledger_transaction_retries_total",
                "Database transactions of money movements retried after a transient error.",
            ))?,
            dead_sessions_ended: IntCounter::with_opts(Opts::new(
                "coffer_store_dead_process_leases_ended_total",
                "Session leases of processes that stopped renewing them, whose database sessions this process ended (their open transactions aborted).",
            ))?,
            transaction_give_ups: IntCounter::with_opts(Opts::new(
                "coffer_ledger_transaction_give_ups_total",
                "Money movements answered with retry-later after their bounded attempts.",
            ))?,
            movements: IntCounterVec::new(
                Opts::new(
                    "coffer_ledger_movements_total",
                    "Committed money movements by kind.",
                ),
                &["kind"],
            )?,
            batch_movements: Histogram::with_opts(
                HistogramOpts::new(
                    "coffer_ledger_batch_movements",
                    "Money movements written per group-commit database transaction.",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0,
                ]),
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "coffer_ledger_batch_duration_seconds",
                    "Time a group-commit batch takes from its first attempt to its commit.",
                )
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
        };
        registry.register(Box::new(metrics.batch_movements.clone()))?;
        registry.register(Box::new(metrics.batch_seconds.clone()))?;
        registry.register(Box::new(metrics.transaction_retries.clone()))?;
        registry.register(Box::new(metrics.transaction_give_ups.clone()))?;
        registry.register(Box::new(metrics.dead_sessions_ended.clone()))?;
        registry.register(Box::new(metrics.movements.clone()))?;
        for kind in [
            "deposit",
            "withdrawal",
            "transfer",
            "fee",
            "reversal",
            "adjustment",
            "conversion",
            "refund",
            "dispute",
        ] {
            metrics.movements.with_label_values(&[kind]);
        }
        Ok(metrics)
    }

    /// Metrics registered nowhere, for tools and tests that do not export them.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("fresh registry")
    }
}
