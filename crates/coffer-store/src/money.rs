//! The write path of money: one multi-document transaction per movement.
//!
//! Inside one transaction (snapshot read concern, majority write concern, primary): the
//! transaction record is inserted (its unique `ledger_key` makes the movement happen at most
//! once), each touched balance is updated with a conditional `$inc` (a user's balance never goes
//! below zero), the balanced ledger entries and the outbox events are inserted. Transient errors
//! are retried a bounded number of times with jittered exponential backoff; writers to the same
//! wallet in one process queue on [`crate::locks::WalletLocks`] first.

use std::future::IntoFuture;
use std::time::Duration;

use coffer_domain::amount::{ledger_max, signed_decimal_string};
use coffer_domain::events::{BalanceUpdatedV1, EventType, TransactionEventV1};
use coffer_domain::ledger::BalanceDelta;
use coffer_domain::{AccountKind, Amount, Bucket, LedgerTransaction, StateChange, TxState};
use futures::future::BoxFuture;
use mongodb::bson::{doc, to_document, DateTime};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{Acknowledgment, ReadConcern, ReturnDocument, SelectionCriteria, WriteConcern};
use mongodb::ClientSession;
use rand::Rng;
use tracing::Instrument;

use crate::collections::{LEDGER_ENTRIES, OUTBOX, TRANSACTIONS, VELOCITY, WALLETS};
use crate::model::{LedgerEntryDoc, OutboxDoc, TimelineEntry, TransactionDoc, WalletDoc};
use crate::{codec, new_id, Store, StoreError};

/// A money movement ready to be written: the validated ledger transaction and its record.
#[derive(Debug, Clone)]
pub struct NewMovement {
    pub ledger: LedgerTransaction,
    /// Deterministic: `api:<user>:<idempotency key>`, `deposit:<rail>:<reference>`,
    /// `chain:<chain>:<tx hash>:<log index>`. A second movement with the key is refused.
    pub ledger_key: String,
    pub state: TxState,
    pub timeline: Vec<StateChange>,
    pub amount: Amount,
    /// The asset's decimals, for the amounts in the outbox events.
    pub decimals: u8,
    pub initiated_by: String,
    pub from_wallet_id: Option<String>,
    pub to_wallet_id: Option<String>,
    pub external_reference: Option<String>,
    pub destination: Option<String>,
    /// The users who may see the transaction (owners of the user wallets it touches). Checked
    /// against the wallets actually updated, so a caller cannot grant visibility by mistake.
    pub participants: Vec<String>,
    /// A limited amount this movement uses up (a withdrawal's daily velocity), charged in the same
    /// database transaction: over the limit, nothing is written.
    pub velocity: Option<VelocityCharge>,
}

/// A charge against a per-day counter (`withdrawal_velocity`), refused above `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VelocityCharge {
    /// `<wallet id>:<YYYY-MM-DD>` (UTC day).
    pub key: String,
    pub amount: Amount,
    pub limit: Amount,
}

impl VelocityCharge {
    /// The charge of `amount` on `wallet`'s counter of the UTC day of `now`.
    pub fn daily(wallet_id: &str, amount: Amount, limit: Amount, now: chrono::DateTime<chrono::Utc>) -> Self {
        VelocityCharge {
            key: format!("{wallet_id}:{}", now.format("%Y-%m-%d")),
            amount,
            limit,
        }
    }
}

