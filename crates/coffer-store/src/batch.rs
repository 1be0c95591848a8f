//! Group commit (BRIEF B1): the movements a process is asked to apply are written in batches, one
//! MongoDB transaction per batch, by one writer task per process.
//!
//! A batch takes what is queued (at most [`BatchConfig::max_movements`]) and, when the previous
//! batch was not a single movement, waits at most [`BatchConfig::max_wait`] for more. Inside its
//! transaction it reads every touched account (one `find`), lets the domain's [`Book`] apply the
//! movements one by one in order against the running balances (a movement that would overdraw a
//! wallet or pass a limit is refused alone), and writes the result in as few round trips as the
//! server allows: ONE `update` command with a statement per touched account, then one
//! `insert_many` each for the transaction records, the ledger entries, the outbox events and the
//! idempotency records, and the limit counters in one more `update` when any are charged.
//!
//! Correctness never depends on this process's memory: the balances the book starts from are
//! read in the transaction's own snapshot, and a document another process wrote after that
//! snapshot cannot be written by this one (a write conflict: the batch backs off and starts
//! again from a fresh read). Statements select by `_id` alone, which every MongoDB-compatible
//! planner answers from the primary index. A duplicate ledger key or idempotency key
//! (the movement was applied already) aborts the attempt; the duplicates are answered from the
//! committed records and the rest is retried without them. A commit whose outcome is unknown is
//! retried the same way: what did commit is then found as duplicates, never written twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_domain::book::{AccountBalances, Applied, Book, BookRefusal, SignedAmount};
use coffer_domain::history::{BucketBalances, Position};
use coffer_domain::movement::balance_event;
use coffer_domain::{Bucket, Movement, PlannedEvent, Side};
use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{Acknowledgment, ReadConcern, SelectionCriteria, WriteConcern};
use mongodb::{Client, ClientSession, Database};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::codec::Time;
use crate::collections::{IDEMPOTENCY_KEYS, LEDGER_ENTRIES, TRANSACTIONS, VELOCITY, WALLETS};
use crate::idempotency::{IdempotencyDoc, StoredResponse};
use crate::model::{LedgerEntryDoc, OutboxDoc, TimelineEntry, TransactionDoc, WalletDoc};
use crate::{codec, new_id, StoreError, StoreMetrics};

/// Bounds of group commit.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most movements in one database transaction (1..=1000).
    pub max_movements: usize,
    /// Longest a batch waits for more movements after the first (only while batches are busy).
    pub max_wait: Duration,
    /// Movements waiting for the writer; a full queue makes callers wait (backpressure).
    pub queue_capacity: usize,
    /// Attempts of one batch against transient errors before its movements answer "retry later".
    pub max_attempts: u32,
    /// Base of the jittered exponential backoff between attempts.
    pub backoff_base: Duration,
    /// Longest a caller waits for its movement's outcome (queue + batch + commit).
    pub movement_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_movements: 128,
            max_wait: Duration::from_millis(2),
            queue_capacity: 4096,
            max_attempts: 16,
            backoff_base: Duration::from_millis(2),
            movement_timeout: Duration::from_secs(10),
        }
    }
}

/// How the response of an idempotent API request is stored with its movement: in the same
/// database transaction, so money never moves without the response a retry replays.
#[derive(Clone)]
pub struct IdempotentWrite {
    /// `<scope>:<key>` as in [`crate::idempotency`].
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
    /// Renders the response from the transaction record as written.
    pub render: Arc<dyn Fn(&TransactionDoc) -> StoredResponse + Send + Sync>,
}

impl std::fmt::Debug for IdempotentWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotentWrite")
            .field("scope", &self.scope)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A movement with what its request asks the store to keep beside it.
#[derive(Debug, Clone)]
pub struct Submission {
    pub movement: Movement,
    pub idempotency: Option<IdempotentWrite>,
}

impl From<Movement> for Submission {
    fn from(movement: Movement) -> Self {
        Submission {
            movement,
            idempotency: None,
        }
    }
}

type Reply = oneshot::Sender<Result<TransactionDoc, StoreError>>;

/// A submission as the writer handles it.
pub(crate) struct Item {
    pub submission: Submission,
    /// The trace context the movement's events carry (the caller's span, captured at submission).
    pub traceparent: Option<String>,
}

impl Item {
    fn movement(&self) -> &Movement {
        &self.submission.movement
    }
}

struct Job {
    item: Item,
    reply: Reply,
}

impl Job {
    fn movement(&self) -> &Movement {
        self.item.movement()
    }
}

/// The handle callers submit through; the writer task is started on first use (in the caller's
/// runtime) and again if that runtime went away.
#[derive(Default)]
pub(crate) struct Committer {
    /// Units of jobs: the jobs of one unit go into one batch when they fit.
    sender: std::sync::Mutex<Option<mpsc::Sender<Unit>>>,
}

