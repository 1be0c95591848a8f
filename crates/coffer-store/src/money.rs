//! The write path of money.
//!
//! New movements are planned by the domain (`coffer_domain::plan`) and applied by group commit
//! ([`crate::batch`]): many movements per database transaction, each with its own outcome. This
//! module keeps what every write shares: the bounded transaction runner with its retries (used by
//! state transitions, adjustments and the broadcaster), the posting of a balanced ledger
//! transaction inside an open transaction, platform accounts and wallet creation.

use std::collections::BTreeMap;
use std::time::Duration;

use coffer_domain::amount::ledger_max;
use coffer_domain::ledger::BalanceDelta;
use coffer_domain::{AccountKind, Amount, Bucket, LedgerTransaction, Movement, PlannedEvent, SignedAmount};
use futures::future::BoxFuture;
use mongodb::bson::{doc, to_document, DateTime};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{Acknowledgment, ReadConcern, ReturnDocument, SelectionCriteria, WriteConcern};
use mongodb::ClientSession;
use rand::Rng;
use tracing::Instrument;

use crate::batch::Submission;
use crate::collections::{LEDGER_ENTRIES, TRANSACTIONS, VELOCITY, WALLETS};
use crate::model::{LedgerEntryDoc, OutboxDoc, TransactionDoc, WalletDoc};
use crate::{codec, new_id, Store, StoreError};

impl Store {
    /// Applies a planned movement (group commit) and returns its transaction record.
    ///
    /// Errors: [`StoreError::InsufficientFunds`] or [`StoreError::LimitExceeded`] (refused by the
    /// balances or limits; nothing written), [`StoreError::DuplicateLedgerKey`] (applied already;
    /// carries the existing record), [`StoreError::IdempotencyKeyTaken`], [`StoreError::Contention`]
    /// (not committed within the bounds; retry later).
    pub async fn apply(&self, submission: Submission) -> Result<TransactionDoc, StoreError> {
        self.committer.submit(&self.writer_parts(), submission).await
    }

    /// Applies `submissions` together: in one batch (one database transaction) when they fit the
    /// batch size, each with its own outcome, in order. At most 1,000.
    pub async fn apply_all(&self, submissions: Vec<Submission>) -> Vec<Result<TransactionDoc, StoreError>> {
        assert!(submissions.len() <= 1000, "at most 1,000 movements per call");
        if submissions.is_empty() {
            return Vec::new();
        }
        let parts = self.writer_parts();
        self.committer.queue_unit(&parts, submissions, false).await
    }

    /// Applies `submissions` all or nothing: in one database transaction of their own (group
    /// commit's writer, one batch however large, at most 1,000), each with its outcome, in order.
    /// If any is refused nothing is written: it answers its refusal and every other one
    /// [`StoreError::NotApplied`]. One applied before answers [`StoreError::DuplicateLedgerKey`]
    /// and the others are applied without it. A ledger key given twice is
    /// [`StoreError::AlreadyExists`] for its repeat.
    pub async fn apply_atomically(
        &self,
        submissions: Vec<Submission>,
    ) -> Vec<Result<TransactionDoc, StoreError>> {
        assert!(submissions.len() <= 1000, "at most 1,000 movements per call");
        if submissions.is_empty() {
            return Vec::new();
        }
        let parts = self.writer_parts();
        self.committer.queue_unit(&parts, submissions, true).await
    }

    fn writer_parts(&self) -> crate::batch::WriterParts {
        crate::batch::WriterParts {
            client: self.client.clone(),
            db: self.db.clone(),
            config: self.config.batch.clone(),
            metrics: self.metrics.clone(),
            sessions: self.sessions.clone(),
            audit_keys: self.config.audit_keys.clone(),
        }
    }

    /// [`Store::apply`] of a movement with no idempotency record.
    pub async fn apply_movement(&self, movement: Movement) -> Result<TransactionDoc, StoreError> {
        self.apply(movement.into()).await
    }

    /// Takes the in-process locks of `accounts` before a money write; a wait beyond the lock
    /// timeout counts as a give-up and answers [`StoreError::Contention`] (retry later).
    pub(crate) async fn lock_accounts(
        &self,
        accounts: &[String],
    ) -> Result<crate::locks::WalletGuard, StoreError> {
        match self.locks.lock(accounts, self.config.lock_timeout).await {
            Some(guard) => Ok(guard),
            None => {
                self.metrics.transaction_give_ups.inc();
                Err(StoreError::Contention)
            }
        }
    }

