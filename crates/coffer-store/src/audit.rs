//! The audit log (S5): [`SHARDS`] chains of records, each record MACed with a key the database
//! never holds, written in the same transaction as the action it records.
//!
//! A transaction that audits picks a shard, reads the shard's head (`audit_heads`: last seq and
//! MAC) in its snapshot, inserts its records at `seq + 1, …` and moves the head with an update
//! conditional on the seq it read — the pattern of the outbox's partition sequences. Two writers
//! of one shard conflict on its head document (one retries), so a shard's seqs are gapless in
//! commit order, and no process lock is needed: API replicas audit concurrently on different
//! shards. A record that already sits at the next seq (planted, or a bug) aborts the transaction
//! and the action with it: an action whose audit cannot be written does not happen.
//!
//! Each record's MAC is HMAC-SHA256 over its canonical bytes, which include the previous
//! record's MAC and the id of the key. Without the key nobody can write a record that verifies,
//! so a rewrite (even with a recomputed hash) is found; a cut tail is found against the heads the
//! reconciler exports (see [`crate::audit_chain`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use mongodb::bson::{doc, Document};
use mongodb::{ClientSession, Database};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::Retry;
use crate::collections::{AUDIT_HEADS, AUDIT_RECORDS};
use crate::{new_id, Store, StoreError};

/// Shards of the audit log. Fixed: a shard's records form one chain.
pub const SHARDS: i32 = 16;

/// The `prev_mac` of a shard's first record (and the MAC of an empty shard's head).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Shortest audit key accepted, in bytes.
pub const KEY_MIN_BYTES: usize = 32;

/// Most records one transaction appends (a batch appends one per applied movement).
pub const RECORDS_PER_TRANSACTION_MAX: usize = 1000;

type HmacSha256 = Hmac<Sha256>;

/// Why a configured audit key is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditKeyError {
    #[error("shorter than {KEY_MIN_BYTES} bytes")]
    TooShort,
    #[error("a repeated pattern, not a random key")]
    Repeated,
}

/// One HMAC key and its id (a short hash of the key: names it in records, reveals nothing).
pub struct AuditKey {
    id: String,
    secret: SecretSlice<u8>,
}

impl AuditKey {
    /// A key from its configured text (`COFFER_AUDIT_KEY`): at least [`KEY_MIN_BYTES`] bytes,
    /// not one short pattern repeated.
    pub fn new(secret: &str) -> Result<AuditKey, AuditKeyError> {
        let bytes = secret.trim().as_bytes();
        if bytes.len() < KEY_MIN_BYTES {
            return Err(AuditKeyError::TooShort);
        }
        if is_repeated_pattern(bytes) {
            return Err(AuditKeyError::Repeated);
        }
        let digest = Sha256::digest([b"coffer-audit-key-id:".as_slice(), bytes].concat());
        Ok(AuditKey {
            id: hex::encode(&digest[..8]),
            secret: SecretSlice::from(bytes.to_vec()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, bytes: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(self.secret.expose_secret()).expect("any key length");
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Whether `bytes` is one shorter pattern repeated (`aaaa…`, `abcabc…`, `0123…f0123…f`).
pub fn is_repeated_pattern(bytes: &[u8]) -> bool {
    (1..=bytes.len() / 2).any(|period| bytes.iter().enumerate().all(|(i, b)| *b == bytes[i % period]))
}

/// The key that MACs new records and the older keys whose records still verify.
#[derive(Clone)]
pub struct AuditKeys(Arc<(AuditKey, Vec<AuditKey>)>);

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let previous: Vec<&str> = self.0 .1.iter().map(|k| k.id()).collect();
        f.debug_struct("AuditKeys")
            .field("current", &self.0 .0.id())
            .field("previous", &previous)
            .finish()
    }
}

/// Why a MAC does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacCheck {
    Valid,
    /// Made with a key this process does not know (not current, not previous).
    UnknownKey,
    Mismatch,
}

impl AuditKeys {
    pub fn new(current: AuditKey, previous: Vec<AuditKey>) -> AuditKeys {
        AuditKeys(Arc::new((current, previous)))
    }

    pub fn current_id(&self) -> &str {
        self.0 .0.id()
    }

    /// The MAC of `bytes` under the current key.
    pub fn sign(&self, bytes: &[u8]) -> String {
        self.0 .0.mac(bytes)
    }

    /// Checks `mac` of `bytes` under the key named `key_id` (compared in constant time).
    pub fn check(&self, key_id: &str, bytes: &[u8], mac: &str) -> MacCheck {
        let (current, previous) = &*self.0;
        let Some(key) = std::iter::once(current)
            .chain(previous)
            .find(|k| k.id() == key_id)
        else {
            return MacCheck::UnknownKey;
        };
        let Ok(given) = hex::decode(mac) else {
            return MacCheck::Mismatch;
        };
        let mut verifier = HmacSha256::new_from_slice(key.secret.expose_secret()).expect("any key length");
        verifier.update(bytes);
        match verifier.verify_slice(&given) {
            Ok(()) => MacCheck::Valid,
            Err(_) => MacCheck::Mismatch,
        }
    }
}

/// What an action asks to be recorded: who, what, to what. `details` carry ids and enums only,
/// never secrets or PII.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// A user id, `cli`, `anonymous`, or a role (`chain-listener`).
    pub actor: String,
    /// e.g. `auth.login`, `device.added`, `movement.transfer` (see [`crate::audit_chain::actions`]).
    pub action: String,
    /// What it was done to (an id; never a secret or PII).
    pub subject: String,
    pub details: serde_json::Value,
}

impl AuditEntry {
    pub fn new(actor: &str, action: &str, subject: &str, details: serde_json::Value) -> AuditEntry {
        AuditEntry {
            actor: actor.to_string(),
            action: action.to_string(),
            subject: subject.to_string(),
            details,
        }
    }
}

/// Who asks for an audited write and under what action; the store fills in the subject (the id
/// of what it writes).
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub actor: String,
    pub action: &'static str,
    pub details: serde_json::Value,
}

