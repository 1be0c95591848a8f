//! Maker-checker adjustments (O2): finance proposes, a different admin approves or rejects.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use coffer_domain::amount::signed_decimal_string;
use coffer_domain::Amount;
use coffer_store::adjustments::{AdjustmentDoc, AdjustmentStatus, Direction, NewAdjustment};
use coffer_store::audit::Audit;
use coffer_store::audit_chain::actions;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{adjustment_error, ApiError, ApiResult, Problem};
use crate::extract::{PageLimit, Principal, ValidJson, ValidQuery};
use crate::idempotency::idempotency_key;
use crate::views::{time, TransactionView};
use crate::ApiContext;

/// This feature's read routes.
pub fn reads() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_adjustments))
        .routes(routes!(get_adjustment))
}

/// This feature's mutating routes (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(propose_adjustment))
        .routes(routes!(approve_adjustment))
        .routes(routes!(reject_adjustment))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeAdjustmentRequest {
    pub wallet_id: String,
    /// Signed decimal string in the asset's units: "2.5" credits the wallet, "-2.5" debits it.
    pub amount: String,
    /// Why (1 to 500 characters); shown to the approver.
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct AdjustmentView {
    pub id: String,
    pub wallet_id: String,
    pub asset: String,
    pub decimals: u8,
    /// Signed from the wallet's point of view: "-2.5" debits it.
    pub amount: String,
    /// proposed, approved or rejected.
    pub status: String,
    pub reason: String,
    pub proposed_by: String,
    pub proposed_at: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub decision_reason: Option<String>,
    /// The posted adjustment transaction, once approved.
    pub transaction_id: Option<String>,
    /// First approvals so far, when it needs two different approvers.
    pub approvals: Vec<super::rail_deposits::ApprovalView>,
}

impl AdjustmentView {
    pub(crate) fn from_doc(a: &AdjustmentDoc) -> Self {
        AdjustmentView {
            id: a.id.clone(),
            wallet_id: a.wallet_id.clone(),
            asset: a.asset.clone(),
            decimals: a.decimals,
            amount: signed_decimal_string(&a.amount, a.direction == Direction::Debit, a.decimals),
            status: a.status.as_str().to_string(),
            reason: a.reason.clone(),
            proposed_by: a.proposed_by.clone(),
            proposed_at: time(&a.proposed_at),
            decided_by: a.decided_by.clone(),
            decided_at: a.decided_at.as_ref().map(time),
            decision_reason: a.decision_reason.clone(),
            transaction_id: a.transaction_id.clone(),
            approvals: super::rail_deposits::ApprovalView::list(&a.approvals),
        }
    }
}

/// Parses "2.5" / "+2.5" / "-2.5" with the wallet's decimals.
fn signed_amount(text: &str, decimals: u8) -> ApiResult<(Amount, Direction)> {
    let (direction, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (Direction::Debit, rest),
        None => (Direction::Credit, text.strip_prefix('+').unwrap_or(text)),
    };
    let amount = Amount::parse_positive(magnitude, decimals).map_err(|e| ApiError::amount(e, "amount"))?;
    if amount > coffer_domain::amount::ledger_max() {
        return Err(ApiError::invalid_field(
            "amount_too_large",
            "amount",
            "the amount is above the ledger's limit",
        ));
    }
    Ok((amount, direction))
}

/// Propose an adjustment of a user wallet (finance, admin). Nothing moves until another admin approves.
#[utoipa::path(post, path = "/v1/admin/adjustments", tag = "admin", request_body = ProposeAdjustmentRequest,
    params(("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 201, body = AdjustmentView), (status = 400, body = Problem), (status = 403, body = Problem),
              (status = 404, description = "wallet_not_found", body = Problem)),
    security(("bearer" = [])))]
pub async fn propose_adjustment(
    State(ctx): State<ApiContext>,
    principal: Authorized<Proposers>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<ProposeAdjustmentRequest>,
) -> ApiResult<(StatusCode, Json<AdjustmentView>)> {
    idempotency_key(&headers)?;
    let adjustment = propose(&ctx, &principal, body).await?;
    Ok((StatusCode::CREATED, Json(AdjustmentView::from_doc(&adjustment))))
}