/// What the writer needs of the store (not the store itself: it holds the committer).
#[derive(Clone)]
pub(crate) struct WriterParts {
    pub client: Client,
    pub db: Database,
    pub config: BatchConfig,
    pub metrics: StoreMetrics,
    /// This process's session lease: every session is covered before its transaction starts.
    pub sessions: Arc<crate::process_sessions::SessionLease>,
    /// The keys that MAC the audit record of every applied movement.
    pub audit_keys: Option<crate::audit::AuditKeys>,
}

impl Committer {
    fn sender(&self, parts: &WriterParts) -> mpsc::Sender<Unit> {
        let mut slot = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(parts.config.queue_capacity.max(1));
        let writer = Writer {
            parts: parts.clone(),
            deferred: VecDeque::new(),
            atomic: VecDeque::new(),
            session: None,
        };
        tokio::spawn(writer.run(receiver));
        *slot = Some(sender.clone());
        sender
    }

    /// Queues `submission` and waits for its outcome, within the movement timeout.
    pub(crate) async fn submit(
        &self,
        parts: &WriterParts,
        submission: Submission,
    ) -> Result<TransactionDoc, StoreError> {
        let movement = &submission.movement;
        assert_eq!(
            movement.timeline.last().map(|c| c.to),
            Some(movement.state),
            "timeline ends in state"
        );
        let span = crate::telemetry::movement_span(parts.db.name());
        let result = self
            .queue_and_wait(parts, submission)
            .instrument(span.clone())
            .await;
        crate::telemetry::record_outcome(&span, &result);
        result
    }

    async fn queue_and_wait(
        &self,
        parts: &WriterParts,
        submission: Submission,
    ) -> Result<TransactionDoc, StoreError> {
        let mut outcomes = self.queue_unit(parts, vec![submission], false).await;
        outcomes.pop().expect("one outcome per submission")
    }

    /// Queues `submissions` as one unit and waits for every outcome, in order, within the
    /// movement timeout. A unit goes into one batch when it fits the batch size; an `atomic` unit
    /// is always one batch of its own (up to 1,000 movements), committed only if every movement
    /// of it applies.
    pub(crate) async fn queue_unit(
        &self,
        parts: &WriterParts,
        submissions: Vec<Submission>,
        atomic: bool,
    ) -> Vec<Result<TransactionDoc, StoreError>> {
        // The movement timeout is per batch the unit needs: a unit of 1,000 waits for its batches.
        let max = parts.config.max_movements.clamp(1, 1000);
        let batches = submissions.len().div_ceil(max).max(1) as u32;
        let deadline = tokio::time::Instant::now() + parts.config.movement_timeout * batches;
        let mut waits = Vec::with_capacity(submissions.len());
        let mut unit = Vec::with_capacity(submissions.len());
        for submission in submissions {
            let (reply, outcome) = oneshot::channel();
            let item = Item {
                submission,
                // Inside the movement's span: its events continue the request's trace from it.
                traceparent: crate::model::current_traceparent(),
            };
            unit.push(Job { item, reply });
            waits.push(outcome);
        }
        let sender = self.sender(parts);
        let queued = tokio::time::timeout_at(deadline, sender.send(Unit { jobs: unit, atomic })).await;
        let queued = matches!(queued, Ok(Ok(())));
        let mut outcomes = Vec::with_capacity(waits.len());
        for outcome in waits {
            let answered = match queued {
                true => tokio::time::timeout_at(deadline, outcome)
                    .await
                    .ok()
                    .and_then(Result::ok),
                false => None,
            };
            outcomes.push(answered.unwrap_or_else(|| {
                // Not queued or not answered in time: it may still commit; a retry with the same
                // key finds it.
                parts.metrics.transaction_give_ups.inc();
                Err(StoreError::Contention)
            }));
        }
        outcomes
    }
}

/// Why an attempt did not commit, and what the batch does next.
pub(crate) enum Retry {
    /// A ledger key or idempotency key was taken: answer those movements and retry the rest.
    Duplicates,
    /// An update matched fewer accounts than it names (one vanished or changed under us).
    Stale,
    /// A write conflict or an unknown commit result: back off and retry.
    Transient(mongodb::error::Error),
    /// Not retryable: isolate the movement that causes it.
    Fatal(StoreError),
}

impl From<mongodb::error::Error> for Retry {
    fn from(error: mongodb::error::Error) -> Self {
        if error.contains_label(TRANSIENT_TRANSACTION_ERROR)
            || error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
        {
            Retry::Transient(error)
        } else if crate::is_duplicate_key(&error) {
            Retry::Duplicates
        } else {
            Retry::Fatal(StoreError::from(error))
        }
    }
}

impl From<StoreError> for Retry {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(e) => Retry::from(e.0),
            other => Retry::Fatal(other),
        }
    }
}

impl From<mongodb::bson::ser::Error> for Retry {
    fn from(error: mongodb::bson::ser::Error) -> Self {
        Retry::Fatal(StoreError::from(error))
    }
}

/// What one committed (or refused) movement of an attempt came to.
type Outcome = Result<TransactionDoc, StoreError>;

