//! A user's withdrawal address book (S7): money leaves only to a saved address whose cooling-off
//! period has passed. Adding and removing are audited by the API.

use futures::TryStreamExt;
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};

use crate::audit::Audit;
use crate::collections::ADDRESS_BOOK;
use crate::{new_id, Store, StoreError};

/// The most addresses a user may save: a bound, not a policy.
pub const ADDRESSES_PER_USER_MAX: u64 = 50;
/// The unique index of `(user_id, chain, address)`.
pub const ADDRESS_INDEX: &str = "user_chain_address_unique";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedAddressDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub chain: String,
    /// Lower-case `0x…`.
    pub address: String,
    /// The user's name for it ("Ledger Nano"), shown back to the user only.
    pub label: String,
    #[serde(with = "crate::codec::time")]
    pub created_at: crate::codec::Time,
    /// From this instant withdrawals may go to it (saving + cooling-off).
    #[serde(with = "crate::codec::time")]
    pub usable_from: crate::codec::Time,
}

impl Store {
    /// Saves `address` (lower-case) of `chain` for the user, usable once `cooling_off` has passed.
    /// [`StoreError::AlreadyExists`] when it is saved already, [`StoreError::LimitExceeded`]
    /// beyond [`ADDRESSES_PER_USER_MAX`].
    pub async fn save_address(
        &self,
        user_id: &str,
        chain: &str,
        address: &str,
        label: &str,
        cooling_off: std::time::Duration,
        audit: Audit,
    ) -> Result<SavedAddressDoc, StoreError> {
        let book = self.collection::<SavedAddressDoc>(ADDRESS_BOOK);
        if book.count_documents(doc! { "user_id": user_id }).await? >= ADDRESSES_PER_USER_MAX {
            return Err(StoreError::LimitExceeded);
        }
        let now = crate::codec::now();
        let cooling_off_ms = i64::try_from(cooling_off.as_millis()).unwrap_or(i64::MAX / 2);
        let saved = SavedAddressDoc {
            id: new_id(),
            user_id: user_id.to_string(),
            chain: chain.to_string(),
            address: address.to_string(),
            label: label.to_string(),
            created_at: now,
            usable_from: crate::codec::from_millis(now.timestamp_millis().saturating_add(cooling_off_ms)),
        };
        self.audited(move |store, session| {
            let (saved, entry) = (saved.clone(), audit.on(&saved.id));
            Box::pin(async move {
                let book = store.collection::<SavedAddressDoc>(ADDRESS_BOOK);
                match book.insert_one(&saved).session(session).await {
                    Ok(_) => Ok((saved, entry)),
                    Err(e) if crate::is_duplicate_key(&e) => Err(StoreError::AlreadyExists),
                    Err(e) => Err(e.into()),
                }
            })
        })
        .await
    }

    /// The user's saved addresses, newest first.
    pub async fn saved_addresses(&self, user_id: &str) -> Result<Vec<SavedAddressDoc>, StoreError> {
        Ok(self
            .collection::<SavedAddressDoc>(ADDRESS_BOOK)
            .find(doc! { "user_id": user_id })
            .sort(doc! { "_id": -1 })
            .limit(ADDRESSES_PER_USER_MAX as i64)
            .await?
            .try_collect()
            .await?)
    }

    /// The user's saved `address` (lower-case) of `chain`, if saved.
    pub async fn saved_address(
        &self,
        user_id: &str,
        chain: &str,
        address: &str,
    ) -> Result<Option<SavedAddressDoc>, StoreError> {
        Ok(self
            .collection::<SavedAddressDoc>(ADDRESS_BOOK)
            .find_one(doc! { "user_id": user_id, "chain": chain, "address": address })
            .await?)
    }

    /// Removes the user's saved address `id`; saving it again starts a new cooling-off.
    pub async fn remove_address(
        &self,
        user_id: &str,
        id: &str,
        audit: Audit,
    ) -> Result<SavedAddressDoc, StoreError> {
        let (filter, entry) = (doc! { "_id": id, "user_id": user_id }, audit.on(id));
        self.audited(move |store, session| {
            let (filter, entry) = (filter.clone(), entry.clone());
            Box::pin(async move {
                let removed = store
                    .collection::<SavedAddressDoc>(ADDRESS_BOOK)
                    .find_one_and_delete(filter)
                    .session(session)
                    .await?;
                Ok((removed.ok_or(StoreError::NotFound)?, entry))
            })
        })
        .await
    }
}
