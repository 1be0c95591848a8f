//! Refresh tokens: stored as SHA-256 hashes, rotated on use, grouped in families. Presenting a
//! token that was already used revokes its whole family (someone holds a stolen copy).

use chrono::Utc;
use mongodb::bson::{doc, DateTime};
use sha2::{Digest, Sha256};

use crate::collections::REFRESH_TOKENS;
use crate::model::RefreshTokenDoc;
use crate::{Store, StoreError};

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Rotation {
    /// The token was valid and is now used; its successor was stored in the same family.
    Rotated { user_id: String, auth_time: i64 },
    /// The token was already used: the family is revoked.
    ReuseDetected { user_id: String },
    /// Unknown, expired or revoked.
    Invalid,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Store {
    /// Stores a new refresh token (its hash) in `family_id`.
    pub async fn store_refresh_token(
        &self,
        token: &str,
        user_id: &str,
        family_id: &str,
        auth_time: i64,
        ttl: chrono::Duration,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let doc = RefreshTokenDoc {
            token_hash: hash_token(token),
            user_id: user_id.to_string(),
            family_id: family_id.to_string(),
            auth_time,
            created_at: crate::codec::from_millis(now.timestamp_millis()),
            expires_at: crate::codec::from_millis((now + ttl).timestamp_millis()),
            used_at: None,
            revoked: false,
        };
        self.collection::<RefreshTokenDoc>(REFRESH_TOKENS)
            .insert_one(doc)
            .await?;
        Ok(())
    }

    /// Marks `token` used if it is live, atomically; stores `successor` in the same family.
    pub async fn rotate_refresh_token(
        &self,
        token: &str,
        successor: &str,
        ttl: chrono::Duration,
    ) -> Result<Rotation, StoreError> {
        let tokens = self.collection::<RefreshTokenDoc>(REFRESH_TOKENS);
        let hash = hash_token(token);
        let now = DateTime::now();
        let live = doc! { "_id": &hash, "used_at": null, "revoked": false, "expires_at": { "$gt": now } };
        if let Some(used) = tokens
            .find_one_and_update(live, doc! { "$set": { "used_at": now } })
            .await?
        {
            self.store_refresh_token(successor, &used.user_id, &used.family_id, used.auth_time, ttl)
                .await?;
            return Ok(Rotation::Rotated {
                user_id: used.user_id,
                auth_time: used.auth_time,
            });
        }
        match tokens.find_one(doc! { "_id": &hash }).await? {
            Some(known) if known.used_at.is_some() => {
                tokens
                    .update_many(
                        doc! { "family_id": &known.family_id },
                        doc! { "$set": { "revoked": true } },
                    )
                    .await?;
                Ok(Rotation::ReuseDetected {
                    user_id: known.user_id,
                })
            }
            _ => Ok(Rotation::Invalid),
        }
    }

    /// Whether a family has been revoked (access tokens carry their family).
    pub async fn is_family_revoked(&self, family_id: &str) -> Result<bool, StoreError> {
        let revoked = self
            .collection::<RefreshTokenDoc>(REFRESH_TOKENS)
            .find_one(doc! { "family_id": family_id, "revoked": true })
            .await?;
        Ok(revoked.is_some())
    }
}
