//! Refunds and disputes (L10). The rules are the domain's (`coffer_domain::returns`): who may
//! return what, and never more than the original, through one counter per original charged in
//! the same database transaction as each refund or dispute.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_domain::returns::{self, DisputeOutcome, Original, Requester};
use coffer_domain::{Amount, Movement, TxKind, TxState};
use coffer_store::{Role, StoreError, TransactionDoc};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::roles::{PaymentService, Refunders};
use crate::extract::{Authorized, Principal, ValidJson};
use crate::idempotency::{idempotency_key, IdempotencyContext};
use crate::money::{self, apply, created, key_reused, refusal, Applied, PAYMENT_RAIL};
use crate::views::TransactionView;
use crate::ApiContext;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// Decimal string in the asset's units; all of the original when absent. What was refunded
    /// or is disputed of one original never passes its amount.
    #[serde(default)]
    pub amount: Option<String>,
}

/// How the payment rail decided a dispute.
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// For the user: the held amount is available again; the dispute ends `failed` and the
    /// amount may be refunded or disputed again.
    Released,
    /// For the payer: the held amount leaves the wallet back to custody; the dispute ends `confirmed`.
    Reversed,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveDisputeRequest {
    pub outcome: Outcome,
}

impl Outcome {
    fn domain(self) -> DisputeOutcome {
        match self {
            Outcome::Released => DisputeOutcome::Released,
            Outcome::Reversed => DisputeOutcome::Reversed,
        }
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound
}

/// The original as `principal` may see it: a user's own transaction (a participant), or a
/// deposit of the payment rail for the payment role; anything else is 404 (no probing of ids).
async fn visible_original(ctx: &ApiContext, principal: &Principal, id: &str) -> ApiResult<Original> {
    let (tx, original) = ctx.store().original_of(id).await?.ok_or_else(not_found)?;
    let visible = match principal.role {
        // The same rule as `transaction_of_user`: a participant.
        Role::User => tx.participants.contains(&principal.user_id),
        Role::Payment => original.rail.as_deref() == Some(PAYMENT_RAIL),
        _ => false,
    };
    if !visible {
        return Err(not_found());
    }
    Ok(original)
}

fn requester(principal: &Principal) -> Requester<'_> {
    match principal.role {
        Role::Payment => Requester::Rail {
            rail: PAYMENT_RAIL,
            service_id: &principal.user_id,
        },
        _ => Requester::User(&principal.user_id),
    }
}

fn exceeds_original() -> ApiError {
    ApiError::Unprocessable {
        code: "exceeds_original",
        detail: "refunds and disputes of this transaction would pass its amount".into(),
    }
}

fn asked_amount(body: &ReturnRequest, asset: &coffer_domain::AssetConfig) -> ApiResult<Option<Amount>> {
    body.amount
        .as_deref()
        .map(|text| money::parse_amount(text, asset))
        .transpose()
}

/// The domain's plan of a refund or dispute.
type Plan = fn(
    coffer_domain::Origin,
    &str,
    &Original,
    Option<Amount>,
    Requester<'_>,
    &coffer_domain::AssetConfig,
) -> Result<Movement, coffer_domain::plan::Refusal>;

/// A refund or dispute asked of a visible original.
struct Asked {
    key: String,
    original: Original,
    body: ReturnRequest,
}

impl Asked {
    /// Plans it with `plan` and applies it.
    async fn apply(
        self,
        ctx: &ApiContext,
        principal: &Principal,
        request: Option<IdempotencyContext>,
        plan: Plan,
    ) -> ApiResult<Response> {
        let asset = money::asset_of(ctx, &self.original.asset)?;
        let amount = asked_amount(&self.body, &asset)?;
        let origin = money::origin(principal);
        let movement = plan(
            origin,
            &self.key,
            &self.original,
            amount,
            requester(principal),
            &asset,
        )
        .map_err(|r| refusal(r, "amount"))?;
        apply_return(ctx, movement, request).await
    }
}

/// Applies a planned refund or dispute; a replay of its Idempotency-Key must be the same return.
async fn apply_return(
    ctx: &ApiContext,
    movement: Movement,
    request: Option<IdempotencyContext>,
) -> ApiResult<Response> {
    let (original, amount) = (movement.original_transaction_id.clone(), movement.amount);
    let applied = apply(ctx, movement, request, |existing| match existing {
        Some(tx) if tx.original_transaction_id == original && tx.amount == amount => created(tx),
        _ => Err(key_reused()),
    })
    .await?;
    match applied {
        Applied::LimitExceeded => Err(exceeds_original()),
        other => other.respond(),
    }
}

