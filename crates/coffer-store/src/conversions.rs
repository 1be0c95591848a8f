//! Conversion quotes and their execution (L11).
//!
//! A quote is stored, so any replica can execute it, with the amounts and rate it was given at,
//! an expiry a few seconds away and a status. Executing it is ONE database transaction: the quote
//! moves `open → used` (conditionally: its owner, still open, not yet expired, so two executions
//! cannot both win), both legs are written through the same path as every movement
//! ([`crate::batch`]: balances, ledger entries, outbox events, movement audit records), a
//! `conversion.executed` audit record and the Idempotency-Key's response. Either all of it
//! happens or none does. The legs' ledger keys derive from the quote id, so even a quote whose
//! record were lost could not convert twice.

use std::sync::Arc;
use std::time::Duration;

use coffer_domain::conversion::ConversionLegs;
use coffer_domain::{AccountKind, Amount};
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use serde::{Deserialize, Serialize};

use crate::batch::{write_all, Submission};
use crate::codec::Time;
use crate::collections::IDEMPOTENCY_KEYS;
use crate::idempotency::{IdempotencyDoc, StoredResponse};
use crate::model::TransactionDoc;
use crate::{codec, Store, StoreError};

pub const QUOTES: &str = "conversion_quotes";
/// How long a quote's record is kept past its expiry (a TTL index removes it afterwards).
pub const QUOTE_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteStatus {
    Open,
    Used,
}

impl QuoteStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            QuoteStatus::Open => "open",
            QuoteStatus::Used => "used",
        }
    }
}

/// A quote as stored. Amounts in smallest units; `rate` is the exact decimal string of whole
/// target units per whole source unit, after the spread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuoteDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub from_wallet_id: String,
    pub to_wallet_id: String,
    pub from_asset: String,
    pub to_asset: String,
    pub from_decimals: u8,
    pub to_decimals: u8,
    pub from_amount: Amount,
    pub to_amount: Amount,
    pub rate: String,
    pub spread_bps: u32,
    pub status: QuoteStatus,
    #[serde(with = "crate::codec::time")]
    pub created_at: Time,
    #[serde(with = "crate::codec::time")]
    pub expires_at: Time,
    /// When the record may be removed (TTL index): a day past its expiry.
    #[serde(with = "crate::codec::time")]
    pub purge_at: Time,
    #[serde(with = "crate::codec::time_opt", default)]
    pub used_at: Option<Time>,
    /// The debit leg's transaction id, once executed.
    pub debit_transaction_id: Option<String>,
    /// The credit leg's transaction id, once executed.
    pub credit_transaction_id: Option<String>,
}

/// Why a quote did not execute.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// No such quote of this user (or it was purged).
    #[error("no such quote")]
    NotFound,
    #[error("the quote has expired")]
    Expired,
    #[error("the quote was executed already")]
    Used,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Renders a conversion's response from the used quote and its two legs (debit, credit).
pub type RenderConversion =
    dyn Fn(&QuoteDoc, &TransactionDoc, &TransactionDoc) -> StoredResponse + Send + Sync;

/// The Idempotency-Key of an execution and its response, written with the conversion.
pub struct ConversionIdempotency {
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
    /// Renders the response from the used quote and the two legs (debit, credit) as written.
    pub render: Arc<RenderConversion>,
}

/// An execution of a quote.
pub struct Execution {
    pub quote_id: String,
    pub user_id: String,
    pub legs: ConversionLegs,
    pub idempotency: Option<ConversionIdempotency>,
    /// `conversion.executed`, on the quote.
    pub audit: crate::audit::Audit,
}

/// What an execution committed.
#[derive(Debug, Clone)]
pub struct Executed {
    pub quote: QuoteDoc,
    pub debit: TransactionDoc,
    pub credit: TransactionDoc,
}

