//! Users and staff accounts.
//!
//! A user's e-mail and TOTP secret are stored sealed ([`crate::pii`]): the document holds the
//! sealed values and the e-mail's blind index (`email_index`, unique), never the e-mail itself.
//! Callers see [`UserDoc`] with the values opened.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Time};
use crate::collections::USERS;
use crate::model::{Role, UserDoc};
use crate::pii::{normalise_email, PiiError, PiiKeys, Sealed};
use crate::{new_id, Store, StoreError};

/// The unique index of the e-mail's blind index.
pub const EMAIL_INDEX: &str = "email_index_unique";

/// The index of e-mails in clear that accounts had before PII encryption (dropped by
/// [`Store::encrypt_users_in_clear`]).
const LEGACY_EMAIL_INDEX: &str = "email_unique";

/// Users one pass of [`Store::encrypt_users_in_clear`] reads at most.
const MIGRATION_BATCH: i64 = 500;

const EMAIL: &str = "email";
const TOTP_SECRET: &str = "totp_secret";

/// A user document as stored. A store module that reads users reads this type and opens it
/// with [`open_user`]: `UserDoc` is never read from or written to the collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredUser {
    #[serde(rename = "_id")]
    id: String,
    /// The normalised e-mail, sealed.
    email: Sealed,
    /// HMAC of the normalised e-mail under the index key; unique.
    email_index: String,
    password_hash: String,
    role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    totp_secret: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    totp_last_step: Option<i64>,
    #[serde(with = "codec::time")]
    created_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    risk: Option<coffer_domain::policy::RiskProfile>,
}

impl Store {
    /// The PII keys, or a refusal when none are configured (fail closed).
    pub(crate) fn pii(&self) -> Result<&PiiKeys, StoreError> {
        self.config
            .pii
            .as_ref()
            .ok_or(StoreError::Pii(PiiError::NotConfigured))
    }

    /// Creates a user; [`StoreError::AlreadyExists`] when the e-mail is taken.
    pub async fn create_user(
        &self,
        email: &str,
        password_hash: String,
        role: Role,
        audit: crate::audit::Audit,
    ) -> Result<UserDoc, StoreError> {
        let keys = self.pii()?;
        let user = UserDoc {
            id: new_id(),
            email: normalise_email(email),
            password_hash,
            role,
            totp_secret: None,
            totp_last_step: None,
            created_at: crate::codec::now(),
            risk: None,
        };
        let stored = StoredUser {
            id: user.id.clone(),
            email: keys.seal(&user.id, EMAIL, &user.email).await?,
            email_index: keys.email_index(&user.email),
            password_hash: user.password_hash.clone(),
            role,
            totp_secret: None,
            totp_last_step: None,
            created_at: user.created_at,
            risk: None,
        };
        self.audited(move |store, session| {
            let (user, stored, entry) = (user.clone(), stored.clone(), audit.on(&user.id));
            Box::pin(async move {
                match store
                    .collection::<StoredUser>(USERS)
                    .insert_one(&stored)
                    .session(session)
                    .await
                {
                    Ok(_) => Ok((user, entry)),
                    Err(e) if crate::is_duplicate_key(&e) => Err(StoreError::AlreadyExists),
                    Err(e) => Err(e.into()),
                }
            })
        })
        .await
    }

    /// The account of `email` (any case), found by its blind index.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserDoc>, StoreError> {
        let keys = self.pii()?;
        let found = self
            .collection::<StoredUser>(USERS)
            .find_one(doc! { "email_index": keys.email_index(email) })
            .await?;
        let Some(user) = found else {
            return Ok(None);
        };
        let user = open_user(keys, user).await?;
        // An index collision (or a planted index) never answers for another account.
        Ok((user.email == normalise_email(email)).then_some(user))
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserDoc>, StoreError> {
        let keys = self.pii()?;
        match self
            .collection::<StoredUser>(USERS)
            .find_one(doc! { "_id": id })
            .await?
        {
            Some(user) => Ok(Some(open_user(keys, user).await?)),
            None => Ok(None),
        }
    }