/// Refund a confirmed transaction in full or in part: a transfer by its recipient (the amount goes
/// back to the sender's wallet), or a payment-rail deposit by the payment role (the amount leaves
/// the wallet back to custody; the rail pays the payer). Final at once (state `confirmed`, kind
/// `refund`), linked to the original by `original_transaction_id`; the original lists it in `returns`.
#[utoipa::path(post, path = "/v1/transactions/{id}/refunds", tag = "money", request_body = ReturnRequest,
    params(("id" = String, Path, description = "The transaction to refund"),
           ("Idempotency-Key" = String, Header, description = "Required; the same key replays the stored response")),
    responses((status = 201, description = "refunded; kind refund, state confirmed", body = TransactionView),
              (status = 400, body = Problem),
              (status = 403, description = "forbidden: users and the payment role only; account_frozen", body = Problem),
              (status = 404, description = "not_found: no such transaction of yours", body = Problem),
              (status = 409, description = "idempotency_key_in_progress", body = Problem),
              (status = 422, description = "not_refundable (not a confirmed transfer to you or deposit of your rail), exceeds_original, insufficient_funds, asset_unavailable, idempotency_key_reused", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_refund(
    State(ctx): State<ApiContext>,
    principal: Authorized<Refunders>,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: Option<IdempotencyContext>,
    ValidJson(body): ValidJson<ReturnRequest>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let original = visible_original(&ctx, &principal, &id).await?;
    if principal.role == Role::User {
        let risk = money::risk_of(&ctx, &principal.user_id).await?;
        coffer_domain::policy::authorize_risk(&risk).map_err(|r| refusal(r, "amount"))?;
    }
    let asked = Asked { key, original, body };
    asked.apply(&ctx, &principal, request, returns::plan_refund).await
}

/// Open a dispute (a chargeback) of a confirmed payment-rail deposit, payment role only: the
/// amount (all of it when absent) moves from the wallet's available to held, state `disputed`,
/// until `POST /v1/disputes/{id}/resolve`. Counts with refunds against the original's amount.
#[utoipa::path(post, path = "/v1/transactions/{id}/disputes", tag = "money", request_body = ReturnRequest,
    params(("id" = String, Path, description = "The rail deposit disputed"),
           ("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 201, description = "held; kind dispute, state disputed", body = TransactionView),
              (status = 400, body = Problem),
              (status = 403, description = "forbidden: the payment role only", body = Problem),
              (status = 404, description = "not_found: no deposit of the payment rail", body = Problem),
              (status = 422, description = "not_disputable, exceeds_original, insufficient_funds (the user spent it), idempotency_key_reused", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_dispute(
    State(ctx): State<ApiContext>,
    principal: Authorized<PaymentService>,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: Option<IdempotencyContext>,
    ValidJson(body): ValidJson<ReturnRequest>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let original = visible_original(&ctx, &principal, &id).await?;
    let asked = Asked { key, original, body };
    asked
        .apply(&ctx, &principal, request, returns::plan_dispute)
        .await
}

fn dispute_not_open() -> ApiError {
    ApiError::Conflict {
        code: "dispute_not_open",
        detail: "the dispute was already resolved the other way".into(),
    }
}

/// A dispute past `Disputed`: the same outcome again answers it as it is; the other is a conflict.
fn resolved_already(dispute: &TransactionDoc, outcome: DisputeOutcome) -> ApiResult<Response> {
    if dispute.state == outcome.state() {
        Ok((StatusCode::OK, Json(TransactionView::from_doc(dispute))).into_response())
    } else {
        Err(dispute_not_open())
    }
}

/// Resolve an open dispute, payment role only, at most once and audited (`dispute.resolved`):
/// `released` makes the held amount available again (state `failed`, and what it held may be
/// returned again), `reversed` takes it back to custody (state `confirmed`). Repeating the same
/// outcome answers the dispute as it is.
#[utoipa::path(post, path = "/v1/disputes/{id}/resolve", tag = "money", request_body = ResolveDisputeRequest,
    params(("id" = String, Path, description = "The dispute (a transaction of kind dispute)")),
    responses((status = 200, description = "resolved (now or before, with this outcome)", body = TransactionView),
              (status = 400, body = Problem),
              (status = 403, description = "forbidden: the payment role only", body = Problem),
              (status = 404, description = "not_found: no such dispute", body = Problem),
              (status = 409, description = "dispute_not_open: resolved the other way", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn resolve_dispute(
    State(ctx): State<ApiContext>,
    principal: Authorized<PaymentService>,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<ResolveDisputeRequest>,
) -> ApiResult<Response> {
    let outcome = body.outcome.domain();
    let store = ctx.store();
    let dispute = store
        .transaction_by_id(&id)
        .await?
        .filter(|tx| tx.kind == TxKind::Dispute)
        .ok_or_else(not_found)?;
    if dispute.state != TxState::Disputed {
        return resolved_already(&dispute, outcome);
    }
    let wallet_id = dispute.from_wallet_id.as_deref().ok_or_else(not_found)?;
    let resolution = returns::resolve_dispute(&dispute.asset, wallet_id, dispute.amount, outcome);
    let details = serde_json::json!({ "outcome": outcome.as_str(), "amount_atomic": dispute.amount.to_string(),
        "original_transaction_id": &dispute.original_transaction_id });
    let audit = coffer_store::audit::Audit::new(
        &principal.user_id,
        coffer_store::audit_chain::actions::DISPUTE_RESOLVED,
    )
    .with_details(details);
    match store.resolve_dispute(&dispute, resolution, audit).await {
        Ok(resolved) => Ok((StatusCode::OK, Json(TransactionView::from_doc(&resolved))).into_response()),
        // Resolved meanwhile (another replica, a retry): answer as it is now.
        Err(StoreError::StateConflict) => {
            let now = store.transaction_by_id(&id).await?.ok_or_else(not_found)?;
            resolved_already(&now, outcome)
        }
        Err(other) => Err(other.into()),
    }
}
