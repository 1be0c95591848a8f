//! Users' risk state (S8): the KYC provider sets the verification tier and flags; support or an
//! admin freezes an account, only an admin unfreezes it; support, finance and admin read it.
//! Each change commits with its audit record in one database transaction.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use coffer_domain::policy::{self, RiskProfile, Tier};
use coffer_store::audit_chain::actions;
use coffer_store::risk::RiskChange;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ValidJson;
use crate::idempotency::idempotency_key;
use crate::ApiContext;

/// This feature's read routes.
pub fn reads() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(user_risk))
}

/// This feature's mutating routes (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(set_verification))
        .routes(routes!(freeze_user))
        .routes(routes!(unfreeze_user))
}

/// A user's risk state.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({ "user_id": "01a2383b-cce2-7392-94c8-9ee054b1bac4", "tier": "basic",
    "flags": ["pep"], "frozen": false }))]
pub struct RiskView {
    pub user_id: String,
    /// unverified (nothing leaves), basic (reduced daily limits) or full.
    pub tier: String,
    pub flags: Vec<String>,
    /// A frozen account moves nothing out until an admin unfreezes it.
    pub frozen: bool,
}

impl RiskView {
    fn new(user_id: &str, risk: &RiskProfile) -> Self {
        RiskView {
            user_id: user_id.to_string(),
            tier: risk.tier.as_str().to_string(),
            flags: risk.flags.clone(),
            frozen: risk.frozen,
        }
    }
}

/// The KYC provider's verdict on a user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "tier": "full", "flags": [] }))]
pub struct VerificationRequest {
    /// unverified, basic or full.
    pub tier: String,
    /// Up to 16 labels of 1 to 32 of a-z 0-9 _ (replace the user's flags); default none.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Why an account is frozen or unfrozen.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "reason": "reported account takeover" }))]
pub struct FreezeRequest {
    /// 1 to 500 characters; kept in the audit log's details.
    pub reason: String,
}

fn parse_verification(body: &VerificationRequest) -> ApiResult<RiskChange> {
    let tier = Tier::parse(&body.tier)
        .ok_or_else(|| ApiError::invalid_field("invalid_tier", "tier", "unverified, basic or full"))?;
    let valid =
        body.flags.len() <= policy::RISK_FLAGS_MAX && body.flags.iter().all(|f| policy::valid_flag(f));
    if !valid {
        return Err(ApiError::invalid_field(
            "invalid_risk_flags",
            "flags",
            "up to 16 flags of 1 to 32 of a-z 0-9 _",
        ));
    }
    let mut flags = body.flags.clone();
    flags.sort();
    flags.dedup();
    Ok(RiskChange::Verification { tier, flags })
}

async fn change(
    ctx: &ApiContext,
    user_id: &str,
    change: RiskChange,
    audit: coffer_store::audit::Audit,
) -> ApiResult<Json<RiskView>> {
    let default_tier = ctx.config().kyc_default_tier;
    let risk = ctx
        .store()
        .change_user_risk(user_id, change, default_tier, audit)
        .await?;
    Ok(Json(RiskView::new(user_id, &risk)))
}

/// Set a user's verification tier and risk flags (the KYC provider's service role `kyc` only).
#[utoipa::path(post, path = "/v1/kyc/users/{id}/verification", tag = "admin", request_body = VerificationRequest,
    params(("id" = String, Path), ("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 200, body = RiskView), (status = 400, description = "invalid_tier, invalid_risk_flags", body = Problem),
              (status = 403, description = "forbidden: the kyc role only", body = Problem),
              (status = 404, description = "not_found: no such user (staff accounts have no tier)", body = Problem)),
    security(("bearer" = [])))]
pub async fn set_verification(
    State(ctx): State<ApiContext>,
    principal: Authorized<KycService>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<VerificationRequest>,
) -> ApiResult<Json<RiskView>> {
    idempotency_key(&headers)?;
    let verification = parse_verification(&body)?;
    let audit = coffer_store::audit::Audit::new(&principal.user_id, actions::USER_VERIFICATION_SET);
    change(&ctx, &id, verification, audit).await
}

/// Freeze a user's account (support, admin): nothing leaves it (withdrawals, transfers) until an
/// admin unfreezes it; money still comes in.
#[utoipa::path(post, path = "/v1/admin/users/{id}/freeze", tag = "admin", request_body = FreezeRequest,
    params(("id" = String, Path), ("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 200, body = RiskView), (status = 400, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn freeze_user(
    State(ctx): State<ApiContext>,
    principal: Authorized<Freezers>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<FreezeRequest>,
) -> ApiResult<Json<RiskView>> {
    idempotency_key(&headers)?;
    let audit = coffer_store::audit::Audit::new(&principal.user_id, actions::USER_FROZEN)
        .with_details(serde_json::json!({ "reason": reason(&body.reason)? }));
    change(&ctx, &id, RiskChange::Freeze, audit).await
}

/// Unfreeze a user's account (admin only).
#[utoipa::path(post, path = "/v1/admin/users/{id}/unfreeze", tag = "admin", request_body = FreezeRequest,
    params(("id" = String, Path), ("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 200, body = RiskView), (status = 400, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn unfreeze_user(
    State(ctx): State<ApiContext>,
    principal: Authorized<Admins>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<FreezeRequest>,
) -> ApiResult<Json<RiskView>> {
    idempotency_key(&headers)?;
    let audit = coffer_store::audit::Audit::new(&principal.user_id, actions::USER_UNFROZEN)
        .with_details(serde_json::json!({ "reason": reason(&body.reason)? }));
    change(&ctx, &id, RiskChange::Unfreeze, audit).await
}

/// A user's risk state (support, finance, admin).
#[utoipa::path(get, path = "/v1/admin/users/{id}/risk", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = RiskView), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn user_risk(
    State(ctx): State<ApiContext>,
    _caller: Authorized<SupportReaders>,
    Path(id): Path<String>,
) -> ApiResult<Json<RiskView>> {
    let user = ctx
        .store()
        .user_by_id(&id)
        .await?
        .filter(|u| u.role == coffer_store::Role::User)
        .ok_or(ApiError::NotFound)?;
    let risk = coffer_store::risk::profile_of(&user, ctx.config().kyc_default_tier);
    Ok(Json(RiskView::new(&id, &risk)))
}
