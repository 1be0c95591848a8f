//! The outbox publisher, in three steps a test can drive one at a time: [`Relay::claim`] renews
//! this replica's partition leases and reads the next rows of each partition it holds,
//! [`Relay::publish`] sends them all pipelined and awaits their confirms, and [`Relay::settle`]
//! moves each partition's cursor past what is done (one small write per partition, not one per
//! row) and records refusals. A crash anywhere leaves the cursors where they were: the next holder
//! of a partition re-publishes from there with the same `message_id`s (at-least-once).
//!
//! The run loop ([`crate::publisher`]) pipelines rounds: [`Relay::send`] a round, read and send the
//! next while the first one's confirms are on their way, then [`Relay::confirm`] and settle them
//! in order; a round is read after what was sent, not after what was settled.
//!
//! Order: a wallet's events are in one partition, and a partition has one publisher at a time
//! (its lease) that sends its rows in sequence order on one channel, so a wallet's events reach
//! the broker in commit order. A row the broker refuses (returned, nacked) is retried with
//! backoff after the rows behind it and dead-lettered after `max_attempts`: one poison event does
//! not stop its wallet's stream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_store::{codec, OutboxDoc, Store};
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};
use tracing::Instrument;

use crate::{broker, envelope, EventsError, PublisherMetrics};

/// Tunables of the relay, each bounded.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The topic exchange events go to (routing key = event type).
    pub exchange: String,
    /// This replica's name, recorded on the partitions it holds.
    pub owner: String,
    /// Rows read per partition per round (1..=1000).
    pub batch_size: u32,
    /// How long a partition lease holds without renewal; renewed every third of it.
    pub lease: Duration,
    /// Longest wait for one round's confirms.
    pub confirm_timeout: Duration,
    /// Failed attempts after which a row is dead-lettered.
    pub max_attempts: i32,
    /// Base of the backoff before a failed row is tried again.
    pub retry_base: Duration,
    /// Sleep when there is nothing to publish (an idle round costs one read of the partitions'
    /// heads).
    pub idle_poll: Duration,
}

