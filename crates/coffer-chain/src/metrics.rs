//! Metrics of the chain roles (listener and withdrawal broadcaster), catalogued in
//! docs/metrics.md. The `chain` label is the configured chain name (a handful per platform).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use coffer_store::withdrawals::WithdrawalStats;

/// What happened to deposits, the `event` label of `coffer_chain_deposit_events_total`.
pub const DEPOSIT_EVENTS: [&str; 5] = ["recorded", "unmatched", "credited", "failed", "reversed"];
/// Outcomes of a broadcast attempt, the `outcome` label of `coffer_withdrawal_broadcasts_total`.
pub const BROADCAST_OUTCOMES: [&str; 7] = [
    "accepted",
    "found_after_error",
    "retry",
    "nonce_conflict",
    "replaced",
    "cancel_signed",
    "nonce_taken",
];
/// Buckets of `coffer_chain_deposit_credit_latency_seconds`. The deposit-crediting SLO counts a
/// deposit as good when credited within 60 s of its threshold block, so 60 must stay a bucket
/// boundary (deploy/monitoring/rules/coffer.rules.yaml, docs/observability.md).
pub const CREDIT_LATENCY_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

#[derive(Clone)]
pub struct ChainMetrics {
    pub head_block: IntGaugeVec,
    pub processed_block: IntGaugeVec,
    pub lag_blocks: IntGaugeVec,
    pub deposits_confirming: IntGaugeVec,
    pub deposit_events: IntCounterVec,
    pub deposit_credit_latency: HistogramVec,
    pub reorgs: IntCounterVec,
    pub poll_errors: IntCounterVec,
    pub withdrawals_signed: IntCounterVec,
    pub broadcasts: IntCounterVec,
    pub withdrawals_finished: IntCounterVec,
    pub withdrawals: IntGaugeVec,
    pub oldest_withdrawal_age: IntGauge,
    pub withdrawal_longest_in_state: IntGaugeVec,
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn counter(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

impl ChainMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = ChainMetrics {
            head_block: gauge("coffer_chain_head_block", "The node's latest block number.", &["chain"])?,
            processed_block: gauge(
                "coffer_chain_processed_block",
                "The last block the listener processed (its checkpoint).",
                &["chain"],
            )?,
            lag_blocks: gauge(
                "coffer_chain_lag_blocks",
                "Blocks between the node's head and the listener's checkpoint.",
                &["chain"],
            )?,
            deposits_confirming: gauge(
                "coffer_chain_deposits_confirming",
                "Deposits seen and waiting for their confirmation threshold (at most one page).",
                &["chain"],
            )?,
            deposit_events: counter(
                "coffer_chain_deposit_events_total",
                "Deposit lifecycle events: recorded, unmatched, credited, failed (re-orged before credit), reversed (re-orged after credit: a compensation).",
                &["chain", "event"],
            )?,
            deposit_credit_latency: HistogramVec::new(
                HistogramOpts::new(
                    "coffer_chain_deposit_credit_latency_seconds",
                    "From the block that gave a deposit its required confirmations (the block's timestamp) to the deposit's credit.",
                )
                .buckets(CREDIT_LATENCY_BUCKETS.to_vec()),
                &["chain"],
            )?,
            reorgs: counter("coffer_chain_reorgs_total", "Re-orgs detected (cursor rolled back).", &["chain"])?,
            poll_errors: counter(
                "coffer_chain_poll_errors_total",
                "Listener or broadcaster polls that failed (node or database unavailable) and were retried.",
                &["chain", "worker"],
            )?,
            withdrawals_signed: counter(
                "coffer_withdrawals_signed_total",
                "Withdrawals signed and stored before their first broadcast.",
                &["chain"],
            )?,
            broadcasts: counter(
                "coffer_withdrawal_broadcasts_total",
                "Broadcast attempts by outcome: accepted, found_after_error (the response was lost but the node has it), retry, nonce_conflict, replaced (a stuck one re-signed with higher fees), cancel_signed, nonce_taken (released: another transaction took the nonce).",
                &["chain", "outcome"],
            )?,
            withdrawals_finished: counter(
                "coffer_withdrawals_finished_total",
                "Withdrawals that reached a final state on chain (confirmed, failed).",
                &["chain", "state"],
            )?,
            withdrawals: gauge(
                "coffer_withdrawals",
                "Non-final withdrawals by state (all chains).",
                &["state"],
            )?,
            oldest_withdrawal_age: IntGauge::with_opts(Opts::new(
                "coffer_withdrawal_oldest_non_final_age_seconds",
                "Age of the oldest withdrawal that is not Confirmed or Failed (0 when none).",
            ))?,
            withdrawal_longest_in_state: gauge(
                "coffer_withdrawal_longest_in_state_seconds",
                "Per non-final state, how long the withdrawal waiting longest in it has gone without progress (since its last transition or signing; 0 when none).",
                &["state"],
            )?,
        };
        registry.register(Box::new(metrics.head_block.clone()))?;
        registry.register(Box::new(metrics.processed_block.clone()))?;
        registry.register(Box::new(metrics.lag_blocks.clone()))?;
        registry.register(Box::new(metrics.deposits_confirming.clone()))?;
        registry.register(Box::new(metrics.deposit_events.clone()))?;
        registry.register(Box::new(metrics.deposit_credit_latency.clone()))?;
        registry.register(Box::new(metrics.reorgs.clone()))?;
        registry.register(Box::new(metrics.poll_errors.clone()))?;
        registry.register(Box::new(metrics.withdrawals_signed.clone()))?;
        registry.register(Box::new(metrics.broadcasts.clone()))?;
        registry.register(Box::new(metrics.withdrawals_finished.clone()))?;
        registry.register(Box::new(metrics.withdrawals.clone()))?;
        registry.register(Box::new(metrics.oldest_withdrawal_age.clone()))?;
        registry.register(Box::new(metrics.withdrawal_longest_in_state.clone()))?;
        Ok(metrics)
    }

