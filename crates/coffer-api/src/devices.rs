//! Devices (S3, S7): a device is a key, not an id. The app registers the device it runs on with
//! an Ed25519 public key (the private key never leaves the device); a new device becomes trusted
//! after the cooling-off period (`COFFER_DEVICE_TRUST_DELAY_SECONDS`, default 24 h) or at once
//! when one of the user's trusted devices vouches for it with its signature. A withdrawal carries
//! a trusted device's signature over the request (method, path, body digest, timestamp, nonce);
//! the id alone grants nothing, a stale timestamp is refused and a nonce is accepted once, on
//! every replica (docs/security.md). Every change is audited.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use base64::Engine as _;
use coffer_store::audit::Audit;
use coffer_store::audit_chain::actions;
use coffer_store::devices::DeviceDoc;
use coffer_store::{Role, StoreError};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Principal, ValidJson};
use crate::views::DeviceView;
use crate::ApiContext;

/// The header naming the device a request comes from.
pub const DEVICE_HEADER: &str = "x-device-id";
/// Unix seconds at which the device signed the request.
pub const TIMESTAMP_HEADER: &str = "x-device-timestamp";
/// 16 to 64 characters of `A-Z a-z 0-9 _ -`, fresh for every request.
pub const NONCE_HEADER: &str = "x-device-nonce";
/// Base64 of the 64-byte Ed25519 signature of [`signed_message`].
pub const SIGNATURE_HEADER: &str = "x-device-signature";
/// The first line of every signed message (a signature for anything else cannot be reused here).
pub const SIGNATURE_SCHEME: &str = "coffer-device-signature-v1";
/// Extra time a spent nonce is kept past the end of its signature's validity.
const NONCE_MARGIN_SECONDS: i64 = 60;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDeviceRequest {
    /// A name the user recognises, 1 to 100 characters ("Pixel 8").
    pub name: String,
    /// The device's Ed25519 public key, standard base64 of its 32 bytes. The private key stays
    /// on the device (e.g. in its secure enclave) and signs its money-out requests.
    pub public_key: String,
}

pub(crate) fn untrusted() -> ApiError {
    ApiError::ForbiddenBecause {
        code: "device_not_trusted",
        detail: "send X-Device-Id naming one of your trusted devices; a new device is trusted after its \
                 cooling-off period or when a trusted device vouches for it"
            .into(),
    }
}

fn invalid_signature(detail: &str) -> ApiError {
    ApiError::ForbiddenBecause {
        code: "device_signature_invalid",
        detail: format!(
            "{detail}; sign the request with the device's key (X-Device-Timestamp, X-Device-Nonce, X-Device-Signature)"
        ),
    }
}

/// The bytes a device signs for a request: the scheme, the method, the path (with its query), the
/// device id, the timestamp, the nonce and the hex SHA-256 of the body, one per line.
pub fn signed_message(
    method: &str,
    path: &str,
    device_id: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    let method = method.to_ascii_uppercase();
    format!("{SIGNATURE_SCHEME}\n{method}\n{path}\n{device_id}\n{timestamp}\n{nonce}\n{digest}").into_bytes()
}

/// The request a device signature must cover.
pub struct SignedRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a axum::http::Uri,
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    fn path(&self) -> &str {
        self.uri.path_and_query().map_or(self.uri.path(), |p| p.as_str())
    }
}

