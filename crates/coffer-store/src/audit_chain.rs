//! Verifying the audit log's hash chain (S5), and the action names every role audits under.
//!
//! The chain is walked by `seq`, streamed (never the whole log in memory). The first record where
//! the chain breaks is named: its own hash no longer matches its content (edited), `seq` jumps
//! (records deleted), or its `prev_hash` does not link to the record before it (a record was
//! inserted, or an earlier one was rewritten together with its hash).
//!
//! What a chain cannot show on its own: the newest records deleted from the tail. Operators who
//! need that anchor the head (`head_seq`, `head_hash` of [`AuditVerification`]) elsewhere.

use futures::TryStreamExt;
use mongodb::bson::{doc, from_document, Document};
use serde::Serialize;

use crate::audit::{record_hash, AuditRecord, GENESIS};
use crate::collections::AUDIT_LOG;
use crate::{Store, StoreError};

/// Action names of audited events. Details carry ids and enums only, never secrets or PII.
///
/// Other roles append with [`Store::audit`]`(actor_user_id, actions::X, subject_id, details)`,
/// e.g. `store.audit(&user_id, actions::WITHDRAWAL_REQUESTED, &tx.id, json!({ "wallet_id": w }))`.
pub mod actions {
    pub const LOGIN_FAILED: &str = "auth.login_failed";
    pub const REFRESH_REUSE_DETECTED: &str = "auth.refresh_reuse_detected";
    pub const LOGOUT: &str = "auth.logout";
    pub const LOGOUT_ALL: &str = "auth.logout_all";
    pub const PASSWORD_CHANGED: &str = "auth.password_changed";
    pub const MFA_FAILED: &str = "auth.mfa_failed";
    pub const STAFF_CREATED: &str = "staff.created";
    pub const STAFF_MFA_ENROLLED: &str = "staff.mfa_enrolled";
    pub const USER_SESSIONS_REVOKED: &str = "admin.user_sessions_revoked";
    pub const ADJUSTMENT_PROPOSED: &str = "adjustment.proposed";
    pub const ADJUSTMENT_APPROVED: &str = "adjustment.approved";
    pub const ADJUSTMENT_REJECTED: &str = "adjustment.rejected";
    pub const REVIEW_APPROVED: &str = "review.approved";
    pub const REVIEW_REJECTED: &str = "review.rejected";
    pub const RECONCILIATION_REQUESTED: &str = "reconciliation.requested";
    pub const AUDIT_VERIFIED: &str = "audit.verified";
    pub const LIABILITIES_PUBLISHED: &str = "liabilities.published";
    pub const USER_WALLETS_VIEWED: &str = "admin.user_wallets_viewed";
    pub const TRANSACTION_VIEWED: &str = "admin.transaction_viewed";
    /// For the withdrawal and device work (issue 4): call `Store::audit` with these.
    pub const WITHDRAWAL_REQUESTED: &str = "withdrawal.requested";
    pub const DEVICE_ADDED: &str = "device.added";
    pub const DEVICE_TRUSTED: &str = "device.trusted";
    pub const DEVICE_REMOVED: &str = "device.removed";
    pub const ADDRESS_ADDED: &str = "address.added";
    pub const ADDRESS_REMOVED: &str = "address.removed";
    pub const USER_VERIFICATION_SET: &str = "kyc.verification_set";
    pub const USER_FROZEN: &str = "admin.user_frozen";
    pub const USER_UNFROZEN: &str = "admin.user_unfrozen";
}

/// How the chain is broken at a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// The record's content no longer hashes to its `hash`.
    Edited,
    /// `seq` jumps: the records in between are gone.
    Deleted,
    /// `prev_hash` does not link to the previous record's `hash`.
    Inserted,
}

impl BreakKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Inserted => "inserted",
        }
    }
}

/// The first record where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    pub seq: i64,
    pub id: String,
    pub kind: BreakKind,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditVerification {
    pub records_checked: u64,
    pub head_seq: Option<i64>,
    pub head_hash: Option<String>,
    pub first_break: Option<ChainBreak>,
}

