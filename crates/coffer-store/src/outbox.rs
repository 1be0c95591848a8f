//! The outbox as a log: every event row belongs to one of [`PARTITIONS`] partitions (by its
//! wallet) and gets the next sequence number of its partition in the transaction that writes it.
//! Writers of one partition conflict on its sequence document, so within a partition the
//! committed sequence numbers are gapless and in commit order: a reader that has published
//! everything up to `through` finds the next events at exactly `through + 1, through + 2, …`.
//!
//! Publishing is then cheap: a publisher replica leases partitions, reads the next rows of each by
//! an index range of known size, and marks a whole range published by moving the partition's
//! cursor (one small document), not by updating every row. Only rows the broker refused are
//! written one by one (their retry time, their attempts, their dead letter).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::{ClientSession, Database};
use serde::{Deserialize, Serialize};

use crate::batch::Retry;
use crate::codec::{self, Time};
use crate::collections::{OUTBOX, OUTBOX_PARTITIONS, OUTBOX_REPLICAS, OUTBOX_SEQUENCES};
use crate::{OutboxDoc, Store, StoreError};

/// Partitions of the outbox. Fixed: a wallet's events must stay in one partition for its order.
pub const PARTITIONS: i32 = 16;

/// The partition of a wallet's events (FNV-1a of its id: stable across builds and replicas).
pub fn partition_of(subject: &str) -> i32 {
    let hash = subject.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash % PARTITIONS as u32) as i32
}

/// The start of time as stored: an expired lease, and the lower bound that selects set times.
fn epoch() -> mongodb::bson::DateTime {
    codec::bson_time(&codec::from_millis(0))
}

/// The update that gives a partition back: no owner, a lease that has run out.
fn released() -> Document {
    doc! { "$set": { "owner": null, "lease_until": epoch() } }
}

/// One partition as its publisher sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionDoc {
    #[serde(rename = "_id")]
    pub partition: i32,
    /// The replica holding the lease, if any.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(with = "codec::time")]
    pub lease_until: Time,
    /// Every row of the partition with a sequence number up to this one was published (or
    /// handed to the retry path; see [`OutboxDoc::retry_at`]).
    pub through: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SequenceDoc {
    #[serde(rename = "_id")]
    partition: i32,
    /// The last sequence number given out.
    next: i64,
}

/// Creates the per-partition documents the writers and the publishers need (idempotent).
pub(crate) async fn initialise(db: &Database) -> Result<(), StoreError> {
    for partition in 0..PARTITIONS {
        let filter = doc! { "_id": partition };
        let sequence = doc! { "$setOnInsert": { "next": 0_i64 } };
        db.collection::<Document>(OUTBOX_SEQUENCES)
            .update_one(filter.clone(), sequence)
            .upsert(true)
            .await?;
        let cursor = doc! { "$setOnInsert": { "owner": null, "lease_until": epoch(), "through": 0_i64 } };
        db.collection::<Document>(OUTBOX_PARTITIONS)
            .update_one(filter, cursor)
            .upsert(true)
            .await?;
    }
    Ok(())
}

/// Gives each row its partition and the next sequence numbers of that partition, and inserts
/// the rows, inside the caller's transaction (two commands and one `insert_many`).
pub(crate) async fn append(
    db: &Database,
    session: &mut ClientSession,
    rows: &mut [OutboxDoc],
) -> Result<(), Retry> {
    if rows.is_empty() {
        return Ok(());
    }
    let partitions: BTreeSet<i32> = rows.iter().map(|r| partition_of(&r.subject)).collect();
    let mut cursor = db
        .collection::<SequenceDoc>(OUTBOX_SEQUENCES)
        .find(doc! { "_id": { "$in": partitions.iter().collect::<Vec<_>>() } })
        .session(&mut *session)
        .await?;
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    while let Some(sequence) = cursor.next(&mut *session).await.transpose()? {
        last.insert(sequence.partition, sequence.next);
    }
    if last.len() != partitions.len() {
        let missing = StoreError::Corrupt("outbox partitions are not initialised".into());
        return Err(Retry::Fatal(missing));
    }
    let mut next = last.clone();
    for row in rows.iter_mut() {
        row.partition = partition_of(&row.subject);
        let seq = next.get_mut(&row.partition).expect("read above");
        *seq += 1;
        row.seq = *seq;
    }
    // Conditional on the value read: a writer that raced us makes this match less (Stale).
    let statements: Vec<Document> = last
        .iter()
        .map(|(p, old)| doc! { "q": { "_id": p, "next": old }, "u": { "$set": { "next": next[p] } } })
        .collect();
    crate::batch::update_exactly(db, session, OUTBOX_SEQUENCES, statements).await?;
    let span = crate::telemetry::operation_span("insert", db.name(), Some(OUTBOX));
    let outbox = db.collection::<OutboxDoc>(OUTBOX);
    let insert = outbox.insert_many(&*rows).session(&mut *session);
    tracing::Instrument::instrument(std::future::IntoFuture::into_future(insert), span).await?;
    Ok(())
}

