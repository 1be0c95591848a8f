//! Conversion between a caller's own wallets of two assets (L11): `POST /v1/quotes` prices it,
//! `POST /v1/conversions` executes a quote once, before it expires. The money rules (rates,
//! rounding in the platform's favour, the two legs) are `coffer_domain::conversion`; the store
//! executes a quote in one database transaction (`coffer_store::conversions`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_domain::conversion::{self, ConversionRefusal, Fixed, Quoted, Rate, RateTable};
use coffer_domain::{policy, WalletRef};
use coffer_store::conversions::{ConversionIdempotency, ExecuteError, Execution, QuoteDoc, QuoteStatus};
use coffer_store::idempotency::StoredResponse;
use coffer_store::{StoreError, TransactionDoc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::roles::Users;
use crate::extract::{Authorized, Principal, ValidJson};
use crate::idempotency::{idempotency_key, IdempotencyContext, MaybeReplay};
use crate::money::{asset_of, origin};
use crate::views::{time, TransactionView};
use crate::ApiContext;

/// Where rates come from. The configured [`RateTable`] is the one implementation today; a live
/// price feed plugs in here by keeping its latest prices in memory (a background task updates
/// them), so a quote never waits on the network. `None`: the pair is not offered.
pub trait RateSource: Send + Sync + 'static {
    /// The rate a user gets from `from` to `to`, the platform's spread already taken.
    fn rate(&self, from: &str, to: &str) -> Option<Rate>;
    /// The spread in basis points that [`RateSource::rate`] took, as shown on quotes.
    fn spread_bps(&self) -> u32;
}

impl RateSource for RateTable {
    fn rate(&self, from: &str, to: &str) -> Option<Rate> {
        RateTable::rate(self, from, to)
    }

    fn spread_bps(&self) -> u32 {
        RateTable::spread_bps(self)
    }
}

/// Longest lifetime of a quote (`COFFER_QUOTE_TTL_SECONDS` is 1 to this).
pub const QUOTE_TTL_MAX: Duration = Duration::from_secs(300);

/// Conversion settings: the rate source and how long a quote stays executable.
#[derive(Clone)]
pub struct FxConfig {
    pub rates: Arc<dyn RateSource>,
    /// `COFFER_QUOTE_TTL_SECONDS`, default 30 s, at most [`QUOTE_TTL_MAX`].
    pub quote_ttl: Duration,
}

impl std::fmt::Debug for FxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FxConfig")
            .field("spread_bps", &self.rates.spread_bps())
            .field("quote_ttl", &self.quote_ttl)
            .finish_non_exhaustive()
    }
}

