//! The manual review queue (O2): support sees it, an admin approves or rejects.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use coffer_store::audit_chain::actions;
use coffer_store::support::ReviewDecision;
use coffer_store::Role;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{ApiResult, Problem};
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
) -> ApiResult<Json<TransactionView>> {
    idempotency_key(headers)?;
    let tx = decide_review(ctx, principal, id, &body.reason, decision).await?;
    Ok(Json(TransactionView::from_doc(&tx)))
}

/// Applies a review decision, audited (the API and the console both call it).
pub(crate) async fn decide_review(
    ctx: &ApiContext,
    principal: &Principal,
    id: &str,
    reason_text: &str,
    decision: ReviewDecision,
) -> ApiResult<coffer_store::TransactionDoc> {
    let reason = reason(reason_text)?;
    let action = match decision {
        ReviewDecision::Approve => actions::REVIEW_APPROVED,
        ReviewDecision::Reject => actions::REVIEW_REJECTED,
    };
    let audit = coffer_store::audit::Audit::new(&principal.user_id, action);
    Ok(ctx
        .store()
        .decide_review(id, decision, &principal.user_id, &reason, audit)
        .await?)
}

/// Approve a withdrawal in manual review: it goes on to broadcast (admin).
#[utoipa::path(post, path = "/v1/admin/reviews/{id}/approve", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = TransactionView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "state_conflict: not in manual review", body = Problem),
              (status = 422, description = "not_supported: not a withdrawal", body = Problem)),
    security(("bearer" = [])))]
pub async fn approve_review(
    State(ctx): State<ApiContext>,
    principal: Authorized<Admins>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<TransactionView>> {
    decide(&ctx, &principal, &headers, &id, body, ReviewDecision::Approve).await
}

/// Reject a withdrawal in manual review: it fails and its hold is released (admin).
#[utoipa::path(post, path = "/v1/admin/reviews/{id}/reject", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = TransactionView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "state_conflict: not in manual review", body = Problem),
              (status = 422, description = "not_supported: not a withdrawal", body = Problem)),
    security(("bearer" = [])))]
pub async fn reject_review(
    State(ctx): State<ApiContext>,
    principal: Authorized<Admins>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<TransactionView>> {
    decide(&ctx, &principal, &headers, &id, body, ReviewDecision::Reject).await
}