/// What a lease round left this replica with.
#[derive(Debug, Clone)]
pub struct Leased {
    /// The partitions it holds until `until`, with their cursors as stored.
    pub partitions: Vec<PartitionDoc>,
    /// Live publisher replicas, this one included.
    pub replicas: usize,
}

/// A publisher's backlog: rows not yet published in its partitions, and rows waiting to retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub unpublished: i64,
    pub retrying: i64,
}

impl Store {
    /// One lease round for publisher `owner`: registers it as live for `lease`, gives back
    /// partitions above its fair share (partitions / live replicas, rounded up), renews the rest
    /// and takes free or expired ones up to that share. A replica that stops renewing loses its
    /// partitions when their lease runs out; another publishes from the stored cursor on.
    pub async fn outbox_lease(&self, owner: &str, lease: Duration) -> Result<Leased, StoreError> {
        let now = codec::now();
        let until = codec::from_millis(now.timestamp_millis() + lease.as_millis() as i64);
        let (now_b, until_b) = (codec::bson_time(&now), codec::bson_time(&until));
        let replicas = self.db.collection::<Document>(OUTBOX_REPLICAS);
        replicas
            .update_one(doc! { "_id": owner }, doc! { "$set": { "until": until_b } })
            .upsert(true)
            .await?;
        let live = replicas
            .count_documents(doc! { "until": { "$gt": now_b } })
            .await?
            .max(1) as usize;
        let share = (PARTITIONS as usize).div_ceil(live);
        let partitions = self.db.collection::<PartitionDoc>(OUTBOX_PARTITIONS);
        let all: Vec<PartitionDoc> = partitions.find(doc! {}).await?.try_collect().await?;
        let mine: Vec<i32> = all
            .iter()
            .filter(|p| p.owner.as_deref() == Some(owner))
            .map(|p| p.partition)
            .collect();
        let (kept, extra) = mine.split_at(mine.len().min(share));
        if !extra.is_empty() {
            partitions
                .update_many(doc! { "_id": { "$in": extra }, "owner": owner }, released())
                .await?;
        }
        let set = doc! { "$set": { "owner": owner, "lease_until": until_b } };
        partitions
            .update_many(doc! { "_id": { "$in": kept }, "owner": owner }, set.clone())
            .await?;
        // Replicas starting together look at the free partitions from different places, and one
        // that loses a race for a partition goes on to the next: nobody waits a renewal for work.
        let mut free: Vec<&PartitionDoc> = all
            .iter()
            .filter(|p| p.owner.is_none() || p.lease_until < now)
            .filter(|p| p.owner.as_deref() != Some(owner))
            .collect();
        let start = partition_of(owner) as usize % free.len().max(1);
        free.rotate_left(start);
        let mut wanted = share - kept.len();
        for candidate in free {
            if wanted == 0 {
                break;
            }
            // Taken only if nobody renewed or took it since we read it.
            let unchanged = doc! {
                "_id": candidate.partition,
                "owner": candidate.owner.as_deref(),
                "lease_until": codec::bson_time(&candidate.lease_until),
            };
            let taken = partitions.update_one(unchanged, set.clone()).await?;
            wanted -= usize::from(taken.modified_count == 1);
        }
        let held = doc! { "owner": owner, "lease_until": until_b };
        let mut held: Vec<PartitionDoc> = partitions.find(held).await?.try_collect().await?;
        held.sort_by_key(|p| p.partition);
        Ok(Leased {
            partitions: held,
            replicas: live,
        })
    }

    /// Gives back every partition `owner` holds and forgets it as a replica (clean shutdown).
    pub async fn outbox_release(&self, owner: &str) -> Result<(), StoreError> {
        self.db
            .collection::<Document>(OUTBOX_PARTITIONS)
            .update_many(doc! { "owner": owner }, released())
            .await?;
        self.db
            .collection::<Document>(OUTBOX_REPLICAS)
            .delete_one(doc! { "_id": owner })
            .await?;
        Ok(())
    }

    /// The rows of `partition` after `through`, in sequence order, at most `limit`: an index
    /// range of exactly `limit` keys, as the sequence has no gaps.
    pub async fn outbox_after(
        &self,
        partition: i32,
        through: i64,
        limit: u32,
    ) -> Result<Vec<OutboxDoc>, StoreError> {
        let range = doc! { "$gt": through, "$lte": through + i64::from(limit) };
        // Sorted here, not by the server: the range is bounded, and SecantusDB's sort stage costs
        // several times the index scan itself (measured: 4.5 ms against 0.6 ms for 5 rows).
        let mut rows: Vec<OutboxDoc> = self
            .collection::<OutboxDoc>(OUTBOX)
            .find(doc! { "partition": partition, "seq": range })
            .await?
            .try_collect()
            .await?;
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    }