impl Default for FxConfig {
    /// The dev table (`coffer_domain::conversion::DEV_RATES`, 50 bps), quotes for 30 s.
    fn default() -> Self {
        let table = RateTable::parse(conversion::DEV_RATES, conversion::DEV_SPREAD_BPS)
            .expect("the dev rate table parses");
        FxConfig {
            rates: Arc::new(table),
            quote_ttl: Duration::from_secs(30),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    /// A wallet of the caller: what they pay from.
    pub from_wallet_id: String,
    /// Another wallet of the caller, of a different asset: what they receive into.
    pub to_wallet_id: String,
    /// What the caller pays, a decimal string in the source asset's units. Exactly one of
    /// `from_amount` and `to_amount`.
    #[serde(default)]
    pub from_amount: Option<String>,
    /// What the caller receives, a decimal string in the target asset's units.
    #[serde(default)]
    pub to_amount: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionRequest {
    /// The id of an open quote of the caller.
    pub quote_id: String,
}

/// A conversion quote: what the caller would pay and receive, executable once until
/// `expires_at`.
#[derive(Serialize, ToSchema)]
pub struct QuoteView {
    pub id: String,
    pub from_wallet_id: String,
    pub to_wallet_id: String,
    pub from_asset: String,
    pub to_asset: String,
    /// What the caller pays, in the source asset's units.
    pub from_amount: String,
    /// What the caller receives, in the target asset's units.
    pub to_amount: String,
    /// Whole target units per whole source unit, after the spread; exact.
    pub rate: String,
    /// The platform's spread taken from the mid rate, in basis points.
    pub spread_bps: u32,
    /// open or used.
    pub status: String,
    pub created_at: String,
    pub expires_at: String,
}

impl QuoteView {
    pub fn from_doc(quote: &QuoteDoc) -> Self {
        QuoteView {
            id: quote.id.clone(),
            from_wallet_id: quote.from_wallet_id.clone(),
            to_wallet_id: quote.to_wallet_id.clone(),
            from_asset: quote.from_asset.clone(),
            to_asset: quote.to_asset.clone(),
            from_amount: quote.from_amount.to_decimal_string(quote.from_decimals),
            to_amount: quote.to_amount.to_decimal_string(quote.to_decimals),
            rate: quote.rate.clone(),
            spread_bps: quote.spread_bps,
            status: quote.status.as_str().to_string(),
            created_at: time(&quote.created_at),
            expires_at: time(&quote.expires_at),
        }
    }
}

/// An executed conversion: the used quote and its two legs, one transaction per asset.
#[derive(Serialize, ToSchema)]
pub struct ConversionView {
    pub quote: QuoteView,
    /// The source wallet → the FX account of the source asset.
    pub debit: TransactionView,
    /// The FX account of the target asset → the target wallet.
    pub credit: TransactionView,
}

fn conversion_refusal(refusal: ConversionRefusal, field: &str) -> ApiError {
    let detail = refusal.to_string();
    match refusal {
        ConversionRefusal::NotOwnWallet => ApiError::UnknownReference {
            code: "wallet_not_found",
            detail: format!("{field} does not name a wallet you can use"),
        },
        ConversionRefusal::AmountTooLarge => ApiError::invalid_field(refusal.code(), field, detail),
        _ => ApiError::Unprocessable {
            code: refusal.code(),
            detail,
        },
    }
}

/// The caller's two wallets, or 404 for either that is not theirs; 422 `same_asset`.
async fn own_wallets(
    ctx: &ApiContext,
    principal: &Principal,
    from_id: &str,
    to_id: &str,
) -> ApiResult<(WalletRef, WalletRef)> {
    let found = ctx.store().wallet_refs(&[from_id, to_id]).await?;
    let owned = |id: &str| {
        found
            .get(id)
            .filter(|w| w.user_id.as_deref() == Some(principal.user_id.as_str()))
            .cloned()
    };
    let from = owned(from_id)
        .ok_or_else(|| conversion_refusal(ConversionRefusal::NotOwnWallet, "from_wallet_id"))?;
    let to =
        owned(to_id).ok_or_else(|| conversion_refusal(ConversionRefusal::NotOwnWallet, "to_wallet_id"))?;
    conversion::authorize(&principal.user_id, &from, &to)
        .map_err(|r| conversion_refusal(r, "to_wallet_id"))?;
    Ok((from, to))
}

/// Price a conversion between two of the caller's wallets. Name exactly one side: `from_amount`
/// (you pay exactly this; you receive the floor of it at the rate) or `to_amount` (you receive
/// exactly this; you pay the ceiling). The quote can be executed once, until `expires_at`
/// (`COFFER_QUOTE_TTL_SECONDS`). Rates are the configured table less the spread.
#[utoipa::path(post, path = "/v1/quotes", tag = "money", request_body = QuoteRequest,
    responses((status = 201, body = QuoteView),
              (status = 400, description = "invalid_field (not exactly one amount), amount_*", body = Problem),
              (status = 403, description = "forbidden: users only", body = Problem),
              (status = 404, description = "wallet_not_found: either wallet is not the caller's", body = Problem),
              (status = 422, description = "same_asset, conversion_unavailable, amount_too_small, asset_unavailable", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_quote(
    State(ctx): State<ApiContext>,
    principal: Authorized<Users>,
    ValidJson(body): ValidJson<QuoteRequest>,
) -> ApiResult<Response> {
    let (from, to) = own_wallets(&ctx, &principal, &body.from_wallet_id, &body.to_wallet_id).await?;
    let from_asset = asset_of(&ctx, &from.asset)?;
    let to_asset = asset_of(&ctx, &to.asset)?;
    let fixed = match (&body.from_amount, &body.to_amount) {
        (Some(text), None) => Fixed::From(
            coffer_domain::Amount::parse_positive(text, from_asset.decimals)
                .map_err(|e| ApiError::amount(e, "from_amount"))?,
        ),
        (None, Some(text)) => Fixed::To(
            coffer_domain::Amount::parse_positive(text, to_asset.decimals)
                .map_err(|e| ApiError::amount(e, "to_amount"))?,
        ),
        _ => {
            return Err(ApiError::invalid_field(
                "invalid_field",
                "from_amount",
                "give exactly one of from_amount and to_amount",
            ))
        }
    };
    let field = match fixed {
        Fixed::From(_) => "from_amount",
        Fixed::To(_) => "to_amount",
    };
    let rates = &ctx.config().fx.rates;
    let rate = rates
        .rate(&from_asset.symbol, &to_asset.symbol)
        .ok_or_else(|| conversion_refusal(ConversionRefusal::PairUnavailable, field))?;
    let quoted = conversion::quote(&rate, from_asset.decimals, to_asset.decimals, fixed)
        .map_err(|r| conversion_refusal(r, field))?;
    let now = coffer_store::codec::now();
    let ttl = chrono::Duration::from_std(ctx.config().fx.quote_ttl).expect("bounded ttl");
    let expires_at = now + ttl;
    let retention = chrono::Duration::from_std(coffer_store::conversions::QUOTE_RETENTION).expect("a day");
    let quote = QuoteDoc {
        id: coffer_store::new_id(),
        user_id: principal.user_id.clone(),
        from_wallet_id: from.id.clone(),
        to_wallet_id: to.id.clone(),
        from_asset: from_asset.symbol.clone(),
        to_asset: to_asset.symbol.clone(),
        from_decimals: from_asset.decimals,
        to_decimals: to_asset.decimals,
        from_amount: quoted.from_amount,
        to_amount: quoted.to_amount,
        rate: rate.to_decimal_string(),
        spread_bps: rates.spread_bps(),
        status: QuoteStatus::Open,
        created_at: now,
        expires_at,
        purge_at: expires_at + retention,
        used_at: None,
        debit_transaction_id: None,
        credit_transaction_id: None,
    };
    ctx.store().create_quote(&quote).await?;
    Ok((StatusCode::CREATED, Json(QuoteView::from_doc(&quote))).into_response())
}

fn render(quote: &QuoteDoc, debit: &TransactionDoc, credit: &TransactionDoc) -> ConversionView {
    ConversionView {
        quote: QuoteView::from_doc(quote),
        debit: TransactionView::from_doc(debit),
        credit: TransactionView::from_doc(credit),
    }
}

fn render_stored(quote: &QuoteDoc, debit: &TransactionDoc, credit: &TransactionDoc) -> StoredResponse {
    StoredResponse {
        status: StatusCode::CREATED.as_u16(),
        content_type: "application/json".into(),
        body: serde_json::to_vec(&render(quote, debit, credit)).expect("views serialize"),
    }
}

fn quote_used() -> ApiError {
    ApiError::Conflict {
        code: "quote_used",
        detail: "this quote was executed already; ask for a new one".into(),
    }
}

/// Execute a quote of the caller, once, before it expires: the quoted source amount leaves the
/// source wallet for the FX account of its asset, and the quoted target amount reaches the target
/// wallet from the FX account of the other asset, in one database transaction (two ledger
/// transactions, one per asset, each balanced). The same Idempotency-Key replays the response.
#[utoipa::path(post, path = "/v1/conversions", tag = "money", request_body = ConversionRequest,
    params(("Idempotency-Key" = String, Header, description = "Required; the same key replays the stored response")),
    responses((status = 201, body = ConversionView), (status = 400, body = Problem),
              (status = 403, description = "forbidden (not a user), account_frozen, verification_required", body = Problem),
              (status = 404, description = "quote_not_found (no such quote of the caller), wallet_not_found", body = Problem),
              (status = 409, description = "quote_expired, quote_used, idempotency_key_in_progress", body = Problem),
              (status = 422, description = "insufficient_funds, balance_limit_exceeded, asset_unavailable, idempotency_key_reused", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_conversion(
    State(ctx): State<ApiContext>,
    principal: Authorized<Users>,
    headers: HeaderMap,
    request: Option<IdempotencyContext>,
    ValidJson(body): ValidJson<ConversionRequest>,
) -> ApiResult<Response> {
    idempotency_key(&headers)?;
    let answer = execute(&ctx, &principal, request, &body).await;
    match answer {
        // A repeat of an executed request: the middleware replays the stored response.
        Err(error) if error.code() == "quote_used" => {
            let mut response = error.into_response();
            response.extensions_mut().insert(MaybeReplay);
            Ok(response)
        }
        other => other,
    }
}

async fn execute(
    ctx: &ApiContext,
    principal: &Principal,
    request: Option<IdempotencyContext>,
    body: &ConversionRequest,
) -> ApiResult<Response> {
    let not_found = || ApiError::UnknownReference {
        code: "quote_not_found",
        detail: "quote_id does not name a quote of yours".into(),
    };
    if body.quote_id.is_empty() || body.quote_id.len() > 64 {
        return Err(not_found());
    }
    let quote = ctx
        .store()
        .quote_of(&principal.user_id, &body.quote_id)
        .await?
        .ok_or_else(not_found)?;
    let user = ctx
        .store()
        .user_by_id(&principal.user_id)
        .await?
        .ok_or(ApiError::Unauthenticated {
            code: "unauthenticated",
        })?;
    let risk = coffer_store::risk::profile_of(&user, ctx.config().kyc_default_tier);
    policy::authorize_risk(&risk).map_err(|r| crate::money::refusal(r, "quote_id"))?;
    let (from, to) = own_wallets(ctx, principal, &quote.from_wallet_id, &quote.to_wallet_id).await?;
    let from_asset = asset_of(ctx, &quote.from_asset)?;
    let to_asset = asset_of(ctx, &quote.to_asset)?;
    if from_asset.decimals != quote.from_decimals || to_asset.decimals != quote.to_decimals {
        return Err(ApiError::Conflict {
            code: "quote_expired",
            detail: "the assets changed since this quote; ask for a new one".into(),
        });
    }
    let quoted = Quoted {
        from_amount: quote.from_amount,
        to_amount: quote.to_amount,
    };
    let legs = conversion::plan_conversion(
        origin(principal),
        coffer_store::new_id(),
        &quote.id,
        &from,
        &to,
        quoted,
        &from_asset,
        &to_asset,
    )
    .map_err(|r| conversion_refusal(r, "quote_id"))?;
    let idempotency = request.map(|r| ConversionIdempotency {
        scope: r.scope,
        key: r.key,
        fingerprint: r.fingerprint,
        render: Arc::new(render_stored),
    });
    let details = serde_json::json!({
        "from_wallet_id": &quote.from_wallet_id, "to_wallet_id": &quote.to_wallet_id,
        "from_asset": &quote.from_asset, "to_asset": &quote.to_asset,
        "from_amount_atomic": quote.from_amount.to_string(), "to_amount_atomic": quote.to_amount.to_string(),
        "rate": &quote.rate,
    });
    let audit = coffer_store::audit::Audit::new(
        &principal.user_id,
        coffer_store::audit_chain::actions::CONVERSION_EXECUTED,
    )
    .with_details(details);
    let execution = Execution {
        quote_id: quote.id.clone(),
        user_id: principal.user_id.clone(),
        legs,
        idempotency,
        audit,
    };
    match ctx.store().execute_conversion(execution).await {
        Ok(done) => {
            let view = render(&done.quote, &done.debit, &done.credit);
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        Err(ExecuteError::NotFound) => Err(not_found()),
        Err(ExecuteError::Expired) => Err(ApiError::Conflict {
            code: "quote_expired",
            detail: "this quote has expired; ask for a new one".into(),
        }),
        Err(ExecuteError::Used) => Err(quote_used()),
        Err(ExecuteError::Store(StoreError::IdempotencyKeyTaken)) => Err(ApiError::Unprocessable {
            code: "idempotency_key_reused",
            detail: "this Idempotency-Key was used for a different request".into(),
        }),
        Err(ExecuteError::Store(other)) => Err(other.into()),
    }
}
