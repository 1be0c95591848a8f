//! The broadcaster's reads and writes of withdrawals (docs/chain.md, "Withdrawals"): the work
//! queues by state, the signed transaction stored together with the hot wallet's nonce before any
//! broadcast, and the chain progress of a sent withdrawal.

use coffer_domain::{Amount, TxKind, TxState};
use futures::TryStreamExt;
use mongodb::bson::{doc, to_bson, DateTime, Document};

use crate::collections::{CHAIN_NONCES, TRANSACTIONS};
use crate::model::{BroadcastDoc, CancelRequest, SignedVersion, TransactionDoc};
use crate::{Store, StoreError};

/// The states of a withdrawal that is not final yet.
pub const NON_FINAL: [TxState; 6] = [
    TxState::Created,
    TxState::PendingBroadcast,
    TxState::Broadcasted,
    TxState::Confirming,
    TxState::Retryable,
    TxState::ManualReview,
];

/// Counts of non-final withdrawals, for the gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WithdrawalStats {
    /// (state, count) for every state of [`NON_FINAL`], zero included.
    pub by_state: Vec<(TxState, u64)>,
    /// When the oldest non-final withdrawal was requested.
    pub oldest_non_final: Option<crate::codec::Time>,
    /// (state, the earliest `updated_at` of the withdrawals in it) for every state of
    /// [`NON_FINAL`]: how long the longest-waiting one has been there without progress (its last
    /// transition, or its signing). `None` when the state is empty.
    pub least_recently_updated: Vec<(TxState, Option<crate::codec::Time>)>,
}

/// The `_id` of hot wallet `from`'s nonce record on `chain`.
pub(crate) fn nonce_key(chain: &str, from: &str) -> String {
    format!("{chain}:{from}")
}

/// Moves hot wallet nonce record `key` from `recorded` (what the caller read before signing) to
/// `next`, inside the caller's database transaction: [`StoreError::StateConflict`] if another
/// writer moved it meanwhile. Every user of a hot wallet's nonces (the broadcaster, the
/// sweeper's gas funding) takes them through this one record.
pub(crate) async fn advance_nonce(
    store: &Store,
    session: &mut mongodb::ClientSession,
    key: &str,
    recorded: Option<i64>,
    next: i64,
) -> Result<(), StoreError> {
    let nonces = store.collection::<Document>(CHAIN_NONCES);
    match recorded {
        Some(previous) => {
            let moved = nonces
                .update_one(
                    doc! { "_id": key, "next": previous },
                    doc! { "$set": { "next": next } },
                )
                .session(&mut *session)
                .await?;
            if moved.matched_count != 1 {
                return Err(StoreError::StateConflict);
            }
        }
        None => match nonces
            .insert_one(doc! { "_id": key, "next": next })
            .session(&mut *session)
            .await
        {
            Ok(_) => {}
            Err(e) if crate::is_duplicate_key(&e) => return Err(StoreError::StateConflict),
            Err(e) => return Err(e.into()),
        },
    }
    Ok(())
}