    /// Rows of `partition` whose retry time has come, in sequence order, at most `limit`.
    pub async fn outbox_due(&self, partition: i32, limit: u32) -> Result<Vec<OutboxDoc>, StoreError> {
        let now = codec::bson_time(&codec::now());
        let mut rows: Vec<OutboxDoc> = self
            .collection::<OutboxDoc>(OUTBOX)
            .find(doc! { "partition": partition, "retry_at": { "$lte": now } })
            .limit(i64::from(limit.clamp(1, 1000)))
            .await?
            .try_collect()
            .await?;
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    }

    /// Moves the cursors of partitions `owner` holds forward (one command); returns how many
    /// moved. A partition whose lease another replica took is left alone: its new owner
    /// publishes from the stored cursor, so at worst a message is sent twice, never lost.
    pub async fn outbox_advance(&self, owner: &str, cursors: &[(i32, i64)]) -> Result<u64, StoreError> {
        if cursors.is_empty() {
            return Ok(0);
        }
        let statements: Vec<Document> = cursors
            .iter()
            .map(|(p, through)| {
                doc! {
                    "q": { "_id": p, "owner": owner, "through": { "$lt": through } },
                    "u": { "$set": { "through": through } },
                }
            })
            .collect();
        let command = doc! { "update": OUTBOX_PARTITIONS, "updates": statements, "ordered": false };
        let reply = self.db.run_command(command).await?;
        Ok(reply.get_i32("n").map(|n| n as u64).unwrap_or(0))
    }

    /// Records a refused publish of row `id`: its attempts, the error, and when to try again
    /// (`retry_at`); or, with `retry_at` None, that it went to the dead-letter queue.
    pub async fn outbox_refused(
        &self,
        id: &str,
        error: &str,
        retry_at: Option<Time>,
    ) -> Result<(), StoreError> {
        let now = codec::bson_time(&codec::now());
        let set = match retry_at {
            Some(at) => doc! { "last_error": error, "retry_at": codec::bson_time(&at) },
            None => doc! { "last_error": error, "retry_at": null, "dead_lettered_at": now },
        };
        self.collection::<Document>(OUTBOX)
            .update_one(
                doc! { "_id": id },
                doc! { "$set": set, "$inc": { "attempts": 1 } },
            )
            .await?;
        Ok(())
    }

    /// Records that a retried row was finally confirmed.
    pub async fn outbox_retried(&self, id: &str) -> Result<(), StoreError> {
        self.collection::<Document>(OUTBOX)
            .update_one(doc! { "_id": id }, doc! { "$set": { "retry_at": null } })
            .await?;
        Ok(())
    }

    /// What is left to publish, in `partitions` (every partition when None).
    pub async fn outbox_backlog(&self, partitions: Option<&[i32]>) -> Result<Backlog, StoreError> {
        let all: Vec<i32> = (0..PARTITIONS).collect();
        let partitions = partitions.unwrap_or(&all);
        let heads = self.outbox_heads().await?;
        let cursors = self.outbox_cursors().await?;
        let mut backlog = Backlog::default();
        for p in partitions {
            let (head, through) = (heads.get(p).copied(), cursors.get(p).map(|c| c.through));
            backlog.unpublished += (head.unwrap_or(0) - through.unwrap_or(0)).max(0);
            backlog.retrying += self
                .collection::<Document>(OUTBOX)
                .count_documents(doc! { "partition": p, "retry_at": { "$gte": epoch() } })
                .await? as i64;
        }
        Ok(backlog)
    }

    /// The oldest row that is neither published nor dead-lettered, if any.
    pub async fn outbox_oldest_pending(&self) -> Result<Option<OutboxDoc>, StoreError> {
        let cursors = self.outbox_cursors().await?;
        let heads = self.outbox_heads().await?;
        let mut oldest: Option<OutboxDoc> = None;
        for (p, cursor) in &cursors {
            // A partition whose cursor reached its head has no unpublished row to read.
            let next = if heads.get(p).is_some_and(|head| *head > cursor.through) {
                self.outbox_after(*p, cursor.through, 1).await?
            } else {
                Vec::new()
            };
            let due = self.outbox_retrying(*p).await?;
            for row in next.into_iter().chain(due) {
                if oldest.as_ref().is_none_or(|o| row.created_at < o.created_at) {
                    oldest = Some(row);
                }
            }
        }
        Ok(oldest)
    }

