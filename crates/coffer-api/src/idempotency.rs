//! The `Idempotency-Key` middleware (L5, API level).
//!
//! For an authenticated mutating request with a key: the first request runs and its response is
//! stored; the same key with the same request (method, path, body) replays that response with
//! `Idempotent-Replayed: true`; with a different request it is 422 `idempotency_key_reused`;
//! while the first is still running it is 409 `idempotency_key_in_progress`. Responses that ask
//! the client to retry (429, 5xx) are not stored, so the retry runs again. The money itself is
//! additionally protected by a deterministic ledger key derived from the same key.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coffer_store::idempotency::{Begin, StoredResponse};
use coffer_store::mongodb::bson::{spec::BinarySubtype, Binary};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::extract::bearer;
use crate::ApiContext;

pub const HEADER: &str = "idempotency-key";
/// The largest response body kept for replay.
const STORED_BODY_LIMIT: usize = 256 * 1024;

/// The request's key: required, 1 to 128 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Err(ApiError::bad_request(
            "idempotency_key_required",
            "this request needs an Idempotency-Key header",
        ));
    };
    let key = value.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "1 to 128 visible ASCII characters",
        ));
    }
    Ok(key.to_string())
}

pub async fn middleware(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let principal = bearer(request.headers()).and_then(|token| ctx.tokens().verify_access(token).ok());
    let (Some(principal), Some(_)) = (principal, request.headers().get(HEADER)) else {
        // Unauthenticated or keyless: the handler answers 401 / idempotency_key_required.
        return next.run(request).await;
    };
    let key = match idempotency_key(request.headers()) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, ctx.config().body_limit_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let mut hasher = Sha256::new();
    for piece in [
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        &bytes,
    ] {
        hasher.update((piece.len() as u64).to_be_bytes());
        hasher.update(piece);
    }
    let fingerprint = hex::encode(hasher.finalize());
    let scope = principal.user_id.clone();
    let store = ctx.store();
    match store.idempotency_begin(&scope, &key, &fingerprint).await {
        Err(error) => return ApiError::from(error).into_response(),
        Ok(Begin::Replay(stored)) => {
            ctx.metrics().idempotent_replays.inc();
            return replay(stored);
        }
        Ok(Begin::Mismatch) => {
            return ApiError::Unprocessable {
                code: "idempotency_key_reused",
                detail: "this Idempotency-Key was used for a different request".into(),
            }
            .into_response()
        }
        Ok(Begin::InProgress) => {
            return ApiError::Conflict {
                code: "idempotency_key_in_progress",
                detail: "a request with this Idempotency-Key is still being processed".into(),
            }
            .into_response()
        }
        Ok(Begin::Started) => {}
    }
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = response.status();
    let retryable = status.is_server_error() || status.as_u16() == 429;
    if retryable {
        if let Err(e) = store.idempotency_release(&scope, &key).await {
            tracing::warn!(error = %e, "could not release an idempotency key; it expires with its lease");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = to_bytes(body, STORED_BODY_LIMIT).await else {
        return ApiError::Internal("response too large to store".into()).into_response();
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let stored = StoredResponse {
        status: status.as_u16(),
        content_type,
        body: Binary {
            subtype: BinarySubtype::Generic,
            bytes: body.to_vec(),
        },
    };
    if let Err(e) = store.idempotency_complete(&scope, &key, stored).await {
        // The movement is committed; a retry is still safe because of the ledger key.
        tracing::warn!(error = %e, "could not store an idempotent response");
    }
    Response::from_parts(parts, Body::from(body))
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::new(Body::from(stored.body.bytes));
    *response.status_mut() = axum::http::StatusCode::from_u16(stored.status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = HeaderValue::from_str(&stored.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