/// Jobs queued together (see [`Committer::queue_unit`]).
struct Unit {
    jobs: Vec<Job>,
    /// All or nothing, in a batch of its own.
    atomic: bool,
}

/// The writer task: one per process and store.
struct Writer {
    parts: WriterParts,
    /// Movements whose ledger key another movement of the same batch had: they go next.
    deferred: VecDeque<Job>,
    /// Atomic units received while a batch was being collected: each is the next batch, alone.
    atomic: VecDeque<Vec<Job>>,
    /// Reused between attempts, except after a transient error.
    session: Option<ClientSession>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Unit>) {
        let mut last_batch = 0usize;
        loop {
            while let Some(unit) = self.atomic.pop_front() {
                last_batch = unit.len();
                self.commit(unit, true).await;
            }
            let Some(jobs) = self.collect(&mut receiver, last_batch > 1).await else {
                return;
            };
            last_batch = jobs.len();
            self.commit(jobs, false).await;
        }
    }

    /// Adds `unit` to `jobs` if it fits in `max`; a unit that does not waits for the next batch
    /// (whole when it fits a batch at all, else split), and an atomic unit always waits to be a
    /// batch of its own. False when the batch is full (or closed by an atomic unit).
    fn take(&mut self, jobs: &mut Vec<Job>, unit: Unit, max: usize) -> bool {
        let Unit {
            jobs: mut unit,
            atomic,
        } = unit;
        if atomic {
            self.atomic.push_back(unit);
            return false;
        }
        if jobs.len() + unit.len() <= max {
            jobs.append(&mut unit);
            return jobs.len() < max;
        }
        if !jobs.is_empty() && unit.len() <= max {
            self.deferred.extend(unit);
            return false;
        }
        let rest = unit.split_off(max - jobs.len());
        jobs.append(&mut unit);
        for job in rest.into_iter().rev() {
            self.deferred.push_front(job);
        }
        false
    }

    /// The next batch: deferred jobs, what is queued, and (when `linger`) what arrives within the
    /// batch window. None when every sender is gone.
    async fn collect(&mut self, receiver: &mut mpsc::Receiver<Unit>, linger: bool) -> Option<Vec<Job>> {
        let max = self.parts.config.max_movements.clamp(1, 1000);
        let mut jobs: Vec<Job> = Vec::new();
        while jobs.len() < max {
            match self.deferred.pop_front() {
                Some(job) => jobs.push(job),
                None => break,
            }
        }
        let mut open = jobs.len() < max;
        if jobs.is_empty() {
            let unit = receiver.recv().await?;
            open = self.take(&mut jobs, unit, max);
        }
        while open {
            match receiver.try_recv() {
                Ok(unit) => open = self.take(&mut jobs, unit, max),
                Err(_) => break,
            }
        }
        if open && linger && !self.parts.config.max_wait.is_zero() {
            let until = tokio::time::Instant::now() + self.parts.config.max_wait;
            while open {
                match tokio::time::timeout_at(until, receiver.recv()).await {
                    Ok(Some(unit)) => open = self.take(&mut jobs, unit, max),
                    _ => break,
                }
            }
        }
        Some(jobs)
    }

    /// Commits `jobs` and answers every one of them.
    async fn commit(&mut self, jobs: Vec<Job>, atomic: bool) {
        let mut keys = HashSet::new();
        let mut live = Vec::with_capacity(jobs.len());
        // A job whose caller stopped waiting (timed out, disconnected) is still applied: its
        // answer was "retry later", and the retry will find it committed.
        for job in jobs {
            if keys.insert(job.movement().ledger_key.clone()) {
                live.push(job);
            } else if atomic {
                // Twice in one atomic unit: a caller's mistake, refused before anything is tried.
                let _ = job.reply.send(Err(StoreError::AlreadyExists));
            } else {
                self.deferred.push_back(job);
            }
        }
        let traceparents: Vec<&str> = live
            .iter()
            .filter_map(|j| j.item.traceparent.as_deref())
            .collect();
        let span = crate::telemetry::batch_span(self.parts.db.name(), live.len(), &traceparents);
        let started = Instant::now();
        let size = live.len();
        self.commit_live(live, atomic).instrument(span).await;
        if size > 0 {
            self.parts.metrics.batch_movements.observe(size as f64);
            self.parts
                .metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    async fn commit_live(&mut self, mut live: Vec<Job>, atomic: bool) {
        let mut attempt = 0;
        while !live.is_empty() {
            attempt += 1;
            match self.attempt(&live, atomic).await {
                Ok(outcomes) => return self.answer(live, outcomes).await,
                Err(Retry::Duplicates) => {
                    if !self.answer_duplicates(&mut live).await {
                        self.back_off(attempt).await;
                    }
                }
                Err(Retry::Stale) => self.back_off(attempt).await,
                Err(Retry::Transient(error)) => {
                    self.parts.metrics.transaction_retries.inc();
                    tracing::debug!(attempt, %error, "transient batch error, retrying");
                    if attempt >= self.parts.config.max_attempts {
                        break;
                    }
                    self.back_off(attempt).await;
                }
                Err(Retry::Fatal(error)) if live.len() == 1 || atomic => {
                    // An atomic unit fails whole: the error to its first movement, the rest not applied.
                    let mut error = Some(error);
                    for job in live.drain(..) {
                        let _ = job
                            .reply
                            .send(Err(error.take().unwrap_or(StoreError::NotApplied)));
                    }
                }
                Err(Retry::Fatal(error)) => {
                    // One movement breaks the batch: apply each alone, so only it fails.
                    tracing::warn!(%error, movements = live.len(), "batch failed; applying its movements one by one");
                    for job in live.drain(..) {
                        Box::pin(self.commit_live(vec![job], false)).await;
                    }
                }
            }
        }
        for job in live {
            self.parts.metrics.transaction_give_ups.inc();
            let _ = job.reply.send(Err(StoreError::Contention));
        }
    }

    async fn back_off(&self, attempt: u32) {
        tokio::time::sleep(crate::money::backoff(self.parts.config.backoff_base, attempt)).await;
    }

    /// One database transaction for `live`: Ok with each movement's outcome once committed.
    async fn attempt(&mut self, live: &[Job], atomic: bool) -> Result<Vec<Outcome>, Retry> {
        let mut session = match self.session.take() {
            Some(session) => session,
            None => self.parts.client.start_session().await?,
        };
        self.parts.sessions.cover(&session).await?;
        let result = self.attempt_in(&mut session, live, atomic).await;
        if !matches!(result, Err(Retry::Transient(_))) {
            self.session = Some(session); // a session whose commit is in doubt is not reused
        }
        result
    }

    async fn attempt_in(
        &self,
        session: &mut ClientSession,
        live: &[Job],
        atomic: bool,
    ) -> Result<Vec<Outcome>, Retry> {
        let parts = &self.parts;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .selection_criteria(SelectionCriteria::ReadPreference(
                mongodb::options::ReadPreference::Primary,
            ))
            .await?;
        let items: Vec<&Item> = live.iter().map(|j| &j.item).collect();
        let written = match write_batch(&parts.db, session, parts.audit_keys.as_ref(), &items, atomic).await {
            Ok(written) => written,
            Err(retry) => {
                let _ = session.abort_transaction().await;
                return Err(retry);
            }
        };
        if !written.wrote {
            let _ = session.abort_transaction().await; // everything was refused: nothing to keep
        } else {
            coffer_telemetry::faults::point("ledger.before_commit");
            let commit_span = crate::telemetry::operation_span("commitTransaction", parts.db.name(), None);
            crate::money::commit(session).instrument(commit_span).await?;
            coffer_telemetry::faults::point("ledger.after_commit");
        }
        Ok(written.outcomes)
    }

    /// Answers each job; refusals whose movement turns out to be applied already are duplicates.
    async fn answer(&mut self, live: Vec<Job>, outcomes: Vec<Outcome>) {
        let refused: Vec<String> = live
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_err())
            .map(|(j, _)| j.movement().ledger_key.clone())
            .collect();
        let existing = existing_by_ledger_key(&self.parts.db, &refused)
            .await
            .unwrap_or_default();
        for (job, outcome) in live.into_iter().zip(outcomes) {
            let outcome = match outcome {
                Ok(record) => {
                    self.parts
                        .metrics
                        .movements
                        .with_label_values(&[record.kind.as_str()])
                        .inc();
                    Ok(record)
                }
                Err(refusal) => match existing.get(&job.movement().ledger_key) {
                    Some(record) => Err(StoreError::DuplicateLedgerKey(Box::new(record.clone()))),
                    None => Err(refusal),
                },
            };
            let _ = job.reply.send(outcome);
        }
    }

    /// After a duplicate key: answers the jobs that were applied already (by ledger key) or whose
    /// idempotency key is taken, and keeps the rest. False when none was found (a race: retry).
    async fn answer_duplicates(&mut self, live: &mut Vec<Job>) -> bool {
        let keys: Vec<String> = live.iter().map(|j| j.movement().ledger_key.clone()).collect();
        let Ok(existing) = existing_by_ledger_key(&self.parts.db, &keys).await else {
            return false;
        };
        let ids: Vec<String> = live
            .iter()
            .filter_map(|j| j.item.submission.idempotency.as_ref())
            .map(|i| crate::idempotency::key_id(&i.scope, &i.key))
            .collect();
        let Ok(taken) = taken_idempotency_ids(&self.parts.db, &ids).await else {
            return false;
        };
        let before = live.len();
        let mut kept = Vec::with_capacity(live.len());
        for job in live.drain(..) {
            let key_taken = job
                .item
                .submission
                .idempotency
                .as_ref()
                .is_some_and(|i| taken.contains(&crate::idempotency::key_id(&i.scope, &i.key)));
            if let Some(record) = existing.get(&job.movement().ledger_key) {
                let _ = job
                    .reply
                    .send(Err(StoreError::DuplicateLedgerKey(Box::new(record.clone()))));
            } else if key_taken {
                let _ = job.reply.send(Err(StoreError::IdempotencyKeyTaken));
            } else {
                kept.push(job);
            }
        }
        *live = kept;
        live.len() < before
    }
}