    /// Replaces a user's password hash.
    pub async fn set_password_hash(&self, id: &str, password_hash: String) -> Result<(), StoreError> {
        let updated = self
            .collection::<Document>(USERS)
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "password_hash": password_hash } },
            )
            .await?;
        if updated.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Enrolls (or re-enrolls) a TOTP secret, sealed; codes of the old one stop working.
    pub async fn set_totp_secret(&self, id: &str, secret_base32: &str) -> Result<(), StoreError> {
        let sealed = self.pii()?.seal(id, TOTP_SECRET, secret_base32).await?;
        let updated = self
            .collection::<Document>(USERS)
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "totp_secret": mongodb::bson::to_bson(&sealed)? }, "$unset": { "totp_last_step": "" } },
            )
            .await?;
        if updated.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Records that a TOTP code of `step` was used, unless one of this step or a later one was
    /// (a replayed code): true if this is the first use.
    pub async fn consume_totp_step(&self, id: &str, step: i64) -> Result<bool, StoreError> {
        let fresh = doc! { "_id": id, "$or": [
            { "totp_last_step": null },
            { "totp_last_step": { "$lt": step } },
        ] };
        let updated = self
            .collection::<Document>(USERS)
            .update_one(fresh, doc! { "$set": { "totp_last_step": step } })
            .await?;
        Ok(updated.modified_count == 1)
    }

    /// How many user documents still hold their e-mail in clear (written before PII encryption).
    /// Roles refuse to start while there are any: `coffer user encrypt-pii` seals them.
    pub async fn users_in_clear(&self) -> Result<u64, StoreError> {
        Ok(self
            .collection::<Document>(USERS)
            .count_documents(doc! { "email_index": { "$exists": false } })
            .await?)
    }

    /// Seals the e-mail (and TOTP secret) of every user still stored in clear, adds the blind
    /// index and drops the old index of clear e-mails; the number sealed. Safe to run again
    /// (each update is conditional on the document being still in clear).
    pub async fn encrypt_users_in_clear(&self) -> Result<u64, StoreError> {
        let keys = self.pii()?;
        let users = self.collection::<Document>(USERS);
        let mut sealed = 0;
        loop {
            let batch: Vec<Document> = users
                .find(doc! { "email_index": { "$exists": false } })
                .limit(MIGRATION_BATCH)
                .await?
                .try_collect()
                .await?;
            if batch.is_empty() {
                break;
            }
            for user in batch {
                let corrupt = |what: &str| StoreError::Corrupt(format!("a user in clear has no {what}"));
                let id = user
                    .get_str("_id")
                    .map_err(|_| corrupt("string _id"))?
                    .to_string();
                let email = normalise_email(user.get_str(EMAIL).map_err(|_| corrupt("e-mail"))?);
                let mut set = doc! {
                    "email": mongodb::bson::to_bson(&keys.seal(&id, EMAIL, &email).await?)?,
                    "email_index": keys.email_index(&email),
                };
                if let Ok(secret) = user.get_str(TOTP_SECRET) {
                    let secret = keys.seal(&id, TOTP_SECRET, secret).await?;
                    set.insert(TOTP_SECRET, mongodb::bson::to_bson(&secret)?);
                }
                let updated = users
                    .update_one(
                        doc! { "_id": &id, "email_index": { "$exists": false } },
                        doc! { "$set": set },
                    )
                    .await?;
                sealed += updated.modified_count;
            }
        }
        // Gone with the e-mails in clear; absent already on databases created sealed.
        let _ = users.drop_index(LEGACY_EMAIL_INDEX).await;
        Ok(sealed)
    }
}

/// The stored user with its sealed values opened.
pub(crate) async fn open_user(keys: &PiiKeys, user: StoredUser) -> Result<UserDoc, StoreError> {
    let email = keys.open(&user.id, EMAIL, &user.email).await?;
    let totp_secret = match &user.totp_secret {
        Some(sealed) => Some(keys.open(&user.id, TOTP_SECRET, sealed).await?),
        None => None,
    };
    Ok(UserDoc {
        id: user.id,
        email,
        password_hash: user.password_hash,
        role: user.role,
        totp_secret,
        totp_last_step: user.totp_last_step,
        created_at: user.created_at,
        risk: user.risk,
    })
}
