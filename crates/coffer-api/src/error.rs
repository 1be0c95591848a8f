//! The one place errors become HTTP: `application/problem+json` (RFC 9457) with a stable `code`.
//! 5xx causes are logged (without secrets) and never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use coffer_domain::AmountError;
use coffer_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Declares [`ErrorCode`]: every stable `code` a problem document can carry, listed once.
macro_rules! error_codes {
    ($($variant:ident => $code:literal,)*) => {
        /// Every stable problem `code`. docs/api.md ("Errors") documents each one and a test
        /// keeps the two equal; the OpenAPI document declares `Problem.code` as this enumeration,
        /// so a response whose code is missing here fails the API tests' response check.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some(
                "Stable machine-readable error code (docs/api.md, \"Errors\").",
            ))
            .enum_values(Some(ErrorCode::ALL.iter().map(|code| code.as_str())))
            .into()
    }
}

impl ToSchema for ErrorCode {}

error_codes! {
    MalformedJson => "malformed_json",
    UnknownField => "unknown_field",
    MissingField => "missing_field",
    InvalidField => "invalid_field",
    AmountNotString => "amount_not_string",
    AmountEmpty => "amount_empty",
    AmountNegative => "amount_negative",
    AmountMalformed => "amount_malformed",
    AmountTooPrecise => "amount_too_precise",
    AmountTooLarge => "amount_too_large",
    AmountZero => "amount_zero",
    InvalidQuery => "invalid_query",
    IdempotencyKeyRequired => "idempotency_key_required",
    InvalidIdempotencyKey => "invalid_idempotency_key",
    InvalidEmail => "invalid_email",
    WeakPassword => "weak_password",
    UnknownAsset => "unknown_asset",
    InvalidAddress => "invalid_address",
    InvalidExternalReference => "invalid_external_reference",
    InvalidReason => "invalid_reason",
    Unauthenticated => "unauthenticated",
    InvalidCredentials => "invalid_credentials",
    InvalidRefreshToken => "invalid_refresh_token",
    InvalidSignature => "invalid_signature",
    TooManyEvents => "too_many_events",
    DepositsUnavailable => "deposits_unavailable",
    RefreshTokenReused => "refresh_token_reused",
    Forbidden => "forbidden",
    SelfApproval => "self_approval",
    SameApprover => "same_approver",
    OwnAccount => "own_account",
    DeviceNotTrusted => "device_not_trusted",
    DeviceSignatureInvalid => "device_signature_invalid",
    DeviceSignatureReplayed => "device_signature_replayed",
    InvalidPublicKey => "invalid_public_key",
    WebhookChainUnverifiable => "webhook_chain_unverifiable",
    InvalidAddressChecksum => "invalid_address_checksum",
    InvalidLabel => "invalid_label",
    UnknownChain => "unknown_chain",
    AddressAlreadySaved => "address_already_saved",
    ForbiddenDestination => "forbidden_destination",
    TooManyAddresses => "too_many_addresses",
    DestinationNotSaved => "destination_not_saved",
    DestinationCoolingOff => "destination_cooling_off",
    ReauthenticationRequired => "reauthentication_required",
    DailyLimitExceeded => "daily_limit_exceeded",
    TooManyDevices => "too_many_devices",
    DeviceRevoked => "device_revoked",
    NotFound => "not_found",
    WalletNotFound => "wallet_not_found",
    EmailTaken => "email_taken",
    IdempotencyKeyInProgress => "idempotency_key_in_progress",
    StateConflict => "state_conflict",
    AdjustmentNotProposed => "adjustment_not_proposed",
    RailDepositNotHeld => "rail_deposit_not_held",
    DisputeNotOpen => "dispute_not_open",
    WithdrawalSigned => "withdrawal_signed",
    ExternalReferenceConflict => "external_reference_conflict",
    RailCapsExceeded => "rail_caps_exceeded",
    AtomicRequestRefused => "atomic_request_refused",
    BodyTooLarge => "body_too_large",
    UnsupportedMediaType => "unsupported_media_type",
    IdempotencyKeyReused => "idempotency_key_reused",
    InsufficientFunds => "insufficient_funds",
    BalanceLimitExceeded => "balance_limit_exceeded",
    SameWallet => "same_wallet",
    AssetMismatch => "asset_mismatch",
    NotRefundable => "not_refundable",
    NotDisputable => "not_disputable",
    ExceedsOriginal => "exceeds_original",
    AssetUnavailable => "asset_unavailable",
    DepositsDisabled => "deposits_disabled",
    WithdrawalsDisabled => "withdrawals_disabled",
    BelowMinimum => "below_minimum",
    AboveMaximum => "above_maximum",
    NotSupported => "not_supported",
    RateLimited => "rate_limited",
    RetryLater => "retry_later",
    Internal => "internal",
    InvalidBody => "invalid_body",
    WebsocketUpgradeRequired => "websocket_upgrade_required",
    MethodNotAllowed => "method_not_allowed",
    SessionRevoked => "session_revoked",
    InvalidPassword => "invalid_password",
    MfaRequired => "mfa_required",
    InvalidMfaCode => "invalid_mfa_code",
    MfaEnrollmentRequired => "mfa_enrollment_required",
    InvalidStreamTicket => "invalid_stream_ticket",
    NotPublished => "not_published",
    LiabilitiesUnconfigured => "liabilities_unconfigured",
    HistoryUnavailable => "history_unavailable",
    StatementTooLarge => "statement_too_large",
    AccountFrozen => "account_frozen",
    VerificationRequired => "verification_required",
    FirstRecipientLimit => "first_recipient_limit",
    StaffAccount => "staff_account",
    InvalidTier => "invalid_tier",
    InvalidRiskFlags => "invalid_risk_flags",
    QuoteNotFound => "quote_not_found",
    QuoteExpired => "quote_expired",
    QuoteUsed => "quote_used",
    SameAsset => "same_asset",
    AmountTooSmall => "amount_too_small",
    ConversionUnavailable => "conversion_unavailable",
}