/// Validates and stores a proposal, audited (the API and the console both call it).
pub(crate) async fn propose(
    ctx: &ApiContext,
    principal: &Principal,
    body: ProposeAdjustmentRequest,
) -> ApiResult<AdjustmentDoc> {
    let reason = reason(&body.reason)?;
    let wallet = ctx.store().wallet_by_id(&body.wallet_id).await?;
    let wallet = wallet
        .filter(|w| w.user_id.is_some())
        .ok_or(ApiError::UnknownReference {
            code: "wallet_not_found",
            detail: "wallet_id does not name a user wallet".into(),
        })?;
    let (amount, direction) = signed_amount(&body.amount, wallet.decimals)?;
    let proposal = NewAdjustment {
        wallet_id: wallet.id,
        amount,
        direction,
        reason,
        proposed_by: principal.user_id.clone(),
    };
    let direction_name = if direction == Direction::Credit {
        "credit"
    } else {
        "debit"
    };
    let details = json!({ "wallet_id": &proposal.wallet_id, "direction": direction_name, "amount_atomic": amount.to_string() });
    let audit = Audit::new(&principal.user_id, actions::ADJUSTMENT_PROPOSED).with_details(details);
    Ok(ctx.store().propose_adjustment(proposal, audit).await?)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdjustmentQuery {
    /// proposed, approved or rejected; all when absent.
    #[param(value_type = Option<String>, pattern = "^(proposed|approved|rejected)$")]
    pub status: Option<String>,
    /// 1 to 100; default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<PageLimit>,
}

/// Adjustments, newest first (finance, admin).
#[utoipa::path(get, path = "/v1/admin/adjustments", tag = "admin", params(AdjustmentQuery),
    responses((status = 200, body = Vec<AdjustmentView>), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list_adjustments(
    State(ctx): State<ApiContext>,
    _caller: Authorized<AdjustmentReaders>,
    ValidQuery(query): ValidQuery<AdjustmentQuery>,
) -> ApiResult<Json<Vec<AdjustmentView>>> {
    let status = match query.status.as_deref() {
        None => None,
        Some("proposed") => Some(AdjustmentStatus::Proposed),
        Some("approved") => Some(AdjustmentStatus::Approved),
        Some("rejected") => Some(AdjustmentStatus::Rejected),
        Some(_) => {
            return Err(ApiError::invalid_query(
                "status",
                "status is proposed, approved or rejected",
            ))
        }
    };
    let items = ctx
        .store()
        .adjustments(status, PageLimit::or(query.limit, 50))
        .await?;
    Ok(Json(items.iter().map(AdjustmentView::from_doc).collect()))
}

/// One adjustment (finance, admin).
#[utoipa::path(get, path = "/v1/admin/adjustments/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = AdjustmentView), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_adjustment(
    State(ctx): State<ApiContext>,
    _caller: Authorized<AdjustmentReaders>,
    Path(id): Path<String>,
) -> ApiResult<Json<AdjustmentView>> {
    let adjustment = ctx.store().adjustment(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(AdjustmentView::from_doc(&adjustment)))
}

#[derive(Serialize, ToSchema)]
pub struct ApprovedAdjustment {
    pub adjustment: AdjustmentView,
    /// The balanced adjustment posted against the asset's suspense account; null while it waits
    /// for a second approver.
    pub transaction: Option<TransactionView>,
}

/// Approve and post an adjustment (admin, not its proposer, not the wallet's owner). Above the
/// asset's `two_person_adjustment_above` the first approval is recorded (202, still proposed) and
/// a second, different admin's approval posts it (200).
#[utoipa::path(post, path = "/v1/admin/adjustments/{id}/approve", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = ApprovedAdjustment),
              (status = 202, description = "first of two approvals recorded; nothing posted yet", body = ApprovedAdjustment),
              (status = 400, body = Problem),
              (status = 403, description = "forbidden, self_approval, same_approver, own_account", body = Problem),
              (status = 404, body = Problem), (status = 409, description = "adjustment_not_proposed", body = Problem),
              (status = 422, description = "insufficient_funds", body = Problem)),
    security(("bearer" = [])))]
