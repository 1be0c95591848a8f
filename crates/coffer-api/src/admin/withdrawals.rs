//! Stuck withdrawals (C7): an admin cancels a withdrawal whose payment is not mined. An unsigned
//! one is released at once; a signed one is cancelled on chain — the broadcaster signs a
//! zero-value transfer with the same nonce, and the hold is released only once that is mined with
//! the asset's confirmations (docs/chain.md, "Stuck withdrawals").

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use coffer_store::audit_chain::actions;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{ApiResult, Problem};
use crate::extract::ValidJson;
use crate::idempotency::idempotency_key;
use crate::views::TransactionView;
use crate::ApiContext;

/// This feature's mutating routes (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(cancel_withdrawal))
}

/// Cancel a withdrawal whose payment is not mined (admin). Unsigned: it fails and its hold is
/// released now. Signed: the broadcaster replaces it with a zero-value transfer to the hot wallet
/// with the same nonce; the hold is released when that is mined with the asset's confirmations
/// (the payment may still be mined first, and then it settles).
#[utoipa::path(post, path = "/v1/admin/withdrawals/{id}/cancel", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = TransactionView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "state_conflict: mined, final, in review or already cancelling", body = Problem)),
    security(("bearer" = [])))]
pub async fn cancel_withdrawal(
    State(ctx): State<ApiContext>,
    principal: Authorized<Admins>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<TransactionView>> {
    idempotency_key(&headers)?;
    let reason = reason(&body.reason)?;
    let audit = coffer_store::audit::Audit::new(&principal.user_id, actions::WITHDRAWAL_CANCELLED);
    let cancelled = ctx
        .store()
        .cancel_withdrawal(&id, &principal.user_id, &reason, audit)
        .await?;
    Ok(Json(TransactionView::from_doc(&cancelled)))
}
