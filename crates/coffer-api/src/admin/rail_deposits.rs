//! Held payment-rail deposits (issue 13 item 2): a deposit above its rail's caps waits here for
//! finance or an admin; approval credits it through the ordinary movement path, exactly once;
//! above the asset's `two_person_adjustment_above` it takes two different approvers.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_domain::plan;
use coffer_domain::policy::{self, ApprovalStep};
use coffer_domain::WalletRef;
use coffer_store::audit::Audit;
use coffer_store::audit_chain::actions;
use coffer_store::model::StaffApproval;
use coffer_store::rail_deposits::{RailDepositDoc, RailDepositStatus};
use coffer_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{rail_deposit_error, ApiError, ApiResult, Problem};
use crate::extract::roles::RailDepositDeciders;
use crate::extract::{PageLimit, ValidJson, ValidQuery};
use crate::idempotency::idempotency_key;
use crate::views::{time, TransactionView};
use crate::ApiContext;

/// How often an approval is judged again when another approval or decision of the same deposit
/// committed first (each attempt reads the record afresh).
const APPROVAL_ATTEMPTS: usize = 3;

/// This feature's read routes.
pub fn reads() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_rail_deposits))
        .routes(routes!(get_rail_deposit))
}

/// This feature's mutating routes (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(approve_rail_deposit))
        .routes(routes!(reject_rail_deposit))
}

/// One staff approval of a decision that needs two.
#[derive(Serialize, ToSchema)]
pub struct ApprovalView {
    /// The staff member's user id.
    pub by: String,
    pub at: String,
}

impl ApprovalView {
    pub(crate) fn list(approvals: &[StaffApproval]) -> Vec<ApprovalView> {
        approvals
            .iter()
            .map(|a| ApprovalView {
                by: a.by.clone(),
                at: time(&a.at),
            })
            .collect()
    }
}

/// A payment-rail deposit held above its rail's caps.
#[derive(Serialize, ToSchema)]
pub struct RailDepositView {
    pub id: String,
    /// The rail (`payment`).
    pub rail: String,
    pub external_reference: String,
    pub wallet_id: String,
    pub asset: String,
    /// Decimal string in the asset's units.
    pub amount: String,
    /// held, approved or rejected.
    pub status: String,
    /// Why it was held: `deposit_max` (above the rail's per-deposit cap) or `daily_limit` (it
    /// would take the rail's credits of the UTC day past its daily cap).
    pub cause: String,
    pub reported_at: String,
    /// First approvals so far, when it needs two different approvers.
    pub approvals: Vec<ApprovalView>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub decision_reason: Option<String>,
    /// The credit, once approved.
    pub transaction_id: Option<String>,
}

