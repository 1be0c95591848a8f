//! The manual review queue (O2): support sees it, an admin approves or rejects.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_domain::policy::ApprovalStep;
use coffer_store::audit_chain::actions;
use coffer_store::support::ReviewDecision;
use coffer_store::Role;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{PageLimit, Principal, ValidJson, ValidQuery};
use crate::idempotency::idempotency_key;
use crate::views::TransactionView;
use crate::ApiContext;

/// This feature's read routes.
pub fn reads() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_reviews))
        .routes(routes!(list_webhook_reviews))
}

/// This feature's mutating routes (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(approve_review))
        .routes(routes!(reject_review))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// 1 to 100; default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<PageLimit>,
}

/// Transactions waiting in manual review, oldest first (support, admin).
#[utoipa::path(get, path = "/v1/admin/reviews", tag = "admin", params(LimitQuery),
    responses((status = 200, body = Vec<TransactionView>), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list_reviews(
    State(ctx): State<ApiContext>,
    _caller: Authorized<ReviewReaders>,
    ValidQuery(query): ValidQuery<LimitQuery>,
) -> ApiResult<Json<Vec<TransactionView>>> {
    let limit = PageLimit::or(query.limit, 50);
    let items = ctx
        .store()
        .transactions_in_state(coffer_domain::TxState::ManualReview, limit)
        .await?;
    Ok(Json(items.iter().map(TransactionView::from_doc).collect()))
}

/// A provider webhook event the chain did not back: nothing was recorded or credited.
#[derive(Serialize, ToSchema)]
pub struct WebhookReviewView {
    /// SHA-256 of the provider and the claim: the same report is kept once.
    pub fingerprint: String,
    pub provider: String,
    /// Why the chain disagrees: transaction_not_found, transaction_failed, block_mismatch,
    /// not_canonical, no_such_transfer, recipient_mismatch, amount_mismatch.
    pub reason: String,
    /// The ledger key the event would have been recorded under.
    pub ledger_key: String,
    pub chain: String,
    pub tx_hash: String,
    pub log_index: Option<i64>,
    /// The claimed recipient.
    pub to: String,
    pub asset: String,
    /// The claimed amount, smallest units (decimal string).
    pub amount_atomic: String,
    pub block_number: i64,
    pub block_hash: String,
    /// How often the provider sent this same event.
    pub times_seen: i64,
    pub first_seen_at: String,
    pub last_seen_at: String,
}

/// Webhook events kept for review because the chain disagrees with them, newest first
/// (support, admin).
#[utoipa::path(get, path = "/v1/admin/webhook-reviews", tag = "admin", params(LimitQuery),
    responses((status = 200, body = Vec<WebhookReviewView>), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list_webhook_reviews(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidQuery(query): ValidQuery<LimitQuery>,
) -> ApiResult<Json<Vec<WebhookReviewView>>> {
    principal.require(&[Role::Support, Role::Admin])?;
    let items = ctx
        .store()
        .webhook_reviews(PageLimit::or(query.limit, 50))
        .await?;
    let view = |r: &coffer_store::chain::WebhookReviewDoc| WebhookReviewView {
        fingerprint: r.id.clone(),
        provider: r.provider.clone(),
        reason: r.reason.clone(),
        ledger_key: r.ledger_key.clone(),
        chain: r.chain.clone(),
        tx_hash: r.tx_hash.clone(),
        log_index: r.log_index,
        to: r.address.clone(),
        asset: r.asset.clone(),
        amount_atomic: r.amount.atomic().to_string(),
        block_number: r.block_number,
        block_hash: r.block_hash.clone(),
        times_seen: r.times_seen,
        first_seen_at: crate::views::time(&r.first_seen_at),
        last_seen_at: crate::views::time(&r.last_seen_at),
    };
    Ok(Json(items.iter().map(view).collect()))
}

async fn decide(
    ctx: &ApiContext,
    principal: &Principal,
    headers: &HeaderMap,
    id: &str,
    body: DecisionRequest,
    decision: ReviewDecision,
) -> ApiResult<Response> {
    idempotency_key(headers)?;
    let (status, tx) = decide_review(ctx, principal, id, &body.reason, decision).await?;
    Ok((status, Json(TransactionView::from_doc(&tx))).into_response())
}

/// Applies a review decision, audited (the API and the console both call it): `202` when it only
/// recorded the first of two approvals, `200` when it was executed.
pub(crate) async fn decide_review(
    ctx: &ApiContext,
    principal: &Principal,
    id: &str,
    reason_text: &str,
    decision: ReviewDecision,
) -> ApiResult<(StatusCode, coffer_store::TransactionDoc)> {
    let reason = reason(reason_text)?;
    let tx = ctx
        .store()
        .transaction_by_id(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (seen, step) = match decision {
        ReviewDecision::Approve => approval_step(ctx, principal, &tx).await?,
        // One reviewer may always stop a movement: rejecting returns the funds to their owner.
        ReviewDecision::Reject => (0, ApprovalStep::Execute),
    };
    if step == ApprovalStep::Record {
        let audit = coffer_store::audit::Audit::new(&principal.user_id, actions::REVIEW_APPROVAL_RECORDED)
            .with_details(serde_json::json!({ "approvals_required": 2 }));
        let approval = coffer_store::model::StaffApproval::now(&principal.user_id, &reason);
        let recorded = ctx
            .store()
            .record_review_approval(id, seen, approval, audit)
            .await?;
        return Ok((StatusCode::ACCEPTED, recorded));
    }
    let action = match decision {
        ReviewDecision::Approve => actions::REVIEW_APPROVED,
        ReviewDecision::Reject => actions::REVIEW_REJECTED,
    };
    let audit = coffer_store::audit::Audit::new(&principal.user_id, action);
    Ok(ctx
        .store()
        .decide_review(id, decision, &principal.user_id, &reason, seen, audit)
        .await
        .map(|tx| (StatusCode::OK, tx))?)
}

/// The two-person rule of a review approval (issue 13 item 6): above the asset's
/// `two_person_review_above` two different admins, neither owning a wallet the movement touches.
/// Answers the approvals seen and what this approval does.
async fn approval_step(
    ctx: &ApiContext,
    principal: &Principal,
    tx: &coffer_store::TransactionDoc,
) -> ApiResult<(usize, ApprovalStep)> {
    let threshold = ctx
        .assets()
        .current()
        .get(&tx.asset)
        .and_then(|asset| asset.two_person_review_above);
    let required = coffer_domain::policy::approvals_required(tx.amount, threshold);
    let wallet_ids: Vec<&str> = [&tx.from_wallet_id, &tx.to_wallet_id]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let wallets = ctx.store().wallet_refs(&wallet_ids).await?;
    let owners: Vec<&str> = wallets.values().filter_map(|w| w.user_id.as_deref()).collect();
    let given: Vec<String> = tx.review_approvals.iter().map(|a| a.by.clone()).collect();
    let step = coffer_domain::policy::next_approval(required, &given, &principal.user_id, &owners)
        .map_err(|r| crate::money::refusal(r, "id"))?;
    Ok((given.len(), step))
}

/// Approve a withdrawal or transfer in manual review: a withdrawal goes on to broadcast, a
/// transfer is posted (admin, owning neither wallet). Above the asset's `two_person_review_above`
/// the first approval is recorded (202, still in manual review) and a second, different admin's
/// approval executes it (200).
#[utoipa::path(post, path = "/v1/admin/reviews/{id}/approve", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = TransactionView),
              (status = 202, description = "first of two approvals recorded; still in manual review", body = TransactionView),
              (status = 400, body = Problem),
              (status = 403, description = "forbidden, same_approver, own_account", body = Problem), (status = 404, body = Problem),
              (status = 409, description = "state_conflict: not in manual review", body = Problem),
              (status = 422, description = "not_supported: not a withdrawal", body = Problem)),
    security(("bearer" = [])))]
pub async fn approve_review(
    State(ctx): State<ApiContext>,
    principal: Authorized<Admins>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Response> {
    decide(&ctx, &principal, &headers, &id, body, ReviewDecision::Approve).await
}

/// Reject a withdrawal in manual review: it fails and its hold is released (admin).
#[utoipa::path(post, path = "/v1/admin/reviews/{id}/reject", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = TransactionView), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "state_conflict: not in manual review; withdrawal_signed", body = Problem),
              (status = 422, description = "not_supported: not a withdrawal", body = Problem)),
    security(("bearer" = [])))]
pub async fn reject_review(
    State(ctx): State<ApiContext>,
    principal: Authorized<Admins>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Response> {
    decide(&ctx, &principal, &headers, &id, body, ReviewDecision::Reject).await
}
