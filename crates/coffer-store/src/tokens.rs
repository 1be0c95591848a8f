//! Sessions and refresh tokens (S1).
//!
//! A session (a refresh-token family) is one document: who, since when, until when at most
//! (the absolute lifetime), and whether it was revoked. It is the truth that every replica reads:
//! access tokens carry its id and stop working once it is revoked. Refresh tokens are stored as
//! SHA-256 hashes, single use; consuming one and storing its successor is one database
//! transaction that also writes the session, so a concurrent revocation (reuse detected, logout,
//! password change, staff action) either happens before it (no successor) or after it (the
//! successor is revoked with its session). Presenting a used token revokes its session.

use futures::future::BoxFuture;
use mongodb::bson::doc;
use mongodb::ClientSession;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, Time};
use crate::collections::{REFRESH_TOKENS, SESSIONS};
use crate::model::RefreshTokenDoc;
use crate::{Store, StoreError};

/// Why a session ended (kept on the session; also the audit action's suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// A used refresh token was presented again: someone holds a stolen copy.
    RefreshReuse,
    Logout,
    /// "Sign out everywhere".
    LogoutAll,
    PasswordChange,
    /// Support or an admin ended the user's sessions.
    StaffAction,
}

impl RevokeReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RevokeReason::RefreshReuse => "refresh_reuse",
            RevokeReason::Logout => "logout",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::PasswordChange => "password_change",
            RevokeReason::StaffAction => "staff_action",
        }
    }
}

/// A login session: the family of its refresh tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    #[serde(with = "codec::time")]
    pub created_at: Time,
    /// The absolute end: no refresh extends a session beyond it.
    #[serde(with = "codec::time")]
    pub expires_at: Time,
    #[serde(with = "codec::time_opt", default)]
    pub revoked_at: Option<Time>,
    #[serde(default)]
    pub revoked_reason: Option<RevokeReason>,
    /// Rotations so far; every rotation writes it, so a rotation and a revocation of the same
    /// session cannot both commit unseen by each other.
    pub rotations: i64,
}

