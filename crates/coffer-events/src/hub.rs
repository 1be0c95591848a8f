//! Fan-out of live events to WebSocket connections, per user, with bounded buffers.
//!
//! A connection whose buffer is full is cut off (its sender dropped and its overflow flag set)
//! instead of being buffered without bound; the socket then closes with a reason.
//!
//! Metrics (docs/metrics.md): `coffer_stream_connections` follows every subscribe and removal;
//! `coffer_stream_slow_consumers_dropped_total{reason="buffer_full"}` counts the cut-offs here, and
//! the stream handler counts `send_timeout` through [`StreamHub::slow_consumer_dropped`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::{CloudEvent, StreamMetrics};

/// Events buffered per connection by default.
pub const DEFAULT_BUFFER: usize = 256;
/// Connections per user by default.
pub const DEFAULT_MAX_PER_USER: usize = 16;

/// An event on its way to the connections of its user.
#[derive(Debug, Clone)]
pub struct Live {
    pub event: CloudEvent,
    /// The span that received it from the broker, when traces are exported: a delivery to a
    /// socket continues that trace.
    pub trace: Option<coffer_telemetry::SpanContext>,
}

impl Live {
    /// An event without trace context.
    pub fn untraced(event: CloudEvent) -> Arc<Live> {
        Arc::new(Live { event, trace: None })
    }
}

struct Subscriber {
    id: u64,
    sender: mpsc::Sender<Arc<Live>>,
    overflowed: Arc<AtomicBool>,
}

struct Shared {
    users: Mutex<HashMap<String, Vec<Subscriber>>>,
    next_id: AtomicU64,
    buffer: usize,
    max_per_user: usize,
    metrics: StreamMetrics,
}

/// The per-replica registry of stream connections.
#[derive(Clone)]
pub struct StreamHub {
    shared: Arc<Shared>,
}

/// One connection's feed; leaving the hub happens on drop.
pub struct Subscription {
    pub receiver: mpsc::Receiver<Arc<Live>>,
    overflowed: Arc<AtomicBool>,
    hub: StreamHub,
    user_id: String,
    id: u64,
}

impl Subscription {
    /// Whether the hub cut this connection off because its buffer was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.user_id, self.id);
    }
}

impl StreamHub {
    /// `buffer` events per connection, at most `max_per_user` connections per user; its metrics
    /// are registered nowhere (see [`StreamHub::with_metrics`]).
    pub fn new(buffer: usize, max_per_user: usize) -> Self {
        Self::with_metrics(buffer, max_per_user, StreamMetrics::unregistered())
    }

    /// [`StreamHub::new`] exporting its figures through `metrics` (the API's registry).
    pub fn with_metrics(buffer: usize, max_per_user: usize, metrics: StreamMetrics) -> Self {
        assert!(buffer > 0 && max_per_user > 0);
        StreamHub {
            shared: Arc::new(Shared {
                users: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                buffer,
                max_per_user,
                metrics,
            }),
        }
    }