/// What an attempt came to: each movement's outcome, and whether anything was written.
struct Written {
    outcomes: Vec<Outcome>,
    wrote: bool,
}

/// The body of one attempt, inside the open transaction of `session`. With `all_or_nothing`, a
/// refused movement writes nothing at all: the others answer [`StoreError::NotApplied`].
async fn write_batch(
    db: &Database,
    session: &mut ClientSession,
    audit_keys: Option<&crate::audit::AuditKeys>,
    items: &[&Item],
    all_or_nothing: bool,
) -> Result<Written, Retry> {
    let ids: BTreeSet<String> = items
        .iter()
        .flat_map(|i| i.movement().ledger.account_ids())
        .collect();
    let accounts = load_accounts(db, session, &ids).await?;
    let mut book = Book::new();
    for (id, account) in &accounts {
        book.insert_account(id.clone(), account.balances.clone());
    }
    let counter_keys: BTreeSet<String> = items
        .iter()
        .flat_map(|i| i.movement().limits.iter().map(|l| l.key.clone()))
        .collect();
    let counters = load_counters(db, session, &counter_keys).await?;
    for (key, used) in &counters {
        book.insert_counter(key.clone(), *used);
    }
    // Never dated before an entry of a touched account (another process's clock may be ahead):
    // an account's entries are in time order as they are in sequence order.
    let now = accounts
        .values()
        .map(|a| a.updated_at)
        .fold(codec::now(), Time::max);
    let mut plan = BatchWrites {
        positions: accounts
            .iter()
            .map(|(id, a)| (id.clone(), a.position()))
            .collect(),
        ..Default::default()
    };
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let outcome = match book.apply(item.movement()) {
            Ok(applied) => Ok(plan.add(item, &applied, &book, now)?),
            Err(refusal) => Err(refused(refusal)),
        };
        outcomes.push(outcome);
    }
    if all_or_nothing && outcomes.iter().any(Result::is_err) {
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.and(Err(StoreError::NotApplied)))
            .collect();
        return Ok(Written {
            outcomes,
            wrote: false,
        });
    }
    if plan.records.is_empty() {
        return Ok(Written {
            outcomes,
            wrote: false,
        });
    }
    update_accounts(db, session, &accounts, &plan.positions, &book, now).await?;
    plan.insert(db, session).await?;
    crate::audit::append(db, session, audit_keys, std::mem::take(&mut plan.audits)).await?;
    update_counters(db, session, &plan.charged, now).await?;
    Ok(Written {
        outcomes,
        wrote: true,
    })
}

