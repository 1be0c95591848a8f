//! Money-moving endpoints: thin handlers that parse, authorize, build one balanced movement and
//! hand it to the store's single-transaction write path.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use coffer_domain::{Amount, AssetConfig, LedgerTransaction, StateChange, TxState};
use coffer_store::money::{NewMovement, VelocityCharge};
use coffer_store::{Role, StoreError, TransactionDoc, WalletDoc};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Principal, ValidJson};
use crate::idempotency::idempotency_key;
use crate::views::TransactionView;
use crate::ApiContext;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// A wallet of the caller.
    pub from_wallet_id: String,
    /// Any wallet of the same asset.
    pub to_wallet_id: String,
    /// Decimal string in the asset's units, e.g. "0.75"; at most the asset's decimals.
    pub amount: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepositRequest {
    pub wallet_id: String,
    pub amount: String,
    /// The payment rail's id of this deposit: the same reference is credited once.
    pub external_reference: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    pub wallet_id: String,
    pub amount: String,
    /// The chain address to pay out to (EVM: 0x + 40 hex digits).
    pub destination_address: String,
}

fn wallet_not_found(field: &str) -> ApiError {
    ApiError::UnknownReference {
        code: "wallet_not_found",
        detail: format!("{field} does not name a wallet you can use"),
    }
}

fn parse_amount(text: &str, asset: &AssetConfig) -> ApiResult<Amount> {
    let amount = Amount::parse_positive(text, asset.decimals).map_err(|e| ApiError::amount(e, "amount"))?;
    if amount > coffer_domain::amount::ledger_max() {
        return Err(ApiError::invalid_field(
            "amount_too_large",
            "amount",
            "the amount is above the ledger's limit",
        ));
    }
    Ok(amount)
}

fn asset_of(ctx: &ApiContext, wallet: &WalletDoc) -> ApiResult<AssetConfig> {
    ctx.assets()
        .current()
        .get(&wallet.asset)
        .cloned()
        .ok_or(ApiError::Unprocessable {
            code: "asset_unavailable",
            detail: "this wallet's asset is not currently supported".into(),
        })
}

fn ledger_error(error: coffer_domain::LedgerError) -> ApiError {
    match error {
        coffer_domain::LedgerError::SameAccount => ApiError::Unprocessable {
            code: "same_wallet",
            detail: "the source and destination are the same wallet".into(),
        },
        other => ApiError::Internal(other.to_string()),
    }
}

fn created(tx: &TransactionDoc, _asset: &AssetConfig) -> (StatusCode, Json<TransactionView>) {
    (StatusCode::CREATED, Json(TransactionView::from_doc(tx)))
}

/// The common path of every movement: write it, and map "already applied" to the existing record.
async fn apply(ctx: &ApiContext, movement: NewMovement) -> Result<(TransactionDoc, bool), ApiError> {
    match ctx.store().apply_movement(&movement).await {
        Ok(tx) => Ok((tx, true)),
        Err(StoreError::DuplicateLedgerKey(existing)) => Ok((*existing, false)),
        Err(other) => Err(other.into()),
    }
}

/// A replayed ledger key must be the same movement; otherwise the client reused a key (possibly
/// after the 24 h idempotency record expired) for a different request.
fn same_movement(
    tx: TransactionDoc,
    fresh: bool,
    from: &str,
    to: Option<&str>,
    amount: Amount,
) -> ApiResult<TransactionDoc> {
    if fresh
        || (tx.from_wallet_id.as_deref() == Some(from)
            && tx.to_wallet_id.as_deref() == to
            && tx.amount == amount)
    {
        Ok(tx)
    } else {
        Err(ApiError::Unprocessable {
            code: "idempotency_key_reused",
            detail: "this Idempotency-Key was used for a different request".into(),
        })
    }
}

fn initial_timeline(states: &[(TxState, &str)]) -> Vec<StateChange> {
    let now = Utc::now();
    let mut timeline = vec![StateChange::initial(states[0].0, now, states[0].1)];
    for pair in states.windows(2) {
        timeline.push(StateChange::step(pair[0].0, pair[1].0, now, pair[1].1).expect("allowed transitions"));
    }
    timeline
}