/// A problem document. `code` is part of the API contract (docs/api.md lists every code).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "https://coffer.dev/problems/insufficient_funds",
    "title": "Unprocessable Entity",
    "status": 422,
    "code": "insufficient_funds",
    "detail": "the available balance is lower than the amount"
}))]
pub struct Problem {
    /// `https://coffer.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Stable machine-readable error code.
    #[schema(value_type = ErrorCode)]
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The JSON path of the offending field, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Refusals that depend on state the client can change (log in again, fund the wallet, wait for
/// a device to be trusted, a limit to reset or an asset to be switched back on): an Idempotency-Key never keeps
/// them for replay, so the same key succeeds once the client has fixed the cause. Every other 4xx
/// is a verdict on the request itself and is replayed for 24 h. Listed in docs/api.md.
pub const NOT_REPLAYED: &[&str] = &[
    "unauthenticated",
    "session_revoked",
    "reauthentication_required",
    "device_not_trusted",
    "insufficient_funds",
    "balance_limit_exceeded",
    "daily_limit_exceeded",
    "asset_unavailable",
    "deposits_disabled",
    "withdrawals_disabled",
    "account_frozen",
    "verification_required",
    "first_recipient_limit",
];

/// Whether a response may be kept for replay under its Idempotency-Key: not a request to retry
/// (429, 5xx), nor a refusal in [`NOT_REPLAYED`].
pub fn replayable(response: &Response) -> bool {
    let status = response.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return false;
    }
    let code = response.extensions().get::<ProblemCode>().map(|c| c.0);
    !code.is_some_and(|code| NOT_REPLAYED.contains(&code))
}

/// The problem code of an error response, for the metrics layer (response extension).
#[derive(Debug, Clone, Copy)]
pub struct ProblemCode(pub &'static str);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        code: &'static str,
        detail: String,
        field: Option<String>,
    },
    #[error("authentication required")]
    Unauthenticated { code: &'static str },
    #[error("forbidden")]
    Forbidden,
    /// Refused for a reason more specific than the role (e.g. `self_approval`).
    #[error("{detail}")]
    ForbiddenBecause { code: &'static str, detail: String },
    #[error("not found")]
    NotFound,
    /// A referenced object (e.g. a wallet id in the body) does not exist for this caller.
    #[error("{detail}")]
    UnknownReference { code: &'static str, detail: String },
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String },
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("this path does not take this method; see the Allow header")]
    MethodNotAllowed,
    #[error("rate limited")]
    RateLimited { retry_after_seconds: u64 },
    #[error("temporarily unable to complete the request")]
    RetryLater { retry_after_seconds: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
            field: None,
        }
    }

