//! Held payment-rail deposits (issue 13 item 2): a deposit above its rail's caps is not
//! credited but kept here, one record per rail reference, until staff approve or reject it.
//!
//! Approval that executes is one database transaction: the record moves `held → approved`
//! (conditionally on the approvals the approver saw, so two concurrent approvals cannot both
//! win) and the credit, with the rail's ledger key `deposit:<rail>:<reference>`, is written
//! through the same path as every movement, with its audit record. A first of two approvals is
//! recorded the same conditional way, with its own audit record, and moves nothing.

use futures::TryStreamExt;
use mongodb::bson::{doc, to_bson, Document};
use serde::{Deserialize, Serialize};

use crate::batch::write_one;
use crate::collections::RAIL_DEPOSITS;
use crate::model::{StaffApproval, TransactionDoc};
use crate::{Store, StoreError};
use coffer_domain::{Amount, Movement};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RailDepositStatus {
    Held,
    Approved,
    Rejected,
}

impl RailDepositStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RailDepositStatus::Held => "held",
            RailDepositStatus::Approved => "approved",
            RailDepositStatus::Rejected => "rejected",
        }
    }
}

/// A rail deposit held for staff.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RailDepositDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// `<rail>:<reference>`, unique: the same reference is held once.
    pub rail_key: String,
    pub rail: String,
    pub reference: String,
    pub wallet_id: String,
    /// The wallet's owner.
    pub user_id: String,
    pub asset: String,
    pub decimals: u8,
    pub amount: Amount,
    /// `deposit_max` or `daily_limit` ([`coffer_domain::plan::RailHold`]).
    pub cause: String,
    pub status: RailDepositStatus,
    /// The payment service account that reported it.
    pub reported_by: String,
    #[serde(with = "crate::codec::time")]
    pub reported_at: crate::codec::Time,
    /// Approvals recorded so far (a first of two), oldest first.
    #[serde(default)]
    pub approvals: Vec<StaffApproval>,
    pub decided_by: Option<String>,
    #[serde(with = "crate::codec::time_opt", default)]
    pub decided_at: Option<crate::codec::Time>,
    pub decision_reason: Option<String>,
    /// The credit, once approved.
    pub transaction_id: Option<String>,
}

/// What a hold needs.
#[derive(Debug, Clone)]
pub struct NewRailHold {
    pub rail: String,
    pub reference: String,
    pub wallet_id: String,
    pub user_id: String,
    pub asset: String,
    pub decimals: u8,
    pub amount: Amount,
    pub cause: &'static str,
    pub reported_by: String,
}

/// The unique key of rail `rail`'s deposit `reference`.
fn rail_key(rail: &str, reference: &str) -> String {
    format!("{rail}:{reference}")
}

impl Store {
    pub async fn rail_deposit(&self, id: &str) -> Result<Option<RailDepositDoc>, StoreError> {
        Ok(self
            .collection::<RailDepositDoc>(RAIL_DEPOSITS)
            .find_one(doc! { "_id": id })
            .await?)
    }

    /// The held record of rail `rail`'s deposit `reference`, if it was ever held.
    pub async fn rail_deposit_by_reference(
        &self,
        rail: &str,
        reference: &str,
    ) -> Result<Option<RailDepositDoc>, StoreError> {
        Ok(self
            .collection::<RailDepositDoc>(RAIL_DEPOSITS)
            .find_one(doc! { "rail_key": rail_key(rail, reference) })
            .await?)
    }

    /// The held records of rail `rail`'s deposits `references` (those ever held), by reference;
    /// one indexed read for up to 1,000 references.
    pub async fn rail_deposits_by_references(
        &self,
        rail: &str,
        references: &[&str],
    ) -> Result<std::collections::HashMap<String, RailDepositDoc>, StoreError> {
        if references.is_empty() {
            return Ok(Default::default());
        }
        let keys: Vec<String> = references.iter().map(|r| rail_key(rail, r)).collect();
        let found: Vec<RailDepositDoc> = self
            .collection::<RailDepositDoc>(RAIL_DEPOSITS)
            .find(doc! { "rail_key": { "$in": keys } })
            .await?
            .try_collect()
            .await?;
        Ok(found.into_iter().map(|d| (d.reference.clone(), d)).collect())
    }

