//! Money-moving endpoints. Each handler parses, authorizes, asks the domain for a plan
//! (`coffer_domain::plan`), hands it to the store's group commit with the response its
//! Idempotency-Key keeps, and renders the committed record.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use coffer_domain::plan::{self, RailDeposit, RailHold, Refusal, WithdrawalAuthority};
use coffer_domain::policy::{self, RiskProfile, TransferContext};
use coffer_domain::{Amount, AssetConfig, Movement, Origin, WalletRef};
use coffer_store::batch::{IdempotentWrite, Submission};
use coffer_store::idempotency::StoredResponse;
use coffer_store::rail_deposits::{RailDepositDoc, RailDepositStatus};
use coffer_store::{StoreError, TransactionDoc};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::admin::rail_deposits::RailDepositView;
use crate::devices::SignedRequest;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::roles::{PaymentService, Users};
use crate::extract::{Authorized, JsonWithBytes, Principal, ValidJson};
use crate::idempotency::{idempotency_key, IdempotencyContext, MaybeReplay};
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

#[derive(Deserialize, ToSchema, Clone)]
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
    /// The chain address to pay out to (EVM: 0x + 40 hex digits, EIP-55 checksummed if mixed
    /// case): one of the caller's saved addresses (`/v1/address-book`) past its cooling-off.
    pub destination_address: String,
}

fn wallet_not_found(field: &str) -> ApiError {
    ApiError::UnknownReference {
        code: "wallet_not_found",
        detail: format!("{field} does not name a wallet you can use"),
    }
}

/// A plan's refusal as a problem document.
pub(crate) fn refusal(refusal: Refusal, field: &str) -> ApiError {
    let detail = refusal.to_string();
    match refusal {
        Refusal::NotAUserWallet => wallet_not_found(field),
        Refusal::AmountTooLarge => ApiError::invalid_field(refusal.code(), "amount", detail),
        Refusal::DeviceNotTrusted => crate::devices::untrusted(),
        Refusal::ReauthenticationRequired => ApiError::Unauthenticated { code: refusal.code() },
        Refusal::AccountFrozen
        | Refusal::VerificationRequired
        | Refusal::StaffAccount
        | Refusal::SameApprover
        | Refusal::OwnAccount => ApiError::ForbiddenBecause {
            code: refusal.code(),
            detail,
        },
        _ => ApiError::Unprocessable {
            code: refusal.code(),
            detail,
        },
    }
}

pub(crate) fn parse_amount(text: &str, asset: &AssetConfig) -> ApiResult<Amount> {
    Amount::parse_positive(text, asset.decimals).map_err(|e| ApiError::amount(e, "amount"))
}

pub(crate) fn asset_of(ctx: &ApiContext, symbol: &str) -> ApiResult<AssetConfig> {
    ctx.assets()
        .current()
        .get(symbol)
        .cloned()
        .ok_or(ApiError::Unprocessable {
            code: "asset_unavailable",
            detail: "this wallet's asset is not currently supported".into(),
        })
}

/// The wallets named by `ids` (owner and asset), from the store's cache of immutable facts.
pub(crate) async fn wallets(
    ctx: &ApiContext,
    ids: &[&str],
) -> ApiResult<std::collections::HashMap<String, WalletRef>> {
    Ok(ctx.store().wallet_refs(ids).await?)
}

pub(crate) fn origin(principal: &Principal) -> Origin {
    Origin {
        transaction_id: coffer_store::new_id(),
        now: Utc::now(),
        initiated_by: principal.user_id.clone(),
    }
}

/// The 201 a new movement answers, as stored for its Idempotency-Key.
fn render_created(tx: &TransactionDoc) -> StoredResponse {
    let body = serde_json::to_vec(&TransactionView::from_doc(tx)).expect("views serialize");
    StoredResponse {
        status: StatusCode::CREATED.as_u16(),
        content_type: "application/json".into(),
        body,
    }
}

pub(crate) fn created(tx: &TransactionDoc) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(TransactionView::from_doc(tx))).into_response())
}

