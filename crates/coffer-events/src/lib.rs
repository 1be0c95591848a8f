//! Coffer's RabbitMQ adapter (features E1 and E2).
//!
//! - [`relay`]: the outbox publisher. Rows written in the money transaction are claimed under a
//!   lease, published to a topic exchange with publisher confirms and the mandatory flag, and
//!   marked published only after their confirm; rows that keep failing go to a dead-letter queue.
//! - [`envelope`]: the CloudEvents 1.0 envelope, on the wire (AMQP binary content mode) and on the
//!   WebSocket (structured JSON).
//! - [`hub`] and [`consumer`]: each API replica consumes the exchange with its own queue and fans
//!   events out to the connections of the user they belong to.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod broker;
pub mod consumer;
pub mod envelope;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod publisher;
pub mod relay;

use thiserror::Error;

pub use envelope::CloudEvent;
pub use hub::{Live, StreamHub};
pub use metrics::{PublisherMetrics, StreamMetrics};
pub use relay::{Relay, RelayConfig};

/// The default topic exchange; tests and side-by-side deployments configure their own.
pub const DEFAULT_EXCHANGE: &str = "coffer.events";

#[derive(Debug, Error)]
pub enum EventsError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(std::time::Duration),
    #[error("store error: {0}")]
    Store(#[from] coffer_store::StoreError),
    #[error("a message is not a Coffer event: {0}")]
    Envelope(String),
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Jittered exponential backoff: `base * 2^attempt`, capped at `max`, between half and all of it.
pub fn backoff(base: std::time::Duration, attempt: u32, max: std::time::Duration) -> std::time::Duration {
    use rand::Rng;
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let millis = ceiling.as_millis().max(2) as u64;
    std::time::Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}