impl SessionDoc {
    /// Not revoked and not past its absolute lifetime at `now`.
    pub fn is_active_at(&self, now: Time) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Rotation {
    /// The token was live and is now used; its successor was stored in the same session.
    Rotated {
        user_id: String,
        auth_time: i64,
        session_id: String,
        session_expires_at: Time,
    },
    /// The token was already used: its session is revoked.
    ReuseDetected { user_id: String },
    /// Unknown, expired, or its session is revoked or past its lifetime.
    Invalid,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn token_doc(token: &str, session: &SessionDoc, auth_time: i64, ttl: chrono::Duration) -> RefreshTokenDoc {
    let now = codec::now();
    RefreshTokenDoc {
        token_hash: hash_token(token),
        user_id: session.user_id.clone(),
        family_id: session.id.clone(),
        auth_time,
        created_at: now,
        // A refresh token never outlives its session.
        expires_at: (now + ttl).min(session.expires_at),
        used_at: None,
        revoked: false,
    }
}

/// What the rotation transaction found.
enum Consumed {
    Rotated(Box<(RefreshTokenDoc, SessionDoc)>),
    /// The token is not live (used, expired, revoked or unknown).
    NotLive,
    /// The token was live but its session is not.
    SessionEnded,
}

impl Store {
    /// Starts a session for `user_id` that ends at the latest after `lifetime`, with its first
    /// refresh token (`token`, kept as a hash).
    pub async fn start_session(
        &self,
        user_id: &str,
        token: &str,
        auth_time: i64,
        refresh_ttl: chrono::Duration,
        lifetime: chrono::Duration,
        audit: crate::audit::Audit,
    ) -> Result<SessionDoc, StoreError> {
        let now = codec::now();
        let session = SessionDoc {
            id: crate::new_id(),
            user_id: user_id.to_string(),
            created_at: now,
            expires_at: now + lifetime,
            revoked_at: None,
            revoked_reason: None,
            rotations: 0,
        };
        let token = token_doc(token, &session, auth_time, refresh_ttl);
        let entry = audit
            .with_details(serde_json::json!({ "session_id": &session.id }))
            .on(user_id);
        self.audited(move |store, db_session| {
            let (session, token, entry) = (session.clone(), token.clone(), entry.clone());
            Box::pin(async move {
                let sessions = store.collection::<SessionDoc>(SESSIONS);
                sessions.insert_one(&session).session(&mut *db_session).await?;
                let tokens = store.collection::<RefreshTokenDoc>(REFRESH_TOKENS);
                tokens.insert_one(token).session(&mut *db_session).await?;
                Ok((session, entry))
            })
        })
        .await
    }

    /// Consumes `token` if it is live and its session is active, and stores `successor` in the
    /// same session, in one transaction. A token presented again revokes its session.
    pub async fn rotate_refresh_token(
        &self,
        token: &str,
        successor: &str,
        ttl: chrono::Duration,
    ) -> Result<Rotation, StoreError> {
        let shared = std::sync::Arc::new((self.clone(), hash_token(token), successor.to_string(), ttl));
        let consumed = self
            .with_transaction(|session| {
                let shared = shared.clone();
                Box::pin(async move {
                    let (store, hash, successor, ttl) = &*shared;
                    consume(store, session, hash, successor, *ttl).await
                }) as BoxFuture<'_, Result<Consumed, StoreError>>
            })
            .await?;
        match consumed {
            Consumed::Rotated(found) => {
                let (used, session) = *found;
                Ok(Rotation::Rotated {
                    user_id: used.user_id,
                    auth_time: used.auth_time,
                    session_id: session.id,
                    session_expires_at: session.expires_at,
                })
            }
            Consumed::SessionEnded => Ok(Rotation::Invalid),
            Consumed::NotLive => self.reuse_or_invalid(&shared.1).await,
        }
    }

    /// A token that is not live: if it was used, someone replays it and its session is revoked.
    async fn reuse_or_invalid(&self, hash: &str) -> Result<Rotation, StoreError> {
        let tokens = self.collection::<RefreshTokenDoc>(REFRESH_TOKENS);
        match tokens.find_one(doc! { "_id": hash }).await? {
            Some(known) if known.used_at.is_some() => {
                self.revoke_session(&known.family_id, RevokeReason::RefreshReuse)
                    .await?;
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

    /// The session `id`, if it exists (a session past its lifetime may have been removed).
    pub async fn session(&self, id: &str) -> Result<Option<SessionDoc>, StoreError> {
        Ok(self
            .collection::<SessionDoc>(SESSIONS)
            .find_one(doc! { "_id": id })
            .await?)
    }

    /// Revokes one session; true if it was active.
    pub async fn revoke_session(&self, id: &str, reason: RevokeReason) -> Result<bool, StoreError> {
        let revoked = self
            .collection::<SessionDoc>(SESSIONS)
            .update_one(doc! { "_id": id, "revoked_at": null }, revocation(reason)?)
            .await?;
        Ok(revoked.modified_count == 1)
    }

    /// Revokes every session of `user_id`; returns how many were active.
    pub async fn revoke_user_sessions(&self, user_id: &str, reason: RevokeReason) -> Result<u64, StoreError> {
        let revoked = self
            .collection::<SessionDoc>(SESSIONS)
            .update_many(
                doc! { "user_id": user_id, "revoked_at": null },
                revocation(reason)?,
            )
            .await?;
        Ok(revoked.modified_count)
    }
}

fn revocation(reason: RevokeReason) -> Result<mongodb::bson::Document, StoreError> {
    Ok(doc! { "$set": {
        "revoked_at": codec::bson_time(&codec::now()),
        "revoked_reason": mongodb::bson::to_bson(&reason)?,
    } })
}

/// The rotation's transaction body: consume the token, write the session (only while it is
/// active), store the successor.
async fn consume(
    store: &Store,
    session: &mut ClientSession,
    hash: &str,
    successor: &str,
    ttl: chrono::Duration,
) -> Result<Consumed, StoreError> {
    let now = codec::bson_time(&codec::now());
    let live = doc! { "_id": hash, "used_at": null, "revoked": false, "expires_at": { "$gt": now } };
    let Some(used) = store
        .collection::<RefreshTokenDoc>(REFRESH_TOKENS)
        .find_one_and_update(live, doc! { "$set": { "used_at": now } })
        .session(&mut *session)
        .await?
    else {
        return Ok(Consumed::NotLive);
    };
    let active = doc! { "_id": &used.family_id, "revoked_at": null, "expires_at": { "$gt": now } };
    let Some(family) = store
        .collection::<SessionDoc>(SESSIONS)
        .find_one_and_update(active, doc! { "$inc": { "rotations": 1 } })
        .session(&mut *session)
        .await?
    else {
        return Ok(Consumed::SessionEnded);
    };
    if let Some(pause) = store.config.rotation_pause {
        tokio::time::sleep(pause).await;
    }
    store
        .collection::<RefreshTokenDoc>(REFRESH_TOKENS)
        .insert_one(token_doc(successor, &family, used.auth_time, ttl))
        .session(&mut *session)
        .await?;
    Ok(Consumed::Rotated(Box::new((used, family))))
}
