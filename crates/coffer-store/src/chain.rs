//! Chain state: deposit addresses, listener cursors, and the deposit lifecycle that both the
//! chain listener and provider webhooks go through (docs/chain.md).
//!
//! A deposit seen on chain becomes a transaction in `Confirming` at once, under the deterministic
//! ledger key `chain:<chain>:<tx hash>:<log index>` (`native` for a coin transfer), with the
//! amount in the wallet's `pending` bucket against the asset's suspense account. When its
//! confirmations reach the asset's threshold, one state transition moves it from pending to
//! available against custody. Both steps are idempotent: the key is unique and a transition is
//! optimistic on the state it expects, so however often an event is seen it is credited once.

use coffer_domain::{Amount, LedgerTransaction, TxState};
use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime};
use mongodb::options::ReturnDocument;
use serde::{Deserialize, Serialize};

use crate::transitions::Transition;
use crate::{Store, StoreError, TransactionDoc};

/// Collections of this module.
pub mod collections {
    pub const DEPOSIT_ADDRESSES: &str = "deposit_addresses";
    pub const COUNTERS: &str = "counters";
    pub const CHAIN_DEPOSITS: &str = "chain_deposits";
    pub const CHAIN_CURSORS: &str = "chain_cursors";
    pub const WEBHOOK_REVIEWS: &str = "webhook_reviews";
}
use collections::*;

/// How many recent block hashes a cursor keeps: the deepest re-org the listener can unwind.
pub const CURSOR_HISTORY_MAX: usize = 128;

/// A user wallet's deposit address on a chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DepositAddressDoc {
    /// The address, lower-case `0x…`.
    #[serde(rename = "_id")]
    pub address: String,
    pub chain: String,
    pub wallet_id: String,
    pub user_id: String,
    pub asset: String,
    /// The BIP32 index under the configured extended public key.
    pub index: i64,
    #[serde(with = "crate::codec::time")]
    pub created_at: crate::codec::Time,
}

/// Where a deposit is in its life (a product-safe view of it, next to the transaction's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepositStatus {
    /// Seen, waiting for confirmations; the amount is pending.
    Confirming,
    /// Confirmed and credited to available, once.
    Credited,
    /// Disappeared in a re-org before it was credited; never credited.
    Failed,
    /// Disappeared after it was credited: reversed (or the reversal awaits review).
    Reversed,
    /// Not to a known deposit address of its asset (or the asset takes no deposits): kept for review.
    Unmatched,
}

/// A deposit as the listener or a provider saw it (the domain's type).
pub use coffer_domain::ChainDeposit as ObservedDeposit;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainDepositDoc {
    /// The ledger key.
    #[serde(rename = "_id")]
    pub key: String,
    pub chain: String,
    pub tx_hash: String,
    pub log_index: Option<i64>,
    pub address: String,
    pub asset: String,
    /// Smallest units, decimal string.
    pub amount: Amount,
    pub block_number: i64,
    pub block_hash: String,
    pub status: DepositStatus,
    pub confirmations: i64,
    pub wallet_id: Option<String>,
    pub user_id: Option<String>,
    pub transaction_id: Option<String>,
    pub source: String,
    pub note: Option<String>,
    #[serde(with = "crate::codec::time")]
    pub created_at: crate::codec::Time,
    #[serde(with = "crate::codec::time")]
    pub updated_at: crate::codec::Time,
}

/// A provider's report the chain does not back: credited nothing, kept for staff to review.
/// The same report (provider and every claimed field) is kept once, however often it is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookReviewDoc {
    /// SHA-256 of the provider and the claim.
    #[serde(rename = "_id")]
    pub id: String,
    pub provider: String,
    /// Why the chain disagrees (`coffer_chain::deposits::DISAGREEMENTS`).
    pub reason: String,
    /// The ledger key the report would have credited under.
    pub ledger_key: String,
    pub chain: String,
    pub tx_hash: String,
    pub log_index: Option<i64>,
    pub address: String,
    pub asset: String,
    /// As claimed, smallest units.
    pub amount: Amount,
    pub block_number: i64,
    pub block_hash: String,
    pub times_seen: i64,
    #[serde(with = "crate::codec::time")]
    pub first_seen_at: crate::codec::Time,
    #[serde(with = "crate::codec::time")]
    pub last_seen_at: crate::codec::Time,
}