/// What applying a movement came to.
pub(crate) enum Applied {
    /// Committed now.
    Fresh(Box<TransactionDoc>),
    /// Applied before (its ledger key or idempotency key is taken): the duplicate's answer,
    /// marked so the middleware replays the stored response instead when there is one.
    Duplicate(Response),
    /// A limit counter of the movement would pass its limit; nothing was written.
    LimitExceeded,
}

/// Applies `movement` with the caller's idempotency record; `duplicate` answers a movement that
/// was applied before (given the existing record, or None when only the key was taken).
pub(crate) async fn apply(
    ctx: &ApiContext,
    movement: Movement,
    request: Option<IdempotencyContext>,
    duplicate: impl FnOnce(Option<&TransactionDoc>) -> ApiResult<Response>,
) -> ApiResult<Applied> {
    let idempotency = request.map(|r| IdempotentWrite {
        scope: r.scope,
        key: r.key,
        fingerprint: r.fingerprint,
        render: Arc::new(render_created),
    });
    let submission = Submission {
        movement,
        idempotency,
    };
    let answer = match ctx.store().apply(submission).await {
        Ok(tx) => return Ok(Applied::Fresh(Box::new(tx))),
        Err(StoreError::DuplicateLedgerKey(existing)) => duplicate(Some(&existing)),
        Err(StoreError::IdempotencyKeyTaken) => duplicate(None),
        Err(StoreError::LimitExceeded) => return Ok(Applied::LimitExceeded),
        Err(other) => return Err(other.into()),
    };
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(MaybeReplay);
    Ok(Applied::Duplicate(response))
}

impl Applied {
    pub(crate) fn respond(self) -> ApiResult<Response> {
        match self {
            Applied::Fresh(tx) => created(&tx),
            Applied::Duplicate(response) => Ok(response),
            Applied::LimitExceeded => Err(StoreError::LimitExceeded.into()),
        }
    }
}

pub(crate) fn key_reused() -> ApiError {
    ApiError::Unprocessable {
        code: "idempotency_key_reused",
        detail: "this Idempotency-Key was used for a different request".into(),
    }
}

