//! Reads for the API: always scoped to the owner, newest first, cursor-paginated.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use crate::collections::{LEDGER_ENTRIES, TRANSACTIONS, WALLETS};
use crate::model::{LedgerEntryDoc, TransactionDoc, WalletDoc};
use crate::{Store, StoreError};

/// Most wallets whose owner and asset one process remembers (they never change).
const WALLET_REFS_CACHED_MAX: usize = 100_000;

/// The most items one page may hold.
pub const PAGE_LIMIT_MAX: u32 = 100;

/// One page and the cursor of the next (the last id returned), if there is more.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl Store {
    pub async fn wallets_of_user(&self, user_id: &str) -> Result<Vec<WalletDoc>, StoreError> {
        let cursor = self
            .collection::<WalletDoc>(WALLETS)
            .find(doc! { "user_id": user_id, "kind": "user" })
            .sort(doc! { "_id": 1 })
            .limit(1000)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// A wallet if it exists and belongs to `user_id`; `None` otherwise (the API says 404 for both).
    pub async fn wallet_of_user(
        &self,
        user_id: &str,
        wallet_id: &str,
    ) -> Result<Option<WalletDoc>, StoreError> {
        // By `_id` alone (any planner serves it from the primary index); the owner is checked here.
        let wallet = self.wallet_by_id(wallet_id).await?;
        Ok(wallet
            .filter(|w| w.user_id.as_deref() == Some(user_id) && w.kind == coffer_domain::AccountKind::User))
    }

    /// What never changes about wallets (owner, asset), for plans: from this process's bounded
    /// cache, else one read of the misses. Absent ids are left out (and not cached).
    pub async fn wallet_refs(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, coffer_domain::WalletRef>, StoreError> {
        let mut found = std::collections::HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.wallet_refs.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                match cache.get(*id) {
                    Some(wallet) => {
                        found.insert(id.to_string(), wallet.clone());
                    }
                    None => missing.push(id.to_string()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let wallets: Vec<WalletDoc> = self
            .collection::<WalletDoc>(WALLETS)
            .find(doc! { "_id": { "$in": &missing } })
            .await?
            .try_collect()
            .await?;
        let mut cache = self.wallet_refs.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() + wallets.len() > WALLET_REFS_CACHED_MAX {
            cache.clear(); // bounded; a miss costs one read
        }
        for wallet in wallets {
            cache.insert(wallet.id.clone(), wallet.as_ref());
            found.insert(wallet.id.clone(), wallet.as_ref());
        }
        Ok(found)
    }

    pub async fn wallet_by_id(&self, wallet_id: &str) -> Result<Option<WalletDoc>, StoreError> {
        Ok(self
            .collection::<WalletDoc>(WALLETS)
            .find_one(doc! { "_id": wallet_id })
            .await?)
    }

    pub async fn ledger_page(
        &self,
        account_id: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<LedgerEntryDoc>, StoreError> {
        let filter = paged_filter(doc! { "account_id": account_id }, cursor);
        page(
            self.collection::<LedgerEntryDoc>(LEDGER_ENTRIES),
            filter,
            limit,
            |e| e.id.clone(),
        )
        .await
    }

    pub async fn transactions_page(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<TransactionDoc>, StoreError> {
        let filter = paged_filter(doc! { "participants": user_id }, cursor);
        page(
            self.collection::<TransactionDoc>(TRANSACTIONS),
            filter,
            limit,
            |t| t.id.clone(),
        )
        .await
    }

    /// A transaction the user took part in; `None` otherwise.
    pub async fn transaction_of_user(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<Option<TransactionDoc>, StoreError> {
        Ok(self
            .collection::<TransactionDoc>(TRANSACTIONS)
            .find_one(doc! { "_id": id, "participants": user_id })
            .await?)
    }

    /// The ledger entries of a transaction that touch the user's own wallets.
    pub async fn entries_of_transaction_for_user(
        &self,
        transaction_id: &str,
        user_id: &str,
    ) -> Result<Vec<LedgerEntryDoc>, StoreError> {
        let cursor = self
            .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
            .find(doc! { "transaction_id": transaction_id, "user_id": user_id })
            .sort(doc! { "_id": 1 })
            .limit(100)
            .await?;
        Ok(cursor.try_collect().await?)
    }
}

fn paged_filter(mut filter: Document, cursor: Option<&str>) -> Document {
    if let Some(cursor) = cursor {
        filter.insert("_id", doc! { "$lt": cursor });
    }
    filter
}

async fn page<T>(
    collection: mongodb::Collection<T>,
    filter: Document,
    limit: u32,
    id_of: impl Fn(&T) -> String,
) -> Result<Page<T>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    let limit = limit.clamp(1, PAGE_LIMIT_MAX);
    let cursor = collection
        .find(filter)
        .sort(doc! { "_id": -1 })
        .limit(i64::from(limit) + 1)
        .await?;
    let mut items: Vec<T> = cursor.try_collect().await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(&id_of)
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}
