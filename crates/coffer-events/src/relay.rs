//! One iteration of the outbox publisher, in three steps a test can drive one at a time:
//! [`Relay::claim`] leases a batch of rows, [`Relay::publish`] sends them with confirms, and
//! [`Relay::settle`] records the outcome. A crash anywhere leaves rows claimed under a lease that
//! expires; the next claim re-publishes them with the same `message_id` (at-least-once).
//!
//! Per-wallet order: rows are sent in waves, at most one row per subject in flight; a subject's
//! next row waits for the previous one's confirm, and a subject with an earlier row that another
//! replica holds (or that is waiting to be retried) is skipped this time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use coffer_store::collections::OUTBOX;
use coffer_store::mongodb::bson::{doc, DateTime, Document};
use coffer_store::mongodb::Collection;
use coffer_store::{new_id, OutboxDoc, Store};
use futures::TryStreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};
use tracing::Instrument;

use crate::{broker, envelope, EventsError, PublisherMetrics};

/// Tunables of the relay, each bounded.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The topic exchange events go to (routing key = event type).
    pub exchange: String,
    /// This replica's name, recorded on the rows it holds.
    pub owner: String,
    /// Rows per claim (1..=1000).
    pub batch_size: u32,
    /// How long a claim holds; longer than a batch ever takes.
    pub lease: Duration,
    /// Longest wait for one wave's confirms.
    pub confirm_timeout: Duration,
    /// Failed attempts after which a row is dead-lettered.
    pub max_attempts: i32,
    /// Base of the backoff before a failed row is tried again.
    pub retry_base: Duration,
    /// Sleep when the outbox is empty.
    pub idle_poll: Duration,
}

