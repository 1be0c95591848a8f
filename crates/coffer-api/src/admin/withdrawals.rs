//! Stuck withdrawals (C7): an admin cancels a withdrawal whose payment is not mined. An unsigned
//! one is released at once; a signed one is cancelled on chain — the broadcaster signs a
//! zero-value transfer with the same nonce, and the hold is released only once that is mined with
//! the asset's confirmations (docs/chain.md, "Stuck withdrawals").

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use coffer_domain::{LedgerTransaction, TxKind, TxState};
use coffer_store::audit_chain::actions;
use coffer_store::transitions::{Guard, Transition};
use coffer_store::{StoreError, TransactionDoc};
use serde_json::json;
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
    let store = ctx.store();
    let tx = store.transaction_by_id(&id).await?.ok_or(StoreError::NotFound)?;
    if tx.kind != TxKind::Withdrawal {
        return Err(StoreError::NotFound.into());
    }
    let cancelled = if tx.state == TxState::PendingBroadcast && tx.broadcast.is_none() {
        store.apply_transition(&release_unsigned(&tx)?).await?
    } else {
        store.request_cancel(&id, &principal.user_id, &reason).await?
    };
    let details = json!({ "state": cancelled.state.as_str(), "signed": cancelled.broadcast.is_some() });
    audit(&ctx, &principal, actions::WITHDRAWAL_CANCELLED, &id, details).await?;
    Ok(Json(TransactionView::from_doc(&cancelled)))
}

/// An unsigned withdrawal's release, guarded so that it cannot race the broadcaster's signature.
fn release_unsigned(tx: &TransactionDoc) -> Result<Transition, StoreError> {
    let wallet = tx
        .from_wallet_id
        .as_deref()
        .ok_or_else(|| StoreError::Corrupt("a withdrawal without a source wallet".into()))?;
    let hold = LedgerTransaction::withdrawal_hold(&tx.asset, wallet, tx.amount)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Transition::new(
        &tx.id,
        TxState::PendingBroadcast,
        TxState::Failed,
        "cancelled by staff before signing; funds released",
    )
    .with_ledger(LedgerTransaction::reversal_of(&hold))
    .with_guard(Guard::Unsigned))
}