/// A trusted device's valid, fresh signature of a request; its nonce is not spent yet.
pub struct DeviceProof {
    pub device_id: String,
    nonce: String,
    timestamp: i64,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn valid_nonce(nonce: &str) -> bool {
    (16..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks the signature headers against `device`'s public key (pure): the timestamp within
/// `max_age_seconds` of `now_unix` either way, a well-formed nonce, and an Ed25519 signature
/// (strict verification) of exactly this request. Answers the timestamp and nonce.
pub fn check_signature(
    device: &DeviceDoc,
    headers: &HeaderMap,
    request: &SignedRequest<'_>,
    now_unix: i64,
    max_age_seconds: i64,
) -> Result<(i64, String), ApiError> {
    let key = device
        .public_key
        .as_deref()
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| invalid_signature("this device has no public key: register it again"))?;
    let timestamp = header(headers, TIMESTAMP_HEADER)
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| invalid_signature("X-Device-Timestamp is missing or not Unix seconds"))?;
    if (now_unix - timestamp).abs() > max_age_seconds {
        return Err(invalid_signature(
            "the signature's timestamp is too far from the server's clock",
        ));
    }
    let nonce = header(headers, NONCE_HEADER)
        .filter(|n| valid_nonce(n))
        .ok_or_else(|| invalid_signature("X-Device-Nonce is missing or malformed"))?;
    let signature = header(headers, SIGNATURE_HEADER)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .and_then(|s| <[u8; 64]>::try_from(s).ok())
        .map(|s| Signature::from_bytes(&s))
        .ok_or_else(|| invalid_signature("X-Device-Signature is missing or malformed"))?;
    let message = signed_message(
        request.method.as_str(),
        request.path(),
        &device.id,
        timestamp,
        nonce,
        request.body,
    );
    key.verify_strict(&message, &signature)
        .map_err(|_| invalid_signature("the signature does not match this request and device"))?;
    Ok((timestamp, nonce.to_string()))
}

/// The caller's trusted device named by `X-Device-Id`, if the header names one.
async fn trusted_device_doc(
    ctx: &ApiContext,
    principal: &Principal,
    headers: &HeaderMap,
) -> ApiResult<Option<DeviceDoc>> {
    let Some(id) = header(headers, DEVICE_HEADER).filter(|v| !v.is_empty() && v.len() <= 64) else {
        return Ok(None);
    };
    let device = ctx.store().device_of(&principal.user_id, id).await?;
    Ok(device.filter(|d| d.is_trusted_at(coffer_store::codec::now())))
}

/// The proof that the caller's trusted device named by `X-Device-Id` signed `request`; `None`
/// when the header names no trusted device of the caller, `device_signature_invalid` when it
/// does but the signature is missing, stale or wrong.
pub async fn signed_by_trusted_device(
    ctx: &ApiContext,
    principal: &Principal,
    headers: &HeaderMap,
    request: &SignedRequest<'_>,
) -> ApiResult<Option<DeviceProof>> {
    let Some(device) = trusted_device_doc(ctx, principal, headers).await? else {
        return Ok(None);
    };
    let max_age = ctx.config().device_signature_max_age.as_secs() as i64;
    let now = chrono::Utc::now().timestamp();
    let (timestamp, nonce) = check_signature(&device, headers, request, now, max_age)?;
    Ok(Some(DeviceProof {
        device_id: device.id,
        nonce,
        timestamp,
    }))
}

impl DeviceProof {
    /// Spends the nonce: a second request carrying it, on any replica, is
    /// `device_signature_replayed`. Kept until its signature can no longer be fresh.
    pub async fn spend(&self, ctx: &ApiContext) -> ApiResult<()> {
        let max_age = ctx.config().device_signature_max_age.as_secs() as i64;
        let latest = self.timestamp.max(chrono::Utc::now().timestamp());
        let keep_until = (latest + max_age + NONCE_MARGIN_SECONDS) * 1000;
        let keep_until = coffer_store::codec::from_millis(keep_until);
        if ctx
            .store()
            .consume_device_nonce(&self.device_id, &self.nonce, keep_until)
            .await?
        {
            return Ok(());
        }
        Err(ApiError::ForbiddenBecause {
            code: "device_signature_replayed",
            detail: "this signature's nonce was accepted before; sign the request anew".into(),
        })
    }
}

/// A public key as registered: standard base64 of a valid, not weak, Ed25519 key.
fn parse_public_key(text: &str) -> ApiResult<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(text.trim())
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .filter(|k| !k.is_weak());
    key.map(|k| engine.encode(k.as_bytes())).ok_or_else(|| {
        ApiError::invalid_field(
            "invalid_public_key",
            "public_key",
            "not the standard base64 of an Ed25519 public key (32 bytes)",
        )
    })
}

fn audit(principal: &Principal, action: &'static str) -> Audit {
    Audit::new(&principal.user_id, action)
}

/// Register the device the app runs on with its public key. It is trusted after the cooling-off
/// period, or when a trusted device vouches for it.
#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = RegisterDeviceRequest,
    responses((status = 201, body = DeviceView), (status = 400, description = "invalid_name, invalid_public_key", body = Problem),
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
    let public_key = parse_public_key(&body.public_key)?;
    let delay = ctx.config().device_trust_delay;
    let device = ctx
        .store()
        .register_device(
            &principal.user_id,
            name,
            &public_key,
            delay,
            audit(&principal, actions::DEVICE_ADDED),
        )
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

/// Trust one of the caller's devices now, vouched for by the trusted device in `X-Device-Id`,
/// which signs this request (the id alone vouches for nothing).
#[utoipa::path(post, path = "/v1/devices/{id}/trust", tag = "devices", params(("id" = String, Path),
        ("X-Device-Id" = String, Header, description = "A trusted device of the caller"),
        ("X-Device-Timestamp" = i64, Header, description = "Unix seconds of the signature"),
        ("X-Device-Nonce" = String, Header, description = "16 to 64 of A-Z a-z 0-9 _ -, never reused"),
        ("X-Device-Signature" = String, Header, description = "Base64 Ed25519 signature of the request by the voucher (docs/security.md)")),
    responses((status = 200, body = DeviceView),
              (status = 403, description = "device_not_trusted, device_signature_invalid, device_signature_replayed", body = Problem),
              (status = 404, body = Problem), (status = 409, description = "device_revoked", body = Problem)),
    security(("bearer" = [])))]
pub async fn trust_device(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<DeviceView>> {
    principal.require(&[Role::User])?;
    let request = SignedRequest {
        method: &method,
        uri: &uri,
        body: &body,
    };
    let voucher = signed_by_trusted_device(&ctx, &principal, &headers, &request).await?;
    let voucher = voucher.ok_or_else(untrusted)?;
    voucher.spend(&ctx).await?;
    let device = ctx
        .store()
        .trust_device(
            &principal.user_id,
            &id,
            &voucher.device_id,
            audit(&principal, actions::DEVICE_TRUSTED),
        )
        .await
        .map_err(|e| match e {
            StoreError::StateConflict => ApiError::Conflict {
                code: "device_revoked",
                detail: "a revoked device cannot be trusted again; register it anew".into(),
            },
            other => other.into(),
        })?;
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
    let audit = audit(&principal, actions::DEVICE_REMOVED);
    let device = ctx.store().revoke_device(&principal.user_id, &id, audit).await?;
    Ok(Json(DeviceView::from_doc(&device)))
}
