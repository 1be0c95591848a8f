//! Devices of a user (S3, S7): a device is registered by the app with its public key, becomes
//! trusted after a cooling-off period or at once when an already trusted device vouches for it,
//! and can be revoked. Only a trusted device's signature authorizes a withdrawal, and each of its
//! nonces is accepted once.

use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime};
use serde::{Deserialize, Serialize};

use crate::audit::Audit;
use crate::collections::{DEVICES, DEVICE_NONCES};
use crate::{new_id, Store, StoreError};

/// The most devices a user may have registered (revoked ones included): a bound, not a policy.
pub const DEVICES_PER_USER_MAX: u64 = 20;
/// The unique index of `(device_id, nonce)`.
pub const NONCE_INDEX: &str = "device_nonce_unique";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    /// The name the user gave it ("Pixel 8"); shown back to the user only.
    pub name: String,
    #[serde(with = "crate::codec::time")]
    pub created_at: crate::codec::Time,
    /// From this instant the device is trusted (registration + cooling-off, or the moment a
    /// trusted device vouched for it).
    #[serde(with = "crate::codec::time")]
    pub trusted_from: crate::codec::Time,
    /// `cooling_off`, or the id of the device that vouched for it.
    pub trusted_by: String,
    /// The device's Ed25519 public key, base64 (32 bytes). Devices registered before keys were
    /// required have none and can sign nothing: they must be registered again.
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(with = "crate::codec::time_opt", default)]
    pub revoked_at: Option<crate::codec::Time>,
}

impl DeviceDoc {
    pub fn is_trusted_at(&self, now: crate::codec::Time) -> bool {
        self.revoked_at.is_none() && self.trusted_from <= now
    }
}

impl Store {
    /// Registers a device; it is trusted once `cooling_off` has passed. Refused with
    /// [`StoreError::LimitExceeded`] beyond [`DEVICES_PER_USER_MAX`].
    pub async fn register_device(
        &self,
        user_id: &str,
        name: &str,
        public_key: &str,
        cooling_off: std::time::Duration,
        audit: Audit,
    ) -> Result<DeviceDoc, StoreError> {
        let devices = self.collection::<DeviceDoc>(DEVICES);
        if devices.count_documents(doc! { "user_id": user_id }).await? >= DEVICES_PER_USER_MAX {
            return Err(StoreError::LimitExceeded);
        }
        let now = crate::codec::now();
        let cooling_off_ms = i64::try_from(cooling_off.as_millis()).unwrap_or(i64::MAX / 2);
        let device = DeviceDoc {
            id: new_id(),
            user_id: user_id.to_string(),
            name: name.to_string(),
            created_at: now,
            trusted_from: crate::codec::from_millis(now.timestamp_millis().saturating_add(cooling_off_ms)),
            trusted_by: "cooling_off".into(),
            public_key: Some(public_key.to_string()),
            revoked_at: None,
        };
        self.audited(move |store, session| {
            let (device, entry) = (device.clone(), audit.on(&device.id));
            Box::pin(async move {
                let devices = store.collection::<DeviceDoc>(DEVICES);
                devices.insert_one(&device).session(session).await?;
                Ok((device, entry))
            })
        })
        .await
    }

    /// The user's devices, newest first.
    pub async fn devices_of(&self, user_id: &str) -> Result<Vec<DeviceDoc>, StoreError> {
        Ok(self
            .collection::<DeviceDoc>(DEVICES)
            .find(doc! { "user_id": user_id })
            .sort(doc! { "_id": -1 })
            .limit(DEVICES_PER_USER_MAX as i64)
            .await?
            .try_collect()
            .await?)
    }

    /// The user's device `id` (another user's device is `None`).
    pub async fn device_of(&self, user_id: &str, id: &str) -> Result<Option<DeviceDoc>, StoreError> {
        Ok(self
            .collection::<DeviceDoc>(DEVICES)
            .find_one(doc! { "_id": id, "user_id": user_id })
            .await?)
    }

    /// Trusts device `id` now, vouched for by the user's trusted device `by`. A revoked device
    /// stays revoked ([`StoreError::StateConflict`]).
    pub async fn trust_device(
        &self,
        user_id: &str,
        id: &str,
        by: &str,
        audit: Audit,
    ) -> Result<DeviceDoc, StoreError> {
        let filter = doc! { "_id": id, "user_id": user_id, "revoked_at": null };
        let update = doc! { "$set": { "trusted_from": DateTime::now(), "trusted_by": by } };
        let updated = self
            .audited_update::<DeviceDoc>(DEVICES, filter, update, audit.on(id))
            .await;
        match updated {
            Err(StoreError::StateConflict) if self.device_of(user_id, id).await?.is_none() => {
                Err(StoreError::NotFound)
            }
            other => other,
        }
    }

    /// Accepts `nonce` of device `id` once, across every API replica: `false` when it was
    /// accepted before (a replay). Kept until `expires_at`, when no signature carrying it can be
    /// fresh any more.
    pub async fn consume_device_nonce(
        &self,
        device_id: &str,
        nonce: &str,
        expires_at: crate::codec::Time,
    ) -> Result<bool, StoreError> {
        let record = doc! {
            "_id": new_id(),
            "device_id": device_id,
            "nonce": nonce,
            "expires_at": DateTime::from_millis(expires_at.timestamp_millis()),
        };
        match self
            .collection::<mongodb::bson::Document>(DEVICE_NONCES)
            .insert_one(record)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if crate::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes device `id` (idempotent).
    pub async fn revoke_device(
        &self,
        user_id: &str,
        id: &str,
        audit: Audit,
    ) -> Result<DeviceDoc, StoreError> {
        let device = self.device_of(user_id, id).await?.ok_or(StoreError::NotFound)?;
        if device.revoked_at.is_some() {
            return Ok(device);
        }
        let filter = doc! { "_id": id, "user_id": user_id, "revoked_at": null };
        let update = doc! { "$set": { "revoked_at": DateTime::now() } };
        let entry = audit.on(id);
        self.audited(move |store, session| {
            let (filter, update, entry) = (filter.clone(), update.clone(), entry.clone());
            Box::pin(async move {
                let devices = store.collection::<DeviceDoc>(DEVICES);
                devices.update_one(filter, update).session(session).await?;
                Ok(((), entry))
            })
        })
        .await?;
        self.device_of(user_id, id).await?.ok_or(StoreError::NotFound)
    }
}
