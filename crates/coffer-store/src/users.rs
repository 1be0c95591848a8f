//! Users and staff accounts.

use mongodb::bson::doc;

use crate::collections::USERS;
use crate::model::{Role, UserDoc};
use crate::{new_id, Store, StoreError};

impl Store {
    /// Creates a user; [`StoreError::AlreadyExists`] when the e-mail is taken.
    pub async fn create_user(
        &self,
        email: &str,
        password_hash: String,
        role: Role,
        audit: crate::audit::Audit,
    ) -> Result<UserDoc, StoreError> {
        let user = UserDoc {
            id: new_id(),
            email: email.to_lowercase(),
            password_hash,
            role,
            totp_secret: None,
            totp_last_step: None,
            created_at: crate::codec::now(),
            risk: None,
        };
        self.audited(move |store, session| {
            let (user, entry) = (user.clone(), audit.on(&user.id));
            Box::pin(async move {
                match store
                    .collection::<UserDoc>(USERS)
                    .insert_one(&user)
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

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserDoc>, StoreError> {
        Ok(self
            .collection::<UserDoc>(USERS)
            .find_one(doc! { "email": email.to_lowercase() })
            .await?)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserDoc>, StoreError> {
        Ok(self
            .collection::<UserDoc>(USERS)
            .find_one(doc! { "_id": id })
            .await?)
    }

    /// Replaces a user's password hash.
    pub async fn set_password_hash(&self, id: &str, password_hash: String) -> Result<(), StoreError> {
        let updated = self
            .collection::<UserDoc>(USERS)
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

    /// Enrolls (or re-enrolls) a TOTP secret; codes of the old one stop working.
    pub async fn set_totp_secret(&self, id: &str, secret_base32: &str) -> Result<(), StoreError> {
        let updated = self
            .collection::<UserDoc>(USERS)
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "totp_secret": secret_base32 }, "$unset": { "totp_last_step": "" } },
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
            .collection::<UserDoc>(USERS)
            .update_one(fresh, doc! { "$set": { "totp_last_step": step } })
            .await?;
        Ok(updated.modified_count == 1)
    }
}