impl RailDepositView {
    pub(crate) fn from_doc(d: &RailDepositDoc) -> Self {
        RailDepositView {
            id: d.id.clone(),
            rail: d.rail.clone(),
            external_reference: d.reference.clone(),
            wallet_id: d.wallet_id.clone(),
            asset: d.asset.clone(),
            amount: d.amount.to_decimal_string(d.decimals),
            status: d.status.as_str().to_string(),
            cause: d.cause.clone(),
            reported_at: time(&d.reported_at),
            approvals: ApprovalView::list(&d.approvals),
            decided_by: d.decided_by.clone(),
            decided_at: d.decided_at.as_ref().map(time),
            decision_reason: d.decision_reason.clone(),
            transaction_id: d.transaction_id.clone(),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RailDepositQuery {
    /// held, approved or rejected; all when absent.
    #[param(value_type = Option<String>, pattern = "^(held|approved|rejected)$")]
    pub status: Option<String>,
    /// 1 to 100; default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<PageLimit>,
}

/// Held rail deposits, oldest first (finance, admin).
#[utoipa::path(get, path = "/v1/admin/rail-deposits", tag = "admin", params(RailDepositQuery),
    responses((status = 200, body = Vec<RailDepositView>), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_rail_deposits(
    State(ctx): State<ApiContext>,
    _caller: Authorized<RailDepositDeciders>,
    ValidQuery(query): ValidQuery<RailDepositQuery>,
) -> ApiResult<Json<Vec<RailDepositView>>> {
    let status = match query.status.as_deref() {
        None => None,
        Some("held") => Some(RailDepositStatus::Held),
        Some("approved") => Some(RailDepositStatus::Approved),
        Some("rejected") => Some(RailDepositStatus::Rejected),
        Some(_) => {
            return Err(ApiError::invalid_query(
                "status",
                "status is held, approved or rejected",
            ))
        }
    };
    let items = ctx
        .store()
        .rail_deposits(status, PageLimit::or(query.limit, 50))
        .await?;
    Ok(Json(items.iter().map(RailDepositView::from_doc).collect()))
}

/// One held rail deposit (finance, admin).
#[utoipa::path(get, path = "/v1/admin/rail-deposits/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = RailDepositView), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_rail_deposit(
    State(ctx): State<ApiContext>,
    _caller: Authorized<RailDepositDeciders>,
    Path(id): Path<String>,
) -> ApiResult<Json<RailDepositView>> {
    let held = ctx.store().rail_deposit(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(RailDepositView::from_doc(&held)))
}

#[derive(Serialize, ToSchema)]
pub struct RailDepositDecision {
    pub rail_deposit: RailDepositView,
    /// The credit; null while it waits for a second approver.
    pub transaction: Option<TransactionView>,
}

/// Approve a held rail deposit (finance, admin; not the wallet's owner). It is credited through
/// the ordinary movement path with the rail's ledger key, once. Above the asset's
/// `two_person_adjustment_above` the first approval is recorded (202) and a second, different
/// staff member's approval credits it (200).
#[utoipa::path(post, path = "/v1/admin/rail-deposits/{id}/approve", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, description = "approved and credited", body = RailDepositDecision),
              (status = 202, description = "first of two approvals recorded; nothing credited yet", body = RailDepositDecision),
              (status = 400, body = Problem),
              (status = 403, description = "forbidden, same_approver, own_account", body = Problem),
              (status = 404, body = Problem), (status = 409, description = "rail_deposit_not_held", body = Problem),
              (status = 422, description = "deposits_disabled, asset_unavailable, balance_limit_exceeded", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn approve_rail_deposit(
    State(ctx): State<ApiContext>,
    principal: Authorized<RailDepositDeciders>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Response> {
    idempotency_key(&headers)?;
    let reason = reason(&body.reason)?;
    for _ in 0..APPROVAL_ATTEMPTS {
        match approve_once(&ctx, &principal, &id, &reason).await {
            // Another approval or decision committed first: judge it again as it is now.
            Err(StoreError::StateConflict) => continue,
            Err(other) => return Err(rail_deposit_error(other)),
            Ok(Err(refused)) => return Err(refused),
            Ok(Ok(response)) => return Ok(response),
        }
    }
    Err(rail_deposit_error(StoreError::StateConflict))
}

/// One attempt of an approval against the record as read now.
async fn approve_once(
    ctx: &ApiContext,
    principal: &Principal,
    id: &str,
    reason: &str,
) -> Result<ApiResult<Response>, StoreError> {
    let Some(held) = ctx.store().rail_deposit(id).await? else {
        return Ok(Err(ApiError::NotFound));
    };
    if held.status != RailDepositStatus::Held {
        return Ok(Err(rail_deposit_error(StoreError::StateConflict)));
    }
    let asset = match crate::money::asset_of(ctx, &held.asset) {
        Ok(asset) => asset,
        Err(refused) => return Ok(Err(refused)),
    };
    let required = policy::approvals_required(held.amount, asset.two_person_adjustment_above);
    let given: Vec<String> = held.approvals.iter().map(|a| a.by.clone()).collect();
    let owners = [held.user_id.as_str()];
    let step = match policy::next_approval(required, &given, &principal.user_id, &owners) {
        Ok(step) => step,
        Err(refusal) => return Ok(Err(crate::money::refusal(refusal, "id"))),
    };
    let details = json!({ "wallet_id": &held.wallet_id, "asset": &held.asset,
        "amount_atomic": held.amount.to_string(), "approvals_required": required });
    if step == ApprovalStep::Record {
        let audit =
            Audit::new(&principal.user_id, actions::RAIL_DEPOSIT_APPROVAL_RECORDED).with_details(details);
        let approval = StaffApproval::now(&principal.user_id, reason);
        let recorded = ctx
            .store()
            .record_rail_approval(id, given.len(), approval, audit)
            .await?;
        return Ok(Ok(decision(StatusCode::ACCEPTED, &recorded, None)));
    }
    let wallet = WalletRef {
        id: held.wallet_id.clone(),
        user_id: Some(held.user_id.clone()),
        asset: held.asset.clone(),
    };
    let origin = crate::money::origin(principal);
    let planned =
        plan::plan_approved_rail_deposit(origin, &held.rail, &held.reference, &wallet, held.amount, &asset);
    let movement = match planned {
        Ok(movement) => movement,
        Err(refusal) => return Ok(Err(crate::money::refusal(refusal, "id"))),
    };
    let audit = Audit::new(&principal.user_id, actions::RAIL_DEPOSIT_APPROVED).with_details(details);
    let (approved, tx) = ctx
        .store()
        .approve_rail_deposit(id, given.len(), &principal.user_id, reason, movement, audit)
        .await?;
    Ok(Ok(decision(StatusCode::OK, &approved, Some(&tx))))
}

fn decision(
    status: StatusCode,
    held: &RailDepositDoc,
    tx: Option<&coffer_store::TransactionDoc>,
) -> Response {
    let body = RailDepositDecision {
        rail_deposit: RailDepositView::from_doc(held),
        transaction: tx.map(TransactionView::from_doc),
    };
    (status, Json(body)).into_response()
}

/// Reject a held rail deposit (finance, admin): nothing is credited; the rail must return the
/// funds to the payer by its own means.
#[utoipa::path(post, path = "/v1/admin/rail-deposits/{id}/reject", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = RailDepositView), (status = 400, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, description = "rail_deposit_not_held", body = Problem)),
    security(("bearer" = [])))]
pub async fn reject_rail_deposit(
    State(ctx): State<ApiContext>,
    principal: Authorized<RailDepositDeciders>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<RailDepositView>> {
    idempotency_key(&headers)?;
    let reason = reason(&body.reason)?;
    let audit = Audit::new(&principal.user_id, actions::RAIL_DEPOSIT_REJECTED);
    let rejected = ctx
        .store()
        .reject_rail_deposit(&id, &principal.user_id, &reason, audit)
        .await
        .map_err(rail_deposit_error)?;
    Ok(Json(RailDepositView::from_doc(&rejected)))
}
