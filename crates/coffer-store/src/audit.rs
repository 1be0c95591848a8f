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
            let record = next_record(head, actor, action, subject, details.clone());
            match log.insert_one(&record).await {
                Ok(_) => return Ok(()),
                Err(e) if crate::is_duplicate_key(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention)
    }
}

/// The record that follows `head` in the chain.
fn next_record(
    head: Option<AuditRecord>,
    actor: &str,
    action: &str,
    subject: &str,
    details: serde_json::Value,
) -> AuditRecord {
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
        details,
        prev_hash,
        hash: String::new(),
    };
    record.hash = record_hash(&record);
    record
}

/// One audited action, appended inside the caller's database transaction.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: String,
    pub action: &'static str,
    pub subject: String,
    pub details: serde_json::Value,
}

/// Appends `entry` inside `session`'s transaction. Another appender taking the same `seq` aborts
/// this transaction: [`StoreError::Contention`], which [`Store::audited`] retries whole.
pub(crate) async fn append_in(
    store: &Store,
    session: &mut mongodb::ClientSession,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    let log = store.collection::<AuditRecord>(AUDIT_LOG);
    let head = log
        .find_one(doc! {})
        .sort(doc! { "seq": -1 })
        .session(&mut *session)
        .await?;
    let record = next_record(
        head,
        &entry.actor,
        entry.action,
        &entry.subject,
        entry.details.clone(),
    );
    match log.insert_one(&record).session(&mut *session).await {
        Ok(_) => Ok(()),
        Err(e) if crate::is_duplicate_key(&e) => Err(StoreError::Contention),
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// Runs `body` and appends its audit record in one database transaction: the change and its
    /// trail commit together or not at all. Queued behind this process's other appends; a race
    /// with another process for the chain's head retries the whole transaction (bounded).
    pub async fn audited<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'s> Fn(
                &'s Store,
                &'s mut mongodb::ClientSession,
            ) -> futures::future::BoxFuture<'s, Result<(T, AuditEntry), StoreError>>
            + Send
            + Sync
            + 'static,
    {
        const ATTEMPTS: usize = 16;
        let head_lock = ["audit_log:head".to_string()];
        let Some(_guard) = self.locks.lock(&head_lock, self.config.lock_timeout).await else {
            return Err(StoreError::Contention);
        };
        let body = std::sync::Arc::new(body);
        for _ in 0..ATTEMPTS {
            let outcome = self
                .with_transaction(|session| {
                    let (body, store) = (body.clone(), self.clone());
                    Box::pin(async move {
                        let (value, entry) = body(&store, &mut *session).await?;
                        append_in(&store, session, &entry).await?;
                        Ok(value)
                    })
                })
                .await;
            match outcome {
                Err(StoreError::Contention) => continue,
                other => return other,
            }
        }
        Err(StoreError::Contention)
    }
}