impl RelayConfig {
    pub fn new(exchange: &str, owner: &str) -> Self {
        RelayConfig {
            exchange: exchange.to_string(),
            owner: owner.to_string(),
            batch_size: 500,
            lease: Duration::from_secs(15),
            confirm_timeout: Duration::from_secs(5),
            max_attempts: 5,
            retry_base: Duration::from_millis(500),
            idle_poll: Duration::from_millis(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Confirmed,
    Failed,
    DeadLettered,
}

/// The rows of one round, and what became of each.
pub struct Claim {
    rows: Vec<OutboxDoc>,
    /// Whether the row came from the retry path (its partition's cursor is already past it).
    retried: Vec<bool>,
    outcomes: Vec<Outcome>,
    errors: Vec<Option<String>>,
}

impl Claim {
    fn push(&mut self, row: OutboxDoc, retried: bool) {
        self.rows.push(row);
        self.retried.push(retried);
        self.outcomes.push(Outcome::Pending);
        self.errors.push(None);
    }

    pub fn rows(&self) -> &[OutboxDoc] {
        &self.rows
    }
    /// Ids confirmed by the broker so far, in publish order.
    pub fn confirmed_ids(&self) -> Vec<&str> {
        let pairs = self.rows.iter().zip(&self.outcomes);
        pairs
            .filter(|(_, o)| **o == Outcome::Confirmed)
            .map(|(r, _)| r.id.as_str())
            .collect()
    }
}

/// A round on its way to the broker: its confirms to await, and the publish spans they end.
pub struct Sent {
    /// Awaits every confirm of the round (bounded by `confirm_timeout`), off the relay's loop.
    confirms: tokio::task::JoinHandle<Option<Vec<Result<Confirmation, lapin::Error>>>>,
    spans: Vec<tracing::Span>,
}

impl Sent {
    /// Whether every confirm of the round arrived (or the wait for them ended).
    pub fn is_done(&self) -> bool {
        self.confirms.is_finished()
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.confirms.abort();
    }
}

/// The partitions this replica holds, with the cursor it has reached in each.
#[derive(Default)]
struct Leases {
    cursors: BTreeMap<i32, i64>,
    /// Per partition, the last row sent in a round not settled yet (ahead of `cursors`).
    sent: BTreeMap<i32, i64>,
    /// Rounds read and not settled yet; retries are read only when none is.
    in_flight: usize,
    renewed: Option<Instant>,
    /// Partitions with rows this replica sent to the retry path, and when the first is due.
    retries_due: BTreeMap<i32, Instant>,
    /// Every held partition's retry path is read once after each renewal (rows another replica
    /// left there).
    sweep_retries: bool,
    /// Creation time of the oldest row the last round read, for the age gauge.
    oldest_read: Option<codec::Time>,
}

/// The outbox publisher's state: the store, its config, its leases and metrics.
#[derive(Clone)]
pub struct Relay {
    store: Store,
    config: Arc<RelayConfig>,
    metrics: PublisherMetrics,
    leases: Arc<Mutex<Leases>>,
    /// `publish <exchange>`: the name of every publish span.
    publish_name: Arc<str>,
}

impl Relay {
    pub fn new(store: &Store, config: RelayConfig, metrics: PublisherMetrics) -> Relay {
        assert!(
            (1..=1000).contains(&config.batch_size),
            "batch size within 1..=1000"
        );
        assert!(config.max_attempts >= 1 && config.lease > config.confirm_timeout);
        Relay {
            store: store.clone(),
            publish_name: format!("publish {}", config.exchange).into(),
            config: Arc::new(config),
            metrics,
            leases: Arc::default(),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    pub fn metrics(&self) -> &PublisherMetrics {
        &self.metrics
    }

    /// The partitions held now, with their cursors (empty once the leases may have run out).
    pub fn held(&self) -> Vec<(i32, i64)> {
        let leases = self.leases.lock().expect("leases lock");
        let valid = self.config.lease.saturating_sub(self.config.confirm_timeout);
        match leases.renewed {
            Some(at) if at.elapsed() < valid => leases.cursors.iter().map(|(p, c)| (*p, *c)).collect(),
            _ => Vec::new(),
        }
    }

    /// Renews the leases when a third of their time has passed.
    async fn renew_if_due(&self) -> Result<(), EventsError> {
        let due = {
            let leases = self.leases.lock().expect("leases lock");
            leases
                .renewed
                .is_none_or(|at| at.elapsed() >= self.config.lease / 3)
        };
        if !due {
            return Ok(());
        }
        let leased = self
            .store
            .outbox_lease(&self.config.owner, self.config.lease)
            .await?;
        let mut leases = self.leases.lock().expect("leases lock");
        let previous = std::mem::take(&mut leases.cursors);
        for partition in &leased.partitions {
            let ours = previous.get(&partition.partition).copied().unwrap_or(0);
            leases
                .cursors
                .insert(partition.partition, ours.max(partition.through));
        }
        let Leases {
            cursors,
            retries_due,
            sent,
            ..
        } = &mut *leases;
        retries_due.retain(|p, _| cursors.contains_key(p));
        sent.retain(|p, _| cursors.contains_key(p));
        leases.renewed = Some(Instant::now());
        leases.sweep_retries = true;
        self.metrics.partitions_held.set(leases.cursors.len() as i64);
        Ok(())
    }

    /// Renews the leases if due and reads the next rows of every held partition (and rows due
    /// for a retry); None when there is nothing to publish.
    pub async fn claim(&self) -> Result<Option<Claim>, EventsError> {
        self.renew_if_due().await?;
        let held = self.held();
        let (idle, sent) = {
            let leases = self.leases.lock().expect("leases lock");
            (leases.in_flight == 0, leases.sent.clone())
        };
        // Retries are read only between pipelined rounds, so none is read twice while in flight.
        let (sweep, due) = if idle {
            self.retry_partitions(&held)
        } else {
            (false, Vec::new())
        };
        let mut claim = Claim {
            rows: Vec::new(),
            retried: Vec::new(),
            outcomes: Vec::new(),
            errors: Vec::new(),
        };
        let heads = if held.is_empty() {
            BTreeMap::new()
        } else {
            self.store.outbox_heads().await?
        };
        for (partition, stored) in &held {
            // After what was sent, which may be ahead of what was settled.
            let after = sent.get(partition).map_or(*stored, |s| (*s).max(*stored));
            if sweep || due.contains(partition) {
                for row in self.store.outbox_due(*partition, self.config.batch_size).await? {
                    claim.push(row, true);
                }
            }
            if heads.get(partition).is_some_and(|head| *head > after) {
                let rows = self.store.outbox_after(*partition, after, self.config.batch_size);
                for row in rows.await? {
                    claim.push(row, false);
                }
            }
        }
        let oldest = claim.rows.iter().map(|r| r.created_at).min();
        let mut leases = self.leases.lock().expect("leases lock");
        leases.oldest_read = oldest;
        if claim.rows.is_empty() {
            return Ok(None);
        }
        for (row, retried) in claim.rows.iter().zip(&claim.retried) {
            if !retried {
                leases.sent.insert(row.partition, row.seq);
            }
        }
        leases.in_flight += 1;
        Ok(Some(claim))
    }

    /// Whether to read every held partition's retry path this round, and which partitions have
    /// retries of ours due now.
    fn retry_partitions(&self, held: &[(i32, i64)]) -> (bool, Vec<i32>) {
        let mut leases = self.leases.lock().expect("leases lock");
        let sweep = std::mem::take(&mut leases.sweep_retries) && !held.is_empty();
        let now = Instant::now();
        let due: Vec<i32> = leases
            .retries_due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| *p)
            .collect();
        for partition in &due {
            leases.retries_due.remove(partition);
        }
        (sweep, due)
    }

    /// Publishes every row of the claim, pipelined in order on `channel`, then awaits their
    /// confirms. On a broker error it stops; call [`Relay::settle`] either way.
    pub async fn publish(&self, claim: &mut Claim, channel: &Channel) -> Result<(), EventsError> {
        let sent = self.send(claim, channel).await?;
        self.confirm(claim, sent, channel).await
    }

    /// Sends every row of the claim, in order, without waiting for the broker: the next round
    /// can be read and sent while these confirms are on their way ([`Relay::confirm`]).
    pub async fn send(&self, claim: &Claim, channel: &Channel) -> Result<Sent, EventsError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let mut confirms = Vec::with_capacity(claim.rows.len());
        let mut spans = Vec::with_capacity(claim.rows.len());
        for row in &claim.rows {
            let span = self.publish_span(row);
            // Consumers continue the trace from the publish span; untraced, from the row's context.
            let traceparent = coffer_telemetry::propagation::traceparent_of(&span);
            let traceparent = traceparent.as_deref().or(row.traceparent.as_deref());
            let message = envelope::to_amqp_traced(row, traceparent);
            let exchange = self.config.exchange.as_str().into();
            let key = message.routing_key.as_str().into();
            let publish = channel.basic_publish(exchange, key, options, &message.body, message.properties);
            confirms.push(publish.instrument(span.clone()).await?);
            spans.push(span);
        }
        let all = futures::future::join_all(confirms);
        let timeout = self.config.confirm_timeout;
        let confirms = tokio::spawn(async move { tokio::time::timeout(timeout, all).await.ok() });
        Ok(Sent { confirms, spans })
    }

    /// Awaits the confirms of a round sent by [`Relay::send`] and records each row's outcome.
    pub async fn confirm(
        &self,
        claim: &mut Claim,
        mut sent: Sent,
        channel: &Channel,
    ) -> Result<(), EventsError> {
        let timeout = EventsError::ConfirmTimeout(self.config.confirm_timeout);
        let results = (&mut sent.confirms).await.ok().flatten().ok_or(timeout)?;
        // A publish span lasts until its confirm: what publishing with confirms costs.
        let spans = std::mem::take(&mut sent.spans);
        for (index, (result, span)) in results.into_iter().zip(spans).enumerate() {
            match rejection(result?) {
                None => self.confirmed(claim, index),
                Some(reason) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", reason_type(&reason));
                    self.failed(claim, index, reason, channel).await?
                }
            }
        }
        // The broker has these rows; their cursors have not moved (the fault harness kills here).
        coffer_telemetry::faults::point("relay.after_confirm");
        Ok(())
    }

    /// Forgets what was sent but not settled (after a broker error): the next round reads each
    /// partition from its stored cursor again, and re-sends with the same message ids.
    pub fn rewind(&self) {
        let mut leases = self.leases.lock().expect("leases lock");
        leases.sent.clear();
        leases.in_flight = 0;
    }

    /// The producer span of one row's message: a child of the context stored with the row (the
    /// transaction that wrote it), so a trace runs from the request to the broker and beyond.
    fn publish_span(&self, row: &OutboxDoc) -> tracing::Span {
        let span = tracing::info_span!(
            parent: None,
            "publish",
            otel.name = &*self.publish_name,
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "publish",
            messaging.operation.name = "publish",
            messaging.destination.name = self.config.exchange.as_str(),
            messaging.rabbitmq.destination.routing_key = row.event_type.as_str(),
            messaging.message.id = row.id.as_str(),
            error.type = tracing::field::Empty,
        );
        coffer_telemetry::propagation::set_parent_from_traceparent(&span, row.traceparent.as_deref(), None);
        span
    }

    fn confirmed(&self, claim: &mut Claim, index: usize) {
        claim.outcomes[index] = Outcome::Confirmed;
        let age_ms = codec::now().timestamp_millis() - claim.rows[index].created_at.timestamp_millis();
        self.metrics
            .commit_to_confirm
            .observe(age_ms.max(0) as f64 / 1000.0);
        self.metrics.published.inc();
    }

    /// Records a failed publish; the last allowed attempt goes to the dead-letter exchange.
    async fn failed(
        &self,
        claim: &mut Claim,
        index: usize,
        reason: String,
        channel: &Channel,
    ) -> Result<(), EventsError> {
        self.metrics.publish_failures.inc();
        let row = &claim.rows[index];
        tracing::warn!(event_id = %row.id, attempts = row.attempts + 1, %reason, "outbox publish failed");
        claim.errors[index] = Some(reason.clone());
        claim.outcomes[index] = Outcome::Failed;
        if row.attempts + 1 >= self.config.max_attempts {
            let dead = broker::publish_dead_letter(channel, &self.config.exchange, row, &reason).await?;
            if dead {
                claim.outcomes[index] = Outcome::DeadLettered;
                self.metrics.dead_lettered.inc();
            }
        }
        Ok(())
    }

    /// Records the round: refused rows get their attempt counted and a retry time (or their
    /// dead letter), retried rows that went through leave the retry path, and each partition's
    /// cursor moves past its leading rows that are done.
    pub async fn settle(&self, claim: Claim) -> Result<(), EventsError> {
        let mut cursors: BTreeMap<i32, i64> = BTreeMap::new();
        let mut blocked: Vec<i32> = Vec::new();
        let rows = claim.rows.iter().zip(&claim.retried);
        for ((row, retried), (outcome, error)) in rows.zip(claim.outcomes.iter().zip(&claim.errors)) {
            let error = error.as_deref().unwrap_or("");
            match outcome {
                Outcome::Failed => self.retry_later(row, error).await?,
                Outcome::DeadLettered => self.store.outbox_refused(&row.id, error, None).await?,
                Outcome::Confirmed if *retried => self.store.outbox_retried(&row.id).await?,
                _ => {}
            }
            if *retried || blocked.contains(&row.partition) {
                continue;
            }
            if *outcome == Outcome::Pending {
                blocked.push(row.partition); // not sent: the cursor stops before it
            } else {
                cursors.insert(row.partition, row.seq);
            }
        }
        let cursors: Vec<(i32, i64)> = cursors.into_iter().collect();
        let moved = self.store.outbox_advance(&self.config.owner, &cursors).await;
        let mut leases = self.leases.lock().expect("leases lock");
        leases.in_flight = leases.in_flight.saturating_sub(1);
        let moved = moved?;
        if moved < cursors.len() as u64 {
            leases.renewed = None; // a lease was lost: renew before the next round
        }
        for (partition, through) in cursors {
            if let Some(cursor) = leases.cursors.get_mut(&partition) {
                *cursor = (*cursor).max(through);
            }
        }
        Ok(())
    }

    async fn retry_later(&self, row: &OutboxDoc, error: &str) -> Result<(), EventsError> {
        let delay = crate::backoff(
            self.config.retry_base,
            row.attempts as u32,
            Duration::from_secs(60),
        );
        let at = codec::from_millis(codec::now().timestamp_millis() + delay.as_millis() as i64);
        self.store.outbox_refused(&row.id, error, Some(at)).await?;
        let mut leases = self.leases.lock().expect("leases lock");
        let due = Instant::now() + delay;
        let entry = leases.retries_due.entry(row.partition).or_insert(due);
        *entry = (*entry).min(due);
        Ok(())
    }

    /// One claim → publish → settle; Ok(n) rows handled (0: the outbox had nothing to do).
    pub async fn relay_once(&self, channel: &Channel) -> Result<usize, EventsError> {
        let Some(mut claim) = self.claim().await? else {
            return Ok(0);
        };
        let n = claim.rows.len();
        let published = self.publish(&mut claim, channel).await;
        self.settle(claim).await?;
        published.map(|()| n)
    }

    /// Refreshes the backlog, oldest-age and dead-letter gauges (of this replica's partitions).
    pub async fn refresh_gauges(&self) -> Result<(), EventsError> {
        let held: Vec<i32> = self.held().into_iter().map(|(p, _)| p).collect();
        let backlog = self.store.outbox_backlog(Some(&held)).await?;
        let dead = self.store.outbox_dead_letter_count().await?;
        // The last round's oldest row may since have been published or dead-lettered: with
        // nothing left unpublished, nothing is old (it read 1-2 s on a loaded machine).
        let pending = backlog.unpublished + backlog.retrying > 0;
        let oldest = self
            .leases
            .lock()
            .expect("leases lock")
            .oldest_read
            .filter(|_| pending);
        let age_ms = oldest.map_or(0, |t| codec::now().timestamp_millis() - t.timestamp_millis());
        self.metrics.backlog.set(backlog.unpublished + backlog.retrying);
        self.metrics
            .oldest_unpublished_age_seconds
            .set(age_ms.max(0) / 1000);
        self.metrics.dead_letters.set(dead as i64);
        Ok(())
    }

    /// Gives the partitions back (clean shutdown), so another replica takes them at once.
    pub async fn release(&self) -> Result<(), EventsError> {
        self.store.outbox_release(&self.config.owner).await?;
        *self.leases.lock().expect("leases lock") = Leases::default();
        Ok(())
    }
}

/// A low-cardinality name of a [`rejection`] reason.
fn reason_type(reason: &str) -> &'static str {
    if reason.starts_with("returned") {
        "returned"
    } else if reason.starts_with("nacked") {
        "nacked"
    } else {
        "not_confirmed"
    }
}

/// Why the broker did not take a message, or None when it did.
fn rejection(confirmation: Confirmation) -> Option<String> {
    match confirmation {
        Confirmation::Ack(None) => None,
        Confirmation::Ack(Some(returned)) => Some(format!(
            "returned: {} {}",
            returned.reply_code, returned.reply_text
        )),
        Confirmation::Nack(_) => Some("nacked by the broker".into()),
        Confirmation::NotRequested => Some("confirms not enabled on the channel".into()),
    }
}

/// Dead-lettered rows, newest first (at most `limit`, capped at 1000): what operators look at.
pub async fn dead_letters(store: &Store, limit: u32) -> Result<Vec<OutboxDoc>, EventsError> {
    Ok(store.outbox_dead_letters(limit).await?)
}
