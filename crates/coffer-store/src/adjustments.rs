//! Maker-checker adjustments (O2): finance proposes, a different admin approves, and only then is
//! a balanced adjustment posted against the asset's suspense account.
//!
//! Approval is one database transaction: the proposal moves `proposed → approved` (conditionally,
//! so two approvals or an approval racing a rejection cannot both win) and the movement, with
//! ledger key `adjustment:<id>`, is written through the same path as every movement. Either both
//! happen or neither does.

use chrono::Utc;
use coffer_domain::account::platform_account_id;
use coffer_domain::events::EventType;
use coffer_domain::movement::transaction_events;
use coffer_domain::{
    AccountKind, Amount, Bucket, LedgerTransaction, Movement, Posting, StateChange, TxKind, TxState,
    WalletRef,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime};
use serde::{Deserialize, Serialize};

use crate::batch::write_one;
use crate::collections::ADJUSTMENTS;
use crate::model::{TransactionDoc, WalletDoc};
use crate::{new_id, Store, StoreError};

/// Longest reason kept, in characters.
pub const REASON_MAX_CHARS: usize = 500;

/// Which way the wallet's available balance moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Credit,
    Debit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentStatus {
    Proposed,
    Approved,
    Rejected,
}

impl AdjustmentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AdjustmentStatus::Proposed => "proposed",
            AdjustmentStatus::Approved => "approved",
            AdjustmentStatus::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdjustmentDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub wallet_id: String,
    pub asset: String,
    pub decimals: u8,
    /// Magnitude in smallest units; `direction` says which way.
    pub amount: Amount,
    pub direction: Direction,
    pub reason: String,
    pub status: AdjustmentStatus,
    pub proposed_by: String,
    #[serde(with = "crate::codec::time")]
    pub proposed_at: crate::codec::Time,
    pub decided_by: Option<String>,
    #[serde(with = "crate::codec::time_opt", default)]
    pub decided_at: Option<crate::codec::Time>,
    pub decision_reason: Option<String>,
    /// The posted transaction, once approved.
    pub transaction_id: Option<String>,
    /// First approvals of an adjustment that needs two (two-person rule), oldest first.
    #[serde(default)]
    pub approvals: Vec<crate::model::StaffApproval>,
}

