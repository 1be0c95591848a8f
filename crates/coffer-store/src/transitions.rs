//! State changes of an existing transaction, optionally with the ledger movement that goes with
//! them (a withdrawal settled to custody, a hold released on rejection, a credited deposit
//! reversed), in one database transaction with its outbox events.

use coffer_domain::{LedgerTransaction, StateChange, TxState};
use futures::TryStreamExt;
use mongodb::bson::{doc, to_bson, DateTime, Document};
use mongodb::ClientSession;

use crate::collections::{TRANSACTIONS, WALLETS};
use crate::model::{TimelineEntry, TransactionDoc, WalletDoc};
use crate::money::{insert_events, post_entries};
use crate::{Store, StoreError};
use coffer_domain::movement::{balance_event, state_change_events, Movement, Settlement, WalletRef};

/// A checked move of transaction `transaction_id` from `from` to `to`.
#[derive(Debug, Clone)]
pub struct Transition {
    pub transaction_id: String,
    /// The state the caller saw; if another writer moved the transaction since, nothing happens
    /// and the call answers [`StoreError::StateConflict`]. This is what makes a transition (and its
    /// ledger movement) happen at most once.
    pub from: TxState,
    pub to: TxState,
    pub cause: String,
    /// Postings that belong to this change, recorded under the same transaction id.
    pub ledger: Option<LedgerTransaction>,
    /// What the change records on the transaction besides its state (chain progress, a review).
    pub note: Option<Note>,
    /// What must also still hold of the withdrawal's signed transaction.
    pub guard: Option<Guard>,
    /// A movement of its own that goes with the change, in the same database transaction: the
    /// coin gas of a token withdrawal (`coffer_domain::gas::plan_withdrawal_gas`), booked once by
    /// its ledger key.
    pub companion: Option<Movement>,
}

/// A condition on a withdrawal's signed transaction, checked in the same write as the state:
/// what keeps a release from racing a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Nothing has been signed (a release of an unsigned withdrawal).
    Unsigned,
    /// The latest signed version is still the one with this hash.
    Latest(String),
    /// A review's first approvals are still the `seen` ones, none by `approver` (two-person rule).
    Approvals { seen: usize, approver: String },
}

impl Guard {
    fn filter(&self) -> Document {
        match self {
            Guard::Unsigned => doc! { "broadcast": null },
            Guard::Latest(hash) => doc! { "broadcast.tx_hash": hash },
            Guard::Approvals { seen, approver } => review_approvals_unchanged(*seen, approver),
        }
    }
}

/// The filter that the review approvals of a transaction are exactly `seen` (the field is absent
/// until the first), none by `approver`.
pub(crate) fn review_approvals_unchanged(seen: usize, approver: &str) -> Document {
    let mut filter = doc! { "review_approvals.by": { "$ne": approver } };
    if seen == 0 {
        filter.insert("review_approvals.0", doc! { "$exists": false });
    } else {
        filter.insert("review_approvals", doc! { "$size": seen as i64 });
    }
    filter
}

/// Fields a transition records on the transaction record, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Where a broadcast withdrawal stands on chain.
    Chain(ChainProgress),
    /// A reviewer's decision (staff-only: the user sees the timeline's generic cause).
    Review {
        decision: &'static str,
        by: String,
        reason: String,
    },
}

impl Note {
    fn set(&self) -> Result<Document, StoreError> {
        match self {
            Note::Chain(progress) => progress.set(),
            Note::Review { decision, by, reason } => Ok(doc! { "review": {
                "decision": decision, "by": by, "reason": reason, "at": mongodb::bson::DateTime::now(),
            } }),
        }
    }
}

/// A broadcast withdrawal's progress on chain: the block that mined it, the gas it paid and (once
/// counted) its confirmations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProgress {
    pub block_number: i64,
    pub network_fee: coffer_domain::Amount,
    pub confirmations: Option<i64>,
    /// The hash of the version that was mined (one of the withdrawal's signed versions).
    pub mined_tx_hash: String,
}

impl ChainProgress {
    fn set(&self) -> Result<Document, StoreError> {
        let mut set = doc! {
            "broadcast.block_number": self.block_number,
            "broadcast.network_fee": mongodb::bson::to_bson(&self.network_fee)?,
            "broadcast.mined_tx_hash": &self.mined_tx_hash,
        };
        if let Some(confirmations) = self.confirmations {
            set.insert("broadcast.confirmations", confirmations);
        }
        Ok(set)
    }
}

impl Transition {
    pub fn new(transaction_id: &str, from: TxState, to: TxState, cause: impl Into<String>) -> Self {
        Transition {
            transaction_id: transaction_id.to_string(),
            from,
            to,
            cause: cause.into(),
            ledger: None,
            note: None,
            guard: None,
            companion: None,
        }
    }

    pub fn with_companion(mut self, movement: Option<Movement>) -> Self {
        self.companion = movement;
        self
    }

    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn with_ledger(mut self, ledger: LedgerTransaction) -> Self {
        self.ledger = Some(ledger);
        self
    }

    pub fn with_note(mut self, note: Note) -> Self {
        self.note = Some(note);
        self
    }
}

