//! Extractors that validate at the edge: strict JSON bodies and the authenticated principal.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use coffer_store::queries::PAGE_LIMIT_MAX;
use coffer_store::Role;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use std::marker::PhantomData;

use crate::error::{ApiError, ErrorCode};
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
    /// The session (refresh-token family) the access token belongs to.
    pub session_id: String,
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
        require_active_session(ctx, &principal).await?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// A set of roles a route admits. As a type, the role check is an extractor ([`Authorized`]) that
/// axum runs before the body extractor: a caller without the role is refused with 403 before its
/// body is read or parsed, so it learns nothing of the body's schema from a 400.
pub trait RoleSet: Send + Sync + 'static {
    const ROLES: &'static [Role];
}

/// The authenticated caller, admitted because its role is in `R` (403 `forbidden` otherwise).
pub struct Authorized<R: RoleSet> {
    principal: Principal,
    roles: PhantomData<R>,
}

impl<R: RoleSet> std::ops::Deref for Authorized<R> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl<R: RoleSet> FromRequestParts<ApiContext> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, ctx).await?;
        principal.require(R::ROLES)?;
        Ok(Authorized {
            principal,
            roles: PhantomData,
        })
    }
}

/// The role sets routes admit, in one place.
pub mod roles {
    use super::RoleSet;
    use coffer_store::Role;

    macro_rules! role_set {
        ($(#[$doc:meta])* $name:ident = [$($role:ident),+]) => {
            $(#[$doc])*
            pub struct $name;
            impl RoleSet for $name {
                const ROLES: &'static [Role] = &[$(Role::$role),+];
            }
        };
    }

    role_set!(/// End users: their own wallets and money.
        Users = [User]);
    role_set!(/// The payment rails' service role.
        PaymentService = [Payment]);
    role_set!(/// Who may refund: a transfer's recipient, or the payment role a rail deposit.
        Refunders = [User, Payment]);
    role_set!(/// Who may read user data (wallets, transaction stories).
        SupportReaders = [Support, Finance, Admin]);
    role_set!(/// Who may propose adjustments (an admin's own proposal still needs another admin).
        Proposers = [Finance, Admin]);
    role_set!(/// Who may see adjustments.
        AdjustmentReaders = [Finance, Admin]);
    role_set!(/// Who may see the manual review queue.
        ReviewReaders = [Support, Admin]);
    role_set!(/// Who may end a user's sessions.
        SessionRevokers = [Support, Admin]);
    role_set!(/// Who runs and reads operations.
        Operators = [Engineering, Admin]);
    role_set!(/// Who may publish a proof-of-liabilities statement on demand.
        LiabilityPublishers = [Finance, Admin]);
    role_set!(/// The KYC provider's service role: sets verification tiers.
        KycService = [Kyc]);
    role_set!(/// Who may freeze a user's account (unfreezing is for admins only).
        Freezers = [Support, Admin]);
    role_set!(/// Who may list, approve and reject payment-rail deposits held above their caps.
        RailDepositDeciders = [Finance, Admin]);
    role_set!(/// Admins only: approvals and review decisions.
        Admins = [Admin]);
}

/// Refuses (401 `session_revoked`) an access token whose session was revoked or has ended.
pub async fn require_active_session(ctx: &ApiContext, principal: &Principal) -> Result<(), ApiError> {
    if ctx
        .sessions()
        .is_active(ctx.store(), &principal.session_id)
        .await?
    {
        Ok(())
    } else {
        Err(ApiError::Unauthenticated {
            code: "session_revoked",
        })
    }
}

/// Query parameters, refused with `400 invalid_query` (naming the parameter when it can) when
/// they do not parse, are out of range or are unknown.
pub struct ValidQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or_default()).map(ValidQuery)
    }
}

/// Parses a query string strictly (pure, unit-tested).
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let uri = format!("/?{query}").parse::<axum::http::Uri>().map_err(|_| {
        ApiError::bad_request(ErrorCode::InvalidQuery.as_str(), "the query string is malformed")
    })?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|rejection| {
            let text = rejection.body_text();
            let reason = text
                .strip_prefix("Failed to deserialize query string: ")
                .unwrap_or(&text);
            // serde_path_to_error's message is "<parameter>: <reason>" when it knows the parameter.
            let named = reason.split_once(": ").filter(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
            let detail: String = reason.chars().take(200).collect();
            match named {
                Some((name, _)) => ApiError::invalid_query(name, detail),
                None => ApiError::bad_request(ErrorCode::InvalidQuery.as_str(), detail),
            }
        })
}

/// `?limit=`: 1 to [`PAGE_LIMIT_MAX`]. Anything else is refused, never clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(u32);

impl PageLimit {
    /// The limit given, or `default` when absent.
    pub fn or(limit: Option<PageLimit>, default: u32) -> u32 {
        limit.map_or(default, |l| l.0)
    }
}

impl<'de> Deserialize<'de> for PageLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let limit = u32::deserialize(deserializer)
            .map_err(|_| D::Error::custom(format!("limit is a whole number from 1 to {PAGE_LIMIT_MAX}")))?;
        if (1..=PAGE_LIMIT_MAX).contains(&limit) {
            Ok(PageLimit(limit))
        } else {
            Err(D::Error::custom(format!(
                "limit is from 1 to {PAGE_LIMIT_MAX}, not {limit}"
            )))
        }
    }
}

/// An instant in a query string: RFC 3339 with an offset, e.g. `2026-12-02T15:00:00Z` (kept to
/// the millisecond, as the ledger dates its entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant(pub chrono::DateTime<chrono::Utc>);

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .ok()
            .and_then(|t| chrono::DateTime::from_timestamp_millis(t.timestamp_millis()))
            .map(Instant)
            .ok_or_else(|| {
                D::Error::custom("not an RFC 3339 time with an offset, such as 2026-12-02T15:00:00Z")
            })
    }
}

/// `?cursor=`: the `next_cursor` of a previous page, which is an id (a UUID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        uuid::Uuid::parse_str(&text)
            .map(|id| Cursor(id.hyphenated().to_string()))
            .map_err(|_| D::Error::custom("cursor is not a next_cursor this API returned"))
    }
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

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Page {
        cursor: Option<Cursor>,
        limit: Option<PageLimit>,
    }

    fn query_refusal(query: &str) -> (String, Option<String>) {
        match parse_query::<Page>(query) {
            Err(ApiError::BadRequest { code, field, .. }) => (code.to_string(), field),
            other => panic!("expected a bad request for {query:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_cursor_or_limit_is_invalid_query_never_clamped() {
        let page = parse_query::<Page>("limit=100&cursor=0190a0b1-0000-7000-8000-000000000001").unwrap();
        assert_eq!(PageLimit::or(page.limit, 50), 100);
        assert_eq!(
            page.cursor.unwrap().as_str(),
            "0190a0b1-0000-7000-8000-000000000001"
        );
        assert_eq!(PageLimit::or(parse_query::<Page>("").unwrap().limit, 50), 50);
        for query in [
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=ten",
            "limit=1.5",
            "limit=",
        ] {
            assert_eq!(
                query_refusal(query),
                ("invalid_query".into(), Some("limit".into())),
                "{query}"
            );
        }
        for query in ["cursor=nope", "cursor=", "cursor=0190a0b1"] {
            assert_eq!(
                query_refusal(query),
                ("invalid_query".into(), Some("cursor".into())),
                "{query}"
            );
        }
        assert_eq!(query_refusal("page=2").0, "invalid_query");
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
