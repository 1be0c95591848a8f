//! What the reserves check needs from the ledger's side of the chain (issue 17 item 1): the
//! addresses the platform holds funds at, and what is on chain but not yet in custody (deposits
//! still confirming) or in custody but no longer on chain (withdrawals mined, not yet settled), at
//! a block.

use coffer_domain::{Amount, TxKind, TxState};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use crate::chain::collections::{CHAIN_DEPOSITS, DEPOSIT_ADDRESSES};
use crate::chain::{ChainDepositDoc, DepositAddressDoc, DepositStatus};
use crate::collections::{CHAIN_NONCES, TRANSACTIONS};
use crate::model::{SignedKind, TransactionDoc};
use crate::{Store, StoreError};

/// The most deposit addresses one asset's reserves are read from, per page.
pub const ADDRESS_PAGE_MAX: u32 = 1000;
/// The most in-flight items (confirming deposits, unsettled withdrawals) one reading adjusts for.
const IN_FLIGHT_MAX: i64 = 10_000;

fn add(total: Amount, more: Amount) -> Result<Amount, StoreError> {
    total
        .checked_add(more)
        .ok_or_else(|| StoreError::Corrupt("an in-flight sum overflows".into()))
}

impl Store {
    /// Deposit addresses (with their index) of `asset` (of every asset when `None`) on `chain`
    /// after `after` (by address), at most `limit`: the reserves reading and the sweeper page
    /// through them.
    pub async fn deposit_address_docs_page(
        &self,
        chain: &str,
        asset: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DepositAddressDoc>, StoreError> {
        let mut filter = doc! { "chain": chain };
        if let Some(asset) = asset {
            filter.insert("asset", asset);
        }
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        Ok(self
            .collection::<DepositAddressDoc>(DEPOSIT_ADDRESSES)
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::from(limit.clamp(1, ADDRESS_PAGE_MAX)))
            .await?
            .try_collect()
            .await?)
    }

    /// Every hot wallet that ever signed on `chain` (the nonce records the broadcaster keeps).
    pub async fn signing_wallets(&self, chain: &str) -> Result<Vec<String>, StoreError> {
        let records: Vec<Document> = self
            .collection::<Document>(CHAIN_NONCES)
            .find(doc! {})
            .limit(1000)
            .await?
            .try_collect()
            .await?;
        let prefix = format!("{chain}:");
        Ok(records
            .iter()
            .filter_map(|r| r.get_str("_id").ok())
            .filter_map(|id| id.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }

    /// Every hot wallet sweeps on `chain` went to (it holds what they moved even before it
    /// signs anything), at most 1000.
    pub async fn sweep_targets(&self, chain: &str) -> Result<Vec<String>, StoreError> {
        let pipeline = vec![
            doc! { "$match": { "chain": chain } },
            doc! { "$group": { "_id": "$to" } },
            doc! { "$limit": 1000 },
        ];
        let groups: Vec<Document> = self
            .collection::<Document>(crate::sweeps::SWEEPS)
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        Ok(groups
            .iter()
            .filter_map(|g| g.get_str("_id").ok().map(str::to_string))
            .collect())
    }

    /// Deposits of `asset` on `chain` mined at or before `block` and still confirming: on chain,
    /// but in the ledger only as pending against suspense, not yet in custody.
    pub async fn confirming_deposits_up_to(
        &self,
        chain: &str,
        asset: &str,
        block: u64,
    ) -> Result<Amount, StoreError> {
        let deposits: Vec<ChainDepositDoc> = self
            .collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .find(doc! {
                "chain": chain,
                "status": mongodb::bson::to_bson(&DepositStatus::Confirming)?,
                "block_number": { "$lte": block as i64 },
            })
            .limit(IN_FLIGHT_MAX)
            .await?
            .try_collect()
            .await?;
        deposits
            .iter()
            .filter(|d| d.asset == asset)
            .try_fold(Amount::ZERO, |total, d| add(total, d.amount))
    }

    /// What unsettled withdrawals mined at or before `block` took off chain that custody of
    /// `asset` still holds: the amount of a mined payment of `asset`, and, when `gas_in_asset`
    /// (the asset is the chain's coin), the gas of any mined version of any withdrawal on
    /// `chain` — a token withdrawal's gas too, booked in the coin when it settles.
    pub async fn unsettled_outflow_up_to(
        &self,
        chain: &str,
        asset: &str,
        block: u64,
        gas_in_asset: bool,
    ) -> Result<Amount, StoreError> {
        let states = [TxState::Broadcasted, TxState::Confirming, TxState::ManualReview].map(|s| s.as_str());
        let mut filter = doc! {
            "kind": TxKind::Withdrawal.as_str(),
            "state": { "$in": states.to_vec() },
            "broadcast.chain": chain,
        };
        if !gas_in_asset {
            filter.insert("asset", asset);
        }
        let unsettled: Vec<TransactionDoc> = self
            .collection::<TransactionDoc>(TRANSACTIONS)
            .find(filter)
            .limit(IN_FLIGHT_MAX)
            .await?
            .try_collect()
            .await?;
        let mut total = Amount::ZERO;
        for tx in &unsettled {
            let Some(broadcast) = &tx.broadcast else { continue };
            let mined_by_then = broadcast
                .block_number
                .is_some_and(|b| b >= 0 && b as u64 <= block);
            let Some(hash) = broadcast.mined_tx_hash.as_deref().filter(|_| mined_by_then) else {
                continue;
            };
            let paid = broadcast
                .versions()
                .iter()
                .any(|v| v.tx_hash == hash && v.kind == SignedKind::Payment);
            if paid && tx.asset == asset {
                total = add(total, tx.amount)?;
            }
            if gas_in_asset {
                total = add(total, broadcast.network_fee.unwrap_or(Amount::ZERO))?;
            }
        }
        Ok(total)
    }
}