/// Move funds between two wallets of one asset.
#[utoipa::path(post, path = "/v1/transfers", tag = "money", request_body = TransferRequest,
    params(("Idempotency-Key" = String, Header, description = "Required; the same key replays the stored response")),
    responses((status = 201, body = TransactionView), (status = 400, body = Problem),
              (status = 422, description = "insufficient_funds, same_wallet, asset_mismatch", body = Problem),
              (status = 404, description = "wallet_not_found", body = Problem),
              (status = 409, description = "idempotency_key_in_progress", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_transfer(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    ValidJson(body): ValidJson<TransferRequest>,
) -> ApiResult<(StatusCode, Json<TransactionView>)> {
    principal.require(&[Role::User])?;
    let key = idempotency_key(&headers)?;
    let store = ctx.store();
    let from = store
        .wallet_of_user(&principal.user_id, &body.from_wallet_id)
        .await?;
    let from = from.ok_or_else(|| wallet_not_found("from_wallet_id"))?;
    let asset = asset_of(&ctx, &from)?;
    let amount = parse_amount(&body.amount, &asset)?;
    let to = store.wallet_by_id(&body.to_wallet_id).await?;
    let to = to
        .filter(|w| w.user_id.is_some())
        .ok_or_else(|| wallet_not_found("to_wallet_id"))?;
    if to.asset != from.asset {
        return Err(ApiError::Unprocessable {
            code: "asset_mismatch",
            detail: "the wallets hold different assets".into(),
        });
    }
    let ledger =
        LedgerTransaction::transfer(&asset.symbol, &from.id, &to.id, amount).map_err(ledger_error)?;
    let movement = NewMovement {
        ledger,
        ledger_key: format!("api:{}:{}", principal.user_id, key),
        state: TxState::Confirmed,
        timeline: initial_timeline(&[
            (TxState::Created, "requested"),
            (TxState::Confirmed, "internal transfer posted"),
        ]),
        amount,
        decimals: asset.decimals,
        initiated_by: principal.user_id.clone(),
        from_wallet_id: Some(from.id.clone()),
        to_wallet_id: Some(to.id.clone()),
        external_reference: None,
        destination: None,
        participants: [from.user_id.clone(), to.user_id.clone()]
            .into_iter()
            .flatten()
            .collect(),
        velocity: None,
    };
    let (tx, fresh) = apply(&ctx, movement).await?;
    let tx = same_movement(tx, fresh, &from.id, Some(&to.id), amount)?;
    Ok(created(&tx, &asset))
}

/// Credit a wallet from a payment rail (service role `payment` only).
#[utoipa::path(post, path = "/v1/deposits", tag = "money", request_body = DepositRequest,
    params(("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 201, body = TransactionView), (status = 200, description = "this external_reference was already credited", body = TransactionView),
              (status = 403, body = Problem), (status = 409, description = "external_reference_conflict", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_deposit(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    ValidJson(body): ValidJson<DepositRequest>,
) -> ApiResult<(StatusCode, Json<TransactionView>)> {
    principal.require(&[Role::Payment])?;
    idempotency_key(&headers)?;
    let reference = body.external_reference.trim();
    if reference.is_empty() || reference.len() > 128 {
        return Err(ApiError::invalid_field(
            "invalid_external_reference",
            "external_reference",
            "1 to 128 characters",
        ));
    }
    let wallet = ctx.store().wallet_by_id(&body.wallet_id).await?;
    let wallet = wallet
        .filter(|w| w.user_id.is_some())
        .ok_or_else(|| wallet_not_found("wallet_id"))?;
    let asset = asset_of(&ctx, &wallet)?;
    if !asset.deposits_enabled {
        return Err(ApiError::Unprocessable {
            code: "deposits_disabled",
            detail: "deposits of this asset are paused".into(),
        });
    }
    let amount = parse_amount(&body.amount, &asset)?;
    ctx.store()
        .ensure_platform_accounts(&asset.symbol, asset.decimals)
        .await?;
    let ledger = LedgerTransaction::deposit(&asset.symbol, &wallet.id, amount).map_err(ledger_error)?;
    let movement = NewMovement {
        ledger,
        ledger_key: format!("deposit:payment:{reference}"),
        state: TxState::Confirmed,
        timeline: initial_timeline(&[
            (TxState::Created, "reported by payment rail"),
            (TxState::Confirmed, "credited"),
        ]),
        amount,
        decimals: asset.decimals,
        initiated_by: principal.user_id.clone(),
        from_wallet_id: None,
        to_wallet_id: Some(wallet.id.clone()),
        external_reference: Some(reference.to_string()),
        destination: None,
        participants: wallet.user_id.clone().into_iter().collect(),
        velocity: None,
    };
    let (tx, fresh) = apply(&ctx, movement).await?;
    if fresh {
        return Ok(created(&tx, &asset));
    }
    if tx.to_wallet_id.as_deref() != Some(wallet.id.as_str()) || tx.amount != amount {
        return Err(ApiError::Conflict {
            code: "external_reference_conflict",
            detail: "this external_reference was credited with a different wallet or amount".into(),
        });
    }
    Ok((StatusCode::OK, Json(TransactionView::from_doc(&tx))))
}

fn valid_evm_address(address: &str) -> bool {
    address.len() == 42 && address.starts_with("0x") && address[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Request a withdrawal. Risk checks come first, before anything is held or signed: a trusted
/// device (`X-Device-Id`), a password login within the re-authentication window, the asset's
/// switch, minimum and maximum, and the daily limit (charged atomically with the hold). The amount
/// moves from available to held; the transaction waits in PendingBroadcast for the broadcaster, or
/// in ManualReview when it is above the asset's review threshold.
#[utoipa::path(post, path = "/v1/withdrawals", tag = "money", request_body = WithdrawalRequest,
    params(("Idempotency-Key" = String, Header, description = "Required"),
           ("X-Device-Id" = String, Header, description = "A trusted device of the caller")),
    responses((status = 201, description = "held; state pending_broadcast or manual_review", body = TransactionView),
              (status = 401, description = "reauthentication_required: log in again", body = Problem),
              (status = 403, description = "device_not_trusted", body = Problem),
              (status = 422, description = "insufficient_funds, below_minimum, above_maximum, daily_limit_exceeded, withdrawals_disabled", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_withdrawal(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    ValidJson(body): ValidJson<WithdrawalRequest>,
) -> ApiResult<(StatusCode, Json<TransactionView>)> {
    principal.require(&[Role::User])?;
    let key = idempotency_key(&headers)?;
    let device = crate::devices::require_trusted_device(&ctx, &principal, &headers).await?;
    let window = ctx.config().withdrawal_reauth_window.as_secs() as i64;
    if Utc::now().timestamp() - principal.auth_time > window {
        return Err(ApiError::Unauthenticated {
            code: "reauthentication_required",
        });
    }
    let wallet = ctx
        .store()
        .wallet_of_user(&principal.user_id, &body.wallet_id)
        .await?;
    let wallet = wallet.ok_or_else(|| wallet_not_found("wallet_id"))?;
    let asset = asset_of(&ctx, &wallet)?;
    let amount = parse_amount(&body.amount, &asset)?;
    if !valid_evm_address(&body.destination_address) {
        return Err(ApiError::invalid_field(
            "invalid_address",
            "destination_address",
            "not a valid address",
        ));
    }
    let refuse = |code, detail: &str| {
        Err(ApiError::Unprocessable {
            code,
            detail: detail.to_string(),
        })
    };
    if !asset.withdrawals_enabled {
        return refuse("withdrawals_disabled", "withdrawals of this asset are paused");
    }
    if amount < asset.withdrawal_min {
        return refuse(
            "below_minimum",
            "the amount is below the asset's minimum withdrawal",
        );
    }
    if amount > asset.withdrawal_max {
        return refuse(
            "above_maximum",
            "the amount is above the asset's maximum withdrawal",
        );
    }
    let review = amount > asset.review_threshold;
    let (state, cause) = if review {
        (
            TxState::ManualReview,
            "funds held; above the review threshold, waiting for a reviewer",
        )
    } else {
        (TxState::PendingBroadcast, "funds held; waiting for broadcast")
    };
    let ledger =
        LedgerTransaction::withdrawal_hold(&asset.symbol, &wallet.id, amount).map_err(ledger_error)?;
    let movement = NewMovement {
        ledger,
        ledger_key: format!("api:{}:{}", principal.user_id, key),
        state,
        timeline: initial_timeline(&[(TxState::Created, "requested"), (state, cause)]),
        amount,
        decimals: asset.decimals,
        initiated_by: principal.user_id.clone(),
        from_wallet_id: Some(wallet.id.clone()),
        to_wallet_id: None,
        external_reference: None,
        destination: Some(body.destination_address.to_lowercase()),
        participants: vec![principal.user_id.clone()],
        velocity: Some(VelocityCharge::daily(
            &wallet.id,
            amount,
            asset.daily_withdrawal_limit,
            Utc::now(),
        )),
    };
    let (tx, fresh) = apply(&ctx, movement).await?;
    let tx = same_movement(tx, fresh, &wallet.id, None, amount)?;
    if fresh {
        if review {
            ctx.metrics().refused("withdrawal", "manual_review");
        }
        let details = coffer_store::mongodb::bson::doc! {
            "wallet_id": &wallet.id, "device_id": device, "review": review,
        };
        // The money is held already: a trail that cannot be written is an operator problem, not
        // a reason to answer this request with an error.
        let actor = &principal.user_id;
        let action = coffer_store::audit_chain::actions::WITHDRAWAL_REQUESTED;
        if let Err(error) = ctx.store().audit(actor, action, &tx.id, details).await {
            tracing::error!(transaction_id = %tx.id, %error, "withdrawal held but its audit record failed");
        }
    }
    Ok(created(&tx, &asset))
}
