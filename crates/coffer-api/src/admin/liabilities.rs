//! Publishing proof-of-liabilities statements on demand (B2; finance, admin).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use coffer_store::audit_chain::actions;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{ApiError, ApiResult, Problem};
use crate::idempotency::idempotency_key;
use crate::liabilities::{publish, LiabilityStatementView};
use crate::ApiContext;

/// This feature's mutating routes (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(publish_liabilities))
}

/// Commit to every user wallet's balance of an asset now: read one snapshot, build the Merkle sum
/// tree, sign and publish the statement (finance, admin).
#[utoipa::path(post, path = "/v1/admin/liabilities/{asset}", tag = "admin",
    params(("asset" = String, Path), ("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 201, body = LiabilityStatementView), (status = 403, body = Problem),
              (status = 400, description = "unknown_asset", body = Problem),
              (status = 422, description = "liabilities_unconfigured: no signing key", body = Problem)),
    security(("bearer" = [])))]
pub async fn publish_liabilities(
    State(ctx): State<ApiContext>,
    principal: Authorized<LiabilityPublishers>,
    headers: HeaderMap,
    Path(asset): Path<String>,
) -> ApiResult<(StatusCode, Json<LiabilityStatementView>)> {
    idempotency_key(&headers)?;
    let Some(key) = ctx.config().liability_signing_key.as_ref() else {
        return Err(ApiError::Unprocessable {
            code: "liabilities_unconfigured",
            detail: "no signing key is configured (COFFER_LIABILITY_SIGNING_KEY)".into(),
        });
    };
    let decimals = ctx
        .assets()
        .current()
        .get(&asset)
        .map(|a| a.decimals)
        .ok_or_else(crate::liabilities::unknown_asset)?;
    audit(
        &ctx,
        &principal,
        actions::LIABILITIES_PUBLISHED,
        &asset,
        json!({}),
    )
    .await?;
    let statement = publish(
        ctx.store(),
        key,
        &asset,
        decimals,
        "api",
        Some(&principal.user_id),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(LiabilityStatementView::from_doc(&statement)?),
    ))
}
