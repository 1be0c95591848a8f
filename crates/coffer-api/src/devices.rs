//! Devices (S3): the app registers the device it runs on; a new device becomes trusted after the
//! cooling-off period (`COFFER_DEVICE_TRUST_DELAY_SECONDS`, default 24 h) or at once when one of
//! the user's trusted devices vouches for it. Withdrawals need `X-Device-Id` naming a trusted
//! device. Every change is audited.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use coffer_store::audit_chain::actions;
use coffer_store::{Role, StoreError};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Principal, ValidJson};
use crate::views::DeviceView;
use crate::ApiContext;

/// The header naming the device a request comes from.
pub const DEVICE_HEADER: &str = "x-device-id";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDeviceRequest {
    /// A name the user recognises, 1 to 100 characters ("Pixel 8").
    pub name: String,
}

pub(crate) fn untrusted() -> ApiError {
    ApiError::ForbiddenBecause {
        code: "device_not_trusted",
        detail: "send X-Device-Id naming one of your trusted devices; a new device is trusted after its \
                 cooling-off period or when a trusted device vouches for it"
            .into(),
    }
}

/// The caller's trusted device named by `X-Device-Id`, if the header names one.
pub async fn trusted_device(
    ctx: &ApiContext,
    principal: &Principal,
    headers: &HeaderMap,
) -> ApiResult<Option<String>> {
    let Some(id) = headers
        .get(DEVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
    else {
        return Ok(None);
    };
    let device = ctx.store().device_of(&principal.user_id, id).await?;
    Ok(device
        .filter(|d| d.is_trusted_at(coffer_store::codec::now()))
        .map(|d| d.id))
}

/// The caller's trusted device named by `X-Device-Id`, or `device_not_trusted`.
pub async fn require_trusted_device(
    ctx: &ApiContext,
    principal: &Principal,
    headers: &HeaderMap,
) -> ApiResult<String> {
    trusted_device(ctx, principal, headers)
        .await?
        .ok_or_else(untrusted)
}

async fn audit(ctx: &ApiContext, principal: &Principal, action: &str, device: &str) -> ApiResult<()> {
    ctx.store()
        .audit(&principal.user_id, action, device, serde_json::json!({}))
        .await?;
    Ok(())
}

/// Register the device the app runs on. It is trusted after the cooling-off period.
#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = RegisterDeviceRequest,
    responses((status = 201, body = DeviceView), (status = 400, body = Problem),
              (status = 422, description = "too_many_devices", body = Problem)),
    security(("bearer" = [])))]
pub async fn register_device(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidJson(body): ValidJson<RegisterDeviceRequest>,
) -> ApiResult<(StatusCode, Json<DeviceView>)> {
    principal.require(&[Role::User])?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "invalid_name",
            "name",
            "1 to 100 printable characters",
        ));
    }
    let device = ctx
        .store()
        .register_device(&principal.user_id, name, ctx.config().device_trust_delay)
        .await
        .map_err(|e| match e {
            StoreError::LimitExceeded => ApiError::Unprocessable {
                code: "too_many_devices",
                detail: format!(
                    "at most {} devices; revoked ones count",
                    coffer_store::devices::DEVICES_PER_USER_MAX
                ),
            },
            other => other.into(),
        })?;
    audit(&ctx, &principal, actions::DEVICE_ADDED, &device.id).await?;
    Ok((StatusCode::CREATED, Json(DeviceView::from_doc(&device))))
}

/// The caller's devices, newest first.
#[utoipa::path(get, path = "/v1/devices", tag = "devices",
    responses((status = 200, body = Vec<DeviceView>)), security(("bearer" = [])))]
pub async fn list_devices(
    State(ctx): State<ApiContext>,
    principal: Principal,
) -> ApiResult<Json<Vec<DeviceView>>> {
    let devices = ctx.store().devices_of(&principal.user_id).await?;
    Ok(Json(devices.iter().map(DeviceView::from_doc).collect()))
}

/// Trust one of the caller's devices now, vouched for by the trusted device in `X-Device-Id`.
#[utoipa::path(post, path = "/v1/devices/{id}/trust", tag = "devices", params(("id" = String, Path),
        ("X-Device-Id" = String, Header, description = "A trusted device of the caller")),
    responses((status = 200, body = DeviceView), (status = 403, description = "device_not_trusted", body = Problem),
              (status = 404, body = Problem), (status = 409, description = "device_revoked", body = Problem)),
    security(("bearer" = [])))]
pub async fn trust_device(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    principal.require(&[Role::User])?;
    let voucher = require_trusted_device(&ctx, &principal, &headers).await?;
    let device = ctx
        .store()
        .trust_device(&principal.user_id, &id, &voucher)
        .await
        .map_err(|e| match e {
            StoreError::StateConflict => ApiError::Conflict {
                code: "device_revoked",
                detail: "a revoked device cannot be trusted again; register it anew".into(),
            },
            other => other.into(),
        })?;
    audit(&ctx, &principal, actions::DEVICE_TRUSTED, &device.id).await?;
    Ok(Json(DeviceView::from_doc(&device)))
}

/// Revoke one of the caller's devices (lost or sold): it can no longer request withdrawals.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_device(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    principal.require(&[Role::User])?;
    let device = ctx.store().revoke_device(&principal.user_id, &id).await?;
    audit(&ctx, &principal, actions::DEVICE_REMOVED, &device.id).await?;
    Ok(Json(DeviceView::from_doc(&device)))
}