/// Writes one movement inside a transaction its caller runs (with other writes of its own, e.g.
/// an adjustment's decision): the same rules and writes as a batch of one.
pub(crate) async fn write_one(
    db: &Database,
    session: &mut ClientSession,
    audit_keys: Option<&crate::audit::AuditKeys>,
    submission: Submission,
) -> Result<TransactionDoc, StoreError> {
    let item = Item {
        submission,
        traceparent: crate::model::current_traceparent(),
    };
    match write_batch(db, session, audit_keys, &[&item], false).await {
        Ok(mut written) => written.outcomes.pop().expect("one outcome"),
        Err(retry) => Err(retry_error(retry)),
    }
}

/// Writes `submissions` inside a transaction its caller runs, all or nothing: the first refusal
/// (insufficient funds, a taken ledger key, ...) is the answer and the caller aborts. The same
/// rules and writes as a batch (a conversion's two legs, one per asset).
pub(crate) async fn write_all(
    db: &Database,
    session: &mut ClientSession,
    audit_keys: Option<&crate::audit::AuditKeys>,
    submissions: Vec<Submission>,
) -> Result<Vec<TransactionDoc>, StoreError> {
    let items: Vec<Item> = submissions
        .into_iter()
        .map(|submission| Item {
            submission,
            traceparent: crate::model::current_traceparent(),
        })
        .collect();
    let refs: Vec<&Item> = items.iter().collect();
    match write_batch(db, session, audit_keys, &refs, false).await {
        Ok(written) => written.outcomes.into_iter().collect(),
        Err(retry) => Err(retry_error(retry)),
    }
}

/// What a caller outside the batch writer makes of an attempt that did not commit.
pub(crate) fn retry_error(retry: Retry) -> StoreError {
    match retry {
        Retry::Duplicates => StoreError::AlreadyExists,
        Retry::Stale => StoreError::Contention,
        Retry::Transient(e) => StoreError::from(e),
        Retry::Fatal(e) => e,
    }
}