impl Store {
    /// Applies `transition` atomically and returns the transaction after it.
    pub async fn apply_transition(&self, transition: &Transition) -> Result<TransactionDoc, StoreError> {
        self.apply_transition_audited(transition, Vec::new()).await
    }

    /// [`Store::apply_transition`] with `audits` recorded in its transaction.
    pub(crate) async fn apply_transition_audited(
        &self,
        transition: &Transition,
        audits: Vec<crate::audit::AuditEntry>,
    ) -> Result<TransactionDoc, StoreError> {
        let change = StateChange::step(
            transition.from,
            transition.to,
            chrono::Utc::now(),
            transition.cause.clone(),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut accounts = vec![];
        if let Some(ledger) = &transition.ledger {
            accounts = ledger.account_ids();
        }
        if let Some(companion) = &transition.companion {
            self.ensure_platform_accounts(companion.ledger.asset(), companion.decimals)
                .await?;
            accounts.extend(companion.ledger.account_ids());
        }
        let _guard = self.lock_accounts(&accounts).await?;
        let shared = std::sync::Arc::new((self.clone(), transition.clone(), change, audits));
        self.with_transaction(|session| {
            let shared = shared.clone();
            Box::pin(async move {
                let (store, transition, change, audits) = &*shared;
                let written = write_transition(store, session, transition, change).await?;
                if let Some(companion) = &transition.companion {
                    crate::batch::write_one(&store.db, session, store.audit_keys(), companion.clone().into())
                        .await?;
                }
                store.audit_in(session, audits.clone()).await?;
                Ok(written)
            })
        })
        .await
    }

    pub async fn transaction_by_id(&self, id: &str) -> Result<Option<TransactionDoc>, StoreError> {
        Ok(self
            .collection::<TransactionDoc>(TRANSACTIONS)
            .find_one(doc! { "_id": id })
            .await?)
    }

    /// Transactions in `state`, oldest first (workers and review queues), at most `limit`.
    pub async fn transactions_in_state(
        &self,
        state: TxState,
        limit: u32,
    ) -> Result<Vec<TransactionDoc>, StoreError> {
        let cursor = self
            .collection::<TransactionDoc>(TRANSACTIONS)
            .find(doc! { "state": state.as_str() })
            .sort(doc! { "_id": 1 })
            .limit(i64::from(limit.clamp(1, 1000)))
            .await?;
        Ok(cursor.try_collect().await?)
    }
}

async fn write_transition(
    store: &Store,
    session: &mut ClientSession,
    transition: &Transition,
    change: &StateChange,
) -> Result<TransactionDoc, StoreError> {
    let now = DateTime::now();
    let mut set = match &transition.note {
        Some(note) => note.set()?,
        None => Document::new(),
    };
    set.insert("state", transition.to.as_str());
    set.insert("updated_at", now);
    let entry = to_bson(&TimelineEntry::from(change))?;
    let transactions = store.collection::<TransactionDoc>(TRANSACTIONS);
    let mut filter = doc! { "_id": &transition.transaction_id, "state": transition.from.as_str() };
    if let Some(guard) = &transition.guard {
        filter.extend(guard.filter());
    }
    let record = transactions
        .find_one_and_update(filter, doc! { "$set": set, "$push": { "timeline": entry } })
        .return_document(mongodb::options::ReturnDocument::After)
        .session(&mut *session)
        .await?;
    let Some(record) = record else {
        let exists = transactions
            .find_one(doc! { "_id": &transition.transaction_id })
            .session(&mut *session)
            .await?;
        return Err(if exists.is_some() {
            StoreError::StateConflict
        } else {
            StoreError::NotFound
        });
    };
    if transition.to == TxState::Failed {
        if let Some(key) = &record.velocity_key {
            crate::money::release_velocity(store, session, key, &record.amount).await?;
        }
    }
    let changed = match &transition.ledger {
        Some(ledger) => post_entries(store, session, ledger, &record.id, now).await?,
        None => Vec::new(),
    };
    // Tell every participant wallet, changed or not, that the transaction moved.
    let mut wallets = changed.clone();
    for id in [&record.from_wallet_id, &record.to_wallet_id]
        .into_iter()
        .flatten()
    {
        if !wallets.iter().any(|w| &w.id == id) {
            if let Some(wallet) = store
                .collection::<WalletDoc>(WALLETS)
                .find_one(doc! { "_id": id })
                .session(&mut *session)
                .await?
            {
                wallets.push(wallet);
            }
        }
    }
    let refs: Vec<WalletRef> = wallets.iter().map(WalletDoc::as_ref).collect();
    let settlement = record.broadcast.as_ref().map(|b| Settlement {
        destination: record.destination.clone(),
        chain: Some(b.chain.clone()),
        tx_hash: Some(b.tx_hash.clone()),
    });
    let mut events = state_change_events(
        &record.summary(),
        &refs.iter().collect::<Vec<_>>(),
        transition.ledger.as_ref(),
        settlement.as_ref(),
    );
    for wallet in &changed {
        let balances = crate::batch::account_balances(wallet)?;
        events.extend(balance_event(&wallet.id, &balances, wallet.decimals, &record.id));
    }
    let mut events = crate::money::event_rows(&events);
    insert_events(store, session, &mut events).await?;
    Ok(record)
}
