//! The publisher's run loop: connect, relay until the broker or the database fails, back off,
//! reconnect. Dropping the future is safe at any point: rows in flight stay leased and are
//! re-published with the same `message_id` after the lease expires.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{broker, EventsError, Relay};

/// Longest pause between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);

/// Whether a publisher or consumer holds a working broker channel (for `/readyz`, tests).
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub(crate) fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed)
    }
}

/// Runs the publisher forever, reconnecting with jittered exponential backoff.
pub async fn run(relay: Relay, broker: impl Into<broker::Endpoint>, readiness: Readiness) {
    let broker = broker.into();
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let error = relay_until_error(&relay, &broker, &readiness).await;
        readiness.set(false);
        // A connection that worked for a while starts the backoff over.
        failures = if started.elapsed() > RECONNECT_MAX {
            1
        } else {
            failures.saturating_add(1)
        };
        let pause = crate::backoff(Duration::from_millis(200), failures, RECONNECT_MAX);
        tracing::warn!(error = %error, retry_in_ms = pause.as_millis() as u64, "outbox publisher lost the broker or the database; reconnecting");
        tokio::time::sleep(pause).await;
    }
}

async fn relay_until_error(relay: &Relay, endpoint: &broker::Endpoint, readiness: &Readiness) -> EventsError {
    let connection = match broker::connect(
        endpoint.clone(),
        &format!("coffer-outbox-publisher:{}", relay.config().owner),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return e,
    };
    let channel = match broker::publisher_channel(&connection, &relay.config().exchange).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    readiness.set(true);
    tracing::info!(exchange = %relay.config().exchange, owner = %relay.config().owner, "outbox publisher connected");
    let mut gauges_at = Instant::now() - GAUGE_INTERVAL;
    loop {
        if gauges_at.elapsed() >= GAUGE_INTERVAL {
            gauges_at = Instant::now();
            if let Err(e) = relay.refresh_gauges().await {
                return e;
            }
        }
        match relay.relay_once(&channel).await {
            Ok(0) => tokio::time::sleep(relay.config().idle_poll).await,
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}