/// A block the listener has processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub number: i64,
    pub hash: String,
}

/// The listener's checkpoint: the last processed block and the hashes before it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainCursorDoc {
    #[serde(rename = "_id")]
    pub chain: String,
    pub block_number: i64,
    pub block_hash: String,
    /// Oldest first, at most [`CURSOR_HISTORY_MAX`], ending with the cursor's own block.
    pub recent: Vec<BlockRef>,
    #[serde(with = "crate::codec::time")]
    pub updated_at: crate::codec::Time,
}

/// What recording an observed deposit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// First sight: a `Confirming` transaction with the amount pending.
    Recorded,
    /// Seen before (by the listener or a webhook): nothing changed.
    AlreadyKnown,
    /// Kept as unmatched for review; nothing credited.
    Unmatched,
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).expect("block numbers and indexes fit i64")
}

impl Store {
    /// Creates this module's indexes (called by [`Store::ensure_indexes`]).
    pub async fn ensure_chain_indexes(&self) -> Result<(), StoreError> {
        use mongodb::options::IndexOptions;
        use mongodb::IndexModel;
        let specs = [
            (DEPOSIT_ADDRESSES, doc! { "wallet_id": 1 }, true, "wallet_unique"),
            (
                DEPOSIT_ADDRESSES,
                doc! { "chain": 1, "asset": 1, "_id": 1 },
                false,
                "by_chain_asset",
            ),
            (
                DEPOSIT_ADDRESSES,
                doc! { "chain": 1, "_id": 1 },
                false,
                "by_chain",
            ),
            (
                CHAIN_DEPOSITS,
                doc! { "chain": 1, "status": 1, "block_number": 1 },
                false,
                "by_status",
            ),
            (
                CHAIN_DEPOSITS,
                doc! { "wallet_id": 1, "_id": 1 },
                false,
                "by_wallet",
            ),
            (WEBHOOK_REVIEWS, doc! { "first_seen_at": -1 }, false, "by_time"),
        ];
        for (collection, keys, unique, name) in specs {
            let options = IndexOptions::builder()
                .unique(unique)
                .name(name.to_string())
                .build();
            let model = IndexModel::builder().keys(keys).options(options).build();
            self.db
                .collection::<mongodb::bson::Document>(collection)
                .create_index(model)
                .await?;
        }
        Ok(())
    }