impl Store {
    /// Writes `movement` atomically and returns its transaction record.
    ///
    /// Errors: [`StoreError::InsufficientFunds`] (a user balance would go negative; nothing
    /// written), [`StoreError::DuplicateLedgerKey`] (already applied; carries the existing
    /// record), [`StoreError::Contention`] (could not commit within the bounds; retry later).
    pub async fn apply_movement(&self, movement: &NewMovement) -> Result<TransactionDoc, StoreError> {
        assert_eq!(
            movement.timeline.last().map(|c| c.to),
            Some(movement.state),
            "timeline ends in state"
        );
        if let Some(existing) = self.transaction_by_ledger_key(&movement.ledger_key).await? {
            return Err(StoreError::DuplicateLedgerKey(Box::new(existing)));
        }
        let _guard = self.lock_accounts(&movement.ledger.account_ids()).await?;
        let tx_id = new_id();
        // The body is re-run on retries and must own what it uses (the session is borrowed per attempt).
        let shared = std::sync::Arc::new((self.clone(), movement.clone(), tx_id));
        let result = self
            .with_transaction(|session| {
                let shared = shared.clone();
                Box::pin(async move {
                    let (store, movement, tx_id) = &*shared;
                    write_movement(store, session, movement, tx_id).await
                })
            })
            .await;
        match result {
            Ok(doc) => {
                self.metrics
                    .movements
                    .with_label_values(&[doc.kind.as_str()])
                    .inc();
                Ok(doc)
            }
            Err(StoreError::AlreadyExists) => {
                match self.transaction_by_ledger_key(&movement.ledger_key).await? {
                    Some(existing) => Err(StoreError::DuplicateLedgerKey(Box::new(existing))),
                    None => Err(StoreError::Corrupt(
                        "duplicate ledger key without a transaction".into(),
                    )),
                }
            }
            Err(other) => Err(other),
        }
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
                Err(StoreError::Database(e)) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
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
            let now = DateTime::now();
            let fresh = WalletDoc {
                id: id.clone(),
                owner_key: id.clone(),
                kind,
                user_id: None,
                asset: asset.to_string(),
                decimals,
                available: codec::zero(),
                pending: codec::zero(),
                held: codec::zero(),
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
        let now = DateTime::now();
        let wallet = WalletDoc {
            id: new_id(),
            owner_key: WalletDoc::user_owner_key(user_id, asset),
            kind: AccountKind::User,
            user_id: Some(user_id.to_string()),
            asset: asset.to_string(),
            decimals,
            available: codec::zero(),
            pending: codec::zero(),
            held: codec::zero(),
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

fn sorted_unique(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.dedup();
    ids
}

async fn commit(session: &mut ClientSession) -> Result<(), StoreError> {
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

fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.min(8));
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}

/// One attempt of a movement inside an open transaction.
pub(crate) async fn write_movement(
    store: &Store,
    session: &mut ClientSession,
    movement: &NewMovement,
    tx_id: &str,
) -> Result<TransactionDoc, StoreError> {
    let now = DateTime::now();
    let ledger = &movement.ledger;
    let record = TransactionDoc {
        id: tx_id.to_string(),
        kind: ledger.kind(),
        state: movement.state,
        asset: ledger.asset().to_string(),
        decimals: movement.decimals,
        amount: movement.amount,
        ledger_key: movement.ledger_key.clone(),
        participants: sorted_unique(&movement.participants),
        from_wallet_id: movement.from_wallet_id.clone(),
        to_wallet_id: movement.to_wallet_id.clone(),
        external_reference: movement.external_reference.clone(),
        destination: movement.destination.clone(),
        initiated_by: movement.initiated_by.clone(),
        timeline: movement.timeline.iter().map(TimelineEntry::from).collect(),
        created_at: now,
        updated_at: now,
        velocity_key: movement.velocity.as_ref().map(|v| v.key.clone()),
        broadcast: None,
    };
    if let Some(charge) = &movement.velocity {
        charge_velocity(store, session, charge, now).await?;
    }
    let transactions = store.collection::<TransactionDoc>(TRANSACTIONS);
    if let Err(e) = transactions.insert_one(&record).session(&mut *session).await {
        return Err(if crate::is_duplicate_key(&e) {
            StoreError::AlreadyExists
        } else {
            e.into()
        });
    }

    let (updated, entries) = post_entries(store, session, ledger, tx_id, now).await?;

    let owners: Vec<String> = updated.iter().filter_map(|w| w.user_id.clone()).collect();
    if sorted_unique(&owners) != record.participants {
        return Err(StoreError::Corrupt(format!(
            "movement participants {:?} differ from the owners of the wallets it touches",
            record.participants
        )));
    }

    let mut events = transaction_events(&record, EventType::TransactionCreated, &updated, &entries)?;
    events.extend(balance_events(&record, &updated)?);
    insert_events(store, session, &events).await?;
    Ok(record)
}

/// Adds `charge` to its day's counter unless that takes it above the limit
/// ([`StoreError::LimitExceeded`]). The counter documents expire after a few days.
async fn charge_velocity(
    store: &Store,
    session: &mut ClientSession,
    charge: &VelocityCharge,
    now: DateTime,
) -> Result<(), StoreError> {
    let Some(room) = charge.limit.checked_sub(charge.amount) else {
        return Err(StoreError::LimitExceeded);
    };
    let counters = store.collection::<mongodb::bson::Document>(VELOCITY);
    let expires = DateTime::from_millis(now.timestamp_millis() + VELOCITY_RETENTION_MS);
    counters
        .update_one(
            doc! { "_id": &charge.key },
            doc! { "$setOnInsert": { "total": codec::zero(), "expires_at": expires } },
        )
        .upsert(true)
        .session(&mut *session)
        .await?;
    let charged = counters
        .update_one(
            doc! { "_id": &charge.key, "total": { "$lte": codec::to_decimal(&room, false) } },
            doc! { "$inc": { "total": codec::to_decimal(&charge.amount, false) } },
        )
        .session(&mut *session)
        .await?;
    if charged.matched_count == 1 {
        Ok(())
    } else {
        Err(StoreError::LimitExceeded)
    }
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
/// transaction; returns the touched accounts after the update and the entries.
pub(crate) async fn post_entries(
    store: &Store,
    session: &mut ClientSession,
    ledger: &LedgerTransaction,
    tx_id: &str,
    now: DateTime,
) -> Result<(Vec<WalletDoc>, Vec<LedgerEntryDoc>), StoreError> {
    let mut updated: Vec<WalletDoc> = Vec::new();
    for (account_id, bucket, delta) in ledger.balance_deltas() {
        let wallet = apply_delta(store, session, &account_id, bucket, &delta, now).await?;
        updated.retain(|w| w.id != wallet.id);
        updated.push(wallet);
    }
    let entries: Vec<LedgerEntryDoc> = ledger
        .postings()
        .iter()
        .map(|posting| LedgerEntryDoc {
            id: new_id(),
            transaction_id: tx_id.to_string(),
            account_id: posting.account_id.clone(),
            user_id: updated
                .iter()
                .find(|w| w.id == posting.account_id)
                .and_then(|w| w.user_id.clone()),
            asset: ledger.asset().to_string(),
            kind: ledger.kind(),
            bucket: posting.bucket,
            side: posting.side,
            amount: codec::to_decimal(&posting.amount, posting.side == coffer_domain::Side::Debit),
            created_at: now,
        })
        .collect();
    store
        .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
        .insert_many(&entries)
        .session(&mut *session)
        .await?;
    Ok((updated, entries))
}

pub(crate) async fn insert_events(
    store: &Store,
    session: &mut ClientSession,
    events: &[OutboxDoc],
) -> Result<(), StoreError> {
    if !events.is_empty() {
        let span = crate::telemetry::operation_span("insert", store.db.name(), Some(OUTBOX));
        store
            .collection::<OutboxDoc>(OUTBOX)
            .insert_many(events)
            .session(&mut *session)
            .into_future()
            .instrument(span)
            .await?;
    }
    Ok(())
}

/// Applies one balance delta with a conditional `$inc` and returns the wallet after it.
async fn apply_delta(
    store: &Store,
    session: &mut ClientSession,
    account_id: &str,
    bucket: Bucket,
    delta: &BalanceDelta,
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
        "$inc": { field: codec::to_decimal(&delta.amount, delta.negative), "version": 1i64 },
        "$set": { "updated_at": now },
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

/// One transaction event per user wallet in `wallets`: the transaction as that wallet's owner
/// sees it, with the amount signed from the wallet's point of view (net of `entries`).
pub(crate) fn transaction_events(
    record: &TransactionDoc,
    kind: EventType,
    wallets: &[WalletDoc],
    entries: &[LedgerEntryDoc],
) -> Result<Vec<OutboxDoc>, StoreError> {
    let mut events = Vec::new();
    for wallet in wallets.iter().filter(|w| w.kind == AccountKind::User) {
        let user_id = wallet.user_id.clone().expect("user wallets have a user");
        let (mut credit, mut debit) = (Amount::ZERO, Amount::ZERO);
        for entry in entries
            .iter()
            .filter(|e| e.account_id == wallet.id && e.bucket == Bucket::Available)
        {
            let (amount, negative) = codec::from_decimal(&entry.amount)?;
            let side = if negative { &mut debit } else { &mut credit };
            *side = side.checked_add(amount).expect("bounded");
        }
        // With no available-bucket entries (a hold, a state change) the amount is the
        // transaction's, signed by the wallet's side of it.
        let (net, negative) = if credit == debit {
            (
                record.amount,
                record.from_wallet_id.as_deref() == Some(wallet.id.as_str()),
            )
        } else if credit > debit {
            (credit.checked_sub(debit).expect("ordered"), false)
        } else {
            (debit.checked_sub(credit).expect("ordered"), true)
        };
        let data = TransactionEventV1 {
            transaction_id: record.id.clone(),
            wallet_id: wallet.id.clone(),
            kind: record.kind.as_str().to_string(),
            state: record.state.as_str().to_string(),
            asset: record.asset.clone(),
            amount: signed_decimal_string(&net, negative, record.decimals),
        };
        events.push(outbox_doc(kind, wallet, &user_id, to_document(&data)?));
    }
    Ok(events)
}

/// One `wallet.balance.updated` per user wallet whose balances changed.
pub(crate) fn balance_events(
    record: &TransactionDoc,
    changed: &[WalletDoc],
) -> Result<Vec<OutboxDoc>, StoreError> {
    let mut events = Vec::new();
    for wallet in changed.iter().filter(|w| w.kind == AccountKind::User) {
        let user_id = wallet.user_id.clone().expect("user wallets have a user");
        let balances = wallet.balances()?;
        let decimals = wallet.decimals;
        let data = BalanceUpdatedV1 {
            wallet_id: wallet.id.clone(),
            asset: wallet.asset.clone(),
            decimals,
            available: balances.available.to_decimal_string(decimals),
            pending: balances.pending.to_decimal_string(decimals),
            held: balances.held.to_decimal_string(decimals),
            total: balances.total().to_decimal_string(decimals),
            transaction_id: record.id.clone(),
        };
        events.push(outbox_doc(
            EventType::BalanceUpdated,
            wallet,
            &user_id,
            to_document(&data)?,
        ));
    }
    Ok(events)
}

fn outbox_doc(
    kind: EventType,
    wallet: &WalletDoc,
    user_id: &str,
    data: mongodb::bson::Document,
) -> OutboxDoc {
    let mut row = OutboxDoc::new(kind.as_str(), kind.data_version(), &wallet.id, user_id, data);
    row.traceparent = crate::model::current_traceparent();
    row
}