    /// Held rail deposits, oldest first, optionally only those in `status`; at most `limit` (1..=100).
    pub async fn rail_deposits(
        &self,
        status: Option<RailDepositStatus>,
        limit: u32,
    ) -> Result<Vec<RailDepositDoc>, StoreError> {
        let filter = match status {
            Some(status) => doc! { "status": status.as_str() },
            None => doc! {},
        };
        let cursor = self
            .collection::<RailDepositDoc>(RAIL_DEPOSITS)
            .find(filter)
            .sort(doc! { "reported_at": 1, "_id": 1 })
            .limit(i64::from(limit.clamp(1, crate::queries::PAGE_LIMIT_MAX)))
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Holds a rail deposit, audited in the same transaction; the same reference answers the
    /// record kept first (`false`: not new). A reference credited already answers
    /// [`StoreError::DuplicateLedgerKey`] and holds nothing.
    pub async fn hold_rail_deposit(
        &self,
        hold: NewRailHold,
        ledger_key: &str,
        audit: crate::audit::Audit,
    ) -> Result<(RailDepositDoc, bool), StoreError> {
        if let Some(existing) = self
            .rail_deposit_by_reference(&hold.rail, &hold.reference)
            .await?
        {
            return Ok((existing, false));
        }
        let (id, key) = (crate::new_id(), rail_key(&hold.rail, &hold.reference));
        let record = RailDepositDoc {
            id: id.clone(),
            rail_key: key.clone(),
            rail: hold.rail,
            reference: hold.reference,
            wallet_id: hold.wallet_id,
            user_id: hold.user_id,
            asset: hold.asset,
            decimals: hold.decimals,
            amount: hold.amount,
            cause: hold.cause.to_string(),
            status: RailDepositStatus::Held,
            reported_by: hold.reported_by,
            reported_at: crate::codec::now(),
            approvals: Vec::new(),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            transaction_id: None,
        };
        let entry = audit.on(&id);
        let ledger_key = ledger_key.to_string();
        let held = self
            .audited(move |store, session| {
                let (record, entry, ledger_key) = (record.clone(), entry.clone(), ledger_key.clone());
                Box::pin(async move {
                    let credited = store
                        .collection::<TransactionDoc>(crate::collections::TRANSACTIONS)
                        .find_one(doc! { "ledger_key": &ledger_key })
                        .session(&mut *session)
                        .await?;
                    if let Some(tx) = credited {
                        return Err(StoreError::DuplicateLedgerKey(Box::new(tx)));
                    }
                    let inserted = store
                        .collection::<RailDepositDoc>(RAIL_DEPOSITS)
                        .insert_one(&record)
                        .session(&mut *session)
                        .await;
                    match inserted {
                        Ok(_) => Ok((record, entry)),
                        Err(e) if crate::is_duplicate_key(&e) => Err(StoreError::AlreadyExists),
                        Err(e) => Err(e.into()),
                    }
                })
            })
            .await;
        match held {
            Ok(record) => Ok((record, true)),
            // A concurrent report of the same reference held it first: its record is the answer.
            Err(StoreError::AlreadyExists) => {
                let existing = self
                    .collection::<RailDepositDoc>(RAIL_DEPOSITS)
                    .find_one(doc! { "rail_key": &key })
                    .await?
                    .ok_or(StoreError::Contention)?;
                Ok((existing, false))
            }
            Err(other) => Err(other),
        }
    }

    /// Records `approval` of a held deposit (the first of two), conditionally on the approvals
    /// being those `seen`; nothing is credited. [`StoreError::StateConflict`] if it changed.
    pub async fn record_rail_approval(
        &self,
        id: &str,
        seen: usize,
        approval: StaffApproval,
        audit: crate::audit::Audit,
    ) -> Result<RailDepositDoc, StoreError> {
        let filter = approvals_unchanged(id, seen, &approval.by);
        let update = doc! { "$push": { "approvals": to_bson(&approval)? } };
        self.audited_update(RAIL_DEPOSITS, filter, update, audit.on(id))
            .await
    }

    /// Approves a held deposit and credits it (`movement`, planned by the domain with the rail's
    /// ledger key), atomically, conditionally on the approvals being those `seen`.
    /// [`StoreError::StateConflict`] if it was decided or approved meanwhile.
    pub async fn approve_rail_deposit(
        &self,
        id: &str,
        seen: usize,
        approver: &str,
        reason: &str,
        movement: Movement,
        audit: crate::audit::Audit,
    ) -> Result<(RailDepositDoc, TransactionDoc), StoreError> {
        let asset = movement.ledger.asset().to_string();
        self.ensure_platform_accounts(&asset, movement.decimals).await?;
        let _guard = self.lock_accounts(&movement.ledger.account_ids()).await?;
        let filter = approvals_unchanged(id, seen, approver);
        let update = doc! { "$set": {
            "status": "approved", "decided_by": approver, "decided_at": mongodb::bson::DateTime::now(),
            "decision_reason": reason, "transaction_id": &movement.transaction_id,
        } };
        let mut entry = audit.on(id);
        entry.details["transaction_id"] = serde_json::json!(movement.transaction_id);
        let shared = std::sync::Arc::new((self.clone(), movement, filter, update, entry));
        let tx = self
            .with_transaction(|session| {
                let shared = shared.clone();
                Box::pin(async move {
                    let (store, movement, filter, update, entry) = &*shared;
                    let decided = store
                        .collection::<RailDepositDoc>(RAIL_DEPOSITS)
                        .update_one(filter.clone(), update.clone())
                        .session(&mut *session)
                        .await?;
                    if decided.modified_count != 1 {
                        return Err(StoreError::StateConflict);
                    }
                    store.audit_in(session, vec![entry.clone()]).await?;
                    write_one(&store.db, session, store.audit_keys(), movement.clone().into()).await
                })
            })
            .await;
        let tx = match tx {
            // The ledger key is taken: it was credited already.
            Err(StoreError::AlreadyExists) | Err(StoreError::DuplicateLedgerKey(_)) => {
                return Err(StoreError::StateConflict)
            }
            other => other?,
        };
        let record = self.rail_deposit(id).await?.ok_or(StoreError::NotFound)?;
        Ok((record, tx))
    }

    /// Rejects a held deposit, audited; nothing is credited. [`StoreError::StateConflict`]
    /// unless it is held.
    pub async fn reject_rail_deposit(
        &self,
        id: &str,
        decider: &str,
        reason: &str,
        audit: crate::audit::Audit,
    ) -> Result<RailDepositDoc, StoreError> {
        let filter = doc! { "_id": id, "status": "held" };
        let update = doc! { "$set": {
            "status": "rejected", "decided_by": decider, "decided_at": mongodb::bson::DateTime::now(),
            "decision_reason": reason,
        } };
        let rejected = self
            .audited_update::<RailDepositDoc>(RAIL_DEPOSITS, filter, update, audit.on(id))
            .await;
        match rejected {
            Err(StoreError::StateConflict) if self.rail_deposit(id).await?.is_none() => {
                Err(StoreError::NotFound)
            }
            other => other,
        }
    }
}

/// Still held, with exactly the `seen` approvals, none by `approver`: what makes a recorded or
/// executing approval happen once, whichever replica serves it.
fn approvals_unchanged(id: &str, seen: usize, approver: &str) -> Document {
    doc! {
        "_id": id,
        "status": "held",
        "approvals": { "$size": seen as i64 },
        "approvals.by": { "$ne": approver },
    }
}