impl RelayConfig {
    pub fn new(exchange: &str, owner: &str) -> Self {
        RelayConfig {
            exchange: exchange.to_string(),
            owner: owner.to_string(),
            batch_size: 500,
            lease: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(10),
            max_attempts: 5,
            retry_base: Duration::from_millis(500),
            idle_poll: Duration::from_millis(50),
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

/// Rows leased by one iteration, and what became of each.
pub struct Claim {
    token: String,
    rows: Vec<OutboxDoc>,
    outcomes: Vec<Outcome>,
    errors: Vec<Option<String>>,
}

impl Claim {
    pub fn rows(&self) -> &[OutboxDoc] {
        &self.rows
    }
    /// Ids confirmed by the broker so far, in publish order.
    pub fn confirmed_ids(&self) -> Vec<&str> {
        self.select(Outcome::Confirmed)
    }
    fn select(&self, outcome: Outcome) -> Vec<&str> {
        let pairs = self.rows.iter().zip(&self.outcomes);
        pairs
            .filter(|(_, o)| **o == outcome)
            .map(|(r, _)| r.id.as_str())
            .collect()
    }
}

/// The outbox publisher's state: the outbox collection, its config and metrics.
#[derive(Clone)]
pub struct Relay {
    outbox: Collection<OutboxDoc>,
    config: std::sync::Arc<RelayConfig>,
    metrics: PublisherMetrics,
    /// `publish <exchange>`: the name of every publish span.
    publish_name: std::sync::Arc<str>,
}

impl Relay {
    pub fn new(store: &Store, config: RelayConfig, metrics: PublisherMetrics) -> Relay {
        assert!(
            (1..=1000).contains(&config.batch_size),
            "batch size within 1..=1000"
        );
        assert!(config.max_attempts >= 1 && config.lease > config.confirm_timeout);
        Relay {
            outbox: store.collection(OUTBOX),
            publish_name: format!("publish {}", config.exchange).into(),
            config: std::sync::Arc::new(config),
            metrics,
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    pub fn metrics(&self) -> &PublisherMetrics {
        &self.metrics
    }

    /// Leases up to `batch_size` publishable rows, oldest first; None when there are none.
    pub async fn claim(&self) -> Result<Option<Claim>, EventsError> {
        let now = DateTime::now();
        let mut free = doc! {
            "published_at": null, "dead_lettered_at": null,
            "$or": [ { "lease_until": null }, { "lease_until": { "$lt": now } } ],
        };
        let ids: Vec<Document> = self
            .outbox
            .clone_with_type::<Document>()
            .find(free.clone())
            .sort(doc! { "_id": 1 })
            .limit(i64::from(self.config.batch_size))
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(None);
        };
        let token = new_id();
        let until = DateTime::from_millis(now.timestamp_millis() + self.config.lease.as_millis() as i64);
        free.insert(
            "_id",
            doc! { "$gte": first.get_str("_id").unwrap_or(""), "$lte": last.get_str("_id").unwrap_or("") },
        );
        let lease = doc! { "$set": { "claim_token": &token, "lease_owner": &self.config.owner, "lease_until": until } };
        self.outbox.update_many(free, lease).await?;
        // A late commit can add rows inside the range; the overflow is released by `settle`.
        let rows: Vec<OutboxDoc> = self
            .outbox
            .find(doc! { "claim_token": &token })
            .sort(doc! { "_id": 1 })
            .limit(i64::from(self.config.batch_size))
            .await?
            .try_collect()
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        Ok(Some(Claim {
            token,
            rows,
            outcomes: vec![Outcome::Pending; n],
            errors: vec![None; n],
        }))
    }

    /// For each subject of the claim, the id of its earliest publishable row held by someone else
    /// (another replica's claim, or a row waiting for its retry): rows after it must wait.
    async fn foreign_heads(&self, claim: &Claim) -> Result<HashMap<String, String>, EventsError> {
        let subjects: HashSet<&str> = claim.rows.iter().map(|r| r.subject.as_str()).collect();
        let last = &claim.rows.last().expect("claims are not empty").id;
        let pipeline = vec![
            doc! { "$match": {
                "published_at": null, "dead_lettered_at": null,
                "subject": { "$in": subjects.into_iter().collect::<Vec<_>>() },
                "_id": { "$lt": last }, "claim_token": { "$ne": &claim.token },
            } },
            doc! { "$group": { "_id": "$subject", "first": { "$min": "$_id" } } },
        ];
        let groups: Vec<Document> = self.outbox.aggregate(pipeline).await?.try_collect().await?;
        let heads = groups.iter().filter_map(|g| {
            Some((
                g.get_str("_id").ok()?.to_string(),
                g.get_str("first").ok()?.to_string(),
            ))
        });
        Ok(heads.collect())
    }

    /// Publishes the claim's rows in per-subject waves, awaiting each wave's confirms. On a broker
    /// error it stops; call [`Relay::settle`] either way to record what was confirmed.
    pub async fn publish(&self, claim: &mut Claim, channel: &Channel) -> Result<(), EventsError> {
        let heads = self.foreign_heads(claim).await?;
        let mut queues: Vec<VecDeque<usize>> = Vec::new();
        let mut by_subject: HashMap<&str, usize> = HashMap::new();
        for (index, row) in claim.rows.iter().enumerate() {
            if heads.get(&row.subject).is_some_and(|head| head < &row.id) {
                continue; // an earlier row of this wallet is not ours to send yet
            }
            let slot = *by_subject.entry(row.subject.as_str()).or_insert_with(|| {
                queues.push(VecDeque::new());
                queues.len() - 1
            });
            queues[slot].push_back(index);
        }
        loop {
            let wave: Vec<usize> = queues.iter_mut().filter_map(VecDeque::pop_front).collect();
            if wave.is_empty() {
                return Ok(());
            }
            self.publish_wave(claim, channel, &wave).await?;
            for (queue, index) in queues.iter_mut().zip(&wave) {
                if claim.outcomes[*index] != Outcome::Confirmed {
                    queue.clear(); // keep the wallet's order: nothing after a failure
                }
            }
            queues.retain(|q| !q.is_empty());
        }
    }

    /// Sends one row per subject, pipelined, then waits for all their confirms.
    async fn publish_wave(
        &self,
        claim: &mut Claim,
        channel: &Channel,
        wave: &[usize],
    ) -> Result<(), EventsError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let mut confirms = Vec::with_capacity(wave.len());
        let mut spans = Vec::with_capacity(wave.len());
        for index in wave {
            let row = &claim.rows[*index];
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
        let results = tokio::time::timeout(self.config.confirm_timeout, all)
            .await
            .map_err(|_| EventsError::ConfirmTimeout(self.config.confirm_timeout))?;
        // A publish span lasts until its confirm: what publishing with confirms costs.
        for ((index, result), span) in wave.iter().zip(results).zip(spans) {
            match rejection(result?) {
                None => self.confirmed(claim, *index),
                Some(reason) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", reason_type(&reason));
                    self.failed(claim, *index, reason, channel).await?
                }
            }
        }
        Ok(())
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
        let age_ms = DateTime::now().timestamp_millis() - claim.rows[index].created_at.timestamp_millis();
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

    /// Records the claim's outcome: failures get their attempt counted and a retry time, dead
    /// letters their state, untried rows are released, and confirmed rows are marked published.
    pub async fn settle(&self, claim: Claim) -> Result<(), EventsError> {
        let now = DateTime::now();
        let token = claim.token.as_str();
        for ((row, outcome), error) in claim.rows.iter().zip(&claim.outcomes).zip(&claim.errors) {
            let set = match outcome {
                Outcome::Failed => {
                    let delay = crate::backoff(
                        self.config.retry_base,
                        row.attempts as u32,
                        Duration::from_secs(60),
                    );
                    let retry_at = DateTime::from_millis(now.timestamp_millis() + delay.as_millis() as i64);
                    doc! { "last_error": error, "lease_until": retry_at, "claim_token": null, "lease_owner": null }
                }
                Outcome::DeadLettered => {
                    doc! { "last_error": error, "dead_lettered_at": now, "claim_token": null, "lease_owner": null }
                }
                _ => continue,
            };
            let update = doc! { "$set": set, "$inc": { "attempts": 1 } };
            self.outbox
                .update_one(doc! { "_id": &row.id, "claim_token": token }, update)
                .await?;
        }
        let release = doc! { "$set": { "claim_token": null, "lease_owner": null, "lease_until": null } };
        let untried = claim.select(Outcome::Pending);
        let last = &claim.rows.last().expect("claims are not empty").id;
        let filter = doc! { "claim_token": token, "$or": [ { "_id": { "$in": untried } }, { "_id": { "$gt": last } } ] };
        self.outbox.update_many(filter, release).await?;
        // What is still ours in the range is exactly what the broker confirmed: mark it by range.
        let first = &claim.rows[0].id;
        let filter =
            doc! { "claim_token": token, "published_at": null, "_id": { "$gte": first, "$lte": last } };
        let mark = doc! { "$set": { "published_at": now, "claim_token": null, "lease_until": null } };
        self.outbox.update_many(filter, mark).await?;
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

    /// Refreshes the backlog, oldest-age and dead-letter gauges.
    pub async fn refresh_gauges(&self) -> Result<(), EventsError> {
        let pending = doc! { "published_at": null, "dead_lettered_at": null };
        let backlog = self.outbox.count_documents(pending.clone()).await?;
        let oldest = self.outbox.find_one(pending).sort(doc! { "_id": 1 }).await?;
        let dead = self
            .outbox
            .count_documents(doc! { "dead_lettered_at": { "$ne": null } })
            .await?;
        let age_ms = oldest.map_or(0, |row| {
            DateTime::now().timestamp_millis() - row.created_at.timestamp_millis()
        });
        self.metrics.backlog.set(backlog as i64);
        self.metrics
            .oldest_unpublished_age_seconds
            .set(age_ms.max(0) / 1000);
        self.metrics.dead_letters.set(dead as i64);
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
    let rows = store
        .collection::<OutboxDoc>(OUTBOX)
        .find(doc! { "dead_lettered_at": { "$ne": null } })
        .sort(doc! { "dead_lettered_at": -1 })
        .limit(i64::from(limit.clamp(1, 1000)))
        .await?
        .try_collect()
        .await?;
    Ok(rows)
}
