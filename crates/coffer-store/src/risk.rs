//! Users' risk state (S8): verification tier, flags, freeze. Each change commits with its audit
//! record in one database transaction.

use coffer_domain::policy::{RiskProfile, Tier};
use mongodb::bson::{doc, to_bson};

use crate::audit::AuditEntry;
use crate::collections::USERS;
use crate::model::{Role, UserDoc};
use crate::{Store, StoreError};

/// A change of a user's risk state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RiskChange {
    /// The KYC provider's verdict: the tier and the flags it reports (replacing the old ones).
    Verification {
        tier: Tier,
        flags: Vec<String>,
    },
    Freeze,
    Unfreeze,
}

impl RiskChange {
    fn apply(&self, mut profile: RiskProfile) -> RiskProfile {
        match self {
            RiskChange::Verification { tier, flags } => {
                profile.tier = *tier;
                profile.flags = flags.clone();
            }
            RiskChange::Freeze => profile.frozen = true,
            RiskChange::Unfreeze => profile.frozen = false,
        }
        profile
    }
}

/// A user's risk state as the policy reads it: the stored profile, or the default tier's for a
/// user nobody has assessed yet.
pub fn profile_of(user: &UserDoc, default_tier: Tier) -> RiskProfile {
    user.risk
        .clone()
        .unwrap_or_else(|| RiskProfile::default_for(default_tier))
}

/// What a risk change reads of a user.
#[derive(serde::Deserialize)]
struct RoleAndRisk {
    role: Role,
    #[serde(default)]
    risk: Option<RiskProfile>,
}

impl Store {
    /// Applies `change` to user `user_id` (a user account, not staff) and appends `audit` (its
    /// details joined by the profile before and after) to the audit log, in one transaction; the
    /// profile after it.
    pub async fn change_user_risk(
        &self,
        user_id: &str,
        change: RiskChange,
        default_tier: Tier,
        audit: crate::audit::Audit,
    ) -> Result<RiskProfile, StoreError> {
        let user_id = user_id.to_string();
        self.audited(move |store, session| {
            let (user_id, audit, change) = (user_id.clone(), audit.clone(), change.clone());
            Box::pin(async move {
                // Only the role and the risk state: the sealed personal data stays sealed.
                let users = store.collection::<RoleAndRisk>(USERS);
                let user = users
                    .find_one(doc! { "_id": &user_id })
                    .projection(doc! { "role": 1, "risk": 1 })
                    .session(&mut *session)
                    .await?
                    .filter(|u| u.role == Role::User)
                    .ok_or(StoreError::NotFound)?;
                let before = user
                    .risk
                    .unwrap_or_else(|| RiskProfile::default_for(default_tier));
                let after = change.apply(before.clone());
                users
                    .update_one(
                        doc! { "_id": &user_id },
                        doc! { "$set": { "risk": to_bson(&after)? } },
                    )
                    .session(&mut *session)
                    .await?;
                let mut details = serde_json::json!({
                    "tier": after.tier.as_str(), "previous_tier": before.tier.as_str(),
                    "flags": after.flags, "frozen": after.frozen,
                });
                if let (Some(all), serde_json::Value::Object(given)) =
                    (details.as_object_mut(), audit.details)
                {
                    all.extend(given);
                }
                let entry = AuditEntry::new(&audit.actor, audit.action, &user_id, details);
                Ok((after, entry))
            })
        })
        .await
    }
}