impl Store {
    pub(crate) async fn ensure_conversion_indexes(&self) -> Result<(), StoreError> {
        let ttl = IndexOptions::builder()
            .name("purge_ttl".to_string())
            .expire_after(Duration::from_secs(0))
            .build();
        self.collection::<Document>(QUOTES)
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "purge_at": 1 })
                    .options(ttl)
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Stores a new quote (status open).
    pub async fn create_quote(&self, quote: &QuoteDoc) -> Result<(), StoreError> {
        self.collection::<QuoteDoc>(QUOTES).insert_one(quote).await?;
        Ok(())
    }

    /// The quote `id` if it is `user_id`'s.
    pub async fn quote_of(&self, user_id: &str, id: &str) -> Result<Option<QuoteDoc>, StoreError> {
        Ok(self
            .collection::<QuoteDoc>(QUOTES)
            .find_one(doc! { "_id": id, "user_id": user_id })
            .await?)
    }

    /// Executes a quote: see the module documentation. The FX accounts of both assets are
    /// created first if missing.
    pub async fn execute_conversion(&self, execution: Execution) -> Result<Executed, ExecuteError> {
        let quote = self
            .quote_of(&execution.user_id, &execution.quote_id)
            .await?
            .ok_or(ExecuteError::NotFound)?;
        classify(&quote, codec::now())?;
        for (asset, decimals) in [
            (&quote.from_asset, quote.from_decimals),
            (&quote.to_asset, quote.to_decimals),
        ] {
            self.ensure_platform_accounts(asset, decimals).await?;
        }
        let mut accounts = execution.legs.debit.ledger.account_ids();
        accounts.extend(execution.legs.credit.ledger.account_ids());
        accounts.sort();
        accounts.dedup();
        debug_assert!(accounts.iter().any(|a| a.ends_with(AccountKind::Fx.as_str())));
        let _guard = self.lock_accounts(&accounts).await?;
        let shared = Arc::new((self.clone(), execution));
        let result = self
            .with_transaction(|session| {
                let shared = shared.clone();
                Box::pin(async move {
                    let (store, execution) = &*shared;
                    let now = codec::now();
                    let used = store
                        .collection::<QuoteDoc>(QUOTES)
                        .find_one_and_update(
                            doc! {
                                "_id": &execution.quote_id, "user_id": &execution.user_id,
                                "status": "open", "expires_at": { "$gt": codec::bson_time(&now) },
                            },
                            doc! { "$set": {
                                "status": "used", "used_at": codec::bson_time(&now),
                                "debit_transaction_id": &execution.legs.debit.transaction_id,
                                "credit_transaction_id": &execution.legs.credit.transaction_id,
                            } },
                        )
                        .return_document(mongodb::options::ReturnDocument::After)
                        .session(&mut *session)
                        .await?
                        .ok_or(StoreError::StateConflict)?;
                    let submissions: Vec<Submission> = vec![
                        execution.legs.debit.clone().into(),
                        execution.legs.credit.clone().into(),
                    ];
                    let mut legs = write_all(&store.db, session, store.audit_keys(), submissions).await?;
                    let credit = legs.pop().expect("two legs");
                    let debit = legs.pop().expect("two legs");
                    let mut entry = execution.audit.on(&execution.quote_id);
                    entry.details["debit_transaction_id"] = serde_json::json!(debit.id);
                    entry.details["credit_transaction_id"] = serde_json::json!(credit.id);
                    store.audit_in(session, vec![entry]).await?;
                    if let Some(write) = &execution.idempotency {
                        let response = (write.render)(&used, &debit, &credit);
                        let record = IdempotencyDoc::completed_parts(
                            &write.scope,
                            &write.key,
                            &write.fingerprint,
                            response,
                            now,
                        );
                        store
                            .collection::<IdempotencyDoc>(IDEMPOTENCY_KEYS)
                            .insert_one(&record)
                            .session(&mut *session)
                            .await?;
                    }
                    Ok(Executed {
                        quote: used,
                        debit,
                        credit,
                    })
                })
            })
            .await;
        match result {
            Ok(executed) => Ok(executed),
            // The quote changed under us (used by a concurrent execution, or expired meanwhile).
            Err(StoreError::StateConflict) => {
                let quote = self
                    .quote_of(&shared.1.user_id, &shared.1.quote_id)
                    .await?
                    .ok_or(ExecuteError::NotFound)?;
                classify(&quote, codec::now())?;
                Err(ExecuteError::Used)
            }
            // A leg's ledger key exists: the quote converted already.
            Err(StoreError::AlreadyExists) => Err(ExecuteError::Used),
            Err(StoreError::Database(e)) if crate::is_duplicate_key(&e.0) => {
                Err(ExecuteError::Store(StoreError::IdempotencyKeyTaken))
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// Whether a quote can still execute at `now`.
fn classify(quote: &QuoteDoc, now: Time) -> Result<(), ExecuteError> {
    match quote.status {
        QuoteStatus::Used => Err(ExecuteError::Used),
        QuoteStatus::Open if quote.expires_at <= now => Err(ExecuteError::Expired),
        QuoteStatus::Open => Ok(()),
    }
}
