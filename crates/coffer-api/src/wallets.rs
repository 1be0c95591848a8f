//! Wallets: one per user and asset.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Cursor, Instant, PageLimit, Principal, ValidJson, ValidQuery};
use crate::views::{LedgerEntryView, LedgerPage, WalletView};
use crate::ApiContext;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWalletRequest {
    /// An asset symbol the platform supports, e.g. "ETH".
    pub asset: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>, format = Uuid)]
    pub cursor: Option<Cursor>,
    /// 1 to 100; default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<PageLimit>,
}

/// Open a wallet for an asset (returns the existing one if the caller has it already).
#[utoipa::path(post, path = "/v1/wallets", tag = "wallets", request_body = CreateWalletRequest,
    params(("Idempotency-Key" = String, Header, description = "Unique per request; replays return the stored response")),
    responses((status = 201, body = WalletView), (status = 200, description = "already open", body = WalletView),
              (status = 400, description = "unknown_asset", body = Problem),
              (status = 403, description = "staff_account: staff and service accounts hold no user wallets", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_wallet(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidJson(body): ValidJson<CreateWalletRequest>,
) -> ApiResult<(StatusCode, Json<WalletView>)> {
    // A staff member with a wallet could approve movements into it (S2, two-person rule).
    if principal.role != coffer_store::Role::User {
        return Err(crate::money::refusal(
            coffer_domain::Refusal::StaffAccount,
            "asset",
        ));
    }
    let catalog = ctx.assets().current();
    let asset = catalog
        .get(&body.asset)
        .ok_or_else(|| ApiError::invalid_field("unknown_asset", "asset", "this asset is not supported"))?;
    let (wallet, created) = ctx
        .store()
        .create_wallet(&principal.user_id, &asset.symbol, asset.decimals)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(WalletView::from_doc(&wallet)?)))
}

/// The caller's wallets.
#[utoipa::path(get, path = "/v1/wallets", tag = "wallets",
    responses((status = 200, body = Vec<WalletView>)), security(("bearer" = [])))]
pub async fn list_wallets(
    State(ctx): State<ApiContext>,
    principal: Principal,
) -> ApiResult<Json<Vec<WalletView>>> {
    let wallets = ctx.store().wallets_of_user(&principal.user_id).await?;
    Ok(Json(
        wallets
            .iter()
            .map(WalletView::from_doc)
            .collect::<ApiResult<_>>()?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WalletQuery {
    /// The balances as of this instant instead of now: RFC 3339 with an offset, e.g.
    /// 2026-12-01T00:00:00Z (every entry posted at or before it counts).
    #[param(value_type = Option<String>, format = DateTime)]
    pub as_of: Option<Instant>,
}

/// One of the caller's wallets with its balances, now or as of a past instant.
#[utoipa::path(get, path = "/v1/wallets/{id}", tag = "wallets", params(("id" = String, Path), WalletQuery),
    responses((status = 200, body = WalletView),
              (status = 400, description = "invalid_query (as_of)", body = Problem),
              (status = 404, body = Problem),
              (status = 422, description = "history_unavailable", body = Problem)),
    security(("bearer" = [])))]
pub async fn get_wallet(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    ValidQuery(query): ValidQuery<WalletQuery>,
) -> ApiResult<Json<WalletView>> {
    let wallet = ctx
        .store()
        .wallet_of_user(&principal.user_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut view = WalletView::from_doc(&wallet)?;
    if let Some(at) = query.as_of {
        let past = crate::statements::balances_as_of(&ctx, &wallet, at).await?;
        view.available = past.available;
        view.pending = past.pending;
        view.held = past.held;
        view.total = past.total;
        view.as_of = Some(crate::views::time(&at.0));
    }
    Ok(Json(view))
}

/// A wallet's ledger entries, newest first.
#[utoipa::path(get, path = "/v1/wallets/{id}/ledger", tag = "wallets",
    params(("id" = String, Path), PageQuery),
    responses((status = 200, body = LedgerPage), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn wallet_ledger(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    ValidQuery(page): ValidQuery<PageQuery>,
) -> ApiResult<Json<LedgerPage>> {
    let wallet = ctx
        .store()
        .wallet_of_user(&principal.user_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let result = ctx
        .store()
        .ledger_page(
            &wallet.id,
            page.cursor.as_ref().map(Cursor::as_str),
            PageLimit::or(page.limit, 50),
        )
        .await?;
    let items = result
        .items
        .iter()
        .map(|e| LedgerEntryView::from_doc(e, wallet.decimals))
        .collect::<ApiResult<_>>()?;
    Ok(Json(LedgerPage {
        items,
        next_cursor: result.next_cursor,
    }))
}
