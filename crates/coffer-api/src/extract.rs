//! Extractors that validate at the edge: strict JSON bodies and the authenticated principal.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use coffer_store::Role;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::ApiContext;

/// A JSON body deserialised strictly: `application/json` only, size-limited, unknown fields
/// refused; a failure names the field and has a specific code.
pub struct ValidJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonWithBytes { value, .. } = JsonWithBytes::from_request(request, state).await?;
        Ok(ValidJson(value))
    }
}

/// [`ValidJson`] that keeps the body's bytes too (a device signature covers their digest).
pub struct JsonWithBytes<T> {
    pub value: T,
    pub bytes: axum::body::Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonWithBytes<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::bad_request("invalid_body", "the request body could not be read")
                }
            })?;
        let value = parse_json(&bytes)?;
        Ok(JsonWithBytes { value, bytes })
    }
}

/// Parses a body strictly and classifies the failure (pure, unit-tested).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request("malformed_json", "the body is not valid JSON");
        }
        let field = if path == "." { None } else { Some(path) };
        let code = if message.starts_with("unknown field") {
            "unknown_field"
        } else if message.starts_with("missing field") {
            "missing_field"
        } else if field
            .as_deref()
            .is_some_and(|f| f == "amount" || f.ends_with(".amount"))
        {
            "amount_not_string"
        } else {
            "invalid_field"
        };
        // serde's message quotes the field name and the expected type; it never echoes values
        // of strings (so no secret can leak back), but keep it short anyway.
        let detail: String = message.chars().take(200).collect();
        ApiError::BadRequest { code, detail, field }
    })
}

/// The authenticated caller, from a valid bearer access token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    /// When the user last proved their password (carried across refreshes).
    pub auth_time: i64,
}

impl Principal {
    /// Refuses (403) unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

impl FromRequestParts<ApiContext> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthenticated {
            code: "unauthenticated",
        })?;
        let principal = ctx.tokens().verify_access(token)?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// Query parameters, refused with a problem document when they do not parse.
pub struct ValidQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_like(query).map(ValidQuery)
    }
}

fn serde_urlencoded_like<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{query}").parse().expect("a query is a valid uri"))
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        wallet_id: String,
        amount: String,
    }

    fn code_of(json: &str) -> (String, Option<String>) {
        match parse_json::<Body>(json.as_bytes()) {
            Err(ApiError::BadRequest { code, field, .. }) => (code.to_string(), field),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn each_kind_of_bad_body_has_its_code() {
        assert_eq!(code_of("{"), ("malformed_json".into(), None));
        assert_eq!(
            code_of(r#"{"wallet_id":"w","amount":"1","x":1}"#).0,
            "unknown_field"
        );
        assert_eq!(code_of(r#"{"wallet_id":"w"}"#).0, "missing_field");
        assert_eq!(
            code_of(r#"{"wallet_id":"w","amount":1.5}"#),
            ("amount_not_string".into(), Some("amount".into()))
        );
        assert_eq!(
            code_of(r#"{"wallet_id":7,"amount":"1"}"#),
            ("invalid_field".into(), Some("wallet_id".into()))
        );
    }
}