impl Store {
    /// Withdrawals of `assets` in `state`, oldest first, at most `limit`.
    pub async fn withdrawals_in(
        &self,
        assets: &[String],
        state: TxState,
        limit: u32,
    ) -> Result<Vec<TransactionDoc>, StoreError> {
        let cursor = self
            .collection::<TransactionDoc>(TRANSACTIONS)
            .find(doc! {
                "kind": TxKind::Withdrawal.as_str(),
                "state": state.as_str(),
                "asset": { "$in": assets },
            })
            .sort(doc! { "_id": 1 })
            .limit(i64::from(limit.clamp(1, 1000)))
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// The next nonce this store has recorded for hot wallet `from` on `chain`.
    pub async fn recorded_nonce(&self, chain: &str, from: &str) -> Result<Option<i64>, StoreError> {
        let found = self
            .collection::<Document>(CHAIN_NONCES)
            .find_one(doc! { "_id": nonce_key(chain, from) })
            .await?;
        Ok(found.and_then(|d| d.get_i64("next").ok()))
    }

    /// Stores `signed` on withdrawal `tx_id` and advances the hot wallet's nonce past it, in one
    /// database transaction. `recorded` is the nonce record read before signing: if another
    /// writer moved it, or the withdrawal already has a signed transaction or left
    /// PendingBroadcast, nothing is written ([`StoreError::StateConflict`]) and the signature is
    /// discarded unbroadcast.
    pub async fn record_signed(
        &self,
        tx_id: &str,
        recorded: Option<i64>,
        signed: &BroadcastDoc,
    ) -> Result<(), StoreError> {
        let shared = std::sync::Arc::new((self.clone(), tx_id.to_string(), recorded, signed.clone()));
        self.with_transaction(|session| {
            let shared = shared.clone();
            Box::pin(async move {
                let (store, tx_id, recorded, signed) = &*shared;
                let key = nonce_key(&signed.chain, &signed.from);
                advance_nonce(store, session, &key, *recorded, signed.nonce + 1).await?;
                let stored = store
                    .collection::<Document>(TRANSACTIONS)
                    .update_one(
                        doc! {
                            "_id": tx_id.as_str(),
                            "state": TxState::PendingBroadcast.as_str(),
                            "broadcast": null,
                        },
                        doc! { "$set": { "broadcast": to_bson(signed)?, "updated_at": DateTime::now() } },
                    )
                    .session(&mut *session)
                    .await?;
                if stored.matched_count != 1 {
                    return Err(StoreError::StateConflict);
                }
                Ok(())
            })
        })
        .await
    }

    /// Makes `next` the latest signed version of withdrawal `tx_id` (same nonce), keeping the one
    /// whose hash is `current` among the earlier versions. Stored before `next` is sent; if the
    /// withdrawal left Broadcasted or another writer replaced it first, nothing is written
    /// ([`StoreError::StateConflict`]) and `next` is discarded unsent.
    pub async fn record_replacement(
        &self,
        tx_id: &str,
        current: &BroadcastDoc,
        next: SignedVersion,
    ) -> Result<BroadcastDoc, StoreError> {
        let record = current.replaced_by(next);
        let stored = self
            .collection::<Document>(TRANSACTIONS)
            .update_one(
                doc! {
                    "_id": tx_id,
                    "state": TxState::Broadcasted.as_str(),
                    "broadcast.tx_hash": &current.tx_hash,
                },
                doc! { "$set": { "broadcast": to_bson(&record)?, "updated_at": DateTime::now() } },
            )
            .await?;
        if stored.matched_count != 1 {
            return Err(StoreError::StateConflict);
        }
        Ok(record)
    }

    /// A staff cancel of withdrawal `tx_id`, audited in the same transaction. Unsigned: it fails
    /// and its hold is released now (guarded: it cannot race the signature). Signed and not mined
    /// (PendingBroadcast or Broadcasted): the request is recorded and the broadcaster signs the
    /// cancel on its next poll. Anything else, or asking twice, is [`StoreError::StateConflict`].
    pub async fn cancel_withdrawal(
        &self,
        tx_id: &str,
        by: &str,
        reason: &str,
        audit: crate::audit::Audit,
    ) -> Result<TransactionDoc, StoreError> {
        let tx = self.transaction_by_id(tx_id).await?.ok_or(StoreError::NotFound)?;
        if tx.kind != TxKind::Withdrawal {
            return Err(StoreError::NotFound);
        }
        if tx.state == TxState::PendingBroadcast && tx.broadcast.is_none() {
            let cause = "cancelled by staff before signing; funds released";
            let release = release_unsigned(&tx, TxState::PendingBroadcast, cause)?;
            let audit = audit.with_details(serde_json::json!({ "signed": false }));
            return self
                .apply_transition_audited(&release, vec![audit.on(tx_id)])
                .await;
        }
        let request = CancelRequest {
            by: by.to_string(),
            reason: reason.to_string(),
            at: crate::codec::now(),
        };
        let shared = std::sync::Arc::new((tx_id.to_string(), to_bson(&request)?, audit));
        self.audited(move |store, session| {
            let shared = shared.clone();
            Box::pin(async move {
                let (tx_id, request, audit) = &*shared;
                let states = [TxState::PendingBroadcast.as_str(), TxState::Broadcasted.as_str()];
                let updated = store
                    .collection::<TransactionDoc>(TRANSACTIONS)
                    .find_one_and_update(
                        doc! {
                            "_id": tx_id.as_str(),
                            "kind": TxKind::Withdrawal.as_str(),
                            "state": { "$in": states.to_vec() },
                            "broadcast": { "$ne": null },
                            "broadcast.cancel": null,
                        },
                        doc! { "$set": { "broadcast.cancel": request.clone(), "updated_at": DateTime::now() } },
                    )
                    .return_document(mongodb::options::ReturnDocument::After)
                    .session(&mut *session)
                    .await?
                    .ok_or(StoreError::StateConflict)?;
                let entry = audit.clone().with_details(serde_json::json!({ "signed": true })).on(tx_id);
                Ok((updated, entry))
            })
        })
        .await
    }

    /// Records where a sent withdrawal stands on chain (no state change);
    /// `mined` is the hash of the version seen mined (`None` once a re-org removed it).
    pub async fn set_withdrawal_progress(
        &self,
        tx_id: &str,
        mined: Option<(&str, i64)>,
        confirmations: i64,
    ) -> Result<(), StoreError> {
        self.collection::<Document>(TRANSACTIONS)
            .update_one(
                doc! { "_id": tx_id, "broadcast": { "$ne": null } },
                doc! { "$set": {
                    "broadcast.block_number": mined.map(|(_, block)| block),
                    "broadcast.mined_tx_hash": mined.map(|(hash, _)| hash),
                    "broadcast.confirmations": confirmations,
                } },
            )
            .await?;
        Ok(())
    }

    /// Non-final withdrawals by state, the oldest one's request time and, per state, the earliest
    /// last update.
    pub async fn withdrawal_stats(&self) -> Result<WithdrawalStats, StoreError> {
        let states: Vec<&str> = NON_FINAL.iter().map(|s| s.as_str()).collect();
        let pipeline = vec![
            doc! { "$match": { "kind": TxKind::Withdrawal.as_str(), "state": { "$in": states } } },
            doc! { "$group": { "_id": "$state", "count": { "$sum": 1 }, "oldest": { "$min": "$created_at" },
            "stalest": { "$min": "$updated_at" } } },
        ];
        let groups: Vec<Document> = self
            .collection::<Document>(TRANSACTIONS)
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        let mut stats = WithdrawalStats::default();
        for state in NON_FINAL {
            let group = groups.iter().find(|g| g.get_str("_id") == Ok(state.as_str()));
            let count = group
                .and_then(|g| g.get("count"))
                .and_then(|c| c.as_i64().or(c.as_i32().map(i64::from)))
                .unwrap_or(0);
            stats.by_state.push((state, count.max(0) as u64));
            let time = |t: &DateTime| crate::codec::from_millis(t.timestamp_millis());
            let stalest = group.and_then(|g| g.get_datetime("stalest").ok()).map(time);
            stats.least_recently_updated.push((state, stalest));
            if let Some(oldest) = group.and_then(|g| g.get_datetime("oldest").ok()).map(time) {
                if stats.oldest_non_final.is_none_or(|o| oldest < o) {
                    stats.oldest_non_final = Some(oldest);
                }
            }
        }
        Ok(stats)
    }
}

/// The network fee of a mined transaction: gas used × effective gas price.
pub fn network_fee(gas_used: u64, effective_gas_price: u128) -> Amount {
    Amount::from_u128(u128::from(gas_used).saturating_mul(effective_gas_price))
}

/// The release of unsigned withdrawal `tx`'s hold as it leaves `from` for Failed, guarded so that
/// it cannot race the broadcaster's signature (a staff cancel, a rejected review).
pub(crate) fn release_unsigned(
    tx: &TransactionDoc,
    from: TxState,
    cause: &str,
) -> Result<crate::transitions::Transition, StoreError> {
    let wallet = tx
        .from_wallet_id
        .as_deref()
        .ok_or_else(|| StoreError::Corrupt("a withdrawal without a source wallet".into()))?;
    let hold = coffer_domain::LedgerTransaction::withdrawal_hold(&tx.asset, wallet, tx.amount)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(
        crate::transitions::Transition::new(&tx.id, from, TxState::Failed, cause)
            .with_ledger(coffer_domain::LedgerTransaction::reversal_of(&hold))
            .with_guard(crate::transitions::Guard::Unsigned),
    )
}