    pub fn invalid_field(code: &'static str, field: &str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
            field: Some(field.to_string()),
        }
    }

    /// A query parameter that does not parse or is out of range: `400 invalid_query`, naming it.
    pub fn invalid_query(parameter: &str, detail: impl Into<String>) -> Self {
        Self::invalid_field(ErrorCode::InvalidQuery.as_str(), parameter, detail)
    }

    /// This error as the answer about item `path` (e.g. `deposits[3]`) of a request that carries
    /// many: the field is prefixed with it, and the detail names it.
    pub fn in_item(self, path: &str) -> Self {
        let named = |detail: String| format!("{path}: {detail}");
        match self {
            ApiError::BadRequest { code, detail, field } => ApiError::BadRequest {
                code,
                detail: named(detail),
                field: Some(match field {
                    Some(field) => format!("{path}.{field}"),
                    None => path.to_string(),
                }),
            },
            ApiError::ForbiddenBecause { code, detail } => ApiError::ForbiddenBecause {
                code,
                detail: named(detail),
            },
            ApiError::UnknownReference { code, detail } => ApiError::UnknownReference {
                code,
                detail: named(detail),
            },
            ApiError::Conflict { code, detail } => ApiError::Conflict {
                code,
                detail: named(detail),
            },
            ApiError::Unprocessable { code, detail } => ApiError::Unprocessable {
                code,
                detail: named(detail),
            },
            other => other,
        }
    }

    pub fn amount(error: AmountError, field: &str) -> Self {
        Self::invalid_field(error.code(), field, error.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::ForbiddenBecause { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::UnknownReference { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RetryLater { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unauthenticated { code }
            | ApiError::ForbiddenBecause { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::UnknownReference { code, .. }
            | ApiError::Unprocessable { code, .. } => code,
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::PayloadTooLarge => "body_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::RetryLater { .. } => "retry_later",
            ApiError::Internal(_) => "internal",
        }
    }

    pub(crate) fn detail(&self) -> Option<String> {
        match self {
            ApiError::Internal(_) => None,
            ApiError::Unauthenticated { code } => Some(
                match *code {
                    "invalid_credentials" => "the e-mail or password is wrong",
                    "refresh_token_reused" => {
                        "the refresh token was already used; its session family is revoked"
                    }
                    "invalid_refresh_token" => "the refresh token is unknown, expired or revoked",
                    "mfa_required" => {
                        "staff accounts log in with the code of their authenticator app: send totp_code"
                    }
                    "invalid_mfa_code" => "the authenticator code is wrong, expired or already used",
                    "invalid_stream_ticket" => "the stream ticket is unknown, expired or already used",
                    "session_revoked" => {
                        "this session has ended (signed out, revoked or expired): log in again"
                    }
                    "invalid_password" => "the current password is wrong",
                    "invalid_signature" => "the webhook signature is missing, invalid or stale",
                    "reauthentication_required" => {
                        "this needs a recent password login: log in again, then retry"
                    }
                    _ => "a valid bearer access token is required",
                }
                .to_string(),
            ),
            other => Some(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InsufficientFunds => ApiError::Unprocessable {
                code: "insufficient_funds",
                detail: "the available balance is lower than the amount".into(),
            },
            StoreError::BalanceLimit => ApiError::Unprocessable {
                code: "balance_limit_exceeded",
                detail: "the credit would take the balance above the ledger's limit".into(),
            },
            StoreError::NotFound => ApiError::NotFound,
            StoreError::StateConflict => ApiError::Conflict {
                code: "state_conflict",
                detail: "the transaction changed state meanwhile; read it again".into(),
            },
            StoreError::WithdrawalSigned => ApiError::Conflict {
                code: "withdrawal_signed",
                detail:
                    "the withdrawal is signed and may still be mined: cancel it, or wait until the chain \
                         proves its nonce taken"
                        .into(),
            },
            StoreError::SelfApproval => ApiError::ForbiddenBecause {
                code: "self_approval",
                detail: "the proposer of an adjustment cannot approve it; another admin must".into(),
            },
            StoreError::Unsupported(what) => ApiError::Unprocessable {
                code: "not_supported",
                detail: what.into(),
            },
            StoreError::LimitExceeded => ApiError::Unprocessable {
                code: "daily_limit_exceeded",
                detail: "the amount would take today's withdrawals above the asset's daily limit".into(),
            },
            StoreError::NotApplied => ApiError::Unprocessable {
                code: "atomic_request_refused",
                detail: "another movement of this atomic request was refused: nothing was applied".into(),
            },
            StoreError::HistoryUnavailable => ApiError::Unprocessable {
                code: "history_unavailable",
                detail:
                    "the wallet's entries at that time were written before balances were recorded per entry"
                        .into(),
            },
            StoreError::Contention => ApiError::RetryLater {
                retry_after_seconds: 1,
            },
            StoreError::Database(e) if e.is_unavailable() => ApiError::RetryLater {
                retry_after_seconds: 2,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A decision on a rail deposit that is no longer held (or was approved meanwhile) is
/// `rail_deposit_not_held`.
pub fn rail_deposit_error(error: StoreError) -> ApiError {
    match error {
        StoreError::StateConflict => ApiError::Conflict {
            code: "rail_deposit_not_held",
            detail: "the rail deposit was already approved or rejected, or approved meanwhile: read it again"
                .into(),
        },
        other => other.into(),
    }
}

/// A decision on an adjustment that is no longer proposed is `adjustment_not_proposed`.
pub fn adjustment_error(error: StoreError) -> ApiError {
    match error {
        StoreError::StateConflict => ApiError::Conflict {
            code: "adjustment_not_proposed",
            detail: "the adjustment was already approved or rejected".into(),
        },
        other => other.into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        }
        let problem = Problem {
            kind: format!("https://coffer.dev/problems/{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            code: self.code().to_string(),
            detail: self.detail(),
            field: match &self {
                ApiError::BadRequest { field, .. } => field.clone(),
                _ => None,
            },
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response.extensions_mut().insert(ProblemCode(self.code()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::RateLimited { retry_after_seconds } | ApiError::RetryLater { retry_after_seconds } =
            self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes of the table in docs/api.md, "Errors".
    fn documented_codes() -> Vec<String> {
        let doc = include_str!("../../../docs/api.md");
        let errors = doc
            .split("\n## Errors")
            .nth(1)
            .expect("docs/api.md has an Errors section");
        let table = errors.split("\n## ").next().unwrap_or_default();
        let mut codes = Vec::new();
        for row in table
            .lines()
            .filter(|l| l.starts_with("| 4") || l.starts_with("| 5"))
        {
            let column = row.split('|').nth(2).unwrap_or_default();
            for (i, piece) in column.split('`').enumerate() {
                if i % 2 == 1 {
                    codes.push(piece.to_string());
                }
            }
        }
        codes
    }

    #[test]
    fn every_error_code_is_documented_and_every_documented_code_exists() {
        let documented = documented_codes();
        for code in ErrorCode::ALL {
            assert!(
                documented.contains(&code.as_str().to_string()),
                "{code:?} is not in docs/api.md"
            );
        }
        for code in &documented {
            assert!(
                ErrorCode::parse(code).is_some(),
                "docs/api.md documents `{code}`, which ErrorCode lacks"
            );
        }
    }

    #[test]
    fn every_api_error_answers_a_declared_code() {
        let errors = [
            ApiError::Forbidden,
            ApiError::NotFound,
            ApiError::PayloadTooLarge,
            ApiError::UnsupportedMediaType,
            ApiError::MethodNotAllowed,
            ApiError::RateLimited {
                retry_after_seconds: 1,
            },
            ApiError::RetryLater {
                retry_after_seconds: 1,
            },
            ApiError::Internal(String::new()),
            ApiError::invalid_query("limit", "out of range"),
        ];
        for error in errors {
            assert!(ErrorCode::parse(error.code()).is_some(), "{error:?}");
        }
        use coffer_domain::plan::Refusal;
        use coffer_domain::AmountError;
        let amounts = [
            AmountError::Empty,
            AmountError::Negative,
            AmountError::Malformed,
            AmountError::TooPrecise { decimals: 2 },
            AmountError::TooLarge,
            AmountError::Zero,
        ];
        for error in amounts {
            assert!(ErrorCode::parse(error.code()).is_some(), "{error:?}");
        }
        let refusals = [
            Refusal::SameWallet,
            Refusal::AssetMismatch,
            Refusal::NotAUserWallet,
            Refusal::AmountTooLarge,
            Refusal::DepositsDisabled,
            Refusal::WithdrawalsDisabled,
            Refusal::BelowMinimum,
            Refusal::AboveMaximum,
            Refusal::DeviceNotTrusted,
            Refusal::ReauthenticationRequired,
            Refusal::DestinationNotSaved,
            Refusal::DestinationCoolingOff,
            Refusal::ForbiddenDestination,
            Refusal::AccountFrozen,
            Refusal::VerificationRequired,
            Refusal::FirstRecipientLimit,
            Refusal::StaffAccount,
            Refusal::SameApprover,
            Refusal::OwnAccount,
        ];
        for refusal in refusals {
            assert!(ErrorCode::parse(refusal.code()).is_some(), "{refusal:?}");
        }
    }
}
