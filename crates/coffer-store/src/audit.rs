//! The audit log: append-only, each record carrying the hash of the one before (S5).
//!
//! Appends are ordered by a unique `seq`; two concurrent appends race for the same `seq`, one
//! wins and the other re-reads the head and tries again (bounded).

use mongodb::bson::doc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::collections::AUDIT_LOG;
use crate::{new_id, Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub seq: i64,
    #[serde(with = "crate::codec::time")]
    pub at: crate::codec::Time,
    /// Who did it: a user id, `cli`, or `anonymous`.
    pub actor: String,
    /// What was done, e.g. `auth.login_failed`, `staff.created`, `auth.refresh_reuse`.
    pub action: String,
    /// What it was done to (an id; never a secret or PII).
    pub subject: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The genesis value of `prev_hash`.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of a record: SHA-256 over its canonical JSON without `hash`.
pub fn record_hash(record: &AuditRecord) -> String {
    let canonical = serde_json::json!({
        "id": record.id, "seq": record.seq, "at": record.at.timestamp_millis(), "actor": record.actor,
        "action": record.action, "subject": record.subject, "details": record.details,
        "prev_hash": record.prev_hash,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

impl Store {
    /// Appends an audited action; `details` carry ids and enums only, never secrets or PII.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        details: serde_json::Value,
    ) -> Result<(), StoreError> {
        const ATTEMPTS: usize = 16;
        // Appenders of one process queue on the chain's head instead of racing for the same `seq`;
        // only appends from other processes can still collide, and those retry.
        let head_lock = ["audit_log:head".to_string()];
        let Some(_guard) = self.locks.lock(&head_lock, self.config.lock_timeout).await else {
            return Err(StoreError::Contention);
        };
        let log = self.collection::<AuditRecord>(AUDIT_LOG);
        for _ in 0..ATTEMPTS {
            let head = log.find_one(doc! {}).sort(doc! { "seq": -1 }).await?;
            let (seq, prev_hash) = head
                .map(|h| (h.seq + 1, h.hash))
                .unwrap_or((1, GENESIS.to_string()));
            let mut record = AuditRecord {
                id: new_id(),
                seq,
                at: crate::codec::now(),
                actor: actor.to_string(),
                action: action.to_string(),
                subject: subject.to_string(),
                details: details.clone(),
                prev_hash,
                hash: String::new(),
            };
            record.hash = record_hash(&record);
            match log.insert_one(&record).await {
                Ok(_) => return Ok(()),
                Err(e) if crate::is_duplicate_key(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention)
    }
}
