//! The publisher's Prometheus metrics, registered into the registry the caller serves.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct PublisherMetrics {
    pub backlog: IntGauge,
    pub oldest_unpublished_age_seconds: IntGauge,
    pub dead_letters: IntGauge,
    pub partitions_held: IntGauge,
    pub published: IntCounter,
    pub publish_failures: IntCounter,
    pub dead_lettered: IntCounter,
    pub commit_to_confirm: Histogram,
}

impl PublisherMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let commit_to_confirm = Histogram::with_opts(
            HistogramOpts::new(
                "coffer_outbox_commit_to_confirm_seconds",
                "Time from writing an outbox row to the broker's confirm of its message",
            )
            .buckets(buckets),
        )?;
        registry.register(Box::new(commit_to_confirm.clone()))?;
        Ok(PublisherMetrics {
            backlog: gauge(
                "coffer_outbox_backlog",
                "Outbox rows not yet published in the partitions this replica holds, retries included",
            )?,
            oldest_unpublished_age_seconds: gauge(
                "coffer_outbox_oldest_unpublished_age_seconds",
                "Age of the oldest row this replica read in its last round (0 when none)",
            )?,
            dead_letters: gauge(
                "coffer_outbox_dead_letters",
                "Outbox rows in the dead-letter state",
            )?,
            partitions_held: gauge(
                "coffer_outbox_partitions_held",
                "Outbox partitions this publisher replica holds the lease of",
            )?,
            published: counter(
                "coffer_outbox_published_total",
                "Outbox rows published and confirmed",
            )?,
            publish_failures: counter(
                "coffer_outbox_publish_failures_total",
                "Publish attempts that were returned, nacked or not confirmed",
            )?,
            dead_lettered: counter(
                "coffer_outbox_dead_lettered_total",
                "Outbox rows moved to the dead-letter queue",
            )?,
            commit_to_confirm,
        })
    }
}

/// Why a stream connection was cut off as a slow consumer (the `reason` label).
pub const SLOW_CONSUMER_REASONS: [&str; 2] = ["buffer_full", "send_timeout"];

/// Metrics of the API's WebSocket fan-out (`GET /v1/stream`), registered into the API's registry.
#[derive(Clone)]
pub struct StreamMetrics {
    /// Open stream connections on this replica.
    pub connections: IntGauge,
    /// Connections cut off because the client could not keep up, by reason.
    pub slow_consumers_dropped: IntCounterVec,
}

impl StreamMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = StreamMetrics {
            connections: IntGauge::new(
                "coffer_stream_connections",
                "Open WebSocket stream connections on this replica",
            )?,
            slow_consumers_dropped: IntCounterVec::new(
                Opts::new(
                    "coffer_stream_slow_consumers_dropped_total",
                    "Stream connections cut off because the client could not keep up: its event buffer was full (buffer_full) or one send took longer than the send timeout (send_timeout)",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.slow_consumers_dropped.clone()))?;
        for reason in SLOW_CONSUMER_REASONS {
            metrics.slow_consumers_dropped.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    /// Metrics registered nowhere (a hub without an exporting role, tests).
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("fresh registry")
    }

    /// Counts a connection cut off as a slow consumer; `reason` is one of [`SLOW_CONSUMER_REASONS`].
    pub fn slow_consumer_dropped(&self, reason: &str) {
        if SLOW_CONSUMER_REASONS.contains(&reason) {
            self.slow_consumers_dropped.with_label_values(&[reason]).inc();
        }
    }
}