fn refused(refusal: BookRefusal) -> StoreError {
    match refusal {
        BookRefusal::InsufficientFunds => StoreError::InsufficientFunds,
        BookRefusal::BalanceLimit => StoreError::BalanceLimit,
        BookRefusal::UnknownAccount(_) => StoreError::NotFound,
        BookRefusal::LimitExceeded(_) => StoreError::LimitExceeded,
        other => StoreError::Corrupt(other.to_string()),
    }
}

/// An account as a batch read it.
struct LoadedAccount {
    balances: AccountBalances,
    /// The sequence number of its last ledger entry.
    version: i64,
    updated_at: Time,
}

impl LoadedAccount {
    fn position(&self) -> Position {
        Position {
            seq: self.version,
            balances: BucketBalances::from(&self.balances),
        }
    }
}

/// A wallet's position as stored: its sequence number and balances.
pub(crate) fn wallet_position(wallet: &WalletDoc) -> Result<Position, codec::DecodeError> {
    Ok(Position {
        seq: wallet.version,
        balances: BucketBalances::from(&account_balances(wallet)?),
    })
}

/// Every account of `ids` with its version, read in the transaction's snapshot (one `find`).
async fn load_accounts(
    db: &Database,
    session: &mut ClientSession,
    ids: &BTreeSet<String>,
) -> Result<BTreeMap<String, LoadedAccount>, Retry> {
    let mut accounts = BTreeMap::new();
    let ids: Vec<&String> = ids.iter().collect();
    let mut cursor = db
        .collection::<WalletDoc>(WALLETS)
        .find(doc! { "_id": { "$in": ids } })
        .session(&mut *session)
        .await?;
    while let Some(wallet) = cursor.next(&mut *session).await.transpose()? {
        let balances = account_balances(&wallet).map_err(|e| Retry::Fatal(e.into()))?;
        let loaded = LoadedAccount {
            balances,
            version: wallet.version,
            updated_at: wallet.updated_at,
        };
        accounts.insert(wallet.id.clone(), loaded);
    }
    Ok(accounts)
}

/// A stored account as the book sees it.
pub(crate) fn account_balances(wallet: &WalletDoc) -> Result<AccountBalances, codec::DecodeError> {
    let signed = |bucket: Bucket| Ok::<_, codec::DecodeError>(wallet.bucket(bucket));
    Ok(AccountBalances {
        kind: wallet.kind,
        user_id: wallet.user_id.clone(),
        asset: wallet.asset.clone(),
        available: signed(Bucket::Available)?,
        pending: signed(Bucket::Pending)?,
        held: signed(Bucket::Held)?,
    })
}

/// The limit counters of `keys` (absent ones are zero), read in the transaction.
async fn load_counters(
    db: &Database,
    session: &mut ClientSession,
    keys: &BTreeSet<String>,
) -> Result<BTreeMap<String, coffer_domain::Amount>, Retry> {
    let mut counters = BTreeMap::new();
    if keys.is_empty() {
        return Ok(counters);
    }
    let mut cursor = db
        .collection::<Document>(VELOCITY)
        .find(doc! { "_id": { "$in": keys.iter().collect::<Vec<_>>() } })
        .session(&mut *session)
        .await?;
    while let Some(counter) = cursor.next(&mut *session).await.transpose()? {
        let key = counter.get_str("_id").unwrap_or_default().to_string();
        let total = counter
            .get("total")
            .and_then(|t| match t {
                mongodb::bson::Bson::Decimal128(d) => Some(d),
                _ => None,
            })
            .ok_or_else(|| Retry::Fatal(StoreError::Corrupt(format!("limit counter {key} has no total"))))?;
        let used = codec::non_negative(total).map_err(|e| Retry::Fatal(e.into()))?;
        counters.insert(key, used);
    }
    Ok(counters)
}

/// Everything an attempt inserts, built movement by movement as the book applies them.
#[derive(Default)]
struct BatchWrites {
    records: Vec<TransactionDoc>,
    entries: Vec<LedgerEntryDoc>,
    events: Vec<OutboxDoc>,
    idempotency: Vec<IdempotencyDoc>,
    /// Per account: its sequence number and balances after the entries added so far (its
    /// version moves to that sequence number).
    positions: BTreeMap<String, Position>,
    /// Per limit counter: the amount the applied movements charged.
    charged: BTreeMap<String, coffer_domain::Amount>,
    /// One audit entry per applied movement.
    audits: Vec<crate::audit::AuditEntry>,
}

impl BatchWrites {
    fn add(
        &mut self,
        item: &Item,
        applied: &Applied,
        book: &Book,
        now: Time,
    ) -> Result<TransactionDoc, Retry> {
        let movement = item.movement();
        let record = transaction_record(movement, now);
        for charge in &movement.limits {
            let used = self.charged.entry(charge.key.clone()).or_default();
            *used = used.checked_add(charge.amount).expect("bounded by the limit");
        }
        let owner_of = |id: &str| book.account(id).and_then(|a| a.user_id.clone());
        let entries = ledger_entries(
            &movement.transaction_id,
            &movement.ledger,
            owner_of,
            |_| now,
            &mut self.positions,
        )?;
        self.entries.extend(entries);
        let balance_events = applied.user_balances.iter().filter_map(|(id, balances)| {
            balance_event(id, balances, movement.decimals, &movement.transaction_id)
        });
        for event in movement.events.iter().cloned().chain(balance_events) {
            self.events.push(outbox_row(&event, item.traceparent.clone()));
        }
        if let Some(write) = &item.submission.idempotency {
            self.idempotency
                .push(IdempotencyDoc::completed(write, (write.render)(&record), now));
        }
        self.audits.push(movement_audit(&record));
        self.records.push(record.clone());
        Ok(record)
    }

