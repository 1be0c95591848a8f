//! The `Idempotency-Key` middlewares (L5, API level).
//!
//! For an authenticated mutating request with a key: the first request runs and its response is
//! stored; the same key with the same request (method, path, body) replays that response with
//! `Idempotent-Replayed: true`; with a different request it is 422 `idempotency_key_reused`;
//! while the first is still running it is 409 `idempotency_key_in_progress`.
//!
//! Two ways to store it:
//! - [`middleware`] (wallets, devices, admin actions) claims the key before the handler runs and
//!   stores its response after; responses that ask the client to retry (429, 5xx) and refusals
//!   the client can fix ([`crate::error::NOT_REPLAYED`]) are not stored: the key is released.
//! - [`money_middleware`] (transfers, deposits, withdrawals) claims nothing: the handler passes
//!   the key and request fingerprint on with its movement, and the store writes the response in
//!   the SAME database transaction as the money, so a crash can never leave money moved without
//!   the response its retry replays. A refusal stores nothing (nothing moved: a retry is judged
//!   afresh), and a movement applied before is answered from its stored response. The money is
//!   additionally protected by the deterministic ledger key derived from the same key.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coffer_store::idempotency::{Begin, Lookup, StoredResponse};
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

/// A route's own body limit (a request extension its layer sets): the middleware reads bodies up
/// to it instead of the API's default body limit.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitBytes(pub usize);

/// What the money middleware hands to a handler: whose key, which key, and the request's
/// fingerprint (method, path, body).
#[derive(Debug, Clone)]
pub struct IdempotencyContext {
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for IdempotencyContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<IdempotencyContext>().cloned())
    }
}

/// Marks a handler's answer to a movement that was applied before: the middleware replays the
/// stored response instead when the key has one.
#[derive(Debug, Clone, Copy)]
pub struct MaybeReplay;

/// An authenticated request with an Idempotency-Key, its body read: (scope, key, parts, body,
/// fingerprint); `Err` is the response to send (no key: the request itself, to run as is).
async fn keyed(ctx: &ApiContext, request: Request) -> Result<(IdempotencyContext, Request), KeyedError> {
    let principal = bearer(request.headers()).and_then(|token| ctx.tokens().verify_access(token).ok());
    let (Some(principal), Some(_)) = (principal, request.headers().get(HEADER)) else {
        // Unauthenticated or keyless: the handler answers 401 / idempotency_key_required.
        return Err(KeyedError::Unkeyed(request));
    };
    let key = idempotency_key(request.headers()).map_err(|e| KeyedError::Refused(e.into_response()))?;
    let (parts, body) = request.into_parts();
    let limit = parts
        .extensions
        .get::<BodyLimitBytes>()
        .map_or(ctx.config().body_limit_bytes, |l| l.0);
    let bytes = to_bytes(body, limit)
        .await
        .map_err(|_| KeyedError::Refused(ApiError::PayloadTooLarge.into_response()))?;
    let mut hasher = Sha256::new();
    for piece in [
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        &bytes,
    ] {
        hasher.update((piece.len() as u64).to_be_bytes());
        hasher.update(piece);
    }
    let context = IdempotencyContext {
        scope: principal.user_id.clone(),
        key,
        fingerprint: hex::encode(hasher.finalize()),
    };
    Ok((context, Request::from_parts(parts, Body::from(bytes))))
}

enum KeyedError {
    Unkeyed(Request),
    Refused(Response),
}

fn reused() -> Response {
    ApiError::Unprocessable {
        code: "idempotency_key_reused",
        detail: "this Idempotency-Key was used for a different request".into(),
    }
    .into_response()
}

fn in_progress() -> Response {
    ApiError::Conflict {
        code: "idempotency_key_in_progress",
        detail: "a request with this Idempotency-Key is still being processed".into(),
    }
    .into_response()
}

/// The money routes' middleware: see the module documentation.
pub async fn money_middleware(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let (context, mut request) = match keyed(&ctx, request).await {
        Ok(keyed) => keyed,
        Err(KeyedError::Unkeyed(request)) => return next.run(request).await,
        Err(KeyedError::Refused(response)) => return response,
    };
    request.extensions_mut().insert(context.clone());
    let response = next.run(request).await;
    let status = response.status();
    let duplicate = response.extensions().get::<MaybeReplay>().is_some();
    // A refusal may meet a key whose movement succeeded before (e.g. a retry that the balance
    // could no longer cover): the stored success wins.
    let refused = status.is_client_error() && status.as_u16() != 429;
    if !duplicate && !refused {
        return response;
    }
    let found = ctx
        .store()
        .idempotency_lookup(&context.scope, &context.key, &context.fingerprint)
        .await;
    match found {
        Ok(Lookup::Replay(stored)) => {
            ctx.metrics().idempotent_replays.inc();
            replay(stored)
        }
        Ok(Lookup::Mismatch) => reused(),
        Ok(Lookup::InProgress) => in_progress(),
        Ok(Lookup::Absent) => response,
        Err(error) => {
            tracing::warn!(%error, "could not look an idempotency key up; answering as the handler did");
            response
        }
    }
}

pub async fn middleware(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let (context, request) = match keyed(&ctx, request).await {
        Ok(keyed) => keyed,
        Err(KeyedError::Unkeyed(request)) => return next.run(request).await,
        Err(KeyedError::Refused(response)) => return response,
    };
    let IdempotencyContext {
        scope,
        key,
        fingerprint,
    } = context;
    let store = ctx.store();
    match store.idempotency_begin(&scope, &key, &fingerprint).await {
        Err(error) => return ApiError::from(error).into_response(),
        Ok(Begin::Replay(stored)) => {
            ctx.metrics().idempotent_replays.inc();
            return replay(stored);
        }
        Ok(Begin::Mismatch) => return reused(),
        Ok(Begin::InProgress) => return in_progress(),
        Ok(Begin::Started) => {}
    }
    let response = next.run(request).await;
    let status = response.status();
    if !crate::error::replayable(&response) {
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
        body: body.to_vec(),
    };
    if let Err(e) = store.idempotency_complete(&scope, &key, stored).await {
        // The movement is committed; a retry is still safe because of the ledger key.
        tracing::warn!(error = %e, "could not store an idempotent response");
    }
    Response::from_parts(parts, Body::from(body))
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::new(Body::from(stored.body));
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