impl AdjustmentDoc {
    /// The balanced postings: the wallet against the asset's suspense account.
    pub fn ledger(&self) -> Result<LedgerTransaction, StoreError> {
        let suspense = platform_account_id(&self.asset, AccountKind::Suspense);
        let (debited, credited) = match self.direction {
            Direction::Credit => (suspense, self.wallet_id.clone()),
            Direction::Debit => (self.wallet_id.clone(), suspense),
        };
        LedgerTransaction::new(
            TxKind::Adjustment,
            &self.asset,
            vec![
                Posting::debit(debited, Bucket::Available, self.amount),
                Posting::credit(credited, Bucket::Available, self.amount),
            ],
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    fn movement(&self, approver: &str, owner: Option<String>, tx_id: &str) -> Result<Movement, StoreError> {
        let now = Utc::now();
        let timeline = vec![
            StateChange::initial(TxState::Created, now, "adjustment proposed"),
            StateChange::step(TxState::Created, TxState::Confirmed, now, "adjustment approved")
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ];
        let wallet = Some(self.wallet_id.clone());
        let (from_wallet_id, to_wallet_id) = match self.direction {
            Direction::Credit => (None, wallet),
            Direction::Debit => (wallet, None),
        };
        let wallet_ref = WalletRef {
            id: self.wallet_id.clone(),
            user_id: owner.clone(),
            asset: self.asset.clone(),
        };
        let mut movement = Movement {
            transaction_id: tx_id.to_string(),
            ledger: self.ledger()?,
            ledger_key: format!("adjustment:{}", self.id),
            state: TxState::Confirmed,
            timeline,
            amount: self.amount,
            decimals: self.decimals,
            initiated_by: approver.to_string(),
            from_wallet_id,
            to_wallet_id,
            external_reference: Some(format!("adjustment:{}", self.id)),
            destination: None,
            original_transaction_id: None,
            participants: owner.into_iter().collect(),
            limits: Vec::new(),
            events: Vec::new(),
        };
        movement.events = transaction_events(
            EventType::TransactionCreated,
            &movement.summary(),
            &[&wallet_ref],
            Some(&movement.ledger),
        );
        Ok(movement)
    }
}

/// What a proposal needs.
#[derive(Debug, Clone)]
pub struct NewAdjustment {
    pub wallet_id: String,
    pub amount: Amount,
    pub direction: Direction,
    pub reason: String,
    pub proposed_by: String,
}

impl Store {
    /// Stores a proposal; nothing moves. [`StoreError::NotFound`] if the wallet is not a user wallet.
    pub async fn propose_adjustment(
        &self,
        proposal: NewAdjustment,
        audit: crate::audit::Audit,
    ) -> Result<AdjustmentDoc, StoreError> {
        let wallet = self
            .collection::<WalletDoc>(crate::collections::WALLETS)
            .find_one(doc! { "_id": &proposal.wallet_id, "kind": "user" })
            .await?
            .ok_or(StoreError::NotFound)?;
        let adjustment = AdjustmentDoc {
            id: new_id(),
            wallet_id: wallet.id,
            asset: wallet.asset,
            decimals: wallet.decimals,
            amount: proposal.amount,
            direction: proposal.direction,
            reason: proposal.reason,
            status: AdjustmentStatus::Proposed,
            proposed_by: proposal.proposed_by,
            proposed_at: crate::codec::now(),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            transaction_id: None,
            approvals: Vec::new(),
        };
        // Fails early (and loudly) if the postings could never balance.
        adjustment.ledger()?;
        self.audited(move |store, session| {
            let (adjustment, entry) = (adjustment.clone(), audit.on(&adjustment.id));
            Box::pin(async move {
                let adjustments = store.collection::<AdjustmentDoc>(ADJUSTMENTS);
                adjustments.insert_one(&adjustment).session(session).await?;
                Ok((adjustment, entry))
            })
        })
        .await
    }

    pub async fn adjustment(&self, id: &str) -> Result<Option<AdjustmentDoc>, StoreError> {
        Ok(self
            .collection::<AdjustmentDoc>(ADJUSTMENTS)
            .find_one(doc! { "_id": id })
            .await?)
    }

    /// Adjustments, newest first, optionally only those in `status`; at most `limit` (1..=100).
    pub async fn adjustments(
        &self,
        status: Option<AdjustmentStatus>,
        limit: u32,
    ) -> Result<Vec<AdjustmentDoc>, StoreError> {
        let filter = match status {
            Some(status) => doc! { "status": status.as_str() },
            None => doc! {},
        };
        let cursor = self
            .collection::<AdjustmentDoc>(ADJUSTMENTS)
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(i64::from(limit.clamp(1, crate::queries::PAGE_LIMIT_MAX)))
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Records the first of two approvals of a proposal (two-person rule), audited; nothing
    /// moves. Refuses the proposer ([`StoreError::SelfApproval`]); [`StoreError::StateConflict`]
    /// if it was decided or its approvals are no longer the `seen` ones.
    pub async fn record_adjustment_approval(
        &self,
        id: &str,
        seen: usize,
        approval: crate::model::StaffApproval,
        audit: crate::audit::Audit,
    ) -> Result<AdjustmentDoc, StoreError> {
        let adjustment = self.adjustment(id).await?.ok_or(StoreError::NotFound)?;
        if adjustment.proposed_by == approval.by {
            return Err(StoreError::SelfApproval);
        }
        let filter = proposed_with_approvals(id, seen, &approval.by);
        let update = doc! { "$push": { "approvals": mongodb::bson::to_bson(&approval)? } };
        self.audited_update(ADJUSTMENTS, filter, update, audit.on(id))
            .await
    }

    /// Approves and posts a proposal, atomically, if its first approvals are still the `seen`
    /// ones (none by the approver). Refuses the proposer ([`StoreError::SelfApproval`]) and
    /// anything no longer proposed or approved meanwhile ([`StoreError::StateConflict`]).
    pub async fn approve_adjustment(
        &self,
        id: &str,
        approver: &str,
        reason: &str,
        seen: usize,
        audit: crate::audit::Audit,
    ) -> Result<(AdjustmentDoc, TransactionDoc), StoreError> {
        let adjustment = self.adjustment(id).await?.ok_or(StoreError::NotFound)?;
        if adjustment.proposed_by == approver {
            return Err(StoreError::SelfApproval);
        }
        if adjustment.status != AdjustmentStatus::Proposed {
            return Err(StoreError::StateConflict);
        }
        self.ensure_platform_accounts(&adjustment.asset, adjustment.decimals)
            .await?;
        let owner = self
            .wallet_by_id(&adjustment.wallet_id)
            .await?
            .and_then(|w| w.user_id);
        let tx_id = new_id();
        let movement = adjustment.movement(approver, owner, &tx_id)?;
        let _guard = self.lock_accounts(&movement.ledger.account_ids()).await?;
        let decision = (id.to_string(), approver.to_string(), reason.to_string());
        let filter = proposed_with_approvals(id, seen, approver);
        let entry = audit.on(id);
        let shared = std::sync::Arc::new((self.clone(), movement, tx_id, decision, entry, filter));
        let tx = self
            .with_transaction(|session| {
                let shared = shared.clone();
                Box::pin(async move {
                    let (store, movement, tx_id, (_, approver, reason), entry, filter) = &*shared;
                    let decided = store
                        .collection::<AdjustmentDoc>(ADJUSTMENTS)
                        .update_one(
                            filter.clone(),
                            doc! { "$set": {
                                "status": "approved", "decided_by": approver, "decided_at": DateTime::now(),
                                "decision_reason": reason, "transaction_id": tx_id,
                            } },
                        )
                        .session(&mut *session)
                        .await?;
                    if decided.modified_count != 1 {
                        return Err(StoreError::StateConflict);
                    }
                    let mut entry = entry.clone();
                    entry.details["transaction_id"] = serde_json::json!(tx_id);
                    store.audit_in(session, vec![entry]).await?;
                    write_one(&store.db, session, store.audit_keys(), movement.clone().into()).await
                })
            })
            .await;
        let tx = match tx {
            Err(StoreError::AlreadyExists) => return Err(StoreError::StateConflict),
            other => other?,
        };
        let adjustment = self.adjustment(id).await?.ok_or(StoreError::NotFound)?;
        Ok((adjustment, tx))
    }

    /// Rejects a proposal; nothing moves. [`StoreError::StateConflict`] unless it is proposed.
    pub async fn reject_adjustment(
        &self,
        id: &str,
        decider: &str,
        reason: &str,
        audit: crate::audit::Audit,
    ) -> Result<AdjustmentDoc, StoreError> {
        let filter = doc! { "_id": id, "status": "proposed" };
        let update = doc! { "$set": {
            "status": "rejected", "decided_by": decider, "decided_at": DateTime::now(),
            "decision_reason": reason,
        } };
        let updated = self
            .audited_update::<AdjustmentDoc>(ADJUSTMENTS, filter, update, audit.on(id))
            .await;
        match updated {
            Err(StoreError::StateConflict) if self.adjustment(id).await?.is_none() => {
                Err(StoreError::NotFound)
            }
            other => other,
        }
    }
}

/// Still proposed, with exactly the `seen` first approvals, none by `approver` (a document
/// written before approvals were kept has none).
fn proposed_with_approvals(id: &str, seen: usize, approver: &str) -> mongodb::bson::Document {
    let mut filter = doc! { "_id": id, "status": "proposed", "approvals.by": { "$ne": approver } };
    if seen == 0 {
        filter.insert("approvals.0", doc! { "$exists": false });
    } else {
        filter.insert("approvals", doc! { "$size": seen as i64 });
    }
    filter
}