impl AuditVerification {
    pub fn valid(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Checks one record against the one before it (`expected_seq`, `prev_hash`).
fn check_record(raw: &Document, expected_seq: i64, prev_hash: &str) -> Result<AuditRecord, ChainBreak> {
    let id = raw.get_str("_id").unwrap_or_default().to_string();
    let seq = raw
        .get_i64("seq")
        .or_else(|_| raw.get_i32("seq").map(i64::from))
        .unwrap_or(-1);
    let broken = |kind, detail: String| ChainBreak {
        seq,
        id: id.clone(),
        kind,
        detail,
    };
    if seq > expected_seq {
        let detail = if seq - 1 == expected_seq {
            format!("the record with seq {expected_seq} is missing")
        } else {
            format!("the records with seq {expected_seq} to {} are missing", seq - 1)
        };
        return Err(broken(BreakKind::Deleted, detail));
    }
    if seq < expected_seq {
        return Err(broken(
            BreakKind::Inserted,
            format!("seq {seq} appears again after seq {}", expected_seq - 1),
        ));
    }
    let record: AuditRecord = from_document(raw.clone()).map_err(|_| {
        broken(
            BreakKind::Edited,
            "the record does not have the audit record's shape".into(),
        )
    })?;
    if record_hash(&record) != record.hash {
        return Err(broken(
            BreakKind::Edited,
            "the record's content does not match its hash".into(),
        ));
    }
    if record.prev_hash != prev_hash {
        let detail = format!(
            "prev_hash does not link to the record with seq {}: a record was inserted, or an earlier one rewritten",
            expected_seq - 1
        );
        return Err(broken(BreakKind::Inserted, detail));
    }
    Ok(record)
}

impl Store {
    /// Walks the audit log by `seq` and returns the first break, if any.
    pub async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        let mut cursor = self
            .collection::<Document>(AUDIT_LOG)
            .find(doc! {})
            .sort(doc! { "seq": 1 })
            .batch_size(1000)
            .await?;
        let mut report = AuditVerification::default();
        let (mut expected_seq, mut prev_hash) = (1i64, GENESIS.to_string());
        while let Some(raw) = cursor.try_next().await? {
            report.records_checked += 1;
            match check_record(&raw, expected_seq, &prev_hash) {
                Ok(record) => {
                    expected_seq = record.seq + 1;
                    report.head_seq = Some(record.seq);
                    report.head_hash = Some(record.hash.clone());
                    prev_hash = record.hash;
                }
                Err(chain_break) => {
                    report.first_break = Some(chain_break);
                    break;
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::to_document;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut record = AuditRecord {
                    id: format!("r{seq}"),
                    seq,
                    at: crate::codec::from_millis(1_700_000_000_000 + seq),
                    actor: "a".into(),
                    action: "x".into(),
                    subject: "s".into(),
                    details: serde_json::json!({}),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                record.hash = record_hash(&record);
                prev = record.hash.clone();
                record
            })
            .collect()
    }

    fn first_break(records: &[AuditRecord]) -> Option<ChainBreak> {
        let (mut expected, mut prev) = (1, GENESIS.to_string());
        for record in records {
            match check_record(&to_document(record).unwrap(), expected, &prev) {
                Ok(r) => {
                    expected = r.seq + 1;
                    prev = r.hash;
                }
                Err(b) => return Some(b),
            }
        }
        None
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(first_break(&chain(5)), None);
    }

    #[test]
    fn an_edited_record_is_named() {
        let mut records = chain(5);
        records[2].subject = "someone else".into();
        let found = first_break(&records).unwrap();
        assert_eq!(
            (found.seq, found.id.as_str(), found.kind),
            (3, "r3", BreakKind::Edited)
        );
    }

    #[test]
    fn an_edited_and_rehashed_record_breaks_the_next_link() {
        let mut records = chain(5);
        records[1].actor = "b".into();
        records[1].hash = record_hash(&records[1]);
        let found = first_break(&records).unwrap();
        assert_eq!((found.seq, found.kind), (3, BreakKind::Inserted));
    }

    #[test]
    fn a_deleted_record_is_a_gap_before_the_next() {
        let mut records = chain(5);
        records.remove(1);
        let found = first_break(&records).unwrap();
        assert_eq!(
            (found.seq, found.id.as_str(), found.kind),
            (3, "r3", BreakKind::Deleted)
        );
        assert!(found.detail.contains("seq 2 is missing"), "{}", found.detail);
    }

    #[test]
    fn a_deleted_and_renumbered_record_is_a_broken_link() {
        let mut records = chain(5);
        records.remove(1);
        for record in records.iter_mut().skip(1) {
            record.seq -= 1;
            record.hash = record_hash(record);
        }
        let found = first_break(&records).unwrap();
        assert_eq!(
            (found.seq, found.id.as_str(), found.kind),
            (2, "r3", BreakKind::Inserted)
        );
    }
}
