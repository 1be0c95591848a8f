//! The manual review queue (O2): support sees it, an admin approves or rejects.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use coffer_store::audit_chain::actions;
use coffer_store::support::ReviewDecision;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
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
    OpenApiRouter::new().routes(routes!(list_reviews))
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

async fn decide(
    ctx: &ApiContext,
    principal: &Principal,
    headers: &HeaderMap,
    id: &str,
    body: DecisionRequest,
    decision: ReviewDecision,
) -> ApiResult<Json<TransactionView>> {
    idempotency_key(headers)?;
    let reason = reason(&body.reason)?;
    let tx = ctx
        .store()
        .decide_review(id, decision, &principal.user_id, &reason)
        .await?;
    let action = match decision {
        ReviewDecision::Approve => actions::REVIEW_APPROVED,
        ReviewDecision::Reject => actions::REVIEW_REJECTED,
    };
    audit(ctx, principal, action, id, json!({ "state": tx.state.as_str() })).await?;
    Ok(Json(TransactionView::from_doc(&tx)))
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
