//! The publisher's run loop: connect, relay until the broker or the database fails, back off,
//! reconnect. Rounds are pipelined: up to four are sent while earlier ones wait for their
//! confirms, and they are settled in the order they were sent. Dropping the future is safe at any
//! point: cursors move only over confirmed rows, so what was sent and not settled is published
//! again with the same `message_id` (by this replica once it reconnects, or by the partition's next
//! holder after the lease).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::relay::{Claim, Sent};
use crate::{broker, EventsError, Relay};

/// Longest pause between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);
/// Rounds sent and not yet settled: the pipeline's depth (each at most 16 × batch rows).
const MAX_ROUNDS_IN_FLIGHT: usize = 4;

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
    relay.rewind(); // whatever an earlier connection sent and did not settle is sent again
    let mut gauges_at = Instant::now() - GAUGE_INTERVAL;
    let mut in_flight: VecDeque<(Claim, Sent)> = VecDeque::new();
    loop {
        if gauges_at.elapsed() >= GAUGE_INTERVAL {
            gauges_at = Instant::now();
            if let Err(e) = relay.refresh_gauges().await {
                return e;
            }
        }
        // Settle finished rounds in the order they were sent: a cursor moves over confirms only.
        while in_flight.front().is_some_and(|(_, sent)| sent.is_done()) {
            let (mut claim, sent) = in_flight.pop_front().expect("checked");
            let confirmed = relay.confirm(&mut claim, sent, &channel).await;
            if let Err(e) = relay.settle(claim).await.and(confirmed) {
                relay.rewind();
                return e;
            }
        }
        // Read and send the next round while earlier ones wait for their confirms. Straight on
        // while a backlog fills whole rounds; otherwise let new rows gather for a moment, so a
        // trickle costs a few reads per poll, not a busy loop of them.
        let mut full = false;
        if in_flight.len() < MAX_ROUNDS_IN_FLIGHT {
            match relay.claim().await {
                Ok(Some(claim)) => match relay.send(&claim, &channel).await {
                    Ok(sent) => {
                        full = claim.rows().len() >= relay.config().batch_size as usize;
                        in_flight.push_back((claim, sent));
                    }
                    Err(e) => {
                        relay.rewind();
                        return e;
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    relay.rewind();
                    return e;
                }
            }
        }
        if !full {
            tokio::time::sleep(relay.config().idle_poll).await;
        }
    }
}
