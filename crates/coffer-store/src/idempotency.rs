//! API idempotency keys (L5): the full response is stored per (user, key) for 24 hours.
//!
//! `begin` claims the key with a lease; the same key with the same request fingerprint replays
//! the stored response, with another fingerprint it is an error, and while the first request is
//! still running it is a conflict. A request that ended in a retryable failure releases the key.

use std::time::Duration;

use mongodb::bson::{doc, DateTime};
use serde::{Deserialize, Serialize};

use crate::collections::IDEMPOTENCY_KEYS;
use crate::{Store, StoreError};

/// How long a stored response is kept (a TTL index removes it afterwards).
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a claim protects a running request before another may take the key over.
pub const LEASE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    /// Stored as BSON binary.
    #[serde(with = "crate::codec::binary")]
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IdempotencyDoc {
    #[serde(rename = "_id")]
    id: String,
    fingerprint: String,
    response: Option<StoredResponse>,
    locked_until: DateTime,
    created_at: DateTime,
}

#[derive(Debug)]
pub enum Begin {
    /// The caller owns the key and must `complete` or `release` it.
    Started,
    /// Same request seen before: send this response again.
    Replay(StoredResponse),
    /// The first request with this key is still running.
    InProgress,
    /// The key was used with a different request.
    Mismatch,
}

/// What [`Store::idempotency_lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    Absent,
    Replay(StoredResponse),
    Mismatch,
    /// Claimed by the other (claim-based) path and still running.
    InProgress,
}

pub(crate) fn key_id(scope: &str, key: &str) -> String {
    format!("{scope}:{key}")
}

impl IdempotencyDoc {
    /// [`IdempotencyDoc::completed`] from its parts (a write that is not one movement).
    pub(crate) fn completed_parts(
        scope: &str,
        key: &str,
        fingerprint: &str,
        response: StoredResponse,
        now: crate::codec::Time,
    ) -> Self {
        let now = crate::codec::bson_time(&now);
        IdempotencyDoc {
            id: key_id(scope, key),
            fingerprint: fingerprint.to_string(),
            response: Some(response),
            locked_until: now,
            created_at: now,
        }
    }

    /// A record completed at once: written in the money movement's own database transaction.
    pub(crate) fn completed(
        write: &crate::batch::IdempotentWrite,
        response: StoredResponse,
        now: crate::codec::Time,
    ) -> Self {
        let now = crate::codec::bson_time(&now);
        IdempotencyDoc {
            id: key_id(&write.scope, &write.key),
            fingerprint: write.fingerprint.clone(),
            response: Some(response),
            locked_until: now,
            created_at: now,
        }
    }
}

impl Store {
    pub async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<Begin, StoreError> {
        let keys = self.collection::<IdempotencyDoc>(IDEMPOTENCY_KEYS);
        let id = key_id(scope, key);
        let now = DateTime::now();
        let lease_end = DateTime::from_millis(now.timestamp_millis() + LEASE.as_millis() as i64);
        let claim = IdempotencyDoc {
            id: id.clone(),
            fingerprint: fingerprint.to_string(),
            response: None,
            locked_until: lease_end,
            created_at: now,
        };
        match keys.insert_one(&claim).await {
            Ok(_) => return Ok(Begin::Started),
            Err(e) if crate::is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(existing) = keys.find_one(doc! { "_id": &id }).await? else {
            return Ok(Begin::InProgress); // expired between the two calls; the client retries
        };
        if existing.fingerprint != fingerprint {
            return Ok(Begin::Mismatch);
        }
        if let Some(response) = existing.response {
            return Ok(Begin::Replay(response));
        }
        // A claim whose lease ran out (its process died) may be taken over, by one caller only.
        let takeover = keys
            .update_one(
                doc! { "_id": &id, "response": null, "locked_until": { "$lt": now } },
                doc! { "$set": { "locked_until": lease_end } },
            )
            .await?;
        Ok(if takeover.modified_count == 1 {
            Begin::Started
        } else {
            Begin::InProgress
        })
    }

    /// What a money route's retry finds under its key: the response stored with the movement's
    /// own transaction, a different request, or nothing (never claimed: the movement path writes
    /// its record only when the money moves).
    pub async fn idempotency_lookup(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<Lookup, StoreError> {
        let found = self
            .collection::<IdempotencyDoc>(IDEMPOTENCY_KEYS)
            .find_one(doc! { "_id": key_id(scope, key) })
            .await?;
        Ok(match found {
            None => Lookup::Absent,
            Some(record) if record.fingerprint != fingerprint => Lookup::Mismatch,
            Some(IdempotencyDoc {
                response: Some(response),
                ..
            }) => Lookup::Replay(response),
            Some(_) => Lookup::InProgress,
        })
    }

    pub async fn idempotency_complete(
        &self,
        scope: &str,
        key: &str,
        response: StoredResponse,
    ) -> Result<(), StoreError> {
        let response = mongodb::bson::to_bson(&response)?;
        self.collection::<IdempotencyDoc>(IDEMPOTENCY_KEYS)
            .update_one(
                doc! { "_id": key_id(scope, key) },
                doc! { "$set": { "response": response } },
            )
            .await?;
        Ok(())
    }

    /// Forgets a claim whose request failed in a way the client should retry.
    pub async fn idempotency_release(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        self.collection::<IdempotencyDoc>(IDEMPOTENCY_KEYS)
            .delete_one(doc! { "_id": key_id(scope, key), "response": null })
            .await?;
        Ok(())
    }
}