/// Move funds between two wallets of one asset, under the asset's transfer policy: the sender's
/// risk state (frozen, verified), a recent login above `transfer.reauthentication_above`, the
/// first-recipient cap, the daily limit (charged atomically with the transfer) and, above
/// `transfer.review_threshold`, a hold in ManualReview until a reviewer decides.
#[utoipa::path(post, path = "/v1/transfers", tag = "money", request_body = TransferRequest,
    params(("Idempotency-Key" = String, Header, description = "Required; the same key replays the stored response")),
    responses((status = 201, body = TransactionView), (status = 400, body = Problem),
              (status = 401, description = "reauthentication_required: above the asset's transfer.reauthentication_above, log in again", body = Problem),
              (status = 422, description = "insufficient_funds, same_wallet, asset_mismatch, daily_limit_exceeded, first_recipient_limit", body = Problem),
              (status = 403, description = "forbidden: only users move money between wallets; account_frozen, verification_required", body = Problem),
              (status = 404, description = "wallet_not_found", body = Problem),
              (status = 409, description = "idempotency_key_in_progress", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_transfer(
    State(ctx): State<ApiContext>,
    principal: Authorized<Users>,
    headers: HeaderMap,
    request: Option<IdempotencyContext>,
    ValidJson(body): ValidJson<TransferRequest>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let found = wallets(&ctx, &[&body.from_wallet_id, &body.to_wallet_id]).await?;
    let from = found
        .get(&body.from_wallet_id)
        .filter(|w| w.user_id.as_deref() == Some(principal.user_id.as_str()))
        .ok_or_else(|| wallet_not_found("from_wallet_id"))?;
    let asset = asset_of(&ctx, &from.asset)?;
    let amount = parse_amount(&body.amount, &asset)?;
    let to = found
        .get(&body.to_wallet_id)
        .ok_or_else(|| wallet_not_found("to_wallet_id"))?;
    let context = TransferContext {
        risk: risk_of(&ctx, &principal.user_id).await?,
        seconds_since_login: Utc::now().timestamp() - principal.auth_time,
        reauthentication_window_seconds: ctx.config().withdrawal_reauth_window.as_secs() as i64,
        first_time_recipient: !ctx.store().has_paid_before(&from.id, &to.id).await?,
        tiers: ctx.config().tier_limits,
    };
    let origin = origin(&principal);
    let decision = policy::decide_transfer(&asset.transfer, &context, &from.id, amount, origin.now)
        .map_err(|r| refusal(r, "amount"))?;
    let planned = match decision.review {
        true => plan::plan_transfer_review(origin, &key, from, to, amount, &asset),
        false => plan::plan_transfer(origin, &key, from, to, amount, &asset),
    };
    let mut movement = planned.map_err(|r| refusal(r, "to_wallet_id"))?;
    movement.limits.extend(decision.limit);
    let (from_id, to_id) = (from.id.clone(), to.id.clone());
    let applied = apply(&ctx, movement, request, |existing| match existing {
        Some(tx) if same(tx, &from_id, Some(&to_id), amount) => created(tx),
        _ => Err(key_reused()),
    })
    .await?;
    if decision.review && matches!(applied, Applied::Fresh(_)) {
        ctx.metrics().refused("transfer", "manual_review");
    }
    applied.respond()
}

/// The caller's risk state (S8), read for each money-out request (a freeze applies at once, on
/// every replica).
pub(crate) async fn risk_of(ctx: &ApiContext, user_id: &str) -> ApiResult<RiskProfile> {
    let user = ctx
        .store()
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::Unauthenticated {
            code: "unauthenticated",
        })?;
    Ok(coffer_store::risk::profile_of(
        &user,
        ctx.config().kyc_default_tier,
    ))
}

/// A replayed ledger key must be the same movement; otherwise the client reused a key (possibly
/// after its 24 h idempotency record expired) for a different request.
fn same(tx: &TransactionDoc, from: &str, to: Option<&str>, amount: Amount) -> bool {
    tx.from_wallet_id.as_deref() == Some(from) && tx.to_wallet_id.as_deref() == to && tx.amount == amount
}

/// The rail the payment service role reports for (asset config `rails.payment`).
pub(crate) const PAYMENT_RAIL: &str = "payment";

/// Credit a wallet from a payment rail (service role `payment` only). Under the asset's caps of
/// the rail (`rails.payment`): a deposit above `deposit_max`, or one that would take the rail's
/// credits of the UTC day past `daily_limit`, is not credited but held for finance or an admin
/// (202, `GET /v1/admin/rail-deposits`); the same reference answers the same held record.
#[utoipa::path(post, path = "/v1/deposits", tag = "money", request_body = DepositRequest,
    params(("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 201, body = TransactionView), (status = 200, description = "this external_reference was already credited", body = TransactionView),
              (status = 202, description = "held above the rail's caps for a staff approval, nothing credited (also the answer to a repeat of a held or rejected reference)", body = RailDepositView),
              (status = 400, body = Problem),
              (status = 403, description = "forbidden: the payment role only", body = Problem),
              (status = 404, description = "wallet_not_found", body = Problem),
              (status = 409, description = "external_reference_conflict", body = Problem),
              (status = 422, description = "deposits_disabled, asset_unavailable, balance_limit_exceeded", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_deposit(
    State(ctx): State<ApiContext>,
    principal: Authorized<PaymentService>,
    headers: HeaderMap,
    request: Option<IdempotencyContext>,
    ValidJson(body): ValidJson<DepositRequest>,
) -> ApiResult<Response> {
    idempotency_key(&headers)?;
    let found = wallets(&ctx, &[&body.wallet_id]).await?;
    let deposit = check_deposit(&ctx, &found, &body)?;
    // A reference held before keeps its answer, whatever the caps say now.
    if let Some(held) = ctx
        .store()
        .rail_deposit_by_reference(PAYMENT_RAIL, &deposit.reference)
        .await?
    {
        return Ok(held_outcome(&ctx, &held, &deposit).await?.respond());
    }
    let movement = match plan_deposit(&ctx, &principal, &deposit).await? {
        RailDeposit::Credit(movement) => *movement,
        RailDeposit::Hold(cause) => return Ok(hold(&ctx, &principal, &deposit, cause).await?.respond()),
    };
    let applied = apply(&ctx, movement, request, |existing| match existing {
        Some(tx) => same_credit(tx, &deposit)
            .map(|()| DepositOutcome::AlreadyCredited(Box::new(tx.clone())).respond()),
        None => Err(key_reused()),
    })
    .await?;
    match applied {
        // Past the rail's daily cap (the counter was read and refused in the credit's transaction).
        Applied::LimitExceeded => Ok(hold(&ctx, &principal, &deposit, RailHold::DailyLimit)
            .await?
            .respond()),
        other => other.respond(),
    }
}

/// A rail's report, parsed and checked against the wallet and its asset.
pub(crate) struct CheckedDeposit {
    pub reference: String,
    pub wallet: WalletRef,
    pub asset: AssetConfig,
    pub amount: Amount,
}

/// Checks a rail's report: its reference, a user's wallet among `found`, the asset and amount.
pub(crate) fn check_deposit(
    ctx: &ApiContext,
    found: &std::collections::HashMap<String, WalletRef>,
    body: &DepositRequest,
) -> ApiResult<CheckedDeposit> {
    let reference = body.external_reference.trim();
    if reference.is_empty() || reference.len() > 128 {
        return Err(ApiError::invalid_field(
            "invalid_external_reference",
            "external_reference",
            "1 to 128 characters",
        ));
    }
    let wallet = found
        .get(&body.wallet_id)
        .filter(|w| w.user_id.is_some())
        .ok_or_else(|| wallet_not_found("wallet_id"))?;
    let asset = asset_of(ctx, &wallet.asset)?;
    let amount = parse_amount(&body.amount, &asset)?;
    Ok(CheckedDeposit {
        reference: reference.to_string(),
        wallet: wallet.clone(),
        asset,
        amount,
    })
}

/// The domain's plan for a checked report (credit, or hold above the rail's caps), the asset's
/// platform accounts made sure of.
pub(crate) async fn plan_deposit(
    ctx: &ApiContext,
    principal: &Principal,
    deposit: &CheckedDeposit,
) -> ApiResult<RailDeposit> {
    let planned = plan::plan_rail_deposit(
        origin(principal),
        PAYMENT_RAIL,
        &deposit.reference,
        &deposit.wallet,
        deposit.amount,
        &deposit.asset,
    )
    .map_err(|r| refusal(r, "wallet_id"))?;
    ctx.store()
        .ensure_platform_accounts(&deposit.asset.symbol, deposit.asset.decimals)
        .await?;
    Ok(planned)
}

/// What a rail's report came to.
pub(crate) enum DepositOutcome {
    /// Credited now (201).
    Credited(Box<TransactionDoc>),
    /// This reference was credited before, with the same wallet and amount (200).
    AlreadyCredited(Box<TransactionDoc>),
    /// Held above the rail's caps for staff (202); also the answer to a held or rejected reference.
    Held(Box<RailDepositDoc>),
}

impl DepositOutcome {
    fn respond(self) -> Response {
        match self {
            DepositOutcome::Credited(tx) => {
                (StatusCode::CREATED, Json(TransactionView::from_doc(&tx))).into_response()
            }
            DepositOutcome::AlreadyCredited(tx) => {
                (StatusCode::OK, Json(TransactionView::from_doc(&tx))).into_response()
            }
            DepositOutcome::Held(held) => {
                (StatusCode::ACCEPTED, Json(RailDepositView::from_doc(&held))).into_response()
            }
        }
    }
}

/// A reference credited already must be the same report: otherwise `external_reference_conflict`.
pub(crate) fn same_credit(tx: &TransactionDoc, deposit: &CheckedDeposit) -> ApiResult<()> {
    if tx.to_wallet_id.as_deref() == Some(deposit.wallet.id.as_str()) && tx.amount == deposit.amount {
        Ok(())
    } else {
        Err(ApiError::Conflict {
            code: "external_reference_conflict",
            detail: "this external_reference was credited with a different wallet or amount".into(),
        })
    }
}

/// Holds the deposit for staff, audited with the record (`rail_deposit.held`).
pub(crate) async fn hold(
    ctx: &ApiContext,
    principal: &Principal,
    deposit: &CheckedDeposit,
    cause: RailHold,
) -> ApiResult<DepositOutcome> {
    let (wallet, asset) = (&deposit.wallet, &deposit.asset);
    let user_id = wallet
        .user_id
        .clone()
        .ok_or_else(|| wallet_not_found("wallet_id"))?;
    let hold = coffer_store::rail_deposits::NewRailHold {
        rail: PAYMENT_RAIL.to_string(),
        reference: deposit.reference.clone(),
        wallet_id: wallet.id.clone(),
        user_id,
        asset: asset.symbol.clone(),
        decimals: asset.decimals,
        amount: deposit.amount,
        cause: cause.as_str(),
        reported_by: principal.user_id.clone(),
    };
    let details = serde_json::json!({ "wallet_id": &wallet.id, "asset": &asset.symbol,
        "amount_atomic": deposit.amount.to_string(), "cause": cause.as_str() });
    let audit = coffer_store::audit::Audit::new(
        &principal.user_id,
        coffer_store::audit_chain::actions::RAIL_DEPOSIT_HELD,
    )
    .with_details(details);
    let key = plan::rail_ledger_key(PAYMENT_RAIL, &deposit.reference);
    match ctx.store().hold_rail_deposit(hold, &key, audit).await {
        Ok((held, fresh)) => {
            if fresh {
                ctx.metrics().refused("deposit", "manual_review");
            }
            held_outcome(ctx, &held, deposit).await
        }
        Err(StoreError::DuplicateLedgerKey(tx)) => {
            same_credit(&tx, deposit)?;
            Ok(DepositOutcome::AlreadyCredited(tx))
        }
        Err(other) => Err(other.into()),
    }
}

/// The answer to a reference that was held: its record, or its credit once approved; a report
/// with another wallet or amount is a conflict.
pub(crate) async fn held_outcome(
    ctx: &ApiContext,
    held: &RailDepositDoc,
    deposit: &CheckedDeposit,
) -> ApiResult<DepositOutcome> {
    if held.wallet_id != deposit.wallet.id || held.amount != deposit.amount {
        return Err(ApiError::Conflict {
            code: "external_reference_conflict",
            detail: "this external_reference was reported with a different wallet or amount".into(),
        });
    }
    if let Some(tx_id) = held
        .transaction_id
        .as_deref()
        .filter(|_| held.status == RailDepositStatus::Approved)
    {
        let tx = ctx
            .store()
            .transaction_by_id(tx_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        same_credit(&tx, deposit)?;
        return Ok(DepositOutcome::AlreadyCredited(Box::new(tx)));
    }
    Ok(DepositOutcome::Held(Box::new(held.clone())))
}

/// Request a withdrawal. Risk checks come first, before anything is held or signed: a trusted
/// device's signature of this request (`X-Device-*`, its nonce spent once), a destination saved
/// in the caller's address book past its cooling-off, a password login within the re-authentication window, the asset's
/// switch, minimum and maximum, and the daily limit (charged atomically with the hold). The amount
/// moves from available to held; the transaction waits in PendingBroadcast for the broadcaster, or
/// in ManualReview when it is above the asset's review threshold.
#[utoipa::path(post, path = "/v1/withdrawals", tag = "money", request_body = WithdrawalRequest,
    params(("Idempotency-Key" = String, Header, description = "Required"),
           ("X-Device-Id" = String, Header, description = "A trusted device of the caller"),
           ("X-Device-Timestamp" = i64, Header, description = "Unix seconds of the signature (within COFFER_DEVICE_SIGNATURE_MAX_AGE_SECONDS of the server's clock)"),
           ("X-Device-Nonce" = String, Header, description = "16 to 64 of A-Z a-z 0-9 _ -, accepted once"),
           ("X-Device-Signature" = String, Header, description = "Base64 Ed25519 signature by the device of method, path, device id, timestamp, nonce and the body's SHA-256 (docs/security.md)")),
    responses((status = 201, description = "held; state pending_broadcast or manual_review", body = TransactionView),
              (status = 401, description = "reauthentication_required: log in again", body = Problem),
              (status = 400, description = "invalid_address, invalid_address_checksum", body = Problem),
              (status = 403, description = "forbidden (not a user), device_not_trusted, device_signature_invalid, device_signature_replayed, account_frozen, verification_required", body = Problem),
              (status = 404, description = "wallet_not_found", body = Problem),
              (status = 422, description = "insufficient_funds, below_minimum, above_maximum, daily_limit_exceeded, withdrawals_disabled, destination_not_saved, destination_cooling_off", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_withdrawal(
    State(ctx): State<ApiContext>,
    principal: Authorized<Users>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    request: Option<IdempotencyContext>,
    JsonWithBytes { value: body, bytes }: JsonWithBytes<WithdrawalRequest>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let signed = SignedRequest {
        method: &method,
        uri: &uri,
        body: &bytes,
    };
    let proof = crate::devices::signed_by_trusted_device(&ctx, &principal, &headers, &signed).await?;
    let authority = WithdrawalAuthority {
        device_trusted: proof.is_some(),
        seconds_since_login: Utc::now().timestamp() - principal.auth_time,
        reauthentication_window_seconds: ctx.config().withdrawal_reauth_window.as_secs() as i64,
    };
    plan::authorize_withdrawal(&authority).map_err(|r| refusal(r, "wallet_id"))?;
    let risk = risk_of(&ctx, &principal.user_id).await?;
    policy::authorize_risk(&risk).map_err(|r| refusal(r, "wallet_id"))?;
    let found = wallets(&ctx, &[&body.wallet_id]).await?;
    let wallet = found
        .get(&body.wallet_id)
        .filter(|w| w.user_id.as_deref() == Some(principal.user_id.as_str()))
        .ok_or_else(|| wallet_not_found("wallet_id"))?;
    let mut asset = asset_of(&ctx, &wallet.asset)?;
    asset.daily_withdrawal_limit = ctx
        .config()
        .tier_limits
        .scale(asset.daily_withdrawal_limit, risk.tier);
    let amount = parse_amount(&body.amount, &asset)?;
    let destination = crate::address_book::parse_address(&body.destination_address, "destination_address")?;
    let saved = ctx
        .store()
        .saved_address(&principal.user_id, &asset.chain, &destination)
        .await?;
    plan::authorize_destination(saved.map(|s| s.usable_from), Utc::now())
        .map_err(|r| refusal(r, "destination_address"))?;
    let movement = plan::plan_withdrawal(origin(&principal), &key, wallet, amount, &destination, &asset)
        .map_err(|r| refusal(r, "wallet_id"))?;
    let review = movement.state == coffer_domain::TxState::ManualReview;
    let wallet_id = wallet.id.clone();
    // Last before the movement, so that a request refused above leaves no trace; a replayed
    // signature stops here, on whichever replica it reaches.
    let device = match &proof {
        Some(proof) => {
            proof.spend(&ctx).await?;
            Some(proof.device_id.clone())
        }
        None => None,
    };
    let applied = apply(&ctx, movement, request, |existing| match existing {
        Some(tx) if same(tx, &wallet_id, None, amount) => created(tx),
        _ => Err(key_reused()),
    })
    .await?;
    if let Applied::Fresh(tx) = &applied {
        if review {
            ctx.metrics().refused("withdrawal", "manual_review");
        }
        // Its audit record (`movement.withdrawal`) was written in the movement's transaction.
        tracing::debug!(transaction_id = %tx.id, device_id = ?device, review, "withdrawal held");
    }
    applied.respond()
}