impl Audit {
    pub fn new(actor: &str, action: &'static str) -> Audit {
        Audit {
            actor: actor.to_string(),
            action,
            details: serde_json::json!({}),
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Audit {
        self.details = details;
        self
    }

    pub fn on(&self, subject: &str) -> AuditEntry {
        AuditEntry::new(&self.actor, self.action, subject, self.details.clone())
    }
}

/// A stored audit record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub shard: i32,
    pub seq: i64,
    #[serde(with = "crate::codec::time")]
    pub at: crate::codec::Time,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: serde_json::Value,
    pub prev_mac: String,
    pub key_id: String,
    pub mac: String,
}

/// The bytes a record's MAC covers: its canonical JSON without `mac` (keys sorted).
pub fn canonical_bytes(record: &AuditRecord) -> Vec<u8> {
    serde_json::json!({
        "id": record.id, "shard": record.shard, "seq": record.seq,
        "at": record.at.timestamp_millis(), "actor": record.actor, "action": record.action,
        "subject": record.subject, "details": record.details, "prev_mac": record.prev_mac,
        "key_id": record.key_id,
    })
    .to_string()
    .into_bytes()
}

/// A shard's head: its last record's seq and MAC (seq 0 and [`GENESIS`] when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHead {
    #[serde(rename = "_id")]
    pub shard: i32,
    pub seq: i64,
    pub mac: String,
}

/// Creates every shard's head document (idempotent).
pub(crate) async fn initialise(db: &Database) -> Result<(), StoreError> {
    for shard in 0..SHARDS {
        db.collection::<Document>(AUDIT_HEADS)
            .update_one(
                doc! { "_id": shard },
                doc! { "$setOnInsert": { "seq": 0_i64, "mac": GENESIS } },
            )
            .upsert(true)
            .await?;
    }
    Ok(())
}

/// The records of `entries` chained after `head` and MACed under `keys`' current key.
pub fn chain_records(keys: &AuditKeys, head: &ShardHead, entries: Vec<AuditEntry>) -> Vec<AuditRecord> {
    let (mut seq, mut prev_mac) = (head.seq, head.mac.clone());
    let at = crate::codec::now();
    entries
        .into_iter()
        .map(|entry| {
            seq += 1;
            let mut record = AuditRecord {
                id: new_id(),
                shard: head.shard,
                seq,
                at,
                actor: entry.actor,
                action: entry.action,
                subject: entry.subject,
                details: entry.details,
                prev_mac: std::mem::take(&mut prev_mac),
                key_id: keys.current_id().to_string(),
                mac: String::new(),
            };
            record.mac = keys.sign(&canonical_bytes(&record));
            prev_mac = record.mac.clone();
            record
        })
        .collect()
}