    async fn outbox_retrying(&self, partition: i32) -> Result<Option<OutboxDoc>, StoreError> {
        let row = self
            .collection::<OutboxDoc>(OUTBOX)
            .find_one(doc! { "partition": partition, "retry_at": { "$gte": epoch() } })
            .sort(doc! { "partition": 1, "retry_at": 1 })
            .await?;
        Ok(row)
    }

    /// Whether `row` has been published: its partition's cursor passed it and it is not waiting
    /// for a retry or dead-lettered.
    pub async fn outbox_published(&self, row: &OutboxDoc) -> Result<bool, StoreError> {
        let cursors = self.outbox_cursors().await?;
        let through = cursors.get(&row.partition).map_or(0, |c| c.through);
        Ok(row.seq <= through && row.retry_at.is_none() && row.dead_lettered_at.is_none())
    }

    /// Dead-lettered rows, newest first (at most `limit`, capped at 1000): what operators look at.
    pub async fn outbox_dead_letters(&self, limit: u32) -> Result<Vec<OutboxDoc>, StoreError> {
        let rows = self
            .collection::<OutboxDoc>(OUTBOX)
            .find(doc! { "dead_lettered_at": { "$gte": epoch() } })
            .sort(doc! { "dead_lettered_at": -1 })
            .limit(i64::from(limit.clamp(1, 1000)))
            .await?
            .try_collect()
            .await?;
        Ok(rows)
    }

    /// How many rows are dead-lettered.
    pub async fn outbox_dead_letter_count(&self) -> Result<u64, StoreError> {
        let filter = doc! { "dead_lettered_at": { "$gte": epoch() } };
        Ok(self
            .collection::<Document>(OUTBOX)
            .count_documents(filter)
            .await?)
    }

    /// The user's committed events after event `after`, oldest first, at most `limit` (capped at
    /// 10,000), dead letters left out: the history a resuming stream client catches up from.
    pub async fn stream_history(
        &self,
        user_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<OutboxDoc>, StoreError> {
        let filter = doc! { "user_id": user_id, "dead_lettered_at": null, "_id": { "$gt": after } };
        let rows = self
            .collection::<OutboxDoc>(OUTBOX)
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::from(limit.clamp(1, 10_000)))
            .await?
            .try_collect()
            .await?;
        Ok(rows)
    }

    /// Appends rows outside any money movement, in their own transaction (tests, benchmarks,
    /// tools): they get partitions and sequence numbers as the money path gives them.
    pub async fn append_events(&self, rows: &mut [OutboxDoc]) -> Result<(), StoreError> {
        let mut session = self.client.start_session().await?;
        self.sessions.cover(&session).await?;
        for attempt in 0..16u32 {
            session.start_transaction().await?;
            match append(&self.db, &mut session, rows).await {
                Ok(()) => match session.commit_transaction().await {
                    Ok(()) => return Ok(()),
                    Err(e) if attempt < 15 => tracing::debug!(error = %e, "outbox append retried"),
                    Err(e) => return Err(e.into()),
                },
                Err(retry) => {
                    let _ = session.abort_transaction().await;
                    match crate::batch::retry_error(retry) {
                        StoreError::Contention if attempt < 15 => {}
                        error => return Err(error),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(u64::from(attempt + 1))).await;
        }
        Err(StoreError::Contention)
    }

    /// Every row of the outbox in id order (tests and tools; unbounded).
    pub async fn outbox_rows(&self) -> Result<Vec<OutboxDoc>, StoreError> {
        let outbox = self.collection::<OutboxDoc>(OUTBOX);
        Ok(outbox
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?)
    }

    /// Per partition, the last sequence number given out (one read of 16 small documents): a
    /// publisher reads a partition only when its head is past its cursor.
    pub async fn outbox_heads(&self) -> Result<BTreeMap<i32, i64>, StoreError> {
        let docs: Vec<SequenceDoc> = self
            .collection::<SequenceDoc>(OUTBOX_SEQUENCES)
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().map(|d| (d.partition, d.next)).collect())
    }

    async fn outbox_cursors(&self) -> Result<BTreeMap<i32, PartitionDoc>, StoreError> {
        let docs: Vec<PartitionDoc> = self
            .collection::<PartitionDoc>(OUTBOX_PARTITIONS)
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().map(|d| (d.partition, d)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("wallet-1"), partition_of("wallet-1"));
        let used: BTreeSet<i32> = (0..200).map(|i| partition_of(&format!("w-{i}"))).collect();
        assert_eq!(
            used.len(),
            PARTITIONS as usize,
            "200 wallets reach every partition"
        );
        assert!(used.iter().all(|p| (0..PARTITIONS).contains(p)));
    }
}
