//! Support and admin API under `/v1/admin` (O1, O2, S2, S5).
//!
//! Roles: support reads user data; finance proposes adjustments; admin approves adjustments and
//! decides reviews (and may read everything); engineering runs operations (reconciliations,
//! audit verification). Every refusal is a 403 before anything is read or written; every action
//! and every read of user data is appended to the audit log (ids only).

pub mod adjustments;
pub mod liabilities;
pub mod operations;
pub mod rail_deposits;
pub mod reviews;
pub mod risk;
pub mod support;
pub mod withdrawals;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ApiError, ApiResult};
use crate::extract::Principal;
use crate::ApiContext;

// The role sets of the admin routes, checked by the `Authorized` extractor before any body is read.
pub(crate) use crate::extract::roles::{
    AdjustmentReaders, Admins, Freezers, KycService, LiabilityPublishers, Operators, Proposers,
    ReviewReaders, SessionRevokers, SupportReaders,
};
pub(crate) use crate::extract::Authorized;

/// Read routes of the admin API, feature by feature.
pub fn reads() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .merge(support::reads())
        .merge(adjustments::reads())
        .merge(reviews::reads())
        .merge(operations::reads())
        .merge(risk::reads())
        .merge(rail_deposits::reads())
}

/// Mutating routes of the admin API (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .merge(support::writes())
        .merge(adjustments::writes())
        .merge(reviews::writes())
        .merge(operations::writes())
        .merge(liabilities::writes())
        .merge(withdrawals::writes())
        .merge(risk::writes())
        .merge(rail_deposits::writes())
}

/// A decision on an adjustment or a review.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why (1 to 500 characters).
    pub reason: String,
}

/// A decision's reason: required, 1 to 500 characters. Kept with the object, never in logs.
pub(crate) fn reason(text: &str) -> ApiResult<String> {
    let text = text.trim();
    let length = text.chars().count();
    if length == 0 || length > coffer_store::adjustments::REASON_MAX_CHARS {
        return Err(ApiError::invalid_field(
            "invalid_reason",
            "reason",
            "1 to 500 characters",
        ));
    }
    Ok(text.to_string())
}

/// Appends to the audit log; the caller's request fails if the trail cannot be written.
pub(crate) async fn audit(
    ctx: &ApiContext,
    principal: &Principal,
    action: &str,
    subject: &str,
    details: Value,
) -> ApiResult<()> {
    ctx.store()
        .audit(&principal.user_id, action, subject, details)
        .await?;
    Ok(())
}
