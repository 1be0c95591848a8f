//! Staff look-ups by a chain reference (the support console's search, O7): which transactions a
//! chain transaction hash belongs to, and whose wallet a deposit address is.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use crate::chain::collections::{CHAIN_DEPOSITS, DEPOSIT_ADDRESSES};
use crate::chain::{ChainDepositDoc, DepositAddressDoc};
use crate::collections::TRANSACTIONS;
use crate::{Store, StoreError};

/// The most transactions one chain hash resolves to (a hash names one chain transaction; a
/// handful of deposits may share it, one per log).
pub const BY_CHAIN_HASH_MAX: i64 = 20;

impl Store {
    /// Creates this module's indexes (called by [`Store::ensure_indexes`]).
    pub(crate) async fn ensure_lookup_indexes(&self) -> Result<(), StoreError> {
        // Sparse on transactions: only withdrawals have a broadcast, so other writes pay nothing.
        let specs = [
            (
                TRANSACTIONS,
                doc! { "broadcast.tx_hash": 1 },
                "by_broadcast_hash",
                true,
            ),
            (
                TRANSACTIONS,
                doc! { "broadcast.replaced.tx_hash": 1 },
                "by_replaced_hash",
                true,
            ),
            (CHAIN_DEPOSITS, doc! { "tx_hash": 1 }, "by_tx_hash", false),
        ];
        for (collection, keys, name, sparse) in specs {
            let options = IndexOptions::builder()
                .name(name.to_string())
                .sparse(sparse)
                .build();
            let model = IndexModel::builder().keys(keys).options(options).build();
            self.db
                .collection::<Document>(collection)
                .create_index(model)
                .await?;
        }
        Ok(())
    }

    /// The ids of the transactions chain transaction `hash` (lower-case `0x…`) belongs to: a
    /// withdrawal that signed it (any version) or the deposits it credited; at most
    /// [`BY_CHAIN_HASH_MAX`].
    pub async fn transactions_by_chain_hash(&self, hash: &str) -> Result<Vec<String>, StoreError> {
        let hash = hash.to_lowercase();
        let filter = doc! { "$or": [
            { "broadcast.tx_hash": &hash },
            { "broadcast.replaced.tx_hash": &hash },
        ] };
        let withdrawals: Vec<Document> = self
            .collection::<Document>(TRANSACTIONS)
            .find(filter)
            .projection(doc! { "_id": 1 })
            .limit(BY_CHAIN_HASH_MAX)
            .await?
            .try_collect()
            .await?;
        let mut ids: Vec<String> = withdrawals
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        let deposits: Vec<ChainDepositDoc> = self
            .collection::<ChainDepositDoc>(CHAIN_DEPOSITS)
            .find(doc! { "tx_hash": &hash })
            .limit(BY_CHAIN_HASH_MAX)
            .await?
            .try_collect()
            .await?;
        ids.extend(deposits.into_iter().filter_map(|d| d.transaction_id));
        ids.truncate(BY_CHAIN_HASH_MAX as usize);
        Ok(ids)
    }

    /// The deposit address `address` (any case), if it is one of ours.
    pub async fn deposit_address_record(
        &self,
        address: &str,
    ) -> Result<Option<DepositAddressDoc>, StoreError> {
        Ok(self
            .collection::<DepositAddressDoc>(DEPOSIT_ADDRESSES)
            .find_one(doc! { "_id": address.to_lowercase() })
            .await?)
    }
}