    /// Metrics registered nowhere (tests and tools).
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("fresh registry")
    }

    /// Creates every labelled series of `chain` at zero, so dashboards and alerts see them
    /// before the first event.
    pub fn init_chain(&self, chain: &str) {
        for event in DEPOSIT_EVENTS {
            self.deposit_events.with_label_values(&[chain, event]);
        }
        for outcome in BROADCAST_OUTCOMES {
            self.broadcasts.with_label_values(&[chain, outcome]);
        }
        for state in ["confirmed", "failed"] {
            self.withdrawals_finished.with_label_values(&[chain, state]);
        }
        for worker in ["listener", "broadcaster"] {
            self.poll_errors.with_label_values(&[chain, worker]);
        }
        self.reorgs.with_label_values(&[chain]);
        self.deposit_credit_latency.with_label_values(&[chain]);
        self.withdrawals_signed.with_label_values(&[chain]);
    }

    pub fn deposit_event(&self, chain: &str, event: &str, n: u64) {
        if n > 0 {
            self.deposit_events.with_label_values(&[chain, event]).inc_by(n);
        }
    }

    pub fn observe_withdrawals(&self, stats: &WithdrawalStats) {
        for (state, count) in &stats.by_state {
            self.withdrawals
                .with_label_values(&[state.as_str()])
                .set(*count as i64);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let age = |t: Option<coffer_store::codec::Time>| {
            t.map(|t| (now - t.timestamp_millis()).max(0) / 1000).unwrap_or(0)
        };
        self.oldest_withdrawal_age.set(age(stats.oldest_non_final));
        for (state, since) in &stats.least_recently_updated {
            self.withdrawal_longest_in_state
                .with_label_values(&[state.as_str()])
                .set(age(*since));
        }
    }

    /// Records a credited deposit: `threshold_block_time` is the Unix time (seconds) of the block
    /// that gave it its required confirmations.
    pub fn deposit_credited(&self, chain: &str, threshold_block_time: u64) {
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        let latency = (now - threshold_block_time as f64).max(0.0);
        self.deposit_credit_latency
            .with_label_values(&[chain])
            .observe(latency);
    }
}