    /// Counts a connection the stream handler closed because a send to its client timed out.
    pub fn slow_consumer_dropped(&self, reason: &str) {
        self.shared.metrics.slow_consumer_dropped(reason);
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscriber>>> {
        self.shared
            .users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connection of `user_id`; None when the user already has the maximum.
    pub fn subscribe(&self, user_id: &str) -> Option<Subscription> {
        let mut users = self.users();
        let list = users.entry(user_id.to_string()).or_default();
        if list.len() >= self.shared.max_per_user {
            return None;
        }
        let (sender, receiver) = mpsc::channel(self.shared.buffer);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let overflowed = Arc::new(AtomicBool::new(false));
        list.push(Subscriber {
            id,
            sender,
            overflowed: overflowed.clone(),
        });
        self.shared.metrics.connections.inc();
        Some(Subscription {
            receiver,
            overflowed,
            hub: self.clone(),
            user_id: user_id.to_string(),
            id,
        })
    }

    fn remove(&self, user_id: &str, id: u64) {
        let mut users = self.users();
        if let Some(list) = users.get_mut(user_id) {
            let before = list.len();
            list.retain(|s| s.id != id);
            // Gone already if the hub cut it off (counted there).
            self.shared.metrics.connections.sub((before - list.len()) as i64);
            if list.is_empty() {
                users.remove(user_id);
            }
        }
    }

    /// Hands `event` to every connection of `user_id` (and no one else's); returns how many took it.
    pub fn dispatch(&self, user_id: &str, event: Arc<Live>) -> usize {
        let mut users = self.users();
        let Some(list) = users.get_mut(user_id) else {
            return 0;
        };
        let before = list.len();
        list.retain(|s| match s.sender.try_send(event.clone()) {
            Ok(()) => true,
            Err(_) => {
                s.overflowed.store(true, Ordering::Relaxed);
                false
            }
        });
        let delivered = list.len();
        if before != delivered {
            let dropped = (before - delivered) as u64;
            self.shared.metrics.connections.sub(dropped as i64);
            self.shared
                .metrics
                .slow_consumers_dropped
                .with_label_values(&["buffer_full"])
                .inc_by(dropped);
            tracing::info!(
                dropped = before - delivered,
                "stream connections cut off: buffer full"
            );
        }
        if list.is_empty() {
            users.remove(user_id);
        }
        delivered
    }

    /// Ends every connection's feed (each socket then closes with 1001 and its client resumes
    /// with `?after=`, catching up from the outbox); returns how many. The replica's consumer
    /// calls it whenever it binds a new queue: events published while it had none reached no
    /// connection here, and a client that stayed connected would never know it missed them.
    pub fn restart_feed(&self) -> usize {
        let mut users = self.users();
        let closed: usize = users.values().map(Vec::len).sum();
        users.clear();
        self.shared.metrics.connections.sub(closed as i64);
        closed
    }

    /// Open connections (all users).
    pub fn connections(&self) -> usize {
        self.users().values().map(Vec::len).sum()
    }
}

impl Default for StreamHub {
    fn default() -> Self {
        StreamHub::new(DEFAULT_BUFFER, DEFAULT_MAX_PER_USER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restarted_feed_ends_every_connection_so_its_client_resumes() {
        let hub = StreamHub::new(4, 4);
        let (mut alice, mut bob) = (hub.subscribe("alice").unwrap(), hub.subscribe("bob").unwrap());
        assert_eq!(hub.restart_feed(), 2);
        assert!(alice.receiver.recv().await.is_none(), "alice's feed ended");
        assert!(bob.receiver.recv().await.is_none(), "bob's feed ended");
        assert!(!alice.overflowed(), "not a slow consumer");
        assert_eq!(hub.connections(), 0);
        drop((alice, bob));
        let _carol = hub.subscribe("carol").unwrap();
        assert_eq!(hub.connections(), 1, "a connection after the restart is fed");
    }

    fn event(id: &str) -> Arc<Live> {
        Live::untraced(CloudEvent {
            specversion: "1.0".into(),
            id: id.into(),
            source: "/coffer/ledger".into(),
            event_type: "wallet.balance.updated".into(),
            time: "t".into(),
            subject: "w".into(),
            dataschema: "s".into(),
            datacontenttype: "application/json".into(),
            data: serde_json::Value::Null,
        })
    }

    #[test]
    fn events_reach_only_their_users_connections_and_a_full_buffer_cuts_the_connection() {
        let hub = StreamHub::new(2, 2);
        let mut alice = hub.subscribe("alice").unwrap();
        let mut bob = hub.subscribe("bob").unwrap();
        assert_eq!(hub.dispatch("alice", event("1")), 1);
        assert_eq!(alice.receiver.try_recv().unwrap().event.id, "1");
        assert!(bob.receiver.try_recv().is_err(), "bob sees nothing of alice's");
        hub.dispatch("bob", event("2"));
        hub.dispatch("bob", event("3"));
        assert_eq!(
            hub.dispatch("bob", event("4")),
            0,
            "the third event overflows bob's buffer of 2"
        );
        assert!(bob.overflowed() && !alice.overflowed());
        assert_eq!(hub.connections(), 1);
        let _second = hub.subscribe("alice").unwrap();
        assert!(hub.subscribe("alice").is_none(), "at most 2 connections per user");
        drop(alice);
        assert_eq!(hub.connections(), 1);
    }

    #[test]
    fn the_gauge_follows_connections_and_cut_offs_are_counted_once() {
        let registry = prometheus::Registry::new();
        let metrics = StreamMetrics::new(&registry).unwrap();
        let hub = StreamHub::with_metrics(1, 4, metrics.clone());
        let dropped = |reason: &str| metrics.slow_consumers_dropped.with_label_values(&[reason]).get();
        let alice = hub.subscribe("alice").unwrap();
        let bob = hub.subscribe("bob").unwrap();
        let second = hub.subscribe("bob").unwrap();
        assert_eq!(metrics.connections.get(), 3);
        hub.dispatch("bob", event("1"));
        hub.dispatch("bob", event("2")); // both of bob's buffers (1 event) overflow
        assert_eq!((metrics.connections.get(), dropped("buffer_full")), (1, 2));
        drop((bob, second)); // already removed by the hub: not subtracted twice
        assert_eq!(metrics.connections.get(), 1);
        hub.slow_consumer_dropped("send_timeout");
        hub.slow_consumer_dropped("anything else"); // unknown reasons are not counted
        drop(alice);
        assert_eq!(
            (
                metrics.connections.get(),
                dropped("send_timeout"),
                dropped("buffer_full")
            ),
            (0, 1, 2)
        );
        assert_eq!(hub.connections(), 0);
    }
}