    async fn insert(&mut self, db: &Database, session: &mut ClientSession) -> Result<(), Retry> {
        db.collection::<TransactionDoc>(TRANSACTIONS)
            .insert_many(&self.records)
            .session(&mut *session)
            .await?;
        db.collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
            .insert_many(&self.entries)
            .session(&mut *session)
            .await?;
        crate::outbox::append(db, session, &mut self.events).await?;
        if !self.idempotency.is_empty() {
            db.collection::<IdempotencyDoc>(IDEMPOTENCY_KEYS)
                .insert_many(&self.idempotency)
                .session(&mut *session)
                .await?;
        }
        Ok(())
    }
}

/// The audit entry of an applied movement: who moved what, ids and amounts only.
fn movement_audit(record: &TransactionDoc) -> crate::audit::AuditEntry {
    let action = format!(
        "{}{}",
        crate::audit_chain::actions::MOVEMENT_PREFIX,
        record.kind.as_str()
    );
    let details = serde_json::json!({
        "asset": record.asset,
        "amount_atomic": record.amount.to_string(),
        "from_wallet_id": record.from_wallet_id,
        "to_wallet_id": record.to_wallet_id,
        "state": record.state.as_str(),
    });
    crate::audit::AuditEntry::new(&record.initiated_by, &action, &record.id, details)
}

/// The transaction record of a new movement.
pub(crate) fn transaction_record(movement: &Movement, now: Time) -> TransactionDoc {
    let ledger = &movement.ledger;
    TransactionDoc {
        id: movement.transaction_id.clone(),
        kind: ledger.kind(),
        state: movement.state,
        asset: ledger.asset().to_string(),
        decimals: movement.decimals,
        amount: movement.amount,
        ledger_key: movement.ledger_key.clone(),
        participants: movement.participants.clone(),
        from_wallet_id: movement.from_wallet_id.clone(),
        to_wallet_id: movement.to_wallet_id.clone(),
        external_reference: movement.external_reference.clone(),
        destination: movement.destination.clone(),
        initiated_by: movement.initiated_by.clone(),
        timeline: movement.timeline.iter().map(TimelineEntry::from).collect(),
        created_at: now,
        updated_at: now,
        velocity_key: movement.limits.first().map(|l| l.key.clone()),
        original_transaction_id: movement.original_transaction_id.clone(),
        broadcast: None,
        review_approvals: Vec::new(),
    }
}

/// The ledger entries of `ledger`'s postings under transaction `transaction_id`, in posting
/// order; `owner_of` names the user of each account (None for platform accounts), `at` the time
/// of its entries. Each entry takes the next sequence number of its account in `positions`
/// (which it advances) and records the account's balances right after it.
pub(crate) fn ledger_entries(
    transaction_id: &str,
    ledger: &coffer_domain::LedgerTransaction,
    owner_of: impl Fn(&str) -> Option<String>,
    at: impl Fn(&str) -> Time,
    positions: &mut BTreeMap<String, Position>,
) -> Result<Vec<LedgerEntryDoc>, StoreError> {
    let mut entries = Vec::with_capacity(ledger.postings().len());
    for posting in ledger.postings() {
        let account = &posting.account_id;
        let amount = SignedAmount::new(posting.amount, posting.side == Side::Debit);
        let after = positions
            .get_mut(account)
            .and_then(|position| position.post(posting.bucket, amount))
            .ok_or_else(|| StoreError::Corrupt(format!("no running balance of account {account}")))?;
        entries.push(LedgerEntryDoc {
            id: new_id(),
            transaction_id: transaction_id.to_string(),
            account_id: account.clone(),
            user_id: owner_of(account),
            asset: ledger.asset().to_string(),
            kind: ledger.kind(),
            bucket: posting.bucket,
            side: posting.side,
            amount,
            created_at: at(account),
            seq: Some(after.seq),
            balance_after_atomic: Some(after.balances.into()),
        });
    }
    Ok(entries)
}

/// A planned event as an outbox row.
pub(crate) fn outbox_row(event: &PlannedEvent, traceparent: Option<String>) -> OutboxDoc {
    let mut row = OutboxDoc::new(
        event.event_type.as_str(),
        event.event_type.data_version(),
        &event.wallet_id,
        &event.user_id,
        event.data.clone(),
    );
    row.traceparent = traceparent;
    row
}

