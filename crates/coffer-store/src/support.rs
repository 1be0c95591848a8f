//! Support reads (a transaction's whole story) and manual-review decisions (O2).

use coffer_domain::{LedgerTransaction, TxKind, TxState};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use crate::collections::{LEDGER_ENTRIES, OUTBOX, TRANSACTIONS};
use crate::model::{LedgerEntryDoc, OutboxDoc, TransactionDoc};
use crate::transitions::Transition;
use crate::{Store, StoreError};

/// The most ledger entries a timeline shows (a transaction has a handful; this is a bound).
pub const TIMELINE_ENTRIES_MAX: i64 = 1000;

/// Everything known about one transaction, for support.
#[derive(Debug, Clone)]
pub struct TransactionStory {
    pub transaction: TransactionDoc,
    /// The record as stored, as relaxed extended JSON: fields other roles add (chain references,
    /// confirmations, risk flags, review decisions) are read from here.
    pub raw: serde_json::Value,
    /// All its ledger entries, on every account, oldest first.
    pub entries: Vec<LedgerEntryDoc>,
    /// The newest real-time event written for it.
    pub last_event: Option<OutboxDoc>,
    /// Whether the outbox publisher has published that event.
    pub last_event_published: bool,
}

/// A reviewer's decision on a transaction in manual review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewDecision {
    Approve,
    Reject,
}

impl ReviewDecision {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReviewDecision::Approve => "approved",
            ReviewDecision::Reject => "rejected",
        }
    }
}

/// The transition a decision makes: approve sends a withdrawal on to broadcast; reject fails it
/// and releases its hold (the reversal of the hold, in the same database transaction).
pub fn review_transition(tx: &TransactionDoc, decision: ReviewDecision) -> Result<Transition, StoreError> {
    if tx.state != TxState::ManualReview {
        return Err(StoreError::StateConflict);
    }
    if tx.kind == TxKind::Transfer {
        return transfer_review_transition(tx, decision);
    }
    if tx.kind != TxKind::Withdrawal {
        return Err(StoreError::Unsupported(
            "only withdrawals and transfers can be decided in manual review",
        ));
    }
    if tx.from_wallet_id.is_none() {
        return Err(StoreError::Corrupt("a withdrawal without a source wallet".into()));
    }
    Ok(match decision {
        ReviewDecision::Approve => Transition::new(
            &tx.id,
            TxState::ManualReview,
            TxState::PendingBroadcast,
            "approved in manual review",
        ),
        // A signed transaction may still be mined: releasing its hold now could pay twice.
        ReviewDecision::Reject if tx.broadcast.is_some() => return Err(StoreError::WithdrawalSigned),
        ReviewDecision::Reject => crate::withdrawals::release_unsigned(
            tx,
            TxState::ManualReview,
            "rejected in manual review; funds released",
        )?,
    })
}

/// A held transfer: approval posts the held amount to the recipient, rejection releases it to
/// the sender; either way the transaction is final.
fn transfer_review_transition(
    tx: &TransactionDoc,
    decision: ReviewDecision,
) -> Result<Transition, StoreError> {
    let corrupt = |e: coffer_domain::LedgerError| StoreError::Corrupt(e.to_string());
    let (Some(from), Some(to)) = (tx.from_wallet_id.as_deref(), tx.to_wallet_id.as_deref()) else {
        return Err(StoreError::Corrupt("a transfer without both wallets".into()));
    };
    Ok(match decision {
        ReviewDecision::Approve => Transition::new(
            &tx.id,
            TxState::ManualReview,
            TxState::Confirmed,
            "approved in manual review; transfer posted",
        )
        .with_ledger(LedgerTransaction::transfer_release(&tx.asset, from, to, tx.amount).map_err(corrupt)?),
        ReviewDecision::Reject => {
            let hold = LedgerTransaction::transfer_hold(&tx.asset, from, tx.amount).map_err(corrupt)?;
            Transition::new(
                &tx.id,
                TxState::ManualReview,
                TxState::Failed,
                "rejected in manual review; funds released",
            )
            .with_ledger(LedgerTransaction::reversal_of(&hold))
        }
    })
}

impl Store {
    /// Whether wallet `from` has ever completed a transfer to wallet `to`.
    pub async fn has_paid_before(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        let found = self
            .collection::<Document>(TRANSACTIONS)
            .find_one(
                doc! { "from_wallet_id": from, "to_wallet_id": to, "state": TxState::Confirmed.as_str() },
            )
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(found.is_some())
    }

    pub async fn transaction_story(&self, id: &str) -> Result<Option<TransactionStory>, StoreError> {
        let Some(raw) = self
            .collection::<Document>(TRANSACTIONS)
            .find_one(doc! { "_id": id })
            .await?
        else {
            return Ok(None);
        };
        let transaction: TransactionDoc =
            mongodb::bson::from_document(raw.clone()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let entries = self
            .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
            .find(doc! { "transaction_id": id })
            .sort(doc! { "_id": 1 })
            .limit(TIMELINE_ENTRIES_MAX)
            .await?
            .try_collect()
            .await?;
        let last_event = self
            .collection::<OutboxDoc>(OUTBOX)
            .find_one(doc! { "data.transaction_id": id })
            .sort(doc! { "_id": -1 })
            .await?;
        let last_event_published = match &last_event {
            Some(row) => self.outbox_published(row).await?,
            None => false,
        };
        Ok(Some(TransactionStory {
            last_event_published,
            transaction,
            raw: mongodb::bson::Bson::Document(raw).into_relaxed_extjson(),
            entries,
            last_event,
        }))
    }

    /// Applies a reviewer's decision. The reason is kept on the transaction record under
    /// `review` (staff-only; the user's view shows the generic cause in the timeline). An approval
    /// after `approvals_seen` first approvals applies only if they are still those (none by the
    /// reviewer): [`StoreError::StateConflict`] otherwise.
    pub async fn decide_review(
        &self,
        id: &str,
        decision: ReviewDecision,
        reviewer: &str,
        reason: &str,
        approvals_seen: usize,
        audit: crate::audit::Audit,
    ) -> Result<TransactionDoc, StoreError> {
        let tx = self.transaction_by_id(id).await?.ok_or(StoreError::NotFound)?;
        let mut transition = review_transition(&tx, decision)?.with_note(crate::transitions::Note::Review {
            decision: decision.as_str(),
            by: reviewer.to_string(),
            reason: reason.to_string(),
        });
        if decision == ReviewDecision::Approve && approvals_seen > 0 {
            transition = transition.with_guard(crate::transitions::Guard::Approvals {
                seen: approvals_seen,
                approver: reviewer.to_string(),
            });
        }
        self.apply_transition_audited(&transition, vec![audit.on(id)])
            .await
    }

    /// Records the first of two approvals of a transaction in manual review (two-person rule),
    /// audited; nothing moves. [`StoreError::StateConflict`] if it left review or its approvals
    /// are no longer the `seen` ones.
    pub async fn record_review_approval(
        &self,
        id: &str,
        seen: usize,
        approval: crate::model::StaffApproval,
        audit: crate::audit::Audit,
    ) -> Result<TransactionDoc, StoreError> {
        let mut filter = doc! { "_id": id, "state": TxState::ManualReview.as_str() };
        filter.extend(crate::transitions::review_approvals_unchanged(seen, &approval.by));
        let update = doc! { "$push": { "review_approvals": mongodb::bson::to_bson(&approval)? } };
        self.audited_update(TRANSACTIONS, filter, update, audit.on(id))
            .await
    }
}