/// Appends `entries` to one shard inside the caller's transaction: one head read, one
/// conditional head update, one `insert_many`.
pub(crate) async fn append(
    db: &Database,
    session: &mut ClientSession,
    keys: Option<&AuditKeys>,
    entries: Vec<AuditEntry>,
) -> Result<(), Retry> {
    if entries.is_empty() {
        return Ok(());
    }
    let keys = keys.ok_or(Retry::Fatal(StoreError::Unsupported(
        "writing audit records without COFFER_AUDIT_KEY",
    )))?;
    if entries.len() > RECORDS_PER_TRANSACTION_MAX {
        return Err(Retry::Fatal(StoreError::Unsupported(
            "more audit records than one transaction holds",
        )));
    }
    let shard = rand::random::<u32>() % SHARDS as u32;
    let head = db
        .collection::<ShardHead>(AUDIT_HEADS)
        .find_one(doc! { "_id": shard })
        .session(&mut *session)
        .await?
        .ok_or_else(|| Retry::Fatal(StoreError::Corrupt(format!("audit shard {shard} has no head"))))?;
    let records = chain_records(keys, &head, entries);
    let last = records.last().expect("entries is not empty");
    // Conditional on the seq read: a writer that raced us into this shard makes it match nothing.
    let statement = doc! {
        "q": { "_id": head.shard, "seq": head.seq },
        "u": { "$set": { "seq": last.seq, "mac": &last.mac } },
    };
    crate::batch::update_exactly(db, session, AUDIT_HEADS, vec![statement]).await?;
    let insert = db
        .collection::<AuditRecord>(AUDIT_RECORDS)
        .insert_many(&records)
        .session(&mut *session)
        .await;
    match insert {
        Ok(_) => Ok(()),
        Err(e) if crate::is_duplicate_key(&e) => Err(Retry::Fatal(StoreError::Corrupt(format!(
            "audit shard {shard} already holds a record past its head seq {}",
            head.seq
        )))),
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// The keys of this store's audit records, if configured.
    pub(crate) fn audit_keys(&self) -> Option<&AuditKeys> {
        self.config.audit_keys.as_ref()
    }

    /// Appends `entries` inside the caller's transaction (a store function's own writes).
    pub(crate) async fn audit_in(
        &self,
        session: &mut ClientSession,
        entries: Vec<AuditEntry>,
    ) -> Result<(), StoreError> {
        append(&self.db, session, self.audit_keys(), entries)
            .await
            .map_err(crate::batch::retry_error)
    }

    /// Runs `body` (a store function's writes, in the given session) and appends the audit entry
    /// it returns, in one transaction retried as a whole: the write happens only with its record.
    pub(crate) async fn audited<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'s> Fn(&'s Store, &'s mut ClientSession) -> BoxFuture<'s, Result<(T, AuditEntry), StoreError>>
            + Send
            + Sync
            + 'static,
    {
        let (store, body) = (self.clone(), Arc::new(body));
        self.with_transaction(move |session| {
            let (store, body) = (store.clone(), body.clone());
            Box::pin(async move {
                let (value, entry) = body(&store, &mut *session).await?;
                store.audit_in(session, vec![entry]).await?;
                Ok(value)
            })
        })
        .await
    }

    /// Updates the one document of `collection` that `filter` matches and records `entry`, in one
    /// transaction; answers the document after the update, [`StoreError::StateConflict`] when
    /// nothing matches (e.g. a staff approval whose earlier approvals changed meanwhile).
    pub(crate) async fn audited_update<T>(
        &self,
        collection: &'static str,
        filter: Document,
        update: Document,
        entry: AuditEntry,
    ) -> Result<T, StoreError>
    where
        T: serde::de::DeserializeOwned + Send + Sync + Unpin + 'static,
    {
        self.audited(move |store, session| {
            let (filter, update, entry) = (filter.clone(), update.clone(), entry.clone());
            Box::pin(async move {
                let updated = store
                    .collection::<T>(collection)
                    .find_one_and_update(filter, update)
                    .return_document(mongodb::options::ReturnDocument::After)
                    .session(session)
                    .await?;
                Ok((updated.ok_or(StoreError::StateConflict)?, entry))
            })
        })
        .await
    }

    /// Records an action that writes nothing else (a failed login, a staff read of user data):
    /// its own transaction. The caller's request fails when this fails.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        details: serde_json::Value,
    ) -> Result<(), StoreError> {
        let entry = AuditEntry::new(actor, action, subject, details);
        self.audited(move |_, _| {
            let entry = entry.clone();
            Box::pin(async move { Ok(((), entry)) })
        })
        .await
    }

    /// Every shard's head as stored, by shard.
    pub async fn audit_heads(&self) -> Result<Vec<ShardHead>, StoreError> {
        use futures::TryStreamExt;
        let heads: Vec<ShardHead> = self
            .collection::<ShardHead>(AUDIT_HEADS)
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .limit(i64::from(SHARDS))
            .await?
            .try_collect()
            .await?;
        Ok(heads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_patterned_keys_are_refused() {
        assert_eq!(AuditKey::new("short").err(), Some(AuditKeyError::TooShort));
        assert_eq!(
            AuditKey::new(&"ab".repeat(32)).err(),
            Some(AuditKeyError::Repeated)
        );
        assert!(AuditKey::new("8c1f0e5b7a2d4c6e9f1b3a5d7c9e0f2a4b6d8c0e").is_ok());
    }

    #[test]
    fn a_previous_key_still_verifies_and_an_unknown_one_is_named() {
        let old = AuditKey::new("0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c").unwrap();
        let old_id = old.id().to_string();
        let old_mac = AuditKeys::new(old, vec![]).sign(b"x");
        let new = AuditKey::new("9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d").unwrap();
        let again = AuditKey::new("0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c").unwrap();
        let keys = AuditKeys::new(new, vec![again]);
        assert_eq!(keys.check(&old_id, b"x", &old_mac), MacCheck::Valid);
        assert_eq!(keys.check(&old_id, b"y", &old_mac), MacCheck::Mismatch);
        assert_eq!(
            keys.check("feedfeedfeedfeed", b"x", &old_mac),
            MacCheck::UnknownKey
        );
    }
}