    /// Runs `body` in a transaction, retrying transient failures with jittered backoff, and
    /// retrying the commit itself while its result is unknown. Bounded by the store config.
    /// Traced as one `transaction` span; outbox rows written inside carry its trace context.
    pub async fn with_transaction<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        F: for<'s> FnMut(&'s mut ClientSession) -> BoxFuture<'s, Result<T, StoreError>>,
    {
        let span = crate::telemetry::transaction_span(self.db.name());
        let result = self.transaction_attempts(body).instrument(span.clone()).await;
        crate::telemetry::record_outcome(&span, &result);
        result
    }

    async fn transaction_attempts<T, F>(&self, mut body: F) -> Result<T, StoreError>
    where
        F: for<'s> FnMut(&'s mut ClientSession) -> BoxFuture<'s, Result<T, StoreError>>,
    {
        let mut session = self.client.start_session().await?;
        self.sessions.cover(&session).await?;
        for attempt in 1..=self.config.max_transaction_attempts {
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
                .selection_criteria(SelectionCriteria::ReadPreference(
                    mongodb::options::ReadPreference::Primary,
                ))
                .await?;
            let outcome = match body(&mut session).await {
                Ok(value) => {
                    let span = crate::telemetry::operation_span("commitTransaction", self.db.name(), None);
                    commit(&mut session).instrument(span).await.map(|()| value)
                }
                Err(error) => {
                    // Aborting can fail when the server already aborted; the error that matters is `error`.
                    let _ = session.abort_transaction().await;
                    Err(error)
                }
            };
            match outcome {
                Err(StoreError::Database(e)) if e.0.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                    self.metrics.transaction_retries.inc();
                    tracing::debug!(attempt, "transient transaction error, retrying");
                    tokio::time::sleep(backoff(self.config.backoff_base, attempt)).await;
                }
                other => return other,
            }
        }
        self.metrics.transaction_give_ups.inc();
        Err(StoreError::Contention)
    }

    pub async fn transaction_by_ledger_key(
        &self,
        ledger_key: &str,
    ) -> Result<Option<TransactionDoc>, StoreError> {
        let found = self
            .collection::<TransactionDoc>(TRANSACTIONS)
            .find_one(doc! { "ledger_key": ledger_key })
            .await?;
        Ok(found)
    }

    /// The transactions of `ledger_keys` that exist, by ledger key (one read, at most 1,000 keys).
    pub async fn transactions_by_ledger_keys(
        &self,
        ledger_keys: &[String],
    ) -> Result<std::collections::HashMap<String, TransactionDoc>, StoreError> {
        crate::batch::existing_by_ledger_key(&self.db, ledger_keys).await
    }

    /// Creates the platform accounts of `asset` if missing. Idempotent; after the first success
    /// in this process it costs nothing.
    pub async fn ensure_platform_accounts(&self, asset: &str, decimals: u8) -> Result<(), StoreError> {
        if self
            .ensured_assets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(asset)
        {
            return Ok(());
        }
        for kind in AccountKind::PLATFORM {
            let id = coffer_domain::account::platform_account_id(asset, kind);
            let now = codec::now();
            let fresh = WalletDoc {
                id: id.clone(),
                owner_key: id.clone(),
                kind,
                user_id: None,
                asset: asset.to_string(),
                decimals,
                available: SignedAmount::ZERO,
                pending: SignedAmount::ZERO,
                held: SignedAmount::ZERO,
                version: 0,
                created_at: now,
                updated_at: now,
            };
            let result = self
                .collection::<WalletDoc>(WALLETS)
                .update_one(doc! { "_id": &id }, doc! { "$setOnInsert": to_document(&fresh)? })
                .upsert(true)
                .await;
            match result {
                Ok(_) => {}
                Err(e) if crate::is_duplicate_key(&e) => {} // a concurrent start created it
                Err(e) => return Err(e.into()),
            }
        }
        self.ensured_assets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(asset.to_string());
        Ok(())
    }

    /// Creates the user's wallet for `asset`, or returns the existing one (one per user and asset).
    pub async fn create_wallet(
        &self,
        user_id: &str,
        asset: &str,
        decimals: u8,
    ) -> Result<(WalletDoc, bool), StoreError> {
        let now = codec::now();
        let wallet = WalletDoc {
            id: new_id(),
            owner_key: WalletDoc::user_owner_key(user_id, asset),
            kind: AccountKind::User,
            user_id: Some(user_id.to_string()),
            asset: asset.to_string(),
            decimals,
            available: SignedAmount::ZERO,
            pending: SignedAmount::ZERO,
            held: SignedAmount::ZERO,
            version: 0,
            created_at: now,
            updated_at: now,
        };
        let wallets = self.collection::<WalletDoc>(WALLETS);
        match wallets.insert_one(&wallet).await {
            Ok(_) => Ok((wallet, true)),
            Err(e) if crate::is_duplicate_key(&e) => {
                let existing = wallets.find_one(doc! { "owner_key": &wallet.owner_key }).await?;
                existing.map(|w| (w, false)).ok_or(StoreError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }
}

pub(crate) async fn commit(session: &mut ClientSession) -> Result<(), StoreError> {
    const COMMIT_ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempt < COMMIT_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.min(8));
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}

/// Gives a failed withdrawal's amount back to the day's counter it charged.
pub(crate) async fn release_velocity(
    store: &Store,
    session: &mut ClientSession,
    key: &str,
    amount: &Amount,
) -> Result<(), StoreError> {
    store
        .collection::<mongodb::bson::Document>(VELOCITY)
        .update_one(
            doc! { "_id": key },
            doc! { "$inc": { "total": codec::to_decimal(amount, true) } },
        )
        .session(&mut *session)
        .await?;
    Ok(())
}

/// Velocity counters are kept three days (a UTC day plus margin), then the TTL index drops them.
pub const VELOCITY_RETENTION_MS: i64 = 3 * 24 * 3600 * 1000;

/// Applies a balanced ledger transaction's deltas and inserts its entries, inside `session`'s
/// transaction; returns the touched accounts after the update.
///
/// Each update moves the account's version by its entries and returns the account after it, so
/// the entries are numbered back from there: the account's sequence and balances before this
/// transaction, then each posting in order (the same numbering as the batch writer's).
pub(crate) async fn post_entries(
    store: &Store,
    session: &mut ClientSession,
    ledger: &LedgerTransaction,
    tx_id: &str,
    now: DateTime,
) -> Result<Vec<WalletDoc>, StoreError> {
    let mut postings: BTreeMap<String, Vec<(Bucket, SignedAmount)>> = BTreeMap::new();
    for posting in ledger.postings() {
        let amount = SignedAmount::new(posting.amount, posting.side == coffer_domain::Side::Debit);
        let of_account = postings.entry(posting.account_id.clone()).or_default();
        of_account.push((posting.bucket, amount));
    }
    let mut updated: Vec<WalletDoc> = Vec::new();
    for (account_id, bucket, delta) in ledger.balance_deltas() {
        let entries = postings[&account_id].iter().filter(|(b, _)| *b == bucket).count();
        let wallet = apply_delta(store, session, &account_id, bucket, &delta, entries, now).await?;
        updated.retain(|w| w.id != wallet.id);
        updated.push(wallet);
    }
    let mut positions = BTreeMap::new();
    for wallet in &updated {
        let after = crate::batch::wallet_position(wallet)?;
        let before = after
            .before(&postings[&wallet.id])
            .ok_or_else(|| StoreError::Corrupt(format!("account {} cannot be numbered back", wallet.id)))?;
        positions.insert(wallet.id.clone(), before);
    }
    let find = |id: &str| updated.iter().find(|w| w.id == id);
    let owner_of = |id: &str| find(id).and_then(|w| w.user_id.clone());
    // The account's `updated_at` after the update: `now`, or later if its last entry was dated
    // later by another process's clock.
    let at = |id: &str| find(id).map_or_else(|| codec::from_millis(now.timestamp_millis()), |w| w.updated_at);
    let entries = crate::batch::ledger_entries(tx_id, ledger, owner_of, at, &mut positions)?;
    store
        .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
        .insert_many(&entries)
        .session(&mut *session)
        .await?;
    Ok(updated)
}

pub(crate) async fn insert_events(
    store: &Store,
    session: &mut ClientSession,
    events: &mut [OutboxDoc],
) -> Result<(), StoreError> {
    crate::outbox::append(&store.db, session, events)
        .await
        .map_err(crate::batch::retry_error)
}

/// Applies one balance delta with a conditional `$inc`, moving the version by the `entries` it
/// stands for, and returns the wallet after it.
async fn apply_delta(
    store: &Store,
    session: &mut ClientSession,
    account_id: &str,
    bucket: Bucket,
    delta: &BalanceDelta,
    entries: usize,
    now: DateTime,
) -> Result<WalletDoc, StoreError> {
    let field = bucket.as_str();
    let mut filter = doc! { "_id": account_id };
    // Decimal128 stays exact only within the ledger limit, so every update keeps the stored sum
    // inside [-limit, limit]; a user's balance must additionally never go below zero.
    let headroom = ledger_max()
        .checked_sub(delta.amount)
        .expect("postings are below the ledger limit");
    if delta.negative {
        filter.insert(
            "$or",
            vec![
                doc! { "kind": "user", field: { "$gte": codec::to_decimal(&delta.amount, false) } },
                doc! { "kind": { "$ne": "user" }, field: { "$gte": codec::to_decimal(&headroom, true) } },
            ],
        );
    } else {
        filter.insert(field, doc! { "$lte": codec::to_decimal(&headroom, false) });
    }
    let update = doc! {
        "$inc": { field: codec::to_decimal(&delta.amount, delta.negative), "version": entries as i64 },
        "$max": { "updated_at": now },
    };
    let wallets = store.collection::<WalletDoc>(WALLETS);
    let after = wallets
        .find_one_and_update(filter, update)
        .return_document(ReturnDocument::After)
        .session(&mut *session)
        .await?;
    if let Some(wallet) = after {
        return Ok(wallet);
    }
    // Nothing matched: find out why, inside the same snapshot, to answer precisely.
    let existing = wallets
        .find_one(doc! { "_id": account_id })
        .session(&mut *session)
        .await?;
    match existing {
        None => Err(StoreError::NotFound),
        Some(_) if delta.negative => Err(StoreError::InsufficientFunds),
        Some(_) => Err(StoreError::BalanceLimit),
    }
}

/// The outbox rows of `events`, carrying the current trace context.
pub(crate) fn event_rows(events: &[PlannedEvent]) -> Vec<OutboxDoc> {
    let traceparent = crate::model::current_traceparent();
    let rows = events
        .iter()
        .map(|e| crate::batch::outbox_row(e, traceparent.clone()));
    rows.collect()
}