/// ONE `update` command for every touched account: each statement adds the batch's net change
/// and moves the version by the number of entries written to it (to its last entry's `seq`). It
/// selects by `_id` only: the batch read the accounts in this transaction, so a concurrent writer
/// is a write conflict.
async fn update_accounts(
    db: &Database,
    session: &mut ClientSession,
    before: &BTreeMap<String, LoadedAccount>,
    positions: &BTreeMap<String, Position>,
    book: &Book,
    now: Time,
) -> Result<(), Retry> {
    let now = codec::bson_time(&now);
    let mut statements = Vec::with_capacity(positions.len());
    for (id, position) in positions {
        let loaded = &before[id];
        let count = position.seq - loaded.version;
        if count == 0 {
            continue;
        }
        let old = &loaded.balances;
        let new = book.account(id).expect("touched accounts are in the book");
        // The entries' running balances end where the book does, or the history would lie.
        if position.balances != BucketBalances::from(new) {
            return Err(Retry::Fatal(StoreError::Corrupt(format!(
                "running balances of account {id} disagree with the book"
            ))));
        }
        let mut inc = doc! { "version": count };
        for bucket in Bucket::ALL {
            let delta = new.bucket(bucket).minus(old.bucket(bucket));
            if !delta.amount.is_zero() {
                inc.insert(bucket.as_str(), codec::to_decimal(&delta.amount, delta.negative));
            }
        }
        statements.push(doc! {
            "q": { "_id": id },
            "u": { "$inc": inc, "$set": { "updated_at": now } },
        });
    }
    update_exactly(db, session, WALLETS, statements).await
}

/// ONE `update` command of `statements` on `collection`, each of which must match a document:
/// one that matches nothing means what the attempt read changed under it (Stale).
pub(crate) async fn update_exactly(
    db: &Database,
    session: &mut ClientSession,
    collection: &str,
    statements: Vec<Document>,
) -> Result<(), Retry> {
    let expected = statements.len();
    let reply = db
        .run_command(doc! { "update": collection, "updates": statements, "ordered": true })
        .session(&mut *session)
        .await?;
    check_write_errors(&reply)?;
    if matched(&reply) != expected as i64 {
        return Err(Retry::Stale);
    }
    Ok(())
}

/// Adds what the batch charged to each limit counter (created on first use), in one command.
async fn update_counters(
    db: &Database,
    session: &mut ClientSession,
    charged: &BTreeMap<String, coffer_domain::Amount>,
    now: Time,
) -> Result<(), Retry> {
    if charged.is_empty() {
        return Ok(());
    }
    let expires = DateTime::from_millis(now.timestamp_millis() + crate::money::VELOCITY_RETENTION_MS);
    let statements: Vec<Document> = charged
        .iter()
        .map(|(key, amount)| {
            // Lifetime counters (what was returned of a transaction) have no expiry: the TTL
            // index skips a counter without the field.
            let mut update = doc! { "$inc": { "total": codec::to_decimal(amount, false) } };
            if !coffer_domain::LimitCharge::is_lifetime(key) {
                update.insert("$setOnInsert", doc! { "expires_at": expires });
            }
            doc! { "q": { "_id": key }, "u": update, "upsert": true }
        })
        .collect();
    let reply = db
        .run_command(doc! { "update": VELOCITY, "updates": statements, "ordered": true })
        .session(&mut *session)
        .await?;
    check_write_errors(&reply)
}

fn matched(reply: &Document) -> i64 {
    match reply.get("n") {
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        _ => -1,
    }
}

/// A write error inside an `update` reply (the command itself succeeds with `writeErrors`).
fn check_write_errors(reply: &Document) -> Result<(), Retry> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok(());
    };
    let first = errors.first().and_then(|e| e.as_document());
    let code = first.and_then(|e| e.get_i32("code").ok()).unwrap_or_default();
    let message = first
        .and_then(|e| e.get_str("errmsg").ok())
        .unwrap_or("unknown write error")
        .to_string();
    Err(match code {
        11000 => Retry::Duplicates,
        112 => Retry::Stale, // WriteConflict reported per statement
        _ => Retry::Fatal(StoreError::Corrupt(format!("update failed ({code}): {message}"))),
    })
}

/// Committed transactions with any of `keys`, by key.
pub(crate) async fn existing_by_ledger_key(
    db: &Database,
    keys: &[String],
) -> Result<HashMap<String, TransactionDoc>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let found: Vec<TransactionDoc> = db
        .collection::<TransactionDoc>(TRANSACTIONS)
        .find(doc! { "ledger_key": { "$in": keys } })
        .await?
        .try_collect()
        .await?;
    Ok(found.into_iter().map(|t| (t.ledger_key.clone(), t)).collect())
}

/// The idempotency records among `ids` that exist.
async fn taken_idempotency_ids(db: &Database, ids: &[String]) -> Result<HashSet<String>, StoreError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<Document> = db
        .collection::<Document>(IDEMPOTENCY_KEYS)
        .find(doc! { "_id": { "$in": ids } })
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(found
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(String::from))
        .collect())
}