pub async fn approve_adjustment(
    State(ctx): State<ApiContext>,
    principal: Authorized<Admins>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<(StatusCode, Json<ApprovedAdjustment>)> {
    idempotency_key(&headers)?;
    let (status, body) = approve(&ctx, &principal, &id, &body.reason).await?;
    Ok((status, Json(body)))
}

/// Records or executes an approval of adjustment `id`, audited (the API and the console both call
/// it): `202` while a second approver is needed above the asset's two-person threshold, `200`
/// with the posted transaction otherwise.
pub(crate) async fn approve(
    ctx: &ApiContext,
    principal: &Principal,
    id: &str,
    reason_text: &str,
) -> ApiResult<(StatusCode, ApprovedAdjustment)> {
    let reason = reason(reason_text)?;
    let adjustment = ctx.store().adjustment(id).await?.ok_or(ApiError::NotFound)?;
    if adjustment.proposed_by == principal.user_id {
        return Err(adjustment_error(coffer_store::StoreError::SelfApproval));
    }
    if adjustment.status != AdjustmentStatus::Proposed {
        return Err(adjustment_error(coffer_store::StoreError::StateConflict));
    }
    let threshold = ctx
        .assets()
        .current()
        .get(&adjustment.asset)
        .and_then(|asset| asset.two_person_adjustment_above);
    let required = coffer_domain::policy::approvals_required(adjustment.amount, threshold);
    let owner = ctx
        .store()
        .wallet_by_id(&adjustment.wallet_id)
        .await?
        .and_then(|w| w.user_id);
    let owners: Vec<&str> = owner.as_deref().into_iter().collect();
    let given: Vec<String> = adjustment.approvals.iter().map(|a| a.by.clone()).collect();
    let step = coffer_domain::policy::next_approval(required, &given, &principal.user_id, &owners)
        .map_err(|r| crate::money::refusal(r, "id"))?;
    if step == coffer_domain::policy::ApprovalStep::Record {
        let audit = Audit::new(&principal.user_id, actions::ADJUSTMENT_APPROVAL_RECORDED)
            .with_details(json!({ "approvals_required": required }));
        let approval = coffer_store::model::StaffApproval::now(&principal.user_id, &reason);
        let recorded = ctx
            .store()
            .record_adjustment_approval(id, given.len(), approval, audit)
            .await
            .map_err(adjustment_error)?;
        let body = ApprovedAdjustment {
            adjustment: AdjustmentView::from_doc(&recorded),
            transaction: None,
        };
        return Ok((StatusCode::ACCEPTED, body));
    }
    let (adjustment, tx) = ctx
        .store()
        .approve_adjustment(
            id,
            &principal.user_id,
            &reason,
            given.len(),
            Audit::new(&principal.user_id, actions::ADJUSTMENT_APPROVED),
        )
        .await
        .map_err(adjustment_error)?;
    let body = ApprovedAdjustment {
        adjustment: AdjustmentView::from_doc(&adjustment),
        transaction: Some(TransactionView::from_doc(&tx)),
    };
    Ok((StatusCode::OK, body))
}

/// Reject an adjustment (admin); nothing moves.
#[utoipa::path(post, path = "/v1/admin/adjustments/{id}/reject", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = AdjustmentView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "adjustment_not_proposed", body = Problem)),
    security(("bearer" = [])))]
pub async fn reject_adjustment(
    State(ctx): State<ApiContext>,
    principal: Authorized<Admins>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<AdjustmentView>> {
    idempotency_key(&headers)?;
    let adjustment = reject(&ctx, &principal, &id, &body.reason).await?;
    Ok(Json(AdjustmentView::from_doc(&adjustment)))
}

/// Rejects adjustment `id`, audited (the API and the console both call it).
pub(crate) async fn reject(
    ctx: &ApiContext,
    principal: &Principal,
    id: &str,
    reason_text: &str,
) -> ApiResult<AdjustmentDoc> {
    let reason = reason(reason_text)?;
    ctx.store()
        .reject_adjustment(
            id,
            &principal.user_id,
            &reason,
            Audit::new(&principal.user_id, actions::ADJUSTMENT_REJECTED),
        )
        .await
        .map_err(adjustment_error)
}