    /// The wallet's deposit address, allocating the next index of `chain` on first use.
    /// `derive` turns an index into an address (it holds only the extended public key).
    pub async fn deposit_address(
        &self,
        wallet: &crate::WalletDoc,
        chain: &str,
        derive: impl Fn(u32) -> Result<String, String>,
    ) -> Result<DepositAddressDoc, StoreError> {
        let addresses = self.collection::<DepositAddressDoc>(DEPOSIT_ADDRESSES);
        if let Some(existing) = addresses.find_one(doc! { "wallet_id": &wallet.id }).await? {
            return Ok(existing);
        }
        let index = self.next_counter(&format!("deposit_index:{chain}")).await?;
        let index_u32 =
            u32::try_from(index).map_err(|_| StoreError::Corrupt("deposit index space exhausted".into()))?;
        let address = derive(index_u32).map_err(StoreError::Corrupt)?;
        let fresh = DepositAddressDoc {
            address: address.to_lowercase(),
            chain: chain.to_string(),
            wallet_id: wallet.id.clone(),
            user_id: wallet.user_id.clone().unwrap_or_default(),
            asset: wallet.asset.clone(),
            index,
            created_at: crate::codec::now(),
        };
        match addresses.insert_one(&fresh).await {
            Ok(_) => Ok(fresh),
            // A concurrent request allocated one for this wallet first; its index wins, ours is skipped.
            Err(e) if crate::is_duplicate_key(&e) => addresses
                .find_one(doc! { "wallet_id": &wallet.id })
                .await?
                .ok_or_else(|| StoreError::Corrupt("deposit address index collision".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Atomically increments and returns counter `name` (starting at 0).
    pub async fn next_counter(&self, name: &str) -> Result<i64, StoreError> {
        let after = self
            .collection::<mongodb::bson::Document>(COUNTERS)
            .find_one_and_update(doc! { "_id": name }, doc! { "$inc": { "value": 1i64 } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| StoreError::Corrupt("counter upsert returned nothing".into()))?;
        Ok(after
            .get_i64("value")
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            - 1)
    }

    /// Known deposit addresses among `addresses` (lower-case), at most 1000 per call.
    pub async fn deposit_addresses_among(
        &self,
        addresses: &[String],
    ) -> Result<Vec<DepositAddressDoc>, StoreError> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let bounded: Vec<&String> = addresses.iter().take(1000).collect();
        let cursor = self
            .collection::<DepositAddressDoc>(DEPOSIT_ADDRESSES)
            .find(doc! { "_id": { "$in": bounded } })
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Records a deposit at first sight; idempotent. `asset` is the asset's live configuration
    /// (`None` when the asset is unknown).
    pub async fn observe_deposit(
        &self,
        deposit: &ObservedDeposit,
        asset: Option<&coffer_domain::AssetConfig>,
    ) -> Result<Observation, StoreError> {
        let addresses = self.collection::<DepositAddressDoc>(DEPOSIT_ADDRESSES);
        let owner = addresses.find_one(doc! { "_id": &deposit.address }).await?;
        let matched = owner.filter(|o| o.asset == deposit.asset && o.chain == deposit.chain);
        let planned = match (&matched, asset) {
            (Some(owner), Some(asset)) => {
                let wallet = coffer_domain::WalletRef {
                    id: owner.wallet_id.clone(),
                    user_id: Some(owner.user_id.clone()),
                    asset: owner.asset.clone(),
                };
                let origin = coffer_domain::Origin {
                    transaction_id: crate::new_id(),
                    now: chrono::Utc::now(),
                    initiated_by: deposit.source.clone(),
                };
                let valid = !deposit.amount.is_zero();
                coffer_domain::plan::plan_chain_deposit(origin, deposit, &wallet, asset)
                    .ok()
                    .filter(|_| valid)
                    .map(|m| (m, asset.decimals))
            }
            _ => None,
        };
        let (Some(owner), Some((movement, decimals))) = (matched, planned) else {
            self.insert_deposit_doc(deposit, DepositStatus::Unmatched, None, None)
                .await?;
            return Ok(Observation::Unmatched);
        };
        self.ensure_platform_accounts(&deposit.asset, decimals).await?;
        let (tx, fresh) = match self.apply_movement(movement).await {
            Ok(tx) => (tx, true),
            Err(StoreError::DuplicateLedgerKey(existing)) => (*existing, false),
            Err(other) => return Err(other),
        };
        let inserted = self
            .insert_deposit_doc(deposit, DepositStatus::Confirming, Some(&owner), Some(&tx))
            .await?;
        Ok(if fresh || inserted {
            Observation::Recorded
        } else {
            Observation::AlreadyKnown
        })
    }

    /// Inserts the deposit's document unless it exists; answers whether it was inserted.
    async fn insert_deposit_doc(
        &self,
        deposit: &ObservedDeposit,
        status: DepositStatus,
        owner: Option<&DepositAddressDoc>,
        tx: Option<&TransactionDoc>,
    ) -> Result<bool, StoreError> {
        let now = crate::codec::now();
        let record = ChainDepositDoc {
            key: deposit.ledger_key(),
            chain: deposit.chain.clone(),
            tx_hash: deposit.tx_hash.clone(),
            log_index: deposit.log_index.map(as_i64),
            address: deposit.address.clone(),
            asset: deposit.asset.clone(),
            amount: deposit.amount,
            block_number: as_i64(deposit.block_number),
            block_hash: deposit.block_hash.clone(),
            status,
            confirmations: 0,
            wallet_id: owner.map(|o| o.wallet_id.clone()),
            user_id: owner.map(|o| o.user_id.clone()),
            transaction_id: tx.map(|t| t.id.clone()),
            source: deposit.source.clone(),
            note: None,
            created_at: now,
            updated_at: now,
        };
        let result = self
            .collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .update_one(
                doc! { "_id": &record.key },
                doc! { "$setOnInsert": mongodb::bson::to_document(&record)? },
            )
            .upsert(true)
            .await;
        match result {
            Ok(outcome) => Ok(outcome.upserted_id.is_some()),
            Err(e) if crate::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps a report the chain disagrees with for review (nothing is credited); a repeat of the
    /// same report counts once more on its record. Answers whether the record is new.
    pub async fn keep_webhook_for_review(
        &self,
        provider: &str,
        claim: &ObservedDeposit,
        reason: &str,
    ) -> Result<bool, StoreError> {
        use sha2::{Digest, Sha256};
        let fingerprint = format!(
            "{provider}|{}|{}|{}|{}|{}|{}|{}",
            claim.ledger_key(),
            claim.address,
            claim.asset,
            claim.amount.atomic(),
            claim.block_number,
            claim.block_hash,
            reason
        );
        let now = crate::codec::now();
        let record = WebhookReviewDoc {
            id: hex::encode(Sha256::digest(fingerprint.as_bytes())),
            provider: provider.to_string(),
            reason: reason.to_string(),
            ledger_key: claim.ledger_key(),
            chain: claim.chain.clone(),
            tx_hash: claim.tx_hash.clone(),
            log_index: claim.log_index.map(as_i64),
            address: claim.address.clone(),
            asset: claim.asset.clone(),
            amount: claim.amount,
            block_number: as_i64(claim.block_number),
            block_hash: claim.block_hash.clone(),
            times_seen: 1,
            first_seen_at: now,
            last_seen_at: now,
        };
        let mut insert = mongodb::bson::to_document(&record)?;
        insert.remove("times_seen");
        insert.remove("last_seen_at");
        let result = self
            .collection::<WebhookReviewDoc>(WEBHOOK_REVIEWS)
            .update_one(
                doc! { "_id": &record.id },
                doc! {
                    "$setOnInsert": insert,
                    "$inc": { "times_seen": 1i64 },
                    "$set": { "last_seen_at": DateTime::now() },
                },
            )
            .upsert(true)
            .await;
        match result {
            Ok(outcome) => Ok(outcome.upserted_id.is_some()),
            // Two replicas kept the same report at once: the other insert won, ours counts nothing.
            Err(e) if crate::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Webhook reports kept for review, newest first, at most `limit` (1..=100).
    pub async fn webhook_reviews(&self, limit: u32) -> Result<Vec<WebhookReviewDoc>, StoreError> {
        let cursor = self
            .collection::<WebhookReviewDoc>(WEBHOOK_REVIEWS)
            .find(doc! {})
            .sort(doc! { "first_seen_at": -1 })
            .limit(i64::from(limit.clamp(1, 100)))
            .await?;
        Ok(cursor.try_collect().await?)
    }

    pub async fn chain_deposit(&self, key: &str) -> Result<Option<ChainDepositDoc>, StoreError> {
        Ok(self
            .collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .find_one(doc! { "_id": key })
            .await?)
    }

    /// Deposits of `chain` in `status`, lowest block first, at most `limit` (1..=1000).
    pub async fn chain_deposits_in(
        &self,
        chain: &str,
        status: DepositStatus,
        min_block: i64,
        limit: u32,
    ) -> Result<Vec<ChainDepositDoc>, StoreError> {
        let cursor = self
            .collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .find(
                doc! { "chain": chain, "status": status_str(status), "block_number": { "$gte": min_block } },
            )
            .sort(doc! { "block_number": 1, "_id": 1 })
            .limit(i64::from(limit.clamp(1, 1000)))
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// A wallet's chain deposits, newest first, at most `limit` (1..=100).
    pub async fn chain_deposits_of_wallet(
        &self,
        wallet_id: &str,
        limit: u32,
    ) -> Result<Vec<ChainDepositDoc>, StoreError> {
        let cursor = self
            .collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .find(doc! { "wallet_id": wallet_id })
            .sort(doc! { "created_at": -1 })
            .limit(i64::from(limit.clamp(1, 100)))
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Records the confirmation count the listener computed.
    pub async fn set_deposit_confirmations(&self, key: &str, confirmations: u64) -> Result<(), StoreError> {
        self.collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .update_one(
                doc! { "_id": key },
                doc! { "$set": { "confirmations": as_i64(confirmations), "updated_at": DateTime::now() } },
            )
            .await?;
        Ok(())
    }

    /// Moves the deposit to a new block after a re-org re-included it.
    pub async fn move_deposit_block(&self, key: &str, block: &BlockRef) -> Result<(), StoreError> {
        self.collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .update_one(
                doc! { "_id": key },
                doc! { "$set": { "block_number": block.number, "block_hash": &block.hash, "updated_at": DateTime::now() } },
            )
            .await?;
        Ok(())
    }

    async fn set_deposit_status(
        &self,
        key: &str,
        status: DepositStatus,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        self.collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .update_one(
                doc! { "_id": key },
                doc! { "$set": { "status": status_str(status), "note": note, "updated_at": DateTime::now() } },
            )
            .await?;
        Ok(())
    }

    /// Credits a confirming deposit: pending → available, suspense → custody. Exactly once: the
    /// transition expects `Confirming`, so a repeat finds it `Confirmed` and only fixes the status.
    pub async fn credit_deposit(&self, deposit: &ChainDepositDoc) -> Result<(), StoreError> {
        let (tx_id, wallet_id) = linked(deposit)?;
        let ledger = LedgerTransaction::chain_deposit_credit(&deposit.asset, wallet_id, deposit.amount)
            .map_err(ledger_error)?;
        let cause = format!("{} confirmations reached", deposit.confirmations);
        let transition =
            Transition::new(tx_id, TxState::Confirming, TxState::Confirmed, cause).with_ledger(ledger);
        match self.apply_transition(&transition).await {
            Ok(_) => {}
            Err(StoreError::StateConflict) => self.expect_state(tx_id, TxState::Confirmed).await?,
            Err(other) => return Err(other),
        }
        self.set_deposit_status(&deposit.key, DepositStatus::Credited, None)
            .await
    }

    /// Handles a deposit that is no longer on the canonical chain: never credited → `Failed`
    /// with the pending amount released; credited → a compensating reversal and `ManualReview`.
    pub async fn orphan_deposit(&self, deposit: &ChainDepositDoc) -> Result<DepositStatus, StoreError> {
        let (tx_id, wallet_id) = linked(deposit)?;
        let tx = self.transaction_by_id(tx_id).await?.ok_or(StoreError::NotFound)?;
        match tx.state {
            TxState::Confirming => {
                let seen = LedgerTransaction::chain_deposit_seen(&deposit.asset, wallet_id, deposit.amount)
                    .map_err(ledger_error)?;
                let release = LedgerTransaction::reversal_of(&seen);
                let cause = "removed from the chain by a re-org before it was credited";
                let t =
                    Transition::new(tx_id, TxState::Confirming, TxState::Failed, cause).with_ledger(release);
                self.apply_transition(&t).await?;
                self.set_deposit_status(&deposit.key, DepositStatus::Failed, Some(cause))
                    .await?;
                Ok(DepositStatus::Failed)
            }
            TxState::Confirmed => self.reverse_credited(deposit, tx_id, wallet_id).await,
            _ => Ok(deposit.status),
        }
    }

    async fn reverse_credited(
        &self,
        deposit: &ChainDepositDoc,
        tx_id: &str,
        wallet_id: &str,
    ) -> Result<DepositStatus, StoreError> {
        let credit = LedgerTransaction::deposit(&deposit.asset, wallet_id, deposit.amount)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let cause = "removed from the chain by a re-org after it was credited: reversed";
        let t = Transition::new(tx_id, TxState::Confirmed, TxState::ManualReview, cause)
            .with_ledger(LedgerTransaction::reversal_of(&credit));
        let note = match self.apply_transition(&t).await {
            Ok(_) => cause,
            Err(StoreError::InsufficientFunds) => {
                // The user already spent it: the reversal cannot go through; review decides.
                let cause = "removed from the chain by a re-org after it was credited; funds already spent, reversal needs review";
                self.apply_transition(&Transition::new(
                    tx_id,
                    TxState::Confirmed,
                    TxState::ManualReview,
                    cause,
                ))
                .await?;
                cause
            }
            Err(other) => return Err(other),
        };
        self.set_deposit_status(&deposit.key, DepositStatus::Reversed, Some(note))
            .await?;
        Ok(DepositStatus::Reversed)
    }

    async fn expect_state(&self, tx_id: &str, state: TxState) -> Result<(), StoreError> {
        let tx = self.transaction_by_id(tx_id).await?.ok_or(StoreError::NotFound)?;
        if tx.state == state {
            Ok(())
        } else {
            Err(StoreError::StateConflict)
        }
    }

    pub async fn chain_cursor(&self, chain: &str) -> Result<Option<ChainCursorDoc>, StoreError> {
        Ok(self
            .collection::<ChainCursorDoc>(CHAIN_CURSORS)
            .find_one(doc! { "_id": chain })
            .await?)
    }

    /// Saves the checkpoint (the whole document: advancing and rolling back alike).
    pub async fn save_chain_cursor(&self, chain: &str, recent: &[BlockRef]) -> Result<(), StoreError> {
        let last = recent
            .last()
            .ok_or_else(|| StoreError::Corrupt("a cursor needs a block".into()))?;
        let start = recent.len().saturating_sub(CURSOR_HISTORY_MAX);
        let cursor = ChainCursorDoc {
            chain: chain.to_string(),
            block_number: last.number,
            block_hash: last.hash.clone(),
            recent: recent[start..].to_vec(),
            updated_at: crate::codec::now(),
        };
        self.collection::<ChainCursorDoc>(CHAIN_CURSORS)
            .replace_one(doc! { "_id": chain }, &cursor)
            .upsert(true)
            .await?;
        Ok(())
    }
}

fn status_str(status: DepositStatus) -> &'static str {
    match status {
        DepositStatus::Confirming => "confirming",
        DepositStatus::Credited => "credited",
        DepositStatus::Failed => "failed",
        DepositStatus::Reversed => "reversed",
        DepositStatus::Unmatched => "unmatched",
    }
}

fn linked(deposit: &ChainDepositDoc) -> Result<(&str, &str), StoreError> {
    match (&deposit.transaction_id, &deposit.wallet_id) {
        (Some(tx), Some(wallet)) => Ok((tx, wallet)),
        _ => Err(StoreError::Corrupt(format!(
            "deposit {} has no transaction",
            deposit.key
        ))),
    }
}

fn ledger_error(e: coffer_domain::LedgerError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}
