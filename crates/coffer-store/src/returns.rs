//! Refunds and disputes of earlier transactions (L10): what the plans need of the original, the
//! returns listed under it, and a dispute's resolution. The money rules are the domain's
//! (`coffer_domain::returns`); refunds and new disputes are movements applied by group commit.

use coffer_domain::returns::{Original, Resolution};
use coffer_domain::TxState;
use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use crate::collections::TRANSACTIONS;
use crate::model::TransactionDoc;
use crate::transitions::Transition;
use crate::{Store, StoreError};

/// The most returns listed under one transaction (each is at least one smallest unit; more are
/// possible but not listed).
pub const RETURNS_LISTED_MAX: i64 = 100;

impl Store {
    pub(crate) async fn ensure_return_indexes(&self) -> Result<(), StoreError> {
        let options = IndexOptions::builder().name("by_original".to_string()).build();
        let model = IndexModel::builder()
            .keys(doc! { "original_transaction_id": 1, "_id": 1 })
            .options(options)
            .build();
        self.collection::<TransactionDoc>(TRANSACTIONS)
            .create_index(model)
            .await?;
        Ok(())
    }

    /// Transaction `id` as a refund or dispute plan needs it, with its wallets.
    pub async fn original_of(&self, id: &str) -> Result<Option<(TransactionDoc, Original)>, StoreError> {
        let Some(tx) = self.transaction_by_id(id).await? else {
            return Ok(None);
        };
        let ids: Vec<&str> = [&tx.from_wallet_id, &tx.to_wallet_id]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let wallets = self.wallet_refs(&ids).await?;
        let wallet = |id: &Option<String>| id.as_ref().and_then(|id| wallets.get(id)).cloned();
        let original = Original {
            transaction_id: tx.id.clone(),
            kind: tx.kind,
            state: tx.state,
            asset: tx.asset.clone(),
            amount: tx.amount,
            rail: Original::rail_of(&tx.ledger_key),
            from: wallet(&tx.from_wallet_id),
            to: wallet(&tx.to_wallet_id),
        };
        Ok(Some((tx, original)))
    }

    /// The refunds and disputes of transaction `id`, oldest first (at most [`RETURNS_LISTED_MAX`]).
    pub async fn returns_of(&self, id: &str) -> Result<Vec<TransactionDoc>, StoreError> {
        let cursor = self
            .collection::<TransactionDoc>(TRANSACTIONS)
            .find(doc! { "original_transaction_id": id })
            .sort(doc! { "_id": 1 })
            .limit(RETURNS_LISTED_MAX)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Resolves the open dispute `dispute` as `resolution` says, audited in the same transaction.
    /// At most once: a dispute no longer `Disputed` answers [`StoreError::StateConflict`]. A
    /// released dispute (Failed) gives its amount back to what may still be returned of the original.
    pub async fn resolve_dispute(
        &self,
        dispute: &TransactionDoc,
        resolution: Resolution,
        audit: crate::audit::Audit,
    ) -> Result<TransactionDoc, StoreError> {
        let transition = Transition::new(&dispute.id, TxState::Disputed, resolution.to, resolution.cause)
            .with_ledger(resolution.ledger);
        self.apply_transition_audited(&transition, vec![audit.on(&dispute.id)])
            .await
    }
}
